"""``hamt bench memory``: the memory scan alone, forward and forward + backward, for each available mode
(reference loop, chunked, the fused C kernel on CPU and the Triton kernel on CUDA) at the model's head
shape, against the floor set by the bytes the scan must move divided by the measured copy bandwidth.

``scripts/gpu_tune.py`` builds on ``memory_inputs``, ``memory_step_fns``, ``memory_io_bytes`` and
``copy_bandwidth``.
"""

from __future__ import annotations

import functools
import statistics
from typing import Callable

import torch

from hamt.bench.meta import header, progress
from hamt.ops import cpu_kernel_status, memory_scan, slot_permutations, triton_available, unitary  # the bench's only scan import
from hamt.metrics.systems import timed
from hamt.tables import md_table


def memory_inputs(B: int, T: int, H: int, S: int, F: int, device, seed: int = 0) -> dict:
    """Inputs shaped and distributed like the model's: unitary q, k; softmax slot weights; (1-f) a."""
    g = torch.Generator().manual_seed(seed)

    def cplx(*shape):
        return torch.view_as_complex(torch.randn(*shape, 2, generator=g))

    q, k, v = unitary(cplx(B, T, H, F)), unitary(cplx(B, T, H, F)), cplx(B, T, H, F)  # (B, T, H, F)
    log_f = torch.nn.functional.logsigmoid(2 + 2 * torch.randn(B, T, H, generator=g))  # (B, T, H)
    a = torch.randn(B, T, H, S, generator=g).softmax(-1)  # (B, T, H, S)
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


def copy_bandwidth(device, nbytes: int | None = None, repeats: int = 5) -> float:
    """Measured copy bandwidth in bytes/s (read + write counted) with a large tensor copy."""
    nbytes = nbytes or (2**30 if device.type == "cuda" else 2**28)
    src = torch.ones(nbytes // 4, device=device)
    dst = torch.empty_like(src)
    dst.copy_(src)
    best = min(timed(lambda: dst.copy_(src), device) for _ in range(repeats))
    return 2 * nbytes / best


def memory_step_fns(inputs: dict, mode: str, device, scan: Callable | None = None):
    """(forward, forward + backward) closures of the memory scan ``mode`` on ``inputs`` (from
    ``memory_inputs``); ``scan`` replaces ``memory_scan(..., mode=mode)`` (e.g. a kernel with other launch settings)."""
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
    """One row per mode: forward and forward + backward ms, speed-up over the reference, × floor."""
    B, T = opts["memory_batch"], opts["memory_seq_len"]
    H, S, F = config.num_attention_heads, config.num_slots, config.num_freqs
    inputs = memory_inputs(B, T, H, S, F, device)
    modes = ["reference", "chunk"] + (["triton"] if triton_available(device) else [])
    modes += ["cpu"] if device.type == "cpu" and cpu_kernel_status()[0] else []  # the fused C kernel, auto's CPU choice
    bw = copy_bandwidth(device)
    io = memory_io_bytes(B, T, H, S, F)
    fns = {m: memory_step_fns(inputs, m, device) for m in modes}
    reps = opts["repeats"]
    bar = progress(len(modes) * (reps * 2 + 2) - 2 * max(0, reps - 3), "bench memory")
    for m in modes:  # warm-up: compiles the Triton kernel, sizes allocator pools
        fns[m][0]()
        fns[m][1]()
        bar.update(2)
    times = {m: {"forward": [], "fwd_bwd": []} for m in modes}
    for i in range(reps):
        for m in modes[i % len(modes):] + modes[: i % len(modes)]:  # rotate the order
            if m == "reference" and i >= 3:
                continue  # the slow baseline: three repeats are enough for its median
            times[m]["forward"].append(timed(fns[m][0], device))
            times[m]["fwd_bwd"].append(timed(fns[m][1], device))
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


def render(rows: list[dict], info: dict) -> str:
    r0 = rows[0]
    title = (f"### Memory scan, forward + backward (B={r0['batch_size']}, T={r0['seq_len']}, H={r0['heads']}, "
             f"S={r0['slots']}, F={r0['freqs']}, complex64)\n\n")
    body = md_table(
        ["mode", "forward ms", "fwd+bwd ms", "speed-up vs reference (fwd+bwd)", "floor ms (fwd+bwd)", "× floor"],
        [[r["mode"], r["forward_ms"], r["fwd_bwd_ms"], r["speedup_vs_reference"], r["floor_fwd_bwd_ms"],
          r["times_floor"]] for r in rows],
    )
    note = (f"\n\nfloor: {r0['io_bytes'] / 2**20:.1f} MiB that the scan must read and write "
            f"(hamt.bench.memory.memory_io_bytes) ÷ measured copy bandwidth {r0['copy_bandwidth_gb_s']:.1f} GB/s.\n")
    return header(info) + title + body + note
