"""``hamt bench tokenize``: tokenizer training/loading and encoding speed, as the pipeline runs them.

Two cases (files under ``bench.tokenize.data_dir``, env ``HAMT_SHARED_DATA`` wins):
- a byte-level BPE (``bench.tokenize.vocab_size``) trained on Tiny Shakespeare, encoding Tiny Shakespeare;
- GPT-2's BPE (``vocab.json`` + ``merges.txt``) encoding WikiText-2 raw valid.

Each is timed two ways: the stage's path (``hamt.tokenize.encode_file``: safe chunks, parallel
``encode_batch``) and one ``encode`` call on the whole text (sequential), which gives the same ids
up to the end-of-text tokens. Best of ``bench.tokenize.repeats`` runs. A missing file makes its row
"skipped" with the reason.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

from hamt.bench.meta import header
from hamt.tables import md_table


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
    """Two rows (the stage's chunked encoding, one encode call) for one tokenizer and corpus."""
    from hamt.tokenize import EOT, encode_file, token_dtype

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
            "tokenizer": name, "corpus": corpus.name, "status": "ok", "MB": n_bytes / 1e6, "tokens": n_tokens,
            "bytes/token": n_bytes / n_tokens, "method": method, "setup_s": setup_s, "seconds": secs,
            "tokens/s": n_tokens / secs, "MB/s": n_bytes / 1e6 / secs,
        })
    return rows


def bench_tokenize(tp) -> list[dict]:
    """Rows of both cases for ``bench.tokenize`` settings ``tp``; a case with a missing file is one skipped row."""
    from hamt.tokenize import load_gpt2, train_bpe

    root = Path(os.environ.get("HAMT_SHARED_DATA") or tp.data_dir)
    shakespeare, wikitext, gpt2 = root / tp.shakespeare, root / tp.wikitext, root / tp.gpt2_tokenizer
    cases = [
        (f"BPE {tp.vocab_size} (trained)", shakespeare, [shakespeare],
         lambda: train_bpe(shakespeare, tp.vocab_size, progress=False)),
        ("GPT-2 BPE", wikitext, [wikitext, gpt2 / "vocab.json", gpt2 / "merges.txt"], lambda: load_gpt2(str(gpt2))[0]),
    ]
    threads = os.environ.get("RAYON_NUM_THREADS") or os.environ.get("RAYON_RS_NUM_CPUS") or str(os.cpu_count())
    rows = []
    for name, corpus, needs, make_tok in cases:
        missing = [str(f) for f in needs if not f.is_file()]
        if missing:
            rows.append({"tokenizer": name, "status": "skipped", "reason": f"missing {', '.join(missing)}"})
            continue
        rows += bench_case(name, corpus, make_tok, tp.repeats)
    return [{**r, "repeats": tp.repeats, "tokenizer_threads": threads} for r in rows]


def render(rows: list[dict], info: dict) -> str:
    ok = [r for r in rows if r["status"] == "ok"]
    title = (f"### Tokenization throughput (best of {rows[0]['repeats']}; {rows[0]['tokenizer_threads']} CPU threads "
             "available to tokenizers)\n\n")
    body = md_table(
        ["tokenizer", "corpus", "MB", "tokens", "bytes/token", "method", "train/load s", "encode s", "tokens/s", "MB/s"],
        [[r["tokenizer"], r["corpus"], f"{r['MB']:.2f}", r["tokens"], f"{r['bytes/token']:.2f}", r["method"],
          f"{r['setup_s']:.2f}", f"{r['seconds']:.3f}", r["tokens/s"], f"{r['MB/s']:.2f}"] for r in ok],
    )
    skipped = "".join(f"\n\nskipped: {r['tokenizer']}: {r['reason']}" for r in rows if r["status"] != "ok")
    return header(info) + title + body + skipped + "\n"
