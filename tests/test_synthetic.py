"""The synthetic corpus: its analytic entropy against brute force and sampling, determinism, recall spans."""

from __future__ import annotations

import math
import re
from collections import OrderedDict

import numpy as np
import pytest

from hamt import synthetic
from hamt.params import SyntheticParams
from hamt.tokenize import _HEADING

# small enough for a test, large enough that every line kind and both chain orders occur often
SMALL = dict(vocab_words=300, successors=8, keys=64, values=128)


def enumerate_sentences(src: synthetic.Source, min_prob: float = 1e-18):
    """Every sentence (as symbol ids, ending in src.end) with probability >= min_prob, by depth-first search."""
    out = []
    stack = [(-1, -1, 0.0, [])]  # (prev, cur, log p so far, symbols)
    while stack:
        prev, cur, logp, syms = stack.pop()
        ids, p = src.next_probs(prev, cur)
        for x, px in zip(ids.tolist(), p.tolist()):
            lp = logp + math.log(px)
            if x == src.end:
                out.append((lp, syms + [x]))
            elif lp >= math.log(min_prob):
                stack.append((cur, x, lp, syms + [x]))
    return out


def test_sentence_entropy_equals_brute_force_enumeration():
    # 3 words, 2 successors each, 2 of them order-2, sentences of ~1.1 words: enumerable to 1e-18
    src = synthetic.Source(SyntheticParams(vocab_words=3, successors=2, zipf=1.0, order2_fraction=0.67,
                                           sentence_words=1.1, keys=2, values=2, recall_slots=1))
    assert src.order2.sum() == 2 and len({src.shift(u, w) for u in range(3) for w in range(3) if src.order2[w]}) == 2
    sentences = enumerate_sentences(src)
    probs = np.exp([lp for lp, _ in sentences])
    assert 1 - probs.sum() < 1e-12  # the enumeration holds (almost) all the mass
    wlen = [len(w) + 1 for w in src.words] + [2]
    brute = {
        "nats": float(-(probs * [lp for lp, _ in sentences]).sum()),
        "bytes": float(sum(p * sum(wlen[x] for x in syms) for p, (_, syms) in zip(probs, sentences))),
        "words": float(sum(p * len(syms) for p, (_, syms) in zip(probs, sentences))),
    }
    stats = src.sentence_stats()
    for k, v in brute.items():
        assert stats[k] == pytest.approx(v, rel=1e-10), k
    assert stats["words"] == pytest.approx(1.1 + 1, rel=1e-12)  # mean words = sentence_words, plus the "."


def test_entropy_rate_matches_the_empirical_average_of_a_long_sample():
    src = synthetic.Source(SyntheticParams(**SMALL))
    rate = src.entropy_rate()
    text, nll = src.generate(300_000)
    f = synthetic.split_floor(nll, text)
    # a sample of ~30K lines: the realised floor is within a few hundredths of a percent of the rate
    assert f["bits_per_byte"] == pytest.approx(rate["bits_per_byte"], rel=0.005)
    assert f["nats_per_word"] == pytest.approx(rate["nats_per_word"], rel=0.005)
    assert f["bytes"] / f["words"] == pytest.approx(rate["bytes_per_word"], rel=0.005)
    assert rate["sentence"]["words"] == pytest.approx(SyntheticParams().sentence_words + 1, rel=1e-10)
    blind = rate["recall_blind_bits_per_byte"] - rate["bits_per_byte"]
    assert blind == pytest.approx(0.2 * math.log(128) / math.log(2) / rate["bytes_per_line"], rel=1e-9)


def test_generated_nll_is_the_exact_log_probability_of_the_text():
    src = synthetic.Source(SyntheticParams(**SMALL))
    text, nll = src.generate(20_000, stream=3)
    assert src.score(text) == pytest.approx(nll, rel=1e-12)  # an independent parser agrees
    # a query whose value is not the bound one cannot come from the source
    bound = re.search(r"^(\w+) = (\w+) ;$", text, re.M)
    other = next(v for v in src.values if v != bound.group(2))
    assert src.score(f"{bound.group(1)} = {bound.group(2)} ;\n{bound.group(1)} -> {other} ;\n") == math.inf


def test_same_seed_same_bytes_other_seed_other_text():
    a_texts, a_floor = synthetic.generate_corpus(SyntheticParams(train_words=5000, valid_words=500, test_words=500, **SMALL))
    b_texts, b_floor = synthetic.generate_corpus(SyntheticParams(train_words=5000, valid_words=500, test_words=500, **SMALL))
    assert a_texts == b_texts and a_floor == b_floor
    assert len({a_texts["train"][:2000], a_texts["valid"][:2000], a_texts["test"][:2000]}) == 3  # splits are own streams
    c_texts, c_floor = synthetic.generate_corpus(SyntheticParams(seed=1, train_words=5000, valid_words=500, test_words=500, **SMALL))
    assert c_texts["train"] != a_texts["train"] and c_floor["entropy_rate"] != a_floor["entropy_rate"]


def test_recall_spans_obey_their_bindings():
    p = SyntheticParams(**SMALL)
    text, _ = synthetic.Source(p).generate(50_000)
    live: OrderedDict[str, str] = OrderedDict()
    queries = 0
    for line in text.splitlines():
        if m := re.fullmatch(r"(\w+) = (\w+) ;", line):
            live[m.group(1)] = m.group(2)
            live.move_to_end(m.group(1))
            if len(live) > p.recall_slots:
                live.popitem(last=False)
        elif m := re.fullmatch(r"(\w+) -> (\w+) ;", line):
            assert live.get(m.group(1)) == m.group(2), line  # the value last bound to a recent key
            queries += 1
    assert queries > 1000 and queries / len(text.splitlines()) == pytest.approx(p.query_prob, abs=0.02)


def test_text_is_letters_and_separators_one_document():
    src = synthetic.Source(SyntheticParams())
    lexicon = src.words + src.keys + src.values
    assert len(set(lexicon)) == len(lexicon) and all(re.fullmatch("[a-z]+", w) for w in lexicon)
    assert np.mean([len(w) for w in src.words[:20]]) < np.mean([len(w) for w in src.words[-20:]])  # frequent = short
    text, _ = src.generate(20_000)
    assert text.isascii() and text.endswith("\n")
    for line in text.splitlines(keepends=True):
        assert re.fullmatch(r"[a-z]+( [a-z]+)* \.\n|[a-z]+ (=|->) [a-z]+ ;\n", line), line
        assert not _HEADING.fullmatch(line)  # never a WikiText title: each split tokenizes as one document
