"""The HAMT block: RMSNorm, a causal short convolution, the holographic memory mixer and an MLP.

Plain ``nn.Module``s with no Hugging Face dependency; ``hamt.model`` wraps them. Each layer's
recurrent state is a ``LayerState`` (memory + convolution tail), constant in size whatever the
context length.

Padding: ``mask`` (B, T), true at real tokens. A masked position writes nothing and does not decay the
memory (write weight w = 0, log forget log_f = 0, so the state passes through unchanged) and enters the
short convolution as zeros, so a left-padded row computes exactly what the unpadded prompt computes.

Precision: the memory runs in max(float32, parameter dtype): complex64 for fp32/bf16/fp16 models,
complex128 for a float64 model (``compute_dtype``).

Fourier transforms: the rfft of a P-length head and the irfft of its read-out are fixed linear maps, so
by default (``HolographicMemory.transform = "matmul"``) they are real matmuls: the rfft is folded into
the key/query/value projection (W' = DFT @ W_kqv per head, computed from the stored weight at forward
time, so checkpoints are unchanged), complex numbers are carried as real (re, im) pairs, and the irfft
is one (2F -> P) matmul per head. ``transform = "fft"`` is the reference (torch.fft, complex), kept
for the equivalence tests.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from hamt.config import HAMTConfig
from hamt.ops import memory_scan, memory_step, slot_permutations, unitary


@dataclass
class LayerState:
    """Recurrent state of one layer: memory (B, H, S, F) complex and the conv tail (B, d, k-1)."""

    memory: torch.Tensor
    conv: torch.Tensor | None

    def tensors(self) -> list[torch.Tensor]:
        return [t for t in (self.memory, self.conv) if t is not None]


@dataclass
class MixerStats:
    """Per-layer diagnostics: fidelity (0-dim) and mean write weight per slot (S,)."""

    fidelity: torch.Tensor
    slot_usage: torch.Tensor


def compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """The real dtype the memory and the norms compute in for parameters of ``dtype``: at least float32."""
    return torch.promote_types(dtype, torch.float32)


# (P, dtype, device) -> (fwd (2F, P), inv (P, 2F)); built in float64, a few KB each.
_DFT_CACHE: dict[tuple, tuple[torch.Tensor, torch.Tensor]] = {}


def dft_matrices(P: int, dtype: torch.dtype, device) -> tuple[torch.Tensor, torch.Tensor]:
    """rfft and irfft (n=P) of a real length-P vector as real matrices on (re, im) pairs.

    fwd (2F, P): fwd @ x = view_as_real(rfft(x)).reshape(2F); inv (P, 2F): inv @ view_as_real(X).reshape(2F)
    = irfft(X, n=P), which ignores the imaginary parts of the DC and Nyquist terms (zero columns here)."""
    key = (P, dtype, str(device))
    if key not in _DFT_CACHE:
        F_ = P // 2 + 1
        fp = torch.outer(torch.arange(F_), torch.arange(P)) % P  # exact integer phases: f p mod P
        ang = (2 * math.pi / P) * fp.to(torch.float64)  # (F, P)
        cos, sin = torch.cos(ang), torch.sin(ang)
        sin[0], sin[-1] = 0.0, 0.0  # exactly zero at DC and Nyquist (sin(pi p) is 1e-16 in floats)
        fwd = torch.stack([cos, -sin], 1).reshape(2 * F_, P)
        weight = torch.full((F_, 1), 2.0, dtype=torch.float64)  # each inner frequency stands for +-f
        weight[0], weight[-1] = 1.0, 1.0
        inv = (torch.stack([cos, -sin], 1) * weight[..., None] / P).reshape(2 * F_, P).T
        _DFT_CACHE[key] = (fwd.to(device=device, dtype=dtype), inv.contiguous().to(device=device, dtype=dtype))
    return _DFT_CACHE[key]


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float = 1e-6):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        xf = x.to(compute_dtype(x.dtype))
        y = xf * torch.rsqrt(xf.square().mean(-1, keepdim=True) + self.eps)
        return (y * self.weight.to(xf.dtype)).to(x.dtype)


class CausalConv(nn.Module):
    """Depthwise causal convolution of width k over time, then SiLU; carries a (B, d, k-1) tail.

    Written as k shifted multiply-adds rather than ``nn.Conv1d``: on CPU the depthwise conv's backward
    was the single most expensive op of a training step (measured with torch.profiler), the shifts are
    a handful of cheap elementwise ops. The parameters keep Conv1d's layout: weight (d, 1, k), bias (d,).
    """

    def __init__(self, dim: int, kernel: int):
        super().__init__()
        self.kernel = kernel
        self.weight = nn.Parameter(torch.empty(dim, 1, kernel))
        self.bias = nn.Parameter(torch.zeros(dim))
        nn.init.kaiming_uniform_(self.weight, a=math.sqrt(5))

    def forward(self, x: torch.Tensor, tail: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        B, T, d = x.shape
        k = self.kernel
        if tail is None:
            tail = x.new_zeros(B, d, k - 1)
        xp = torch.cat([tail.transpose(1, 2).to(x.dtype), x], dim=1)  # (B, k-1+T, d)
        w = self.weight[:, 0, :].to(x.dtype)  # (d, k); tap k-1 multiplies the current token
        y = self.bias.to(x.dtype) + xp[:, k - 1 :] * w[:, k - 1]
        for i in range(k - 1):
            y = y + xp[:, i : i + T] * w[:, i]
        new_tail = xp[:, T:].transpose(1, 2)  # (B, d, k-1): the last k-1 inputs
        return F.silu(y), new_tail


class HolographicMemory(nn.Module):
    """Token mixer: bind keys to values in S permuted Fourier slots, decay with a forget gate, unbind with queries."""

    def __init__(self, config: HAMTConfig, layer_idx: int = 0):
        super().__init__()
        self.config = config
        d, D = config.hidden_dim, config.hcm_dim
        H, S = config.num_attention_heads, config.num_slots
        self.H, self.S, self.P, self.F = H, S, config.head_dim, config.num_freqs
        self.conv = CausalConv(d, config.conv_kernel) if config.conv_kernel > 0 else None
        self.kqv = nn.Linear(d, 3 * D, bias=False)
        # forget logits (H) + write-address logits (H*S) + read-address logits (H*S), one fused matmul
        self.gates = nn.Linear(d, H + 2 * H * S, bias=False) if config.use_gating else None
        # Bias of the forget gate: heads span horizons from 2 tokens to the whole context (multi-scale).
        self.forget_bias = nn.Parameter(self._multiscale_bias(), requires_grad=config.use_gating)
        self.out_gate = nn.Linear(d, D, bias=False)
        self.out_norm = nn.Parameter(torch.ones(D))  # per-head RMSNorm weight
        self.out_proj = nn.Linear(D, d, bias=False)
        self.register_buffer("perm", slot_permutations(S, self.F, config.slot_perm_seed + layer_idx), persistent=True)
        self.transform = "matmul"  # or "fft", the reference (module docstring); not saved: the same function
        self._folded: tuple | None = None  # (weight key, folded weight) kept while no gradient is needed

    def _multiscale_bias(self) -> torch.Tensor:
        H, ctx = self.config.num_attention_heads, self.config.max_position_embeddings
        horizons = torch.logspace(math.log10(2.0), math.log10(max(ctx, 3)), H)  # tau_h, tokens
        return torch.log(horizons - 1.0)  # logit(1 - 1/tau): f = sigmoid(bias) = 1 - 1/tau

    def reset_parameters_hamt(self) -> None:
        with torch.no_grad():
            self.forget_bias.copy_(self._multiscale_bias())
            self.out_norm.fill_(1.0)

    # ------------------------------------------------------------------------------------------
    def _gates(self, u: torch.Tensor, dtype: torch.dtype, mask: torch.Tensor | None):
        """log forget (B,T,H), write weights w (B,T,H,S), read weights b (B,T,H,S), write address a.

        At masked positions log_f = 0 and w = 0: the memory neither decays nor is written."""
        B, T, _ = u.shape
        H, S = self.H, self.S
        if self.gates is not None:
            g = self.gates(u).to(dtype)
            f_logit, a_logit, b_logit = g.split([H, H * S, H * S], dim=-1)
            log_f = F.logsigmoid(f_logit + self.forget_bias.to(dtype))  # (B, T, H)
            a = a_logit.view(B, T, H, S).softmax(-1)
            b = b_logit.view(B, T, H, S).softmax(-1)
        else:
            log_f = F.logsigmoid(self.forget_bias.to(dtype)).expand(B, T, H)
            a = u.new_full((B, T, H, S), 1.0 / S, dtype=dtype)
            b = a
        if mask is not None:
            log_f = log_f * mask[..., None].to(dtype)
        w = -torch.expm1(log_f)[..., None] * a  # (1 - f) * a: zero where log_f = 0
        return log_f, w, b, a

    def _folded_kqv(self) -> torch.Tensor:
        """The kqv weight with the per-head rfft folded in: (3 H 2F, d), rows ordered (k|q|v, head, freq, re|im).

        Recomputed from the stored weight each training step (a small matmul; autograd reaches the weight
        through it); without gradients it is kept until the weight changes (decoding: one fold, not one a token)."""
        W = self.kqv.weight  # (3 D, d)
        cache = not (torch.is_grad_enabled() and W.requires_grad) and not torch.compiler.is_compiling()
        key = (W.data_ptr(), W._version, W.dtype, W.device) if cache else None
        if cache and self._folded is not None and self._folded[0] == key:
            return self._folded[1]
        dtype = compute_dtype(W.dtype)
        fwd, _ = dft_matrices(self.P, dtype, W.device)
        folded = torch.matmul(fwd, W.to(dtype).view(3 * self.H, self.P, -1))  # (3H, 2F, P) @ (3H, P, d)
        folded = folded.reshape(-1, W.shape[1]).to(W.dtype)
        self._folded = (key, folded) if cache else None
        return folded

    def _spectra(self, u: torch.Tensor, dtype: torch.dtype):
        """rfft of each head's k, q, v as real pairs (B, T, H, F, 2) in ``dtype`` (k, q not yet unitary), and the
        time-domain v (B, T, H, P), or None where only its spectrum exists."""
        B, T, _ = u.shape
        H, P, F_ = self.H, self.P, self.F
        if self.transform == "fft":  # the reference: torch.fft on complex tensors
            k, q, v = self.kqv(u).to(dtype).view(B, T, 3, H, P).unbind(2)  # each (B, T, H, P)
            return (*(torch.view_as_real(torch.fft.rfft(x)) for x in (k, q, v)), v)
        kqv = F.linear(u, self._folded_kqv()).to(dtype).view(B, T, 3, H, F_, 2)
        return (*kqv.unbind(2), None)  # strided views of the one projection: the memory scan reads them in place

    def _to_time(self, X: torch.Tensor) -> torch.Tensor:
        """irfft (n=P) of the (B, T, H, F, 2) pairs ``X``: (B, T, H, P) real."""
        if self.transform == "fft":
            return torch.fft.irfft(torch.view_as_complex(X), n=self.P)
        _, inv = dft_matrices(self.P, X.dtype, X.device)  # (P, 2F)
        return torch.matmul(X.reshape(*X.shape[:-2], -1), inv.T)

    def forward(
        self, x: torch.Tensor, state: LayerState | None = None, want_stats: bool = False,
        mask: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, LayerState, MixerStats | None]:
        """``mask`` (B, T) bool, true at real tokens (None: all real); see the module docstring."""
        B, T, _ = x.shape
        H, P = self.H, self.P
        dtype = compute_dtype(self.kqv.weight.dtype)  # fp32 at least, for the transforms and the state
        eps = self.config.norm_eps
        conv_tail = None
        u = x
        if self.conv is not None:
            xc = x if mask is None else x * mask[..., None].to(x.dtype)  # padding enters the conv as zeros
            u, conv_tail = self.conv(xc, None if state is None else state.conv)
        k, q, V, v = self._spectra(u, dtype)  # pairs (B, T, H, F, 2); k, q are made unitary by the scan
        log_f, w, b, a = self._gates(u, dtype, mask)
        c = a if want_stats else None
        mem0 = None if state is None else state.memory
        if T == 1 and mem0 is not None and not torch.is_grad_enabled():
            Q, K, Vc = (torch.view_as_complex(t[:, 0].contiguous()) for t in (unitary(q, eps), unitary(k, eps), V))
            r, uu, mem = memory_step(Q, K, Vc, log_f[:, 0], w[:, 0], b[:, 0], self.perm, mem0,
                                     None if c is None else c[:, 0])
            r, uu = torch.view_as_real(r)[:, None], (None if uu is None else torch.view_as_real(uu)[:, None])
        else:
            r, uu, mem = memory_scan(q, k, V, log_f, w, b, self.perm, mem0, c, mode=self.config.memory_mode,
                                     chunk_size=self.config.chunk_size, normalize=eps)
        y = self._to_time(r)  # (B, T, H, P)
        y = y * torch.rsqrt(y.square().mean(-1, keepdim=True) + eps)  # per-head RMS norm
        y = y.reshape(B, T, H * P) * self.out_norm.to(dtype)
        y = y.to(x.dtype) * F.silu(self.out_gate(x))
        out = self.out_proj(y)
        stats = None
        if want_stats:
            recalled = self._to_time(uu)  # (B, T, H, P) what the key unbinds right after the write
            v = self._to_time(V) if v is None else v  # the value written, in the time domain
            fid = F.cosine_similarity(recalled, v, dim=-1, eps=1e-6)  # (B, T, H)
            if mask is None:
                stats = MixerStats(fidelity=fid.mean(), slot_usage=a.mean(dim=(0, 1, 2)))
            else:  # averages over the real tokens only
                m = mask.to(dtype)[..., None]  # (B, T, 1)
                n = m.sum().clamp_min(1) * H
                stats = MixerStats(fidelity=(fid * m).sum() / n, slot_usage=(a * m[..., None]).sum((0, 1, 2)) / n)
        return out, LayerState(mem, conv_tail), stats


class MLP(nn.Module):
    def __init__(self, config: HAMTConfig):
        super().__init__()
        self.fc = nn.Linear(config.hidden_dim, config.mlp_dim, bias=False)
        self.proj = nn.Linear(config.mlp_dim, config.hidden_dim, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(F.gelu(self.fc(x), approximate="tanh"))


class HAMTBlock(nn.Module):
    """Pre-norm residual block: x + Drop(Memory(Norm(x))), then x + Drop(MLP(Norm(x)))."""

    def __init__(self, config: HAMTConfig, layer_idx: int):
        super().__init__()
        self.norm1 = RMSNorm(config.hidden_dim, config.norm_eps)
        self.mixer = HolographicMemory(config, layer_idx)
        self.norm2 = RMSNorm(config.hidden_dim, config.norm_eps)
        self.mlp = MLP(config)
        self.drop = nn.Dropout(config.dropout)

    def forward(self, x, state: LayerState | None = None, want_stats: bool = False, mask: torch.Tensor | None = None):
        h, new_state, stats = self.mixer(self.norm1(x), state, want_stats, mask)
        x = x + self.drop(h)
        x = x + self.drop(self.mlp(self.norm2(x)))
        return x, new_state, stats
