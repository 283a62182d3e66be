"""One ``hamt bench all`` run on micro shapes, shared by the bench tests (each file checks its part)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from conftest import ROOT, make_corpus
from hamt import cli

MICRO = ["--profile", "micro", "--device", "cpu", "--repeats", "1"]
META = {"device", "date", "commit", "command", "preset", "precision"}


def make_tokenize_data(root: Path) -> Path:
    """A folder laid out like bench.tokenize expects: two small corpora and a GPT-2-style vocab.json + merges.txt."""
    from hamt.tokenize import train_bpe

    (root / "tinyshakespeare").mkdir(parents=True)
    (root / "wikitext-2-raw").mkdir()
    (root / "gpt2-tokenizer").mkdir()
    (root / "tinyshakespeare" / "input.txt").write_text(make_corpus(200, seed=3), encoding="utf-8")
    (root / "wikitext-2-raw" / "wiki.valid.raw").write_text(make_corpus(100, seed=4), encoding="utf-8")
    train_bpe(root / "tinyshakespeare" / "input.txt", 300, progress=False).model.save(str(root / "gpt2-tokenizer"))
    return root


@pytest.fixture(scope="session")
def bench_all(tmp_path_factory):
    out = tmp_path_factory.mktemp("bench")
    data = make_tokenize_data(tmp_path_factory.mktemp("tokdata"))
    argv = ["bench", "all", "--params", str(ROOT / "params.yaml"), *MICRO, "--seq-lens", "16", "40",
            "--tokens-per-step", "64", "--contexts", "16", "40", "--decode-steps", "2", "--memory-seq-len", "24",
            "--memory-batch", "1", "--results-dir", str(out), "--out", str(out / "tables.md"),
            "--set", f"bench.tokenize.data_dir={data}", "--set", "bench.tokenize.vocab_size=300",
            "--set", "bench.tokenize.repeats=1"]
    assert cli.main(argv) == 0
    return out


def rows_of(out: Path, name: str) -> list[dict]:
    """The rows of ``<name>.json``, checked for metadata, the command and finite numbers."""
    rows = json.loads((out / f"{name}.json").read_text())
    assert isinstance(rows, list) and rows
    for r in rows:
        assert META <= set(r), f"{name}: row lacks metadata {META - set(r)}"
        assert r["command"].startswith("hamt bench all --profile micro")
        for k, v in r.items():
            if isinstance(v, float):
                assert math.isfinite(v), f"{name}.{k} = {v}"
    return rows
