"""The download stage (local layouts, splitting, manifest, offline and bad-input errors) and the loaders."""

from __future__ import annotations

import hashlib
import json
import sys
import time
import types
from pathlib import Path

import pytest

from conftest import make_corpus
from hamt import data
from hamt.errors import DataError
from hamt.params import resolve


def make_params(tmp_path: Path, **data_keys):
    d = {"raw_dir": str(tmp_path / "raw"), **data_keys}
    return resolve({"data": d, "tokenizer": {"tokens_dir": str(tmp_path / "tokens")}})


def sha(b: bytes) -> str:
    return hashlib.sha256(b).hexdigest()


def split_texts(n_lines: int = 120) -> dict[str, bytes]:
    return {s: make_corpus(n_lines, seed=i).encode() for i, s in enumerate(data.SPLITS)}


# --------------------------------------------------------------------------------------------------
# Local sources
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("layout", data.LOCAL_LAYOUTS, ids=lambda l: l["valid"])
def test_local_folder_layouts_copy_exactly(tmp_path, layout):
    src = tmp_path / "src"
    src.mkdir()
    texts = split_texts()
    for split, name in layout.items():
        (src / name).write_bytes(texts[split])
    manifest = data.download(make_params(tmp_path, source="local", local_path=str(src)))
    for split in data.SPLITS:
        out = (tmp_path / "raw" / f"{split}.txt").read_bytes()
        assert out == texts[split]
        s = manifest["splits"][split]
        assert s["bytes"] == len(out) and s["sha256"] == sha(out)
        assert s["lines"] == out.count(b"\n") and s["words"] == len(out.decode().split())
    assert manifest["source"]["kind"] == "local" and "carved" not in manifest["source"]
    assert json.loads((tmp_path / "raw" / "manifest.json").read_text()) == manifest


def test_single_file_is_split_contiguously_by_fractions(tmp_path, corpus_file):
    params = make_params(tmp_path, source="local", local_path=str(corpus_file), split_fractions=[0.8, 0.1, 0.1])
    manifest = data.download(params)
    parts = [(tmp_path / "raw" / f"{s}.txt").read_bytes() for s in data.SPLITS]
    original = corpus_file.read_bytes()
    assert b"".join(parts) == original  # contiguous, nothing lost or reordered
    n = original.count(b"\n")
    lines = [manifest["splits"][s]["lines"] for s in data.SPLITS]
    assert sum(lines) == n
    assert lines == [round(0.8 * n), round(0.9 * n) - round(0.8 * n), n - round(0.9 * n)]
    assert manifest["source"]["carved"]["splits"] == list(data.SPLITS)
    # deterministic: a second run gives the same files
    again = data.download(params)
    assert [again["splits"][s]["sha256"] for s in data.SPLITS] == [sha(p) for p in parts]


def test_partial_folder_keeps_present_splits_and_carves_the_rest(tmp_path):
    # WikiText-2 with only valid + test: test is kept, train and valid are carved from valid.
    src = tmp_path / "src"
    src.mkdir()
    texts = split_texts(200)
    (src / "wiki.valid.raw").write_bytes(texts["valid"])
    (src / "wiki.test.raw").write_bytes(texts["test"])
    manifest = data.download(make_params(tmp_path, source="local", local_path=str(src)))
    raw = tmp_path / "raw"
    assert (raw / "test.txt").read_bytes() == texts["test"]
    assert (raw / "train.txt").read_bytes() + (raw / "valid.txt").read_bytes() == texts["valid"]
    assert manifest["source"]["carved"] == {"from": "wiki.valid.raw", "splits": ["train", "valid"], "fractions": [0.9, 0.05, 0.05]}
    n = texts["valid"].count(b"\n")
    assert manifest["splits"]["train"]["lines"] == round(n * 0.9 / 0.95)


@pytest.mark.parametrize("source", ["auto", "local"])
def test_folder_with_one_text_file_and_env_override(tmp_path, monkeypatch, source):
    src = tmp_path / "shakespeare"
    src.mkdir()
    (src / "input.txt").write_text(make_corpus(300), encoding="utf-8")
    monkeypatch.setenv("HAMT_DATA_DIR", str(src))
    # the env var wins over data.local_path and over auto's hub probe (which must not run)
    monkeypatch.setattr(data, "probe_hub", lambda *a, **k: pytest.fail("auto with HAMT_DATA_DIR must not probe the hub"))
    manifest = data.download(make_params(tmp_path, source=source, local_path=str(tmp_path / "elsewhere")))
    assert manifest["source"]["chosen_by"] == "HAMT_DATA_DIR"
    assert manifest["source"]["layout"].endswith("input.txt")
    assert sum(manifest["splits"][s]["bytes"] for s in data.SPLITS) == (src / "input.txt").stat().st_size
    assert data.corpus_description(manifest) == f"local text {src}"
    assert data.corpus_floor(manifest) is None


@pytest.mark.parametrize(
    "content, match",
    [(b"", "empty"), (b" \n\n  \n", "empty"), (b"good line\n\xff\xfe bad bytes\n", "not valid UTF-8")],
    ids=["empty", "blank", "latin1"],
)
def test_bad_local_input_raises_dataerror_and_keeps_old_output(tmp_path, corpus_file, content, match):
    data.download(make_params(tmp_path, source="local", local_path=str(corpus_file)))
    before = (tmp_path / "raw" / "manifest.json").read_bytes()
    bad = tmp_path / "bad.txt"
    bad.write_bytes(content)
    with pytest.raises(DataError, match=match):
        data.download(make_params(tmp_path, source="local", local_path=str(bad)))
    assert (tmp_path / "raw" / "manifest.json").read_bytes() == before  # the failed run changed nothing
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".raw.")]  # and left no temp folder


def test_missing_paths_and_unset_local_path(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        data.download(make_params(tmp_path, source="local", local_path=str(tmp_path / "nope")))
    with pytest.raises(DataError, match="data.local_path"):
        data.download(make_params(tmp_path, source="local"))
    empty = tmp_path / "emptydir"
    empty.mkdir()
    with pytest.raises(DataError, match="no recognised text files"):
        data.download(make_params(tmp_path, source="local", local_path=str(empty)))
    assert not (tmp_path / "raw").exists()


def test_failure_after_some_splits_were_written_leaves_nothing(tmp_path):
    # train and valid are written before the test part turns out blank: the whole run must vanish
    f = tmp_path / "tail-blank.txt"
    f.write_text(make_corpus(186) + " \n" * 10, encoding="utf-8")  # 200 lines: test = the last 10
    with pytest.raises(DataError, match="split 'test'.*empty"):
        data.download(make_params(tmp_path, source="local", local_path=str(f)))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["tail-blank.txt"]


def test_too_short_file_cannot_be_split(tmp_path):
    f = tmp_path / "two.txt"
    f.write_text("one line\nanother line\n", encoding="utf-8")
    with pytest.raises(DataError, match="cannot be split"):
        data.download(make_params(tmp_path, source="local", local_path=str(f)))


# --------------------------------------------------------------------------------------------------
# Hub source
# --------------------------------------------------------------------------------------------------


def test_offline_hub_fails_fast_with_the_setting_to_use(tmp_path):
    # conftest sets HF_HUB_OFFLINE=1. The bound is generous on purpose: it only guards against
    # datasets' retry loop, which takes minutes when nothing stops it.
    t0 = time.monotonic()
    with pytest.raises(DataError) as err:
        data.download(make_params(tmp_path, source="hub"))
    assert time.monotonic() - t0 < 60
    msg = str(err.value)
    assert "\n" not in msg
    assert "data.source=local" in msg and "data.local_path=DIR" in msg and "HAMT_DATA_DIR" in msg
    assert "data.source=synthetic" in msg  # forced hub never falls back, but says how to
    assert "HF_HUB_OFFLINE" in msg
    assert not (tmp_path / "raw").exists()


def test_unreachable_hub_fails_before_calling_datasets(tmp_path, monkeypatch):
    for var in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")  # nothing listens there: refused at once

    def must_not_run(*a, **k):
        raise AssertionError("datasets.load_dataset must not be called when the hub is unreachable")

    monkeypatch.setitem(sys.modules, "datasets", types.SimpleNamespace(load_dataset=must_not_run))
    with pytest.raises(DataError, match="unreachable.*data.source=local"):
        data.download(make_params(tmp_path, source="hub"))


def test_hub_rows_become_the_original_lines(tmp_path, monkeypatch):
    for var in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setattr(data, "probe_hub", lambda *a, **k: None)
    # the HF WikiText rows: one per line of the original file, blank lines as ""
    rows = ["", " = Title = \n", "", " Some text here .\n", ""]
    calls = []

    def fake_load_dataset(repo, config):
        calls.append((repo, config))
        return {"train": {"text": rows}, "validation": {"text": rows[:2]}, "test": {"text": rows[1:4]}}

    monkeypatch.setitem(sys.modules, "datasets", types.SimpleNamespace(load_dataset=fake_load_dataset))
    manifest = data.download(make_params(tmp_path, source="hub", dataset="wikitext-103-raw-v1"))
    assert calls == [("Salesforce/wikitext", "wikitext-103-raw-v1")]
    train = (tmp_path / "raw" / "train.txt").read_text(encoding="utf-8")
    assert train == " \n = Title = \n \n Some text here .\n \n"
    assert manifest["splits"]["train"]["lines"] == 5 and manifest["splits"]["train"]["words"] == 7
    assert manifest["source"] == {"kind": "hub", "repo": "Salesforce/wikitext", "dataset": "wikitext-103-raw-v1",
                                  "chosen_by": "data.source"}
    assert data.corpus_description(manifest) == "WikiText-103 (hub)"


# --------------------------------------------------------------------------------------------------
# The synthetic corpus and data.source: auto
# --------------------------------------------------------------------------------------------------

SMALL = {"train_words": 3000, "valid_words": 600, "test_words": 600, "vocab_words": 200}


def fake_hub(monkeypatch, probe=None, fail: Exception | None = None) -> list:
    """An online environment whose hub probe returns ``probe`` and whose datasets serves tiny WikiText rows."""
    for var in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setattr(data, "probe_hub", lambda *a, **k: probe)
    calls = []

    def load_dataset(repo, config):
        calls.append((repo, config))
        if fail is not None:
            raise fail
        rows = [" = Title = \n", " Some text here .\n"]
        return {"train": {"text": rows}, "validation": {"text": rows}, "test": {"text": rows}}

    monkeypatch.setitem(sys.modules, "datasets", types.SimpleNamespace(load_dataset=load_dataset))
    return calls


def test_forced_synthetic_writes_the_corpus_and_its_floor(tmp_path, monkeypatch, capsys):
    from hamt import synthetic

    monkeypatch.setenv("HAMT_DATA_DIR", str(tmp_path / "ignored"))  # forced synthetic wins over the env var
    params = make_params(tmp_path, source="synthetic", synthetic=SMALL)
    manifest = data.download(params)
    assert "HAMT_DATA_DIR is ignored" in capsys.readouterr().err
    src, raw = manifest["source"], tmp_path / "raw"
    assert src["kind"] == "synthetic" and src["chosen_by"] == "data.source" and src["settings"]["vocab_words"] == 200
    texts, floor = synthetic.generate_corpus(params.data.synthetic)
    assert json.loads((raw / data.FLOOR).read_text()) == floor  # floor.json: the same numbers as the manifest
    assert src["floor"] == {"entropy_rate": floor["entropy_rate"], "splits": floor["splits"]}
    for split in data.SPLITS:
        out = (raw / f"{split}.txt").read_bytes()
        assert out == texts[split].encode()
        s, f = manifest["splits"][split], floor["splits"][split]
        assert s["bytes"] == f["bytes"] == len(out) and s["words"] == f["words"] == len(out.split())
        assert s["sha256"] == sha(out) and s["words"] >= SMALL[f"{split}_words"]
    rate = src["floor"]["entropy_rate"]["bits_per_byte"]
    assert data.corpus_description(manifest) == f"synthetic corpus (seed 0, entropy floor {rate:.3f} bits/byte)"
    assert data.corpus_description(src) == data.corpus_description(manifest)  # meta.json's raw_source works too
    fl = data.corpus_floor(manifest, "valid")
    assert fl["bits_per_byte"] == floor["splits"]["valid"]["bits_per_byte"] and fl["rate_bits_per_byte"] == rate
    assert fl["recall_blind_bits_per_byte"] > rate
    again = data.download(params)  # deterministic: the same manifest, byte for byte
    assert json.dumps(again, sort_keys=True) == json.dumps(manifest, sort_keys=True)


def test_auto_offline_uses_the_synthetic_corpus_and_says_how_to_get_wikitext(tmp_path, monkeypatch, capsys):
    # conftest sets HF_HUB_OFFLINE=1: auto must not even probe the hub
    monkeypatch.setattr(data, "probe_hub", lambda *a, **k: pytest.fail("offline: no probe"))
    manifest = data.download(make_params(tmp_path, synthetic=SMALL))  # data.source defaults to auto
    assert manifest["source"]["kind"] == "synthetic"
    assert manifest["source"]["chosen_by"] == "auto: HF_HUB_OFFLINE=1 is set"
    err = capsys.readouterr().err
    assert err.count("\n") == 1, err  # exactly one line
    assert "HF_HUB_OFFLINE=1" in err and data.corpus_description(manifest) in err
    assert "--set data.source=hub" in err and "HAMT_DATA_DIR=DIR" in err and "data.local_path=DIR" in err


def test_auto_unreachable_hub_uses_the_synthetic_corpus(tmp_path, monkeypatch, capsys):
    calls = fake_hub(monkeypatch, probe="https://huggingface.co unreachable (timed out)")
    manifest = data.download(make_params(tmp_path, synthetic=SMALL))
    assert calls == []  # datasets is never asked
    assert manifest["source"]["kind"] == "synthetic"
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "unreachable (timed out)" in err and "--set data.source=hub" in err


def test_auto_uses_the_hub_when_it_answers(tmp_path, monkeypatch, capsys):
    calls = fake_hub(monkeypatch, probe=None)
    manifest = data.download(make_params(tmp_path))
    assert calls == [("Salesforce/wikitext", "wikitext-2-raw-v1")]
    assert manifest["source"]["kind"] == "hub" and manifest["source"]["chosen_by"] == "auto"
    assert data.corpus_description(manifest) == "WikiText-2 (hub)" and data.corpus_floor(manifest) is None
    assert capsys.readouterr().err == ""


def test_auto_falls_back_when_the_hub_answers_but_the_download_fails(tmp_path, monkeypatch, capsys):
    fake_hub(monkeypatch, probe=None, fail=ConnectionError("reset by peer"))
    manifest = data.download(make_params(tmp_path, synthetic=SMALL))
    assert manifest["source"]["kind"] == "synthetic" and "reset by peer" in manifest["source"]["chosen_by"]
    assert sorted(p.name for p in (tmp_path / "raw").iterdir()) == ["floor.json", "manifest.json", "test.txt", "train.txt", "valid.txt"]
    assert capsys.readouterr().err.count("\n") == 1


def test_forced_hub_never_falls_back(tmp_path, monkeypatch):
    fake_hub(monkeypatch, probe="https://huggingface.co unreachable (refused)")
    with pytest.raises(DataError, match="unreachable.*data.source=synthetic"):
        data.download(make_params(tmp_path, source="hub"))
    assert not (tmp_path / "raw").exists()


def test_auto_with_local_path_is_local(tmp_path, monkeypatch, corpus_file):
    monkeypatch.setattr(data, "probe_hub", lambda *a, **k: pytest.fail("auto with local_path must not probe the hub"))
    manifest = data.download(make_params(tmp_path, local_path=str(corpus_file)))
    assert manifest["source"]["kind"] == "local" and manifest["source"]["chosen_by"] == "data.local_path"


def test_cli_download_prints_the_corpus_and_its_floor(tmp_path, monkeypatch, capsys, root):
    from hamt.cli import main

    work = tmp_path / "work"
    work.mkdir()
    (work / "params.yaml").write_bytes((root / "params.yaml").read_bytes())
    monkeypatch.chdir(work)
    sets = [x for k, v in SMALL.items() for x in ("--set", f"data.synthetic.{k}={v}")]
    assert main(["download", "--profile", "micro", "--set", "data.source=synthetic", *sets]) == 0
    out = capsys.readouterr().out
    manifest = data.read_manifest(work / "data" / "raw")
    assert out.startswith(f"downloaded {data.corpus_description(manifest)}")
    assert "floor (bits/byte" in out and f"{manifest['source']['floor']['splits']['test']['bits_per_byte']:.4f}" in out


def test_synthetic_params_are_checked_by_name(tmp_path):
    from hamt.errors import ConfigError

    with pytest.raises(ConfigError, match="data.synthetic.recall_slots"):
        make_params(tmp_path, synthetic={"keys": 2, "recall_slots": 3})
    with pytest.raises(ConfigError, match="unknown key 'data.synthetic.sede'"):
        make_params(tmp_path, synthetic={"sede": 1})
