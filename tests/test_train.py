"""hamt.train: loss falls, bitwise resume, fallback ladder (OOM, NaN), W&B offline, GPT-2 baseline, CLI, generate.

Every run uses the ``micro`` profile on a tiny corpus made here (a few hundred ms per run once imports
are warm).
"""

from __future__ import annotations

import csv
import json
import os
import signal
from pathlib import Path

import pytest
import torch

from conftest import ROOT, make_micro_tokens
from hamt.errors import CheckpointError, ConfigError
from hamt.params import read_yaml, resolve


@pytest.fixture(scope="module")
def tokens_dir(tmp_path_factory) -> Path:
    return make_micro_tokens(tmp_path_factory.mktemp("train-data"), seed=1)


def micro(tokens_dir: Path, out: Path, *overrides: str):
    return resolve(read_yaml(ROOT / "params.yaml"), "micro", [
        f"tokenizer.tokens_dir={tokens_dir}", f"train.out_dir={out / 'ckpt'}", f"train.results_dir={out / 'results'}",
        "train.device=cpu", *overrides])


def final_weights(out: Path, name: str = "hamt") -> dict:
    from safetensors.torch import load_file

    return load_file(out / "ckpt" / name / "final" / "model.safetensors")


def assert_bitwise_equal(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), f"{k} differs"


def series(out: Path, name: str = "hamt") -> list[dict]:
    with (out / "results" / name / "log.csv").open() as f:
        return list(csv.DictReader(f))


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


def test_interrupted_then_resumed_is_bitwise_identical(tokens_dir, tmp_path, capsys):
    """SIGTERM mid-run saves at the step boundary; --resume then ends with the same weights and series.

    Dropout is on and batches are accumulated, so RNG and loader state both matter.
    """
    from hamt.train import train

    opts = ("model.dropout=0.1", "train.micro_batch_size=4", "train.ckpt_every=5")
    ref = tmp_path / "ref"
    train(micro(tokens_dir, ref, *opts))

    run = tmp_path / "run"
    p = micro(tokens_dir, run, *opts)

    def sigterm_at_7(step):
        if step == 7:
            os.kill(os.getpid(), signal.SIGTERM)

    s = train(p, fault_hook=sigterm_at_7)
    assert s["interrupted"] and s["steps"] == 7 and s["signal"] == signal.SIGTERM
    assert "hamt train --resume" in capsys.readouterr().err
    assert (run / "ckpt" / "hamt" / "step_00000007.pt").is_file()
    assert signal.getsignal(signal.SIGTERM) is not None  # handlers restored (no exception here)
    s2 = train(p, resume=True)
    assert s2["resumed_from"].endswith("step_00000007.pt") and s2["steps"] == 20
    assert_bitwise_equal(final_weights(ref), final_weights(run))
    strip = lambda rows: [(r["step"], r["train_loss"], r["val_loss"], r["grad_norm"]) for r in rows]  # noqa: E731
    assert strip(series(ref)) == strip(series(run))


def test_resume_keeps_the_ladder_state(tokens_dir, tmp_path):
    """Rungs taken before a checkpoint (here: smaller micro-batch, shorter windows) survive --resume, bitwise."""
    from hamt.train import train

    opts = ("fallback.min_micro_batch_size=4", "fallback.min_seq_len=16", "train.ckpt_every=5")

    def oom_at_3(fired):
        def hook(step):
            if step == 3 and len(fired) < 3:
                fired.append(step)
                raise torch.OutOfMemoryError("injected")
        return hook

    ref = train(micro(tokens_dir, tmp_path / "ref", *opts), fault_hook=oom_at_3([]))
    assert [e["kind"] for e in ref["fallbacks"]] == ["micro_batch_size", "gradient_checkpointing", "seq_len"]

    oom = oom_at_3([])

    def oom_then_stop_at_9(step):
        oom(step)
        if step == 9:
            os.kill(os.getpid(), signal.SIGINT)

    p = micro(tokens_dir, tmp_path / "run", *opts)
    assert train(p, fault_hook=oom_then_stop_at_9)["steps"] == 9
    s = train(p, resume=True)
    assert s["fallbacks"] == ref["fallbacks"] and s["seq_len"] == 16 and s["gradient_checkpointing"]
    assert_bitwise_equal(final_weights(tmp_path / "ref"), final_weights(tmp_path / "run"))


def test_oom_walks_the_ladder(tokens_dir, tmp_path):
    from hamt.train import train

    p = micro(tokens_dir, tmp_path, "fallback.min_micro_batch_size=2", "fallback.min_seq_len=16")
    calls = []

    def oom_four_times_at_step_3(step):
        if step == 3 and len(calls) < 4:
            calls.append(step)
            raise torch.OutOfMemoryError("injected: CUDA out of memory. Tried to allocate 2 GiB")

    s = train(p, fault_hook=oom_four_times_at_step_3)
    kinds = [(e["kind"], e["from"], e["to"]) for e in s["fallbacks"]]
    assert kinds == [("micro_batch_size", 8, 4), ("micro_batch_size", 4, 2),
                     ("gradient_checkpointing", False, True), ("seq_len", 32, 16)]
    assert all(e["step"] == 3 and "out of memory" in e["reason"] for e in s["fallbacks"])
    assert s["steps"] == 20 and s["micro_batch_size"] == 2 and s["seq_len"] == 16
    # The effective batch is kept (8 sequences per step); only the sequence got shorter.
    assert s["tokens"] == 2 * 8 * 32 + 18 * 8 * 16
    metrics = json.loads((tmp_path / "results" / "hamt" / "metrics.json").read_text())
    assert metrics["fallbacks"] == s["fallbacks"]
    log = (tmp_path / "results" / "hamt" / "train.log").read_text()
    assert log.count("fallback at step 3") == 4


def test_oom_gives_up_when_the_ladder_is_exhausted(tokens_dir, tmp_path):
    from hamt.train import TrainingFailed, train

    p = micro(tokens_dir, tmp_path, "fallback.min_micro_batch_size=4", "fallback.min_seq_len=32")

    def always_oom(step):
        raise RuntimeError("CUDA out of memory (injected)")

    with pytest.raises(TrainingFailed, match="out of memory at step 1 even with micro_batch_size=4") as e:
        train(p, fault_hook=always_oom)
    assert "\n" not in str(e.value)
    metrics = json.loads((tmp_path / "results" / "hamt" / "metrics.json").read_text())
    assert metrics["failed"] == str(e.value)
    assert [f["kind"] for f in metrics["fallbacks"]] == ["micro_batch_size", "gradient_checkpointing"]


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


def test_nan_rolls_back_with_lower_lr(tokens_dir, tmp_path):
    from hamt.train import train

    p = micro(tokens_dir, tmp_path, "train.ckpt_every=5")
    fired = []

    def nan_once_at_13(step):
        if step == 13 and not fired:
            fired.append(step)
            return "nan"

    s = train(p, fault_hook=nan_once_at_13)
    (ev,) = s["fallbacks"]
    assert ev["kind"] == "divergence" and ev["step"] == 13 and "rolled back to step 10" in ev["reason"]
    assert ev["to"] == pytest.approx(ev["from"] * 0.5) and s["lr_scale"] == 0.5
    assert s["steps"] == 20
    steps = [int(r["step"]) for r in series(tmp_path)]
    assert steps == sorted(set(steps))  # the rolled-back rows were replaced, not duplicated
    # After the roll-back every step runs at half the scheduled learning rate.
    from hamt.train import WarmupCosine

    tp = p.train
    sched = WarmupCosine(tp.lr, tp.min_lr, tp.warmup_steps, tp.max_steps)
    lrs = {int(r["step"]): float(r["lr"]) for r in series(tmp_path)}
    assert lrs[10] == pytest.approx(sched(9), rel=1e-4) and lrs[15] == pytest.approx(0.5 * sched(14), rel=1e-4)


def test_nan_retries_are_bounded(tokens_dir, tmp_path):
    from hamt.train import TrainingFailed, train

    p = micro(tokens_dir, tmp_path, "train.ckpt_every=2", "fallback.max_divergence_retries=2")
    with pytest.raises(TrainingFailed, match="after 2 roll-backs"):
        train(p, fault_hook=lambda step: "nan" if step >= 3 else None)


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


def test_wandb_offline_writes_a_run_folder(tokens_dir, tmp_path, monkeypatch):
    from hamt.train import train

    wandb_dir = tmp_path / "wandb-home"
    wandb_dir.mkdir()
    monkeypatch.setenv("WANDB_DIR", str(wandb_dir))
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    s = train(micro(tokens_dir, tmp_path, "train.wandb.mode=offline", "train.max_steps=5", "train.log_every=1"))
    runs = list((wandb_dir / "wandb").glob("offline-run-*"))
    assert len(runs) == 1 and any(runs[0].glob("*.wandb"))
    assert s["wandb_run_dir"].startswith(str(runs[0]))


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


def test_resume_refuses_a_checkpoint_of_another_model(tokens_dir, tmp_path):
    from hamt.train import train

    train(micro(tokens_dir, tmp_path, "train.max_steps=2"))
    with pytest.raises(CheckpointError, match="different model.*hidden_dim"):
        train(micro(tokens_dir, tmp_path, "train.max_steps=4", "model.hidden_dim=48"), resume=True)


def test_cuda_on_a_cpu_machine_is_a_one_line_config_error(tokens_dir, tmp_path):
    from hamt.train import train

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    with pytest.raises(ConfigError, match="train.device: 'cuda' requested but this machine has no usable CUDA"):
        train(micro(tokens_dir, tmp_path, "train.device=cuda"))


def test_batch_geometry_and_fault_spec_errors(tokens_dir, tmp_path):
    from hamt.train import EnvFaults

    with pytest.raises(ConfigError, match="multiple of train.micro_batch_size"):
        micro(tokens_dir, tmp_path, "train.micro_batch_size=3")
    with pytest.raises(ConfigError, match="HAMT_FAULTS"):
        EnvFaults("oom@x")


def test_bench_train_prints_a_table(capsys):
    from hamt.bench_train import main

    assert main(["--profiles", "micro", "--reps", "1", "--steps", "1", "--warmup", "0", "--precisions", "fp32",
                 "--params", str(ROOT / "params.yaml"), "--device", "cpu"]) == 0
    table = capsys.readouterr().out
    assert "| micro | HAMT |" in table and "| micro | GPT-2 (matched) |" in table
