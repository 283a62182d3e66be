"""``hamt bench model``: training throughput, memory and MFU of HAMT against a GPT-2 of matched size.

HAMT and a GPT-2 (transformers' GPT2LMHeadModel, SDPA attention) of matched parameter count are
trained on random ids at several sequence lengths with a fixed number of tokens per step. Each timed
step is ``hamt.metrics.systems.train_throughput`` (THE training-throughput measurement, which compare
also uses): forward + backward by default, plus gradient clipping and the AdamW step with
``--optimizer`` (the trainer's step, what ``metrics.json``'s tokens/s times). The two models are
measured alternately (the machine may be shared), medians reported, with the median of the paired
per-repeat speed ratios.

Memory: bytes saved for backward (activations, parameters excluded; exact on any device) and the peak
above the step's start (``systems.PeakMemory(how="allocator")``: CUDA allocator, or torch profiler's
allocation total on CPU). MFU = ``systems.mfu(tokens/s, systems.flops_per_token, systems.peak_flops)``,
the trainer's numerator and denominator, with the peak's source in each row.
"""

from __future__ import annotations

import statistics
import sys
from typing import Any, Callable

from hamt.baselines import hamt_and_matched_gpt2
from hamt.bench.meta import header, progress
from hamt.tables import md_table


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


def compile_model(model, warm_up: Callable[[Any], Any]):
    """(``torch.compile(model)``, None) after ``warm_up(compiled)`` ran (it compiles), or (None, reason)
    when compiling fails: the model is then measured eager, and the reason recorded."""
    import torch

    try:
        compiled = torch.compile(model)
        warm_up(compiled)
        return compiled, None
    except Exception as e:  # noqa: BLE001 - any compiler failure means "measure eager", recorded
        first = (str(e).strip().splitlines() or [""])[0][:200]
        print(f"torch.compile failed for {type(model).__name__} ({type(e).__name__}: {first}); eager",
              file=sys.stderr, flush=True)
        torch._dynamo.reset()
        return None, f"{type(e).__name__}: {first}"


def bench_model(config, opts: dict, device) -> list[dict]:
    """Rows (model, seq_len) with tokens/s, memory, FLOPs/token and MFU; see the module docstring."""
    import torch

    from hamt.metrics import systems

    peak, peak_source = systems.peak_flops(device, opts["precision"], opts["peak_flops"])
    rows = []
    reps = opts["repeats"]
    bar = progress(len(opts["seq_lens"]) * (2 * (reps + 2)), "bench model")
    for T in opts["seq_lens"]:
        B = max(1, opts["tokens_per_step"] // T)
        models = hamt_and_matched_gpt2(config, T, device)
        runs, extra = {}, {}
        for name, m in models.items():
            opt = systems.probe_optimizer(m, device, opts["lr"]) if opts["optimizer"] else False
            measure = dict(device=device, precision=opts["precision"], optimizer=opt, grad_clip=opts["grad_clip"],
                           copy_model=False)
            x = systems.random_ids(B, T, config.vocab_size, device, seed=1)
            eager = systems.train_step(m, x, device=device, precision=opts["precision"], optimizer=opt or None,
                                       grad_clip=opts["grad_clip"])
            eager()  # warm-up (allocator, kernels, optimiser state)
            act = saved_activation_bytes(m, eager)  # eager: what autograd keeps without fusion
            compiled, compile_error = (None, None)
            if opts["compile"]:  # two untimed steps compile it
                compiled, compile_error = compile_model(
                    m, lambda cm: systems.train_throughput(cm, B, T, steps=1, warmup=1, **measure))
            run = m if compiled is None else compiled  # not `compiled or m`: a compiled module has no truth value
            runs[name] = (run, measure)
            mem = systems.train_throughput(run, B, T, steps=1, warmup=0, memory="allocator", **measure)
            extra[name] = dict(activation_mb=act / 2**20, peak_mb=mem["mem_delta_mb"], peak_how=mem["mem_source"],
                               compiled=compiled is not None, compile_error=compile_error)
            bar.update(2)
        times = {k: [] for k in models}
        for i in range(reps):  # alternate the models, and which goes first, so drifts hit both
            for name in (list(models) if i % 2 == 0 else list(models)[::-1]):
                model, measure = runs[name]
                times[name].append(systems.train_throughput(model, B, T, steps=1, warmup=0, **measure)["step_s"])
                bar.update(1)
        ratios = [g / h for h, g in zip(times["hamt"], times["gpt2"])]  # >1: HAMT faster
        for name, m in models.items():
            med = statistics.median(times[name])
            fl = systems.flops_per_token(m, T)
            tok_s = B * T / med
            rows.append(dict(
                model=name, seq_len=T, batch_size=B, params=sum(p.numel() for p in m.parameters()),
                step_ms=1e3 * med, step_ms_all=[round(1e3 * t, 3) for t in times[name]], tokens_per_s=tok_s,
                flops_per_token=fl["total"], mixer_flops_per_token=fl["mixer"], model_flops_s=tok_s * fl["total"],
                peak_flops=peak, peak_flops_source=peak_source, mfu=systems.mfu(tok_s, fl["total"], peak),
                hamt_speedup_vs_gpt2=statistics.median(ratios), **extra[name],
            ))
        del models, runs
        if device.type == "cuda":
            torch.cuda.empty_cache()
    bar.close()
    return rows


def _by(rows: list[dict], name: str) -> dict:
    return {r["seq_len"]: r for r in rows if r["model"] == name}


def _pct(v: float | None) -> str:
    return "n/a" if v is None else f"{100 * v:.1f}%"


def render(rows: list[dict], info: dict) -> str:
    h, g = _by(rows, "hamt"), _by(rows, "gpt2")
    first = next(iter(h.values()))
    what = "forward + backward + AdamW step" if info.get("optimizer") else "forward + backward"
    title = (f"### Training throughput ({what}): HAMT ({first['params'] / 1e6:.2f}M params) vs "
             f"GPT-2 of matched size ({min(r['params'] for r in g.values()) / 1e6:.2f}M params at T="
             f"{min(g)}; its position table grows with T)\n\n")
    body = md_table(
        ["T", "batch", "HAMT tok/s", "GPT-2 tok/s", "HAMT/GPT-2 speed (paired median)", "HAMT act. MB",
         "GPT-2 act. MB", "HAMT peak MB", "GPT-2 peak MB", "HAMT MFU", "GPT-2 MFU"],
        [[T, h[T]["batch_size"], h[T]["tokens_per_s"], g[T]["tokens_per_s"], h[T]["hamt_speedup_vs_gpt2"],
          h[T]["activation_mb"], g[T]["activation_mb"], h[T]["peak_mb"], g[T]["peak_mb"],
          _pct(h[T]["mfu"]), _pct(g[T]["mfu"])] for T in h],
    )
    comp = ""
    if info.get("compile"):
        state = {n: ("compiled" if r["compiled"] else f"eager ({r['compile_error']})")
                 for n, r in (("HAMT", first), ("GPT-2", next(iter(g.values()))))}
        comp = f" torch.compile: HAMT {state['HAMT']}, GPT-2 {state['GPT-2']}; act. MB measured eager."
    peak = f"{first['peak_flops'] / 1e9:,.0f} GFLOP/s" if first["peak_flops"] else "n/a"
    note = (f"\n\nact. MB: tensors saved for backward (parameters excluded). peak MB: {first['peak_how']} over one "
            f"step, above its start. MFU: model FLOPs/s (hamt.metrics.systems.flops_per_token) over the peak "
            f"{peak} ({first['peak_flops_source']}, {info['precision']}), as in the trainer's metrics.json. "
            f"Medians of {len(first['step_ms_all'])} alternating repeats.{comp}\n")
    return header(info) + title + body + note
