"""The tokenize stage: BPE training, GPT-2-style loading, chunked encoding, memmaps and their checks; CLI."""

from __future__ import annotations

import hashlib
import random
import shutil
from pathlib import Path

import numpy as np
import pytest

from conftest import make_corpus
from hamt import data, tokenize
from hamt import tokens as tk
from hamt.errors import DataError
from hamt.params import resolve

UNICODE = "héllo wörld — 日本語 🙂\r\n\ttabs\t and  double  spaces\n\n\n <|endoftext|> literal\r\n"


def make_params(tmp_path: Path, **tok):
    return resolve({
        "data": {"source": "local", "local_path": str(tmp_path / "corpus.txt"), "raw_dir": str(tmp_path / "raw")},
        "tokenizer": {"kind": "bpe", "vocab_size": 300, "tokens_dir": str(tmp_path / "tokens"), **tok},
    })


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    """A downloaded and BPE-tokenized tiny corpus (shared by the read-only tests)."""
    tmp = tmp_path_factory.mktemp("tok")
    (tmp / "corpus.txt").write_text(make_corpus(1500) + UNICODE, encoding="utf-8")
    params = make_params(tmp)
    data.download(params)
    meta = tokenize.tokenize(params, progress=False)
    return tmp, params, meta


def test_meta_and_bins_describe_the_raw_text(prepared):
    tmp, params, meta = prepared
    tokens_dir, raw = Path(params.tokenizer.tokens_dir), Path(params.data.raw_dir)
    tok = tokenize.load_tokenizer(tokens_dir)
    assert meta == tk.read_meta(tokens_dir)
    assert meta["dtype"] == "uint16" and meta["vocab_size"] == tok.get_vocab_size() <= 300
    assert meta["eot_id"] == tok.token_to_id("<|endoftext|>")
    assert meta["tokenizer_sha256"] == hashlib.sha256((tokens_dir / "tokenizer.json").read_bytes()).hexdigest()
    for split in data.SPLITS:
        text_bytes = (raw / f"{split}.txt").read_bytes()
        s = meta["splits"][split]
        ids = tk.load_split(tokens_dir, split)
        assert isinstance(ids, np.memmap) and ids.dtype == np.uint16 and len(ids) == s["tokens"]
        assert s["bytes"] == len(text_bytes) and s["words"] == len(text_bytes.decode().split())
        assert s["raw_sha256"] == hashlib.sha256(text_bytes).hexdigest()
        # every document starts with end-of-text; dropping those gives back the text exactly
        eot = ids == meta["eot_id"]
        assert ids[0] == meta["eot_id"] and int(eot.sum()) == s["documents"]
        assert tok.decode(ids[~eot].tolist(), skip_special_tokens=False) == text_bytes.decode()
    # make_corpus starts a " = Section k = " article every 50 lines: each one is a document
    all_lines = sum(meta["splits"][s]["documents"] for s in data.SPLITS)
    assert meta["splits"]["train"]["documents"] > 1 and all_lines >= 1500 // 50


def test_bpe_round_trip_and_literal_eot_stays_text(prepared):
    _tmp, params, meta = prepared
    tok = tokenize.load_tokenizer(params.tokenizer.tokens_dir)
    for text in (make_corpus(20, seed=5), UNICODE, "x", " \n \n = T = \n"):
        # (a loaded tokenizer reads a literal "<|endoftext|>" as the special token: keep it when decoding)
        assert tok.decode(tok.encode(text).ids, skip_special_tokens=False) == text
        assert tok.decode(tok.encode(text.replace("<|endoftext|>", "")).ids) == text.replace("<|endoftext|>", "")
    # the raw text contained "<|endoftext|>" literally: it was encoded as text, not as the special id
    ids = tk.load_split(params.tokenizer.tokens_dir, "test")
    assert int((ids == meta["eot_id"]).sum()) == meta["splits"]["test"]["documents"]


def test_bpe_training_is_deterministic(tmp_path):
    f = tmp_path / "t.txt"
    f.write_text(make_corpus(400, seed=3), encoding="utf-8")
    a = tokenize.train_bpe(f, 320, progress=False).to_str()
    b = tokenize.train_bpe(f, 320, progress=False).to_str()
    assert a == b


def _random_text(rng: random.Random, n: int) -> str:
    # Whitespace runs of every kind around line ends: where a careless cut would change the ids.
    alphabet = [" ", " ", "\n", "\r\n", "\t", "a", "bc", "1", ".", "'s", "é", "\u00a0", "\u2028", " = T = \n", "\n\n"]
    return "".join(rng.choice(alphabet) for _ in range(n))


def test_chunked_encoding_equals_whole_document_encoding(tmp_path):
    rng = random.Random(0)
    texts = [_random_text(rng, rng.randint(1, 80)) for _ in range(120)]
    train = tmp_path / "train.txt"
    train.write_text("".join(texts) * 3, encoding="utf-8", newline="")
    tok = tokenize.train_bpe(train, 400, progress=False)
    cuts = 0
    for i, text in enumerate(texts):
        f = tmp_path / f"t{i}.txt"
        f.write_text(text, encoding="utf-8", newline="")
        chunks = list(tokenize.iter_chunks(f, chunk_chars=1))  # cut wherever it is allowed
        assert "".join(c for _s, c, _w in chunks) == text
        docs: list[str] = []
        for starts_doc, chunk, _w in chunks:
            docs.append(chunk) if starts_doc or not docs else docs.__setitem__(-1, docs[-1] + chunk)
        cuts += len(chunks) - len(docs)
        expected = [i for d in docs for i in tok.encode(d).ids]
        got = [i for e in tok.encode_batch([c for _s, c, _w in chunks]) for i in e.ids]
        assert got == expected, repr(text)
    assert cuts > 50  # the test exercised many cuts inside documents


def test_token_dtype_selection():
    assert tokenize.token_dtype(300) == np.uint16
    assert tokenize.token_dtype(65535) == np.uint16
    assert tokenize.token_dtype(65536) == np.uint32


def _big_vocab_folder(path: Path, size: int) -> None:
    """A byte-level tokenizer.json whose vocabulary (> 65535) needs uint32 ids."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers

    alphabet = pre_tokenizers.ByteLevel.alphabet()
    vocab = {ch: i for i, ch in enumerate(sorted(alphabet))}
    for i in range(size - len(vocab) - 1):
        vocab[f"filler{i}"] = len(vocab)
    vocab["<|endoftext|>"] = len(vocab)
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    path.mkdir()
    tok.save(str(path / "tokenizer.json"))


def test_large_vocabulary_uses_uint32(tmp_path):
    (tmp_path / "corpus.txt").write_text(make_corpus(60), encoding="utf-8")
    _big_vocab_folder(tmp_path / "bigtok", 70000)
    params = make_params(tmp_path, kind="gpt2", name_or_path=str(tmp_path / "bigtok"))
    data.download(params)
    meta = tokenize.tokenize(params, progress=False)
    assert meta["dtype"] == "uint32" and meta["vocab_size"] == 70000 and meta["eot_id"] == 69999
    ids = tk.load_split(params.tokenizer.tokens_dir, "valid")
    assert ids.dtype == np.uint32 and ids[0] == 69999
    tok = tokenize.load_tokenizer(params.tokenizer.tokens_dir)
    assert tok.decode(ids[1:].tolist()) == (tmp_path / "raw" / "valid.txt").read_text(encoding="utf-8")


def test_gpt2_kind_from_vocab_and_merges_folder(tmp_path, prepared):
    _tmp, params, _meta = prepared
    trained = tokenize.load_tokenizer(params.tokenizer.tokens_dir)
    folder = tmp_path / "gpt2like"
    folder.mkdir()
    trained.model.save(str(folder))  # writes vocab.json + merges.txt, the GPT-2 file layout
    assert sorted(p.name for p in folder.iterdir()) == ["merges.txt", "vocab.json"]
    tok, identity = tokenize.load_gpt2(str(folder))
    assert identity["files"] == ["vocab.json", "merges.txt"] and identity["source"] == "local"
    text = make_corpus(30, seed=9)
    assert tok.encode(text).ids == trained.encode(text).ids
    assert tok.token_to_id("<|endoftext|>") == trained.token_to_id("<|endoftext|>")


def test_gpt2_offline_and_missing_folder_fail_clearly(tmp_path):
    (tmp_path / "corpus.txt").write_text(make_corpus(60), encoding="utf-8")
    params = make_params(tmp_path, kind="gpt2", name_or_path="gpt2")  # conftest: HF_HUB_OFFLINE=1
    data.download(params)
    with pytest.raises(DataError, match=r"offline.*tokenizer.name_or_path=DIR"):
        tokenize.tokenize(params, progress=False)
    with pytest.raises(DataError, match="does not exist"):
        tokenize.load_gpt2(str(tmp_path / "no-such-folder"))
    assert not (tmp_path / "tokens").exists()


def test_missing_raw_split_names_download(tmp_path):
    with pytest.raises(DataError, match="hamt download"):
        tokenize.tokenize(make_params(tmp_path), progress=False)


def test_load_split_catches_mismatched_tokenizer_and_truncated_bin(tmp_path, prepared):
    _tmp, params, _meta = prepared
    tokens_dir = tmp_path / "copy"
    shutil.copytree(params.tokenizer.tokens_dir, tokens_dir)
    tk.load_split(tokens_dir, "train")  # the intact copy loads
    # another tokenizer beside the ids
    other = tokenize.train_bpe(Path(params.data.raw_dir) / "valid.txt", 280, progress=False)
    good = (tokens_dir / "tokenizer.json").read_bytes()
    other.save(str(tokens_dir / "tokenizer.json"))
    with pytest.raises(DataError, match="does not match.*hamt tokenize"):
        tk.load_split(tokens_dir, "train")
    (tokens_dir / "tokenizer.json").write_bytes(good)
    # a truncated .bin
    bin_path = tokens_dir / "valid.bin"
    bin_path.write_bytes(bin_path.read_bytes()[:-2])
    with pytest.raises(DataError, match="valid.bin has .*hamt tokenize"):
        tk.load_split(tokens_dir, "valid")
    with pytest.raises(DataError, match="split 'dev'"):
        tk.load_split(tokens_dir, "dev")


def test_cli_download_and_tokenize_micro_profile(tmp_path, monkeypatch, capsys, root):
    from hamt.cli import main

    corpus = tmp_path / "corpus.txt"
    corpus.write_text(make_corpus(600), encoding="utf-8")
    work = tmp_path / "work"
    work.mkdir()
    shutil.copy(root / "params.yaml", work / "params.yaml")
    monkeypatch.chdir(work)
    common = ["--profile", "micro", "--set", "data.source=local", "--set", f"data.local_path={corpus}"]
    assert main(["download", *common]) == 0
    assert main(["tokenize", *common]) == 0
    out = capsys.readouterr().out
    assert "downloaded" in out and "tokenized with bpe" in out and "train" in out
    meta = tk.read_meta(work / "data" / "tokens")
    assert meta["tokenizer"]["requested_vocab_size"] == 512 and meta["vocab_size"] <= 512
    assert len(tk.load_split(work / "data" / "tokens", "train")) == meta["splits"]["train"]["tokens"] > 0
    # a user error is one line on stderr and exit status 2
    assert main(["download", "--profile", "micro", "--set", "data.source=local",
                 "--set", f"data.local_path={tmp_path / 'missing'}"]) == 2
    assert "does not exist" in capsys.readouterr().err


@pytest.mark.parametrize("vocab_words, requested", [(2000, 4096), (30, 4096)], ids=["tiny-vocab", "few-words"])
def test_synthetic_corpus_tokenizes_as_one_document_per_split(tmp_path, vocab_words, requested):
    # the tiny profile's BPE fills its 4096 entries on the default language; a language of a few words
    # runs out of merges first: the vocabulary is then smaller than asked, which every model accepts
    synth = {"train_words": 60000, "valid_words": 3000, "test_words": 3000, "vocab_words": vocab_words}
    if vocab_words < 100:
        synth.update(keys=8, values=8, successors=4)
    params = resolve({"data": {"source": "synthetic", "raw_dir": str(tmp_path / "raw"), "synthetic": synth},
                      "tokenizer": {"kind": "bpe", "vocab_size": requested, "tokens_dir": str(tmp_path / "tokens")}})
    manifest = data.download(params)
    meta = tokenize.tokenize(params, progress=False)
    if vocab_words >= 100:
        assert meta["vocab_size"] == requested
    else:
        assert 256 < meta["vocab_size"] < requested
    tk.check_vocab(meta, requested)
    assert meta["raw_source"] == manifest["source"] and data.corpus_floor(meta["raw_source"]) is not None
    tok = tokenize.load_tokenizer(params.tokenizer.tokens_dir)
    for split in data.SPLITS:
        s, ids = meta["splits"][split], tk.load_split(params.tokenizer.tokens_dir, split)
        assert s["documents"] == 1 and ids[0] == meta["eot_id"]  # no WikiText headings: one document
        assert (s["bytes"], s["words"]) == (manifest["splits"][split]["bytes"], manifest["splits"][split]["words"])
        text = (tmp_path / "raw" / f"{split}.txt").read_text(encoding="utf-8")
        assert tok.decode(ids[1:].tolist(), skip_special_tokens=False) == text
