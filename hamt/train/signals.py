"""SIGINT/SIGTERM during training: finish the step, save a checkpoint, exit with status 128 + signal.

The handler only records the signal; the loop asks ``requested()`` at each step boundary, so a
checkpoint is never written from inside a handler (mid-step, with half-updated weights). A second
Ctrl-C raises ``KeyboardInterrupt`` at once. Under DDP the ranks agree on the signal (an all-reduce
at each boundary), so that all of them stop after the same step and join the checkpoint's collectives.
"""

from __future__ import annotations

import signal
import threading

import torch
import torch.distributed as dist

from hamt.runtime import DistInfo
from hamt.train.logs import print_event

RESUME_HINT = "hamt train --resume"


class StopSignals:
    """Records SIGINT/SIGTERM between ``install()`` and ``restore()``; ``signum`` is the one received."""

    def __init__(self, announce: bool = True):
        self.signum: int | None = None
        self.announce = announce  # print a line (the master process only)
        self._old: dict | None = None

    def install(self) -> None:
        if threading.current_thread() is not threading.main_thread():
            return  # signal.signal works in the main thread only (e.g. train() called from a worker thread)

        def handler(signum, frame):
            if self.signum is not None and signum == signal.SIGINT:
                raise KeyboardInterrupt  # a second Ctrl-C stops at once
            self.signum = signum
            if self.announce:
                print_event(f"hamt train: {signal.Signals(signum).name} received; saving a checkpoint after this step")

        self._old = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
        for s in self._old:
            signal.signal(s, handler)

    def restore(self) -> None:
        if self._old:
            for s, h in self._old.items():
                signal.signal(s, h)
        self._old = None

    def requested(self, dist_info: DistInfo, device) -> bool:
        """Whether to stop now (any rank got a signal); called at step boundaries."""
        if not dist_info.ddp:
            return self.signum is not None
        t = torch.tensor([int(self.signum or 0)], device=device)
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
        if t.item():
            self.signum = self.signum or int(t.item())
        return bool(t.item())
