"""The claims ledger: every verdict follows its inputs (flip one, the verdict flips), and it is a pure function."""

from __future__ import annotations

import copy
import json

import pytest

from hamt.report import claims, report
from results_tree import fake_presets, make_results_tree, model_row  # noqa: F401  (fake_presets is a fixture)

S, R, N = claims.SUPPORTED, claims.REFUTED, claims.NOT_MEASURED


def base_results() -> dict:
    rows = [
        model_row("hamt", "hamt", 40e6, 25.0, 0.90, fidelity=0.5, slot_active_fraction=1.0, slot_entropy=0.99,
                  hamt_switches={"use_gating": True, "use_auxiliary_loss": False, "conv_kernel": 4, "num_slots": 8},
                  sample={"status": "ok", "text": "The city", "new_tokens": 4, "new_chars": 5, "distinct_word_ratio": 1.0}),
        model_row("gpt2-scratch", "scratch", 40e6, 27.0, 0.95, bpb_std=0.005, seeds=[1337, 2]),
        model_row("gpt2-scratch-2x", "scratch", 80e6, 24.0, 0.89, bpb_std=0.004, seeds=[1337, 2]),
        model_row("ablation-aux-on", "ablation", 40e6, 25.0, 0.90, fidelity=0.9,
                  hamt_switches={"use_gating": True, "use_auxiliary_loss": True, "conv_kernel": 4, "num_slots": 8}),
    ]
    speed = [{"model": m, "seq_len": T, "status": "ok", "train_tok_s": f, "infer_tok_s": f}
             for m, f in (("hamt", 3000.0), ("gpt2", 1000.0)) for T in (512, 1024, 2048)]
    log = [{"step": s, "tokens": s * 1000, "train_loss": 7.04 - 0.5 * s, "val_loss": 1.8 if s == 10 else None}
           for s in range(1, 11)]
    return {
        "profile": "100m", "model": {"preset": "100m"}, "dataset": "wikitext-103-raw-v1", "tokenizer": "gpt2",
        "presets": {"33m": 33_670_000, "100m": 101_000_000},
        "compare": {"rows": rows, "env": {"device": "cuda", "device_name": "NVIDIA A100-SXM4-80GB"},
                    "eval": {"split": "test", "max_tokens": 0}},
        "speed": {"rows": speed},
        "train": {"hamt": {"log": log, "metrics": {"tokens_per_s": 5000.0, "steps": 10, "max_steps": 10, "train_time_s": 300,
                                                   "peak_mem_mb": 8000.0, "device": "cuda", "batch_size": 128,
                                                   "seq_len": 1024}}},
        "train_params": {"max_steps": 10, "batch_size": 128, "seq_len": 1024},
    }


def verdicts(results: dict) -> dict[str, str]:
    return {c["claim"]: c["verdict"] for c in claims.claims_ledger(results)}


def find(results: dict, word: str) -> str:
    matches = [k for k in verdicts(results) if word in k]
    assert len(matches) == 1, (word, matches)
    return matches[0]


def test_every_claim_supported_when_the_results_support_it():
    v = verdicts(base_results())
    assert len(v) == 13
    # loss drop: the base run is 100m, not the claim's 33m preset, so it stays not measured
    assert {k: x for k, x in v.items() if x != S} == {find(base_results(), "74%"): N}


def _bench_pairs(ratios: list[float]) -> list[dict]:
    """``hamt bench model`` rows at T = 1,024 whose alternating repeats give these HAMT/GPT-2 speed ratios."""
    med = sorted(ratios)[len(ratios) // 2]
    return [{"model": m, "seq_len": 1024, "tokens_per_s": 1.0, "hamt_speedup_vs_gpt2": med, "device": "X",
             "step_ms_all": [1.0] * len(ratios) if m == "hamt" else list(ratios)} for m in ("hamt", "gpt2")]


FLIPS = [
    ("33.67M", lambda r: r["presets"].update({"33m": 32_698_144}), R),
    ("~100M", lambda r: r["presets"].update({"100m": 130_000_000}), R),
    ("WikiText-103", lambda r: r["compare"]["rows"][0].update(ppl=40.0), R),
    ("WikiText-103", lambda r: r.update(model={"preset": "tiny"}) or r["compare"]["rows"][0].update(ppl=40.0), N),
    ("WikiText-103", lambda r: r.update(tokenizer="bpe"), N),
    ("4,000", lambda r: r["train"]["hamt"]["metrics"].update(tokens_per_s=3000.0), R),
    ("4,000", lambda r: r["compare"]["env"].update(device_name="CPU: AMD EPYC"), N),
    ("6 h", lambda r: r["train"]["hamt"]["metrics"].update(train_time_s=7 * 3600), R),
    ("10 GB", lambda r: r["train"]["hamt"]["metrics"].update(peak_mem_mb=12000.0), R),
    ("10 GB", lambda r: r["train"]["hamt"]["metrics"].update(device="cpu"), N),
    ("constant memory", lambda r: r["compare"]["rows"][0]["decode"][-1].update(state_bytes=9999), R),
    ("speedup", lambda r: r["speed"]["rows"][4].update(train_tok_s=2000.0), R),
    ("speedup", lambda r: r["speed"].update(rows=[x for x in r["speed"]["rows"] if x["seq_len"] < 1024]), N),
    ("fewer parameters", lambda r: r["compare"]["rows"][2].update(bpb=0.80), R),
    ("fewer parameters", lambda r: r["compare"]["rows"].pop(2), N),
    ("fewer parameters", lambda r: r["compare"]["rows"][2].update(bpb=0.96), N),  # 2x GPT-2 no better than 1x
    ("fewer parameters", lambda r: r["compare"]["rows"][1].update(bpb_std=0.04), N),  # better, but inside 2 std
    ("fewer parameters", lambda r: r["compare"]["rows"][2].update(bpb_std=None), N),  # one seed: spread unmeasured
    ("fewer parameters", lambda r: r["compare"]["rows"][2].update(bpb_mean=0.96), N),  # the seed mean is what counts
    ("fewer parameters", lambda r: r["compare"]["rows"].pop(2) and r["compare"]["rows"][1].update(bpb=0.80), R),
    # hamt bench results take precedence over compare's own probes when present
    ("speedup", lambda r: r.update(bench={"model": [
        {"model": m, "seq_len": T, "tokens_per_s": 1.0, "hamt_speedup_vs_gpt2": 1.5, "device": "X"}
        for m in ("hamt", "gpt2") for T in (1024, 4096)]}), R),
    # with per-repeat step times, every paired repeat must clear 2x; repeats straddling 2x are inside the spread
    ("speedup", lambda r: r.update(bench={"model": _bench_pairs([1.9, 2.1, 2.2])}), N),
    ("speedup", lambda r: r.update(bench={"model": _bench_pairs([1.5, 1.9, 1.8])}), R),
    ("speedup", lambda r: r.update(bench={"model": _bench_pairs([2.01, 2.3, 2.2])}) or
     r["speed"]["rows"][4].update(train_tok_s=2000.0), S),
    ("constant memory", lambda r: r.update(bench={"decode": [
        {"model": "hamt", "context": c, "state_bytes": 1000 + c, "ms_per_token": 1.0} for c in (256, 4096)]}), R),
    ("slot", lambda r: r["compare"]["rows"][0].update(slot_active_fraction=0.75), R),
    ("auxiliary", lambda r: r["compare"]["rows"][3].update(fidelity=0.6), R),
    ("auxiliary", lambda r: r["compare"]["rows"].pop(3), N),
    ("generation", lambda r: r["compare"]["rows"][0]["sample"].update(status="failed", reason="boom"), R),
    ("74%", lambda r: r.update(model={"preset": "33m"}), S),
    ("74%", lambda r: r.update(model={"preset": "33m"}) or r["train"]["hamt"]["log"][-1].update(val_loss=3.0)
     or r["train"]["hamt"]["metrics"].update(train_time_s=600), R),
]


@pytest.mark.parametrize("word,flip,expected", FLIPS)
def test_flipping_an_input_flips_the_verdict(word, flip, expected):
    base = base_results()
    claim = find(base, word)
    before = verdicts(base)[claim]
    changed = copy.deepcopy(base)
    flip(changed)
    assert verdicts(changed)[claim] == expected
    assert before != expected or expected == S


def test_bench_results_support_claims_and_are_plotted(tmp_path, fake_presets):
    params = make_results_tree(tmp_path)
    bench = tmp_path / "results/bench"  # the tree already holds recall.json there
    (bench / "model.json").write_text(json.dumps([
        {"model": m, "seq_len": T, "tokens_per_s": 1000.0 * f, "peak_mb": 500.0, "activation_mb": T / 100 * f,
         "peak_how": "rss high-water mark", "hamt_speedup_vs_gpt2": 2.5, "device": "CPU: test", "preset": "tiny"}
        for m, f in (("hamt", 2.5), ("gpt2", 1.0)) for T in (256, 1024, 4096)]))
    (bench / "decode.json").write_text(json.dumps([
        {"model": m, "context": c, "ms_per_token": 1.0, "tokens_per_s": 1000.0,
         "state_bytes": 4096 if m == "hamt" else 64 * c, "device": "CPU: test", "preset": "tiny"}
        for m in ("hamt", "gpt2") for c in (256, 4096, 16384)]))
    out = report(params)
    assert {"speed", "decoding"} <= set(out["plots"])
    ledger = {c["claim"]: c for c in out["ledger"]}
    speed = next(c for k, c in ledger.items() if "speedup" in k)
    const = next(c for k, c in ledger.items() if "constant memory" in k)
    assert speed["verdict"] == S and "hamt bench" in speed["measured"] and "T=4096: 2.50x" in speed["measured"]
    assert const["verdict"] == S and "16,384" in const["measured"] and "hamt bench" in const["measured"]
    assert "GPT-2 KV cache 0.016–1.000 MB at contexts 256–16,384" in const["measured"]


def test_ledger_is_pure_and_handles_empty_results():
    r = base_results()
    snapshot = copy.deepcopy(r)
    claims.claims_ledger(r)
    assert r == snapshot
    empty = claims.claims_ledger({})
    assert len(empty) == 13 and all(c["verdict"] == N for c in empty)
