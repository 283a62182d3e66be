"""``HAMTForCausalLM``: the Hugging Face causal-LM wrapper around the HAMT blocks.

Importing this module registers ``model_type="hamt"`` with ``AutoConfig`` and
``AutoModelForCausalLM`` (``import hamt`` arranges that as soon as transformers' Auto classes load), so
``save_pretrained`` / ``AutoModelForCausalLM.from_pretrained`` work. ``save_pretrained`` also writes
the model's code and ``auto_map`` (``hamt.hub``), so the folder loads with ``trust_remote_code=True``
where hamt is not installed. Generation carries the recurrent state (``HAMTCache``) instead of
re-running the prefix: the model opts out of transformers' default dynamic KV cache
(``_supports_default_dynamic_cache`` -> False, ``_is_stateful``) and reorders its state for beam search
(``_reorder_cache``). ``attention_mask`` (left or right padding) reaches every layer: padded positions
leave the state untouched (hamt.layers).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint
from transformers import (
    AutoConfig,
    AutoModelForCausalLM,
    GenerationMixin,
    PreTrainedModel,
)
from transformers import initialization as init
from transformers.utils import ModelOutput

from hamt.config import HAMTConfig
from hamt.layers import HAMTBlock, HolographicMemory, LayerState, RMSNorm, compute_dtype


class HAMTCache:
    """Recurrent state of the whole model: one ``LayerState`` per layer plus the tokens seen.

    Its size depends on batch and model shape only, never on how many tokens were consumed.
    """

    is_compileable = False

    def __init__(self, layers: list[LayerState], seen_tokens: int = 0):
        self.layers = layers
        self.seen_tokens = seen_tokens

    @property
    def is_linear(self) -> list[bool]:  # transformers' generate: no KV slicing for this cache
        return [True] * len(self.layers)

    def get_seq_length(self, layer_idx: int = 0) -> int:
        return self.seen_tokens

    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for s in self.layers for t in s.tensors())

    def reorder_cache(self, beam_idx: torch.LongTensor) -> None:
        for s in self.layers:
            s.memory = s.memory.index_select(0, beam_idx.to(s.memory.device))
            if s.conv is not None:
                s.conv = s.conv.index_select(0, beam_idx.to(s.conv.device))

    def __len__(self) -> int:
        return len(self.layers)


@dataclass
class HAMTCausalLMOutput(ModelOutput):
    """Causal-LM output plus the memory diagnostics the trainer logs."""

    loss: torch.Tensor | None = None
    logits: torch.Tensor | None = None
    cache: HAMTCache | None = None
    lm_loss: torch.Tensor | None = None
    aux_loss: torch.Tensor | None = None
    fidelity: torch.Tensor | None = None
    slot_usage: torch.Tensor | None = None  # (L, S) mean write weight per slot per layer
    hidden_states: tuple[torch.Tensor, ...] | None = None  # L + 1: embeddings, each block, the last after the norm


class HAMTPreTrainedModel(PreTrainedModel):
    config_class = HAMTConfig
    config: HAMTConfig
    base_model_prefix = "hamt"
    supports_gradient_checkpointing = True
    _no_split_modules = ["HAMTBlock"]
    _is_stateful = True

    def save_pretrained(self, save_directory, *args, **kwargs):
        """transformers' save, plus the code copies and ``auto_map`` that trust_remote_code loads (hamt.hub)."""
        super().save_pretrained(save_directory, *args, **kwargs)
        from hamt.hub import write_remote_code

        write_remote_code(save_directory)

    def _init_weights(self, module: nn.Module) -> None:
        std = self.config.initializer_range
        if isinstance(module, nn.Linear):
            init.normal_(module.weight, mean=0.0, std=std)
            if module.bias is not None:
                init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            init.normal_(module.weight, mean=0.0, std=std)
        elif isinstance(module, RMSNorm):
            init.ones_(module.weight)
        if isinstance(module, HolographicMemory):
            init.copy_(module.forget_bias, module._multiscale_bias())
            init.ones_(module.out_norm)
            # GPT-2's residual scaling: each block adds two branches to the residual stream.
            init.normal_(module.out_proj.weight, mean=0.0, std=std / math.sqrt(2 * self.config.num_layers))
        if isinstance(module, HAMTBlock):
            init.normal_(module.mlp.proj.weight, mean=0.0, std=std / math.sqrt(2 * self.config.num_layers))


class HAMTForCausalLM(HAMTPreTrainedModel, GenerationMixin):
    _tied_weights_keys = {"lm_head.weight": "embed.weight"}

    def __init__(self, config: HAMTConfig):
        super().__init__(config)
        self.embed = nn.Embedding(config.vocab_size, config.hidden_dim)
        self.blocks = nn.ModuleList(HAMTBlock(config, i) for i in range(config.num_layers))
        self.norm = RMSNorm(config.hidden_dim, config.norm_eps)
        self.lm_head = nn.Linear(config.hidden_dim, config.vocab_size, bias=False)
        self.gradient_checkpointing = False
        self.post_init()

    # --- Hugging Face plumbing ----------------------------------------------------------------
    @classmethod
    def _supports_default_dynamic_cache(cls) -> bool:
        return False  # our state is not a KV cache: without this, generate() feeds one token and no state

    def get_input_embeddings(self):
        return self.embed

    def set_input_embeddings(self, value):
        self.embed = value

    def get_output_embeddings(self):
        return self.lm_head

    def set_output_embeddings(self, value):
        self.lm_head = value

    def _reorder_cache(self, cache: HAMTCache, beam_idx: torch.LongTensor) -> HAMTCache:
        cache.reorder_cache(beam_idx)
        return cache

    def prepare_inputs_for_generation(self, input_ids, cache=None, attention_mask=None, **kwargs):
        inputs = super().prepare_inputs_for_generation(input_ids, cache=cache, attention_mask=attention_mask, **kwargs)
        inputs["attention_mask"] = attention_mask  # the whole mask; forward uses its last T columns
        inputs.pop("position_ids", None)  # order comes from the recurrence
        return inputs

    def _set_gradient_checkpointing(self, enable: bool = True, gradient_checkpointing_func=None, **kwargs):
        self.gradient_checkpointing = enable  # blocks are checkpointed in forward (non-reentrant)

    # --- forward ------------------------------------------------------------------------------
    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        labels: torch.LongTensor | None = None,
        cache: HAMTCache | None = None,
        use_cache: bool | None = None,
        return_memory_stats: bool = False,
        inputs_embeds: torch.Tensor | None = None,
        return_dict: bool | None = None,
        attention_mask: torch.Tensor | None = None,  # (B, T) or (B, past + T): 1 = real token, 0 = padding
        logits_to_keep: int = 0,
        output_hidden_states: bool | None = None,
        **kwargs,
    ) -> HAMTCausalLMOutput:
        x = self.embed(input_ids) if inputs_embeds is None else inputs_embeds  # (B, T, d)
        T = x.shape[1]
        mask = None
        if attention_mask is not None:
            mask = attention_mask[:, -T:].to(device=x.device, dtype=torch.bool)  # (B, T); generate passes past + T
            if bool(mask.all()):
                mask = None  # nothing padded: the unmasked path
        if output_hidden_states is None:
            output_hidden_states = self.config.output_hidden_states
        hidden = [x] if output_hidden_states else None
        want_stats = bool(return_memory_stats or (self.config.use_auxiliary_loss and labels is not None))
        states = cache.layers if cache is not None else [None] * len(self.blocks)
        new_states, stats = [], []
        for block, state in zip(self.blocks, states):
            if self.gradient_checkpointing and self.training and torch.is_grad_enabled():
                x, st, s = checkpoint(block, x, state, want_stats, mask, use_reentrant=False)
            else:
                x, st, s = block(x, state, want_stats, mask)
            new_states.append(st)
            stats.append(s)
            if hidden is not None:
                hidden.append(x)
        x = self.norm(x)
        if hidden is not None:
            hidden[-1] = x  # the HF convention: the last hidden state is after the final norm
        if logits_to_keep:
            x = x[:, -logits_to_keep:]
        logits = self.lm_head(x)  # (B, T, V)

        lm_loss = aux_loss = fidelity = slot_usage = None
        if want_stats:
            fidelity = torch.stack([s.fidelity for s in stats]).mean()
            slot_usage = torch.stack([s.slot_usage for s in stats])  # (L, S)
            aux_loss = 1.0 - fidelity
        loss = None
        if labels is not None:
            # Position t predicts token t+1. The labels are shifted, not the logits: slicing the (B, T, V)
            # logits copied them and its backward filled a zero tensor of their size (10% of a tiny step).
            targets = F.pad(labels[:, 1:], (0, 1), value=-100)  # (B, T); the last position predicts nothing
            if mask is not None:  # a target counts only if it and the token predicting it are real
                targets = targets.masked_fill(~(mask & F.pad(mask[:, 1:], (0, 1), value=False)), -100)
            lm_loss = F.cross_entropy(
                logits.reshape(-1, logits.shape[-1]).to(compute_dtype(logits.dtype)), targets.reshape(-1),
                ignore_index=-100,
            )
            loss = lm_loss
            if self.config.use_auxiliary_loss:
                loss = lm_loss + self.config.aux_loss_weight * aux_loss
        use_cache = use_cache if use_cache is not None else (cache is not None)
        new_cache = None
        if use_cache:
            seen = (cache.seen_tokens if cache is not None else 0) + T
            new_cache = HAMTCache(new_states, seen)
        return HAMTCausalLMOutput(loss=loss, logits=logits, cache=new_cache, lm_loss=lm_loss, aux_loss=aux_loss,
                                  fidelity=fidelity, slot_usage=slot_usage,
                                  hidden_states=tuple(hidden) if hidden is not None else None)


def register_auto_classes() -> None:
    """``model_type="hamt"`` -> these classes, for AutoConfig and AutoModelForCausalLM."""
    AutoConfig.register("hamt", HAMTConfig, exist_ok=True)
    AutoModelForCausalLM.register(HAMTConfig, HAMTForCausalLM, exist_ok=True)


register_auto_classes()


def count_parameters(config: HAMTConfig) -> int:
    """Exact trainable parameter count of ``HAMTForCausalLM(config)`` (builds the model on meta)."""
    with torch.device("meta"):
        model = HAMTForCausalLM(config)
    return sum(p.numel() for p in model.parameters())
