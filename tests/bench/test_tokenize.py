"""``hamt bench tokenize``: both cases measured on small corpora, a missing file is a skipped row."""

from __future__ import annotations

from .conftest import rows_of


def test_tokenize_rows(bench_all):
    rows = rows_of(bench_all, "tokenize")
    ok = [r for r in rows if r["status"] == "ok"]
    assert {(r["tokenizer"], r["method"]) for r in ok} == {
        (t, m) for t in ("BPE 300 (trained)", "GPT-2 BPE") for m in ("chunked encode_batch (stage)", "one encode call")}
    for r in ok:
        assert r["tokens"] > 0 and r["tokens/s"] > 0 and r["bytes/token"] > 1
    # the stage's chunked path and one encode call agree up to the end-of-text tokens: one per document,
    # and the 100-line WikiText stand-in has two (make_corpus starts a " = Section = " every 50 lines)
    by = {(r["tokenizer"], r["method"]): r["tokens"] for r in ok}
    assert by[("GPT-2 BPE", "chunked encode_batch (stage)")] - by[("GPT-2 BPE", "one encode call")] == 2


def test_missing_files_are_skipped_rows(tmp_path, monkeypatch):
    from hamt.bench.tokenize import bench_tokenize
    from hamt.params import BenchTokenizeParams

    monkeypatch.delenv("HAMT_SHARED_DATA", raising=False)
    rows = bench_tokenize(BenchTokenizeParams(data_dir=str(tmp_path), repeats=1))
    assert [r["status"] for r in rows] == ["skipped", "skipped"]
    assert "input.txt" in rows[0]["reason"] and "vocab.json" in rows[1]["reason"]
