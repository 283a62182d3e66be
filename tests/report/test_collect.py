"""Collecting the result files: what is read, and that an unreadable file is reported, never skipped."""

from __future__ import annotations

from pathlib import Path

import pytest

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


@pytest.mark.parametrize("relpath,content,reason", [
    ("results/compare/results.json", b'{"rows": [', "JSONDecodeError"),          # cut short mid-write
    ("results/validate/metrics.json", b"\xff\xfe\x00garbage", "UnicodeDecodeError"),
    ("results/compare/recall.json", b"[1, 2]", "expected a JSON object, found list"),
    ("results/train/hamt/metrics.json", b"not json", "JSONDecodeError"),
    ("results/train/hamt/log.csv", b"step,tokens\n1,\x00\xff\n", "Error"),
    ("results/bench/model.json", b"{", "JSONDecodeError"),
])
def test_an_unreadable_results_file_is_an_error_the_report_shows(tmp_path, fake_presets, relpath, content, reason):
    params = make_results_tree(tmp_path)
    path = tmp_path / relpath
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(content)
    errors = collect.collect(params)["errors"]
    assert [e["path"] for e in errors] == [str(path)] and reason in errors[0]["error"]
    out = report(params)
    assert out["errors"] == errors and any(str(path) in n for n in out["notes"])
    for doc in (Path(out["md"]).read_text(), Path(out["html"]).read_text()):
        assert "Unreadable result files" in doc and str(path) in doc and reason in doc


def test_a_clean_report_has_no_unreadable_section(tmp_path, fake_presets):
    out = report(make_results_tree(tmp_path))
    assert out["errors"] == [] and "Unreadable" not in Path(out["md"]).read_text()
