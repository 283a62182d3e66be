"""hamt.checkpoint: atomic writes, checksums, keep-last-K, corrupt/truncated fallback, model identity, RNG state."""

from __future__ import annotations

import errno
import hashlib
import random
import warnings

import numpy as np
import pytest
import torch

from hamt import checkpoint as ck
from hamt.errors import CheckpointError


def _state(seed: int) -> dict:
    g = torch.Generator().manual_seed(seed)
    return {"model": {"w": torch.randn(64, 64, generator=g), "b": torch.randn(64, generator=g)},
            "model_identity": {"model_type": "toy", "hidden": 64}, "note": f"state {seed}"}


def test_roundtrip_and_sidecar_is_sha256sum_format(tmp_path):
    path = ck.save_checkpoint(_state(1), tmp_path, step=7)
    assert path.name == "step_00000007.pt"
    side = ck.sidecar_path(path).read_text()
    digest, name = side.split()
    assert name == path.name and digest == hashlib.sha256(path.read_bytes()).hexdigest()
    loaded = ck.load_checkpoint(path)
    assert loaded["step"] == 7 and loaded["format"] == ck.FORMAT and loaded["note"] == "state 1"
    assert torch.equal(loaded["model"]["w"], _state(1)["model"]["w"])
    assert not [p for p in tmp_path.iterdir() if ".tmp." in p.name]


def test_keeps_only_the_newest_k(tmp_path):
    for step in (5, 10, 15, 20, 25):
        ck.save_checkpoint(_state(step), tmp_path, step, keep=2)
    assert [p.name for p in ck.list_checkpoints(tmp_path)] == ["step_00000025.pt", "step_00000020.pt"]
    assert sorted(p.name for p in tmp_path.glob("*.sha256")) == ["step_00000020.pt.sha256", "step_00000025.pt.sha256"]


@pytest.mark.parametrize("damage", ["flip", "truncate", "no_sidecar", "empty"])
def test_damaged_newest_falls_back_to_previous_with_warning(tmp_path, damage):
    ck.save_checkpoint(_state(1), tmp_path, 10)
    newest = ck.save_checkpoint(_state(2), tmp_path, 20)
    data = bytearray(newest.read_bytes())
    if damage == "flip":
        data[len(data) // 2] ^= 0xFF
        newest.write_bytes(bytes(data))
    elif damage == "truncate":
        newest.write_bytes(bytes(data[: len(data) // 3]))
    elif damage == "empty":
        newest.write_bytes(b"")
    else:
        ck.sidecar_path(newest).unlink()
    with pytest.warns(UserWarning, match="step_00000020.pt"):
        state, path = ck.load_latest(tmp_path)
    assert path.name == "step_00000010.pt" and state["step"] == 10
    assert torch.equal(state["model"]["w"], _state(1)["model"]["w"])


def test_all_damaged_is_an_error_and_empty_dir_is_none(tmp_path):
    assert ck.load_latest(tmp_path / "nothing") == (None, None)
    p = ck.save_checkpoint(_state(1), tmp_path, 10)
    p.write_bytes(p.read_bytes()[:100])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with pytest.raises(CheckpointError, match="no usable checkpoint"):
            ck.load_latest(tmp_path)


def test_a_file_that_is_not_a_checkpoint(tmp_path):
    junk = tmp_path / "step_00000001.pt"
    junk.write_bytes(b"this is not a zip archive at all" * 10)
    ck.sidecar_path(junk).write_text(f"{ck.file_sha256(junk)}  {junk.name}\n")  # checksum fine, content not
    with pytest.raises(CheckpointError, match="not a HAMT training checkpoint"):
        ck.load_checkpoint(junk)
    other = tmp_path / "weights.pt"
    torch.save({"just": torch.zeros(2)}, other)  # a real torch file, but not ours
    with pytest.raises(CheckpointError, match="not a HAMT training checkpoint"):
        ck.load_checkpoint(other, check=False)
    with pytest.raises(CheckpointError, match="checksum file"):
        ck.load_checkpoint(other)


def test_other_model_config_is_refused(tmp_path):
    ck.save_checkpoint(_state(1), tmp_path, 10)
    state, _ = ck.load_latest(tmp_path, expected_model={"model_type": "toy", "hidden": 64})
    assert state["step"] == 10
    with pytest.raises(CheckpointError, match="different model.*hidden"):
        ck.load_latest(tmp_path, expected_model={"model_type": "toy", "hidden": 128})


def test_disk_full_leaves_previous_checkpoint_intact(tmp_path):
    good = ck.save_checkpoint(_state(1), tmp_path, 10)
    before = good.read_bytes()

    def enospc(nbytes):
        raise OSError(errno.ENOSPC, "No space left on device")

    with pytest.raises(CheckpointError, match="no space left on device.*step_00000010.pt is intact") as e:
        ck.save_checkpoint(_state(2), tmp_path, 20, write_hook=enospc)
    assert "\n" not in str(e.value)
    assert good.read_bytes() == before and ck.verify(good) is None
    assert [p.name for p in ck.list_checkpoints(tmp_path)] == ["step_00000010.pt"]
    assert not [p for p in tmp_path.iterdir() if ".tmp." in p.name]


def test_torch_zip_writer_failure_is_one_line_and_leaves_no_temp(tmp_path):
    """A full disk reaches torch's zip writer as RuntimeError "unexpected pos", not OSError."""
    good = ck.save_checkpoint(_state(1), tmp_path, 10)

    def short_write(nbytes):
        if nbytes > 4096:
            raise RuntimeError("[enforce fail at inline_container.cc:626] . unexpected pos 8704 vs 8598")

    with pytest.raises(CheckpointError, match=r"step_00000020.pt \(the write stopped short: disk full\?; [\d,.]+ MiB "
                                              r"free there\); the previous checkpoint step_00000010.pt is intact") as e:
        ck.save_checkpoint(_state(2), tmp_path, 20, write_hook=short_write)
    assert "\n" not in str(e.value)
    assert ck.verify(good) is None and sorted(p.name for p in tmp_path.iterdir()) == [good.name, good.name + ".sha256"]


@pytest.fixture
def tiny_tmpfs(tmp_path):
    """A 3 MiB tmpfs: a real full disk (needs root and a kernel that lets this process mount)."""
    import shutil
    import subprocess

    mnt = tmp_path / "full"
    mnt.mkdir()
    if shutil.which("mount") is None:
        pytest.skip("no mount command here")
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=3m", "tmpfs", str(mnt)], capture_output=True, text=True)
    if r.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({(r.stderr or r.stdout).strip()[:120]})")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", str(mnt)], capture_output=True)


def test_a_real_full_disk_during_a_checkpoint_write(tiny_tmpfs):
    ck.save_checkpoint(_state(1), tiny_tmpfs, 10)  # ~17 KB: fits
    big = {"model": {"w": torch.zeros(1 << 20)}, "model_identity": {"model_type": "toy"}}  # 4 MiB: does not
    with pytest.raises(CheckpointError, match=r"could not write checkpoint .*step_00000020.pt .*MiB free there") as e:
        ck.save_checkpoint(big, tiny_tmpfs, 20)
    assert "\n" not in str(e.value)
    assert sorted(p.name for p in tiny_tmpfs.iterdir()) == ["step_00000010.pt", "step_00000010.pt.sha256"]
    assert ck.verify(tiny_tmpfs / "step_00000010.pt") is None


def test_interrupted_write_is_never_loaded(tmp_path):
    """A temp file left by a killed writer is ignored by load and removed by remove_stale_temps."""
    ck.save_checkpoint(_state(1), tmp_path, 10)

    class Killed(BaseException):
        pass

    def die(nbytes):
        raise Killed  # like SIGKILL mid-write: no cleanup code for OSError runs

    with pytest.raises(Killed):
        ck.save_checkpoint(_state(2), tmp_path, 20, write_hook=die)
    (tmp_path / ".step_00000020.pt.tmp.0a1b2c3d").write_bytes(b"partial")  # what a real kill would leave
    (tmp_path / ".final.tmp.k2_x9q7z").mkdir()  # ... or an unfinished save_pretrained export
    (tmp_path / ".final.tmp.k2_x9q7z" / "config.json").write_text("{}")
    # Files this project never writes here keep their place, whatever they look like.
    foreign = [".notes.tmp.txt", ".data.old.backup", ".step_00000020.pt.tmp.999", "x.tmp.0a1b2c3d"]
    for name in foreign:
        (tmp_path / name).write_text("keep me")
    state, path = ck.load_latest(tmp_path)
    assert path.name == "step_00000010.pt"
    assert len(ck.remove_stale_temps(tmp_path)) == 3
    assert sorted(p.name for p in tmp_path.iterdir() if ".tmp." in p.name or ".old." in p.name) == sorted(foreign)
    assert ck.verify(ck.checkpoint_path(tmp_path, 10)) is None


def test_rng_state_roundtrip_through_a_checkpoint(tmp_path):
    random.seed(3)
    np.random.seed(3)
    torch.manual_seed(3)
    ck.save_checkpoint({"rng": ck.capture_rng_state()}, tmp_path, 1)
    expected = (random.random(), np.random.rand(), torch.rand(3))
    random.seed(99)
    np.random.seed(99)
    torch.manual_seed(99)
    state = ck.load_checkpoint(ck.checkpoint_path(tmp_path, 1))
    ck.restore_rng_state(state["rng"])
    got = (random.random(), np.random.rand(), torch.rand(3))
    assert got[0] == expected[0] and got[1] == expected[1] and torch.equal(got[2], expected[2])


def test_model_identity_ignores_runtime_fields():
    from transformers import GPT2Config

    a = ck.model_identity(GPT2Config(n_layer=2, n_embd=64, n_head=2, vocab_size=100))
    b = ck.model_identity(GPT2Config(n_layer=2, n_embd=64, n_head=2, vocab_size=100, use_cache=False))
    c = ck.model_identity(GPT2Config(n_layer=3, n_embd=64, n_head=2, vocab_size=100))
    assert a == b and a != c
