"""The optimiser: AdamW with weight decay on matrices only (nanoGPT's ``configure_optimizers``)."""

from __future__ import annotations

import torch


def make_optimizer(model: torch.nn.Module, lr: float, betas, weight_decay: float, device) -> torch.optim.AdamW:
    """AdamW; matrices (linear and embedding weights) decay, 1-d parameters (norms, biases, gates) do not."""
    decay, no_decay = [], []
    for _, p in model.named_parameters():
        if p.requires_grad:
            (decay if p.dim() >= 2 else no_decay).append(p)
    groups = [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    extra = {"fused": True} if device.type == "cuda" else {}  # one kernel for all parameters on a GPU
    return torch.optim.AdamW(groups, lr=lr, betas=tuple(betas), **extra)
