"""attention_mask: padded positions neither write nor decay the memory nor enter the convolution, so a padded
batch computes, row by row, what each sequence computes alone (generation with left padding, training
losses with left or right padding)."""

from __future__ import annotations

import pytest
import torch

from hamt.config import HAMTConfig
from hamt.model import HAMTForCausalLM

PAD = 0
LENGTHS = [9, 4, 6]


def make_model(mode: str = "auto", **kw) -> HAMTForCausalLM:
    torch.manual_seed(0)
    cfg = HAMTConfig.from_params(dict(vocab_size=61, hidden_dim=32, hcm_dim=64, num_layers=2, num_slots=3,
                                      num_attention_heads=4, max_position_embeddings=64, chunk_size=4,
                                      memory_mode=mode, pad_token_id=PAD, **kw))
    return HAMTForCausalLM(cfg).eval()


def prompts(seed: int = 1) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(1, 61, (n,), generator=g) for n in LENGTHS]


def pad(rows: list[torch.Tensor], side: str) -> tuple[torch.Tensor, torch.Tensor]:
    """(ids, attention_mask), each (B, max_len), padded on ``side``."""
    T = max(len(r) for r in rows)
    ids = torch.full((len(rows), T), PAD, dtype=torch.long)
    mask = torch.zeros(len(rows), T, dtype=torch.long)
    for i, r in enumerate(rows):
        sl = slice(T - len(r), T) if side == "left" else slice(0, len(r))
        ids[i, sl], mask[i, sl] = r, 1
    return ids, mask


@pytest.mark.parametrize("mode", ["auto", "chunk", "reference"])
@pytest.mark.parametrize("conv", [4, 0])
def test_left_padded_prefill_equals_each_prompt_alone(mode, conv):
    """Logits at real positions and the carried state (memory + conv tail) are the unpadded row's."""
    m = make_model(mode, conv_kernel=conv)
    rows = prompts()
    ids, mask = pad(rows, "left")
    with torch.no_grad():
        out = m(ids, attention_mask=mask, use_cache=True)
        unmasked = m(ids, use_cache=True).logits
        for i, r in enumerate(rows):
            alone = m(r[None], use_cache=True)
            torch.testing.assert_close(out.logits[i, -len(r):], alone.logits[0], rtol=1e-4, atol=1e-5)
            for s_pad, s_alone in zip(out.cache.layers, alone.cache.layers):
                torch.testing.assert_close(s_pad.memory[i], s_alone.memory[0], rtol=1e-4, atol=1e-6)
                if conv:
                    torch.testing.assert_close(s_pad.conv[i], s_alone.conv[0], rtol=1e-4, atol=1e-6)
    # and the mask is what makes it so: without it the pads are written into the state
    i = LENGTHS.index(min(LENGTHS))
    assert (unmasked[i, -min(LENGTHS):] - out.logits[i, -min(LENGTHS):]).abs().max() > 1e-3


@pytest.mark.parametrize("mode", ["auto", "chunk"])
def test_left_padded_batch_generates_what_each_prompt_generates_alone(mode):
    m = make_model(mode)
    rows = prompts(seed=2)
    ids, mask = pad(rows, "left")
    with torch.no_grad():
        batch = m.generate(ids, attention_mask=mask, max_new_tokens=10, do_sample=False, pad_token_id=PAD)
        for i, r in enumerate(rows):
            alone = m.generate(r[None], max_new_tokens=10, do_sample=False, pad_token_id=PAD)
            assert torch.equal(batch[i, ids.shape[1] - len(r):], alone[0]), i


@pytest.mark.parametrize("side", ["right", "left"])
def test_padded_training_batch_gives_the_unpadded_loss_and_gradients(side):
    m = make_model("auto").train()
    rows = prompts(seed=3)
    ids, mask = pad(rows, side)
    loss = m(ids, attention_mask=mask, labels=ids).loss
    loss.backward()
    g_pad = {n: p.grad.clone() for n, p in m.named_parameters() if p.grad is not None}
    m.zero_grad()
    # the same tokens unpadded: each row's mean loss, weighted by its number of targets
    n_targets = sum(len(r) - 1 for r in rows)
    total = sum(m(r[None], labels=r[None]).loss * (len(r) - 1) for r in rows) / n_targets
    total.backward()
    torch.testing.assert_close(loss, total, rtol=1e-5, atol=1e-6)
    for n, p in m.named_parameters():
        if p.grad is not None:
            torch.testing.assert_close(g_pad[n], p.grad, rtol=1e-4, atol=1e-6, msg=n)


def test_an_all_ones_mask_changes_nothing():
    m = make_model("auto")
    x = torch.randint(1, 61, (2, 12))
    with torch.no_grad():
        torch.testing.assert_close(m(x, attention_mask=torch.ones_like(x)).logits, m(x).logits, rtol=0, atol=0)


def test_memory_stats_average_over_real_tokens_only():
    m = make_model("auto")
    rows = prompts(seed=4)
    ids, mask = pad(rows, "left")
    with torch.no_grad():
        out = m(ids, attention_mask=mask, return_memory_stats=True)
    torch.testing.assert_close(out.slot_usage.sum(-1), torch.ones(2))
    assert 0.0 < out.fidelity.item() <= 1.0
