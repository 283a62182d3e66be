"""``hamt bench``: runs end to end on a micro shape and writes well-formed JSON and markdown.

No timing assertions: only that every benchmark runs, that rows carry their metadata, and that the
quantities with an exact value (state bytes, KV-cache bytes, bytes saved for backward) have it.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from hamt import cli

ROOT = Path(__file__).resolve().parents[1]
MICRO = ["--profile", "micro", "--device", "cpu", "--repeats", "1"]


@pytest.fixture(scope="module")
def bench_all(tmp_path_factory):
    out = tmp_path_factory.mktemp("bench")
    argv = ["bench", "all", "--params", str(ROOT / "params.yaml"), *MICRO, "--seq-lens", "16", "40",
            "--tokens-per-step", "64", "--contexts", "16", "40", "--decode-steps", "2", "--memory-seq-len", "24",
            "--memory-batch", "1", "--results-dir", str(out), "--out", str(out / "tables.md")]
    assert cli.main(argv) == 0
    return out


META = {"device", "date", "commit", "command", "preset", "precision"}


def _rows(out, name):
    rows = json.loads((out / f"{name}.json").read_text())
    assert isinstance(rows, list) and rows
    for r in rows:
        assert META <= set(r), f"{name}: row lacks metadata {META - set(r)}"
        assert r["command"].startswith(f"hamt bench all --profile micro")
        for k, v in r.items():
            if isinstance(v, float):
                assert math.isfinite(v), f"{name}.{k} = {v}"
    return rows


def test_model_rows(bench_all):
    rows = _rows(bench_all, "model")
    assert {(r["model"], r["seq_len"]) for r in rows} == {(m, t) for m in ("hamt", "gpt2") for t in (16, 40)}
    for r in rows:
        assert r["batch_size"] == max(1, 64 // r["seq_len"])
        assert r["tokens_per_s"] > 0 and 0 < r["mfu"] and r["activation_mb"] > 0 and r["flops_per_token"] > 0
    gpt2 = {r["seq_len"]: r for r in rows if r["model"] == "gpt2"}
    # attention FLOPs grow with T (6 L d T per token); the matmul part does not
    assert gpt2[40]["mixer_flops_per_token"] == pytest.approx(gpt2[16]["mixer_flops_per_token"] * 40 / 16)


def test_memory_rows(bench_all):
    rows = _rows(bench_all, "memory")
    assert [r["mode"] for r in rows][:2] == ["reference", "chunk"]
    ref = rows[0]
    assert ref["speedup_vs_reference"] == pytest.approx(1.0)
    for r in rows:
        assert r["fwd_bwd_ms"] > 0 and r["floor_fwd_bwd_ms"] > 0 and r["times_floor"] > 0


def test_decode_rows_state_constant_and_kv_linear(bench_all):
    from hamt.config import HAMTConfig
    from hamt.params import load_params
    rows = _rows(bench_all, "decode")
    hamt = {r["context"]: r for r in rows if r["model"] == "hamt"}
    gpt2 = {r["context"]: r for r in rows if r["model"] == "gpt2"}
    assert set(hamt) == set(gpt2) == {16, 40}
    # HAMT's state does not grow with the context, nor while decoding
    assert len({r["state_bytes"] for r in hamt.values()} | {r["state_bytes_after"] for r in hamt.values()}) == 1
    # its exact size: complex64 memory (B, H, S, F) plus the fp32 conv tail (B, d, k-1), per layer
    cfg: HAMTConfig = load_params(ROOT / "params.yaml", "micro").model_config()
    per_layer = cfg.num_attention_heads * cfg.num_slots * cfg.num_freqs * 8 + cfg.hidden_dim * (cfg.conv_kernel - 1) * 4
    assert hamt[16]["state_bytes"] == cfg.num_layers * per_layer
    # GPT-2's KV cache: 2 (K, V) x layers x context x width x 4 bytes
    from hamt.baselines import matched_gpt2_config

    g = matched_gpt2_config(cfg)
    for ctx, r in gpt2.items():
        assert r["state_bytes"] == 2 * g.n_layer * ctx * g.n_embd * 4


def test_markdown_tables(bench_all):
    text = (bench_all / "tables.md").read_text()
    assert text.count("_device: ") == 3 and text.count("commit: ") == 3 and text.count("command: `hamt bench") == 3
    for title in ("### Training throughput", "### Memory scan", "### Decoding"):
        assert title in text
    for name in ("model", "memory", "decode"):
        table = (bench_all / f"{name}.md").read_text()
        lines = [ln for ln in table.splitlines() if ln.startswith("|")]
        assert len({ln.count("|") for ln in lines}) == 1, f"{name}.md: ragged table"
        assert len(lines) >= 4  # header, rule, >= 2 rows


def test_saved_activation_bytes_counts_saved_inputs_not_parameters():
    import torch

    from hamt.bench import saved_activation_bytes

    lin = torch.nn.Linear(4, 5)
    x = torch.randn(3, 4)
    # Linear saves its input (3 x 4 fp32) for the weight gradient; the weight itself is a parameter
    assert saved_activation_bytes(lin, lambda: lin(x).sum().backward()) == 3 * 4 * 4
    assert saved_activation_bytes(lin, lambda: torch.tanh(lin(x)).sum().backward()) == 3 * 4 * 4 + 3 * 5 * 4


def test_peak_memory_bytes_sees_a_freed_temporary():
    import torch

    from hamt.bench import peak_memory_bytes

    def fn():
        a = torch.ones(1000, 1000)  # 4 MB, freed when fn returns
        return float(a.sum())

    peak, how = peak_memory_bytes(fn, torch.device("cpu"))
    assert 4_000_000 <= peak < 4_200_000, (peak, how)


def test_memory_io_bytes_formula():
    from hamt.bench import memory_io_bytes

    io = memory_io_bytes(B=1, T=2, H=1, S=1, F=1)
    # forward: q,k,v,r (4 x 2 x 8) + log f (2 x 4) + w,b (2 x 2 x 4) + state (8) = 64 + 8 + 16 + 8
    assert io["forward"] == 96
    # backward: the forward's reads and writes again (dL/dr, dL/dstate), then dq, dk, dv, dlog f, dw, db
    assert io["backward"] == 96 + 3 * 16 + 8 + 2 * 8 and io["total"] == io["forward"] + io["backward"]


def test_bad_lengths_are_one_line_errors(capsys):
    code = cli.main(["bench", "model", "--params", str(ROOT / "params.yaml"), *MICRO, "--seq-lens", "0"])
    assert code == 2
    err = capsys.readouterr().err
    assert "--seq-lens" in err and "Traceback" not in err


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
