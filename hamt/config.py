"""``HAMTConfig``: the model's configuration, its presets and its validation.

It is a Hugging Face ``PreTrainedConfig`` (model_type ``hamt``) so that ``save_pretrained`` and the
Auto classes work; that is why this one config module imports transformers. Pipeline parameters that
are not about the model live in ``hamt.params`` (no torch).

Notation used across the package: d = hidden_dim, D = hcm_dim, L = num_layers, S = num_slots,
H = num_attention_heads (memory heads), P = D / H real dims per head, F = P // 2 + 1 frequencies.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Literal

from huggingface_hub.dataclasses import strict
from transformers.configuration_utils import PreTrainedConfig

from hamt.errors import ConfigError
from hamt.typed import coerce

# The seed prototype's configurations (vocab 50,257 = GPT-2 BPE, untied embeddings as its counts imply).
# "tiny" runs end to end on a laptop CPU in minutes with its own 4,096-token BPE.
PRESETS: dict[str, dict[str, Any]] = {
    "tiny": dict(vocab_size=4096, hidden_dim=128, hcm_dim=256, num_layers=2, num_slots=4,
                 num_attention_heads=4, max_position_embeddings=128),
    "33m": dict(vocab_size=50257, hidden_dim=256, hcm_dim=1024, num_layers=4, num_slots=8,
                num_attention_heads=8, max_position_embeddings=512),
    "50m": dict(vocab_size=50257, hidden_dim=384, hcm_dim=1536, num_layers=6, num_slots=12,
                num_attention_heads=12, max_position_embeddings=1024),
    "100m": dict(vocab_size=50257, hidden_dim=512, hcm_dim=2048, num_layers=8, num_slots=16,
                 num_attention_heads=16, max_position_embeddings=1024),
    # Same rule as the others (hcm = 4 x hidden, heads = slots); 8 layers keep it near 200M.
    "200m": dict(vocab_size=50257, hidden_dim=768, hcm_dim=3072, num_layers=8, num_slots=16,
                 num_attention_heads=16, max_position_embeddings=1024),
}

# What ``HAMTConfig.n_positions`` reports to clients such as lm-eval (a recurrence has no positional limit).
SERVING_CONTEXT = 65_536

# What the seed claimed for each preset (None: no claim).
SEED_CLAIMED_PARAMS = {"tiny": None, "33m": 33.67e6, "50m": 50e6, "100m": 100e6, "200m": 200e6}


@strict
class HAMTConfig(PreTrainedConfig):
    """Configuration of a HAMT causal language model."""

    model_type = "hamt"
    attribute_map = {"hidden_size": "hidden_dim", "num_hidden_layers": "num_layers"}

    # vocabulary size (the tokenizer's)
    vocab_size: int = 4096
    # residual stream width d
    hidden_dim: int = 128
    # holographic memory width D (all heads together)
    hcm_dim: int = 256
    # number of blocks
    num_layers: int = 2
    # memory slots S per head
    num_slots: int = 4
    # memory heads H (each has P = hcm_dim / H real dims)
    num_attention_heads: int = 4
    # training context; sets the range of the decay initialisation (generation may go past it)
    max_position_embeddings: int = 128
    # dropout on the residual branches
    dropout: float = 0.0
    # gated writes (forget gate + write/read slot addressing); off: fixed decays, uniform slots
    use_gating: bool = True
    # add the fidelity auxiliary loss to the LM loss
    use_auxiliary_loss: bool = False
    # weight of the auxiliary loss
    aux_loss_weight: float = 0.1
    # width of the causal depthwise convolution before the projections (0 disables)
    conv_kernel: int = 4
    # MLP hidden width = mlp_ratio x hidden_dim (3, not 4: keeps the presets within 10% of the seed's sizes)
    mlp_ratio: float = 3.0
    # share the input embedding with the output projection
    tie_word_embeddings: bool = False
    # memory implementation: auto (triton on CUDA, the fused C kernel on CPU, else chunk), cpu, chunk, reference, triton
    memory_mode: Literal["auto", "cpu", "chunk", "reference", "triton"] = "auto"
    # time steps per chunk of every parallel memory path (= hamt.ops.DEFAULT_CHUNK_SIZE; see hamt/ops/__init__.py)
    chunk_size: int = 16
    # epsilon of RMSNorm and of the unitary key/query normalisation
    norm_eps: float = 1e-6
    # std of the normal initialisation of linear and embedding weights
    initializer_range: float = 0.02
    # seed of the fixed per-slot frequency permutations
    slot_perm_seed: int = 0
    pad_token_id: int | None = None
    bos_token_id: int | None = None
    eos_token_id: int | None = None

    # ---- derived sizes -------------------------------------------------------------------------
    @property
    def head_dim(self) -> int:
        return self.hcm_dim // self.num_attention_heads

    @property
    def num_freqs(self) -> int:
        return self.head_dim // 2 + 1

    @property
    def mlp_dim(self) -> int:
        return int(self.mlp_ratio * self.hidden_dim)

    @property
    def n_positions(self) -> int:
        """The context clients may feed at once: SERVING_CONTEXT, not the training context.

        Clients size their windows from the config: lm-evaluation-harness's HFLM reads ``n_positions``
        first (then ``max_position_embeddings``), so without this its rolling log-likelihood would cut a
        recurrent model's documents into training-context windows. The state is constant in size, so
        any length works; the bound only keeps a window's (T, vocab) logits tensor in memory."""
        return SERVING_CONTEXT

    # ---- validation (huggingface_hub's @strict runs every validate_* method) -----------------------
    def validate_hamt(self) -> None:
        def need(cond: bool, msg: str) -> None:
            if not cond:
                raise ConfigError(msg)

        for k in ("vocab_size", "hidden_dim", "hcm_dim", "num_layers", "num_attention_heads",
                  "max_position_embeddings", "chunk_size"):
            need(getattr(self, k) >= 1, f"model.{k}: must be >= 1, got {getattr(self, k)}")
        need(self.num_slots >= 1, f"model.num_slots: must be >= 1, got {self.num_slots}")
        need(
            self.hcm_dim % self.num_attention_heads == 0,
            f"model.hcm_dim ({self.hcm_dim}) must be divisible by model.num_attention_heads ({self.num_attention_heads})",
        )
        need(
            self.head_dim % 2 == 0,
            f"model.hcm_dim / num_attention_heads = {self.head_dim} must be even (real FFT of a per-head vector)",
        )
        need(0.0 <= self.dropout < 1.0, f"model.dropout: must be in [0, 1), got {self.dropout}")
        need(self.aux_loss_weight >= 0, f"model.aux_loss_weight: must be >= 0, got {self.aux_loss_weight}")
        need(self.conv_kernel >= 0, f"model.conv_kernel: must be >= 0 (0 disables), got {self.conv_kernel}")
        need(self.mlp_ratio > 0, f"model.mlp_ratio: must be > 0, got {self.mlp_ratio}")
        need(self.norm_eps > 0, f"model.norm_eps: must be > 0, got {self.norm_eps}")
        need(self.initializer_range > 0, f"model.initializer_range: must be > 0, got {self.initializer_range}")

    # ---- construction from params.yaml ---------------------------------------------------------
    @classmethod
    def field_names(cls) -> list[str]:
        return [f.name for f in dataclasses.fields(cls) if f.name not in _BASE_FIELDS]

    @classmethod
    def from_preset(cls, name: str, **overrides: Any) -> "HAMTConfig":
        """A preset (``tiny``, ``33m``, ``50m``, ``100m``, ``200m``) with optional field overrides."""
        if name not in PRESETS:
            raise ConfigError(f"model.preset: unknown preset '{name}'; available: {', '.join(PRESETS)}")
        return cls.from_params({**PRESETS[name], **overrides})

    @classmethod
    def from_params(cls, section: dict[str, Any]) -> "HAMTConfig":
        """Build from the ``model`` section of params.yaml: ``preset`` plus field overrides, strictly."""
        section = dict(section)
        preset = section.pop("preset", None)
        if preset is not None and preset not in PRESETS:
            raise ConfigError(f"model.preset: unknown preset '{preset}'; available: {', '.join(PRESETS)}")
        base = dict(PRESETS[preset]) if preset is not None else {}
        known = set(cls.field_names())
        for key in section:
            if key not in known:
                import difflib

                close = difflib.get_close_matches(key, known, n=1)
                hint = f" (did you mean '{close[0]}'?)" if close else ""
                raise ConfigError(f"unknown key 'model.{key}'{hint}; valid keys: preset, {', '.join(sorted(known))}")

        hints = _own_field_types()
        kwargs = {k: coerce(v, hints[k], f"model.{k}") for k, v in {**base, **section}.items()}
        try:
            return cls(**kwargs)
        except Exception as e:  # @strict wraps our validator's ConfigError; surface the original line
            cause = e
            while cause is not None and not isinstance(cause, ConfigError):
                cause = cause.__cause__ or cause.__context__
            if cause is not None:
                raise ConfigError(str(cause)) from e
            raise ConfigError(f"model: {str(e).strip().splitlines()[0]}") from e

    def to_params(self) -> dict[str, Any]:
        """The HAMT-specific fields as a plain dict (what params.yaml could say to rebuild this)."""
        return {k: getattr(self, k) for k in self.field_names()}


_BASE_FIELDS = {f.name for f in dataclasses.fields(PreTrainedConfig)}


def _own_field_types() -> dict[str, Any]:
    """Resolved annotations of HAMTConfig's own fields (the base class's mention torch types)."""
    ns = {"Literal": Literal, "Any": Any}
    return {k: eval(v, ns) if isinstance(v, str) else v for k, v in HAMTConfig.__annotations__.items()}
