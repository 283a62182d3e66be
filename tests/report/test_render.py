"""The rendered report: Markdown, self-contained HTML with every plot embedded, and ``metrics.json``."""

from __future__ import annotations

import base64
import json
import re
from pathlib import Path

from hamt.report import claims, plots, render, report
from results_tree import fake_presets, make_results_tree  # noqa: F401  (fake_presets is a fixture)

S, R = claims.SUPPORTED, claims.REFUTED


def test_report_renders_md_html_and_metrics_with_every_plot_embedded(tmp_path, fake_presets):
    params = make_results_tree(tmp_path)
    out = report(params)
    html = Path(out["html"]).read_text()
    md = Path(out["md"]).read_text()
    assert set(out["plots"]) == {k for k, _c, _f in plots.PLOTS} and not out["notes"]
    images = re.findall(r"src='data:image/png;base64,([A-Za-z0-9+/=]+)'", html)
    assert len(images) == len(plots.PLOTS)
    for b64 in images:
        assert base64.b64decode(b64)[:8] == b"\x89PNG\r\n\x1a\n"
    assert "http://" not in html and "https://" not in html  # self-contained: nothing fetched
    for key, path in out["plots"].items():
        assert Path(path).is_file() and f"(plots/{key}.png)" in md
    # the ledger and the skipped baseline with its reason are in both documents
    for doc in (md, html):
        assert "Claims ledger" in doc and "tokenizer mismatch: bpe tokens" in doc
        assert doc.count(S) >= 1 and doc.count(R) >= 1
    # the MQAR grid: one row per cell at its best learning rate, with the examples it was trained on
    zoo = md[md.index("Zoology standard"):]
    assert "19,200 examples per cell" in zoo and "| llama | 128 | 64 | 4 | 1.000 |" in zoo
    assert zoo.count("| hamt |") == 2 and "| hamt | 64 | 64 | 4 | 0.250 |" in zoo
    metrics = json.loads(Path(out["metrics"]).read_text())
    assert metrics["models"]["hamt"]["ppl"] == 130.0 and metrics["validate_passed"] is True
    assert sum(metrics["claims"].values()) == len(claims.CLAIMS)


def test_markdown_table_cells_stay_in_their_row_and_html_escapes():
    doc = [("h1", "T"), ("table", ["a", "b"], [["x | y\nz", None], [1234567, 0.5]]), ("p", "**bold** <tag> `code`")]
    md = render.render_markdown(doc, {})
    assert "| x \\| y z | n/a |" in md and "| 1,234,567 | 0.5 |" in md
    page = render.render_html(doc, {}, "T")
    assert "<b>bold</b> &lt;tag&gt; <code>code</code>" in page and "<td>1,234,567</td>" in page


def test_verdict_cells_are_coloured_in_html():
    page = render.render_html([("table", ["verdict"], [[S], [R], [claims.NOT_MEASURED]])], {}, "T")
    assert all(f"class='{c}'" in page for c in ("v-supported", "v-refuted", "v-not"))


def test_the_first_line_names_the_corpus_and_its_floor():
    from hamt.report.render import build_document

    floor = {"split": "test", "bits_per_byte": 0.5905, "nats_per_word": 2.41, "recall_blind_bits_per_byte": 0.63}
    doc = build_document({"corpus": "synthetic corpus (seed 0, entropy floor 0.590 bits/byte)", "floor": floor},
                         {}, [], "T")
    assert doc[1][0] == "p" and doc[1][1].startswith("**Data: synthetic corpus (seed 0")
    assert "0.591 bits per byte" in doc[1][1] and "word perplexity 11.1" in doc[1][1]
    wiki = build_document({"corpus": "WikiText-2 (hub)", "floor": None}, {}, [], "T")
    assert wiki[1][1] == "**Data: WikiText-2 (hub).**"


def test_a_synthetic_corpus_is_never_reported_as_wikitext():
    from hamt.report.collect import _dataset_used

    assert _dataset_used({"kind": "synthetic", "settings": {"seed": 0}}, "wikitext-2-raw-v1") == "synthetic"
    assert _dataset_used({"kind": "hub", "dataset": "wikitext-103-raw-v1"}, "wikitext-2-raw-v1") == "wikitext-103-raw-v1"
    assert _dataset_used({}, "wikitext-2-raw-v1") == "wikitext-2-raw-v1"
