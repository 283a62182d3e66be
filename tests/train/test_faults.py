"""Crash safety of training: SIGKILL at several points (one inside a checkpoint write), SIGTERM from outside,
a truncated newest checkpoint, a full disk. After each, the last good checkpoint loads and the resumed
run ends with weights bitwise-identical to an uninterrupted run.

Subprocesses run ``python -m hamt.cli train`` with faults injected through ``HAMT_FAULTS``
(see ``hamt.train.faults.EnvFaults``); the reference run is in-process.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import warnings
from pathlib import Path

import pytest
import torch

from conftest import ROOT, make_micro_tokens
from hamt import checkpoint as ck
from hamt.errors import CheckpointError
from hamt.params import read_yaml, resolve

OPTS = ("model.dropout=0.1", "train.micro_batch_size=4", "train.ckpt_every=5", "train.keep_checkpoints=3")


@pytest.fixture(scope="module")
def tokens_dir(tmp_path_factory) -> Path:
    return make_micro_tokens(tmp_path_factory.mktemp("faults-data"), seed=2)


def overrides(tokens_dir: Path, out: Path) -> list[str]:
    return [f"tokenizer.tokens_dir={tokens_dir}", f"train.out_dir={out / 'ckpt'}",
            f"train.results_dir={out / 'results'}", "train.device=cpu", *OPTS]


def params(tokens_dir: Path, out: Path):
    return resolve(read_yaml(ROOT / "params.yaml"), "micro", overrides(tokens_dir, out))


def weights(out: Path) -> dict:
    from safetensors.torch import load_file

    return load_file(out / "ckpt" / "hamt" / "final" / "model.safetensors")


@pytest.fixture(scope="module")
def reference(tokens_dir, tmp_path_factory) -> dict:
    from hamt.train import train

    out = tmp_path_factory.mktemp("reference")
    # Same thread count as the subprocesses (OMP_NUM_THREADS=1): float reductions split over a
    # different number of threads round differently, and "bitwise identical" means exactly that.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        train(params(tokens_dir, out))
    finally:
        torch.set_num_threads(threads)
    return weights(out)


def assert_same(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    bad = [k for k in a if not torch.equal(a[k], b[k])]
    assert not bad, f"weights differ: {bad[:3]}"


def spawn(tokens_dir: Path, out: Path, faults: str, resume: bool = False) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "hamt.cli", "train", "--params", str(ROOT / "params.yaml"), "--profile", "micro"]
    for o in overrides(tokens_dir, out):
        cmd += ["--set", o]
    if resume:
        cmd.append("--resume")
    env = {**os.environ, "HAMT_FAULTS": faults, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    return subprocess.Popen(cmd, cwd=out, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def wait_for(cond, proc: subprocess.Popen, timeout: float = 90.0) -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if cond():
            return
        if proc.poll() is not None:
            raise AssertionError(f"process ended early ({proc.returncode}): {proc.stderr.read()[-2000:]}")
        time.sleep(0.05)
    proc.kill()
    raise AssertionError("timed out waiting for the training subprocess")


def finish(proc: subprocess.Popen, timeout: float = 90.0) -> tuple[int, str]:
    try:
        _, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.communicate()
        raise
    return proc.returncode, err


def resume_in_process(tokens_dir: Path, out: Path) -> dict:
    from hamt.train import train

    return train(params(tokens_dir, out), resume=True)


# ---------------------------------------------------------------------------------------------------


def test_sigkill_mid_step_and_mid_checkpoint_write(tokens_dir, tmp_path, reference):
    ckdir = tmp_path / "ckpt" / "hamt"
    # 1. killed in the middle of step 8 (last checkpoint: step 5).
    rc, _ = finish(spawn(tokens_dir, tmp_path, "sigkill@8"))
    assert rc == -signal.SIGKILL
    state, path = ck.load_latest(ckdir)
    assert path.name == "step_00000005.pt" and state["step"] == 5

    # 2. resumed, then killed while writing checkpoint 15 (its first bytes are on disk).
    proc = spawn(tokens_dir, tmp_path, "ckpt_sleep@15:120", resume=True)
    partial = lambda: [p for p in ckdir.glob(".step_00000015.pt.tmp.*") if p.stat().st_size > 0]  # noqa: E731
    wait_for(partial, proc)
    proc.send_signal(signal.SIGKILL)
    rc, _ = finish(proc)
    assert rc == -signal.SIGKILL
    assert partial() and not (ckdir / "step_00000015.pt").exists()
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the half-written file is not even a candidate
        state, path = ck.load_latest(ckdir)
    assert path.name == "step_00000010.pt"

    # 3. resumed to the end: same weights as never interrupted, and the temp file is gone.
    s = resume_in_process(tokens_dir, tmp_path)
    assert s["resumed_from"].endswith("step_00000010.pt") and s["steps"] == 20
    assert_same(weights(tmp_path), reference)
    assert not list(ckdir.glob(".*.tmp.*"))


def test_sigterm_from_outside_saves_and_exits_cleanly(tokens_dir, tmp_path, reference):
    ckdir = tmp_path / "ckpt" / "hamt"
    proc = spawn(tokens_dir, tmp_path, "sleep@6:120")  # step 6 stalls until the signal arrives
    wait_for(lambda: ck.verify(ckdir / "step_00000005.pt") is None, proc)
    proc.send_signal(signal.SIGTERM)
    rc, err = finish(proc)
    assert rc == 128 + signal.SIGTERM, err[-2000:]
    assert "Traceback" not in err
    assert "SIGTERM" in err and "hamt train --resume" in err
    assert "fault injection is on (HAMT_FAULTS='sleep@6:120')" in err  # a test setting never acts silently
    state, path = ck.load_latest(ckdir)
    assert state["step"] in (5, 6)  # the step boundary after the signal
    s = resume_in_process(tokens_dir, tmp_path)
    assert s["steps"] == 20
    assert_same(weights(tmp_path), reference)


def test_truncated_newest_checkpoint_falls_back_to_previous(tokens_dir, tmp_path, reference):
    from hamt.train import train

    def stop_at_12(step):
        if step == 12:
            os.kill(os.getpid(), signal.SIGINT)

    s = train(params(tokens_dir, tmp_path), fault_hook=stop_at_12)
    assert s["interrupted"] and s["steps"] == 12
    newest = tmp_path / "ckpt" / "hamt" / "step_00000012.pt"
    newest.write_bytes(newest.read_bytes()[: newest.stat().st_size // 2])
    with pytest.warns(UserWarning, match="step_00000012.pt"):
        s = resume_in_process(tokens_dir, tmp_path)
    assert s["resumed_from"].endswith("step_00000010.pt")
    assert_same(weights(tmp_path), reference)


def test_disk_full_keeps_the_previous_checkpoint(tokens_dir, tmp_path, reference, monkeypatch, capsys):
    from hamt.cli import main

    ckdir = tmp_path / "ckpt" / "hamt"
    monkeypatch.setenv("HAMT_FAULTS", "ckpt_enospc@10")
    argv = ["train", "--params", str(ROOT / "params.yaml"), "--profile", "micro"]
    for o in overrides(tokens_dir, tmp_path):
        argv += ["--set", o]
    assert main(argv) == 2
    err = [line for line in capsys.readouterr().err.splitlines() if "error:" in line]
    assert len(err) == 1 and "no space left on device" in err[0] and "step_00000005.pt is intact" in err[0]
    assert [p.name for p in ck.list_checkpoints(ckdir)] == ["step_00000005.pt", "step_00000000.pt"]
    assert ck.verify(ckdir / "step_00000005.pt") is None
    assert not list(ckdir.glob(".*.tmp.*"))
    monkeypatch.delenv("HAMT_FAULTS")
    s = resume_in_process(tokens_dir, tmp_path)
    assert s["resumed_from"].endswith("step_00000005.pt")
    assert_same(weights(tmp_path), reference)


def test_checkpoint_errors_surface_as_checkpoint_error(tokens_dir, tmp_path):
    """Resuming from a file that is not a checkpoint names it."""
    from hamt.train import train

    junk = tmp_path / "junk.pt"
    junk.write_text("not a checkpoint")
    with pytest.raises(CheckpointError, match="junk.pt"):
        train(params(tokens_dir, tmp_path), resume=str(junk))


def test_fault_spec_fires_once_and_bad_entries_are_config_errors():
    import errno

    from hamt.errors import ConfigError
    from hamt.train import EnvFaults

    with pytest.raises(ConfigError, match="HAMT_FAULTS"):
        EnvFaults("oom@x")
    faults = EnvFaults("nan@2, oom@3, ckpt_enospc@5")
    assert faults(1) is None and faults(2) == "nan" and faults(2) is None  # each entry fires once
    with pytest.raises(torch.OutOfMemoryError, match="step 3"):
        faults(3)
    assert faults.checkpoint_hook(4) is None
    hook = faults.checkpoint_hook(5)
    with pytest.raises(OSError) as e:
        hook(100)
    assert e.value.errno == errno.ENOSPC and faults.checkpoint_hook(5) is None


# ---------------------------------------------------------------------------------------------------
# One run per folder: an OS lock, released however the holder dies
# ---------------------------------------------------------------------------------------------------


def test_a_second_run_in_the_same_folder_is_refused_and_a_killed_run_does_not_block(tokens_dir, tmp_path):
    ckdir = tmp_path / "ckpt" / "hamt"
    first = spawn(tokens_dir, tmp_path, "sleep@3:120")  # holds the folder, stalled at step 3
    lock = ckdir / ".hamt.lock"
    wait_for(lambda: lock.is_file() and lock.read_text().strip() == str(first.pid), first)
    wait_for(lambda: ck.list_checkpoints(ckdir), first)  # step 0 written: the first run is under way
    before = {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file() and p.name != ".hamt.lock"}
    second = spawn(tokens_dir, tmp_path, "", resume=True)
    code, err = finish(second)
    assert code == 2, err[-2000:]
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1 and f"pid {first.pid}" in lines[0] and "Traceback" not in err, err[-2000:]
    assert first.poll() is None  # the first run is unaffected ...
    assert {p: p.read_bytes() for p in before} == before  # ... and so are its files
    first.send_signal(signal.SIGKILL)
    first.wait(timeout=30)
    s = resume_in_process(tokens_dir, tmp_path)  # the lock died with its holder
    assert s["steps"] == params(tokens_dir, tmp_path).train.max_steps and s["resumed_from"]
    assert not lock.exists()
