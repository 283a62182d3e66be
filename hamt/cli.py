"""The ``hamt`` command line: one subcommand per pipeline stage, plus tools.

Every subcommand takes ``--params PATH``, ``--profile NAME`` and repeatable ``--set a.b=value``, and
validates all parameters before doing any work. Subcommands are listed in ``COMMANDS`` as
``module:function``; the function takes ``(params, args)`` and returns an exit code (or None for 0).
A module may define ``add_arguments_<name>(parser)`` for extra flags. Only the module of the command
being run is imported (``hamt --help`` imports none of them), so stage modules import what they need
at the top of the file, where a reader sees it.

Errors the user can fix (``HAMTError``) print one line and exit 2, and so does a failed file operation
(``OSError``: a full disk, a read-only folder, permissions: what, where, free space); ``--debug`` shows
the traceback.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys

from hamt.errors import HAMTError

# name -> (module, function, help). DVC stages call these names (tests/test_cli.py keeps them in sync).
COMMANDS: dict[str, tuple[str, str, str]] = {
    "download": ("hamt.data", "cli_download", "raw text into data/raw: WikiText from the hub, a local folder, or the generated corpus"),
    "tokenize": ("hamt.tokenize", "cli_tokenize", "train/load a tokenizer and write memmapped token ids"),
    "validate": ("hamt.validate", "cli_validate", "short small-model sanity run before the expensive one"),
    "train": ("hamt.train.cli", "cli_train", "train a model with checkpoints, resume and the fallback ladder"),
    "generate": ("hamt.generate", "cli_generate", "generate text from a checkpoint"),
    "compare": ("hamt.compare", "cli_compare", "evaluate HAMT against the baselines"),
    "report": ("hamt.report", "cli_report", "write results/report.{md,html}, plots and metrics.json"),
    "bench": ("hamt.bench", "cli_bench", "benchmarks: model throughput, memory kernel, decoding, tokenization"),
    "params": ("hamt.cli", "cli_params", "print the resolved parameters of a profile as YAML"),
}


def cli_params(params, args) -> int:
    import yaml

    d = params.to_dict()
    d["model_resolved"] = params.model_config().to_params()
    print(yaml.safe_dump(d, sort_keys=False), end="")
    return 0


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The parser; only ``command``'s module is imported, to add its extra flags."""
    parser = argparse.ArgumentParser(prog="hamt", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=f"hamt {_version()}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (module, _func, help_) in COMMANDS.items():
        p = sub.add_parser(name, help=help_, description=help_)
        p.add_argument("--params", default="params.yaml", help="parameter file (default: params.yaml)")
        p.add_argument("--profile", default=None, help="profile from params.yaml (default: its 'profile' key)")
        p.add_argument(
            "--set", dest="overrides", action="append", default=[], metavar="SECTION.KEY=VALUE",
            help="override one parameter; repeatable",
        )
        p.add_argument("--debug", action="store_true", help="show full tracebacks")
        if name == command:
            _add_extra_arguments(module, name, p)
    return parser


def _add_extra_arguments(module: str, name: str, parser: argparse.ArgumentParser) -> None:
    # Extra flags live beside the command's code.
    mod = importlib.import_module(module)
    hook = getattr(mod, f"add_arguments_{name}", None)
    if hook is not None:
        hook(parser)


def _version() -> str:
    from hamt import __version__

    return __version__


def _command_of(argv: list[str]) -> str | None:
    """The subcommand named on the command line: the first argument that is not an option."""
    first = next((a for a in argv if not a.startswith("-")), None)
    return first if first in COMMANDS else None


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    parser = build_parser(_command_of(argv))
    args = parser.parse_args(argv)
    if not args.command:
        parser.print_help()
        return 2
    debug = args.debug or os.environ.get("HAMT_DEBUG") == "1"
    try:
        from hamt.params import load_params

        params = load_params(args.params, args.profile, args.overrides)
        module, func, _ = COMMANDS[args.command]
        fn = getattr(importlib.import_module(module), func)
        code = fn(params, args)
        return int(code or 0)
    except HAMTError as e:
        if debug:
            raise
        print(f"hamt {args.command}: error: {e}", file=sys.stderr)
        return 2
    except OSError as e:  # the environment, not a bug: a full disk, a read-only folder, a permission
        if debug:
            raise
        from hamt.io import describe_os_error

        print(f"hamt {args.command}: error: {describe_os_error(e)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"hamt {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
