"""Where training metrics go: files first (CSV series, JSON), then an optional W&B run and a tqdm bar.

- ``CSVLog``: the loss series ``log.csv`` with a fixed header; on resume, rows after the checkpoint's
  step are dropped so an interrupted-then-resumed run writes the same series as an uninterrupted one.
- ``write_json_atomic``: results files are written to a temp file in the same folder, then replaced.
- ``make_logger``: Weights & Biases behind an optional logger. ``disabled`` never imports wandb;
  ``offline`` writes a run folder under ``WANDB_DIR`` without touching the network; ``online`` is only
  attempted when an API key is configured (otherwise it falls back to offline with a warning), so a
  run never prompts for a key or blocks on login. Any wandb failure degrades to a no-op logger.
- ``progress``: a tqdm bar with ETA, shown on the master process only.

This module imports no torch.
"""

from __future__ import annotations

import csv
import json
import os
import sys
import tempfile
import warnings
from pathlib import Path
from typing import Any, Iterable

# ---------------------------------------------------------------------------------------------------
# Files
# ---------------------------------------------------------------------------------------------------


def write_json_atomic(path: str | Path, data: Any) -> None:
    """Write ``data`` as indented JSON to ``path`` atomically (temp file in the same folder + replace)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(data, f, indent=2, default=_json_default)
            f.write("\n")
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _json_default(obj: Any) -> Any:
    # numpy / torch scalars and paths end up in summaries; store them as plain values.
    if hasattr(obj, "item"):
        return obj.item()
    if isinstance(obj, Path):
        return str(obj)
    return str(obj)


class CSVLog:
    """Append-only CSV series with a fixed header (one row per logged step)."""

    def __init__(self, path: str | Path, columns: Iterable[str], resume_step: int | None = None):
        self.path = Path(path)
        self.columns = list(columns)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        kept: list[dict] = []
        if resume_step is not None and self.path.is_file():
            # Keep the rows up to the checkpoint we resume from; the rest will be written again.
            with self.path.open(newline="", encoding="utf-8") as f:
                kept = [r for r in csv.DictReader(f) if _int(r.get("step")) <= resume_step]
        rows = [{k: r.get(k, "") for k in self.columns} for r in kept]
        fd, tmp = tempfile.mkstemp(prefix=f".{self.path.name}.", suffix=".tmp", dir=self.path.parent)
        with os.fdopen(fd, "w", newline="", encoding="utf-8") as f:
            w = csv.DictWriter(f, fieldnames=self.columns)
            w.writeheader()
            w.writerows(rows)
        os.replace(tmp, self.path)

    def append(self, row: dict) -> None:
        with self.path.open("a", newline="", encoding="utf-8") as f:
            csv.DictWriter(f, fieldnames=self.columns).writerow({k: _fmt(row.get(k)) for k in self.columns})

    def rows(self) -> list[dict]:
        with self.path.open(newline="", encoding="utf-8") as f:
            return list(csv.DictReader(f))


def _int(x: Any) -> int:
    try:
        return int(float(x))
    except (TypeError, ValueError):
        return -1


def _fmt(v: Any) -> Any:
    if v is None:
        return ""
    if isinstance(v, float):
        return f"{v:.6g}"
    return v


class TextLog:
    """A plain-text event log beside the series (fallbacks, resumes, interruptions)."""

    def __init__(self, path: str | Path, enabled: bool = True):
        self.path = Path(path)
        self.enabled = enabled
        if enabled:
            self.path.parent.mkdir(parents=True, exist_ok=True)

    def write(self, message: str, echo: bool = True) -> None:
        if not self.enabled:
            return
        with self.path.open("a", encoding="utf-8") as f:
            f.write(message.rstrip() + "\n")
        if echo:
            _echo(message)


def _echo(message: str) -> None:
    # tqdm.write keeps the progress bar intact.
    try:
        from tqdm import tqdm

        tqdm.write(message, file=sys.stderr)
    except ImportError:  # pragma: no cover - tqdm is a dependency
        print(message, file=sys.stderr)


# ---------------------------------------------------------------------------------------------------
# Progress
# ---------------------------------------------------------------------------------------------------


def progress(total: int, initial: int = 0, desc: str = "train", enabled: bool = True):
    """A tqdm bar (steps, rate, ETA) on stderr; a silent one on non-master ranks."""
    from tqdm.auto import tqdm

    return tqdm(total=total, initial=initial, desc=desc, unit="step", disable=not enabled,
                dynamic_ncols=True, file=sys.stderr, smoothing=0.1)


# ---------------------------------------------------------------------------------------------------
# Weights & Biases (optional)
# ---------------------------------------------------------------------------------------------------


class NullLogger:
    """The logger used when W&B is disabled or unavailable: does nothing."""

    run_dir: str | None = None
    mode = "disabled"

    def log(self, metrics: dict, step: int) -> None:
        pass

    def summary(self, metrics: dict) -> None:
        pass

    def finish(self) -> None:
        pass


class WandbLogger(NullLogger):
    def __init__(self, run: Any, mode: str):
        self.run = run
        self.mode = mode
        self.run_dir = getattr(run, "dir", None)

    def log(self, metrics: dict, step: int) -> None:
        clean = {k: v for k, v in metrics.items() if isinstance(v, (int, float)) and v == v}
        if clean:
            self.run.log(clean, step=step)

    def summary(self, metrics: dict) -> None:
        for k, v in metrics.items():
            if isinstance(v, (int, float, str, bool)):
                self.run.summary[k] = v

    def finish(self) -> None:
        try:
            self.run.finish()
        except Exception as e:  # never let logging break a finished training run
            warnings.warn(f"wandb: finish failed ({e})", stacklevel=2)


def _has_wandb_key() -> bool:
    if os.environ.get("WANDB_API_KEY"):
        return True
    netrc = Path(os.environ.get("NETRC", Path.home() / ".netrc"))
    try:
        return "api.wandb.ai" in netrc.read_text()
    except OSError:
        return False


def make_logger(wandb_params: Any, config: dict, enabled: bool = True, run_name: str | None = None) -> NullLogger:
    """A W&B logger for ``params.train.wandb`` (mode disabled|offline|online), or a no-op one.

    The environment variable ``WANDB_MODE`` is not consulted for the choice: params.yaml decides,
    so that a run is reproducible from its parameters alone.
    """
    mode = getattr(wandb_params, "mode", "disabled")
    if not enabled or mode == "disabled":
        return NullLogger()
    if mode == "online" and not _has_wandb_key():
        warnings.warn("wandb: mode online but no API key (WANDB_API_KEY or ~/.netrc); logging offline instead",
                      stacklevel=2)
        mode = "offline"
    try:
        import wandb
    except ImportError:
        warnings.warn("wandb: not installed (pip install wandb); W&B logging disabled", stacklevel=2)
        return NullLogger()
    try:
        settings = wandb.Settings(init_timeout=30, silent=True, console="off")
        run = wandb.init(
            project=wandb_params.project, name=wandb_params.name or run_name, config=config, mode=mode,
            dir=os.environ.get("WANDB_DIR") or None, settings=settings, reinit="finish_previous",
        )
    except Exception as e:  # a logger must never stop training
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        warnings.warn(f"wandb: init failed ({first}); W&B logging disabled", stacklevel=2)
        return NullLogger()
    return WandbLogger(run, mode)
