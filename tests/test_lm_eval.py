"""lm-evaluation-harness as a client we do not write: its ``hf`` model scores a saved HAMT folder (CLI, with
trust_remote_code and no max_length argument; and from Python) and gives hamt's own numbers."""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from conftest import ROOT, make_corpus, make_micro_tokens

lm_eval = pytest.importorskip("lm_eval")

TASK_YAML = """\
task: hamt_local_text
dataset_path: json
dataset_kwargs:
  data_files:
    test: {data}
test_split: test
output_type: loglikelihood_rolling
doc_to_text: ""
doc_to_target: "{{{{text}}}}"
metric_list:
  - metric: word_perplexity
  - metric: byte_perplexity
  - metric: bits_per_byte
metadata:
  version: 1.0
"""


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    """A micro HAMT folder as the pipeline writes it (model + code + tokenizer), and one document of text."""
    from hamt.config import HAMTConfig
    from hamt.tokens import read_meta
    from hamt.model import HAMTForCausalLM
    from hamt.tokenize import load_hf_tokenizer

    root = tmp_path_factory.mktemp("lmeval")
    tokens = make_micro_tokens(root, seed=5, n_lines=600)
    torch.manual_seed(0)
    cfg = HAMTConfig(vocab_size=int(read_meta(tokens)["vocab_size"]), hidden_dim=32, hcm_dim=64, num_layers=1,
                     num_slots=2, num_attention_heads=2, max_position_embeddings=32)
    path = root / "model"
    HAMTForCausalLM(cfg).save_pretrained(path)
    load_hf_tokenizer(tokens).save_pretrained(path)
    # one document, longer than the training context (32) so a max_length cut would show
    text = " ".join(make_corpus(40, seed=9).split())
    return path, tokens, text


def hamt_numbers(path: Path, tokens: Path, text: str) -> dict:
    """What `hamt compare` computes on a one-document split: evaluate_lm over [eot] + the text's ids."""
    from hamt.generate import load_model
    from hamt.metrics.lm import evaluate_lm, text_counts
    from hamt.tokenize import load_tokenizer

    tok = load_tokenizer(tokens)
    ids = [tok.token_to_id("<|endoftext|>")] + tok.encode(text, add_special_tokens=False).ids
    c = text_counts(text)
    return evaluate_lm(load_model(path), torch.tensor(ids), context=len(ids), stride=len(ids) - 1,
                       n_bytes=c["bytes"], n_words=c["words"])


@pytest.mark.slow
def test_lm_eval_cli_on_a_local_task_gives_hamts_bpb_and_word_perplexity(checkpoint, tmp_path):
    path, tokens, text = checkpoint
    (tmp_path / "docs.jsonl").write_text(json.dumps({"text": text}) + "\n", encoding="utf-8")
    tasks = tmp_path / "tasks"
    tasks.mkdir()
    (tasks / "hamt_local_text.yaml").write_text(TASK_YAML.format(data=tmp_path / "docs.jsonl"), encoding="utf-8")
    exe = shutil.which("lm_eval", path=str(Path(sys.executable).parent)) or "lm_eval"
    # the documented command (docs/LM_EVAL.md), with hamt not importable: only the folder's own code runs
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    cmd = [exe, "--model", "hf", "--model_args", f"pretrained={path},trust_remote_code=True,dtype=float32",
           "--tasks", "hamt_local_text", "--include_path", str(tasks), "--device", "cpu", "--batch_size", "1",
           "--output_path", str(tmp_path / "out")]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=env, cwd=tmp_path)
    assert out.returncode == 0, (out.stdout[-2000:], out.stderr[-4000:])
    files = sorted((tmp_path / "out").rglob("results_*.json"))
    assert files, out.stdout[-2000:]
    res = json.loads(files[-1].read_text())["results"]["hamt_local_text"]
    ours = hamt_numbers(path, tokens, text)
    assert ours["tokens"] > 32
    assert res["bits_per_byte,none"] == pytest.approx(ours["bpb"], rel=5e-3)
    assert res["word_perplexity,none"] == pytest.approx(ours["word_ppl"], rel=5e-3)


def test_hflm_from_python_loglikelihood_and_rolling(checkpoint):
    """HFLM on the model object: its max_length is the config's n_positions, and its log-likelihoods are the
    model's own (no window cut: the rolling score equals one forward over the whole document)."""
    from lm_eval.api.instance import Instance
    from lm_eval.models.huggingface import HFLM
    from transformers import AutoTokenizer

    from hamt.generate import load_model

    path, tokens, text = checkpoint
    model = load_model(path)
    tok = AutoTokenizer.from_pretrained(path)
    lm = HFLM(pretrained=model, tokenizer=tok, batch_size=2, device="cpu")
    assert lm.max_length == model.config.n_positions > 32
    ctx, cont = "the queen", " binds the key"
    reqs = [Instance("loglikelihood", {}, (ctx, cont), 0), Instance("loglikelihood_rolling", {}, (text,), 1)]
    (ll, _greedy), = lm.loglikelihood(reqs[:1])
    rolling, = lm.loglikelihood_rolling(reqs[1:])
    c_ids, x_ids = tok(ctx)["input_ids"], tok(cont)["input_ids"]
    with torch.no_grad():
        lp = model(torch.tensor([c_ids + x_ids])).logits.log_softmax(-1)[0]
    ref = sum(lp[len(c_ids) - 1 + i, t].item() for i, t in enumerate(x_ids))
    assert ll == pytest.approx(ref, abs=1e-4)
    ours = hamt_numbers(path, tokens, text)
    assert -rolling == pytest.approx(ours["nll_sum"], rel=1e-5)
    assert math.isfinite(rolling)
