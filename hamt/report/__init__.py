"""The report (stage ``report``): ``report.md``, a self-contained ``report.html``, plots and ``metrics.json``.

Everything is rendered from result files of the other stages, never from numbers written here:

    collect.py   read every result file into one dict (an unreadable file is listed, never skipped)
    claims.py    the claims ledger: each claim of the seed prototype, measured value and verdict
    plots.py     the figures, ``<report.out_dir>/plots/*.png`` (a plot whose data is absent says so)
    render.py    the document as blocks, rendered to Markdown and to HTML with the plots embedded

``report(params)`` runs them in that order and writes the files; ``summary_metrics`` is what
``dvc metrics show`` reads. Atomic writes come from ``hamt.io``, number formatting from ``hamt.tables``.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from hamt.io import write_json_atomic, write_text_atomic
from hamt.report import claims, collect, plots, render


def cli_report(params, args) -> int:
    out = report(params)
    print(f"report: {out['md']} and {out['html']} ({len(out['plots'])} plots); metrics in {out['metrics']}")
    counts = out["verdicts"]
    print("claims: " + ", ".join(f"{v}: {n}" for v, n in counts.items()))
    for note in out["notes"]:
        print(f"  note: {note}")
    return 0


def report(params) -> dict:
    """Collect results, compute the ledger, draw the plots, write report.md / report.html / metrics.json."""
    out = Path(params.report.out_dir)
    plot_dir = out / "plots"
    results = collect.collect(params)
    ledger = claims.claims_ledger(results)
    drawn: dict[str, Path | str] = {}
    for key, _caption, fn in plots.PLOTS:
        try:
            drawn[key] = fn(results, plot_dir)
        except Exception as e:  # noqa: BLE001  a broken plot must not sink the report; it says why
            drawn[key] = f"could not draw ({type(e).__name__}: {e})"
    images = {k: p.read_bytes() for k, p in drawn.items() if isinstance(p, Path)}
    doc = render.build_document(results, drawn, ledger, params.report.title)
    rel = {k: os.path.relpath(p, out) for k, p in drawn.items() if isinstance(p, Path)}
    md_path, html_path, metrics_path = out / "report.md", out / "report.html", out / "metrics.json"
    write_text_atomic(md_path, render.render_markdown(doc, rel))
    write_text_atomic(html_path, render.render_html(doc, images, params.report.title))
    metrics = summary_metrics(results, ledger)
    write_json_atomic(metrics_path, metrics)
    skipped = [f"{k}: {p}" for k, p in drawn.items() if not isinstance(p, Path)]
    unreadable = [f"unreadable result file {e['path']}: {e['error']}" for e in results["errors"]]
    for n in unreadable + [f"plot skipped: {n}" for n in skipped]:
        print(f"[report] {n}", file=sys.stderr)
    notes = unreadable + skipped
    return {"md": str(md_path), "html": str(html_path), "metrics": str(metrics_path),
            "plots": {k: str(p) for k, p in drawn.items() if isinstance(p, Path)}, "notes": notes, "ledger": ledger,
            "verdicts": metrics["claims"], "errors": results["errors"]}


def summary_metrics(results: dict, ledger: list[dict]) -> dict:
    """Flat-ish numbers for ``dvc metrics show``: per model quality/speed, the probes, verdict counts."""
    keys = ("params", "ppl", "bpb", "word_ppl", "train_tok_s", "decode_tok_s", "peak_mem_mb", "recall_acc",
            "mqar_trained_acc", "fidelity", "slot_active_fraction")
    models = {n: {k: r.get(k) for k in keys if r.get(k) is not None}
              for n, r in collect.rows_by_name(results).items() if collect.is_ok(r)}
    verdicts = {v: sum(c["verdict"] == v for c in ledger) for v in claims.VERDICTS}
    out = {"models": models, "claims": {k.replace(" ", "_"): n for k, n in verdicts.items()}}
    v = results.get("validate")
    if v:
        out["validate_passed"] = bool(v.get("passed"))
    return out
