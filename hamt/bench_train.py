"""Training throughput benchmark: tokens/s and MFU of HAMT vs the parameter-matched GPT-2.

    python -m hamt.bench_train [--profiles tiny 33m] [--precisions fp32 bf16] [--reps 3] [--steps 5]

For each profile, both models are built from the profile's model section (the GPT-2 by
``hamt.baselines.matched_gpt2_config``) and trained on random token ids (throughput does not depend
on the ids) with the trainer's own pieces: ``make_optimizer`` (AdamW), ``autocast_context``, gradient
clipping, one optimiser step per batch. Each measurement is ``--warmup`` untimed steps then ``--steps``
timed ones; HAMT and GPT-2 are measured interleaved (rep 1: HAMT fp32, GPT-2 fp32, HAMT bf16, GPT-2
bf16; rep 2: ...), so load from other processes on a shared machine hits both alike, and the table
reports the median over reps with the min-max range.

FLOPs per token are ``hamt.metrics.systems.flops_per_token`` (6N + the mixer's FLOPs, see there); the peak is
``hamt.metrics.systems.peak_flops`` (a matmul probe on CPU, datasheet on GPU, env ``HAMT_PEAK_FLOPS`` wins),
probed once per precision before the runs and printed with the table. Prints a markdown table;
``--out FILE`` also writes the rows as JSON.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

# Batch geometry per profile (sequences x tokens). tiny: the profile's own micro-batch; 33m and up:
# a small batch so that a CPU finishes a step in seconds (the per-token cost is what is measured).
DEFAULT_SHAPES = {"micro": (8, 32), "tiny": (16, 128), "33m": (2, 512), "50m": (2, 512), "100m": (1, 1024),
                  "200m": (1, 1024)}


def build(profile: str, params_path: str):
    """(HAMT config, matched GPT-2 config) of a profile."""
    from hamt.baselines import matched_gpt2_config
    from hamt.params import load_params

    p = load_params(params_path, profile)
    cfg = p.model_config()
    return cfg, matched_gpt2_config(cfg)


def measure(model, optimizer, batch: int, seq_len: int, precision: str, device, steps: int, warmup: int) -> float:
    """Seconds per optimiser step (mean over ``steps`` after ``warmup``)."""
    import torch

    from hamt.runtime import autocast_context

    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, model.config.vocab_size, (batch, seq_len), generator=g).to(device)  # (B, T)

    def step():
        with autocast_context(device, precision):
            loss = model(input_ids=x, labels=x, use_cache=False).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return loss.detach().item()  # syncs

    for _ in range(warmup):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    t = time.perf_counter()
    for _ in range(steps):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return (time.perf_counter() - t) / steps


def run(profiles, precisions, reps, steps, warmup, params_path, device_spec="auto", shapes=None) -> tuple[list, dict]:
    import torch

    from hamt.metrics.systems import flops_per_token, peak_flops
    from hamt.runtime import resolve_device
    from hamt.train import make_optimizer
    from hamt.zoo import build_model

    device = resolve_device(device_spec)
    peaks = {prec: peak_flops(device, prec) for prec in precisions}
    rows = []
    for profile in profiles:
        batch, seq = (shapes or {}).get(profile) or DEFAULT_SHAPES.get(profile, (4, 256))
        hamt_cfg, gpt_cfg = build(profile, params_path)
        models = {}
        for label, cfg in (("HAMT", hamt_cfg), ("GPT-2 (matched)", gpt_cfg)):
            torch.manual_seed(0)
            m = build_model(cfg).to(device).train()
            opt = make_optimizer(m, 1e-4, (0.9, 0.95), 0.1, device)
            models[label] = (m, opt, flops_per_token(m, seq)["total"], sum(p.numel() for p in m.parameters()))
        times = {(label, prec): [] for label in models for prec in precisions}
        for rep in range(reps):
            for prec in precisions:
                for label, (m, opt, _, _) in models.items():  # interleaved: HAMT, GPT-2, HAMT, ...
                    dt = measure(m, opt, batch, seq, prec, device, steps, warmup if rep == 0 else 1)
                    times[(label, prec)].append(dt)
                    print(f"  {profile} {label} {prec} rep {rep + 1}/{reps}: {batch * seq / dt:,.0f} tok/s",
                          file=sys.stderr, flush=True)
        for (label, prec), ts in times.items():
            _, _, fpt, n = models[label]
            tps = [batch * seq / t for t in ts]
            peak, _src = peaks[prec]
            med = statistics.median(tps)
            rows.append({"profile": profile, "model": label, "params": n, "precision": prec, "batch": batch,
                         "seq_len": seq, "tokens_per_s": med, "tokens_per_s_min": min(tps),
                         "tokens_per_s_max": max(tps), "ms_per_step": 1000 * statistics.median(ts),
                         "flops_per_token": fpt, "mfu": fpt * med / peak if peak else None})
        del models
    return rows, {prec: {"peak_flops": v[0], "source": v[1]} for prec, v in peaks.items()}


def markdown(rows: list, peaks: dict, device: str, threads: int, reps: int, steps: int) -> str:
    out = [f"Training throughput on {device} ({threads} threads), median of {reps} interleaved reps x {steps} steps; "
           "random token ids, AdamW, grad clipping.", ""]
    out.append("| profile | model | params | precision | batch x seq | tokens/s (median) | range | ms/step | "
               "MFLOP/token | MFU |")
    out.append("|---|---|---:|---|---|---:|---|---:|---:|---:|")
    for r in rows:
        mfu = f"{100 * r['mfu']:.1f}%" if r["mfu"] is not None else "n/a"
        out.append(
            f"| {r['profile']} | {r['model']} | {r['params'] / 1e6:.2f}M | {r['precision']} | {r['batch']} x {r['seq_len']} "
            f"| {r['tokens_per_s']:,.0f} | {r['tokens_per_s_min']:,.0f}-{r['tokens_per_s_max']:,.0f} "
            f"| {r['ms_per_step']:.0f} | {r['flops_per_token'] / 1e6:,.1f} | {mfu} |")
    out.append("")
    out.append("Peak FLOP/s used for MFU: " + "; ".join(
        f"{prec}: {v['peak_flops'] / 1e9:,.0f} GFLOP/s ({v['source']})" for prec, v in peaks.items() if v["peak_flops"]))
    return "\n".join(out)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m hamt.bench_train", description=__doc__.splitlines()[0])
    ap.add_argument("--profiles", nargs="+", default=["tiny", "33m"])
    ap.add_argument("--precisions", nargs="+", default=["fp32", "bf16"], choices=["fp32", "bf16", "fp16"])
    ap.add_argument("--reps", type=int, default=3, help="interleaved repetitions (default 3)")
    ap.add_argument("--steps", type=int, default=5, help="timed steps per measurement (default 5)")
    ap.add_argument("--warmup", type=int, default=2, help="untimed steps before the first measurement (default 2)")
    ap.add_argument("--shape", action="append", default=[], metavar="PROFILE=BxT",
                    help="batch x seq for a profile, e.g. 33m=2x512 (repeatable)")
    ap.add_argument("--params", default="params.yaml")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--out", default=None, help="also write the rows as JSON here")
    args = ap.parse_args(argv)
    import torch

    shapes = {}
    for s in args.shape:
        prof, _, bt = s.partition("=")
        b, _, t = bt.partition("x")
        shapes[prof] = (int(b), int(t))
    rows, peaks = run(args.profiles, args.precisions, args.reps, args.steps, args.warmup, args.params,
                      args.device, shapes)
    from hamt.runtime import resolve_device

    device = resolve_device(args.device)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    print(markdown(rows, peaks, name, torch.get_num_threads(), args.reps, args.steps))
    if args.out:
        from hamt.io import write_json_atomic

        write_json_atomic(Path(args.out), {"rows": rows, "peaks": peaks, "device": name,
                                          "threads": torch.get_num_threads()})
    return 0


if __name__ == "__main__":
    sys.exit(main())
