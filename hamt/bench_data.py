"""Tokenization throughput: ``python -m hamt.bench_data`` prints a markdown table.

Two cases, as the pipeline runs them:
- a byte-level BPE (vocabulary 4,096) trained on Tiny Shakespeare, encoding Tiny Shakespeare;
- GPT-2's BPE (``vocab.json`` + ``merges.txt``) encoding WikiText-2 raw valid.

Each is timed two ways: the stage's path (``hamt.tokenize.encode_file``: safe chunks, parallel
``encode_batch``) and one ``encode`` call on the whole text (sequential), which gives the same ids
up to the end-of-text tokens. Best of ``--repeats`` runs. Data paths default to ``$HAMT_SHARED_DATA``
(else ``/work/shared/data``); a missing file makes its row "skipped" with the reason.
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

import numpy as np

from hamt.tokenize import EOT, encode_file, load_gpt2, token_dtype, train_bpe


class _Sink:
    """A file-like object that only counts bytes (the benchmark measures encoding, not the disk)."""

    def __init__(self):
        self.n = 0

    def write(self, b: bytes) -> int:
        self.n += len(b)
        return len(b)


def _best(fn, repeats: int) -> tuple[float, object]:
    best, result = float("inf"), None
    for _ in range(repeats):
        t0 = time.perf_counter()
        result = fn()
        best = min(best, time.perf_counter() - t0)
    return best, result


def bench_case(name: str, corpus: Path, make_tok, repeats: int) -> list[dict]:
    t0 = time.perf_counter()
    tok = make_tok()
    setup_s = time.perf_counter() - t0
    eot = tok.token_to_id(EOT)
    dtype = token_dtype(tok.get_vocab_size())
    n_bytes = corpus.stat().st_size
    text = corpus.read_text(encoding="utf-8")

    def chunked():
        return encode_file(tok, corpus, _Sink(), eot, dtype, progress=False)["tokens"]

    def whole():
        return len(tok.encode(text).ids)

    rows = []
    for method, fn in (("chunked encode_batch (stage)", chunked), ("one encode call", whole)):
        secs, n_tokens = _best(fn, repeats)
        rows.append({
            "tokenizer": name, "corpus": corpus.name, "MB": n_bytes / 1e6, "tokens": n_tokens,
            "bytes/token": n_bytes / n_tokens, "method": method, "setup_s": setup_s, "seconds": secs,
            "tokens/s": n_tokens / secs, "MB/s": n_bytes / 1e6 / secs,
        })
    return rows


def markdown(rows: list[dict], skipped: list[str]) -> str:
    head = "| tokenizer | corpus | MB | tokens | bytes/token | method | train/load s | encode s | tokens/s | MB/s |"
    lines = [head, "|---|---|---:|---:|---:|---|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(
            f"| {r['tokenizer']} | {r['corpus']} | {r['MB']:.2f} | {r['tokens']:,} | {r['bytes/token']:.2f} | {r['method']} | "
            f"{r['setup_s']:.2f} | {r['seconds']:.3f} | {r['tokens/s']:,.0f} | {r['MB/s']:.2f} |"
        )
    lines += [f"| skipped: {s} | | | | | | | | | |" for s in skipped]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    shared = Path(os.environ.get("HAMT_SHARED_DATA", "/work/shared/data"))
    p = argparse.ArgumentParser(prog="python -m hamt.bench_data", description=__doc__.splitlines()[0])
    p.add_argument("--shakespeare", type=Path, default=shared / "tinyshakespeare" / "input.txt")
    p.add_argument("--wikitext", type=Path, default=shared / "wikitext-2-raw" / "wiki.valid.raw")
    p.add_argument("--gpt2", type=Path, default=shared / "gpt2-tokenizer", help="folder with vocab.json + merges.txt")
    p.add_argument("--vocab-size", type=int, default=4096)
    p.add_argument("--repeats", type=int, default=3)
    args = p.parse_args(argv)

    rows, skipped = [], []
    cases = [
        (f"BPE {args.vocab_size} (trained)", args.shakespeare, [args.shakespeare],
         lambda: train_bpe(args.shakespeare, args.vocab_size, progress=False)),
        ("GPT-2 BPE", args.wikitext, [args.wikitext, args.gpt2 / "vocab.json", args.gpt2 / "merges.txt"],
         lambda: load_gpt2(str(args.gpt2))[0]),
    ]
    for name, corpus, needs, make_tok in cases:
        missing = [str(f) for f in needs if not f.is_file()]
        if missing:
            skipped.append(f"{name}: missing {', '.join(missing)}")
            continue
        rows += bench_case(name, corpus, make_tok, args.repeats)
    threads = os.environ.get("RAYON_NUM_THREADS") or os.environ.get("RAYON_RS_NUM_CPUS") or str(os.cpu_count())
    print(f"tokenization throughput, best of {args.repeats}; {threads} CPU threads available to tokenizers; "
          f"numpy {np.__version__}\n")
    print(markdown(rows, skipped))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
