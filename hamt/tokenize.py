"""The ``tokenize`` stage: raw text splits -> memmapped token ids + ``meta.json`` + ``tokenizer.json``.

Two tokenizers (``params.tokenizer.kind``):

- ``bpe``: a byte-level BPE trained with ``tokenizers`` on the train split only (vocabulary
  ``tokenizer.vocab_size``, special token ``<|endoftext|>``); deterministic for a given text.
- ``gpt2``: GPT-2's BPE, from a local folder (``vocab.json`` + ``merges.txt``, or ``tokenizer.json``)
  or a hub name (``tokenizer.name_or_path``); offline without a local folder it fails at once.

Each split is read in chunks cut only where GPT-2's pre-tokenizer would cut anyway (so the ids equal
those of encoding the whole text at once) and encoded in parallel with ``encode_batch``. Documents
(WikiText articles, which start at a `` = Title = `` line; otherwise the whole split) are each
preceded by the end-of-text token, as GPT-2 marks document starts. The ids go to
``tokens_dir/{train,valid,test}.bin`` (uint16 when the vocabulary fits, else uint32) and
``meta.json`` records counts (tokens, UTF-8 bytes, words) and identities (tokenizer and raw-file
sha256) that ``hamt.tokens.load_split`` checks before use. The folder is written atomically.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Iterator

import numpy as np

from hamt.data import SPLITS, hub_offline_setting, probe_hub, read_manifest
from hamt.errors import DataError
from hamt.io import atomic_dir, file_sha256, write_json_atomic
from hamt.tokens import META, TOKENIZER_FILE, read_meta

EOT = "<|endoftext|>"
FORMAT_VERSION = 1
# Chunks of ~32K characters keep all cores busy; a batch of ~4M characters bounds memory.
CHUNK_CHARS = 1 << 15
MAX_CHUNK_CHARS = 1 << 22
BATCH_CHARS = 1 << 22
# A WikiText article title line: " = Title = " (sections are " = = Section = = ").
_HEADING = re.compile(r" = [^=](?:.*[^=])? = \r?\n?")

# --------------------------------------------------------------------------------------------------
# Chunking that does not change the ids
# --------------------------------------------------------------------------------------------------


def _safe_cut(prev: str, line: str) -> bool:
    """True if cutting the text between ``prev`` and ``line`` leaves GPT-2's pre-tokenization unchanged.

    GPT-2's regex ends a whitespace run's piece one character early when a word follows (`` word``
    keeps its space), and at the end of a string it takes the whole run. Both parses agree when the
    next line starts with one space and a non-space (the piece boundary falls right at the cut), or
    when the run before the cut is a single newline and the next line starts with a non-space.
    """
    if len(line) >= 2 and line[0] == " " and not line[1].isspace():
        return True
    return bool(line) and not line[0].isspace() and len(prev) >= 2 and prev[-1] == "\n" and not prev[-2].isspace()


def iter_chunks(path: str | Path, chunk_chars: int = CHUNK_CHARS) -> Iterator[tuple[bool, str, int]]:
    """(starts a document, text, words) for consecutive pieces of a UTF-8 file; joined they give the file."""
    path = Path(path)
    buf: list[str] = []
    size = words = 0
    doc_start, doc_has_text, prev = True, False, ""
    try:
        with open(path, encoding="utf-8", newline="") as f:  # newline="": keep \r\n as is
            for line in f:
                if buf:
                    if doc_has_text and _HEADING.fullmatch(line):
                        yield doc_start, "".join(buf), words
                        buf, size, words, doc_start, doc_has_text = [], 0, 0, True, False
                    elif size >= chunk_chars and (_safe_cut(prev, line) or size >= MAX_CHUNK_CHARS):
                        yield doc_start, "".join(buf), words
                        buf, size, words, doc_start = [], 0, 0, False
                n_words = len(line.split())
                buf.append(line)
                size += len(line)
                words += n_words
                doc_has_text = doc_has_text or n_words > 0
                prev = line
    except UnicodeDecodeError as e:
        raise DataError(f"{path} is not valid UTF-8 ({e.reason}); run `hamt download` again") from None
    if buf:
        yield doc_start, "".join(buf), words


# --------------------------------------------------------------------------------------------------
# Tokenizers
# --------------------------------------------------------------------------------------------------


def train_bpe(train_path: str | Path, vocab_size: int, progress: bool = True):
    """A byte-level BPE trained on one text file, with ``<|endoftext|>`` as its only special token."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from tqdm.auto import tqdm

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, min_frequency=2, special_tokens=[EOT], show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),  # all 256 bytes: any text is encodable
    )
    bar = tqdm(total=Path(train_path).stat().st_size, unit="B", unit_scale=True, desc="train BPE", disable=not progress)

    def texts():
        for _start, text, _words in iter_chunks(train_path):
            bar.update(len(text.encode("utf-8")))
            yield text

    tok.train_from_iterator(texts(), trainer)
    bar.close()
    return tok


def _from_vocab_merges(vocab: Path, merges: Path):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers

    tok = Tokenizer(models.BPE.from_file(str(vocab), str(merges)))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    return tok


def _gpt2_local(path: Path):
    from tokenizers import Tokenizer

    if path.is_file():
        return Tokenizer.from_file(str(path)), [path.name]
    if (path / "tokenizer.json").is_file():
        return Tokenizer.from_file(str(path / "tokenizer.json")), ["tokenizer.json"]
    if (path / "vocab.json").is_file() and (path / "merges.txt").is_file():
        return _from_vocab_merges(path / "vocab.json", path / "merges.txt"), ["vocab.json", "merges.txt"]
    raise DataError(f"{path} has neither tokenizer.json nor vocab.json + merges.txt; point tokenizer.name_or_path at a GPT-2 tokenizer folder")


def _gpt2_hub(name: str):
    fix = "use a local folder with vocab.json+merges.txt or tokenizer.json: --set tokenizer.name_or_path=DIR"
    offline = hub_offline_setting()
    if offline is None:
        why = probe_hub(f"api/models/{name}")
        if why is not None:
            raise DataError(f"cannot fetch tokenizer '{name}': {why}; {fix}")
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import EntryNotFoundError

    try:
        try:
            return _gpt2_local(Path(hf_hub_download(name, "tokenizer.json")))[0], ["tokenizer.json"]
        except EntryNotFoundError:  # older repos ship only vocab.json + merges.txt
            vocab, merges = hf_hub_download(name, "vocab.json"), hf_hub_download(name, "merges.txt")
            return _from_vocab_merges(Path(vocab), Path(merges)), ["vocab.json", "merges.txt"]
    except DataError:
        raise
    except Exception as e:  # offline cache miss, unknown repo, network errors: all one line for the user
        detail = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        where = f"the hub is offline ({offline}=1) and no cached copy was found" if offline else detail
        raise DataError(f"cannot fetch tokenizer '{name}': {where}; {fix}") from e


def load_gpt2(name_or_path: str):
    """(GPT-2 BPE tokenizer, identity dict) from a local folder/file or a hub name."""
    from tokenizers import AddedToken

    path = Path(name_or_path).expanduser()
    if path.exists():
        tok, files = _gpt2_local(path)
        identity = {"source": "local", "name_or_path": str(name_or_path), "files": files}
    elif name_or_path.startswith(("/", ".", "~")) or name_or_path.count("/") > 1 or "\\" in name_or_path:
        raise DataError(f"tokenizer.name_or_path {name_or_path} does not exist; give a folder with vocab.json+merges.txt or a hub name")
    else:
        tok, files = _gpt2_hub(name_or_path)
        identity = {"source": "hub", "name_or_path": name_or_path, "files": files}
    # vocab.json lists <|endoftext|> as a plain entry; registering it as special keeps its id (50256).
    tok.add_special_tokens([AddedToken(EOT, special=True)])
    return tok, identity


def load_tokenizer(tokens_dir: str | Path):
    """The ``tokenizers.Tokenizer`` saved beside the token ids."""
    from tokenizers import Tokenizer

    path = Path(tokens_dir) / TOKENIZER_FILE
    if not path.is_file():
        raise DataError(f"no {TOKENIZER_FILE} in {tokens_dir}; run `hamt tokenize` first")
    return Tokenizer.from_file(str(path))


def load_hf_tokenizer(tokens_dir: str | Path):
    """The same tokenizer as a transformers ``PreTrainedTokenizerFast`` (for ``generate`` and pipelines)."""
    from transformers import PreTrainedTokenizerFast

    meta = read_meta(tokens_dir)
    eot = meta.get("eot_token", EOT)
    return PreTrainedTokenizerFast(
        tokenizer_object=load_tokenizer(tokens_dir), bos_token=eot, eos_token=eot, unk_token=eot,
    )


# --------------------------------------------------------------------------------------------------
# Encoding
# --------------------------------------------------------------------------------------------------


def token_dtype(vocab_size: int) -> np.dtype:
    return np.dtype(np.uint16) if vocab_size <= 65535 else np.dtype(np.uint32)


def encode_file(tok, path: str | Path, out, eot_id: int, dtype: np.dtype, progress: bool = True, desc: str = "") -> dict:
    """Encode a text file into ``out`` (a binary file object); return tokens, words, documents."""
    from tqdm.auto import tqdm

    path = Path(path)
    encode = getattr(tok, "encode_batch_fast", tok.encode_batch)  # same ids, no offsets: faster
    stats = {"tokens": 0, "words": 0, "documents": 0}
    bar = tqdm(total=path.stat().st_size, unit="B", unit_scale=True, desc=desc or f"tokenize {path.name}", disable=not progress)
    batch: list[tuple[bool, str]] = []

    def flush():
        encodings = encode([text for _s, text in batch], add_special_tokens=False)
        parts = []
        for (starts_doc, _text), enc in zip(batch, encodings):
            if starts_doc:
                parts.append(np.array([eot_id], dtype=dtype))
            parts.append(np.asarray(enc.ids, dtype=dtype))
        ids = np.concatenate(parts)
        out.write(ids.tobytes())
        stats["tokens"] += len(ids)
        bar.update(sum(len(t.encode("utf-8")) for _s, t in batch))
        batch.clear()

    # Raw text may contain the literal "<|endoftext|>": encode it as text, never as the special id.
    tok.encode_special_tokens = True
    try:
        chars = 0
        for starts_doc, text, words in iter_chunks(path):
            batch.append((starts_doc, text))
            stats["words"] += words
            stats["documents"] += starts_doc
            chars += len(text)
            if chars >= BATCH_CHARS:
                flush()
                chars = 0
        if batch:
            flush()
    finally:
        tok.encode_special_tokens = False
        bar.close()
    return stats


def _raw_files(raw_dir: Path) -> dict[str, Path]:
    files = {s: raw_dir / f"{s}.txt" for s in SPLITS}
    missing = [str(p) for p in files.values() if not p.is_file()]
    if missing:
        raise DataError(f"missing raw split(s) {', '.join(missing)}; run `hamt download` first")
    for path in files.values():
        with open(path, "rb") as f:
            head = f.read(1 << 16)
        if not head.strip() and path.stat().st_size <= len(head):
            raise DataError(f"{path} holds no text; tokens made from it would replace good ones with nothing: "
                            "run `hamt download` again")
    return files


def build_tokenizer(params, train_path: Path, progress: bool = True):
    """(tokenizer, identity dict) as ``params.tokenizer`` asks."""
    tp = params.tokenizer
    if tp.kind == "bpe":
        tok = train_bpe(train_path, tp.vocab_size, progress=progress)
        return tok, {"kind": "bpe", "trained_on": "train split", "requested_vocab_size": tp.vocab_size, "min_frequency": 2}
    tok, identity = load_gpt2(tp.name_or_path)
    return tok, {"kind": "gpt2", **identity}


def tokenize(params, progress: bool = True) -> dict:
    """Tokenize ``params.data.raw_dir`` into ``params.tokenizer.tokens_dir``; return ``meta.json``'s content."""
    raw_dir, tokens_dir = Path(params.data.raw_dir), Path(params.tokenizer.tokens_dir)
    files = _raw_files(raw_dir)
    try:
        raw_source = read_manifest(raw_dir).get("source")
    except DataError:
        raw_source = None  # hand-made raw folders are fine; the sha256 per split still pins them
    tok, identity = build_tokenizer(params, files["train"], progress)
    eot_id = tok.token_to_id(EOT)
    if eot_id is None:
        raise DataError(f"the tokenizer has no {EOT} token; use a GPT-2 tokenizer or tokenizer.kind=bpe")
    vocab_size = tok.get_vocab_size(with_added_tokens=True)
    dtype = token_dtype(vocab_size)
    with atomic_dir(tokens_dir) as tmp:
        tok.save(str(tmp / TOKENIZER_FILE))
        splits = {}
        for split, path in files.items():
            with open(tmp / f"{split}.bin", "wb") as out:
                stats = encode_file(tok, path, out, eot_id, dtype, progress, desc=f"tokenize {split}")
            if stats["words"] == 0:  # raised inside atomic_dir: the previous tokens stay as they are
                raise DataError(f"{path} holds no words; run `hamt download` again")
            n_bytes = path.stat().st_size
            splits[split] = {
                "file": f"{split}.bin", "tokens": stats["tokens"], "bytes": n_bytes, "words": stats["words"],
                "documents": stats["documents"], "bytes_per_token": round(n_bytes / max(stats["tokens"], 1), 4),
                "raw_sha256": file_sha256(path),
            }
        meta = {
            "format_version": FORMAT_VERSION,
            "tokenizer": identity,
            "tokenizer_sha256": file_sha256(tmp / TOKENIZER_FILE),
            "vocab_size": vocab_size,
            "dtype": dtype.name,
            "eot_token": EOT,
            "eot_id": eot_id,
            "eot_placement": "before each document",
            "raw_source": raw_source,
            "splits": splits,
        }
        write_json_atomic(tmp / META, meta)
    return meta


def cli_tokenize(params, args) -> int:
    meta = tokenize(params)
    t = meta["tokenizer"]
    name = t.get("name_or_path", f"BPE trained on {params.data.raw_dir}/train.txt")
    print(f"tokenized with {t['kind']} ({name}), vocab {meta['vocab_size']:,}, {meta['dtype']} -> {params.tokenizer.tokens_dir}")
    for split, s in meta["splits"].items():
        print(f"  {split:5s} {s['tokens']:>12,} tokens {s['bytes']:>13,} bytes ({s['bytes_per_token']:.2f} bytes/token) "
              f"{s['words']:>11,} words {s['documents']:>7,} documents")
    return 0
