"""Fault injection, for tests and the flow's demo only: ``HAMT_FAULTS`` makes a training run fail on cue.

A real run never sets ``HAMT_FAULTS`` (nothing is injected without it, and a run that has it says so in
its first line); the subprocess tests (tests/train/test_faults.py) and the
Metaflow flow's crash-and-resume demo set it to kill, stall or starve a run at a chosen step, so
that the recovery paths (SIGTERM checkpoint, SIGKILL mid-write, full disk, the fallback ladder) run
for real. In-process tests pass ``train(fault_hook=...)`` instead, with the same contract: called
before each attempt at a step, it may raise or return ``"nan"`` to poison that step's loss.
"""

from __future__ import annotations

import errno
import os
import signal
import time
from typing import Callable

import torch

from hamt.errors import ConfigError


class EnvFaults:
    """Faults for subprocess tests, from ``HAMT_FAULTS``: comma-separated ``kind@step[:arg]``, each fires once.

    kinds: ``oom`` (raise torch.OutOfMemoryError before the step), ``nan`` (NaN loss), ``sleep@S:SEC``
    (stall the step), ``sigterm``/``sigint``/``sigkill`` (signal this process at the step),
    ``ckpt_sleep@S:SEC`` (stall inside the write of checkpoint S, after its first bytes),
    ``ckpt_enospc@S`` (the write of checkpoint S fails with ENOSPC).
    """

    def __init__(self, spec: str, should_stop: Callable[[], bool] | None = None):
        self.should_stop = should_stop or (lambda: False)  # a stalled step ends early on SIGTERM/SIGINT
        self.entries: list[list] = []
        for item in filter(None, (s.strip() for s in spec.split(","))):
            kind, _, rest = item.partition("@")
            step, _, arg = rest.partition(":")
            if not step.isdigit():
                raise ConfigError(f"HAMT_FAULTS: bad entry {item!r}; expected kind@step[:arg], e.g. oom@3")
            self.entries.append([kind, int(step), float(arg) if arg else 0.0])

    def _take(self, kinds: tuple, step: int):
        for e in self.entries:
            if e[0] in kinds and e[1] == step:
                self.entries.remove(e)
                return e
        return None

    def __call__(self, step: int):
        """The step fault: raises (oom), signals, stalls, or returns "nan"; None when nothing is due."""
        e = self._take(("oom", "nan", "sleep", "sigterm", "sigint", "sigkill"), step)
        if e is None:
            return None
        kind, _, arg = e
        if kind == "oom":
            raise torch.OutOfMemoryError(f"injected out of memory at step {step} (HAMT_FAULTS)")
        if kind == "sleep":
            end = time.monotonic() + arg
            while time.monotonic() < end and not self.should_stop():
                time.sleep(0.02)
        if kind.startswith("sig"):
            os.kill(os.getpid(), {"sigterm": signal.SIGTERM, "sigint": signal.SIGINT, "sigkill": signal.SIGKILL}[kind])
        return "nan" if kind == "nan" else None

    def checkpoint_hook(self, step: int) -> Callable[[int], None] | None:
        """The write hook for checkpoint ``step`` (``hamt.checkpoint.save_checkpoint(write_hook=)``), if one is due."""
        e = self._take(("ckpt_sleep", "ckpt_enospc"), step)
        if e is None:
            return None
        kind, _, arg = e
        fired = []

        def hook(nbytes: int) -> None:
            if fired:
                return
            fired.append(nbytes)
            if kind == "ckpt_enospc":
                raise OSError(errno.ENOSPC, "No space left on device (injected)")
            time.sleep(arg)

        return hook
