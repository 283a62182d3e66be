"""Metrics of hamt.metrics against values known in closed form and against direct computations."""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from hamt import runtime
from hamt.metrics import lm, memory, systems


class UniformLM(nn.Module):
    """Every next token equally likely: perplexity must be exactly the vocabulary size."""

    def __init__(self, vocab: int):
        super().__init__()
        self.vocab = vocab
        self.dummy = nn.Parameter(torch.zeros(1))

    def forward(self, input_ids, **kwargs):
        B, T = input_ids.shape
        return SimpleNamespace(logits=torch.zeros(B, T, self.vocab) + 0 * self.dummy)


class BigramLM(nn.Module):
    """Prediction depends on the current token only: any window gives the same NLL as one full pass."""

    def __init__(self, vocab: int, seed: int = 0):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.table = nn.Parameter(torch.randn(vocab, vocab, generator=g))

    def forward(self, input_ids, **kwargs):
        return SimpleNamespace(logits=self.table[input_ids])  # (B, T, V)


def tiny_gpt2(vocab: int = 50, n_positions: int = 64, seed: int = 0):
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(seed)
    cfg = GPT2Config(vocab_size=vocab, n_positions=n_positions, n_embd=16, n_layer=2, n_head=2,
                     bos_token_id=0, eos_token_id=0, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)
    return GPT2LMHeadModel(cfg).eval()


def tiny_hamt(vocab: int = 50, seed: int = 0, **kw):
    from hamt.config import HAMTConfig
    from hamt.model import HAMTForCausalLM

    torch.manual_seed(seed)
    cfg = HAMTConfig(vocab_size=vocab, hidden_dim=16, hcm_dim=16, num_layers=1, num_slots=2,
                     num_attention_heads=2, max_position_embeddings=32, **kw)
    return HAMTForCausalLM(cfg).eval()


def full_nll(model, ids: torch.Tensor) -> float:
    logits = model(input_ids=ids[None]).logits[0, :-1].float()
    return F.cross_entropy(logits, ids[1:], reduction="sum").item()


# ---- closed forms -----------------------------------------------------------------------------------


@pytest.mark.parametrize("vocab", [7, 256])
def test_uniform_model_perplexity_is_the_vocabulary_size(vocab):
    ids = torch.randint(0, vocab, (301,), generator=torch.Generator().manual_seed(1))
    m = lm.evaluate_lm(UniformLM(vocab), ids, context=32, stride=16)
    assert m["tokens"] == 300  # every token but the first is a target
    assert m["ppl"] == pytest.approx(vocab, rel=1e-6)
    assert m["loss"] == pytest.approx(math.log(vocab), rel=1e-6)


def test_bits_per_byte_and_word_perplexity_from_known_totals():
    nll = 2 * math.log(2) * 100  # 2 bits per byte over 100 bytes
    m = lm.lm_metrics(nll, n_tokens=50, n_bytes=100, n_words=20)
    assert m["bpb"] == pytest.approx(2.0)
    assert m["word_ppl"] == pytest.approx(math.exp(nll / 20))
    assert m["ppl"] == pytest.approx(math.exp(nll / 50))
    # bpb does not depend on how many tokens carried the NLL (tokenizer independence)
    assert lm.lm_metrics(nll, n_tokens=80, n_bytes=100)["bpb"] == pytest.approx(2.0)
    assert lm.lm_metrics(nll, n_tokens=50)["bpb"] is None


def test_uniform_bpb_matches_hand_computation():
    vocab, n = 16, 101
    ids = torch.zeros(n, dtype=torch.long)
    m = lm.evaluate_lm(UniformLM(vocab), ids, context=10, stride=4, n_bytes=400, n_words=80)
    assert m["bpb"] == pytest.approx((n - 1) * math.log(vocab) / (math.log(2) * 400))
    assert m["word_ppl"] == pytest.approx(math.exp((n - 1) * math.log(vocab) / 80))


def test_text_counts_are_utf8_bytes_and_whitespace_words():
    assert lm.text_counts(" héllo  wörld \n x") == {"bytes": len(" héllo  wörld \n x".encode()), "words": 3}


def test_eval_counts_scale_with_the_evaluated_fraction():
    meta = {"tokens": 1000, "bytes": 4000, "words": 800}
    full = lm.eval_counts(meta, 1000)
    assert (full["bytes"], full["words"]) == (4000, 800) and "exact" in full["counts_note"]
    part = lm.eval_counts(meta, 250)
    assert part["bytes"] == pytest.approx(1000) and part["words"] == pytest.approx(200)
    assert "scaled" in part["counts_note"] and "250" in part["counts_note"]
    assert lm.eval_counts({"tokens": 10}, 10)["bytes"] is None


# ---- sliding windows ----------------------------------------------------------------------------------


@pytest.mark.parametrize("n", [2, 5, 31, 32, 33, 100, 257])
@pytest.mark.parametrize("context,stride", [(8, 1), (8, 3), (8, 4), (8, 8), (32, 16), (2, 2)])
def test_windows_score_every_target_exactly_once(n, context, stride):
    spans = lm.windows(n, context, stride)
    scored = []
    for begin, end, first in spans:
        assert 0 <= begin < first <= end <= n and end - begin <= context
        scored += list(range(first, end))
        # each target sees its window's left context, at least context - stride tokens once past the start
        assert first - begin >= min(first, max(1, context - stride))
    assert sorted(scored) == list(range(1, n))


def test_sliding_window_equals_a_direct_per_target_computation():
    """Each target's NLL equals a single forward of exactly its window's prefix (batching and masks are right)."""
    model = tiny_gpt2()
    ids = torch.randint(0, 50, (40,), generator=torch.Generator().manual_seed(3))
    context, stride = 12, 5
    direct = 0.0
    with torch.no_grad():
        for begin, end, first in lm.windows(len(ids), context, stride):
            for j in range(first, end):
                logits = model(input_ids=ids[None, begin:j]).logits[0, -1]
                direct -= F.log_softmax(logits, -1)[ids[j]].item()
    r = lm.sliding_window_nll(model, ids, context, stride, batch_size=3)
    assert r["tokens"] == len(ids) - 1
    assert r["nll_sum"] == pytest.approx(direct, rel=1e-5)


def test_window_as_long_as_the_text_equals_one_full_forward():
    model = tiny_gpt2()
    ids = torch.randint(0, 50, (30,), generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        expected = full_nll(model, ids)
    assert lm.sliding_window_nll(model, ids, 64, 16)["nll_sum"] == pytest.approx(expected, rel=1e-5)


@pytest.mark.parametrize("context,stride", [(4, 1), (6, 6), (9, 4)])
def test_context_free_model_gives_the_full_forward_nll_for_any_window(context, stride):
    model = BigramLM(13)
    ids = torch.randint(0, 13, (77,), generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        expected = full_nll(model, ids)
    assert lm.sliding_window_nll(model, ids, context, stride)["nll_sum"] == pytest.approx(expected, rel=1e-6)


def test_context_changes_the_nll_of_a_recurrent_model():
    """Sanity in the other direction: the window really limits what a context-dependent model sees."""
    model = tiny_hamt()
    ids = torch.randint(0, 50, (64,), generator=torch.Generator().manual_seed(6))
    a = lm.sliding_window_nll(model, ids, 64, 32)["nll_sum"]
    b = lm.sliding_window_nll(model, ids, 4, 1)["nll_sum"]
    assert a != pytest.approx(b, rel=1e-6)  # context matters for a recurrent model: windows change the NLL


def test_windows_reject_bad_arguments():
    with pytest.raises(ValueError):
        lm.windows(10, 1, 1)
    with pytest.raises(ValueError):
        lm.windows(10, 8, 9)


# ---- systems metrics -------------------------------------------------------------------------------------


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


def test_memory_diagnostics_of_hamt_and_none_for_gpt2():
    ids = torch.randint(0, 50, (100,), generator=torch.Generator().manual_seed(7))
    d = memory.memory_diagnostics(tiny_hamt(), ids, context=16)
    assert -1.0 <= d["fidelity"] <= 1.0
    assert 0.0 <= d["slot_active_fraction"] <= 1.0 and 0.0 <= d["slot_entropy"] <= 1.0 + 1e-6
    assert len(d["slot_usage"]) == 1 and len(d["slot_usage"][0]) == 2
    assert memory.memory_diagnostics(tiny_gpt2(), ids, context=16) == {}


def test_resolve_device_and_name():
    assert runtime.resolve_device("cpu").type == "cpu"
    assert runtime.device_name("cpu").startswith("CPU")


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
