"""Token ids out: the checked memmaps ``hamt tokenize`` wrote, and the batches the trainer and evaluators draw.

``read_meta`` / ``load_split`` check the memmapped ids against ``meta.json`` before use (split listed,
dtype known, exact size, the ``tokenizer.json`` beside them the one they were made with);
``check_vocab`` checks a model covers every id. ``RandomWindows`` draws training batches that are a
pure function of (seed, step), so a resumed run sees exactly the batches an uninterrupted one would,
and ``sequential_windows`` walks a split for sliding-window perplexity. The raw text they come from is
the ``download`` stage's (``hamt/data.py``); the files are written by ``hamt/tokenize.py``.

This module imports numpy only; torch is imported inside ``RandomWindows.next_batch``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Iterator

import numpy as np

from hamt.errors import DataError
from hamt.io import file_sha256

META = "meta.json"
TOKENIZER_FILE = "tokenizer.json"


# --------------------------------------------------------------------------------------------------
# Tokenized splits: metadata checks
# --------------------------------------------------------------------------------------------------


def read_meta(tokens_dir: str | Path) -> dict:
    """``meta.json`` written by ``hamt tokenize`` (DataError if missing or unreadable)."""
    path = Path(tokens_dir) / META
    if not path.is_file():
        raise DataError(f"no {META} in {tokens_dir}; run `hamt tokenize` first")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise DataError(f"{path} is not valid JSON ({e}); run `hamt tokenize` again") from None


def load_split(tokens_dir: str | Path, split: str, meta: dict | None = None) -> np.memmap:
    """The token ids of one split as a read-only memmap, checked against ``meta.json``.

    Checks: the split is listed, the dtype is known, the file holds exactly ``tokens`` ids, and the
    ``tokenizer.json`` beside it is the one the ids were made with (same sha256).
    """
    tokens_dir = Path(tokens_dir)
    meta = meta if meta is not None else read_meta(tokens_dir)
    fix = "run `hamt tokenize` again"
    if split not in meta.get("splits", {}):
        raise DataError(f"split '{split}' is not in {tokens_dir / META}; {fix}")
    info = meta["splits"][split]
    try:
        dtype = np.dtype(meta["dtype"])
    except (KeyError, TypeError) as e:
        raise DataError(f"{tokens_dir / META}: bad or missing dtype ({e}); {fix}") from None
    path = tokens_dir / info.get("file", f"{split}.bin")
    if not path.is_file():
        raise DataError(f"{path} is missing; {fix}")
    expected = int(info["tokens"]) * dtype.itemsize
    size = path.stat().st_size
    if size != expected:
        raise DataError(f"{path} has {size} bytes but meta.json says {info['tokens']} {dtype} tokens ({expected} bytes); {fix}")
    tok_file = tokens_dir / TOKENIZER_FILE
    if not tok_file.is_file():
        raise DataError(f"{tok_file} is missing; {fix}")
    if file_sha256(tok_file) != meta.get("tokenizer_sha256"):
        raise DataError(f"{tok_file} does not match the tokenizer the ids were made with (sha256 differs); {fix}")
    if expected == 0:
        return np.zeros(0, dtype=dtype)
    return np.memmap(path, dtype=dtype, mode="r")


def check_same_tokenizer(trained: str | None, given: str | None, what: str, fix: str) -> None:
    """Refuse ids or a tokenizer other than the ones a model was trained with (``tokenizer.json`` sha256s).

    Either sha may be None (a checkpoint or model folder written before the sha was recorded): then
    there is nothing to compare. The vocabulary size alone cannot tell two tokenizers apart.
    """
    if trained and given and trained != given:
        raise DataError(f"{what} (tokenizer.json sha256 {trained[:12]}... when trained, {given[:12]}... now); {fix}")


def folder_tokenizer_sha(folder: str | Path) -> str | None:
    """The sha256 of the tokenizer a folder's ``meta.json`` records (tokens, or a model's ``final/``), or None."""
    path = Path(folder) / META
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    sha = meta.get("tokenizer_sha256") if isinstance(meta, dict) else None
    return sha if isinstance(sha, str) else None


def check_vocab(meta: dict, model_vocab_size: int) -> None:
    """The model's embedding must cover every token id (a larger model vocabulary is fine)."""
    vocab = int(meta["vocab_size"])
    if vocab > model_vocab_size:
        raise DataError(
            f"the tokens use a vocabulary of {vocab} but the model has vocab_size {model_vocab_size}; "
            f"set --set model.vocab_size={vocab} or re-tokenize with a smaller tokenizer.vocab_size"
        )


# --------------------------------------------------------------------------------------------------
# Loaders
# --------------------------------------------------------------------------------------------------


def _check_length(n_tokens: int, seq_len: int, what: str = "the split") -> None:
    if seq_len < 1:
        raise DataError(f"seq_len must be >= 1, got {seq_len}")
    if seq_len + 1 > n_tokens:
        raise DataError(
            f"sequence length longer than the data: {what} has {n_tokens} tokens but seq_len {seq_len} "
            f"needs at least {seq_len + 1}; lower train.seq_len / compare.eval_context or use more text"
        )


class RandomWindows:
    """Random contiguous windows of ``seq_len`` tokens, a pure function of (seed, step).

    Each step draws ``batch_size x world_size`` start offsets from a generator seeded with
    ``(seed, step)``; rank r takes its slice, so the ranks together see the batch one process with
    ``batch_size x world_size`` would see. The only state is ``step``: restore it with
    ``load_state_dict`` and the next batches are those of an uninterrupted run.
    """

    def __init__(self, tokens: np.ndarray, batch_size: int, seq_len: int, seed: int, rank: int = 0, world_size: int = 1,
                 name: str = "the split"):
        _check_length(len(tokens), seq_len, name)
        if batch_size < 1 or not 0 <= rank < world_size:
            raise DataError(f"bad loader setup: batch_size={batch_size}, rank={rank}, world_size={world_size}")
        self.tokens = tokens
        self.batch_size, self.seq_len, self.seed = batch_size, seq_len, int(seed)
        self.rank, self.world_size = rank, world_size
        self.step = 0

    def starts(self, step: int) -> np.ndarray:
        """Window start offsets of this rank at ``step``: (batch_size,)."""
        rng = np.random.default_rng([self.seed, step])
        high = len(self.tokens) - self.seq_len + 1  # a start s reads tokens[s : s + seq_len]
        all_starts = rng.integers(0, high, size=self.batch_size * self.world_size)
        return all_starts[self.rank * self.batch_size:(self.rank + 1) * self.batch_size]

    def next_numpy(self) -> np.ndarray:
        """The next batch as int64 ids, (batch_size, seq_len); advances the position."""
        t = self.seq_len
        batch = np.stack([np.asarray(self.tokens[s:s + t], dtype=np.int64) for s in self.starts(self.step)])
        self.step += 1
        return batch  # (B, T)

    def next_batch(self, device=None):
        """The next batch as a LongTensor (batch_size, seq_len) on ``device``."""
        import torch

        x = torch.from_numpy(self.next_numpy())  # (B, T) int64
        if device is None:
            return x
        device = torch.device(device)
        if device.type == "cuda":
            # pinned host memory lets the copy overlap with compute
            return x.pin_memory().to(device, non_blocking=True)
        return x.to(device)

    def state_dict(self) -> dict:
        return {"step": self.step, "seed": self.seed, "n_tokens": int(len(self.tokens)),
                "batch_size": self.batch_size, "seq_len": self.seq_len, "world_size": self.world_size}

    def load_state_dict(self, state: dict) -> None:
        """Restore the position. The seed and data must match; batch shape may change (fallback ladder)."""
        if int(state["seed"]) != self.seed:
            raise DataError(f"loader state has seed {state['seed']} but this run uses {self.seed}; resume with the same train.seed")
        if int(state["n_tokens"]) != len(self.tokens):
            raise DataError(
                f"loader state was made on {state['n_tokens']} tokens but the split now has {len(self.tokens)}; "
                "the data changed since the checkpoint (re-run `hamt tokenize` as before, or start a fresh run)"
            )
        self.step = int(state["step"])


def sequential_windows(tokens: np.ndarray, seq_len: int, stride: int, name: str = "the split") -> Iterator[tuple[np.ndarray, int]]:
    """Sliding windows for perplexity: yields (input_ids (T,) int64, n_new).

    Score the last ``n_new`` next-token predictions of each window (targets ``input_ids[-n_new:]``):
    over all windows every token but the first is a target exactly once, and each target sees up to
    ``seq_len - 1`` tokens of context. The stride is capped at ``seq_len - 1`` because a window's first
    token has no prediction inside that window.
    """
    n = len(tokens)
    _check_length(n, seq_len, name)
    if seq_len < 2 or stride < 1:
        raise DataError(f"sliding windows need seq_len >= 2 and stride >= 1, got {seq_len} and {stride}")
    step = min(stride, seq_len - 1)
    end = min(seq_len, n)
    yield np.asarray(tokens[:end], dtype=np.int64), end - 1
    while end < n:
        new_end = min(end + step, n)
        begin = max(0, new_end - seq_len)
        yield np.asarray(tokens[begin:new_end], dtype=np.int64), new_end - end
        end = new_end
