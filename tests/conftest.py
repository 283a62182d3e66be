"""Shared test setup: an isolated, offline environment and small fixtures made on the fly.

Tests never read ../shared: they make their own tiny corpora here.
"""

from __future__ import annotations

import os
import random
import tempfile
from pathlib import Path

import pytest

_TMP = Path(tempfile.mkdtemp(prefix="hamt-tests-"))
for var, sub in {
    "TMPDIR": "tmp", "TORCHINDUCTOR_CACHE_DIR": "inductor", "MPLCONFIGDIR": "mpl", "WANDB_DIR": "wandb",
    "WANDB_CACHE_DIR": "wandb-cache", "WANDB_DATA_DIR": "wandb-data", "WANDB_CONFIG_DIR": "wandb-config",
    "HF_HOME": "hf", "TRITON_CACHE_DIR": "triton",
}.items():
    (_TMP / sub).mkdir(parents=True, exist_ok=True)
    os.environ[var] = str(_TMP / sub)
# One intra-op thread everywhere (before torch is imported): tests compare weights bitwise between this
# process and training subprocesses, and float reductions split over different thread pools round
# differently; it also keeps 2-process DDP tests from oversubscribing a 2-core machine.
os.environ["OMP_NUM_THREADS"] = "1"
os.environ.setdefault("USERNAME", "hamt-tests")
os.environ.setdefault("METAFLOW_USER", "hamt-tests")
os.environ["DVC_NO_ANALYTICS"] = "1"
os.environ["WANDB_MODE"] = "disabled"
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["HF_DATASETS_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
os.environ.pop("HAMT_DATA_DIR", None)

ROOT = Path(__file__).resolve().parents[1]

_WORDS = (
    "the a memory holographic key value binds unbinds slot frequency gate decay token sequence model "
    "river mountain city stone light music garden winter summer ocean forest bright quiet ancient "
    "king queen knight castle horse sword crown battle peace song story word letter number"
).split()


def make_corpus(n_lines: int = 2000, seed: int = 0) -> str:
    """Deterministic English-like text with structure a small model can learn."""
    rng = random.Random(seed)
    lines = []
    for i in range(n_lines):
        if i % 50 == 0:
            lines.append(f" = Section {i // 50} = ")
        n = rng.randint(5, 15)
        words = [rng.choice(_WORDS) for _ in range(n)]
        lines.append(" " + " ".join(words) + " .")
    return "\n".join(lines) + "\n"


def make_micro_tokens(root: Path, seed: int, n_lines: int = 1500) -> Path:
    """Tokens of a small corpus with the micro profile's tokenizer, under ``root``: returns the tokens folder."""
    from hamt.data import download
    from hamt.params import read_yaml, resolve
    from hamt.tokenize import tokenize

    (root / "corpus.txt").write_text(make_corpus(n_lines, seed=seed), encoding="utf-8")
    p = resolve(read_yaml(ROOT / "params.yaml"), "micro", [
        "data.source=local", f"data.local_path={root / 'corpus.txt'}", f"data.raw_dir={root / 'raw'}",
        f"tokenizer.tokens_dir={root / 'tokens'}"])
    download(p)
    tokenize(p, progress=False)
    return root / "tokens"


@pytest.fixture
def corpus_file(tmp_path: Path) -> Path:
    """A single text file of about 150 KB."""
    p = tmp_path / "corpus.txt"
    p.write_text(make_corpus(), encoding="utf-8")
    return p


@pytest.fixture
def root() -> Path:
    return ROOT
