"""Where training metrics go: files first (CSV series, event log), then an optional W&B run and a tqdm bar.

- ``CSVLog``: the loss series ``log.csv`` with a fixed header (``LOG_COLUMNS``); on resume, rows after
  the checkpoint's step are dropped so an interrupted-then-resumed run writes the same series as an
  uninterrupted one.
- ``TextLog``: the event log ``train.log`` (resumes, fallbacks, interruptions); ``print_event`` prints a line
  without breaking the progress bar.

Both touch their file only once the run has state to record (``start``: the trainer calls it after its
first checkpoint or at its first row), so a run that fails while starting leaves an earlier run's
series and events byte-identical.
- ``progress``: a tqdm bar with ETA, shown on the master process only.
- ``make_logger``: Weights & Biases behind an optional logger. ``disabled`` never imports wandb;
  ``offline`` writes a run folder under ``WANDB_DIR`` without touching the network; ``online`` is only
  attempted when an API key is configured (otherwise it falls back to offline with a warning), so a
  run never prompts for a key or blocks on login. Any wandb failure degrades to a no-op logger.

Results files (metrics.json) are written with ``hamt.io.write_json_atomic``. This module imports no torch.
"""

from __future__ import annotations

import csv
import os
import sys
import warnings
from io import StringIO
from pathlib import Path
from typing import Any, Iterable

from tqdm.auto import tqdm

from hamt.io import write_bytes_atomic

# train_time_s: seconds spent in timed training steps so far (not evaluation, checkpoints or compilation;
# carried across a resume), the x axis of loss against wall-clock time
LOG_COLUMNS = ["step", "tokens", "train_loss", "val_loss", "lr", "grad_norm", "tokens_per_s", "mfu",
               "peak_mem_mb", "fidelity", "slot_active_fraction", "train_time_s"]

# ---------------------------------------------------------------------------------------------------
# Files
# ---------------------------------------------------------------------------------------------------


class CSVLog:
    """Append-only CSV series with a fixed header (one row per logged step), written from ``start`` on."""

    def __init__(self, path: str | Path, columns: Iterable[str], resume_step: int | None = None):
        self.path = Path(path)
        self.columns = list(columns)
        self.resume_step = resume_step
        self.started = False

    def start(self) -> None:
        """Replace the file (atomically) by the header and the rows up to ``resume_step``; then appends."""
        if self.started:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        kept: list[dict] = []
        if self.resume_step is not None and self.path.is_file():
            # Keep the rows up to the checkpoint we resume from; the rest will be written again.
            with self.path.open(newline="", encoding="utf-8") as f:
                kept = [r for r in csv.DictReader(f) if _int(r.get("step")) <= self.resume_step]
        rows = [{k: r.get(k, "") for k in self.columns} for r in kept]
        text = StringIO(newline="")  # csv writes its own \r\n line ends
        w = csv.DictWriter(text, fieldnames=self.columns)
        w.writeheader()
        w.writerows(rows)
        write_bytes_atomic(self.path, text.getvalue().encode("utf-8"))  # a crash leaves the old series
        self.started = True

    def append(self, row: dict) -> None:
        self.start()
        with self.path.open("a", newline="", encoding="utf-8") as f:
            csv.DictWriter(f, fieldnames=self.columns).writerow({k: _fmt(row.get(k)) for k in self.columns})

    def rows(self) -> list[dict]:
        self.start()
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
    """A plain-text event log beside the series (fallbacks, resumes, interruptions); lines wait for ``start``."""

    def __init__(self, path: str | Path, enabled: bool = True):
        self.path = Path(path)
        self.enabled = enabled
        self.pending: list[str] | None = []  # None once started

    def start(self) -> None:
        if not self.enabled or self.pending is None:
            return
        pending, self.pending = self.pending, None
        for line in pending:
            self._append(line)

    def write(self, message: str, echo: bool = True) -> None:
        if not self.enabled:
            return
        if self.pending is not None:
            self.pending.append(message)
        else:
            self._append(message)
        if echo:
            print_event(message)

    def _append(self, message: str) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self.path.open("a", encoding="utf-8") as f:
            f.write(message.rstrip() + "\n")


def print_event(message: str) -> None:
    """Print ``message`` on stderr above the progress bar (tqdm.write keeps the bar intact)."""
    tqdm.write(message, file=sys.stderr)


# ---------------------------------------------------------------------------------------------------
# Progress
# ---------------------------------------------------------------------------------------------------


def progress(total: int, initial: int = 0, desc: str = "train", enabled: bool = True):
    """A tqdm bar (steps, rate, ETA) on stderr; a silent one on non-master ranks."""
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
