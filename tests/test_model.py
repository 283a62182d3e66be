"""HAMTForCausalLM: causality, prefill + decoding == full forward, generate() vs a full-recompute loop,
constant state size, Hugging Face round trip, memory stats, and that it can learn."""

import pytest
import torch
from transformers import AutoModelForCausalLM

from hamt.config import HAMTConfig
from hamt.metrics.memory import slot_utilisation
from hamt.model import HAMTForCausalLM


def small_config(**kw):
    base = dict(vocab_size=61, hidden_dim=32, hcm_dim=64, num_layers=2, num_slots=3, num_attention_heads=4,
                max_position_embeddings=64, chunk_size=8)
    return HAMTConfig.from_params({**base, **kw})


@pytest.fixture(params=[True, False], ids=["gated", "ungated"])
def model(request):
    torch.manual_seed(0)
    return HAMTForCausalLM(small_config(use_gating=request.param)).eval()


def test_causality(model):
    x = torch.randint(0, 61, (2, 40))
    y = x.clone()
    y[:, 25:] = torch.randint(0, 61, (2, 15))
    with torch.no_grad():
        a, b = model(x).logits, model(y).logits
    torch.testing.assert_close(a[:, :25], b[:, :25])
    assert (a[:, 25:] - b[:, 25:]).abs().max() > 1e-4  # the change is visible afterwards


@pytest.mark.parametrize("mode", ["chunk", "reference"])
def test_prefill_then_decode_equals_full_forward(mode):
    torch.manual_seed(0)
    m = HAMTForCausalLM(small_config(memory_mode=mode)).eval()
    x = torch.randint(0, 61, (3, 29))
    with torch.no_grad():
        full = m(x).logits
        out = m(x[:, :11], use_cache=True)
        logits, cache = [out.logits], out.cache
        for t in range(11, 29):
            out = m(x[:, t : t + 1], cache=cache, use_cache=True)
            logits.append(out.logits)
            cache = out.cache
    torch.testing.assert_close(torch.cat(logits, 1), full, rtol=1e-4, atol=1e-5)
    assert cache.get_seq_length() == 29


def _greedy_full_recompute(m, prompt, n):
    seq = prompt
    for _ in range(n):
        nxt = m(seq).logits[:, -1].argmax(-1, keepdim=True)
        seq = torch.cat([seq, nxt], 1)
    return seq


def test_generate_uses_state_and_matches_full_recompute(model, monkeypatch):
    prompt = torch.randint(0, 61, (2, 7))
    lengths = []
    orig = HAMTForCausalLM.forward

    def spy(self, input_ids=None, **kw):
        lengths.append(input_ids.shape[1])
        return orig(self, input_ids=input_ids, **kw)

    with torch.no_grad():
        ref = _greedy_full_recompute(model, prompt, 12)
        monkeypatch.setattr(HAMTForCausalLM, "forward", spy)
        out = model.generate(prompt, max_new_tokens=12, do_sample=False)
    assert torch.equal(out, ref)
    # the prefix runs once; every later step feeds exactly one token (the state carries the rest)
    assert lengths[0] == 7 and all(n == 1 for n in lengths[1:]), lengths


def test_generate_sampling_and_beam_search(model):
    prompt = torch.randint(0, 61, (2, 5))
    with torch.no_grad():
        torch.manual_seed(1)
        s1 = model.generate(prompt, max_new_tokens=8, do_sample=True, top_k=10)
        torch.manual_seed(1)
        s2 = model.generate(prompt, max_new_tokens=8, do_sample=True, top_k=10)
        beam = model.generate(prompt, max_new_tokens=8, num_beams=3, do_sample=False, early_stopping=False)
    assert torch.equal(s1, s2) and s1.shape == (2, 13)
    assert beam.shape[0] == 2 and beam.shape[1] <= 13
    # beam search with one beam is greedy
    with torch.no_grad():
        b1 = model.generate(prompt, max_new_tokens=8, num_beams=1, do_sample=False)
    assert torch.equal(b1, _greedy_full_recompute(model, prompt, 8))


def test_beam_search_scores_its_own_sequences(model):
    """The best beam's log-probability, recomputed from scratch, is at least greedy's."""
    prompt = torch.randint(0, 61, (1, 5))

    def logprob(seq):
        lp = model(seq).logits.log_softmax(-1)
        return lp[0, 4:-1].gather(-1, seq[0, 5:, None]).sum().item()

    with torch.no_grad():
        beam = model.generate(prompt, max_new_tokens=6, num_beams=4, do_sample=False, length_penalty=0.0,
                              early_stopping=True)
        greedy = _greedy_full_recompute(model, prompt, 6)
        assert beam.shape == greedy.shape
        assert logprob(beam) >= logprob(greedy) - 1e-5


def test_state_bytes_constant_in_context_length(model):
    with torch.no_grad():
        c16 = model(torch.randint(0, 61, (1, 16)), use_cache=True).cache
        c2000 = model(torch.randint(0, 61, (1, 2000)), use_cache=True).cache
    assert c16.nbytes() == c2000.nbytes() > 0


def test_save_and_auto_from_pretrained(tmp_path, model):
    model.save_pretrained(tmp_path)
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    assert type(loaded) is HAMTForCausalLM
    assert loaded.config.use_gating == model.config.use_gating
    x = torch.randint(0, 61, (2, 20))
    with torch.no_grad():
        torch.testing.assert_close(loaded(x).logits, model(x).logits)
    assert torch.equal(loaded.blocks[1].mixer.perm, model.blocks[1].mixer.perm)


def test_memory_stats_and_aux_loss():
    torch.manual_seed(0)
    m = HAMTForCausalLM(small_config(use_auxiliary_loss=True, aux_loss_weight=0.5))
    x = torch.randint(0, 61, (2, 24))
    out = m(x, labels=x)
    assert 0.0 < out.fidelity.item() <= 1.0
    assert out.slot_usage.shape == (2, 3)
    torch.testing.assert_close(out.slot_usage.sum(-1), torch.ones(2))
    torch.testing.assert_close(out.loss, out.lm_loss + 0.5 * (1 - out.fidelity))
    out.loss.backward()  # the aux loss is differentiable
    assert m.blocks[0].mixer.kqv.weight.grad.abs().sum() > 0
    stats = slot_utilisation(out.slot_usage)
    assert 0 < stats["slot_active_fraction"] <= 1 and 0 < stats["slot_entropy"] <= 1


def test_loss_is_the_mean_next_token_cross_entropy():
    """The loss shifts the labels (not the logits): position t scores token t + 1, the last scores nothing."""
    torch.manual_seed(0)
    m = HAMTForCausalLM(small_config())
    x = torch.randint(0, 61, (2, 12))
    out = m(x, labels=x)
    want = torch.nn.functional.cross_entropy(out.logits[:, :-1].reshape(-1, 61), x[:, 1:].reshape(-1))
    torch.testing.assert_close(out.lm_loss, want)


def test_slot_utilisation_definition():
    assert slot_utilisation(torch.tensor([[0.25, 0.25, 0.25, 0.25]])) == pytest.approx(
        {"slot_active_fraction": 1.0, "slot_entropy": 1.0})
    s = slot_utilisation(torch.tensor([[0.97, 0.01, 0.01, 0.01]]))
    assert s["slot_active_fraction"] == 0.25 and s["slot_entropy"] < 0.2


def test_gradient_checkpointing_gives_same_gradients():
    torch.manual_seed(0)
    m = HAMTForCausalLM(small_config()).train()
    x = torch.randint(0, 61, (2, 20))
    m(x, labels=x).loss.backward()
    g1 = [p.grad.clone() for p in m.parameters()]
    m.zero_grad()
    m.gradient_checkpointing_enable()
    m(x, labels=x).loss.backward()
    for a, b in zip(g1, (p.grad for p in m.parameters())):
        torch.testing.assert_close(a, b)


def test_tiny_model_overfits_one_batch():
    torch.manual_seed(0)
    m = HAMTForCausalLM(small_config()).train()
    x = torch.randint(0, 61, (4, 32))
    opt = torch.optim.AdamW(m.parameters(), lr=1e-2)
    first = None
    for _ in range(60):
        loss = m(x, labels=x).loss
        first = first or loss.item()
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert loss.item() < 0.2 * first, (first, loss.item())


def test_output_hidden_states_follow_the_hf_convention():
    """L + 1 states: the embeddings, each block's output, the last one after the final norm."""
    torch.manual_seed(0)
    m = HAMTForCausalLM(small_config()).eval()
    x = torch.randint(0, 61, (2, 9))
    with torch.no_grad():
        out = m(x, output_hidden_states=True)
        hs = out.hidden_states
        assert len(hs) == m.config.num_layers + 1 and all(h.shape == (2, 9, 32) for h in hs)
        torch.testing.assert_close(hs[0], m.embed(x))
        h1, _, _ = m.blocks[0](hs[0])
        torch.testing.assert_close(hs[1], h1)
        torch.testing.assert_close(m.lm_head(hs[-1]), out.logits)
        assert m(x).hidden_states is None


@pytest.mark.parametrize("mode", ["auto", "chunk", "reference"])
def test_float64_model_runs_the_memory_in_complex128(mode):
    torch.manual_seed(0)
    m = HAMTForCausalLM(small_config(memory_mode=mode)).double().eval()
    with torch.no_grad():
        out = m(torch.randint(0, 61, (1, 10)), use_cache=True)
    assert out.logits.dtype == torch.float64
    assert all(s.memory.dtype == torch.complex128 for s in out.cache.layers)
    m32 = HAMTForCausalLM(small_config(memory_mode=mode)).eval()
    with torch.no_grad():
        assert m32(torch.randint(0, 61, (1, 10)), use_cache=True).cache.layers[0].memory.dtype == torch.complex64


@pytest.mark.parametrize("mode", ["auto", "chunk", "reference"])
def test_float64_end_to_end_gradcheck(mode):
    """Gradients of a micro model (inputs and the memory's own weights) against finite differences, float64."""
    from torch.func import functional_call

    torch.manual_seed(0)
    cfg = small_config(vocab_size=11, hidden_dim=8, hcm_dim=8, num_layers=2, num_slots=2, num_attention_heads=2,
                       memory_mode=mode, chunk_size=2)
    m = HAMTForCausalLM(cfg).double().eval()
    names = ["blocks.0.mixer.gates.weight", "blocks.1.mixer.kqv.weight", "blocks.0.mixer.conv.weight"]
    params = {n: p.detach().clone().requires_grad_(True) for n, p in m.named_parameters() if n in names}
    assert len(params) == len(names)
    emb = torch.randn(1, 5, 8, dtype=torch.float64, requires_grad=True)
    proj = torch.randn(11, dtype=torch.float64)

    def f(emb, *ps):
        out = functional_call(m, dict(zip(params, ps)), (), {"inputs_embeds": emb})
        return out.logits @ proj  # (1, 5): a few outputs keep the check fast

    assert torch.autograd.gradcheck(f, (emb, *params.values()), eps=1e-6, atol=1e-5, rtol=1e-4)


def test_bf16_model_keeps_the_memory_in_complex64_and_trains():
    torch.manual_seed(0)
    m = HAMTForCausalLM(small_config()).to(torch.bfloat16).train()
    x = torch.randint(0, 61, (2, 12))
    out = m(x, labels=x, use_cache=True)
    assert out.logits.dtype == torch.bfloat16 and out.cache.layers[0].memory.dtype == torch.complex64
    out.loss.backward()
    assert torch.isfinite(out.loss) and m.blocks[0].mixer.kqv.weight.grad.abs().sum() > 0


def test_resize_token_embeddings_keeps_the_old_rows():
    torch.manual_seed(0)
    m = HAMTForCausalLM(small_config()).eval()
    x = torch.randint(0, 61, (1, 8))
    with torch.no_grad():
        before = m(x).logits
    m.resize_token_embeddings(70)
    assert m.config.vocab_size == 70 and m.lm_head.weight.shape[0] == 70
    with torch.no_grad():
        torch.testing.assert_close(m(x).logits[..., :61], before)


def test_hf_trainer_trains_it(tmp_path):
    pytest.importorskip("accelerate")
    from datasets import Dataset
    from transformers import Trainer, TrainingArguments

    torch.manual_seed(0)
    m = HAMTForCausalLM(small_config())
    g = torch.Generator().manual_seed(0)
    rows = [torch.randint(0, 61, (16,), generator=g).tolist() for _ in range(8)]
    ds = Dataset.from_dict({"input_ids": rows, "labels": rows})
    args = TrainingArguments(output_dir=str(tmp_path), max_steps=3, per_device_train_batch_size=4, learning_rate=1e-2,
                             report_to=[], save_strategy="no", use_cpu=True, logging_steps=1)
    before = m.blocks[0].mixer.kqv.weight.detach().clone()
    result = Trainer(model=m, args=args, train_dataset=ds).train()
    assert result.global_step == 3 and torch.isfinite(torch.tensor(result.training_loss))
    assert not torch.equal(before, m.blocks[0].mixer.kqv.weight.detach())
