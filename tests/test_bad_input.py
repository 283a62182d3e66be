"""Bad input, fail fast (issues 6 and 14): every case gets one line naming the problem and the fix, exit
status 2, no traceback without --debug, and every file that existed under data/, checkpoints/ and results/
byte-identical afterwards, with nothing new there. Table-driven over the CLI, on a work folder holding a
valid micro-profile state (raw text, tokens, a trained model) to break.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path

import numpy as np

import pytest

from hamt.cli import main

from conftest import ROOT, make_corpus

PARAMS = str(ROOT / "params.yaml")


def run(args: list[str], capsys) -> tuple[int, str]:
    code = main(args)
    return code, capsys.readouterr().err


def snapshot(wd: Path) -> dict[str, str]:
    """{path: sha256} of every file under the work folder's data/, checkpoints/ and results/."""
    out = {}
    for top in ("data", "checkpoints", "results"):
        for p in sorted((wd / top).rglob("*")):
            if p.is_file():
                out[p.relative_to(wd).as_posix()] = hashlib.sha256(p.read_bytes()).hexdigest()
    return out


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


def _another_tokenizer(wd: Path) -> str:
    """Consistent tokens (meta.json names its tokenizer.json) of another tokenizer with the same vocabulary size."""
    from hamt.io import file_sha256

    d = wd / "cases" / "tokens" / "another-tokenizer"
    if not d.exists():
        shutil.copytree(_other_tokenizer(wd), d)
        meta = json.loads((d / "meta.json").read_text())
        (d / "meta.json").write_text(json.dumps({**meta, "tokenizer_sha256": file_sha256(d / "tokenizer.json")}))
    return str(d)


def _case_dir(wd: Path, name: str) -> Path:
    d = wd / "cases" / name
    d.mkdir(parents=True, exist_ok=True)
    return d


def _a_file(wd: Path) -> str:
    f = _case_dir(wd, "files") / "plain-file"
    f.write_text("not a folder")
    return str(f)


def _params_file(text: str):
    def make(wd: Path) -> str:
        f = _case_dir(wd, "params") / f"{hashlib.sha256(text.encode()).hexdigest()[:10]}.yaml"
        f.write_text(text, encoding="utf-8")
        return str(f)
    return make


def _tokens(name: str, meta_change=None, ids_change=None):
    """A copy of the valid tokens, its meta.json or train ids changed: ``tokenizer.tokens_dir=<copy>``."""
    def make(wd: Path) -> str:
        d = wd / "cases" / "tokens" / name
        if not d.exists():
            shutil.copytree(wd / "data" / "tokens", d)
            meta = json.loads((d / "meta.json").read_text())
            if meta_change is not None:
                (d / "meta.json").write_text(json.dumps(meta_change(meta)))
            if ids_change is not None:
                ids = np.fromfile(d / "train.bin", dtype=meta["dtype"])
                ids_change(ids)
                ids.tofile(d / "train.bin")
        return f"tokenizer.tokens_dir={d}"
    return make


def _raw_with_empty_train(wd: Path) -> str:
    d = wd / "cases" / "raw-empty-train"
    if not d.exists():
        shutil.copytree(wd / "data" / "raw", d)
        (d / "train.txt").write_text("\n \n")
    return f"data.raw_dir={d}"


def _forged_checkpoint(wd: Path) -> str:
    """A checkpoint with a valid checksum and the right model identity whose tensors have other shapes."""
    import torch

    from hamt import checkpoint as ck

    d = wd / "cases" / "forged"
    if not d.exists():
        state, _ = ck.load_latest(wd / "checkpoints" / "hamt")
        state["model"] = {k: torch.zeros(*(s + 1 for s in v.shape)) for k, v in state["model"].items()}
        ck.save_checkpoint({k: v for k, v in state.items() if k not in ("format", "step", "saved_at")}, d / "hamt", 2)
    return f"train.out_dir={d}"


def _no_sidecar(wd: Path) -> str:
    d = wd / "cases" / "no-sidecar"
    if not d.exists():
        shutil.copytree(wd / "checkpoints" / "hamt", d / "hamt", ignore=shutil.ignore_patterns("final", "*.sha256"))
    return f"train.out_dir={d}"


def _final_copy(name: str, change):
    """``--model-dir`` of a copy of the trained final/ folder, broken by ``change(folder)``."""
    def make(wd: Path) -> str:
        d = wd / "cases" / name
        if not d.exists():
            shutil.copytree(wd / "checkpoints" / "hamt" / "final", d)
            change(d)
        return str(d)
    return make


def _truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def _weights_as_pickle(d: Path) -> None:
    import torch
    from safetensors.torch import load_file

    torch.save(load_file(d / "model.safetensors"), d / "pytorch_model.bin")
    (d / "model.safetensors").unlink()


NOPROFILE = "<no --profile>"  # the case's params file chooses its profile itself
SET = "--set"

# (id, command, extra args (callables get the work dir), expected words in the message)
CASES = [
    # parameters: names, types, ranges (one line naming the key)
    ("unknown-key", "train", [SET, "train.learning_rate=1e-3"], "train.learning_rate"),
    ("misspelled-section", "train", [SET, "trian.lr=1e-3"], "unknown section"),
    ("wrong-type", "train", [SET, "train.max_steps=many"], "train.max_steps"),
    ("negative-lr", "train", [SET, "train.lr=-0.1"], "train.lr"),
    ("lr-inf", "train", [SET, "train.lr=.inf"], "finite"),
    ("weight-decay-inf", "train", [SET, "train.max_steps=12", SET, "train.weight_decay=.inf"], "train.weight_decay"),
    ("min-lr-above-lr", "train", [SET, "train.min_lr=1"], "train.min_lr"),
    ("eval-batches-zero", "train", [SET, "train.eval_batches=0"], "train.eval_batches"),
    ("batch-not-multiple", "train", [SET, "train.batch_size=10", SET, "train.micro_batch_size=4"], "multiple"),
    ("lr-factor-one", "train", [SET, "fallback.lr_factor=1"], "fallback.lr_factor"),
    ("override-without-value", "train", [SET, "train.lr"], "section.key=value"),
    ("override-into-a-value", "train", [SET, "train.lr.x=1"], "train.lr"),
    ("zero-slots", "train", [SET, "model.num_slots=0"], "num_slots"),
    ("hcm-not-divisible", "train", [SET, "model.hcm_dim=66", SET, "model.num_attention_heads=4"], "divisible"),
    ("norm-eps-inf", "train", [SET, "model.norm_eps=.inf"], "model.norm_eps"),
    ("initializer-range-nan", "train", [SET, "model.initializer_range=.nan"], "model.initializer_range"),
    ("initializer-range-negative", "train", [SET, "model.initializer_range=-1"], "model.initializer_range"),
    ("mlp-ratio-inf", "train", [SET, "model.mlp_ratio=.inf"], "model.mlp_ratio"),
    ("dropout-above-one", "train", [SET, "model.dropout=1.5"], "dropout"),
    ("seq-longer-than-data", "train", [SET, "train.seq_len=10000000", SET, "model.max_position_embeddings=10000000"], "longer than"),
    ("unknown-profile", "train", ["--profile", "gigantic"], "unknown profile"),
    ("unknown-model", "train", ["--model", "gpt5-scratch"], "gpt5-scratch"),
    ("unknown-baseline", "compare", ["--baselines", "gpt5"], "gpt5"),
    ("cuda-on-cpu", "train", [SET, "train.device=cuda"], "cuda"),
    ("vocab-1e9", "tokenize", [SET, "tokenizer.vocab_size=1000000000"], "tokenizer.vocab_size"),
    ("vocab-tiny", "tokenize", [SET, "tokenizer.vocab_size=100"], "tokenizer.vocab_size"),
    ("split-fractions", "download", [SET, "data.split_fractions=[0.5,0.5,0.5]"], "split_fractions"),
    # the params file itself
    ("params-missing", "train", ["--params", "/nonexistent/params.yaml"], "not found"),
    ("params-empty", "train", ["--params", _params_file("# nothing here\n")], "empty"),
    ("params-not-yaml", "train", ["--params", _params_file("train: [1, 2\n")], "not valid YAML"),
    ("params-not-a-mapping", "train", ["--params", _params_file("- train\n- model\n")], "mapping"),
    ("params-duplicate-key", "train", ["--params", _params_file("train: {lr: 1.0e-3}\ntrain: {lr: 2.0e-3}\n")], "twice"),
    ("params-section-scalar", "train", ["--params", _params_file("train: 5\n"), NOPROFILE], "train"),
    ("params-profile-list", "train", ["--params", _params_file("profile: [micro]\nprofiles: {micro: {}}\n"), NOPROFILE], "profile"),
    ("params-profiles-scalar", "train", ["--params", _params_file("profiles: {micro: 5}\n")], "profiles.micro"),
    ("params-overlay-scalar", "train", ["--params", _params_file("profiles: {micro: {train: 5}}\n")], "profiles.micro.train"),
    # data
    ("missing-data-folder", "download", [SET, "data.source=local", SET, "data.local_path=/nonexistent/hamt"], "/nonexistent/hamt"),
    ("empty-data-folder", "download", [SET, "data.source=local", SET, lambda wd: f"data.local_path={_empty_dir(wd)}"], "empty"),
    ("non-utf8-data", "download", [SET, "data.source=local", SET, lambda wd: f"data.local_path={_binary_file(wd)}"], "UTF-8"),
    ("empty-train-text", "tokenize", [SET, _raw_with_empty_train], "no text"),
    ("tokenizer-mismatch", "train", [SET, lambda wd: f"tokenizer.tokens_dir={_other_tokenizer(wd)}"], "tokenize"),
    ("no-tokens", "train", [SET, lambda wd: f"tokenizer.tokens_dir={_empty_dir(wd)}"], "hamt tokenize"),
    ("meta-a-list", "train", [SET, _tokens("meta-list", meta_change=lambda m: [m])], "JSON object"),
    ("meta-without-vocab", "train", [SET, _tokens("meta-novocab", meta_change=lambda m: {k: v for k, v in m.items() if k != "vocab_size"})], "vocab_size"),
    ("meta-wrong-type", "train", [SET, _tokens("meta-type", meta_change=lambda m: {**m, "vocab_size": "big"})], "vocab_size"),
    ("resume-on-another-tokenizer", "train", ["--resume", SET, lambda wd: f"tokenizer.tokens_dir={_another_tokenizer(wd)}"],
     "another tokenizer"),
    ("compare-context-longer-than-split", "compare", [SET, "compare.eval_context=100000"], "compare.eval_context"),
    ("token-ids-past-vocab", "train", [SET, _tokens("ids", ids_change=lambda ids: ids.__setitem__(3, 65535))], "token id 65535"),
    # checkpoints and output folders
    ("another-run-in-the-folder", "train", [SET, "train.max_steps=12"], "--force-new"),
    ("resume-and-force-new", "train", ["--resume", "--force-new"], "one of them"),
    ("checkpoint-other-config", "train", ["--resume", SET, "model.hidden_dim=48"], "checkpoint"),
    ("not-a-checkpoint", "train", ["--resume", SET, lambda wd: f"train.out_dir={_not_a_checkpoint(wd)}"], "checkpoint"),
    ("forged-shapes", "train", ["--resume", SET, _forged_checkpoint], "does not fit"),
    ("only-sidecars-missing", "train", ["--resume", SET, _no_sidecar], "checksum file"),
    ("out-dir-is-a-file", "train", [SET, lambda wd: f"train.out_dir={_a_file(wd)}"], "not a folder"),
    ("results-dir-is-a-file", "train", [SET, lambda wd: f"train.results_dir={_a_file(wd)}"], "not a folder"),
    ("name-absolute", "train", ["--name", "/tmp/hamt-escape"], "plain folder name"),
    ("name-parent", "train", ["--name", "../../escape"], "plain folder name"),
    ("name-separator", "train", ["--name", "a/b"], "plain folder name"),
    ("name-hidden", "train", ["--name", ".hamt"], "plain folder name"),
    # generation from a saved model
    ("generate-temperature-nan", "generate", ["--prompt", "the", "--temperature", "nan"], "--temperature"),
    ("generate-another-tokenizer", "generate", ["--prompt", "the", "--tokens-dir", _another_tokenizer],
     "not the one the model"),
    ("generate-prompt-not-utf8", "generate", ["--prompt", "caf\udce9"], "UTF-8"),
    ("generate-truncated-weights", "generate",
     ["--prompt", "the", "--model-dir", _final_copy("truncated", lambda d: _truncate(d / "model.safetensors"))],
     "cannot load"),
    ("generate-pickle-weights", "generate",
     ["--prompt", "the", "--model-dir", _final_copy("pickled", _weights_as_pickle)], "pickles are never loaded"),
]


def test_the_table_covers_at_least_forty_bad_inputs():
    assert len(CASES) >= 40 and len({c[0] for c in CASES}) == len(CASES)


@pytest.mark.parametrize("case_id, command, extra, needle", CASES, ids=[c[0] for c in CASES])
def test_bad_input_gets_one_clear_line(workdir, monkeypatch, capsys, case_id, command, extra, needle):
    monkeypatch.chdir(workdir)
    args = [a(workdir) if callable(a) else a for a in extra]
    before = snapshot(workdir)
    profile = [] if "--profile" in args or NOPROFILE in args else ["--profile", "micro"]
    args = [a for a in args if a != NOPROFILE]
    code, err = run([command, "--params", PARAMS, *profile, *args], capsys)
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert code == 2, (case_id, code, err[-2000:])
    assert "Traceback" not in err, err[-2000:]
    assert 1 <= len(lines) <= 2 and "error:" in lines[0], err[-2000:]
    assert needle.lower() in lines[0].lower(), lines[0]
    # nothing touched: every file is byte-identical and no new file appeared
    after = snapshot(workdir)
    assert sorted(set(after) - set(before)) == [], case_id
    assert [p for p in before if after.get(p) != before[p]] == [], case_id
    assert not Path("/tmp/hamt-escape").exists() and not (workdir.parent.parent / "escape").exists()


def test_debug_shows_the_traceback(workdir, monkeypatch):
    monkeypatch.chdir(workdir)
    from hamt.errors import ConfigError

    with pytest.raises(ConfigError):
        main(["train", "--params", PARAMS, "--profile", "micro", "--set", "train.lr=-1", "--debug"])
