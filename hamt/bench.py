"""Benchmarks: training throughput against a matched GPT-2, memory-scan implementations, decoding.

``hamt bench model|memory|decode|all`` prints markdown tables (each headed by the device, date, git
commit and the resolved command) and writes ``results/bench/<name>.json`` (a list of rows, each
carrying the same metadata) and ``<name>.md``; ``--out FILE`` also writes all tables to FILE.

* ``model``: training forward + backward tokens/s of HAMT and of a GPT-2 (transformers'
  GPT2LMHeadModel, SDPA attention) of matched parameter count, at several sequence lengths with a
  fixed number of tokens per step. The two models are measured alternately (the machine may be
  shared) and medians are reported, with the median of the paired per-repeat speed ratios. Memory:
  bytes saved for backward (activations, parameters excluded; exact on any device) and the peak
  (CUDA allocator, or the process's resident-set high-water mark over the step on CPU). MFU =
  model FLOPs / s over the measured matmul peak of the device in the chosen precision (see
  ``flops_per_token`` for the FLOP count).
* ``memory``: the memory scan alone, forward and forward + backward, for each available mode
  (reference loop, chunked, and the Triton kernel on CUDA) at the preset's head shape, against the
  floor set by the bytes the scan must move divided by the measured copy bandwidth.
* ``decode``: per-token latency and state bytes at several context lengths. HAMT prefills the context
  in chunks (so the state is a real one) and then steps one token at a time; its state is the same
  size at every context. GPT-2 decodes with a KV cache (transformers' DynamicCache) of the same
  context, synthesised with random keys and values of the right shape: a decode step's cost depends
  on the cache's size, not on its content, and this avoids an O(context^2) prefill per row.

Bench-only defaults (sequence lengths, contexts, tokens per step) depend on the device and live in
``DEFAULTS``; the model comes from ``--preset`` (default: the profile's model section).
"""

from __future__ import annotations

import argparse
import datetime as _dt
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable

from hamt.errors import ConfigError

BENCHES = ("model", "memory", "decode")

DEFAULTS = {
    "cpu": dict(seq_lens=[256, 1024, 4096], contexts=[256, 1024, 4096, 16384], tokens_per_step=4096,
                memory_batch=1),
    "cuda": dict(seq_lens=[512, 1024, 2048, 4096, 8192], contexts=[256, 1024, 4096, 16384, 32768],
                 tokens_per_step=65536, memory_batch=16),
}


def add_arguments_bench(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("what", choices=[*BENCHES, "all"], help="which benchmark to run")
    parser.add_argument("--preset", default=None, help="model preset (default: the profile's model section)")
    parser.add_argument("--vocab-size", type=int, default=None, help="override the model's vocabulary size")
    parser.add_argument("--seq-lens", type=int, nargs="+", default=None,
                        help="model bench sequence lengths (default: 256 1024 4096 on CPU, 512..8192 on CUDA)")
    parser.add_argument("--tokens-per-step", type=int, default=None,
                        help="tokens per training step; batch = max(1, tokens // T) (default 4096 CPU, 65536 CUDA)")
    parser.add_argument("--contexts", type=int, nargs="+", default=None,
                        help="decode bench context lengths (default: 256 1024 4096 16384; +32768 on CUDA)")
    parser.add_argument("--memory-seq-len", type=int, default=1024, help="memory bench sequence length")
    parser.add_argument("--memory-batch", type=int, default=None, help="memory bench batch (default 1 CPU, 16 CUDA)")
    parser.add_argument("--repeats", type=int, default=5, help="timed repeats per measurement (median reported)")
    parser.add_argument("--decode-steps", type=int, default=32, help="timed single-token steps per context")
    parser.add_argument("--device", default=None, help="cpu | cuda | auto (default: train.device)")
    parser.add_argument("--precision", choices=["fp32", "bf16"], default=None,
                        help="model bench precision (default: train.precision; fp16 is benchmarked as bf16)")
    parser.add_argument("--threads", type=int, default=None,
                        help="CPU threads for torch (default: torch's choice; 1 is steadier on a shared machine)")
    parser.add_argument("--results-dir", default="results/bench", help="where <name>.json/.md go")
    parser.add_argument("--out", default=None, help="also write all tables to this markdown file")
    parser.add_argument("--compile", action="store_true",
                        help="model bench: torch.compile both models (eager fallback, recorded per row)")
    parser.add_argument("--memory-mode", default=None, choices=["auto", "cpu", "chunk", "reference", "triton"],
                        help="HAMT's memory implementation in the model and decode benches (default: the config's)")


def cli_bench(params, args) -> int:
    import torch

    device = _resolve_device(args.device or params.train.device)
    if args.threads:
        if args.threads < 1:
            raise ConfigError(f"--threads: must be >= 1, got {args.threads}")
        torch.set_num_threads(args.threads)
    defaults = DEFAULTS["cuda" if device.type == "cuda" else "cpu"]
    opts = _options(params, args, defaults, device)
    config = _model_config(params, args)
    torch.manual_seed(0)
    meta = _meta(device, _command(args, opts), config, opts)
    what = list(BENCHES) if args.what == "all" else [args.what]
    runners = {"model": bench_model, "memory": bench_memory, "decode": bench_decode}
    tables = []
    for name in what:
        rows = runners[name](config, opts, device)
        rows = [{**meta, **row} for row in rows]
        table = render(name, rows, meta)
        print(table, flush=True)
        _write_results(Path(args.results_dir), name, rows, table)
        tables.append(table)
    if args.out:
        _write_text(Path(args.out), "\n".join(tables))
    return 0


# --------------------------------------------------------------------------------------------------
# Options, devices, metadata
# --------------------------------------------------------------------------------------------------


def _options(params, args, defaults: dict, device) -> dict:
    precision = args.precision or ("bf16" if params.train.precision in ("bf16", "fp16") else "fp32")
    opts = dict(
        seq_lens=args.seq_lens or defaults["seq_lens"],
        contexts=args.contexts or defaults["contexts"],
        tokens_per_step=args.tokens_per_step or defaults["tokens_per_step"],
        memory_seq_len=args.memory_seq_len,
        memory_batch=args.memory_batch or defaults["memory_batch"],
        repeats=args.repeats,
        decode_steps=args.decode_steps,
        precision=precision,
        preset=args.preset,
        vocab_size=args.vocab_size,
        compile=args.compile,
        memory_mode=args.memory_mode,
    )
    for key in ("seq_lens", "contexts"):
        if any(n < 2 for n in opts[key]):
            raise ConfigError(f"--{key.replace('_', '-')}: every length must be >= 2, got {opts[key]}")
    for key in ("tokens_per_step", "memory_seq_len", "memory_batch", "repeats", "decode_steps"):
        if opts[key] < 1:
            raise ConfigError(f"--{key.replace('_', '-')}: must be >= 1, got {opts[key]}")
    return opts


def _model_config(params, args):
    from hamt.config import HAMTConfig

    overrides = {"vocab_size": args.vocab_size} if args.vocab_size else {}
    if args.memory_mode:
        overrides["memory_mode"] = args.memory_mode
    if args.preset:
        return HAMTConfig.from_preset(args.preset, **overrides)
    return params.model_config(**overrides)


def _resolve_device(spec: str):
    import torch

    from hamt.runtime import resolve_device

    device = resolve_device(spec)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"--device {spec}: CUDA is not available here; use --device cpu")
    return device


def _device_name(device) -> str:
    """evaluate.device_name, with the thread count on CPU (it sets the speed there)."""
    import torch

    from hamt.runtime import device_name

    name = device_name(device)
    return name if device.type == "cuda" else f"{name} ({torch.get_num_threads()} threads)"


def _git_commit() -> str:
    """Short commit (+dirty); HAMT_GIT_COMMIT names it where the tree was copied without .git."""
    if os.environ.get("HAMT_GIT_COMMIT"):
        return os.environ["HAMT_GIT_COMMIT"]
    try:
        out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, timeout=10)
        commit = out.stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], capture_output=True,
                               text=True, timeout=10).stdout.strip()
        return (commit + ("+dirty" if dirty else "")) if commit else "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def _command(args, opts: dict) -> str:
    """The resolved command line: rerunning it reproduces the measurement's settings."""
    parts = ["hamt bench", args.what]
    if args.profile:
        parts.append(f"--profile {args.profile}")
    parts += [f"--set {s}" for s in args.overrides]
    if opts["preset"]:
        parts.append(f"--preset {opts['preset']}")
    if opts["vocab_size"]:
        parts.append(f"--vocab-size {opts['vocab_size']}")
    if args.what in ("model", "all"):
        parts += ["--seq-lens " + " ".join(map(str, opts["seq_lens"])), f"--tokens-per-step {opts['tokens_per_step']}"]
    if args.what in ("memory", "all"):
        parts += [f"--memory-seq-len {opts['memory_seq_len']}", f"--memory-batch {opts['memory_batch']}"]
    if args.what in ("decode", "all"):
        parts += ["--contexts " + " ".join(map(str, opts["contexts"])), f"--decode-steps {opts['decode_steps']}"]
    parts += [f"--repeats {opts['repeats']}", f"--precision {opts['precision']}"]
    if opts["memory_mode"]:
        parts.append(f"--memory-mode {opts['memory_mode']}")
    if opts["compile"] and args.what in ("model", "all"):
        parts.append("--compile")
    if args.device:
        parts.append(f"--device {args.device}")
    if args.threads:
        parts.append(f"--threads {args.threads}")
    return " ".join(parts)


def _meta(device, command: str, config, opts: dict) -> dict:
    return {
        "device": _device_name(device),
        "date": _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "commit": _git_commit(),
        "command": command,
        "preset": opts["preset"] or "profile",
        "precision": opts["precision"],
        "compile": bool(opts["compile"]),
    }


# --------------------------------------------------------------------------------------------------
# Timing and memory helpers
# --------------------------------------------------------------------------------------------------


def _time(fn: Callable[[], Any], device) -> float:
    from hamt.runtime import synchronize

    synchronize(device)
    t0 = time.perf_counter()
    fn()
    synchronize(device)
    return time.perf_counter() - t0


def peak_memory_bytes(fn: Callable[[], Any], device) -> tuple[int, str]:
    """Peak bytes of tensors allocated by ``fn`` above what was allocated before: (bytes, how).

    CUDA: the caching allocator's peak over the call. CPU: the running total of the allocation
    events that torch's profiler records (its "Total Allocated"), so freed-but-cached heap memory and
    the process's other memory do not blur it as they would a resident-set measurement.
    """
    import torch

    from hamt.runtime import synchronize

    if device.type == "cuda":
        synchronize(device)
        base = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
        fn()
        synchronize(device)
        return int(torch.cuda.max_memory_allocated(device) - base), "CUDA allocator peak"
    import json
    import tempfile

    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    with tempfile.TemporaryDirectory() as tmp:
        trace = Path(tmp) / "trace.json"
        prof.export_chrome_trace(str(trace))
        events = json.loads(trace.read_text())["traceEvents"]
    totals = [e["args"]["Total Allocated"] for e in sorted(
        (e for e in events if e.get("name") == "[memory]"), key=lambda e: e["ts"])]
    return max([0, *totals]), "CPU allocator peak (torch profiler)"


def saved_activation_bytes(model, fn: Callable[[], Any]) -> int:
    """Bytes of tensors autograd keeps for backward while ``fn`` runs its forward (parameters excluded).

    Counted once per storage through ``saved_tensors_hooks``; tensors that activation checkpointing
    (the chunked memory path) drops are not seen, which is the point: this is what stays alive.
    """
    import torch

    params = {p.untyped_storage().data_ptr() for p in model.parameters()}
    seen: dict[int, int] = {}

    def pack(t):
        try:
            st = t.untyped_storage()
        except (RuntimeError, NotImplementedError):
            return t
        if st.data_ptr() not in params:
            seen[st.data_ptr()] = st.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        fn()
    return sum(seen.values())


def matmul_peak_flops(device, precision: str, n: int | None = None, repeats: int = 10) -> float:
    """Measured dense matmul FLOP/s (best of ``repeats``) in the given precision: the MFU denominator."""
    import torch

    n = n or (8192 if device.type == "cuda" else 1024)
    dtype = torch.bfloat16 if precision == "bf16" else torch.float32
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    a @ b
    best = min(_time(lambda: a @ b, device) for _ in range(repeats))
    return 2 * n**3 / best


def copy_bandwidth(device, nbytes: int | None = None, repeats: int = 5) -> float:
    """Measured copy bandwidth in bytes/s (read + write counted) with a large tensor copy."""
    import torch

    nbytes = nbytes or (2**30 if device.type == "cuda" else 2**28)
    src = torch.ones(nbytes // 4, device=device)
    dst = torch.empty_like(src)
    dst.copy_(src)
    best = min(_time(lambda: dst.copy_(src), device) for _ in range(repeats))
    return 2 * nbytes / best


def _progress(total: int, desc: str):
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, file=sys.stderr, dynamic_ncols=True, leave=False)


# --------------------------------------------------------------------------------------------------
# FLOPs (for MFU)
# --------------------------------------------------------------------------------------------------


def matmul_params(model) -> int:
    """Weights used in a matmul per token: every Linear/Conv1D (incl. the LM head), no embedding lookups."""
    from torch import nn
    from transformers.pytorch_utils import Conv1D

    return sum(m.weight.numel() for m in model.modules() if isinstance(m, (nn.Linear, Conv1D)))


def flops_per_token(model, seq_len: int) -> dict:
    """Training FLOPs per token (forward + backward = 3 x forward), by the usual accounting.

    * matmuls: 6 x (weights used in a matmul) — 2 per weight forward, 4 backward (PaLM, Kaplan).
    * GPT-2 attention: causal QK^T and AV cost 2 x 2 x d x (T/2) per token per layer forward on
      average (useful work, masked half excluded), so 6 L d T per token for training.
    * HAMT memory per token, layer and head, forward: write 12 S F (complex k*v: 6, x w: 2, decay and
      add: 4), read 10 S F (conj(q)*M: 6, x b and sum: 4), and 4 FFTs of length P (~2.5 P log2 P each);
      x 3 for training. Elementwise work outside matmuls (norms, gates, softmax) is not counted.
    """
    import math

    cfg = model.config
    mm = 6 * matmul_params(model)
    if getattr(cfg, "model_type", None) == "hamt":
        H, S, F, P, L = cfg.num_attention_heads, cfg.num_slots, cfg.num_freqs, cfg.head_dim, cfg.num_layers
        mixer = 3 * L * H * (22 * S * F + 4 * 2.5 * P * math.log2(P))
    else:
        mixer = 6 * cfg.n_layer * cfg.n_embd * seq_len
    return {"matmul": mm, "mixer": mixer, "total": mm + mixer}


# --------------------------------------------------------------------------------------------------
# (a) training throughput: HAMT vs matched GPT-2
# --------------------------------------------------------------------------------------------------


def _build_models(config, seq_len: int, device):
    import torch
    from transformers import GPT2LMHeadModel

    from hamt.baselines import matched_gpt2_config
    from hamt.model import HAMTForCausalLM

    torch.manual_seed(0)
    hamt = HAMTForCausalLM(config).to(device).train()
    gcfg = matched_gpt2_config(config)
    gcfg.n_positions = max(gcfg.n_positions, seq_len)  # same architecture, longer position table
    gcfg._attn_implementation = "sdpa"
    gpt2 = GPT2LMHeadModel(gcfg).to(device).train()
    return {"hamt": hamt, "gpt2": gpt2}


def _train_step_fn(model, x, precision: str, device):
    import torch

    def step():
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision == "bf16"):
            out = model(input_ids=x, labels=x)
        out.loss.backward()
        model.zero_grad(set_to_none=True)

    return step


def _compiled_step(model, x, opts: dict, device):
    """(step, None) with ``torch.compile(model)`` warmed up twice, or (None, reason) if it fails."""
    import torch

    try:
        step = _train_step_fn(torch.compile(model), x, opts["precision"], device)
        step()  # compiles
        step()
        return step, None
    except Exception as e:  # noqa: BLE001 - any compiler failure means "measure eager", recorded
        first = (str(e).strip().splitlines() or [""])[0][:200]
        print(f"torch.compile failed for {type(model).__name__} ({type(e).__name__}: {first}); eager",
              file=sys.stderr, flush=True)
        torch._dynamo.reset()
        return None, f"{type(e).__name__}: {first}"


def bench_model(config, opts: dict, device) -> list[dict]:
    import torch

    # The matmul peak is measured before every sequence length and the best is used for all rows:
    # on a shared machine a single measurement can land in a busy moment and inflate the MFU.
    peaks = []
    rows = []
    reps = opts["repeats"]
    bar = _progress(len(opts["seq_lens"]) * (2 * (reps + 2)), "bench model")
    for T in opts["seq_lens"]:
        peaks.append(matmul_peak_flops(device, opts["precision"]))
        B = max(1, opts["tokens_per_step"] // T)
        models = _build_models(config, T, device)
        x = torch.randint(0, config.vocab_size, (B, T), device=device)
        steps = {k: _train_step_fn(m, x, opts["precision"], device) for k, m in models.items()}
        extra = {}
        for name, m in models.items():
            steps[name]()  # warm-up (allocator, kernels, autotuning)
            act = saved_activation_bytes(m, steps[name])  # eager: what autograd keeps without fusion
            compiled, compile_error = _compiled_step(m, x, opts, device) if opts["compile"] else (None, None)
            steps[name] = compiled or steps[name]
            peak_b, how = peak_memory_bytes(steps[name], device)
            extra[name] = dict(activation_mb=act / 2**20, peak_mb=peak_b / 2**20, peak_how=how,
                               compiled=compiled is not None, compile_error=compile_error)
            bar.update(2)
        times = {k: [] for k in models}
        for i in range(reps):  # alternate the models, and which goes first, so drifts hit both
            order = list(models) if i % 2 == 0 else list(models)[::-1]
            for name in order:
                times[name].append(_time(steps[name], device))
                bar.update(1)
        ratios = [g / h for h, g in zip(times["hamt"], times["gpt2"])]  # >1: HAMT faster
        for name, m in models.items():
            med = statistics.median(times[name])
            fl = flops_per_token(m, T)
            tok_s = B * T / med
            rows.append(dict(
                model=name, seq_len=T, batch_size=B, params=sum(p.numel() for p in m.parameters()),
                step_ms=1e3 * med, step_ms_all=[round(1e3 * t, 3) for t in times[name]], tokens_per_s=tok_s,
                flops_per_token=fl["total"], mixer_flops_per_token=fl["mixer"], model_flops_s=tok_s * fl["total"],
                hamt_speedup_vs_gpt2=statistics.median(ratios), **extra[name],
            ))
        del models, steps
    peaks.append(matmul_peak_flops(device, opts["precision"]))
    for r in rows:
        r.update(peak_flops=max(peaks), mfu=r["model_flops_s"] / max(peaks))
    bar.close()
    return rows


# --------------------------------------------------------------------------------------------------
# (b) memory-scan implementations
# --------------------------------------------------------------------------------------------------


def memory_inputs(B: int, T: int, H: int, S: int, F: int, device, seed: int = 0) -> dict:
    """Inputs shaped and distributed like the model's: unitary q, k; softmax slot weights; (1-f) a."""
    import torch

    from hamt.ops import slot_permutations, unitary

    g = torch.Generator().manual_seed(seed)

    def cplx(*shape):
        return torch.view_as_complex(torch.randn(*shape, 2, generator=g))

    q, k, v = unitary(cplx(B, T, H, F)), unitary(cplx(B, T, H, F)), cplx(B, T, H, F)
    log_f = torch.nn.functional.logsigmoid(2 + 2 * torch.randn(B, T, H, generator=g))
    a = torch.randn(B, T, H, S, generator=g).softmax(-1)
    w = -torch.expm1(log_f)[..., None] * a
    b = torch.randn(B, T, H, S, generator=g).softmax(-1)
    out = dict(q=q, k=k, v=v, log_f=log_f, w=w, b=b, perm=slot_permutations(S, F))
    return {key: t.to(device) for key, t in out.items()}


def memory_io_bytes(B: int, T: int, H: int, S: int, F: int, csize: int = 8, rsize: int = 4) -> dict:
    """Bytes the scan must move at least (state in registers): inputs read, outputs written, per pass.

    forward: read q, k, v (complex), log f, w, b; write r and the final state.
    backward: read q, k, v, log f, w, b and dL/dr, dL/dstate; write dq, dk, dv, dlog f, dw, db.
    """
    cx, gates, lf, state = B * T * H * F * csize, B * T * H * S * rsize, B * T * H * rsize, B * H * S * F * csize
    fwd = 3 * cx + lf + 2 * gates + cx + state
    bwd = (3 * cx + lf + 2 * gates + cx + state) + (3 * cx + lf + 2 * gates)
    return {"forward": fwd, "backward": bwd, "total": fwd + bwd}


def memory_step_fns(inputs: dict, mode: str, device, scan: Callable | None = None):
    """(forward, forward + backward) closures of the memory scan ``mode`` on ``inputs`` (from
    ``memory_inputs``); ``scan`` replaces ``memory_scan(..., mode=mode)`` (e.g. a kernel with other launch settings)."""
    import functools

    import torch

    from hamt.ops import memory_scan

    scan = scan or functools.partial(memory_scan, mode=mode)
    leaves = {k: (v.clone().requires_grad_(k != "perm")) for k, v in inputs.items()}
    g = torch.Generator().manual_seed(1)

    def fwd():
        with torch.no_grad():
            scan(**inputs)

    grads = {}

    def fwd_bwd():
        r, _, st = scan(**leaves)
        if not grads:
            grads["r"] = torch.randn(r.shape, dtype=r.dtype, generator=g).to(device)
            grads["st"] = torch.randn(st.shape, dtype=st.dtype, generator=g).to(device)
        torch.autograd.backward([r, st], [grads["r"], grads["st"]])
        for t in leaves.values():
            t.grad = None

    return fwd, fwd_bwd


def bench_memory(config, opts: dict, device) -> list[dict]:
    from hamt.ops import triton_available

    B, T = opts["memory_batch"], opts["memory_seq_len"]
    H, S, F = config.num_attention_heads, config.num_slots, config.num_freqs
    inputs = memory_inputs(B, T, H, S, F, device)
    modes = ["reference", "chunk"] + (["triton"] if triton_available(device) else [])
    bw = copy_bandwidth(device)
    io = memory_io_bytes(B, T, H, S, F)
    fns = {m: memory_step_fns(inputs, m, device) for m in modes}
    reps = opts["repeats"]
    bar = _progress(len(modes) * (reps * 2 + 2) - 2 * max(0, reps - 3), "bench memory")
    for m in modes:  # warm-up: compiles the Triton kernel, sizes allocator pools
        fns[m][0]()
        fns[m][1]()
        bar.update(2)
    times = {m: {"forward": [], "fwd_bwd": []} for m in modes}
    for i in range(reps):
        for m in modes[i % len(modes):] + modes[: i % len(modes)]:  # rotate the order
            if m == "reference" and i >= 3:
                continue  # the slow baseline: three repeats are enough for its median
            times[m]["forward"].append(_time(fns[m][0], device))
            times[m]["fwd_bwd"].append(_time(fns[m][1], device))
            bar.update(2)
    bar.close()
    ref = statistics.median(times["reference"]["fwd_bwd"])
    ref_f = statistics.median(times["reference"]["forward"])
    floor_f, floor = io["forward"] / bw, io["total"] / bw
    rows = []
    for m in modes:
        tf, tfb = statistics.median(times[m]["forward"]), statistics.median(times[m]["fwd_bwd"])
        rows.append(dict(
            mode=m, batch_size=B, seq_len=T, heads=H, slots=S, freqs=F,
            forward_ms=1e3 * tf, fwd_bwd_ms=1e3 * tfb, fwd_bwd_ms_all=[round(1e3 * t, 3) for t in times[m]["fwd_bwd"]],
            speedup_vs_reference=ref / tfb, forward_speedup_vs_reference=ref_f / tf,
            floor_forward_ms=1e3 * floor_f, floor_fwd_bwd_ms=1e3 * floor, times_floor=tfb / floor,
            io_bytes=io["total"], copy_bandwidth_gb_s=bw / 1e9,
        ))
    return rows


# --------------------------------------------------------------------------------------------------
# (c) decoding: latency and state bytes against context
# --------------------------------------------------------------------------------------------------


def _gpt2_kv_cache(gcfg, context: int, device):
    """A DynamicCache holding ``context`` random keys/values per layer (what a prefill would leave)."""
    import torch
    from transformers import DynamicCache

    cache = DynamicCache(config=gcfg)
    hd = gcfg.n_embd // gcfg.n_head
    for layer in range(gcfg.n_layer):
        kv = torch.randn(2, 1, gcfg.n_head, context, hd, device=device)
        cache.update(kv[0], kv[1], layer)
    return cache


def _kv_bytes(cache) -> int:
    return sum(t.numel() * t.element_size() for layer in cache.layers for t in (layer.keys, layer.values))


def bench_decode(config, opts: dict, device) -> list[dict]:
    import torch
    from transformers import GPT2LMHeadModel

    from hamt.baselines import matched_gpt2_config
    from hamt.model import HAMTForCausalLM

    torch.manual_seed(0)
    hamt = HAMTForCausalLM(config).to(device).eval()
    gcfg = matched_gpt2_config(config)
    gcfg._attn_implementation = "sdpa"
    steps, chunk = opts["decode_steps"], 1024
    rows = []
    bar = _progress(len(opts["contexts"]) * 2, "bench decode")
    for ctx in opts["contexts"]:
        gcfg.n_positions = ctx + steps + 2  # same architecture, a position table long enough
        gpt2 = GPT2LMHeadModel(gcfg).to(device).eval()
        with torch.no_grad():
            ids = torch.randint(0, config.vocab_size, (1, ctx), device=device)
            cache = None
            for s in range(0, ctx, chunk):  # HAMT: a real prefill, in chunks (memory stays O(chunk))
                cache = hamt(input_ids=ids[:, s:s + chunk], cache=cache, use_cache=True).cache
            hamt_state = cache.nbytes()
            kv = _gpt2_kv_cache(gcfg, ctx, device)
            kv_bytes = _kv_bytes(kv)
            bar.update(1)
            tok = torch.zeros(1, 1, dtype=torch.long, device=device)
            for _ in range(2):  # warm-up of both (the GPT-2 cache grows by these tokens, like generation)
                cache = hamt(input_ids=tok, cache=cache, use_cache=True).cache
                gpt2(input_ids=tok, cache=kv, use_cache=True)
            times = {"hamt": [], "gpt2": []}
            for _ in range(steps):  # alternate single-token steps of the two models
                times["hamt"].append(_time(lambda: hamt(input_ids=tok, cache=cache, use_cache=True), device))
                times["gpt2"].append(_time(lambda: gpt2(input_ids=tok, cache=kv, use_cache=True), device))
            hamt_state_after = cache.nbytes()
        bar.update(1)
        for name, state, after, how in (
            ("hamt", hamt_state, hamt_state_after, "prefilled in chunks of 1024"),
            ("gpt2", kv_bytes, _kv_bytes(kv), "KV cache synthesised at this context"),
        ):
            med = statistics.median(times[name])
            rows.append(dict(model=name, context=ctx, steps=steps, ms_per_token=1e3 * med, tokens_per_s=1 / med,
                             state_bytes=state, state_bytes_after=after, state_how=how,
                             params=sum(p.numel() for p in (hamt if name == "hamt" else gpt2).parameters())))
        del gpt2, kv
    bar.close()
    return rows


# --------------------------------------------------------------------------------------------------
# Markdown and files
# --------------------------------------------------------------------------------------------------


def _fmt(v: Any) -> str:
    if v is None:
        return "n/a"
    if isinstance(v, float):
        if v == 0:
            return "0"
        if abs(v) >= 100:
            return f"{v:,.0f}"
        if abs(v) >= 1:
            return f"{v:.2f}"
        return f"{v:.3g}"
    if isinstance(v, int):
        return f"{v:,}"
    return str(v)


def md_table(header: list[str], rows: list[list[Any]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(_fmt(v) for v in r) + " |" for r in rows]
    return "\n".join(lines)


def _by(rows: list[dict], key: str, name: str) -> dict:
    return {r[key]: r for r in rows if r["model"] == name}


def render(name: str, rows: list[dict], meta: dict) -> str:
    head = (f"_device: {meta['device']} · date: {meta['date']} · commit: {meta['commit']} · "
            f"precision: {meta['precision']} · command: `{meta['command']}`_\n\n")
    if name == "model":
        h, g = _by(rows, "seq_len", "hamt"), _by(rows, "seq_len", "gpt2")
        first = next(iter(h.values()))
        title = (f"### Training throughput (forward + backward): HAMT ({first['params'] / 1e6:.2f}M params) vs "
                 f"GPT-2 of matched size ({min(r['params'] for r in g.values()) / 1e6:.2f}M params at T="
                 f"{min(g)}; its position table grows with T)\n\n")
        body = md_table(
            ["T", "batch", "HAMT tok/s", "GPT-2 tok/s", "HAMT/GPT-2 speed (paired median)", "HAMT act. MB",
             "GPT-2 act. MB", "HAMT peak MB", "GPT-2 peak MB", "HAMT MFU", "GPT-2 MFU"],
            [[T, h[T]["batch_size"], h[T]["tokens_per_s"], g[T]["tokens_per_s"], h[T]["hamt_speedup_vs_gpt2"],
              h[T]["activation_mb"], g[T]["activation_mb"], h[T]["peak_mb"], g[T]["peak_mb"],
              f"{100 * h[T]['mfu']:.1f}%", f"{100 * g[T]['mfu']:.1f}%"] for T in h],
        )
        comp = ""
        if meta.get("compile"):
            state = {n: ("compiled" if r["compiled"] else f"eager ({r['compile_error']})")
                     for n, r in (("HAMT", first), ("GPT-2", next(iter(g.values()))))}
            comp = f" torch.compile: HAMT {state['HAMT']}, GPT-2 {state['GPT-2']}; act. MB measured eager."
        note = (f"\n\nact. MB: tensors saved for backward (parameters excluded). peak MB: {first['peak_how']} "
                f"over one step. MFU: model FLOPs/s over the measured matmul peak "
                f"({first['peak_flops'] / 1e9:,.0f} GFLOP/s, {meta['precision']}); FLOPs/token as in "
                f"hamt.bench.flops_per_token. Medians of {len(first['step_ms_all'])} alternating repeats.{comp}\n")
        return head + title + body + note
    if name == "memory":
        r0 = rows[0]
        title = (f"### Memory scan, forward + backward (B={r0['batch_size']}, T={r0['seq_len']}, H={r0['heads']}, "
                 f"S={r0['slots']}, F={r0['freqs']}, complex64)\n\n")
        body = md_table(
            ["mode", "forward ms", "fwd+bwd ms", "speed-up vs reference (fwd+bwd)", "floor ms (fwd+bwd)", "× floor"],
            [[r["mode"], r["forward_ms"], r["fwd_bwd_ms"], r["speedup_vs_reference"], r["floor_fwd_bwd_ms"],
              r["times_floor"]] for r in rows],
        )
        note = (f"\n\nfloor: {r0['io_bytes'] / 2**20:.1f} MiB that the scan must read and write "
                f"(hamt.bench.memory_io_bytes) ÷ measured copy bandwidth {r0['copy_bandwidth_gb_s']:.1f} GB/s.\n")
        return head + title + body + note
    h, g = _by(rows, "context", "hamt"), _by(rows, "context", "gpt2")
    title = "### Decoding: per-token latency and state bytes vs context (batch 1)\n\n"
    body = md_table(
        ["context", "HAMT ms/token", "GPT-2 ms/token", "HAMT state bytes", "GPT-2 KV-cache bytes", "KV / HAMT state"],
        [[c, h[c]["ms_per_token"], g[c]["ms_per_token"], h[c]["state_bytes"], g[c]["state_bytes"],
          g[c]["state_bytes"] / h[c]["state_bytes"]] for c in h],
    )
    sizes = sorted({r["state_bytes"] for r in h.values()} | {r["state_bytes_after"] for r in h.values()})
    const = "constant" if len(sizes) == 1 else f"NOT constant ({sizes})"
    note = (f"\n\nHAMT state (memory + conv tail, all layers): {const} across contexts; HAMT prefilled for real "
            f"in chunks, GPT-2's KV cache synthesised at the context (a step's cost depends on its size only). "
            f"Medians of {rows[0]['steps']} alternating single-token steps.\n")
    return head + title + body + note


def _write_text(path: Path, text: str) -> None:
    import tempfile

    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text if text.endswith("\n") else text + "\n")
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _write_results(out_dir: Path, name: str, rows: list[dict], table: str) -> None:
    import json

    _write_text(out_dir / f"{name}.json", json.dumps(rows, indent=2, default=float))
    _write_text(out_dir / f"{name}.md", table)
