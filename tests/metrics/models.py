"""Small models with known answers, shared by the metrics tests."""

from __future__ import annotations

from types import SimpleNamespace

import torch
import torch.nn.functional as F
from torch import nn


class UniformLM(nn.Module):
    """Every next token equally likely: perplexity must be exactly the vocabulary size."""

    def __init__(self, vocab: int):
        super().__init__()
        self.vocab = vocab
        self.dummy = nn.Parameter(torch.zeros(1))

    def forward(self, input_ids, **kwargs):
        B, T = input_ids.shape
        return SimpleNamespace(logits=torch.zeros(B, T, self.vocab) + 0 * self.dummy)


class BigramLM(nn.Module):
    """Prediction depends on the current token only: any window gives the same NLL as one full pass."""

    def __init__(self, vocab: int, seed: int = 0):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.table = nn.Parameter(torch.randn(vocab, vocab, generator=g))

    def forward(self, input_ids, **kwargs):
        return SimpleNamespace(logits=self.table[input_ids])  # (B, T, V)


def tiny_gpt2(vocab: int = 50, n_positions: int = 64, seed: int = 0):
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(seed)
    cfg = GPT2Config(vocab_size=vocab, n_positions=n_positions, n_embd=16, n_layer=2, n_head=2,
                     bos_token_id=0, eos_token_id=0, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)
    return GPT2LMHeadModel(cfg).eval()


def tiny_hamt(vocab: int = 50, seed: int = 0, **kw):
    from hamt.config import HAMTConfig
    from hamt.model import HAMTForCausalLM

    torch.manual_seed(seed)
    cfg = HAMTConfig(vocab_size=vocab, hidden_dim=16, hcm_dim=16, num_layers=1, num_slots=2,
                     num_attention_heads=2, max_position_embeddings=32, **kw)
    return HAMTForCausalLM(cfg).eval()


def full_nll(model, ids: torch.Tensor) -> float:
    logits = model(input_ids=ids[None]).logits[0, :-1].float()
    return F.cross_entropy(logits, ids[1:], reduction="sum").item()
