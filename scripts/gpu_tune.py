"""Tune the Triton memory kernel's launch shape on a GPU, then measure what it buys the model.

    python scripts/gpu_tune.py [--preset 100m] [--batch 16] [--seq-len 1024]

1. The memory scan alone (forward + backward) at the preset's head shape for every chunk size (time
   steps between the states the forward saves for the backward; the row kernel's tile is the whole
   S x F state, so the chunk is its one launch knob): median ms of 5, after a warm-up that compiles each.
2. Training forward + backward tokens/s of HAMT with the default and with the fastest chunk (patched
   into hamt.ops.triton for this process), and of the matched GPT-2, at T = 1024 and 8192
   (65,536 tokens per step, bf16), alternating, median of 5.
"""
import argparse
import functools
import statistics

import torch

from hamt.bench.memory import copy_bandwidth, memory_inputs, memory_io_bytes, memory_step_fns
from hamt.baselines import hamt_and_matched_gpt2
from hamt.config import HAMTConfig
from hamt.metrics.systems import timed, train_throughput
from hamt.ops import triton as tm

ap = argparse.ArgumentParser()
ap.add_argument("--preset", default="100m")
ap.add_argument("--batch", type=int, default=16)
ap.add_argument("--seq-len", type=int, default=1024)
ap.add_argument("--chunks", type=int, nargs="+", default=[16, 32, 64, 128])
ap.add_argument("--model-seq-lens", type=int, nargs="+", default=[1024, 8192])
ap.add_argument("--tokens-per-step", type=int, default=65536)
ap.add_argument("--device", default="cuda", help="cpu only to check this script (TRITON_INTERPRET=1)")
a = ap.parse_args()
dev = torch.device(a.device)
cfg = HAMTConfig.from_preset(a.preset)
H, S, F = cfg.num_attention_heads, cfg.num_slots, cfg.num_freqs
inp = memory_inputs(a.batch, a.seq_len, H, S, F, dev)


def fwd_bwd_fn(chunk):
    scan = functools.partial(tm.memory_triton, chunk_size=chunk)
    return memory_step_fns(inp, "triton", dev, scan=scan)[1]


floor = memory_io_bytes(a.batch, a.seq_len, H, S, F)["total"] / copy_bandwidth(dev)
print(f"memory scan B={a.batch} T={a.seq_len} H={H} S={S} F={F}; floor {1e3 * floor:.3f} ms (fwd+bwd)")
print(f"default chunk {tm.DEFAULT_CHUNK_SIZE}\n| chunk | fwd+bwd ms | x floor |\n|---|---|---|")
res = {}
for ch in a.chunks:
    try:
        step = fwd_bwd_fn(ch)
        step()  # compiles this variant
        ms = 1e3 * statistics.median(timed(step, dev) for _ in range(5))
    except Exception as e:  # noqa: BLE001 - a variant that does not fit (registers, shared memory)
        print(f"| {ch} | failed: {type(e).__name__}: {str(e).splitlines()[0][:80]} | |")
        continue
    res[ch] = ms
    print(f"| {ch} | {ms:.2f} | {ms / 1e3 / floor:.1f} |", flush=True)
best = min(res, key=res.get)
print(f"fastest: chunk={best} ({res[best]:.2f} ms)")

orig = tm.memory_triton


def _tuned(fn, chunk: int):
    """``fn`` at a fixed chunk size: the dispatcher passes the model's chunk_size, which this overrides."""
    def run(*args, **kwargs):
        kwargs.update(chunk_size=chunk)
        return fn(*args, **kwargs)
    return run


variants = {"hamt (default)": orig, f"hamt (chunk={best})": _tuned(orig, chunk=best)}
print("\n| T | model | tok/s |\n|---|---|---|")
for T in a.model_seq_lens:
    models = hamt_and_matched_gpt2(cfg, T, dev)
    B = max(1, a.tokens_per_step // T)
    runs = {name: ("hamt", fn) for name, fn in variants.items()} | {"gpt2": ("gpt2", None)}
    tok_s = {k: [] for k in runs}
    for i in range(6):
        for name, (m, fn) in runs.items():
            if fn is not None:
                tm.memory_triton = fn
            r = train_throughput(models[m], B, T, device=dev, steps=1, warmup=0, precision="bf16", optimizer=False,
                                 copy_model=False)  # the step hamt bench model times
            if i:  # the first round warms up
                tok_s[name].append(r["tokens_per_s"])
    tm.memory_triton = orig
    for name in runs:
        print(f"| {T} | {name} | {statistics.median(tok_s[name]):,.0f} |", flush=True)
    del models
