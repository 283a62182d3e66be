"""hamt.generate: text from a saved model folder, and its errors (one line each, no traceback)."""

from __future__ import annotations

import pytest
import torch

from conftest import make_micro_tokens
from hamt.errors import CheckpointError, ConfigError


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    from hamt.config import HAMTConfig
    from hamt.tokens import read_meta
    from hamt.model import HAMTForCausalLM

    root = tmp_path_factory.mktemp("gen")
    tokens = make_micro_tokens(root, seed=3)
    vocab = int(read_meta(tokens)["vocab_size"])
    torch.manual_seed(0)
    cfg = HAMTConfig(vocab_size=vocab, hidden_dim=32, hcm_dim=64, num_layers=1, num_slots=2, num_attention_heads=2,
                     max_position_embeddings=32)
    model_dir = root / "model"
    HAMTForCausalLM(cfg).save_pretrained(model_dir)
    return model_dir, tokens


def test_greedy_text_is_the_models_argmax_continuation(saved):
    from hamt.generate import generate_text, load_model
    from hamt.tokenize import load_tokenizer

    model_dir, tokens = saved
    text = generate_text(model_dir, tokens, "the queen", max_new_tokens=6, temperature=0.0)
    tok = load_tokenizer(tokens)
    ids = tok.encode("the queen", add_special_tokens=False).ids
    model = load_model(model_dir)
    x = torch.tensor([ids])
    with torch.no_grad():
        for _ in range(6):  # full recompute, no state: what greedy decoding must give
            x = torch.cat([x, model(input_ids=x).logits[:, -1:].argmax(-1)], 1)
    assert text == tok.decode(x[0].tolist(), skip_special_tokens=False)
    assert text.startswith("the queen")


def test_sampling_is_seeded(saved):
    from hamt.generate import generate_text

    model_dir, tokens = saved
    a = generate_text(model_dir, tokens, "the", max_new_tokens=8, temperature=1.0, seed=5)
    b = generate_text(model_dir, tokens, "the", max_new_tokens=8, temperature=1.0, seed=5)
    assert a == b


def test_bad_arguments_and_missing_model(saved, tmp_path):
    from hamt.generate import generate_text

    model_dir, tokens = saved
    with pytest.raises(ConfigError, match="max-new-tokens"):
        generate_text(model_dir, tokens, "the", max_new_tokens=0)
    with pytest.raises(ConfigError, match="temperature"):
        generate_text(model_dir, tokens, "the", temperature=-1)
    with pytest.raises(CheckpointError, match="config.json missing"):
        generate_text(tmp_path, tokens, "the")
