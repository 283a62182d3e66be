"""The report's figures (matplotlib, Agg), each a function ``(results, out_dir) -> Path | str``.

A plot writes ``<out_dir>/<key>.png`` atomically and returns its path, or returns a sentence saying
which data is absent (the report then shows a note instead). ``PLOTS`` lists them in report order:
key, caption, function. HAMT is always drawn in red. matplotlib is imported only when drawing.
"""

from __future__ import annotations

import io
import math
from pathlib import Path
from typing import Callable

from hamt.io import write_bytes_atomic
from hamt.report.collect import bench_rows, is_ok, rows_by_name


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _color(name: str, i: int) -> str:
    """HAMT is always red (C3); everything else cycles through the other default colours."""
    if name == "hamt":
        return "C3"
    others = [c for c in range(10) if c != 3]
    return f"C{others[i % len(others)]}"


def _save(fig, path: Path) -> Path:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    _plt().close(fig)
    write_bytes_atomic(path, buf.getvalue())
    return path


def _model_colors(names) -> dict[str, str]:
    """One colour per model, the same in every figure that uses it (assigned in name order); a ``-seed<N>`` run takes
    its model's colour (HAMT red)."""
    from hamt.zoo import split_seed

    bases = sorted({split_seed(n)[0] for n in names})
    by_base = {b: _color(b, i) for i, b in enumerate(bases)}
    return {n: by_base[split_seed(n)[0]] for n in names}


def _series(log: list[dict], x: str, y: str) -> list[tuple[float, float]]:
    return [(r[x], r[y]) for r in log if isinstance(r.get(x), (int, float)) and isinstance(r.get(y), (int, float))]


def plot_loss_curves(results: dict, out: Path) -> Path | str:
    """Validation (and training) loss against training tokens, and validation loss against training seconds."""
    from hamt.zoo import split_seed

    runs = {n: e for n, e in (results.get("train") or {}).items() if e.get("log")}
    if not runs:
        return "no training logs (results/train/<name>/log.csv)"
    plt = _plt()
    colors = _model_colors(runs)
    fig, (ax, bx) = plt.subplots(1, 2, figsize=(13, 4.8))
    for name, e in runs.items():
        seed_run = split_seed(name)[1] is not None  # drawn dashed, in its model's colour
        style = dict(color=colors[name], linestyle="--" if seed_run else "-")
        tr, va = _series(e["log"], "tokens", "train_loss"), _series(e["log"], "tokens", "val_loss")
        if tr:
            ax.plot(*zip(*tr), alpha=0.35, lw=1, **style)
        if va:
            ax.plot(*zip(*va), marker="o", ms=3, lw=2, label=name, **style)
        vt = _series(e["log"], "train_time_s", "val_loss")  # logs written before the column existed have none
        if vt:
            bx.plot(*zip(*vt), marker="o", ms=3, lw=2, label=name, **style)
    ax.set_xlabel("training tokens")
    ax.set_ylabel("loss (nats/token)")
    ax.set_title("Validation loss (points; training loss faint) against tokens")
    bx.set_xlabel("training seconds (timed steps, this machine; runs trained side by side shared its cores)")
    bx.set_title("Validation loss against training time")
    if not bx.lines:
        bx.text(0.5, 0.5, "no train_time_s in these logs", ha="center", va="center", transform=bx.transAxes)
    for a in (ax, bx):
        a.grid(alpha=0.3)
        if a.lines:
            a.legend(fontsize=7, ncol=2)
    return _save(fig, out / "loss_curves.png")


def plot_quality(results: dict, out: Path) -> Path | str:
    """Token perplexity, bits per byte (mean over seeds, error bar = sample std) and word perplexity."""
    rows = [r for r in rows_by_name(results).values() if is_ok(r) and r.get("ppl") is not None and not r.get("seed_of")]
    if not rows:
        return "no evaluated model (results/compare/results.json)"
    plt = _plt()
    names = [r["name"] for r in rows]
    colors = _model_colors(names)
    fig, axes = plt.subplots(1, 3, figsize=(12, 4))
    for ax, key, label in zip(axes, ("ppl", "bpb", "word_ppl"), ("token perplexity", "bits per byte", "word perplexity")):
        vals = [r.get(key) or 0.0 for r in rows]
        errs = None
        if key == "bpb" and any(r.get("bpb_std") is not None for r in rows):
            vals = [r["bpb_mean"] if r.get("bpb_mean") is not None else v for r, v in zip(rows, vals)]
            errs = [r.get("bpb_std") or 0.0 for r in rows]
            label = "bits per byte (mean ± std over seeds)"
        bars = ax.bar(range(len(rows)), vals, yerr=errs, capsize=3 if errs else 0, color=[colors[n] for n in names])
        ax.set_xticks(range(len(rows)), names, rotation=35, ha="right", fontsize=8)
        ax.set_title(label)
        ax.bar_label(bars, fmt=lambda v: f"{v:,.0f}" if v >= 1000 else f"{v:.4g}", fontsize=7)
        ax.grid(axis="y", alpha=0.3)
        floor = results.get("floor")
        if floor and key in ("bpb", "word_ppl"):  # the generated corpus's true floor: what no model can beat
            y = floor["bits_per_byte"] if key == "bpb" else math.exp(floor["nats_per_word"])
            ax.axhline(y, color="black", linestyle="--", linewidth=1, label="entropy floor")
            ax.legend(fontsize=7)
    fig.suptitle("Quality on the evaluated split (lower is better; token perplexity depends on the tokenizer)")
    fig.tight_layout()
    return _save(fig, out / "quality.png")


def _speed_series(results: dict) -> tuple[list[dict], str]:
    """Rows (model, seq_len, train_tok_s, [infer_tok_s], *_peak_mem_mb) from ``hamt bench model``, else the speed probe."""
    bench = [r for r in bench_rows(results, "model") if "seq_len" in r and "model" in r and r.get("tokens_per_s")]
    if bench:
        rows = [{"model": r["model"], "seq_len": r["seq_len"], "train_tok_s": r["tokens_per_s"],
                 "train_peak_mem_mb": r.get("peak_mb"), "activation_mb": r.get("activation_mb"),
                 "mem_source": r.get("peak_how") or "hamt bench",
                 "speedup": r.get("hamt_speedup_vs_gpt2")} for r in bench]
        return rows, f"results/bench/model.json (hamt bench model; {bench[0].get('device', '?')}, preset {bench[0].get('preset', '?')})"
    speed = results.get("speed") or {}
    rows = [r for r in speed.get("rows", []) if r.get("status") == "ok"]
    return rows, "results/compare/speed.json (compare's speed probe)"


def _log2_axis(ax, values) -> None:
    """Log-2 x axis labelled with the measured values themselves (not 2^k)."""
    vals = sorted({v for v in values if v})
    ax.set_xscale("log", base=2)
    ax.set_xticks(vals, [str(v) for v in vals])
    ax.minorticks_off()


def _memory_label(rows: list[dict]) -> str:
    """What the peak-memory numbers are, from the rows' ``mem_source``."""
    src = next((str(r["mem_source"]) for r in rows if r.get("mem_source")), "")
    if src.startswith("rss"):
        # includes the interpreter and libraries, and freed memory is reused without growing it
        return "process peak RSS"
    return "CUDA allocator peak" if src == "cuda_allocator" else (src or "peak")


def plot_speed(results: dict, out: Path) -> Path | str:
    rows, source = _speed_series(results)
    if not rows:
        return "no throughput against sequence length (results/bench/*.json or results/compare/speed.json)"
    plt = _plt()
    mem_label = _memory_label(rows)
    mem_keys = ("train_peak_mem_mb", "infer_peak_mem_mb")
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(11, 4))
    for i, model in enumerate(sorted({r["model"] for r in rows})):
        rs = sorted((r for r in rows if r["model"] == model), key=lambda r: r["seq_len"])
        T, c = [r["seq_len"] for r in rs], _color(model, i)
        for key, style in (("train_tok_s", "-o"), ("infer_tok_s", "--s")):
            ys = [r.get(key) or r.get(key.replace("tok_s", "tokens_per_s")) for r in rs]
            if any(y is not None for y in ys):
                a1.plot(T, ys, style, color=c, label=f"{model} {key.split('_')[0]}")
        for key, style in zip(mem_keys, ("-o", "--s")):
            ys = [r.get(key) for r in rs]
            if any(y is not None for y in ys):
                a2.plot(T, ys, style, color=c, label=f"{model} {key.split('_')[0]} peak")
        acts = [r.get("activation_mb") for r in rs]
        if any(a is not None for a in acts):  # exact bytes saved for backward (hamt bench): device-independent
            a2.plot(T, acts, ":^", color=c, label=f"{model} activations")
    a1.set_ylabel("tokens/s")
    a2.set_ylabel(f"MB (peak: {mem_label})")
    for ax in (a1, a2):
        _log2_axis(ax, [r["seq_len"] for r in rows])
        ax.set_xlabel("sequence length (same tokens per step)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    a1.set_title("Throughput against sequence length")
    a2.set_title("Peak memory against sequence length")
    fig.text(0.01, -0.02, f"source: {source}", fontsize=7)
    return _save(fig, out / "speed.png")


def plot_decoding(results: dict, out: Path) -> Path | str:
    series = {n: [d for d in r.get("decode") or [] if d.get("status") == "ok"] for n, r in rows_by_name(results).items() if is_ok(r)}
    for r in bench_rows(results, "decode"):  # hamt bench decode: random weights, longer contexts
        if "context" in r and r.get("ms_per_token") is not None:
            series.setdefault(f"bench {r.get('model')} ({r.get('preset', '?')})", []).append(r)
    series = {n: sorted(s, key=lambda d: d["context"]) for n, s in series.items() if s}
    if not series:
        return "no decoding profile (results/compare/results.json rows' decode, results/bench/decode.json)"
    plt = _plt()
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(11, 4))
    markers = "osD^vP*X"
    for i, (name, pts) in enumerate(series.items()):
        c = [d["context"] for d in pts]
        style = dict(color=_color(name, i), marker=markers[i % len(markers)], label=name,
                     linestyle=":" if name.startswith("bench ") else "-",
                     zorder=3 if name == "hamt" else 2, alpha=0.9, markersize=8 if name == "hamt" else 5)
        a1.plot(c, [d["ms_per_token"] for d in pts], **style)
        a2.plot(c, [d["state_bytes"] / 2**20 for d in pts], **style)
    a1.set_ylabel("ms per generated token")
    a2.set_ylabel("state / KV cache (MB)")
    a1.set_title("Decoding latency against context")
    a2.set_title("Decoding state against context")
    for ax in (a1, a2):
        _log2_axis(ax, [d["context"] for pts in series.values() for d in pts])
        ys = [y for line in ax.get_lines() for y in line.get_ydata() if y > 0]
        if ys and max(ys) / min(ys) > 30:  # constant vs growing over orders of magnitude: show both
            ax.set_yscale("log")
        ax.set_xlabel("context length (tokens)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    return _save(fig, out / "decoding.png")


def plot_recall(results: dict, out: Path) -> Path | str:
    rec = results.get("recall") or {}
    trained = rec.get("models") or {} if rec.get("status") == "ok" else {}
    zero = {n: r.get("recall") for n, r in rows_by_name(results).items() if is_ok(r) and r.get("recall")}
    if not trained and not zero:
        return "no associative-recall results"
    plt = _plt()
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    chance = None
    for i, (arch, m) in enumerate(trained.items()):
        rows = m["rows"]
        axes[0].plot([r["n_pairs"] for r in rows], [r["accuracy"] for r in rows], "-o", color=_color(arch, i),
                     label=f"{arch} ({m['params'] / 1e3:.0f}k params)")
        chance = m.get("chance")
    if chance is not None:
        axes[0].axhline(chance, color="gray", ls=":", label="chance")
    axes[0].set_title(f"Trained on MQAR ({rec.get('steps', '?')} steps)" if trained else "MQAR probe not run")
    for i, (name, rows) in enumerate(zero.items()):
        axes[1].plot([r["n_pairs"] for r in rows], [r["accuracy"] for r in rows], "-o", color=_color(name, i), label=name)
    axes[1].set_title("Zero-shot, in the model's own vocabulary")
    for ax in axes:
        _log2_axis(ax, [r["n_pairs"] for m in trained.values() for r in m["rows"]]
                   + [r["n_pairs"] for rows in zero.values() for r in rows])
        ax.set_xlabel("key-value pairs")
        ax.set_ylabel("accuracy at query positions")
        ax.set_ylim(-0.02, 1.02)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    return _save(fig, out / "recall.png")


def plot_zoology(results: dict, out: Path) -> Path | str:
    """``hamt bench recall``: accuracy against model width and against recurrent-state bytes (Zoology's views)."""
    best = [r for r in bench_rows(results, "recall") if r.get("best") and "accuracy" in r]
    if not best:
        return "no MQAR grid results (run `hamt bench recall`)"
    plt = _plt()
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    models = list(dict.fromkeys(r["model"] for r in best))
    cells = sorted({(r["seq_len"], r["n_pairs"]) for r in best})
    styles = ["-", "--", ":", "-."]
    for i, m in enumerate(models):
        color = _color(m, i)
        for j, (T, n) in enumerate(cells):
            pts = sorted((r["d_model"], r["accuracy"], r["state_bytes"]) for r in best
                         if r["model"] == m and (r["seq_len"], r["n_pairs"]) == (T, n))
            if not pts:
                continue
            label = f"{m} T={T}, {n} pairs"
            axes[0].plot([p[0] for p in pts], [p[1] for p in pts], styles[j % 4], marker="o", color=color, label=label)
            axes[1].plot([p[2] for p in pts], [p[1] for p in pts], styles[j % 4], marker="o", color=color, label=label)
    _log2_axis(axes[0], [r["d_model"] for r in best])
    axes[0].set_xlabel("model width d")
    axes[1].set_xscale("log")
    axes[1].set_xlabel("recurrent state bytes (batch 1, after one sequence)")
    examples = sorted({r["train_examples"] for r in best})
    axes[0].set_title(f"MQAR, vocabulary {best[0]['vocab_size']:,}, {', '.join(f'{e:,}' for e in examples)} examples")
    axes[1].set_title("Accuracy against state size")
    for ax in axes:
        ax.set_ylabel("accuracy at query positions")
        ax.set_ylim(-0.02, 1.02)
        ax.grid(alpha=0.3)
    axes[1].legend(fontsize=6, ncol=2)
    return _save(fig, out / "zoology.png")


PLOTS: list[tuple[str, str, Callable[[dict, Path], Path | str]]] = [
    ("loss_curves", "Validation loss against training tokens and against training time (seed runs dashed)", plot_loss_curves),
    ("quality", "Perplexity, bits per byte (mean ± std over seeds) and word perplexity", plot_quality),
    ("speed", "Throughput and peak memory against sequence length", plot_speed),
    ("decoding", "Decoding latency and state size against context length", plot_decoding),
    ("recall", "Associative recall (MQAR) accuracy against the number of pairs", plot_recall),
    ("zoology", "MQAR on the Zoology grid: accuracy against model width and against state bytes", plot_zoology),
]
