"""GPT-2-architecture baselines matched to a HAMT configuration by parameter count.

The fair comparison: same vocabulary, same embedding treatment (tied or not), same context, and a
depth/width chosen so the total parameter count is as close as possible to HAMT's (within 5% for
every preset). Used by the benchmarks and by ``hamt compare``.
"""

from __future__ import annotations

from hamt.config import HAMTConfig


def gpt2_param_count(vocab: int, n_embd: int, n_layer: int, n_positions: int, tied: bool) -> int:
    """Exact parameter count of transformers' GPT2LMHeadModel (n_inner = 4 n_embd)."""
    d = n_embd
    per_layer = 12 * d * d + 13 * d  # attn c_attn (3d^2+3d) + c_proj (d^2+d) + mlp (8d^2+5d) + 2 LN (4d)
    emb = vocab * d + n_positions * d
    head = 0 if tied else vocab * d
    return emb + n_layer * per_layer + 2 * d + head  # + final LN


def matched_gpt2_config(config: HAMTConfig, n_positions: int | None = None, target: int | None = None):
    """A ``GPT2Config`` whose parameter count is closest to HAMT's (``target`` overrides the count)."""
    from transformers import GPT2Config

    from hamt.model import count_parameters

    target = target or count_parameters(config)
    n_positions = n_positions or config.max_position_embeddings
    tied = bool(config.tie_word_embeddings)
    best = None
    # Prefer HAMT's width; widen/narrow in steps of 32 only if depth alone cannot match.
    widths = sorted({max(32, config.hidden_dim + 32 * i) for i in range(-8, 9)}, key=lambda w: abs(w - config.hidden_dim))
    for n_embd in widths:
        n_head = max(1, n_embd // 64) if n_embd % 64 == 0 else (n_embd // 32 if n_embd % 32 == 0 else 1)
        for n_layer in range(1, 49):
            n = gpt2_param_count(config.vocab_size, n_embd, n_layer, n_positions, tied)
            err = abs(n - target) / target
            key = (round(err, 2) > 0.02, abs(n_embd - config.hidden_dim), err)
            if best is None or key < best[0]:
                best = (key, n_embd, n_head, n_layer, n)
    _, n_embd, n_head, n_layer, _ = best
    return GPT2Config(
        vocab_size=config.vocab_size, n_positions=n_positions, n_embd=n_embd, n_layer=n_layer, n_head=n_head,
        tie_word_embeddings=tied, resid_pdrop=config.dropout, embd_pdrop=config.dropout, attn_pdrop=config.dropout,
        bos_token_id=config.bos_token_id, eos_token_id=config.eos_token_id,
    )
