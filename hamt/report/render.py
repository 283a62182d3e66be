"""The report as a document: a list of blocks, rendered to Markdown and to one self-contained HTML file.

``build_document`` lays out the report (setup, unreadable files, "Is HAMT competitive?" (computed by
``hamt.report.summary``), claims ledger, figures, comparison,
validation, sample, criteria, definitions) as blocks ``(kind, ...)``: h1/h2/h3, p, note, pre, list,
img (a plot key and its caption) and table (header, rows of raw values). ``render_markdown`` links the
plots; ``render_html`` embeds them as base64 so the one file can be mailed or opened offline. Cells go
through ``hamt.tables.cell``, the project's one number formatter.
"""

from __future__ import annotations

import base64
import html
import math
import re
from pathlib import Path
from typing import Any

from hamt.report.claims import NOT_MEASURED, REFUTED, SUPPORTED
from hamt.report.collect import bench_rows, preset_of
from hamt.report.plots import PLOTS
from hamt.report.summary import summary_blocks
from hamt.tables import cell, md_table


def _floor_text(floor: dict | None) -> str:
    if not floor:
        return ""
    return (f" The generated corpus has a known entropy: no model can score its {floor['split']} split below "
            f"{floor['bits_per_byte']:.3f} bits per byte (word perplexity {math.exp(floor['nats_per_word']):.1f}); "
            f"a model perfect at all but the key-value recall would score {floor['recall_blind_bits_per_byte']:.3f}.")


def build_document(results: dict, plots: dict[str, Path | str], ledger: list[dict], title: str) -> list[tuple]:
    """The report as blocks: setup, claims ledger, figures, tables, validation, sample, criteria, definitions."""
    comp = results.get("compare") or {}
    env = comp.get("env") or {}
    rows = comp.get("rows") or []
    doc: list[tuple] = [("h1", title)]
    doc.append(("p", f"**Data: {results.get('corpus') or results.get('dataset')}.**" + _floor_text(results.get("floor"))))
    doc.append(("p", f"Profile **{results.get('profile')}** (model {preset_of(results)}), data "
                     f"{results.get('dataset')}, tokenizer {results.get('tokenizer')}; device {env.get('device_name', 'n/a')}; "
                     f"torch {env.get('torch', '?')}, transformers {env.get('transformers', '?')}; {env.get('time', '')}."))
    doc.extend(_error_blocks(results))
    doc.extend(summary_blocks(results))
    doc.append(("h2", "Claims ledger"))
    doc.append(("p", "Each claim of the seed prototype, the value measured by this pipeline and a verdict computed from "
                     "the result files (`hamt.report.claims`; criteria at the end). *Not measured on this "
                     "hardware* means this run does not cover the claim's scope (model size, GPU, dataset); the "
                     "measured column then shows what was measured instead."))
    doc.append(("table", ["claim", "claimed", "measured", "verdict"],
                [[c["claim"], c["claimed"], c["measured"], c["verdict"]] for c in ledger]))
    doc.append(("h2", "Figures"))
    for key, caption, _fn in PLOTS:
        p = plots.get(key)
        doc.append(("img", key, caption) if isinstance(p, Path) else ("note", f"{caption}: plot skipped, {p}."))
    doc.extend(_comparison_blocks(results, rows))
    doc.extend(_validation_blocks(results))
    hamt_row = next((r for r in rows if r["name"] == "hamt" and r.get("status") == "ok"), None)
    if hamt_row and (hamt_row.get("sample") or {}).get("text"):
        doc.append(("h2", "Sample (greedy, trained HAMT)"))
        doc.append(("pre", hamt_row["sample"]["text"]))
    doc.append(("h2", "How each verdict is decided"))
    doc.append(("table", ["claim", "criterion", "note"], [[c["claim"], c["criterion"], c["evidence"]] for c in ledger]))
    doc.append(("h2", "Definitions"))
    doc.append(("p", "Token perplexity exp(NLL/tokens); bits per byte NLL/(ln 2 x UTF-8 bytes of the evaluated text), "
                     "tokenizer-independent; word perplexity exp(NLL/whitespace-separated words), the WikiText "
                     "convention. NLL is summed over every target token of the split (end-of-text separators included). "
                     "Every number in this report is read from a result file; nothing is typed in by hand."))
    return doc


def _error_blocks(results: dict) -> list[tuple]:
    errors = results.get("errors") or []
    if not errors:
        return []
    return [("h2", "Unreadable result files"),
            ("p", "These files exist but could not be read; everything below is made without them."),
            ("list", [f"`{e['path']}`: {e['error']}" for e in errors])]


def _comparison_blocks(results: dict, rows: list[dict]) -> list[tuple]:
    ev = (results.get("compare") or {}).get("eval") or {}
    out: list[tuple] = [("h2", "Comparison")]
    if not rows:
        return out + [("note", "No comparison results: run `hamt compare`.")]
    counts = next((r.get("counts_note") for r in rows if r.get("counts_note")), "n/a")
    out.append(("p", f"Split **{ev.get('split', '?')}**, sliding window of {ev.get('context')} tokens, stride "
                     f"{ev.get('stride')} (every token scored once). Byte/word counts: {counts}. "
                     "Training tokens/s: forward + backward + AdamW on a copy, batch train.micro_batch_size x context; "
                     "decode tok/s and state size with prompt + new tokens filling the evaluation context; peak memory: "
                     "CUDA allocator on GPU, process peak RSS on CPU (includes the interpreter and libraries). "
                     "Recall (0-shot): MQAR accuracy in the model's vocabulary, averaged over the pair counts; "
                     "MQAR trained: the architecture trained on MQAR (probe below)."))
    seed_runs = [r for r in rows if "seed_of" in r]  # folded into their model's row (bpb mean ± std)
    rows = [r for r in rows if "seed_of" not in r]
    head, body = _comparison_table([r for r in rows if not r["name"].startswith("ablation-")])
    out.append(("table", head, body))
    if seed_runs:
        out.append(("p", "Rows with several seeds show the first seed's metrics and, in *bpb over seeds*, the mean ± "
                         "sample standard deviation over every evaluated seed: " + ", ".join(
                             f"{r['name']} ({r['status']})" for r in seed_runs) + "."))
    abl = [r for r in rows if r["name"].startswith("ablation-") or r["name"] == "hamt"]
    if len(abl) > 1:
        out.append(("h3", "Ablations (same budget as HAMT)"))
        head, body = _comparison_table(abl)
        out.append(("table", head, body))
    skipped = [r for r in rows if r.get("status") != "ok"]
    if skipped:
        out.append(("p", "Not evaluated, with the reason:"))
        out.append(("list", [f"**{r['name']}** {r['status']}: {r.get('reason')}" for r in skipped]))
    rec = results.get("recall") or {}
    if rec.get("status") == "ok":
        parts = [f"{a}: {m['accuracy']:.3f} ({m['params']:,} params, {m['seconds']:.0f} s)" for a, m in rec["models"].items()]
        chance = next(iter(rec["models"].values()))["chance"] if rec["models"] else None
        out.append(("p", f"MQAR probe: vocabulary {rec['vocab_size']}, sequence length {rec['seq_len']}, "
                         f"{rec['steps']} training steps, chance {cell(chance, 3)}. Mean accuracy over the trained "
                         "pair counts: " + "; ".join(parts) + "."))
    elif rec:
        out.append(("note", f"MQAR probe {rec.get('status')}: {rec.get('reason')}"))
    return out + _zoology_blocks(results)


def _zoology_blocks(results: dict) -> list[tuple]:
    """The MQAR grid of ``hamt bench recall`` (results/bench/recall.json), when it was run."""
    best = [r for r in bench_rows(results, "recall") if r.get("best")]  # each cell's best learning rate
    if not best:
        return []
    examples = ", ".join(f"{e:,}" for e in sorted({r["train_examples"] for r in best}))
    lrs = ", ".join(map(str, sorted({r["lr"] for r in bench_rows(results, "recall") if "lr" in r})))
    return [("h3", "Associative recall at the Zoology standard (`hamt bench recall`)"),
            ("p", f"MQAR, vocabulary {best[0]['vocab_size']:,}, {best[0]['layers']} layers, each architecture at the "
                  f"same width, trained from scratch on {examples} examples per cell (Zoology: 100,000), best of "
                  f"learning rates {lrs}; exact match at the query positions. Measured {best[0].get('date', '?')} "
                  f"on {best[0].get('device', '?')}, commit {best[0].get('commit', '?')}."),
            ("table", ["model", "d", "T", "pairs", "accuracy", "chance", "state bytes"],
             [[r["model"], r["d_model"], r["seq_len"], r["n_pairs"], cell(r["accuracy"], 3), cell(r["chance"], 5),
               f"{r['state_bytes']:,}"] for r in best])]


def _validation_blocks(results: dict) -> list[tuple]:
    v = results.get("validate")
    out: list[tuple] = [("h2", "Small-model validation")]
    if not v:
        return out + [("note", "No validation results: run `hamt validate`.")]
    out.append(("p", "Passed." if v.get("passed") else "FAILED: " + "; ".join(v.get("reasons", []))))
    out.append(("table", ["check", "passed", "detail"],
                [[k, c.get("passed"), c.get("detail", "")] for k, c in (v.get("checks") or {}).items()]))
    return out


def _comparison_table(rows: list[dict]) -> tuple[list[str], list[list[Any]]]:
    head = ["model", "status", "params", "tokens seen", "ppl", "bpb", "bpb over seeds", "word ppl", "train tok/s", "decode tok/s",
            "state MB", "peak mem MB", "recall (0-shot)", "MQAR trained", "fidelity", "slots active"]
    body = []
    for r in rows:
        if r.get("status") != "ok":
            body.append([r["name"], r["status"]] + [None] * (len(head) - 2))
            continue
        sb = r.get("state_bytes")
        body.append([r["name"], "ok", r.get("params"), r.get("tokens_seen"), r.get("ppl"), r.get("bpb"), _over_seeds(r),
                     r.get("word_ppl"), r.get("train_tok_s"), r.get("decode_tok_s"), sb / 2**20 if sb else None,
                     r.get("peak_mem_mb"), r.get("recall_acc"), r.get("mqar_trained_acc"), r.get("fidelity"),
                     r.get("slot_active_fraction")])
    return head, body


def _over_seeds(r: dict) -> str:
    """``1.2700 ± 0.0040 (3 seeds)``; ``1 seed`` when the model was trained once."""
    n, missing = len(r.get("seeds") or []), len(r.get("seeds_missing") or [])
    gone = f", {missing} not evaluated" if missing else ""
    if n < 2:
        return f"1 seed{gone}"
    return f"{r['bpb_mean']:.4f} ± {r['bpb_std']:.4f} ({n} seeds{gone})"


def render_markdown(doc: list[tuple], plot_rel: dict[str, str]) -> str:
    out = []
    for block in doc:
        kind = block[0]
        if kind in ("h1", "h2", "h3"):
            out.append("#" * int(kind[1]) + " " + block[1] + "\n")
        elif kind == "p":
            out.append(block[1] + "\n")
        elif kind == "note":
            out.append(f"> {block[1]}\n")
        elif kind == "pre":
            out.append("```text\n" + block[1] + "\n```\n")
        elif kind == "list":
            out.append("\n".join(f"- {item}" for item in block[1]) + "\n")
        elif kind == "img":
            out.append(f"![{block[2]}]({plot_rel[block[1]]})\n")
        elif kind == "table":
            head, body = block[1], block[2]
            out.append(md_table(head, [[cell(v).replace("\n", " ") for v in row] for row in body]))
            out.append("")
    return "\n".join(out) + "\n"


_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;max-width:1180px;margin:24px auto;padding:0 16px;color:#1b1f24}
h1{font-size:1.7em}h2{margin-top:1.6em;border-bottom:1px solid #d0d7de;padding-bottom:4px}
table{border-collapse:collapse;font-size:0.82em;margin:8px 0 16px 0;display:block;overflow-x:auto}
th,td{border:1px solid #d0d7de;padding:4px 7px;text-align:left;vertical-align:top}th{background:#f6f8fa}
img{max-width:100%;border:1px solid #eee}.note{color:#57606a;font-style:italic}
pre{background:#f6f8fa;padding:10px;white-space:pre-wrap}
.v-supported{background:#dafbe1}.v-refuted{background:#ffebe9}.v-not{background:#fff8c5}
"""


def _inline_md(s: str) -> str:
    """HTML-escape, then the Markdown marks used in paragraphs: **bold**, *italic* and `code`."""
    s = html.escape(s)
    s = re.sub(r"\*\*(.+?)\*\*", r"<b>\1</b>", s)
    s = re.sub(r"\*(.+?)\*", r"<i>\1</i>", s)
    return re.sub(r"`(.+?)`", r"<code>\1</code>", s)


def render_html(doc: list[tuple], images: dict[str, bytes], title: str) -> str:
    out = [f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
           f"<style>{_CSS}</style></head><body>"]
    for block in doc:
        kind = block[0]
        if kind in ("h1", "h2", "h3"):
            out.append(f"<{kind}>{html.escape(block[1])}</{kind}>")
        elif kind == "p":
            out.append(f"<p>{_inline_md(block[1])}</p>")
        elif kind == "note":
            out.append(f"<p class='note'>{_inline_md(block[1])}</p>")
        elif kind == "pre":
            out.append(f"<pre>{html.escape(block[1])}</pre>")
        elif kind == "list":
            out.append("<ul>" + "".join(f"<li>{_inline_md(item)}</li>" for item in block[1]) + "</ul>")
        elif kind == "img":
            b64 = base64.b64encode(images[block[1]]).decode("ascii")
            out.append(f"<figure><img id='plot-{block[1]}' alt='{html.escape(block[2])}' "
                       f"src='data:image/png;base64,{b64}'><figcaption>{html.escape(block[2])}</figcaption></figure>")
        elif kind == "table":
            head, body = block[1], block[2]
            out.append("<table><thead><tr>" + "".join(f"<th>{html.escape(h)}</th>" for h in head) + "</tr></thead><tbody>")
            for row in body:
                cells = []
                for v in row:
                    text = cell(v)
                    cls = {SUPPORTED: "v-supported", REFUTED: "v-refuted", NOT_MEASURED: "v-not"}.get(text)
                    cells.append(f"<td class='{cls}'>{html.escape(text)}</td>" if cls else f"<td>{html.escape(text)}</td>")
                out.append("<tr>" + "".join(cells) + "</tr>")
            out.append("</tbody></table>")
    out.append("</body></html>")
    return "\n".join(out)
