"""flows/orchestration.py and flows/cards.py, the flow's helpers, without running the flow.

Kept apart from tests/test_flow.py (the end-to-end runs, one repository copy for that module) so that
the two can run on different test workers.
"""

from __future__ import annotations

import json
import os
import shutil
import sys

import pytest
import yaml

from conftest import ROOT

sys.path.insert(0, str(ROOT / "flows"))
import cards  # noqa: E402
import orchestration as orc  # noqa: E402


# --------------------------------------------------------------------------------------------------
# Helpers of the flow (fast)
# --------------------------------------------------------------------------------------------------


def raw_params() -> dict:
    return yaml.safe_load((ROOT / "params.yaml").read_text())


def test_parse_overrides():
    assert orc.parse_overrides("") == []
    assert orc.parse_overrides(" train.lr=1e-3 ; data.split_fractions=[0.8, 0.1, 0.1]\ntrain.max_steps=5;") == [
        "train.lr=1e-3", "data.split_fractions=[0.8, 0.1, 0.1]", "train.max_steps=5"]


def test_training_profile_keeps_the_runs_data_and_tokenizer():
    raw = raw_params()
    base = orc.resolve(raw, "micro", ["data.raw_dir=elsewhere"])
    other = orc.resolve(raw, "micro", ["data.raw_dir=elsewhere"], train_profile="tiny")
    assert other.profile == "tiny" and base.profile == "micro"
    assert other.tokenizer == base.tokenizer and other.data == base.data  # the tokens on disk are micro's
    assert other.train.max_steps == orc.resolve(raw, "tiny", []).train.max_steps != base.train.max_steps
    assert other.data.raw_dir == "elsewhere"  # overrides apply to every profile of the run


def test_write_resolved_round_trips(tmp_path):
    from hamt.params import load_params

    params = orc.resolve(raw_params(), "micro", ["train.lr=0.01"], train_profile="tiny")
    again = load_params(orc.write_resolved(params, tmp_path), validate_model=False)
    assert again.to_dict() == params.to_dict()


def test_train_command_uses_torchrun_for_several_processes(tmp_path):
    one = orc.train_command(tmp_path / "p.yaml", 1, resume=False)
    assert one == [sys.executable, "-m", "hamt.cli", "train", "--params", str(tmp_path / "p.yaml")]
    four = orc.train_command(tmp_path / "p.yaml", 4, resume=True)
    assert four[:5] == [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=4"]
    assert four[5:9] == ["-m", "hamt.cli", "train", "--params"] and four[-1] == "--resume"
    assert orc.train_command(tmp_path / "p.yaml", 1, resume=False, model="ablation-slots-1")[-2:] == [
        "--model", "ablation-slots-1"]


def test_nproc_per_node(monkeypatch):
    monkeypatch.setenv("HAMT_NPROC_PER_NODE", "3")
    assert orc.nproc_per_node() == 3
    monkeypatch.setenv("HAMT_NPROC_PER_NODE", "auto")
    assert orc.nproc_per_node() >= 1
    monkeypatch.setenv("HAMT_NPROC_PER_NODE", "lots")
    with pytest.raises(orc.PipelineStopped, match="HAMT_NPROC_PER_NODE"):
        orc.nproc_per_node()


def test_parallel_tasks_share_the_cores(monkeypatch):
    import torch

    calls = []
    monkeypatch.setattr(torch, "set_num_threads", calls.append)
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(8)), raising=False)
    monkeypatch.setenv("OMP_NUM_THREADS", "3")
    assert orc.share_cpu_threads(4) is None and calls == []  # the user's setting stands
    monkeypatch.delenv("OMP_NUM_THREADS")
    assert orc.share_cpu_threads(4) == 2 and calls == [2] and os.environ["OMP_NUM_THREADS"] == "2"
    monkeypatch.delenv("OMP_NUM_THREADS")
    assert orc.share_cpu_threads(20) == 1
    monkeypatch.delenv("OMP_NUM_THREADS")
    monkeypatch.setenv("METAFLOW_KUBERNETES_WORKLOAD", "1")
    assert orc.share_cpu_threads(4) is None  # one task per pod: nothing to share


def test_failure_reason_prefers_the_trainers_verdict():
    assert orc.failure_reason(2, {"failed": "loss nan at step 1"}, ["x"]) == "training failed: loss nan at step 1"
    assert "SIGKILL" in orc.failure_reason(-9, None, ["step 3"])
    assert orc.failure_reason(2, None, ["noise", "hamt train: error: bad thing"]) == "exit status 2: hamt train: error: bad thing"
    assert orc.failure_reason(1, None, []) == "exit status 1: no output"


def test_dvc_sync_commits_only_matching_parameters(tmp_path):
    assert orc.dvc_sync(tmp_path, {}, {})["status"] == "skipped"  # not a DVC repository
    (tmp_path / "dvc.yaml").write_text("stages: {}\n")
    (tmp_path / ".dvc").mkdir()
    shutil.copy2(ROOT / "params.yaml", tmp_path / "params.yaml")
    disk = orc.resolve(raw_params(), None, []).to_dict()
    changed = orc.resolve(raw_params(), None, ["train.lr=0.5"]).to_dict()
    out = orc.dvc_sync(tmp_path, changed, changed)
    assert out["status"] == "skipped" and "train.lr" in out["reason"]
    out = orc.dvc_sync(tmp_path, disk, changed)
    assert out["status"] == "skipped" and "fallback profile" in out["reason"] and "train.lr" in out["reason"]


def test_cards_keep_long_cells_and_embed_report_images(tmp_path):
    reason = "tokenizer mismatch: the tokens are bpe; pretrained baselines need GPT-2 BPE tokens"
    rendered = cards.table([{"name": "gpt2", "reason": reason, "ppl": 12.3456789, "params": 1234567}]).render()
    assert reason in json.dumps(rendered) and "1,234,567" in json.dumps(rendered)
    png = tmp_path / "plots" / "loss.png"
    png.parent.mkdir()
    png.write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 64)
    blocks = cards.report_blocks("# Title\n\ntext\n\n![Loss curves](plots/loss.png)\n\nafter", {"loss": str(png)})
    assert [type(b).__name__ for b in blocks] == ["Markdown", "Image", "Markdown"]


def test_read_log_skips_empty_cells(tmp_path):
    (tmp_path / "log.csv").write_text("step,train_loss,val_loss\n5,6.0,\n10,5.5,5.2\n")
    assert orc.read_log(tmp_path / "log.csv") == [{"step": 5.0, "train_loss": 6.0},
                                                  {"step": 10.0, "train_loss": 5.5, "val_loss": 5.2}]
    assert orc.read_log(tmp_path / "missing.csv") == []


@pytest.mark.slow
def test_run_training_under_torchrun_and_after_a_crash(tmp_path, monkeypatch, corpus_file):
    """The training child: two DDP processes through torchrun; a hard crash becomes a reason, not an exception."""
    from hamt.data import download
    from hamt.tokenize import tokenize

    monkeypatch.chdir(tmp_path)
    params = orc.resolve(raw_params(), "micro", ["data.source=local", f"data.local_path={corpus_file}",
                                                 "train.micro_batch_size=4"])  # 8 = 4 x 2 ranks
    download(params)
    tokenize(params, progress=False)
    seen = []
    monkeypatch.setenv("HAMT_NPROC_PER_NODE", "2")
    ddp = orc.run_training(params, on_progress=seen.append, poll_s=0.5)
    assert ddp["ok"], ddp["reason"]
    assert ddp["command"][2] == "torch.distributed.run" and ddp["metrics"]["world_size"] == 2
    assert ddp["metrics"]["steps"] == 20 and (tmp_path / "checkpoints/hamt/final/config.json").is_file()
    assert seen and ddp["log"][-1]["step"] == 20

    monkeypatch.setenv("HAMT_NPROC_PER_NODE", "1")
    crash = orc.run_training(params, faults="sigkill@3")
    assert not crash["ok"] and crash["returncode"] < 0 and "SIGKILL" in crash["reason"]
    assert not (tmp_path / "checkpoints/hamt/final").exists()  # the earlier run's model was cleared first
