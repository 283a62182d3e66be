"""``hamt validate``: a short real training run passes its checks, and a failing check fails the stage."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from conftest import ROOT, make_corpus
from hamt import validate as val


def micro_params(base: Path, *extra: str):
    from hamt.params import load_params

    return load_params(ROOT / "params.yaml", "micro", [
        "data.source=local", f"data.local_path={base / 'corpus.txt'}", f"data.raw_dir={base / 'raw'}",
        f"tokenizer.tokens_dir={base / 'tokens'}", f"validate.out_dir={base / 'results/validate'}", "train.device=cpu",
        "validate.generate_tokens=5", *extra,
    ])


@pytest.fixture(scope="module")
def base(tmp_path_factory) -> Path:
    from hamt.data import download
    from hamt.tokenize import tokenize

    base = tmp_path_factory.mktemp("validate")
    (base / "corpus.txt").write_text(make_corpus(1000), encoding="utf-8")
    params = micro_params(base)
    download(params)
    tokenize(params, progress=False)
    return base


def test_small_run_passes_and_writes_metrics(base):
    params = micro_params(base)
    result = val.validate_small(params)
    assert result["passed"], result["reasons"]
    assert set(result["checks"]) == {"finite", "loss_drop", "generation", "recall"}
    assert result["checks"]["loss_drop"]["drop"] >= params.validate.min_loss_drop
    assert result["checks"]["recall"]["accuracy"] > result["checks"]["recall"]["chance"]
    assert result["checks"]["generation"]["text"].startswith("The")
    saved = json.loads((base / "results/validate/metrics.json").read_text())
    assert saved["passed"] is True and saved["train"]["steps"] == params.validate.steps
    # the run went through the trainer under validate.out_dir, never into the main checkpoints
    assert (base / "results/validate/validate/log.csv").is_file()
    assert (base / "results/validate/checkpoints/validate/final/config.json").is_file()
    assert not Path("checkpoints/validate").exists()


def test_failed_check_fails_the_stage_with_one_line(base, capsys):
    params = micro_params(base, "validate.min_loss_drop=0.95", "validate.recall_steps=0", "validate.steps=4")

    class Args:
        pass

    assert val.cli_validate(params, Args()) == 1
    err = capsys.readouterr().err.strip().splitlines()  # the trainer's progress goes to stderr too
    verdict = [line for line in err if line.startswith("hamt validate:")]
    assert len(verdict) == 1 and verdict[0] == err[-1] and verdict[0].startswith("hamt validate: FAILED: loss_drop:")
    saved = json.loads((base / "results/validate/metrics.json").read_text())
    assert saved["passed"] is False and saved["checks"]["loss_drop"]["passed"] is False and "recall" not in saved["checks"]


def test_small_params_overlay_model_and_train(base):
    params = micro_params(base, "validate.model={num_layers: 2}", "validate.train={seq_len: 16}", "validate.steps=7")
    sp = val.small_params(params)
    assert sp.model["num_layers"] == 2 and sp.model["hidden_dim"] == params.model["hidden_dim"]
    assert sp.train.seq_len == 16 and sp.train.max_steps == 7 and sp.train.log_every == 1
    assert sp.train.out_dir.startswith(params.validate.out_dir)
    assert params.train.max_steps != 7  # the caller's params are untouched


def test_loss_checks_flag_nan_and_divergence():
    rows = [{"train_loss": "5.0"}, {"train_loss": "nan"}]
    assert val._loss_checks(rows, {}, 0.1)["finite"]["passed"] is False
    rows = [{"train_loss": "5.0"}] + [{"train_loss": "2.0"}] * 5  # first vs the mean of the last five
    assert val._loss_checks(rows, {"fallbacks": [{"kind": "divergence"}]}, 0.1)["finite"]["passed"] is False
    ok = val._loss_checks(rows, {}, 0.5)
    assert ok["finite"]["passed"] and ok["loss_drop"]["passed"] and ok["loss_drop"]["drop"] == pytest.approx(0.6)
    assert val._loss_checks(rows, {}, 0.7)["loss_drop"]["passed"] is False
