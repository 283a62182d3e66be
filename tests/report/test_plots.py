"""The figures: each is drawn from the results it needs, and skipped with a note when they are absent."""

from __future__ import annotations

from pathlib import Path

from hamt.report import plots, report
from results_tree import fake_presets, make_results_tree  # noqa: F401  (fake_presets is a fixture)


def test_missing_results_skip_plots_with_a_note(tmp_path, fake_presets):
    params = make_results_tree(tmp_path)
    for f in ("speed.json", "recall.json", "results.json"):
        (tmp_path / "results/compare" / f).unlink()
    (tmp_path / "results/bench/recall.json").unlink()
    out = report(params)
    assert set(out["plots"]) == {"loss_curves"}
    html = Path(out["html"]).read_text()
    assert html.count("data:image/png;base64,") == 1 and "plot skipped" in html
    assert "No comparison results" in Path(out["md"]).read_text()


def test_every_plot_draws_a_png_from_the_results_tree(tmp_path, fake_presets):
    from hamt.report.collect import collect

    results = collect(make_results_tree(tmp_path / "tree"))
    for key, _caption, fn in plots.PLOTS:
        path = fn(results, tmp_path / "plots")
        assert path == tmp_path / "plots" / f"{key}.png" and path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_every_plot_says_what_is_missing_when_there_are_no_results(tmp_path):
    for key, _caption, fn in plots.PLOTS:
        note = fn({}, tmp_path)
        assert isinstance(note, str) and note.startswith("no "), (key, note)
    assert not list(tmp_path.iterdir())
