"""The report's "Is HAMT competitive?" section: ratios from the rows, quality called only beyond the seed spread."""

from __future__ import annotations

from pathlib import Path

import pytest

from hamt.report import report
from hamt.report.summary import competitiveness, quality_verdict, summary_blocks
from results_tree import fake_presets, make_results_tree, model_row  # noqa: F401, F811  (fake_presets is a fixture)


def rows(**hamt_extra):
    return [model_row("hamt", "hamt", 44_000, 130.0, 1.270, train_tok_s=1500.0, decode_ms_per_token=2.0, **hamt_extra),
            model_row("llama-scratch", "scratch", 40_000, 120.0, 1.250, train_tok_s=3000.0, decode_ms_per_token=4.0,
                      state_bytes=8192),
            {"name": "mamba-scratch", "kind": "scratch", "status": "skipped", "reason": "not built"},
            model_row("gpt2", "pretrained", 124_000_000, 30.0, 0.9),
            model_row("ablation-slots-1", "ablation", 44_000, 131.0, 1.275)]


def test_one_seed_shows_the_differences_and_calls_none():
    comp = competitiveness(rows())
    assert [r["baseline"] for r in comp["rows"]] == ["llama-scratch"]  # evaluated, from scratch: not gpt2, not skipped
    r = comp["rows"][0]
    assert r["bpb_diff"] == pytest.approx(0.020) and r["spread"] is None
    assert r["quality"].startswith("not called: a single seed")
    assert r["params_ratio"] == pytest.approx(1.1)
    assert r["train_speed_ratio"] == pytest.approx(0.5)  # HAMT trains at half the baseline's tokens/s
    assert r["decode_speed_ratio"] == pytest.approx(2.0)  # half the milliseconds per token: twice as fast
    assert r["state_bytes_ratio"] == pytest.approx(4096 / 8192)
    assert comp["state_growth"] == (16, 4096, 256, 4096)
    text = " ".join(str(b[1]) for b in summary_blocks({"compare": {"rows": rows()}}) if b[0] == "p")
    assert "quality called for 0 of them" in text and "one seed" in text and "(constant)" in text


@pytest.mark.parametrize("hamt_std, base_std, verdict", [
    (0.002, 0.003, "HAMT worse"),      # 0.020 > 2 x 0.003
    (0.012, 0.003, "no difference"),   # 0.020 <= 2 x 0.012
    (None, 0.003, "not called"),       # one of the two has one seed
])
def test_quality_is_called_only_beyond_twice_the_seed_spread(hamt_std, base_std, verdict):
    rs = rows(bpb_std=hamt_std)
    rs[1]["bpb_std"] = base_std
    assert competitiveness(rs)["rows"][0]["quality"].startswith(verdict)
    assert quality_verdict(-0.05, 0.01) == "HAMT better"


def test_without_a_trained_baseline_the_question_is_not_answered():
    only = [r for r in rows() if r["kind"] != "scratch"]
    assert competitiveness(only) is None
    blocks = summary_blocks({"compare": {"rows": only}})
    assert blocks[-1][0] == "note" and "baseline" in blocks[-1][1]


def test_the_report_opens_with_the_section(tmp_path, fake_presets):
    out = report(make_results_tree(tmp_path))
    md = Path(out["md"]).read_text()
    assert md.index("## Is HAMT competitive?") < md.index("## Claims ledger")
    section = md[md.index("## Is HAMT competitive?"):md.index("## Claims ledger")]
    assert "| gpt2-scratch |" in section and "+0.0500" in section  # 1.27 - 1.22, from the results tree


def test_seed_runs_are_averaged_and_never_a_baseline_of_their_own():
    from hamt.compare.seeds import aggregate_seeds

    rs = rows() + [model_row("hamt-seed2", "hamt", 44_000, 131.0, 1.280),
                   model_row("llama-scratch-seed2", "scratch", 40_000, 121.0, 1.252)]
    comp = competitiveness(aggregate_seeds(rs, base_seed=1337))
    assert [r["baseline"] for r in comp["rows"]] == ["llama-scratch"]
    r = comp["rows"][0]
    assert r["seeds"] == (2, 2) and r["bpb_hamt"] == pytest.approx(1.275) and r["bpb_baseline"] == pytest.approx(1.251)
    assert r["spread"] == pytest.approx(0.0070711, rel=1e-4)  # HAMT's: stdev(1.270, 1.280)
    assert r["quality"] == "HAMT worse"  # 0.024 > 2 x 0.0071


def test_decoding_is_compared_at_every_context_both_models_decoded():
    rs = rows()
    rs[1]["decode"] = [dict(d, ms_per_token=4.0, state_bytes=64 * d["context"]) for d in rs[1]["decode"]]
    rs[1]["decode"][-1].update(status="failed")  # a context the baseline did not reach is left out
    ctx = competitiveness(rs)["contexts"]
    assert [(r["baseline"], r["context"]) for r in ctx] == [("llama-scratch", 16), ("llama-scratch", 64)]
    assert ctx[1]["ms_hamt"] == pytest.approx(1.64) and ctx[1]["speed_ratio"] == pytest.approx(4.0 / 1.64)
    assert (ctx[1]["state_hamt"], ctx[1]["state_baseline"]) == (4096, 64 * 64)
    tables = [b for b in summary_blocks({"compare": {"rows": rs}}) if b[0] == "table"]
    assert len(tables) == 2 and tables[1][2][1][:2] == ["llama-scratch", "64"]
