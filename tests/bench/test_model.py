"""``hamt bench model`` (and the tables of ``hamt bench all``): rows, memory measures, compile fallback,
the optimizer-included step, and the issue's "done when": the trainer's FLOPs/token and MFU are the bench's.

No timing assertions: only that the benchmarks run, that rows carry their metadata, and that the
quantities with an exact value (FLOPs per token, MFU's identity, bytes saved for backward) have it.
"""

from __future__ import annotations

import json

import pytest

from conftest import ROOT, make_micro_tokens
from hamt import cli

from .conftest import MICRO, rows_of


def test_model_rows(bench_all):
    rows = rows_of(bench_all, "model")
    assert {(r["model"], r["seq_len"]) for r in rows} == {(m, t) for m in ("hamt", "gpt2") for t in (16, 40)}
    for r in rows:
        assert r["batch_size"] == max(1, 64 // r["seq_len"])
        assert r["tokens_per_s"] > 0 and 0 < r["mfu"] and r["activation_mb"] > 0 and r["flops_per_token"] > 0
        assert r["peak_how"] == "cpu_allocator" and r["peak_flops_source"] and r["optimizer"] is False
    gpt2 = {r["seq_len"]: r for r in rows if r["model"] == "gpt2"}
    # attention FLOPs grow with T (12 L d T per token); the matmul part does not
    assert gpt2[40]["mixer_flops_per_token"] == pytest.approx(gpt2[16]["mixer_flops_per_token"] * 40 / 16)


def test_markdown_tables(bench_all):
    text = (bench_all / "tables.md").read_text()
    assert text.count("_device: ") == 4 and text.count("commit: ") == 4 and text.count("command: `hamt bench") == 4
    for title in ("### Training throughput", "### Memory scan", "### Decoding", "### Tokenization"):
        assert title in text
    for name in ("model", "memory", "decode", "tokenize"):
        table = (bench_all / f"{name}.md").read_text()
        lines = [ln for ln in table.splitlines() if ln.startswith("|")]
        assert len({ln.count("|") for ln in lines}) == 1, f"{name}.md: ragged table"
        assert len(lines) >= 4  # header, rule, >= 2 rows


def test_saved_activation_bytes_counts_saved_inputs_not_parameters():
    import torch

    from hamt.bench.model import saved_activation_bytes

    lin = torch.nn.Linear(4, 5)
    x = torch.randn(3, 4)
    # Linear saves its input (3 x 4 fp32) for the weight gradient; the weight itself is a parameter
    assert saved_activation_bytes(lin, lambda: lin(x).sum().backward()) == 3 * 4 * 4
    assert saved_activation_bytes(lin, lambda: torch.tanh(lin(x)).sum().backward()) == 3 * 4 * 4 + 3 * 5 * 4


def test_peak_memory_allocator_sees_a_freed_temporary():
    import torch

    from hamt.metrics.systems import PeakMemory

    with PeakMemory("cpu", how="allocator") as mem:
        a = torch.ones(1000, 1000)  # 4 MB, freed inside the block
        float(a.sum())
        del a
    assert mem.source == "cpu_allocator"
    assert 4_000_000 <= mem.peak_bytes < 4_200_000 and mem.delta_mb == mem.peak_mb, mem.peak_bytes


def test_bad_lengths_are_one_line_errors(capsys):
    code = cli.main(["bench", "model", "--params", str(ROOT / "params.yaml"), *MICRO, "--seq-lens", "0"])
    assert code == 2
    err = capsys.readouterr().err
    assert "--seq-lens" in err and "Traceback" not in err


def test_bench_settings_come_from_params_and_flags_override(tmp_path):
    from argparse import Namespace

    import torch

    from hamt.bench import options
    from hamt.params import load_params

    p = load_params(ROOT / "params.yaml", "micro", ["bench.repeats=2", "bench.cpu.seq_lens=[8, 12]"])
    flags = {k: None for k in ("seq_lens", "contexts", "tokens_per_step", "memory_seq_len", "memory_batch", "repeats",
                               "decode_steps", "precision", "preset", "vocab_size", "compile", "optimizer",
                               "memory_mode", "threads", "results_dir")}
    opts = options(p, Namespace(**flags), torch.device("cpu"))
    assert opts["repeats"] == 2 and opts["seq_lens"] == [8, 12] and opts["tokens_per_step"] == p.bench.cpu.tokens_per_step
    assert options(p, Namespace(**{**flags, "repeats": 7}), torch.device("cpu"))["repeats"] == 7
    assert options(p, Namespace(**flags), torch.device("cuda"))["seq_lens"] == p.bench.cuda.seq_lens


def test_bench_defaults_equal_params_yaml():
    from hamt.params import BenchParams, read_yaml, to_dict

    assert to_dict(BenchParams()) == read_yaml(ROOT / "params.yaml")["bench"]


def test_compile_failure_is_measured_eager_and_recorded(tmp_path, monkeypatch):
    import torch

    def broken_compile(model, *a, **k):
        raise RuntimeError("no compiler here\nsecond line")

    monkeypatch.setattr(torch, "compile", broken_compile)
    argv = ["bench", "model", "--params", str(ROOT / "params.yaml"), *MICRO, "--seq-lens", "16",
            "--tokens-per-step", "32", "--compile", "--memory-mode", "chunk", "--results-dir", str(tmp_path)]
    assert cli.main(argv) == 0
    rows = json.loads((tmp_path / "model.json").read_text())
    assert {r["model"] for r in rows} == {"hamt", "gpt2"}
    for r in rows:
        assert r["compiled"] is False and r["compile_error"] == "RuntimeError: no compiler here"
        assert r["tokens_per_s"] > 0 and "--compile" in r["command"] and "--memory-mode chunk" in r["command"]
    assert "GPT-2 eager (RuntimeError: no compiler here)" in (tmp_path / "model.md").read_text()


def test_compiled_models_are_measured(tmp_path, monkeypatch):
    """A successful torch.compile is timed: the compiled module (which has no truth value: ``compiled or model``
    raised TypeError in torch 2.13) is what runs. The eager backend stands in for Inductor, to stay fast."""
    import torch

    compile_ = torch.compile
    monkeypatch.setattr(torch, "compile", lambda model, *a, **k: compile_(model, backend="eager"))
    argv = ["bench", "model", "--params", str(ROOT / "params.yaml"), *MICRO, "--seq-lens", "16",
            "--tokens-per-step", "32", "--compile", "--memory-mode", "chunk",
            "--results-dir", str(tmp_path)]
    assert cli.main(argv) == 0
    rows = json.loads((tmp_path / "model.json").read_text())
    assert {r["model"] for r in rows} == {"hamt", "gpt2"}
    assert all(r["compiled"] is True and r["compile_error"] is None and r["tokens_per_s"] > 0 for r in rows)


def test_flops_and_mfu_of_the_trainer_equal_the_bench(tmp_path, monkeypatch):
    """The issue's "done when": for the same model and shape, the trainer's metrics.json and the bench's
    row (with the trainer's step: --optimizer) have the same FLOPs/token and the same MFU definition."""
    from hamt.params import load_params
    from hamt.train import train

    monkeypatch.setenv("HAMT_PEAK_FLOPS", "1.5e11")  # one denominator for both (a CPU probe is noisy)
    (tmp_path / "data").mkdir()
    tokens = make_micro_tokens(tmp_path / "data", seed=5)
    params = load_params(ROOT / "params.yaml", "micro", [
        f"tokenizer.tokens_dir={tokens}", f"train.out_dir={tmp_path / 'ckpt'}", f"train.results_dir={tmp_path / 'res'}",
        "train.device=cpu", "train.max_steps=4", "train.eval_every=4", "train.ckpt_every=4", "train.log_every=2"])
    train(params)
    metrics = json.loads(next((tmp_path / "res").rglob("metrics.json")).read_text())
    vocab = json.loads((tokens / "meta.json").read_text())["vocab_size"]
    T = params.train.seq_len
    argv = ["bench", "model", "--params", str(ROOT / "params.yaml"), *MICRO, "--optimizer", "--seq-lens", str(T),
            "--tokens-per-step", str(params.train.micro_batch_size * T), "--vocab-size", str(vocab),
            "--results-dir", str(tmp_path / "bench")]
    assert cli.main(argv) == 0
    row = next(r for r in json.loads((tmp_path / "bench" / "model.json").read_text()) if r["model"] == "hamt")
    assert row["optimizer"] is True and row["peak_flops_source"] == metrics["peak_flops_source"]
    assert row["flops_per_token"] == metrics["flops_per_token"]
    assert row["peak_flops"] == metrics["peak_flops"] == 1.5e11
    for m in (metrics, row):
        assert m["mfu"] == pytest.approx(m["tokens_per_s"] * m["flops_per_token"] / m["peak_flops"], rel=1e-12)
