"""Raw text in: the ``download`` stage (where the corpus comes from, and the manifest that pins it).

``download(params)`` writes ``params.data.raw_dir/{train,valid,test}.txt`` and ``manifest.json``
(bytes, lines, words and sha256 per split, and where the text came from). ``data.source`` says where:

- ``local``: a local folder or file (``data.local_path``, or the environment variable ``HAMT_DATA_DIR``,
  which wins). A local source that lacks some splits is cut by line into contiguous parts
  (``data.split_fractions``), so WikiText-2's valid file or Tiny Shakespeare alone can serve offline;
- ``hub``: the Hugging Face hub (``Salesforce/wikitext``, config ``params.data.dataset``);
- ``synthetic``: the project's own generated language (``hamt/synthetic.py``, ``data.synthetic``),
  whose exact entropy floor goes to ``floor.json`` and the manifest;
- ``auto`` (the default): local if ``HAMT_DATA_DIR`` or ``data.local_path`` is set, else the hub if it
  answers within ``HUB_PROBE_TIMEOUT_S``, else the synthetic corpus, with one line on stderr saying
  how to get WikiText. ``corpus_description(manifest)`` names what was used in one line.

The token ids ``hamt tokenize`` makes from this text are read by ``hamt/tokens.py``.

One file (~440 lines) because the four sources are one decision: they share the split writer, the
carving of missing splits and the manifest, and ``auto`` chooses among them; the parts read top to bottom.

datasets is imported inside the functions that need it (the hub path only).
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
import urllib.error
import urllib.request
from pathlib import Path
from typing import Iterator


from hamt.errors import DataError
from hamt.io import atomic_dir, write_json_atomic

SPLITS = ("train", "valid", "test")
HUB_REPO = "Salesforce/wikitext"
HUB_SPLITS = {"train": "train", "valid": "validation", "test": "test"}
# Seconds to wait for the hub before declaring it unreachable (datasets itself retries for minutes).
HUB_PROBE_TIMEOUT_S = 5.0
MANIFEST = "manifest.json"
FLOOR = "floor.json"

# Accepted local folder layouts, split -> file name. The layout with most files present wins.
LOCAL_LAYOUTS: tuple[dict[str, str], ...] = (
    {"train": "wiki.train.raw", "valid": "wiki.valid.raw", "test": "wiki.test.raw"},
    {"train": "train.txt", "valid": "validation.txt", "test": "test.txt"},
    {"train": "train.txt", "valid": "valid.txt", "test": "test.txt"},
)

# Published identities of well-known files, so the manifest says when a split is the real thing.
KNOWN_SHA256 = {
    "6707892fa3788b5ab9ed78ab5ff37d9fe825f6011a2ad4fcd6a6d467f0e7da57": "WikiText-2 raw train (wiki.train.raw)",
    "4cd0f6876d07a413aa911261ff6d363c72d757d47f0fdd6015702014c89cb9c7": "WikiText-2/-103 raw valid (wiki.valid.raw)",
    "173c87a53759e0201f33e0ccf978e510c2042d7f2cb78229d9a50d79b9e7dd08": "WikiText-2/-103 raw test (wiki.test.raw)",
    "86c4e6aa9db7c042ec79f339dcb96d42b0075e16b8fc2e86bf0ca57e2dc565ed": "Tiny Shakespeare (input.txt)",
}

_OFFLINE_FIX = "--set data.source=local --set data.local_path=DIR or HAMT_DATA_DIR=DIR"
_WIKITEXT_HOWTO = ("for WikiText-2 use --set data.source=hub with network, "
                   "or a local copy: HAMT_DATA_DIR=DIR or --set data.local_path=DIR")


def _env_true(name: str) -> bool:
    return os.environ.get(name, "").strip().upper() in {"1", "ON", "YES", "TRUE"}


def hub_offline_setting() -> str | None:
    """The environment variable that puts the Hugging Face hub offline, if one is set."""
    for name in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE"):
        if _env_true(name):
            return name
    return None


def probe_hub(path: str = f"api/datasets/{HUB_REPO}", timeout: float = HUB_PROBE_TIMEOUT_S) -> str | None:
    """None if the hub answers within ``timeout`` seconds, else the reason it does not.

    Any HTTP answer (even 401/404) means reachable; urllib honours the usual proxy variables.
    """
    endpoint = os.environ.get("HF_ENDPOINT", "https://huggingface.co").rstrip("/")
    req = urllib.request.Request(f"{endpoint}/{path}", method="HEAD")
    try:
        with urllib.request.urlopen(req, timeout=timeout):
            return None
    except urllib.error.HTTPError:
        return None
    except (urllib.error.URLError, OSError) as e:
        reason = getattr(e, "reason", e)
        return f"{endpoint} unreachable ({reason})"


# --------------------------------------------------------------------------------------------------
# Split statistics
# --------------------------------------------------------------------------------------------------


class _SplitWriter:
    """Write one split's bytes while counting lines, words and hashing (stats match the file exactly)."""

    def __init__(self, path: Path):
        self.path = path
        self.f = open(path, "wb")
        self.sha = hashlib.sha256()
        self.bytes = self.lines = self.words = 0

    def write_line(self, raw: bytes, text: str) -> None:
        self.f.write(raw)
        self.sha.update(raw)
        self.bytes += len(raw)
        self.lines += 1
        self.words += len(text.split())

    def close(self, origin: str) -> dict:
        self.f.close()
        sha = self.sha.hexdigest()
        if self.words == 0:
            raise DataError(f"split '{self.path.stem}' ({origin}) is empty; give more text or other data.split_fractions")
        stats = {"bytes": self.bytes, "lines": self.lines, "words": self.words, "sha256": sha, "origin": origin}
        if sha in KNOWN_SHA256:
            stats["identified_as"] = KNOWN_SHA256[sha]
        return stats


def _iter_lines(path: Path) -> Iterator[tuple[bytes, str]]:
    """(raw bytes, decoded text) per line; exact bytes (no newline translation), strict UTF-8."""
    with open(path, "rb") as f:
        for i, raw in enumerate(f, 1):
            try:
                yield raw, raw.decode("utf-8")
            except UnicodeDecodeError as e:
                raise DataError(
                    f"{path}: line {i} is not valid UTF-8 ({e.reason} at byte {e.start}); convert the file to UTF-8"
                ) from None


def _check_nonempty(path: Path) -> int:
    """Number of lines of a readable, non-empty UTF-8 file (DataError otherwise)."""
    if not path.is_file():
        raise DataError(f"{path}: no such file; check data.local_path / HAMT_DATA_DIR")
    n = words = 0
    for _raw, text in _iter_lines(path):
        n += 1
        words += bool(text.strip())
    if words == 0:
        raise DataError(f"{path}: file is empty (no text); point data.local_path at a file with text")
    return n


# --------------------------------------------------------------------------------------------------
# Local sources
# --------------------------------------------------------------------------------------------------


def _find_local(path: Path) -> tuple[dict[str, Path], str]:
    """Map split -> file for a local folder or file, and a description of the layout found."""
    if path.is_file():
        return {}, "single file"
    if not path.is_dir():
        raise DataError(f"local data path {path} does not exist; set data.local_path (or HAMT_DATA_DIR) to a folder or file")
    best: dict[str, Path] = {}
    for layout in LOCAL_LAYOUTS:
        found = {s: path / name for s, name in layout.items() if (path / name).is_file()}
        if len(found) > len(best):
            best = found
    if best:
        return best, "folder: " + ", ".join(p.name for p in best.values())
    files = [p for p in sorted(path.iterdir()) if p.is_file() and not p.name.startswith(".") and p.suffix in (".txt", ".raw")]
    if len(files) == 1:
        return {"__single__": files[0]}, f"folder with one text file: {files[0].name}"
    names = "wiki.{train,valid,test}.raw, {train,validation,test}.txt, {train,valid,test}.txt or one .txt file"
    raise DataError(f"{path}: no recognised text files (expected {names})")


def _carve_bounds(n_lines: int, fractions: list[float]) -> list[int]:
    """Contiguous cut points (by line) giving each part its share, at least one line each."""
    total = sum(fractions)
    bounds, acc = [0], 0.0
    for i, f in enumerate(fractions[:-1]):
        acc += f / total
        remaining = len(fractions) - 1 - i  # parts still to come after this one
        b = min(max(round(n_lines * acc), bounds[-1] + 1), n_lines - remaining)
        bounds.append(b)
    bounds.append(n_lines)
    return bounds


def _write_local(path: Path, fractions: list[float], out: Path) -> tuple[dict, dict]:
    """Copy or carve the local splits into ``out``; return (per-split stats, source description)."""
    found, layout = _find_local(path)
    single = found.pop("__single__", path if path.is_file() else None)
    if single is not None:
        found = {}
    # The donor is the first present split (or the single file); missing splits are carved from it.
    donor_split = next((s for s in SPLITS if s in found), None)
    donor = found[donor_split] if donor_split else single
    carved = [s for s in SPLITS if s not in found or s == donor_split]
    stats: dict[str, dict] = {}
    for split, file in found.items():
        if split == donor_split and len(carved) > 1:
            continue
        _check_nonempty(file)
        w = _SplitWriter(out / f"{split}.txt")
        try:
            for raw, text in _iter_lines(file):
                w.write_line(raw, text)
        finally:
            w.f.close()
        stats[split] = w.close(f"{file.name}")
    if len(carved) > 1 or single is not None:
        n = _check_nonempty(donor)
        if n < len(carved):
            raise DataError(f"{donor}: {n} line(s) cannot be split into {len(carved)} parts; give a longer file")
        bounds = _carve_bounds(n, [fractions[SPLITS.index(s)] for s in carved])
        stats.update(_carve(donor, carved, bounds, out))
    source = {"kind": "local", "path": str(path), "layout": layout}
    if len(carved) > 1:
        source["carved"] = {"from": donor.name, "splits": carved, "fractions": fractions}
    return {s: stats[s] for s in SPLITS}, source


def _carve(donor: Path, splits: list[str], bounds: list[int], out: Path) -> dict[str, dict]:
    stats = {}
    lines = _iter_lines(donor)
    for k, split in enumerate(splits):
        lo, hi = bounds[k], bounds[k + 1]
        w = _SplitWriter(out / f"{split}.txt")
        try:
            for _ in range(hi - lo):
                raw, text = next(lines)
                w.write_line(raw, text)
        finally:
            w.f.close()
        stats[split] = w.close(f"{donor.name} lines {lo + 1}-{hi} of {bounds[-1]}")
    return stats


# --------------------------------------------------------------------------------------------------
# Hub source
# --------------------------------------------------------------------------------------------------


def _offline_error(dataset: str, why: str) -> DataError:
    return DataError(f"cannot download {HUB_REPO} ({dataset}): {why}; use a local copy: {_OFFLINE_FIX}, "
                     "or the generated corpus: --set data.source=synthetic")


def _load_hub(dataset: str):
    """``datasets.load_dataset`` with a fast, one-line failure when the hub cannot be reached."""
    offline = hub_offline_setting()
    if offline is None:
        why = probe_hub()
        if why is not None:
            raise _offline_error(dataset, f"{why} (with a cached copy, set HF_DATASETS_OFFLINE=1)")
    import datasets  # heavy: imported only on this path

    try:
        return datasets.load_dataset(HUB_REPO, dataset)
    except Exception as e:  # datasets raises many types (ConnectionError, FileNotFoundError, ValueError, ...)
        detail = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        if offline is not None:
            raise _offline_error(dataset, f"the hub is offline ({offline}=1) and no cached copy was found ({detail})") from e
        raise _offline_error(dataset, detail) from e


def _hub_rows_to_lines(rows) -> Iterator[str]:
    """WikiText rows are the lines of the original files; blank lines (" \\n") come back as ""."""
    for row in rows:
        if not row:
            yield " \n"
        else:
            yield row if row.endswith("\n") else row + "\n"


def _write_hub(dataset: str, out: Path) -> tuple[dict, dict]:
    ds = _load_hub(dataset)
    stats = {}
    for split, hub_split in HUB_SPLITS.items():
        if hub_split not in ds:
            raise DataError(f"{HUB_REPO} ({dataset}) has no '{hub_split}' split; use a WikiText config")
        w = _SplitWriter(out / f"{split}.txt")
        try:
            for text in _hub_rows_to_lines(ds[hub_split]["text"]):
                w.write_line(text.encode("utf-8"), text)
        finally:
            w.f.close()
        stats[split] = w.close(f"{HUB_REPO}/{dataset}:{hub_split}")
    return stats, {"kind": "hub", "repo": HUB_REPO, "dataset": dataset}


# --------------------------------------------------------------------------------------------------
# The stage
# --------------------------------------------------------------------------------------------------


def _write_synthetic(settings, out: Path) -> tuple[dict, dict]:
    """Generate the synthetic splits into ``out``; return (per-split stats, source description with the floor)."""
    from hamt import synthetic

    texts, floor = synthetic.generate_corpus(settings)
    stats = {}
    for i, split in enumerate(SPLITS):
        w = _SplitWriter(out / f"{split}.txt")
        try:
            for line in texts[split].splitlines(keepends=True):
                w.write_line(line.encode("utf-8"), line)
        finally:
            w.f.close()
        stats[split] = w.close(f"{floor['generator']} v{floor['version']} seed {settings.seed} stream {i}")
    write_json_atomic(out / FLOOR, floor)
    source = {"kind": "synthetic", "generator": floor["generator"], "version": floor["version"],
              "settings": floor["settings"], "floor_file": FLOOR,
              "floor": {"entropy_rate": floor["entropy_rate"], "splits": floor["splits"]}}
    return stats, source


def resolve_source(params) -> tuple[str, Path | None, str]:
    """(source, local path, how it was chosen), probing the hub for ``auto``.

    ``HAMT_DATA_DIR`` overrides params for ``auto`` and ``local``; ``hub`` and ``synthetic`` are forced.
    For ``auto`` without local data, "how it was chosen" is ``auto: <why the hub is not used>`` when it
    falls back to the synthetic corpus.
    """
    d = params.data
    env = os.environ.get("HAMT_DATA_DIR", "").strip()
    if env and d.source in ("auto", "local"):
        return "local", Path(env).expanduser(), "HAMT_DATA_DIR"
    if env:
        print(f"hamt download: HAMT_DATA_DIR is ignored because data.source is '{d.source}'", file=sys.stderr, flush=True)
    if d.source == "local":
        if not d.local_path:
            raise DataError(f"data.source is 'local' but data.local_path is not set; {_OFFLINE_FIX}")
        return "local", Path(d.local_path).expanduser(), "data.local_path"
    if d.source in ("hub", "synthetic"):
        return d.source, None, "data.source"
    if d.local_path:
        return "local", Path(d.local_path).expanduser(), "data.local_path"
    offline = hub_offline_setting()
    why = f"{offline}=1 is set" if offline else probe_hub()
    if why is None:
        return "hub", None, "auto"
    return "synthetic", None, f"auto: {why}"


def _note_synthetic(why: str, source: dict) -> None:
    """The one stderr line of an ``auto`` run that fell back to the synthetic corpus."""
    print(f"hamt download: the Hugging Face hub is not used ({why}); using the generated "
          f"{corpus_description({'source': source})}; {_WIKITEXT_HOWTO}", file=sys.stderr, flush=True)


def download(params) -> dict:
    """Fetch the raw splits into ``params.data.raw_dir`` and return the manifest written beside them."""
    source, local, chosen_by = resolve_source(params)
    raw_dir = Path(params.data.raw_dir)
    with atomic_dir(raw_dir) as tmp:
        if source == "hub":
            try:
                splits, desc = _write_hub(params.data.dataset, tmp)
            except DataError as e:
                if chosen_by != "auto":
                    raise
                source, chosen_by = "synthetic", f"auto: {e}"  # the hub answered the probe, then failed
        if source == "local":
            splits, desc = _write_local(local, list(params.data.split_fractions), tmp)
        elif source == "synthetic":
            splits, desc = _write_synthetic(params.data.synthetic, tmp)
        desc["chosen_by"] = chosen_by
        manifest = {"source": desc, "splits": splits}
        write_json_atomic(tmp / MANIFEST, manifest)
    if source == "synthetic" and chosen_by.startswith("auto: "):
        _note_synthetic(chosen_by[len("auto: "):], desc)
    return manifest


def read_manifest(raw_dir: str | Path) -> dict:
    path = Path(raw_dir) / MANIFEST
    if not path.is_file():
        raise DataError(f"no {MANIFEST} in {raw_dir}; run `hamt download` first")
    return json.loads(path.read_text(encoding="utf-8"))


def _source_of(manifest_or_source: dict) -> dict:
    """The ``source`` entry of a manifest, or the entry itself (``meta.json``'s ``raw_source``)."""
    src = manifest_or_source.get("source", manifest_or_source) if manifest_or_source else {}
    return src if isinstance(src, dict) else {}


def _wikitext_name(dataset: str) -> str:
    return {"wikitext-2": "WikiText-2", "wikitext-103": "WikiText-103"}.get("-".join(dataset.split("-")[:2]), dataset)


def corpus_description(manifest: dict) -> str:
    """One line naming the data a manifest describes (a manifest, or its ``source`` entry).

    E.g. "synthetic corpus (seed 0, entropy floor 0.590 bits/byte)", "WikiText-2 (hub)",
    "local text /data/wiki (WikiText-2 raw train, ...)".
    """
    src = _source_of(manifest)
    kind = src.get("kind")
    if kind == "synthetic":
        rate = src["floor"]["entropy_rate"]["bits_per_byte"]
        return f"synthetic corpus (seed {src['settings']['seed']}, entropy floor {rate:.3f} bits/byte)"
    if kind == "hub":
        return f"{_wikitext_name(src.get('dataset', ''))} (hub)"
    if kind == "local":
        known = sorted({s["identified_as"] for s in manifest.get("splits", {}).values() if "identified_as" in s})
        return f"local text {src.get('path')}" + (f" ({'; '.join(known)})" if known else "")
    return "unknown corpus"


def corpus_floor(manifest: dict, split: str = "test") -> dict | None:
    """The true floor of a split of the synthetic corpus, None for other data.

    ``bits_per_byte`` and ``nats_per_word`` are the realised floor of that split's very text (what a
    model's bpb and log word perplexity on the whole split compare with); ``rate_bits_per_byte`` and
    ``rate_nats_per_word`` are the source's entropy rate, and ``recall_blind_bits_per_byte`` the rate
    of a model perfect at all but recall.
    """
    src = _source_of(manifest)
    if src.get("kind") != "synthetic":
        return None
    rate, s = src["floor"]["entropy_rate"], src["floor"]["splits"][split]
    return {"split": split, "bits_per_byte": s["bits_per_byte"], "nats_per_word": s["nats_per_word"],
            "rate_bits_per_byte": rate["bits_per_byte"], "rate_nats_per_word": rate["nats_per_word"],
            "recall_blind_bits_per_byte": rate["recall_blind_bits_per_byte"]}


def cli_download(params, args) -> int:
    manifest = download(params)
    src = manifest["source"]
    where = {"hub": lambda: f"{src['repo']} ({src['dataset']})", "local": lambda: f"{src['path']} [{src['layout']}]",
             "synthetic": lambda: f"{src['generator']} v{src['version']}"}[src["kind"]]()
    print(f"downloaded {corpus_description(manifest)}: {where} -> {params.data.raw_dir}")
    for split, s in manifest["splits"].items():
        known = f"  = {s['identified_as']}" if "identified_as" in s else ""
        print(f"  {split:5s} {s['bytes']:>12,} bytes {s['lines']:>9,} lines {s['words']:>11,} words  {s['origin']}{known}")
    if src["kind"] == "synthetic":
        floors = ", ".join(f"{k} {v['bits_per_byte']:.4f}" for k, v in src["floor"]["splits"].items())
        print(f"  floor (bits/byte, exact -log p of each split's text): {floors}; see {params.data.raw_dir}/{FLOOR}")
    return 0
