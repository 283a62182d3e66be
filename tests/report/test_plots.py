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


def test_seed_runs_share_their_model_colour_and_hamt_stays_red():
    colors = plots._model_colors(["gpt2-scratch", "hamt", "gpt2-scratch-seed2", "hamt-seed2", "llama-scratch"])
    assert colors["hamt"] == colors["hamt-seed2"] == "C3"
    assert colors["gpt2-scratch-seed2"] == colors["gpt2-scratch"] != colors["llama-scratch"]


def test_loss_against_time_reads_train_time_s_and_skips_rows_without_it():
    log = [{"tokens": 10, "val_loss": 3.0, "train_time_s": 1.5}, {"tokens": 20, "val_loss": ""},
           {"tokens": 30, "val_loss": 2.5}]
    assert plots._series(log, "train_time_s", "val_loss") == [(1.5, 3.0)]
    assert plots._series(log, "tokens", "val_loss") == [(10, 3.0), (30, 2.5)]


def test_quality_plot_draws_seed_means_with_error_bars(tmp_path, fake_presets):
    from hamt.report.collect import collect

    results = collect(make_results_tree(tmp_path / "tree"))
    rows = results["compare"]["rows"]
    rows[0].update(bpb_mean=1.25, bpb_std=0.01, seeds=[1337, 2])
    rows.append(dict(rows[0], name="hamt-seed2", seed_of="hamt"))  # folded into hamt's bar, not drawn alone
    assert plots.plot_quality(results, tmp_path / "p") == tmp_path / "p" / "quality.png"
