"""Systems metrics, defined once: FLOPs per token, the peak FLOP/s behind MFU, peak memory, throughput,
decoding latency and state bytes against context length.

The trainer's ``metrics.json``, ``hamt bench``, ``hamt compare`` and the report all call these
functions, so an MFU or a tokens/s in one place means what it means in another.

One file (~450 lines) on purpose: it is the one place a systems number is defined (issue 11 asks for
"ONE flops-per-token, ONE peak FLOP/s, ONE throughput, ONE peak memory, ONE decode profile"), and its
four sections (FLOPs and MFU's peak; peak memory; throughput; decoding) read top to bottom and lean on
each other — throughput and decoding are measured with the same ``timed`` timer and ``PeakMemory``,
MFU divides a throughput by a peak. Split across files, a reader would chase each measure's
definition through imports.
"""

from __future__ import annotations

import copy
import math
import os
import resource
import sys
import time
from typing import Any, Sequence

import torch

from hamt.runtime import synchronize


# --------------------------------------------------------------------------------------------------
# FLOPs per token and MFU
# --------------------------------------------------------------------------------------------------


def matmul_params(model) -> int:
    """Weights used in a multiply-add per token: all parameters except embedding lookups (a tied lm_head counts)."""
    from torch import nn

    lookup = {id(m.weight) for m in model.modules() if isinstance(m, nn.Embedding)}
    out = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    if out is not None:
        lookup.discard(id(out.weight))
    return sum(p.numel() for p in model.parameters() if id(p) not in lookup)


# model types whose mixer is attention over the whole context (counted as 12 L T d in flops_per_token)
ATTENTION_MODEL_TYPES = ("gpt2", "llama", "gpt_neox", "mistral", "qwen2")


def _layers_width(cfg) -> tuple[int, int]:
    L = getattr(cfg, "n_layer", None) or getattr(cfg, "num_hidden_layers", None) or getattr(cfg, "num_layers", 0)
    d = getattr(cfg, "n_embd", None) or getattr(cfg, "hidden_size", None) or getattr(cfg, "hidden_dim", 0)
    return int(L), int(d)


def flops_per_token(model, seq_len: int) -> dict:
    """Training FLOPs per token (forward + backward = 3 x forward), the PaLM/nanoGPT convention.

    Returns ``{"matmul", "mixer", "total"}``. What is counted:
    - ``matmul`` = 6 N, N = ``matmul_params(model)``: each weight does one multiply-add (2 FLOPs) per
      token in the forward pass and two in the backward (input and weight gradients). Embedding
      lookups are not FLOPs and are left out; a tied lm_head is a matmul and is counted once.
    - ``mixer``: the token mixer's FLOPs that use no weights, x3 for training:
      * attention (GPT-2, Llama): QK^T and AV over the full context, 2 x 2 T d per layer and token
        (the causal mask's halving is ignored, as in PaLM/nanoGPT): 12 L T d for training.
      * HAMT memory, counted as the recurrent algorithm (not the chunked implementation, whose
        intra-chunk matmul does about 4 C S H F more per token): per layer and token,
        3 rfft + 1 irfft of P reals per head (~2.5 P log2 P each: 10 D log2 P), the unitary
        projection of K and Q (~12 H F), the write pi(K) V w plus the decay-and-add of the state
        (~12 S H F) and the slot-weighted read conj(pi(Q)) M (~10 S H F); with the auxiliary loss
        the key read-back adds ~10 S H F + 2.5 D log2 P.
      * any other mixer (e.g. a state-space scan): 0, i.e. MFU counts its weights only.
    Norms, activations, softmaxes and the loss are not counted (conventional; a few percent).
    """
    cfg = model.config
    mm = 6 * matmul_params(model)
    kind = getattr(cfg, "model_type", "")
    if kind == "hamt":
        D, H, S, L = cfg.hcm_dim, cfg.num_attention_heads, cfg.num_slots, cfg.num_layers
        P = D // H
        F = P // 2 + 1
        per_layer = 10 * D * math.log2(P) + 12 * H * F + 22 * S * H * F
        if cfg.use_auxiliary_loss:
            per_layer += 10 * S * H * F + 2.5 * D * math.log2(P)
        mixer = 3 * L * per_layer
    elif kind in ATTENTION_MODEL_TYPES:
        L, d = _layers_width(cfg)
        mixer = 12 * L * seq_len * d
    else:
        mixer = 0.0
    return {"matmul": float(mm), "mixer": float(mixer), "total": float(mm + mixer)}


# Dense peak FLOP/s of common accelerators: (bf16/fp16 tensor cores, fp32 via TF32 tensor cores).
# From the vendors' datasheets (dense, no sparsity). Matched on the device name; first match wins.
GPU_PEAK_FLOPS = [
    ("H100 PCIe", 756e12, 378e12), ("H100", 989e12, 495e12), ("H200", 989e12, 495e12), ("GH200", 989e12, 495e12),
    ("B200", 2250e12, 1100e12), ("A100", 312e12, 156e12), ("A10G", 125e12, 62.5e12), ("A10", 125e12, 62.5e12),
    ("L40S", 362e12, 183e12), ("L4", 121e12, 60e12), ("4090", 165e12, 82.6e12), ("3090", 71e12, 35.6e12),
    ("V100", 125e12, 15.7e12), ("T4", 65e12, 8.1e12),
]

_MATMUL_PEAK_CACHE: dict[str, float] = {}


def matmul_peak_flops(device, precision: str = "fp32", n: int | None = None, repeats: int = 4) -> float:
    """Measured dense matmul FLOP/s (best of ``repeats``, an n^3 matmul) in this process; cached per setting."""
    device = torch.device(device)
    n = n or (8192 if device.type == "cuda" else 1024)
    half = torch.float16 if device.type == "cuda" else torch.float32  # fp16 on a CPU is probed as fp32
    dtype = {"bf16": torch.bfloat16, "fp16": half}.get(precision, torch.float32)
    key = f"{device}:{dtype}:{n}:{torch.get_num_threads()}"
    if key not in _MATMUL_PEAK_CACHE:
        g = torch.Generator().manual_seed(0)
        a = torch.randn(n, n, generator=g).to(device=device, dtype=dtype)
        b = torch.randn(n, n, generator=g).to(device=device, dtype=dtype)
        a @ b  # warm-up
        best = float("inf")
        for _ in range(repeats):
            synchronize(device)
            t = time.perf_counter()
            a @ b
            synchronize(device)
            best = min(best, time.perf_counter() - t)
        _MATMUL_PEAK_CACHE[key] = 2 * n**3 / best
    return _MATMUL_PEAK_CACHE[key]


def peak_flops(device, precision: str, override: float = 0.0) -> tuple[float | None, str]:
    """The peak FLOP/s MFU is measured against, and where the number comes from.

    Order: env ``HAMT_PEAK_FLOPS`` > ``override`` (``train.peak_flops``) > for a GPU in the datasheet
    table above its dense tensor-core peak in the precision (fp32 = TF32), the usual MFU denominator >
    otherwise (CPU, unknown GPU) a matmul measured in this process (``matmul_peak_flops``). On a
    shared CPU the probe is noisy: set ``HAMT_PEAK_FLOPS`` for comparable numbers across runs.
    """
    env = os.environ.get("HAMT_PEAK_FLOPS")
    if env:
        return float(env), "env HAMT_PEAK_FLOPS"
    if override > 0:
        return float(override), "train.peak_flops"
    device = torch.device(device)
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
        for key, half, single in GPU_PEAK_FLOPS:
            if key in name:
                return (single if precision == "fp32" else half), f"datasheet {key}"
        return matmul_peak_flops(device, precision), f"measured matmul ({name})"
    return matmul_peak_flops(device, "bf16" if precision == "bf16" else "fp32"), "measured matmul (cpu)"


def mfu(tokens_per_s: float, flops_per_token_total: float, peak: float | None) -> float | None:
    """Model FLOPs utilisation: achieved training FLOP/s over the peak (None without a peak)."""
    if not peak or not tokens_per_s:
        return None
    return tokens_per_s * flops_per_token_total / peak


def _rss_peak_bytes() -> tuple[int, str]:
    """Peak RSS of this process: VmHWM (resettable) when /proc has it, else getrusage's ru_maxrss."""
    try:
        with open("/proc/self/status", encoding="utf-8") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024, "VmHWM"
    except OSError:
        pass
    # ru_maxrss: kilobytes on Linux, bytes on macOS.
    scale = 1 if sys.platform == "darwin" else 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale, "getrusage"


def _rss_bytes() -> int:
    """Current resident set size (0 where /proc is unavailable)."""
    try:
        with open("/proc/self/status", encoding="utf-8") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def _reset_rss_peak() -> bool:
    # Linux >= 4.0: writing 5 to clear_refs resets the peak RSS (VmHWM) to the current RSS, so the
    # peak of one measurement is not the high-water mark of everything the process did before.
    try:
        with open("/proc/self/clear_refs", "w", encoding="ascii") as f:
            f.write("5")
        return True
    except OSError:
        return False


class PeakMemory:
    """Context manager measuring peak memory inside its block: THE peak-memory definition.

    CUDA (any ``how``): the caching allocator's ``max_memory_allocated`` (tensors only), reset on entry.
    CPU, ``how="rss"`` (the default; cheap, readable inside a long block, as the trainer does): the
    process's peak resident set size (includes the interpreter and libraries); reset on entry where
    Linux allows it, otherwise the high-water mark since the process started.
    CPU, ``how="allocator"``: the running total of tensor allocations that torch's profiler records
    over the block ("Total Allocated"), so freed-but-cached heap memory and the process's other memory
    do not blur it (what ``hamt bench`` reports); counted from zero at entry (base 0) and read at exit.
    ``source`` says which: ``cuda_allocator``, ``rss_reset``, ``rss_since_start``, ``cpu_allocator``.
    """

    def __init__(self, device: torch.device | str = "cpu", how: str = "rss"):
        if how not in ("rss", "allocator"):
            raise ValueError(f"PeakMemory: how must be 'rss' or 'allocator', got {how!r}")
        self.device = torch.device(device)
        self.how = how
        self.peak_bytes = 0
        self.base_bytes = 0
        self.source = ""
        self._prof = None

    def __enter__(self) -> "PeakMemory":
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            self.base_bytes = int(torch.cuda.memory_allocated(self.device))
            self.source = "cuda_allocator"
        elif self.how == "allocator":
            from torch.profiler import ProfilerActivity, profile

            self._prof = profile(activities=[ProfilerActivity.CPU], profile_memory=True)
            self._prof.__enter__()
            self.source = "cpu_allocator"
        else:
            self.source = "rss_reset" if _reset_rss_peak() else "rss_since_start"
            self.base_bytes = _rss_bytes()
        return self

    def __exit__(self, *exc) -> None:
        if self._prof is not None:
            self._prof.__exit__(*exc)
            self.peak_bytes = _profiler_peak_bytes(self._prof)
            self._prof = None
            return
        self.read()

    def read(self) -> int:
        """The peak so far (bytes), also stored in ``peak_bytes``: a long run reads it while inside the block
        (the CPU allocator peak is known only at exit: inside the block this returns the last value)."""
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            self.peak_bytes = int(torch.cuda.max_memory_allocated(self.device))
        elif self.how == "rss":
            self.peak_bytes = _rss_peak_bytes()[0]
        return self.peak_bytes

    @property
    def peak_mb(self) -> float:
        return self.peak_bytes / 2**20

    @property
    def delta_mb(self) -> float:
        """Peak above what was held on entry: the memory the measured work itself needed."""
        return max(0, self.peak_bytes - self.base_bytes) / 2**20


def _profiler_peak_bytes(prof) -> int:
    """The highest running total of allocations ("[memory]" events, in time order) of a finished profile."""
    import json
    import tempfile
    from pathlib import Path

    with tempfile.TemporaryDirectory() as tmp:
        trace = Path(tmp) / "trace.json"
        prof.export_chrome_trace(str(trace))
        events = json.loads(trace.read_text())["traceEvents"]
    mem = sorted((e for e in events if e.get("name") == "[memory]"), key=lambda e: e["ts"])
    return int(max([0, *(e["args"]["Total Allocated"] for e in mem)]))


# --------------------------------------------------------------------------------------------------
# Throughput: one timer, one training step, one training and one inference measurement
# --------------------------------------------------------------------------------------------------


def timed(fn, device) -> float:
    """Seconds of one call of ``fn``, with the device's queue drained before and after."""
    device = torch.device(device)
    synchronize(device)
    t0 = time.perf_counter()
    fn()
    synchronize(device)
    return time.perf_counter() - t0


def random_ids(batch: int, seq_len: int, vocab: int, device, seed: int = 0) -> torch.Tensor:
    """Token ids of shape (batch, seq_len): throughput does not depend on the ids."""
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, vocab, (batch, seq_len), generator=g).to(device)


def _vocab(model) -> int:
    return int(model.get_output_embeddings().weight.shape[0])


def probe_optimizer(model, device, lr: float = 1e-4) -> torch.optim.Optimizer:
    """AdamW as the trainer runs it (fused on CUDA): the optimiser part of a measured training step."""
    extra = {"fused": True} if torch.device(device).type == "cuda" else {}
    return torch.optim.AdamW(model.parameters(), lr=lr, **extra)


def train_step(model, x: torch.Tensor, *, device, precision: str = "fp32", optimizer=None, grad_clip: float = 0.0):
    """A closure running one training step on the ids ``x`` (B, T): forward + backward under the
    precision's autocast, then (with ``optimizer``) gradient clipping and the optimiser step.

    Without an optimiser it measures the model alone (``hamt bench model``'s default); with one it is
    the trainer's step (what ``metrics.json``'s tokens/s times). Gradients are dropped after each step.
    """
    from hamt.runtime import autocast_context

    device = torch.device(device)

    def step() -> None:
        with autocast_context(device, precision):
            out = model(input_ids=x, labels=x, use_cache=False)
        out.loss.backward()  # what the trainer optimises (HAMT: LM loss + auxiliary loss when enabled)
        if optimizer is not None:
            if grad_clip > 0:
                torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
        else:
            model.zero_grad(set_to_none=True)

    return step


def train_throughput(model, batch: int, seq_len: int, *, device="cpu", steps: int = 3, warmup: int = 1,
                     lr: float = 1e-4, precision: str = "fp32", optimizer=True, grad_clip: float = 0.0,
                     memory: str = "rss", copy_model: bool = True) -> dict:
    """Training tokens/s (forward + backward [+ optimiser step]) and peak memory over ``steps`` steps of
    random tokens (batch, seq_len), after ``warmup`` untimed ones: THE training-throughput measurement.

    ``optimizer``: True (a fresh AdamW, the trainer's step), False (forward + backward only: the model
    alone), or an optimiser of ``model`` kept by the caller. ``copy_model`` measures a copy, so the
    evaluated weights stay untouched (compare); ``hamt bench`` passes False and its own optimiser so that
    repeated calls, alternating two models, continue one run. ``memory`` is ``PeakMemory``'s ``how``
    (``allocator`` on a CPU runs the profiler, which slows the timed steps: measure memory and time apart).
    """
    device = torch.device(device)
    probe = copy.deepcopy(model).to(device).train() if copy_model else model.train()
    opt = probe_optimizer(probe, device, lr) if optimizer is True else (optimizer or None)
    x = random_ids(batch, seq_len, _vocab(probe), device, seed=1)
    step = train_step(probe, x, device=device, precision=precision, optimizer=opt, grad_clip=grad_clip)
    for _ in range(warmup):
        step()
    with PeakMemory(device, memory) as mem:
        dt = timed(lambda: [step() for _ in range(steps)], device)
    del probe, opt
    return {"tokens_per_s": batch * seq_len * steps / dt, "step_s": dt / steps, "peak_mem_mb": mem.peak_mb,
            "mem_delta_mb": mem.delta_mb, "mem_source": mem.source, "batch": batch, "seq_len": seq_len}


@torch.no_grad()
def inference_throughput(model, batch: int, seq_len: int, *, device="cpu", steps: int = 3, warmup: int = 1,
                         memory: str = "rss") -> dict:
    """Forward-only tokens/s and peak memory on random tokens of shape (batch, seq_len)."""
    device = torch.device(device)
    model.eval()
    x = random_ids(batch, seq_len, _vocab(model), device)

    def forward() -> None:
        model(input_ids=x, use_cache=False).logits

    for _ in range(warmup):
        forward()
    with PeakMemory(device, memory) as mem:
        dt = timed(lambda: [forward() for _ in range(steps)], device)
    return {"tokens_per_s": batch * seq_len * steps / dt, "peak_mem_mb": mem.peak_mb, "mem_delta_mb": mem.delta_mb,
            "mem_source": mem.source, "batch": batch, "seq_len": seq_len}


# --------------------------------------------------------------------------------------------------
# Decoding: latency and state bytes against context length
# --------------------------------------------------------------------------------------------------


def cache_nbytes(cache: Any) -> int:
    """Bytes held by a decoding cache: HAMT's ``cache.nbytes()``, or the tensors of a KV cache.

    Works for transformers' ``DynamicCache`` (layers with keys/values), legacy tuples of tensors,
    and any object holding tensors; each tensor is counted once.
    """
    fn = getattr(cache, "nbytes", None)
    if callable(fn):
        return int(fn())
    seen: set[int] = set()

    def walk(obj: Any, depth: int) -> int:
        if obj is None or depth > 6 or id(obj) in seen:
            return 0
        seen.add(id(obj))
        if torch.is_tensor(obj):
            return obj.numel() * obj.element_size()
        if isinstance(obj, (list, tuple)):
            return sum(walk(o, depth + 1) for o in obj)
        if isinstance(obj, dict):
            return sum(walk(o, depth + 1) for o in obj.values())
        if hasattr(obj, "__dict__") and not isinstance(obj, (torch.nn.Module, type)):
            return sum(walk(o, depth + 1) for o in vars(obj).values())
        return 0

    return walk(cache, 0)


def max_context(model_or_config) -> int | None:
    """The longest input a model accepts (learned positions), or None when unbounded (HAMT, a recurrence)."""
    cfg = getattr(model_or_config, "config", model_or_config)
    if getattr(cfg, "model_type", None) == "hamt":
        return None
    for key in ("n_positions", "max_position_embeddings"):
        n = getattr(cfg, key, None)
        if n:
            return int(n)
    return None


@torch.no_grad()
def decode_profile(model, contexts: Sequence[int], *, new_tokens: int = 16, device="cpu", seed: int = 0) -> list[dict]:
    """Per-token decoding latency and cache bytes after prefilling ``context`` random tokens (batch 1).

    For each context length: one prefill forward with ``use_cache=True``, then ``new_tokens`` greedy
    steps feeding one token and the cache. Contexts the model cannot hold are reported as skipped.
    """
    device = torch.device(device)
    model.eval()
    limit = max_context(model)
    rows = []
    for c in contexts:
        if limit is not None and c + new_tokens > limit:
            rows.append({"context": c, "status": "skipped",
                         "reason": f"context {c} + {new_tokens} new tokens exceeds the model's {limit} positions"})
            continue
        x = random_ids(1, c, _vocab(model), device, seed=seed)
        with PeakMemory(device) as mem:
            out = model(input_ids=x, use_cache=True)
            cache = out.cache
            prefill_bytes = cache_nbytes(cache)
            tok = out.logits[:, -1:].argmax(-1)  # (1, 1)
            synchronize(device)
            t0 = time.perf_counter()
            for _ in range(new_tokens):
                out = model(input_ids=tok, cache=cache, use_cache=True)
                cache = out.cache
                tok = out.logits[:, -1:].argmax(-1)
            synchronize(device)
            dt = time.perf_counter() - t0
        rows.append({"context": c, "status": "ok", "ms_per_token": 1e3 * dt / new_tokens,
                     "decode_tok_s": new_tokens / dt, "state_bytes": prefill_bytes,
                     "state_bytes_end": cache_nbytes(cache), "peak_mem_mb": mem.peak_mb, "mem_delta_mb": mem.delta_mb,
                     "mem_source": mem.source})
        del cache, out
    return rows
