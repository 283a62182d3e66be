"""Collecting the result files: what is read, and that an unreadable file is reported, never skipped."""

from __future__ import annotations

from pathlib import Path

from hamt.report import collect, report
from results_tree import fake_presets, make_results_tree  # noqa: F401  (fake_presets is a fixture)


def test_preset_parameter_counts_are_exact_model_counts():
    counts = collect.preset_parameter_counts()
    assert set(counts) >= {"33m", "100m"} and all(isinstance(v, int) and v > 1e6 for v in counts.values())


def test_collect_reads_every_stage_and_missing_files_are_no_error(tmp_path, fake_presets):
    params = make_results_tree(tmp_path)
    (tmp_path / "results/compare/speed.json").unlink()  # a stage that has not run
    r = collect.collect(params)
    assert r["errors"] == [] and r["speed"] is None
    assert set(r["train"]) == {"hamt", "gpt2-scratch"} and r["train"]["hamt"]["log"][0]["step"] == 1
    assert [row["name"] for row in r["compare"]["rows"]][:2] == ["hamt", "gpt2-scratch"]
    assert r["validate"]["passed"] is True and r["presets"]["33m"] == 32_698_144
