"""Validation during training: mean LM loss over fixed batches, plus HAMT's fidelity and slot use.

The batches are those of a fixed-seed ``RandomWindows`` (the same every time, and no draw from the
training RNG, which would break bitwise resume). Under DDP the ranks share them out (batch i on rank
i mod world) and sum, so ``val_loss`` does not depend on the number of processes. The memory
measures are ``hamt.metrics.memory``'s; the held-out evaluation of trained models is ``hamt.compare``.
"""

from __future__ import annotations

import torch
import torch.distributed as dist

from hamt.tokens import RandomWindows
from hamt.metrics.memory import is_hamt, slot_utilisation
from hamt.runtime import DistInfo, autocast_context


@torch.no_grad()
def evaluate(model, valid_tokens, *, batch_size: int, seq_len: int, seed: int, n_batches: int, device,
             precision: str, dist_info: DistInfo) -> dict:
    """``{"val_loss"}`` (+ ``fidelity``, ``slot_active_fraction`` for HAMT) over ``n_batches`` fixed batches."""
    loader = RandomWindows(valid_tokens, batch_size, seq_len, seed, 0, 1, name="the valid split")
    was_training = model.training
    model.eval()
    hamt = is_hamt(model)
    kw = {"return_memory_stats": True} if hamt else {}
    sums = torch.zeros(5, dtype=torch.float64)  # loss, n, fidelity, slot_active_fraction, n_stats
    for i in range(dist_info.rank, n_batches, dist_info.world_size):
        loader.step = i  # RandomWindows is a pure function of (seed, step)
        x = loader.next_batch(device)  # (B, T)
        with autocast_context(device, precision):
            out = model(input_ids=x, labels=x, use_cache=False, **kw)
        lm = out.lm_loss if getattr(out, "lm_loss", None) is not None else out.loss  # without the auxiliary loss
        sums[0] += float(lm)
        sums[1] += 1
        if hamt and out.fidelity is not None:
            sums[2] += float(out.fidelity)
            sums[3] += slot_utilisation(out.slot_usage)["slot_active_fraction"]
            sums[4] += 1
    model.train(was_training)
    if dist_info.ddp:
        sums = sums.to(device)  # nccl needs device tensors
        dist.all_reduce(sums, op=dist.ReduceOp.SUM)
        sums = sums.cpu()
    result = {"val_loss": float(sums[0] / sums[1])}
    if sums[4] > 0:
        result.update(fidelity=float(sums[2] / sums[4]), slot_active_fraction=float(sums[3] / sums[4]))
    return result
