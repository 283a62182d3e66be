"""The token loaders (hamt/tokens.py): meta checks, random training windows, sliding evaluation windows."""

from __future__ import annotations

import json

import numpy as np
import pytest

from hamt import tokens as tk
from hamt.errors import DataError


def test_random_windows_are_contiguous_and_resume_exactly():
    tokens = np.arange(5000, dtype=np.uint16)
    a = tk.RandomWindows(tokens, batch_size=4, seq_len=16, seed=7)
    first = [a.next_numpy() for _ in range(3)]
    state = a.state_dict()
    rest = [a.next_numpy() for _ in range(4)]
    for batch in first + rest:
        assert batch.shape == (4, 16) and batch.dtype == np.int64
        assert (np.diff(batch, axis=1) == 1).all()  # each row is one contiguous window
    assert len({b.tobytes() for b in first + rest}) == 7  # the batches differ from step to step
    b = tk.RandomWindows(tokens, batch_size=4, seq_len=16, seed=7)
    b.load_state_dict(json.loads(json.dumps(state)))  # the state survives a JSON round trip
    for expected in rest:
        np.testing.assert_array_equal(b.next_numpy(), expected)
    c = tk.RandomWindows(tokens, batch_size=4, seq_len=16, seed=8)
    assert not np.array_equal(c.next_numpy(), first[0])
    with pytest.raises(DataError, match="seed"):
        c.load_state_dict(state)
    with pytest.raises(DataError, match="data changed"):
        tk.RandomWindows(tokens[:4000], 4, 16, seed=7).load_state_dict(state)


def test_random_windows_ranks_split_one_global_batch():
    tokens = np.arange(3000, dtype=np.uint32)
    single = tk.RandomWindows(tokens, batch_size=6, seq_len=8, seed=3)
    ranks = [tk.RandomWindows(tokens, batch_size=2, seq_len=8, seed=3, rank=r, world_size=3) for r in range(3)]
    for _ in range(3):
        np.testing.assert_array_equal(single.next_numpy(), np.concatenate([r.next_numpy() for r in ranks]))


def test_random_windows_torch_batch_and_reach_the_last_token():
    torch = pytest.importorskip("torch")
    tokens = np.arange(20, dtype=np.uint16)
    loader = tk.RandomWindows(tokens, batch_size=64, seq_len=19, seed=0)
    x = loader.next_batch("cpu")
    assert isinstance(x, torch.Tensor) and x.dtype == torch.long and x.shape == (64, 19)
    assert set(x[:, 0].tolist()) == {0, 1}  # both possible windows occur, including the one ending at the last token


def test_sequence_longer_than_data_is_a_clear_error():
    tokens = np.arange(16, dtype=np.uint16)
    with pytest.raises(DataError, match="sequence length longer than the data"):
        tk.RandomWindows(tokens, batch_size=2, seq_len=16, seed=0)
    with pytest.raises(DataError, match="sequence length longer than the data"):
        list(tk.sequential_windows(tokens, seq_len=16, stride=8))
    tk.RandomWindows(tokens, batch_size=2, seq_len=15, seed=0)  # seq_len + 1 == n is enough


@pytest.mark.parametrize("n, seq_len, stride", [(100, 16, 8), (100, 16, 16), (100, 16, 40), (17, 16, 4), (101, 10, 3), (57, 2, 1)])
def test_sequential_windows_cover_every_target_once(n, seq_len, stride):
    tokens = np.arange(n, dtype=np.uint16)  # token value == position
    targets = []
    for ids, n_new in tk.sequential_windows(tokens, seq_len, stride):
        assert ids.dtype == np.int64 and 1 <= len(ids) <= seq_len
        assert (np.diff(ids) == 1).all()  # contiguous
        assert 1 <= n_new <= len(ids) - 1  # every scored target has at least one token of context
        targets.extend(ids[-n_new:].tolist())
    assert targets == list(range(1, n))  # every token but the first, once, in order


def test_check_vocab():
    tk.check_vocab({"vocab_size": 512}, 512)
    tk.check_vocab({"vocab_size": 500}, 512)
    with pytest.raises(DataError, match="model.vocab_size=4096"):
        tk.check_vocab({"vocab_size": 4096}, 512)


def test_read_meta_missing_names_the_fix(tmp_path):
    with pytest.raises(DataError, match="hamt tokenize"):
        tk.read_meta(tmp_path)
    with pytest.raises(DataError, match="hamt tokenize"):
        tk.load_split(tmp_path, "train")


@pytest.mark.gpu
def test_random_windows_cuda_batch_matches_cpu():
    torch = pytest.importorskip("torch")
    if not torch.cuda.is_available():
        pytest.skip("needs CUDA")
    tokens = np.arange(1000, dtype=np.uint16)
    cpu = tk.RandomWindows(tokens, batch_size=4, seq_len=16, seed=1).next_batch("cpu")
    gpu = tk.RandomWindows(tokens, batch_size=4, seq_len=16, seed=1).next_batch("cuda")
    assert gpu.is_cuda and gpu.dtype == torch.long
    assert torch.equal(gpu.cpu(), cpu)
