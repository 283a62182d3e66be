"""``hamt bench recall``: the MQAR harness is right (attention solves an easy cell) and the state sizes
are what each architecture carries (HAMT's constant, the KV cache linear in the sequence length)."""

from __future__ import annotations

import json

import pytest

from conftest import ROOT
from hamt import cli

EASY = ["--set", "bench.recall.models=[llama]", "--set", "bench.recall.d_models=[32]",
        "--set", "bench.recall.grid=[[8,1],[16,1]]", "--set", "bench.recall.vocab_size=16",
        "--set", "bench.recall.lrs=[3.0e-3,1.0e-5]", "--set", "bench.recall.steps=300",
        "--set", "bench.recall.batch_size=64", "--set", "bench.recall.eval_samples=128"]


def run_recall(out, extra):
    argv = ["bench", "recall", "--params", str(ROOT / "params.yaml"), "--profile", "micro", "--device", "cpu",
            "--threads", "1", "--results-dir", str(out), *extra]
    assert cli.main(argv) == 0
    return json.loads((out / "recall.json").read_text())


def test_attention_solves_an_easy_cell_and_the_best_lr_is_kept(tmp_path):
    rows = run_recall(tmp_path, EASY)
    assert {(r["seq_len"], r["lr"]) for r in rows} == {(8, 3e-3), (8, 1e-5), (16, 3e-3), (16, 1e-5)}
    best = [r for r in rows if r["best"]]
    assert len(best) == 2 and all(r["lr"] == 3e-3 for r in best)
    for r in best:  # a harness that scored the wrong positions or the wrong targets could not reach this
        assert r["accuracy"] >= 0.95, r
        assert r["train_examples"] == 300 * 64 and r["chance"] == pytest.approx(1 / 8)
    # a learning rate too small to learn anything stays near chance: the accuracy can fail
    slow = [r for r in rows if r["lr"] == 1e-5]
    assert all(r["accuracy"] < 0.5 for r in slow), slow
    # the KV cache grows with the sequence: 2 (K, V) x layers x T x d x 4 bytes
    for r in best:
        assert r["state_bytes"] == 2 * 2 * r["seq_len"] * 32 * 4
    assert "training examples per cell" in (tmp_path / "recall.md").read_text()


def test_hamt_and_mamba_states_do_not_grow_with_the_sequence():
    from hamt.bench.recall import recall_model, state_bytes

    for kind in ("hamt", "mamba"):
        sizes = {state_bytes(recall_model(kind, 32, 1, 16, T), T) for T in (8, 32)}
        assert len(sizes) == 1 and sizes.pop() > 0, kind


@pytest.mark.parametrize("bad, message", [
    ("bench.recall.models=[rwkv]", "bench.recall.models"),
    ("bench.recall.grid=[[8,4]]", "bench.recall.grid"),
    ("bench.recall.lrs=[]", "bench.recall"),
])
def test_bad_recall_settings_are_refused_in_one_line(tmp_path, capsys, bad, message):
    argv = ["bench", "recall", "--params", str(ROOT / "params.yaml"), "--profile", "micro", "--device", "cpu",
            "--results-dir", str(tmp_path), "--set", bad]
    assert cli.main(argv) != 0
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0], err
    assert not (tmp_path / "recall.json").exists()
