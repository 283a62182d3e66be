"""hamt.train.state (and signals): SIGTERM then --resume is bitwise identical, resume keeps the ladder's
rungs, refuses another model's checkpoint and warns about changed parameters; loader-state round trip.

Crash safety (SIGKILL, truncated files, full disk) is test_faults.py; the file format test_checkpoint.py.
"""

from __future__ import annotations

import os
import signal

import numpy as np
import pytest
import torch

from hamt.errors import CheckpointError
from hamt.train.state import _from_plain_state, _to_plain_state

from .helpers import assert_bitwise_equal, final_weights, micro, series


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


def test_resume_refuses_a_checkpoint_of_another_model(tokens_dir, tmp_path):
    from hamt.train import train

    train(micro(tokens_dir, tmp_path, "train.max_steps=2"))
    with pytest.raises(CheckpointError, match="different model.*hidden_dim"):
        train(micro(tokens_dir, tmp_path, "train.max_steps=4", "model.hidden_dim=48"), resume=True)


def test_resume_warns_about_changed_parameters(tokens_dir, tmp_path):
    from hamt.train import train

    train(micro(tokens_dir, tmp_path, "train.max_steps=2"))
    with pytest.warns(UserWarning, match=r"changed train parameters: lr 0\.\S+ -> 0\.00123"):
        s = train(micro(tokens_dir, tmp_path, "train.max_steps=3", "train.lr=0.00123"), resume=True)
    assert s["resumed_from"].endswith("step_00000002.pt") and s["steps"] == 3
    assert "warning: resuming" in (tmp_path / "results" / "hamt" / "train.log").read_text()


def test_loader_state_survives_weights_only_load(tmp_path):
    """numpy arrays and scalars in a loader's state go through torch.load(weights_only=True) unchanged."""
    loader_state = {"step": np.int64(7), "order": np.arange(5, dtype=np.uint32), "nested": [(np.float32(0.5), "x")]}
    torch.save(_to_plain_state(loader_state), tmp_path / "s.pt")
    back = _from_plain_state(torch.load(tmp_path / "s.pt", weights_only=True))
    assert back["step"] == 7 and type(back["step"]) is int
    assert back["order"].dtype == np.uint32 and back["order"].tolist() == [0, 1, 2, 3, 4]
    assert back["nested"] == [(0.5, "x")]
