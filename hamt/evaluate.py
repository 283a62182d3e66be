"""Metrics, defined once and used everywhere (compare, validate, report, benchmarks).

Language-model quality, from one total negative log-likelihood (NLL, nats) over the scored tokens:

- token perplexity  ``exp(NLL / tokens)``       depends on the tokenizer;
- bits per byte     ``NLL / (ln 2 * bytes)``    bytes = UTF-8 bytes of the evaluated text: tokenizer-independent;
- word perplexity   ``exp(NLL / words)``        words = whitespace-separated words (the WikiText convention).

``sliding_window_nll`` scores every target token of a stream exactly once, in fixed windows of
``context`` tokens moved by ``stride``: each window scores only the targets not scored before, so a
scored token sees at least ``context - stride`` tokens of left context (all of them near the start).
The last window is aligned to the end of the stream so it too has a full context. Every model (HAMT,
GPT-2, Pythia) is evaluated through this same function, with logits computed by the model and the
loss computed here (HAMT's ``out.loss`` may include the auxiliary loss; it is never used here).

Systems metrics: training and inference tokens/s, peak memory (CUDA allocator on GPU; process peak
RSS on CPU), per-token decoding latency and state/KV-cache bytes against context length, and the
memory diagnostics of HAMT (retrieval fidelity, slot utilisation).
"""

from __future__ import annotations

import copy
import math
import resource
import sys
import time
from typing import Any, Sequence

import torch
import torch.nn.functional as F

LN2 = math.log(2.0)


# --------------------------------------------------------------------------------------------------
# Quality metrics
# --------------------------------------------------------------------------------------------------


def lm_metrics(nll_sum: float, n_tokens: int, n_bytes: float | None = None, n_words: float | None = None) -> dict:
    """Loss, token perplexity, bits per byte and word perplexity from a total NLL (nats)."""
    if n_tokens <= 0:
        raise ValueError("lm_metrics: n_tokens must be > 0")
    loss = nll_sum / n_tokens
    out = {"loss": loss, "ppl": _safe_exp(loss), "nll_sum": nll_sum, "tokens": int(n_tokens)}
    out["bpb"] = nll_sum / (LN2 * n_bytes) if n_bytes else None
    out["word_ppl"] = _safe_exp(nll_sum / n_words) if n_words else None
    out["bytes"] = n_bytes
    out["words"] = n_words
    return out


def _safe_exp(x: float) -> float:
    return math.exp(x) if x < 700 else float("inf")


def text_counts(text: str) -> dict:
    """UTF-8 bytes and whitespace-separated words of a text (the denominators of bpb and word ppl)."""
    return {"bytes": len(text.encode("utf-8")), "words": len(text.split())}


def eval_counts(split_meta: dict, n_eval: int) -> dict:
    """Bytes and words of the evaluated part of a split, from its meta.json entry.

    When only the first ``n_eval`` of the split's ``tokens`` are evaluated (``eval_max_tokens``), the
    counts are scaled by that fraction, which assumes bytes per token are uniform along the split;
    ``counts_note`` says so, and the report prints it.
    """
    total = int(split_meta.get("tokens") or split_meta.get("num_tokens") or 0)
    n_bytes = split_meta.get("bytes")
    n_words = split_meta.get("words")
    out = {"bytes": n_bytes, "words": n_words, "counts_note": "exact (whole split)"}
    if n_bytes is None or n_words is None:
        out["counts_note"] = "meta.json has no byte/word counts: bpb and word perplexity not computed"
        return out
    if total and n_eval < total:
        frac = n_eval / total
        out.update(bytes=n_bytes * frac, words=n_words * frac,
                   counts_note=f"scaled to the evaluated {n_eval:,} of {total:,} tokens ({frac:.1%})")
    return out


# --------------------------------------------------------------------------------------------------
# Sliding-window evaluation
# --------------------------------------------------------------------------------------------------


def windows(n: int, context: int, stride: int) -> list[tuple[int, int, int]]:
    """(begin, end, first_target) of each window over a stream of ``n`` tokens.

    Targets are token indices 1..n-1 (token 0 has no left context). A window feeds tokens
    [begin, end) and scores the targets [first_target, end), none of them scored before. The first
    window is [0, context); each next one ends ``stride`` tokens later (the last one exactly at ``n``)
    and starts ``context`` tokens before its end, so every window but a short stream's has length
    ``context`` and every scored target sees at least ``context - stride`` tokens of left context.
    A stride equal to the context is used as ``context - 1``: otherwise the first target of each
    window would have no left context inside it and would go unscored.
    """
    if context < 2 or not 1 <= stride <= context:
        raise ValueError(f"need context >= 2 and 1 <= stride <= context, got context={context} stride={stride}")
    if n < 2:
        return []
    if n <= context:
        return [(0, n, 1)]
    stride = min(stride, context - 1)
    spans, end = [(0, context, 1)], context
    while end < n:
        new_end = min(end + stride, n)
        spans.append((new_end - context, new_end, end))
        end = new_end
    return spans


def _logits(model, x: torch.Tensor) -> torch.Tensor:
    out = model(input_ids=x, use_cache=False)
    return out.logits  # (B, T, V)


@torch.no_grad()
def sliding_window_nll(
    model,
    ids: Sequence[int] | torch.Tensor,
    context: int,
    stride: int,
    *,
    batch_size: int = 8,
    device: str | torch.device = "cpu",
    progress: bool = False,
    desc: str = "eval",
) -> dict:
    """Total NLL (nats) of ``ids`` under ``model``, every target scored once (see ``windows``).

    Returns ``{"nll_sum", "tokens" (targets scored), "windows", "context", "stride"}``.
    """
    ids = torch.as_tensor(ids, dtype=torch.long)
    spans = windows(len(ids), context, stride)
    was_training = model.training
    model.eval()
    nll_sum, scored = 0.0, 0
    # Group windows of equal length so they run as one batch (all but a short stream have length context).
    batches: list[list[tuple[int, int, int]]] = []
    for span in spans:
        if batches and len(batches[-1]) < batch_size and _len(batches[-1][0]) == _len(span):
            batches[-1].append(span)
        else:
            batches.append([span])
    bar = _progress(len(spans), desc) if progress else None
    for group in batches:
        x = torch.stack([ids[b:e] for b, e, _ in group]).to(device)  # (B, T)
        logp = F.log_softmax(_logits(model, x)[:, :-1].float(), dim=-1)  # (B, T-1, V)
        nll = -logp.gather(-1, x[:, 1:, None]).squeeze(-1)  # (B, T-1): nll[i, j] is target begin+j+1
        for row, (b, _e, first) in enumerate(group):
            part = nll[row, first - b - 1:]
            nll_sum += part.double().sum().item()
            scored += part.numel()
        if bar is not None:
            bar.update(len(group))
    if bar is not None:
        bar.close()
    model.train(was_training)
    return {"nll_sum": nll_sum, "tokens": scored, "windows": len(spans), "context": context, "stride": stride}


def _len(span: tuple[int, int, int]) -> int:
    return span[1] - span[0]


def _progress(total: int, desc: str):
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, unit="win", file=sys.stderr, leave=False, dynamic_ncols=True)


def evaluate_lm(
    model,
    ids,
    *,
    context: int,
    stride: int,
    n_bytes: float | None = None,
    n_words: float | None = None,
    batch_size: int = 8,
    device="cpu",
    progress: bool = False,
    desc: str = "eval",
) -> dict:
    """Sliding-window NLL of ``ids`` turned into loss, ppl, bpb and word ppl (``lm_metrics``)."""
    r = sliding_window_nll(model, ids, context, stride, batch_size=batch_size, device=device, progress=progress,
                           desc=desc)
    if r["tokens"] == 0:
        raise ValueError("evaluate_lm: need at least two tokens")
    out = lm_metrics(r["nll_sum"], r["tokens"], n_bytes, n_words)
    out.update(windows=r["windows"], context=context, stride=stride)
    return out


# --------------------------------------------------------------------------------------------------
# Devices, memory, timing
# --------------------------------------------------------------------------------------------------


def resolve_device(spec: str = "auto") -> torch.device:
    """``auto`` -> cuda when available, else cpu; anything else is passed to torch.device."""
    if spec == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(spec)


def device_name(device: torch.device | str) -> str:
    """A human name of the device (GPU model, or the CPU model from /proc/cpuinfo)."""
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    return "CPU: " + line.split(":", 1)[1].strip()
    except OSError:
        pass
    import platform

    return "CPU: " + (platform.processor() or platform.machine())


def synchronize(device: torch.device) -> None:
    """Wait for the device's queued work (a no-op on CPU): call before reading a timer."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


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
    """Context manager measuring peak memory inside its block.

    CUDA: the caching allocator's ``max_memory_allocated`` (tensors only), reset on entry.
    CPU: the process's peak resident set size (includes the interpreter and libraries); reset on
    entry where Linux allows it, otherwise the high-water mark since the process started — ``source``
    says which (``cuda_allocator``, ``rss_reset``, ``rss_since_start``).
    """

    def __init__(self, device: torch.device | str = "cpu"):
        self.device = torch.device(device)
        self.peak_bytes = 0
        self.base_bytes = 0
        self.source = ""

    def __enter__(self) -> "PeakMemory":
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            self.base_bytes = int(torch.cuda.memory_allocated(self.device))
            self.source = "cuda_allocator"
        else:
            self.source = "rss_reset" if _reset_rss_peak() else "rss_since_start"
            self.base_bytes = _rss_bytes()
        return self

    def __exit__(self, *exc) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            self.peak_bytes = int(torch.cuda.max_memory_allocated(self.device))
        else:
            self.peak_bytes = _rss_peak_bytes()[0]

    @property
    def peak_mb(self) -> float:
        return self.peak_bytes / 2**20

    @property
    def delta_mb(self) -> float:
        """Peak above what was held on entry: the memory the measured work itself needed."""
        return max(0, self.peak_bytes - self.base_bytes) / 2**20


def _random_ids(batch: int, seq_len: int, vocab: int, device, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, vocab, (batch, seq_len), generator=g).to(device)


def _vocab(model) -> int:
    return int(model.get_output_embeddings().weight.shape[0])


@torch.no_grad()
def inference_throughput(model, batch: int, seq_len: int, *, device="cpu", steps: int = 3, warmup: int = 1) -> dict:
    """Forward-only tokens/s and peak memory on random tokens of shape (batch, seq_len)."""
    device = torch.device(device)
    model.eval()
    x = _random_ids(batch, seq_len, _vocab(model), device)
    for _ in range(warmup):
        _logits(model, x)
    with PeakMemory(device) as mem:
        synchronize(device)
        t0 = time.perf_counter()
        for _ in range(steps):
            _logits(model, x)
        synchronize(device)
        dt = time.perf_counter() - t0
    return {"tokens_per_s": batch * seq_len * steps / dt, "peak_mem_mb": mem.peak_mb, "mem_delta_mb": mem.delta_mb,
            "mem_source": mem.source, "batch": batch, "seq_len": seq_len}


def train_throughput(model, batch: int, seq_len: int, *, device="cpu", steps: int = 3, warmup: int = 1,
                     lr: float = 1e-4) -> dict:
    """Training tokens/s (forward + backward + AdamW step) and peak memory, on a copy of ``model``.

    The copy keeps the evaluated weights untouched; random tokens make the number independent of data.
    """
    device = torch.device(device)
    probe = copy.deepcopy(model).to(device).train()
    opt = torch.optim.AdamW(probe.parameters(), lr=lr)
    x = _random_ids(batch, seq_len, _vocab(probe), device, seed=1)

    def step() -> None:
        out = probe(input_ids=x, labels=x, use_cache=False)
        out.loss.backward()  # what the trainer optimises (HAMT: LM loss + auxiliary loss when enabled)
        opt.step()
        opt.zero_grad(set_to_none=True)

    for _ in range(warmup):
        step()
    with PeakMemory(device) as mem:
        synchronize(device)
        t0 = time.perf_counter()
        for _ in range(steps):
            step()
        synchronize(device)
        dt = time.perf_counter() - t0
    del probe, opt
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


def max_context(model) -> int | None:
    """The longest input a model accepts (learned positions), or None when unbounded (HAMT)."""
    cfg = model.config
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
        x = _random_ids(1, c, _vocab(model), device, seed=seed)
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


# --------------------------------------------------------------------------------------------------
# HAMT memory diagnostics
# --------------------------------------------------------------------------------------------------


def is_hamt(model) -> bool:
    return getattr(getattr(model, "config", None), "model_type", None) == "hamt"


@torch.no_grad()
def memory_diagnostics(model, ids, *, context: int, n_windows: int = 8, batch_size: int = 8, device="cpu") -> dict:
    """Mean retrieval fidelity and slot utilisation of a HAMT model over the first windows of ``ids``.

    Returns ``{}`` for models without a holographic memory.
    """
    if not is_hamt(model):
        return {}
    from hamt.model import slot_utilisation

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
