"""MQAR: the sequences are solvable, an oracle is perfect, a constant guess sits at chance."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
from torch import nn

from hamt.errors import ConfigError
from hamt.metrics import recall


class Oracle(nn.Module):
    """Looks the current key up among the earlier (key, value) pairs and predicts the bound value."""

    def __init__(self, vocab: int):
        super().__init__()
        self.vocab = vocab
        _, self.keys, _ = recall.vocab_split(vocab)

    def forward(self, input_ids, **kwargs):
        B, T = input_ids.shape
        logits = torch.zeros(B, T, self.vocab)
        for b in range(B):
            seq = input_ids[b].tolist()
            bound = {}
            for t, tok in enumerate(seq):
                if tok in self.keys and tok in bound:
                    logits[b, t, bound[tok]] = 1.0
                if tok in self.keys and t + 1 < T and tok not in bound:
                    bound[tok] = seq[t + 1]  # first occurrence: the binding
        return SimpleNamespace(logits=logits)


class Constant(nn.Module):
    def __init__(self, vocab: int, token: int):
        super().__init__()
        self.vocab, self.token = vocab, token

    def forward(self, input_ids, **kwargs):
        logits = torch.zeros(*input_ids.shape, self.vocab)
        logits[..., self.token] = 1.0
        return SimpleNamespace(logits=logits)


def test_sequences_bind_distinct_keys_and_ask_for_their_values():
    V, n = 40, 6
    x, y = recall.make_mqar(50, n, V, seq_len=40, seed=3)
    filler, keys, values = recall.vocab_split(V)
    assert x.shape == y.shape == (50, 40)
    for b in range(50):
        ks, vs = x[b, 0:2 * n:2].tolist(), x[b, 1:2 * n:2].tolist()
        assert len(set(ks)) == n and all(k in keys for k in ks) and all(v in values for v in vs)
        bound = dict(zip(ks, vs))
        q = (y[b] != recall.IGNORE).nonzero().flatten().tolist()
        assert len(q) == n
        for t in q:
            assert x[b, t].item() in bound and y[b, t].item() == bound[x[b, t].item()]
            assert x[b, t + 1].item() == y[b, t].item()  # the answer is fed next (teacher forcing)
        # the gap between binding and queries is filler
        assert (x[b, 2 * n:40 - 2 * n] == filler).all()


def test_generator_is_seeded():
    a = recall.make_mqar(8, 4, 32, seed=1)
    b = recall.make_mqar(8, 4, 32, seed=1)
    c = recall.make_mqar(8, 4, 32, seed=2)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]) and not torch.equal(a[0], c[0])


def test_more_queries_than_pairs_repeat_keys():
    x, y = recall.make_mqar(4, 2, 20, n_queries=5)
    assert x.shape[1] == 14 and int((y != recall.IGNORE).sum()) == 20


def test_oracle_is_perfect():
    V = 64
    for n, T in [(1, None), (4, None), (8, 64)]:
        x, y = recall.make_mqar(32, n, V, seq_len=T, seed=n)
        assert recall.accuracy(Oracle(V), x, y) == 1.0


def test_constant_predictor_is_at_chance():
    V = 21  # 10 keys, 10 values
    x, y = recall.make_mqar(1000, 4, V, seed=9)
    acc = recall.accuracy(Constant(V, recall.vocab_split(V)[2].start + 3), x, y)
    p = recall.chance(V)
    assert p == pytest.approx(0.1)
    se = (p * (1 - p) / 4000) ** 0.5
    assert abs(acc - p) < 4 * se
    assert not recall.above_chance(acc, p, 4000)
    assert recall.above_chance(1.0, p, 4000)


def test_recall_accuracy_grid_over_pairs_and_lengths():
    V = 64
    rows = recall.recall_accuracy(Oracle(V), V, pairs=[1, 2, 8], seq_lens=[None, 16, 48], n_samples=4)
    got = {(r["n_pairs"], r["seq_len"]) for r in rows}
    # (8 pairs, 16 tokens) cannot fit and is left out; None means the shortest length that fits
    assert got == {(1, 4), (1, 16), (1, 48), (2, 8), (2, 16), (2, 48), (8, 32), (8, 48)}
    assert all(r["accuracy"] == 1.0 and r["chance"] == recall.chance(V) for r in rows)


def test_bad_settings_are_config_errors():
    with pytest.raises(ConfigError, match="distinct keys"):
        recall.make_mqar(2, 20, 32)
    with pytest.raises(ConfigError, match="too short"):
        recall.make_mqar(2, 4, 32, seq_len=10)
    with pytest.raises(ConfigError):
        recall.vocab_split(3)


def test_train_recall_learns_above_chance_quickly():
    from transformers import GPT2Config, GPT2LMHeadModel

    V = 16

    def factory():
        return GPT2LMHeadModel(GPT2Config(vocab_size=V, n_positions=16, n_embd=32, n_layer=2, n_head=2, bos_token_id=0,
                                          eos_token_id=0, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0))

    r = recall.train_recall(factory, vocab_size=V, n_pairs=2, steps=80, batch_size=32, lr=1e-2, eval_samples=128)
    assert r["chance"] == pytest.approx(1 / 8)
    assert sum(r["losses"][-10:]) / 10 < sum(r["losses"][:10]) / 10
    assert recall.above_chance(r["accuracy"], r["chance"], r["queries"])
    assert [row["n_pairs"] for row in r["rows"]] == [2]
