"""hamt.train.loop: loss falls and the outputs are written, mixed precision, compile fallback, the GPT-2
baseline through the CLI (and generate), configuration errors, the training benchmark.

Every run uses the ``micro`` profile on a tiny corpus (tests/train/conftest.py; a few hundred ms per
run once imports are warm). Resume: test_state.py; the fallback ladder: test_ladder.py.
"""

from __future__ import annotations

import json

import pytest
import torch

from conftest import ROOT
from hamt.errors import ConfigError

from .helpers import micro, series

# ---------------------------------------------------------------------------------------------------


def test_loss_falls_and_outputs_are_written(tokens_dir, tmp_path):
    from hamt.train import LOG_COLUMNS, train

    p = micro(tokens_dir, tmp_path, "train.max_steps=40", "train.eval_every=20", "train.log_every=5")
    s = train(p)
    rows = series(tmp_path)
    assert list(rows[0].keys()) == LOG_COLUMNS
    first, last = float(rows[0]["train_loss"]), float(rows[-1]["train_loss"])
    assert last < first - 0.5, (first, last)
    vals = [float(r["val_loss"]) for r in rows if r["val_loss"]]
    assert len(vals) == 2 and vals[-1] < vals[0]
    assert s["steps"] == 40 and s["tokens"] == 40 * 8 * 32
    assert s["tokens_per_s"] > 0 and 0 < s["mfu"] < 1 and s["peak_mem_mb"] > 0
    assert s["flops_per_token"] > 6 * s["n_matmul_params"]  # + the memory mixer's FLOPs
    assert rows[-1]["fidelity"] and rows[-1]["slot_active_fraction"]  # HAMT memory diagnostics at eval
    metrics = json.loads((tmp_path / "results" / "hamt" / "metrics.json").read_text())
    assert metrics["val_loss"] == pytest.approx(vals[-1], rel=1e-5) and metrics["fallbacks"] == []
    # The exported model loads through the Auto classes and reproduces the checkpoint's loss.
    import hamt.model  # noqa: F401
    from transformers import AutoModelForCausalLM

    final = tmp_path / "ckpt" / "hamt" / "final"
    assert (final / "meta.json").is_file() and (final / "tokenizer.json").is_file()
    model = AutoModelForCausalLM.from_pretrained(final)
    assert type(model).__name__ == "HAMTForCausalLM"
    assert metrics["weights_sha256"] == __import__("hamt.train").train.weights_sha256(model)
    assert not list((tmp_path / "ckpt" / "hamt").glob(".*"))  # the export's temp and old folders are gone






@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_mixed_precision_on_cpu(tokens_dir, tmp_path, precision):
    from hamt.checkpoint import load_latest
    from hamt.train import train

    s = train(micro(tokens_dir, tmp_path, f"train.precision={precision}", "train.max_steps=6", "train.log_every=3",
                    "model.use_auxiliary_loss=true"))
    rows = series(tmp_path)
    assert s["precision"] == precision and all(float(r["train_loss"]) < 7 for r in rows)
    assert all(0 < float(r["fidelity"]) <= 1 for r in rows)  # the auxiliary loss reports fidelity in training
    state, _ = load_latest(tmp_path / "ckpt" / "hamt")
    assert state["scaler"].get("scale", None) is not None if precision == "fp16" else state["scaler"] == {}




def test_gpt2_baseline_through_the_cli_and_generate(tokens_dir, tmp_path, capsys):
    from hamt.cli import main
    from hamt.generate import generate_text

    common = ["--params", str(ROOT / "params.yaml"), "--profile", "micro",
              "--set", f"tokenizer.tokens_dir={tokens_dir}", "--set", f"train.out_dir={tmp_path / 'ckpt'}",
              "--set", f"train.results_dir={tmp_path / 'results'}", "--set", "train.max_steps=30"]
    assert main(["train", "--model", "gpt2-scratch", *common]) == 0
    metrics = json.loads((tmp_path / "results" / "gpt2-scratch" / "metrics.json").read_text())
    assert metrics["model_class"] == "GPT2LMHeadModel"
    rows = series(tmp_path, "gpt2-scratch")
    assert float(rows[-1]["train_loss"]) < float(rows[0]["train_loss"]) - 0.3
    assert rows[-1]["fidelity"] == ""  # no memory diagnostics for attention
    # GPT-2's FLOPs: 6 N + attention 12 L T d, exactly.
    cfg = metrics["model_config"]
    assert metrics["flops_per_token"] == 6 * metrics["n_matmul_params"] + 12 * cfg["n_layer"] * 32 * cfg["n_embd"]

    final = tmp_path / "ckpt" / "gpt2-scratch" / "final"
    text = generate_text(final, None, "the king", max_new_tokens=8, temperature=0)
    assert text.startswith("the king") and len(text) > len("the king")
    assert text == generate_text(final, tokens_dir, "the king", max_new_tokens=8, temperature=0)
    capsys.readouterr()
    assert main(["generate", "--prompt", "the queen", "--name", "gpt2-scratch", "--max-new-tokens", "5", *common[:4],
                 "--set", f"train.out_dir={tmp_path / 'ckpt'}"]) == 0
    assert capsys.readouterr().out.startswith("the queen")



def test_skip_unplanned_writes_the_not_trained_record_and_never_replaces_a_run(tokens_dir, tmp_path, capsys):
    """DVC's train@ instance of a model outside the profile's compare.plan: a record, not a model."""
    from hamt.cli import main
    from hamt.params import load_params
    from hamt.report.collect import collect

    common = ["--params", str(ROOT / "params.yaml"), "--profile", "micro",
              "--set", f"tokenizer.tokens_dir={tokens_dir}", "--set", f"train.out_dir={tmp_path / 'ckpt'}",
              "--set", f"train.results_dir={tmp_path / 'results'}", "--set", "train.max_steps=4",
              "--set", "compare.plan=[hamt, llama-scratch]"]
    assert main(["train", "--model", "gpt2-scratch", "--skip-unplanned", *common]) == 0
    assert "gpt2-scratch not trained: not in profile micro's compare.plan" in capsys.readouterr().out
    rec = json.loads((tmp_path / "results" / "gpt2-scratch" / "metrics.json").read_text())
    assert rec["status"] == "not trained" and rec["profile"] == "micro"
    assert json.loads((tmp_path / "ckpt" / "gpt2-scratch" / "not_trained.json").read_text()) == rec
    header = (tmp_path / "results" / "gpt2-scratch" / "log.csv").read_text()
    assert header.strip().split(",")[:2] == ["step", "tokens"] and header.count("\n") == 1
    p = load_params(ROOT / "params.yaml", "micro", [f"train.results_dir={tmp_path / 'results'}",
                                                    f"tokenizer.tokens_dir={tokens_dir}"], validate_model=False)
    assert "gpt2-scratch" not in collect(p)["train"]  # the report shows no run for it
    # A planned model trains; without the flag an unplanned one trains too (an explicit request) ...
    assert main(["train", "--model", "llama-scratch", "--skip-unplanned", *common]) == 0
    assert json.loads((tmp_path / "results" / "llama-scratch" / "metrics.json").read_text())["steps"] == 4
    assert main(["train", "--model", "gpt2-scratch", "--force-new", *common]) == 0
    trained = (tmp_path / "results" / "gpt2-scratch" / "metrics.json").read_text()
    assert json.loads(trained)["model_class"] == "GPT2LMHeadModel"
    # ... and the record never replaces a run: the folders are left as they are.
    capsys.readouterr()
    assert main(["train", "--model", "gpt2-scratch", "--skip-unplanned", *common]) == 0
    assert "left as they are" in capsys.readouterr().out
    assert (tmp_path / "results" / "gpt2-scratch" / "metrics.json").read_text() == trained


def test_compile_failure_falls_back_to_eager(tokens_dir, tmp_path, monkeypatch):
    from hamt.train import train

    def broken_compile(model, *a, **k):
        def call(*args, **kwargs):
            raise RuntimeError("inductor: no working C compiler (simulated)")

        call.no_sync = None
        return call

    monkeypatch.setattr(torch, "compile", broken_compile)
    with pytest.warns(UserWarning, match="torch.compile failed.*eager"):
        s = train(micro(tokens_dir, tmp_path, "train.compile=true", "train.max_steps=4"))
    assert s["steps"] == 4



def test_cuda_on_a_cpu_machine_is_a_one_line_config_error(tokens_dir, tmp_path):
    from hamt.train import train

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    with pytest.raises(ConfigError, match="train.device: 'cuda' requested but this machine has no usable CUDA"):
        train(micro(tokens_dir, tmp_path, "train.device=cuda"))


def test_batch_geometry_errors(tokens_dir, tmp_path):
    with pytest.raises(ConfigError, match="multiple of train.micro_batch_size"):
        micro(tokens_dir, tmp_path, "train.micro_batch_size=3")
