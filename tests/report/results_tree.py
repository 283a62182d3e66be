"""A results tree as the other stages write it (train, compare, validate), shared by the report's tests.

Imported by name (``from results_tree import ...``): pytest puts this folder on ``sys.path`` for the
test modules in it. It is not a ``conftest.py`` on purpose: a second conftest would take the module
name ``conftest`` that ``from conftest import ROOT`` means.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

from conftest import ROOT
from hamt.report import collect


def model_row(name, kind, params, ppl, bpb, **extra):
    decode = [{"context": c, "status": "ok", "ms_per_token": 1.0 + c / 100, "decode_tok_s": 500.0,
               "state_bytes": (4096 if kind in ("hamt", "ablation") else 64 * c), "peak_mem_mb": 400.0}
              for c in (16, 64, 256)]
    row = {"name": name, "kind": kind, "status": "ok", "reason": "", "params": params, "tokens_seen": 5120,
           "ppl": ppl, "bpb": bpb, "word_ppl": ppl * 1.5, "train_tok_s": 1000.0, "decode_tok_s": 500.0,
           "state_bytes": decode[0]["state_bytes"], "peak_mem_mb": 450.0, "mem_source": "rss_reset",
           "recall_acc": 0.1, "counts_note": "exact (whole split)", "decode": decode,
           "recall": [{"n_pairs": n, "seq_len": 4 * n, "accuracy": 0.5 / n, "chance": 0.06} for n in (1, 2, 4)]}
    row.update(extra)
    return row


def make_results_tree(base: Path):
    """Result files of train, compare and validate under ``base``; returns matching params."""
    from hamt.params import load_params

    params = load_params(ROOT / "params.yaml", "micro", [
        f"tokenizer.tokens_dir={base / 'tokens'}", f"train.results_dir={base / 'results/train'}",
        f"compare.out_dir={base / 'results/compare'}", f"validate.out_dir={base / 'results/validate'}",
        f"report.out_dir={base / 'results'}", f"report.bench_dir={base / 'results/bench'}",
    ])
    for i, name in enumerate(("hamt", "gpt2-scratch")):
        d = base / "results/train" / name
        d.mkdir(parents=True)
        with open(d / "log.csv", "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(["step", "tokens", "train_loss", "val_loss", "tokens_per_s"])
            for s in range(1, 11):
                w.writerow([s, s * 256, 6.0 - 0.2 * s - 0.1 * i, (5.0 - 0.1 * s) if s % 5 == 0 else "", 1000])
        (d / "metrics.json").write_text(json.dumps({"steps": 10, "max_steps": 10, "tokens": 2560, "train_time_s": 3.0,
                                                    "tokens_per_s": 850.0, "peak_mem_mb": 400.0, "device": "cpu"}))
    sw = {"use_gating": True, "use_auxiliary_loss": False, "conv_kernel": 4, "num_slots": 2}
    rows = [
        model_row("hamt", "hamt", 44_000, 130.0, 1.27, fidelity=0.5, slot_active_fraction=1.0, slot_entropy=0.99,
                  hamt_switches=sw, sample={"status": "ok", "text": "The gate of the city", "new_tokens": 4, "new_chars": 17,
                                            "distinct_word_ratio": 1.0}),
        model_row("gpt2-scratch", "scratch", 41_000, 110.0, 1.22),
        {"name": "gpt2", "kind": "pretrained", "status": "skipped", "reason": "tokenizer mismatch: bpe tokens"},
        model_row("ablation-aux-on", "ablation", 44_000, 129.0, 1.26, fidelity=0.9, slot_active_fraction=1.0,
                  hamt_switches={**sw, "use_auxiliary_loss": True}),
    ]
    cdir = base / "results/compare"
    cdir.mkdir(parents=True)
    env = {"device": "cpu", "device_name": "CPU: test", "torch": "x", "transformers": "y", "time": "now"}
    (cdir / "results.json").write_text(json.dumps({"rows": rows, "env": env,
                                                   "eval": {"split": "test", "context": 32, "stride": 16, "max_tokens": 0}}))
    (cdir / "recall.json").write_text(json.dumps({"status": "ok", "steps": 20, "vocab_size": 32, "seq_len": 16,
                                                  "models": {a: {"params": 1000, "accuracy": acc, "chance": 1 / 16, "seconds": 1.0,
                                                                 "rows": [{"n_pairs": n, "accuracy": acc / n} for n in (1, 2, 4)]}
                                                             for a, acc in (("hamt", 0.6), ("gpt2", 0.8))}}))
    (cdir / "speed.json").write_text(json.dumps({"status": "ok", "device": "cpu", "rows": [
        {"model": m, "seq_len": T, "batch": 1, "status": "ok", "train_tok_s": f * 1000 / T ** 0.5, "infer_tok_s": f * 3000,
         "train_peak_mem_mb": 400 + T / 10 * f, "infer_peak_mem_mb": 380.0, "mem_source": "rss_reset"}
        for m, f in (("hamt", 1.0), ("gpt2", 2.0)) for T in (128, 512, 1024)]}))
    bdir = base / "results/bench"  # hamt bench recall: two learning rates per cell, the better one marked best
    bdir.mkdir(parents=True)
    (bdir / "recall.json").write_text(json.dumps([
        {"model": m, "d_model": d, "layers": 2, "seq_len": 64, "n_pairs": 4, "vocab_size": 8192, "lr": lr,
         "accuracy": acc * d / 128 * (lr == 1e-3), "chance": 1 / 4096, "state_bytes": state * d, "train_examples": 19200,
         "best": lr == 1e-3, "date": "2026-12-02 12:00 UTC", "device": "CPU: test", "commit": "abc1234"}
        for m, acc, state in (("hamt", 0.5, 40), ("llama", 1.0, 512)) for d in (64, 128) for lr in (1e-3, 1e-2)]))
    vdir = base / "results/validate"
    vdir.mkdir(parents=True)
    (vdir / "metrics.json").write_text(json.dumps({"passed": True, "reasons": [], "checks": {
        "loss_drop": {"passed": True, "detail": "6.0 -> 4.0"}, "generation": {"passed": True, "detail": "ok"}}}))
    return params


@pytest.fixture
def fake_presets(monkeypatch):
    """Preset parameter counts without building the models (test modules import this fixture)."""
    monkeypatch.setattr(collect, "preset_parameter_counts", lambda: {"33m": 32_698_144, "100m": 108_197_504})
