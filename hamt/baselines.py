"""From-scratch baseline architectures matched to a HAMT configuration by parameter count: one matcher.

The fair comparison: same vocabulary, same embedding treatment (tied or not), same context, and a
width/depth chosen so the total parameter count is as close as possible to a target (HAMT's, or a
multiple of it). Each architecture is a *family*: a function ``(hamt config, width, depth, n_positions)
-> transformers config`` (``FAMILIES``). ``matched_config`` is the one matcher for all of them: it
counts the parameters of the family's model built on the meta device (no memory, exact, whatever the
architecture) at depth 1 and 2 of each candidate width — a model's count is affine in its depth — and
picks the depth and width closest to the target, preferring HAMT's width (within 2%, then the nearest
width, then the smallest error).

- ``gpt2``: transformers' GPT2LMHeadModel (learned positions, GELU MLP 4d, LayerNorm, biases);
- ``llama``: LlamaForCausalLM, the "Transformer++" recipe of the linear-RNN literature (RoPE, SwiGLU
  with ``intermediate_size`` = 8d/3 rounded up to 32, RMSNorm, no biases);
- ``mamba2``: Mamba2ForCausalLM (Mamba-2's SSD mixer; expand 2, head_dim 64 — 32 when 2d is not a
  multiple of 64 —, one B/C group, state size 128, conv 4). Without the ``mamba_ssm`` / ``causal_conv1d``
  kernels transformers runs its pure-PyTorch chunked path (``torch_forward``), on CPU as on GPU;
  ``chunk_size`` is min(256, the training context) so a short context is not padded to 256.

Used by ``hamt.zoo`` (the ``scratch`` models), the benchmarks and ``hamt compare``'s probes.
"""

from __future__ import annotations

from typing import Callable

from hamt.config import HAMTConfig


def _heads(width: int) -> int:
    """Attention heads of a width: head dimension 64 when it divides, else 32, else one head."""
    return width // 64 if width % 64 == 0 else (width // 32 if width % 32 == 0 else 1)


def _round_up(x: float, multiple: int) -> int:
    return int(-(-x // multiple) * multiple)


def gpt2_family(config: HAMTConfig, width: int, depth: int, n_positions: int):
    from transformers import GPT2Config

    return GPT2Config(
        vocab_size=config.vocab_size, n_positions=n_positions, n_embd=width, n_layer=depth, n_head=_heads(width),
        tie_word_embeddings=bool(config.tie_word_embeddings), resid_pdrop=config.dropout, embd_pdrop=config.dropout,
        attn_pdrop=config.dropout, bos_token_id=config.bos_token_id, eos_token_id=config.eos_token_id,
    )


def llama_family(config: HAMTConfig, width: int, depth: int, n_positions: int):
    from transformers import LlamaConfig

    heads = _heads(width)
    return LlamaConfig(
        vocab_size=config.vocab_size, hidden_size=width, intermediate_size=_round_up(8 * width / 3, 32),
        num_hidden_layers=depth, num_attention_heads=heads, num_key_value_heads=heads,
        max_position_embeddings=n_positions, tie_word_embeddings=bool(config.tie_word_embeddings),
        attention_bias=False, mlp_bias=False, attention_dropout=config.dropout, rms_norm_eps=1e-5,
        bos_token_id=config.bos_token_id, eos_token_id=config.eos_token_id, pad_token_id=None,
    )


def mamba2_family(config: HAMTConfig, width: int, depth: int, n_positions: int):
    from transformers import Mamba2Config

    expand = 2
    head_dim = 64 if (expand * width) % 64 == 0 else 32
    if (expand * width) % head_dim:
        raise ValueError(f"mamba2: width {width} gives an inner size {expand * width} not divisible by {head_dim}")
    return Mamba2Config(
        vocab_size=config.vocab_size, hidden_size=width, num_hidden_layers=depth, expand=expand, head_dim=head_dim,
        num_heads=expand * width // head_dim, n_groups=1, state_size=128, conv_kernel=4,
        chunk_size=min(256, n_positions), tie_word_embeddings=bool(config.tie_word_embeddings),
        bos_token_id=config.bos_token_id, eos_token_id=config.eos_token_id, pad_token_id=None,
    )


FAMILIES: dict[str, Callable] = {"gpt2": gpt2_family, "llama": llama_family, "mamba2": mamba2_family}


def param_count(model_config) -> int:
    """Exact parameter count of ``AutoModelForCausalLM.from_config(model_config)`` (built on meta; tied weights once)."""
    import torch
    from transformers import AutoModelForCausalLM

    import hamt.model  # noqa: F401  registers model_type "hamt"

    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(model_config)
    return sum(p.numel() for p in model.parameters())


def matched_config(arch: str, config: HAMTConfig, n_positions: int | None = None, target: int | None = None):
    """The ``arch`` config (a key of ``FAMILIES``) whose parameter count is closest to HAMT's (or ``target``)."""
    from hamt.model import count_parameters

    family = FAMILIES[arch]
    target = target or count_parameters(config)
    n_positions = n_positions or config.max_position_embeddings
    # Prefer HAMT's width; widen/narrow in steps of 32 only if depth alone cannot match.
    widths = sorted({max(32, config.hidden_dim + 32 * i) for i in range(-8, 9)}, key=lambda w: abs(w - config.hidden_dim))
    best = None
    for width in widths:
        if best is not None and not best[0][0] and abs(width - config.hidden_dim) > best[0][1]:
            break  # widths come nearest first: none further away can beat a match within 2%
        one = param_count(family(config, width, 1, n_positions))
        per_layer = param_count(family(config, width, 2, n_positions)) - one
        for depth in range(1, 49):
            n = one + (depth - 1) * per_layer
            err = abs(n - target) / target
            key = (round(err, 2) > 0.02, abs(width - config.hidden_dim), err)
            if best is None or key < best[0]:
                best = (key, width, depth)
    _, width, depth = best
    return family(config, width, depth, n_positions)


def matched_gpt2_config(config: HAMTConfig, n_positions: int | None = None, target: int | None = None):
    """A ``GPT2Config`` matched to HAMT (``matched_config("gpt2", ...)``)."""
    return matched_config("gpt2", config, n_positions=n_positions, target=target)


def hamt_and_matched_gpt2(config, seq_len: int, device) -> dict:
    """{"hamt": HAMTForCausalLM(config), "gpt2": its matched GPT-2 with positions for ``seq_len``}, training mode: the
    pair every speed measurement times (``hamt bench model``, compare's speed probe). The GPT-2 is the architecture
    ``gpt2-scratch`` trains, its position table extended to ``seq_len``; matching it again at that length would give
    another shape (tiny, 1,024 positions: d 128 x 2 layers instead of d 96 x 7)."""
    import torch
    from transformers import GPT2LMHeadModel

    from hamt.model import HAMTForCausalLM

    torch.manual_seed(0)
    hamt = HAMTForCausalLM(config).to(device).train()
    gcfg = matched_gpt2_config(config)
    gcfg.n_positions = max(gcfg.n_positions, seq_len)  # same architecture, longer position table
    gcfg._attn_implementation = "sdpa"
    gpt2 = GPT2LMHeadModel(gcfg).to(device).train()
    return {"hamt": hamt, "gpt2": gpt2}
