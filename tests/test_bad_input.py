"""Bad input, fail fast (issue 6): every case gets a one-line error naming the problem, exit status 2,
no traceback without --debug, and no partial outputs left behind. Table-driven over the CLI."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from hamt.cli import main

from conftest import ROOT, make_corpus

PARAMS = str(ROOT / "params.yaml")


def run(args: list[str], capsys) -> tuple[int, str]:
    code = main(args)
    return code, capsys.readouterr().err


def snapshot(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*")}


@pytest.fixture(scope="module")
def workdir(tmp_path_factory) -> Path:
    """A work folder with micro-profile tokens and a trained micro model (the valid state to break)."""
    wd = tmp_path_factory.mktemp("bad-input")
    (wd / "corpus.txt").write_text(make_corpus(1500), encoding="utf-8")
    cwd = os.getcwd()
    os.chdir(wd)
    try:
        base = ["--params", PARAMS, "--profile", "micro", "--set", "data.source=local",
                "--set", f"data.local_path={wd / 'corpus.txt'}"]
        assert main(["download", *base]) == 0
        assert main(["tokenize", *base]) == 0
        assert main(["train", *base, "--set", "train.max_steps=2", "--set", "train.eval_every=2",
                     "--set", "train.ckpt_every=2"]) == 0
    finally:
        os.chdir(cwd)
    return wd


def _empty_dir(wd: Path) -> str:
    d = wd / "empty"
    d.mkdir(exist_ok=True)
    return str(d)


def _binary_file(wd: Path) -> str:
    p = wd / "latin1" / "train.txt"
    p.parent.mkdir(exist_ok=True)
    p.write_bytes("caf\xe9 cr\xe8me\n".encode("latin-1") * 50)
    return str(p.parent)


def _not_a_checkpoint(wd: Path) -> str:
    d = wd / "ckpt-junk" / "hamt"
    d.mkdir(parents=True, exist_ok=True)
    (d / "step_00000002.pt").write_text("this is not a checkpoint")
    return str(wd / "ckpt-junk")


def _other_tokenizer(wd: Path) -> str:
    """Tokens whose tokenizer.json was swapped for another one."""
    import shutil

    d = wd / "tokens-mismatch"
    if not d.exists():
        shutil.copytree(wd / "data" / "tokens", d)
        tok = d / "tokenizer.json"
        tok.write_text(tok.read_text(encoding="utf-8").replace('"<|endoftext|>"', '"<|eot|>"', 1), encoding="utf-8")
    return str(d)


# (id, command, extra args (callables get the work dir), expected words in the message)
CASES = [
    ("unknown-key", "train", ["--set", "train.learning_rate=1e-3"], "train.learning_rate"),
    ("misspelled-section", "train", ["--set", "trian.lr=1e-3"], "unknown section"),
    ("wrong-type", "train", ["--set", "train.max_steps=many"], "train.max_steps"),
    ("negative-lr", "train", ["--set", "train.lr=-0.1"], "train.lr"),
    ("zero-slots", "train", ["--set", "model.num_slots=0"], "num_slots"),
    ("hcm-not-divisible", "train", ["--set", "model.hcm_dim=66", "--set", "model.num_attention_heads=4"], "divisible"),
    ("seq-longer-than-data", "train", ["--set", "train.seq_len=10000000", "--set", "model.max_position_embeddings=10000000"], "longer than"),
    ("unknown-profile", "train", ["--profile", "gigantic"], "unknown profile"),
    ("unknown-baseline", "compare", ["--baselines", "gpt5"], "gpt5"),
    ("cuda-on-cpu", "train", ["--set", "train.device=cuda"], "cuda"),
    ("missing-data-folder", "download", ["--set", "data.source=local", "--set", "data.local_path=/nonexistent/hamt"], "/nonexistent/hamt"),
    ("empty-data-folder", "download", ["--set", "data.source=local", "--set", lambda wd: f"data.local_path={_empty_dir(wd)}"], "empty"),
    ("non-utf8-data", "download", ["--set", "data.source=local", "--set", lambda wd: f"data.local_path={_binary_file(wd)}"], "UTF-8"),
    ("tokenizer-mismatch", "train", ["--set", lambda wd: f"tokenizer.tokens_dir={_other_tokenizer(wd)}"], "tokenize"),
    ("checkpoint-other-config", "train", ["--resume", "--set", "model.hidden_dim=48"], "checkpoint"),
    ("not-a-checkpoint", "train", ["--resume", "--set", lambda wd: f"train.out_dir={_not_a_checkpoint(wd)}"], "checkpoint"),
]


@pytest.mark.parametrize("case_id, command, extra, needle", CASES, ids=[c[0] for c in CASES])
def test_bad_input_gets_one_clear_line(workdir, monkeypatch, capsys, case_id, command, extra, needle):
    monkeypatch.chdir(workdir)
    args = [a(workdir) if callable(a) else a for a in extra]
    before = snapshot(workdir / "data") | snapshot(workdir / "checkpoints") | snapshot(workdir / "results")
    outputs_before = {p: (workdir / p).stat().st_mtime_ns for p in ("data/raw/manifest.json", "data/tokens/meta.json")}
    profile = [] if "--profile" in args else ["--profile", "micro"]
    code, err = run([command, "--params", PARAMS, *profile, *args], capsys)
    error_lines = [ln for ln in err.splitlines() if "error:" in ln]
    assert code == 2, (case_id, code, err[-2000:])
    assert "Traceback" not in err, err[-2000:]
    assert len(error_lines) == 1, err[-2000:]
    assert needle.lower() in error_lines[0].lower(), error_lines[0]
    # nothing half-written: the valid outputs are untouched and no new files appeared
    after = snapshot(workdir / "data") | snapshot(workdir / "checkpoints") | snapshot(workdir / "results")
    assert after <= before | {p for p in after if p.endswith(".log")}, sorted(after - before)
    for p, mtime in outputs_before.items():
        assert (workdir / p).stat().st_mtime_ns == mtime, p


def test_debug_shows_the_traceback(workdir, monkeypatch):
    monkeypatch.chdir(workdir)
    from hamt.errors import ConfigError

    with pytest.raises(ConfigError):
        main(["train", "--params", PARAMS, "--profile", "micro", "--set", "train.lr=-1", "--debug"])
