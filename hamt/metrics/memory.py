"""The holographic memory's own diagnostics: retrieval fidelity and slot utilisation (HAMT models only)."""

from __future__ import annotations

import math

import torch


def slot_utilisation(slot_usage: torch.Tensor) -> dict[str, float]:
    """Fraction of slots whose mean write weight exceeds 1/(2S), and the normalised entropy (1 = uniform)."""
    usage = slot_usage.detach().float().reshape(-1, slot_usage.shape[-1])  # (L, S)
    S = usage.shape[-1]
    p = usage / usage.sum(-1, keepdim=True).clamp_min(1e-12)
    active = (usage > 1.0 / (2 * S)).float().mean().item()
    entropy = (-(p * p.clamp_min(1e-12).log()).sum(-1) / math.log(S)).mean().item() if S > 1 else 1.0
    return {"slot_active_fraction": active, "slot_entropy": entropy}


def is_hamt(model_or_config) -> bool:
    """True for a HAMT model or config (model_type "hamt")."""
    cfg = getattr(model_or_config, "config", model_or_config)
    return getattr(cfg, "model_type", None) == "hamt"


@torch.no_grad()
def memory_diagnostics(model, ids, *, context: int, n_windows: int = 8, batch_size: int = 8, device="cpu") -> dict:
    """Mean retrieval fidelity and slot utilisation of a HAMT model over the first windows of ``ids``.

    Returns ``{}`` for models without a holographic memory.
    """
    if not is_hamt(model):
        return {}
    ids = torch.as_tensor(ids, dtype=torch.long)
    n = min(n_windows, max(1, len(ids) // context))
    starts = [i * context for i in range(n) if (i + 1) * context <= len(ids)] or [0]
    model.eval()
    fid, usage, count = 0.0, None, 0
    for i in range(0, len(starts), batch_size):
        x = torch.stack([ids[s:s + context] for s in starts[i:i + batch_size]]).to(device)  # (B, T)
        out = model(input_ids=x, use_cache=False, return_memory_stats=True)
        w = x.shape[0]
        fid += out.fidelity.float().item() * w
        u = out.slot_usage.float().cpu() * w  # (L, S)
        usage = u if usage is None else usage + u
        count += w
    util = slot_utilisation(usage / count)
    return {"fidelity": fid / count, **util, "slot_usage": (usage / count).tolist()}
