"""The learning-rate schedule: linear warm-up, then cosine decay to ``min_lr``.

The schedule is a pure function of the update number, so a resumed run needs only ``scale`` (what
divergence roll-backs multiplied it by) from the checkpoint; its shape comes from params.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass


@dataclass
class WarmupCosine:
    """Linear warm-up to ``lr`` then cosine decay to ``min_lr`` at ``max_steps``; ``scale`` from roll-backs."""

    lr: float
    min_lr: float
    warmup_steps: int
    max_steps: int
    scale: float = 1.0

    def __call__(self, it: int) -> float:
        """Learning rate of update number ``it`` (0-based)."""
        if it < self.warmup_steps:
            lr = self.lr * (it + 1) / (self.warmup_steps + 1)
        elif it >= self.max_steps:
            lr = self.min_lr
        else:
            ratio = (it - self.warmup_steps) / max(1, self.max_steps - self.warmup_steps)
            lr = self.min_lr + 0.5 * (1 + math.cos(math.pi * ratio)) * (self.lr - self.min_lr)
        return lr * self.scale

    def state_dict(self) -> dict:
        return dataclasses.asdict(self)

    def load_state_dict(self, d: dict) -> None:
        self.scale = float(d.get("scale", 1.0))  # the shape comes from params (max_steps may be extended)
