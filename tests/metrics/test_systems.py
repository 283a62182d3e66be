"""hamt.metrics.systems: cache bytes, throughput probes, peak memory, decoding profile (CPU and CUDA)."""

from __future__ import annotations

import pytest
import torch

from hamt.metrics import lm, systems
from metrics.models import tiny_gpt2, tiny_hamt


def test_cache_bytes_hamt_constant_gpt2_linear():
    hamt, gpt = tiny_hamt(), tiny_gpt2(n_positions=128)
    rows_h = systems.decode_profile(hamt, [4, 16, 64], new_tokens=3)
    rows_g = systems.decode_profile(gpt, [4, 16, 64, 200], new_tokens=3)
    sizes_h = [r["state_bytes"] for r in rows_h]
    assert len(set(sizes_h)) == 1 and sizes_h[0] > 0
    ok = [r for r in rows_g if r["status"] == "ok"]
    # KV cache: 2 (k, v) x layers x heads x T x head_dim x 4 bytes
    for r in ok:
        assert r["state_bytes"] == 2 * 2 * 2 * r["context"] * 8 * 4
        assert r["state_bytes_end"] == 2 * 2 * 2 * (r["context"] + 3) * 8 * 4
    assert rows_g[-1]["status"] == "skipped" and "positions" in rows_g[-1]["reason"]
    assert all(r["ms_per_token"] > 0 for r in rows_h + ok)


def test_cache_nbytes_walks_nested_containers_once():
    t = torch.zeros(10, dtype=torch.float32)
    assert systems.cache_nbytes((t, [t, torch.zeros(3, dtype=torch.float64)])) == 40 + 24
    assert systems.cache_nbytes(None) == 0


def test_throughput_probes_leave_the_model_untouched():
    model = tiny_gpt2()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    tr = systems.train_throughput(model, 2, 16, steps=1)
    inf = systems.inference_throughput(model, 2, 16, steps=1)
    assert tr["tokens_per_s"] > 0 and inf["tokens_per_s"] > 0
    assert tr["peak_mem_mb"] > 0 and tr["mem_source"] in ("rss_reset", "rss_since_start")
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_peak_memory_sees_a_large_allocation():
    with systems.PeakMemory("cpu") as small:
        torch.ones(10)
    with systems.PeakMemory("cpu") as big:
        x = torch.ones(64 * 2**20 // 4)  # 64 MiB, touched
        x += 1
        del x
    if big.source == "rss_reset":
        assert big.peak_mb - small.peak_mb > 40


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_metrics_match_cpu_and_memory_uses_the_allocator():
    model = tiny_gpt2()
    ids = torch.randint(0, 50, (90,), generator=torch.Generator().manual_seed(8))
    cpu = lm.sliding_window_nll(model, ids, 16, 8)["nll_sum"]
    gpu_model = tiny_gpt2().cuda()
    assert lm.sliding_window_nll(gpu_model, ids, 16, 8, device="cuda")["nll_sum"] == pytest.approx(cpu, rel=1e-4)
    tr = systems.train_throughput(gpu_model, 2, 16, device="cuda", steps=1)
    assert tr["mem_source"] == "cuda_allocator" and tr["peak_mem_mb"] > 0
    rows = systems.decode_profile(tiny_hamt().cuda(), [8, 32], new_tokens=2, device="cuda")
    assert rows[0]["state_bytes"] == rows[1]["state_bytes"] > 0
