"""Before Metaflow starts and after it stops: what a first run needs, and user errors in one line.

``hamt_flow.py`` runs ``main(HAMTFlow)`` instead of ``HAMTFlow()``:

- **A user name.** Metaflow refuses to run without a user name that is not root (METAFLOW_USER, then
  SUDO_USER, USERNAME, USER: ``metaflow.util.get_username``); a container or CI runner often has none.
  ``default_user()`` (called before metaflow is imported) sets ``METAFLOW_USER=hamt`` then, so a first
  run needs no environment variable. A name the user set, there or in Metaflow's config file, wins.
- **Arguments checked before any task.** For ``run``, ``check_run_arguments`` resolves the parameter
  file with ``--profile`` / ``--overrides`` (the run's profile and both training profiles, the model
  section included) as the ``start`` step would; a bad key or value ends the command in one line,
  ``hamt flow: error: ...``, exit status 2, before Metaflow prints anything (the model section only when
  the command line touches it: building its config imports torch).
- **User errors in a step.** Every step is wrapped by ``user_errors``: a ``hamt.errors.HAMTError``
  (no data, bad parameters, missing checkpoint) or a ``PipelineStopped`` ends the task with its one-line
  message as the task's last output line and no traceback, and the task is not retried (exit status
  ``METAFLOW_EXIT_DISALLOW_RETRY``: a retry would fail the same way). The message also goes to the file
  named by HAMT_FLOW_ERRORS, which ``main`` creates; when the run fails, ``main`` prints it again as the
  last line of the whole run, after Metaflow's own summary. ``HAMT_DEBUG=1`` keeps Metaflow's handling:
  the traceback, and the step's retries.
"""

from __future__ import annotations

import functools
import json
import os
import sys
import tempfile
from pathlib import Path
from typing import Callable

ERRORS_ENV = "HAMT_FLOW_ERRORS"
DEFAULT_USER = "hamt"
# metaflow.exception.METAFLOW_EXIT_DISALLOW_RETRY (not imported: this module runs before metaflow is)
EXIT_DISALLOW_RETRY = 202


def debug() -> bool:
    """``HAMT_DEBUG=1``: tracebacks as Metaflow shows them (the CLI's ``--debug``)."""
    return os.environ.get("HAMT_DEBUG") == "1"


# --------------------------------------------------------------------------------------------------
# The user name
# --------------------------------------------------------------------------------------------------


def _configured_user() -> str | None:
    """METAFLOW_USER from Metaflow's config file (``$METAFLOW_HOME/config[_PROFILE].json``), if any."""
    home = Path(os.environ.get("METAFLOW_HOME") or "~/.metaflowconfig").expanduser()
    profile = os.environ.get("METAFLOW_PROFILE")
    path = home / (f"config_{profile}.json" if profile else "config.json")
    try:
        value = json.loads(path.read_text(encoding="utf-8")).get("METAFLOW_USER")
    except (OSError, ValueError, AttributeError):
        return None
    return value or None


def default_user() -> str | None:
    """Set METAFLOW_USER to ``DEFAULT_USER`` when Metaflow would find no user name; returns what it set."""
    names = [os.environ.get(k) for k in ("METAFLOW_USER", "SUDO_USER", "USERNAME", "USER")] + [_configured_user()]
    if any(n and n != "root" for n in names):
        return None
    os.environ["METAFLOW_USER"] = DEFAULT_USER
    return DEFAULT_USER


# --------------------------------------------------------------------------------------------------
# The run's arguments, checked before Metaflow starts
# --------------------------------------------------------------------------------------------------


def _option(args: list[str], name: str) -> str | None:
    """The value of ``--name V`` or ``--name=V`` in ``args`` (the last one wins, as with click)."""
    value = None
    for i, a in enumerate(args):
        if a == name and i + 1 < len(args):
            value = args[i + 1]
        elif a.startswith(name + "="):
            value = a[len(name) + 1:]
    return value


def run_arguments(argv: list[str]) -> dict | None:
    """``{config, profile, overrides}`` of a ``run`` command line, or None for other commands.

    ``config`` is the file of ``--config cfg FILE`` (None: the default params.yaml); a run given
    ``--config-value`` is left to the ``start`` step (``config`` is then ``False``).
    """
    if "run" not in argv:
        return None
    at = argv.index("run")
    top, sub = argv[:at], argv[at + 1:]
    config = None
    for i, a in enumerate(top):
        if a == "--config-value":
            config = False
        elif a == "--config" and i + 2 < len(top) and top[i + 1] == "cfg" and config is not False:
            config = top[i + 2]
    profile = _option(sub, "--profile")
    overrides = _option(sub, "--overrides")
    return {"config": config,
            "profile": os.environ.get("METAFLOW_RUN_PROFILE", "") if profile is None else profile,
            "overrides": os.environ.get("METAFLOW_RUN_OVERRIDES", "") if overrides is None else overrides}


def check_run_arguments(argv: list[str]) -> None:
    """Resolve the parameters a ``run`` would use; a ``HAMTError`` says what is wrong (raised)."""
    import yaml

    import orchestration as orc
    from hamt.errors import ConfigError

    args = run_arguments(argv)
    if args is None or args["config"] is False:
        return
    path = args["config"] or orc.default_params_path()
    try:
        raw = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as e:
        raise ConfigError(f"cannot read the parameter file {path}: {str(e).splitlines()[0]}") from None
    overrides = orc.parse_overrides(args["overrides"])
    params = orc.resolve(raw, args["profile"], overrides)
    trained = [orc.resolve(raw, args["profile"], overrides, p)
               for p in (params.fallback.primary_profile, params.fallback.fallback_profile)]
    # The model section is checked by building its config, which imports transformers and torch (seconds):
    # only when this command line can have broken it (params.yaml's own profiles are checked by the tests).
    if args["config"] or any(o.split("=", 1)[0].strip().startswith("model.") for o in overrides):
        for p in [params, *trained]:
            p.model_config()


# --------------------------------------------------------------------------------------------------
# User errors inside a step
# --------------------------------------------------------------------------------------------------


def _record(line: str) -> None:
    path = os.environ.get(ERRORS_ENV)
    if path:
        try:
            with open(path, "a", encoding="utf-8") as f:
                f.write(line + "\n")
        except OSError:
            pass  # the task's own output still has the line


def user_errors(step_fn: Callable) -> Callable:
    """Wrap a step: a user error ends the task with its one-line message last, no traceback, no retry."""
    from hamt.errors import HAMTError

    import orchestration as orc

    @functools.wraps(step_fn)
    def wrapper(self, *args, **kwargs):
        try:
            return step_fn(self, *args, **kwargs)
        except (HAMTError, orc.PipelineStopped) as e:
            if debug():
                raise
            line = f"hamt flow: {step_fn.__name__}: error: {' '.join(str(e).split())}"
            _record(line)
            sys.stdout.flush()
            print(line, file=sys.stderr, flush=True)
            sys.exit(EXIT_DISALLOW_RETRY)

    return wrapper


# --------------------------------------------------------------------------------------------------
# The entry point
# --------------------------------------------------------------------------------------------------


def main(flow_cls: type, argv: list[str] | None = None) -> None:
    """Check a run's arguments, run the flow, and repeat a step's user error as the last line."""
    from hamt.errors import HAMTError

    argv = sys.argv[1:] if argv is None else argv
    try:
        check_run_arguments(argv)
    except HAMTError as e:
        if debug():
            raise
        print(f"hamt flow: error: {e}", file=sys.stderr)
        sys.exit(2)
    own = ERRORS_ENV not in os.environ
    if own:
        fd, path = tempfile.mkstemp(prefix="hamt-flow-errors-", suffix=".txt")
        os.close(fd)
        os.environ[ERRORS_ENV] = path
    try:
        flow_cls()
    except SystemExit as e:
        if e.code not in (0, None) and own:
            lines = Path(os.environ[ERRORS_ENV]).read_text(encoding="utf-8").splitlines()
            for line in dict.fromkeys(lines):  # each message once, in the order the steps failed
                print(line, file=sys.stderr)
        raise
    finally:
        if own:
            Path(os.environ.pop(ERRORS_ENV)).unlink(missing_ok=True)
