"""Runs own their checkpoints: a new run never adopts, prunes or rolls back to another run's files.

The case of issue 14: a run of 40 steps, then a run of 12 steps in the same folder whose loss diverges.
Before run identities, the second run rolled back to the first run's step 40 and reported its val loss.
"""

from __future__ import annotations

import os
import stat

import pytest

from hamt import checkpoint as ck
from hamt.errors import ConfigError
from hamt.train import train

from .helpers import micro

FAST = ("train.eval_every=20", "train.log_every=4", "train.ckpt_every=4", "train.keep_checkpoints=3")


def _files(root) -> dict:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_a_new_run_never_uses_an_older_runs_checkpoints(tokens_dir, tmp_path):
    ckdir = tmp_path / "ckpt" / "hamt"
    old_mask = os.umask(0o022)
    try:
        first = train(micro(tokens_dir, tmp_path, "train.max_steps=40", *FAST))
    finally:
        os.umask(old_mask)
    assert first["steps"] == 40
    # results and the exported model are readable by everyone (0644), like every other output
    for f in ("results/hamt/metrics.json", "results/hamt/log.csv", "results/hamt/train.log",
              "ckpt/hamt/final/model.safetensors", "ckpt/hamt/step_00000040.pt"):
        assert stat.S_IMODE((tmp_path / f).stat().st_mode) == 0o644, f
    runs = ck.runs_in(ckdir)
    assert list(runs.values()) == [40] and None not in runs  # one run, its id in every sidecar
    old_run = next(iter(runs))
    before = _files(tmp_path)

    # A second run in the same folder is refused in one line, and nothing is touched.
    with pytest.raises(ConfigError, match=r"--resume to continue it, or --force-new") as e:
        train(micro(tokens_dir, tmp_path, "train.max_steps=12", *FAST))
    assert "\n" not in str(e.value) and "step 40" in str(e.value)
    assert _files(tmp_path) == before

    # --force-new: the new run diverges at step 6 and rolls back to its own step 4, never to step 40.
    seen = []

    def diverge_once(step):
        if step == 6 and not seen:
            seen.append(step)
            return "nan"
        return None

    second = train(micro(tokens_dir, tmp_path, "train.max_steps=12", *FAST), force_new=True, fault_hook=diverge_once)
    assert second["steps"] == 12
    rollbacks = [f for f in second["fallbacks"] if f["kind"] == "divergence"]
    assert len(rollbacks) == 1 and "rolled back to step 4 " in rollbacks[0]["reason"], second["fallbacks"]
    assert second["val_loss"] != first["val_loss"]
    runs = ck.runs_in(ckdir)
    assert old_run not in runs and list(runs.values()) == [12]  # the old run's files are gone, the new kept 3
    assert [p.name for p in ck.list_checkpoints(ckdir)] == ["step_00000012.pt", "step_00000008.pt", "step_00000004.pt"]

    # --resume continues the run that wrote last, under its own id.
    again = train(micro(tokens_dir, tmp_path, "train.max_steps=16", *FAST), resume=True)
    assert again["steps"] == 16 and list(ck.runs_in(ckdir)) == list(runs)


def test_resume_and_force_new_exclude_each_other_and_names_are_plain(tokens_dir, tmp_path):
    p = micro(tokens_dir, tmp_path, "train.max_steps=2")
    with pytest.raises(ConfigError, match="pass one of them"):
        train(p, resume=True, force_new=True)
    for bad in ("/abs/path", "../x", "a/b", "..", ".", ".hidden", "", "-rf"):
        with pytest.raises(ConfigError, match="plain folder name"):
            train(p, name=bad)
    assert not (tmp_path / "ckpt").exists() and not (tmp_path / "x").exists()
