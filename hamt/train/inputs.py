"""What a training run checks before it does any work: its name, output folders (held exclusively while it
runs), meta.json, token ids, vocabulary.

Each check fails with one line naming the file or parameter and the fix, before the trainer builds a
model or touches an output, so a bad input never costs a previous run its logs or checkpoints. The
token files themselves are read by ``hamt.data`` (sizes and tokenizer checksum); here the ids are
checked against the vocabulary that ``meta.json`` declares, since an id past it would index past the
embedding matrix deep inside the first forward pass.
"""

from __future__ import annotations

import contextlib
import re
from pathlib import Path
from typing import Callable, Iterator

import numpy as np

from hamt.errors import ConfigError, DataError
from hamt.io import FolderBusy, folder_lock

FIX = "run `hamt tokenize` again"
_RUN_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9._-]{0,127}")


def check_run_name(name: str) -> str:
    """A run name is a plain folder name: no separator, not absolute, not ``.``/``..``, nothing hidden."""
    if not _RUN_NAME.fullmatch(name or "") or name in (".", ".."):
        raise ConfigError(f"--name {name!r}: a run name is one plain folder name (letters, digits, . _ -; "
                          "no / or .., not starting with . or -), e.g. --name hamt-lr3e-3")
    return name


@contextlib.contextmanager
def exclusive(ckpt_dir: Path) -> Iterator[None]:
    """Hold ``ckpt_dir``'s lock (``hamt.io.folder_lock``) while the run runs; a second run exits at once."""
    try:
        lock = folder_lock(ckpt_dir)
        lock.__enter__()
    except FolderBusy as e:
        who = f"pid {e.holder}" if e.holder else "another process"
        raise ConfigError(f"{ckpt_dir} is in use by another hamt train ({who}); wait for it to end, or train "
                          "under another --name") from None
    try:
        yield
    finally:
        lock.__exit__(None, None, None)


def check_output_dirs(params, name: str) -> None:
    """``train.out_dir``/<name> and ``train.results_dir``/<name>: folders, or not there yet (never files)."""
    for key in ("out_dir", "results_dir"):
        folder = Path(getattr(params.train, key)) / name
        for p in (folder, *folder.parents):
            if p.exists() and not p.is_dir():
                raise ConfigError(f"train.{key}: {p} exists and is not a folder; remove it or set train.{key}")


def checked_meta(tokens_dir: Path, read_meta: Callable[[Path], dict]) -> dict:
    """``meta.json`` of the tokens, with the fields the trainer uses present and of the right type."""
    meta = read_meta(tokens_dir)
    where = Path(tokens_dir) / "meta.json"
    if not isinstance(meta, dict):
        raise DataError(f"{where}: expected a JSON object, got {type(meta).__name__}; {FIX}")
    vocab = meta.get("vocab_size")
    if not isinstance(vocab, int) or isinstance(vocab, bool) or not 2 <= vocab <= 2**31:
        raise DataError(f"{where}: vocab_size must be an integer >= 2, got {vocab!r}; {FIX}")
    if not isinstance(meta.get("dtype"), str):
        raise DataError(f"{where}: dtype must be a string such as 'uint16', got {meta.get('dtype')!r}; {FIX}")
    splits = meta.get("splits")
    for split in ("train", "valid"):
        info = splits.get(split) if isinstance(splits, dict) else None
        n = info.get("tokens") if isinstance(info, dict) else None
        if not isinstance(n, int) or isinstance(n, bool) or n < 0:
            raise DataError(f"{where}: splits.{split}.tokens must be a count of tokens, got {n!r}; {FIX}")
    return meta


def check_token_ids(tokens_dir: Path, meta: dict, splits: dict[str, np.ndarray]) -> None:
    """Every id of every split is below ``meta.json``'s vocab_size (one pass over each memmap)."""
    vocab = int(meta["vocab_size"])
    for split, ids in splits.items():
        if len(ids) and int(np.max(ids)) >= vocab:
            raise DataError(f"{Path(tokens_dir) / meta['splits'][split].get('file', split + '.bin')}: token id "
                            f"{int(np.max(ids))} >= vocab_size {vocab} of meta.json (tokens and meta.json are from "
                            f"different runs?); {FIX}")


def model_vocab_note(params, vocab: int) -> str | None:
    """A line when ``model.vocab_size`` is set to another value than the tokens' (the trainer sizes the model
    from meta.json, so the setting has no effect: it must not pass silently)."""
    given = params.model.get("vocab_size") if isinstance(params.model, dict) else None
    if given is not None and given != vocab:
        return (f"note: model.vocab_size {given!r} is not used: the model is sized from the tokens' "
                f"vocabulary ({vocab}, meta.json)")
    return None
