"""hamt.metrics.lm against values known in closed form and against direct computations."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from hamt.metrics import lm
from metrics.models import BigramLM, UniformLM, full_nll, tiny_gpt2, tiny_hamt


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


def _bpe(text: str):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator([text], trainers.BpeTrainer(vocab_size=300, special_tokens=["<|endoftext|>"],
                                                        initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    return tok


TEXT = " = Über = \n naïve café 東京 — “quotes” and 😀 emoji .\n = Zwei = \n second document , ascii only .\n"


def test_scored_text_is_the_text_of_every_token_but_the_first_separators_adding_nothing():
    tok = _bpe(TEXT)
    eot = tok.token_to_id("<|endoftext|>")
    first, second = TEXT.split(" = Zwei")
    second = " = Zwei" + second
    ids = [eot] + tok.encode(first).ids + [eot] + tok.encode(second).ids  # as hamt.tokenize lays out documents
    assert lm.scored_text(tok, ids) == TEXT.encode("utf-8")  # the raw text exactly: the separators add no bytes
    c = lm.scored_counts(tok, ids)
    assert (c["bytes"], c["words"]) == (len(TEXT.encode("utf-8")), len(TEXT.split())) and c["counts_note"].startswith("exact")
    # the first token is context only: a slice starting at a word scores the text after that token
    assert lm.scored_text(tok, ids[1:]) == TEXT.encode("utf-8")[len(tok.decode([ids[1]]).encode("utf-8")):]


def test_slices_count_exact_bytes_even_inside_a_multibyte_character():
    """Consecutive evaluated slices (each scoring all but its first token) add up to the whole text's bytes."""
    tok = _bpe(TEXT)
    ids = [tok.token_to_id("<|endoftext|>")] + tok.encode(TEXT).ids
    table = lm.token_bytes(tok)
    assert any(b and (b[0] & 0xC0) == 0x80 for b in table)  # some tokens start inside a character (a real test)
    for cut in range(2, len(ids) - 1):
        # a slice ids[a:b] scores ids[a+1:b]; slices [0, cut) and [cut - 1, n) score every target once
        assert lm.scored_text(tok, ids[:cut]) + lm.scored_text(tok, ids[cut - 1:]) == TEXT.encode("utf-8")


def test_a_non_byte_level_tokenizer_is_decoded_as_a_whole():
    from tokenizers import Tokenizer, models, pre_tokenizers

    tok = Tokenizer(models.WordLevel({"[UNK]": 0, "a": 1, "b": 2}, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    assert lm.token_bytes(tok) is None
    assert lm.scored_counts(tok, [1, 2, 1, 2])["words"] == 3


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
