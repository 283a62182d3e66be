"""``hamt compare``: rows for every model, skipped and stale ones with their reason, results files; it never trains."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import pytest

from conftest import ROOT, make_corpus
from hamt import compare as cmp
from hamt import zoo
from hamt.errors import ConfigError

FAST = [
    "compare.recall_train_steps=4", "compare.speed_seq_lens=[16]", "compare.decode_contexts=[8]",
    "compare.decode_tokens=2", "compare.recall_pairs=[1, 2]", "compare.recall_samples=4", "compare.throughput_steps=1",
    "compare.generate_tokens=4", "compare.eval_max_tokens=300",
]
# The trained models' budget here (the training and the evaluating parameters must agree, or the rows are stale).
TRAIN = ["train.max_steps=2", "train.eval_every=2", "train.ckpt_every=2", "train.log_every=1", "train.warmup_steps=1"]


def micro_params(base: Path, *extra: str):
    from hamt.params import load_params

    sets = [
        "data.source=local", f"data.local_path={base / 'corpus.txt'}", f"data.raw_dir={base / 'raw'}",
        f"tokenizer.tokens_dir={base / 'tokens'}", f"train.out_dir={base / 'ckpt'}",
        f"train.results_dir={base / 'results/train'}", f"compare.out_dir={base / 'results/compare'}",
        f"validate.out_dir={base / 'results/validate'}", f"report.out_dir={base / 'results'}",
        f"report.bench_dir={base / 'results/bench'}", "train.device=cpu",
    ]
    return load_params(ROOT / "params.yaml", "micro", sets + FAST + TRAIN + list(extra))


@pytest.fixture(scope="module")
def tokens(tmp_path_factory) -> Path:
    """Raw text and BPE tokens of a small corpus, shared by the module (read-only afterwards)."""
    from hamt.data import download
    from hamt.tokenize import tokenize

    base = tmp_path_factory.mktemp("compare")
    (base / "corpus.txt").write_text(make_corpus(600), encoding="utf-8")
    params = micro_params(base)
    download(params)
    tokenize(params, progress=False)
    return base


def with_tokens(tokens: Path, tmp_path: Path, *extra: str):
    """Params reading the shared tokens but writing checkpoints and results under ``tmp_path``."""
    params = micro_params(tmp_path, *extra)
    params.tokenizer.tokens_dir = str(tokens / "tokens")
    params.data.raw_dir = str(tokens / "raw")
    return params


@pytest.fixture(scope="module")
def trained(tokens) -> Path:
    """hamt, the from-scratch baselines, ablation-aux-on and hamt-seed2 trained by ``hamt.train`` for 2 steps (shared,
    read-only)."""
    from hamt.train import train

    params = use_trained(with_tokens(tokens, tokens), tokens)
    for name in ("hamt", "gpt2-scratch", "llama-scratch", "mamba-scratch", "ablation-aux-on", "hamt-seed2"):
        train(params, model=name)
    return tokens


def use_trained(params, trained: Path):
    params.train.out_dir = str(trained / "ckpt")
    params.train.results_dir = str(trained / "results/train")
    return params


def save_gpt2(path: Path, vocab: int = 512, n_positions: int = 64):
    from transformers import GPT2Config, GPT2LMHeadModel

    cfg = GPT2Config(vocab_size=vocab, n_positions=n_positions, n_embd=16, n_layer=1, n_head=2, bos_token_id=0,
                     eos_token_id=0)
    GPT2LMHeadModel(cfg).save_pretrained(path)


def test_compare_writes_one_row_per_model_and_skips_with_reasons(tokens, trained, tmp_path):
    params = use_trained(with_tokens(tokens, tmp_path, "compare.trained=[hamt, gpt2-scratch]"), trained)
    result = cmp.compare(params, baselines=["gpt2", "EleutherAI/pythia-70m"])
    rows = {r["name"]: r for r in result["rows"]}
    assert list(rows) == ["hamt", "gpt2-scratch", "gpt2", "EleutherAI/pythia-70m"]
    for name in ("hamt", "gpt2-scratch"):
        r = rows[name]
        assert r["status"] == "ok", r["reason"]
        assert all(math.isfinite(r[k]) and r[k] > 0 for k in ("ppl", "bpb", "word_ppl", "train_tok_s", "infer_tok_s"))
        assert r["eval_tokens"] == 299 and r["counts_note"].startswith("exact")
        assert r["decode_tok_s"] > 0 and r["state_bytes"] > 0 and 0.0 <= r["recall_acc"] <= 1.0
    assert rows["hamt"]["fidelity"] is not None and rows["hamt"]["slot_active_fraction"] is not None
    assert rows["hamt"]["sample"]["status"] == "ok" and rows["hamt"]["sample"]["text"].startswith("The")
    assert rows["gpt2-scratch"]["fidelity"] is None
    for name in ("gpt2", "EleutherAI/pythia-70m"):
        assert rows[name]["status"] == "skipped" and "tokenizer mismatch" in rows[name]["reason"]
        assert rows[name]["ppl"] is None  # never faked
    # both probes ran and landed in the rows of the two architectures
    assert result["recall"]["status"] == "ok" and set(result["recall"]["models"]) == {"hamt", "gpt2"}
    assert rows["hamt"]["mqar_trained_acc"] == result["recall"]["models"]["hamt"]["accuracy"]
    assert {r["model"] for r in result["speed"]["rows"]} == {"hamt", "gpt2"}
    assert all(r["status"] == "ok" and r["hamt_speedup_vs_gpt2"] > 0 for r in result["speed"]["rows"])
    # the probe times the GPT-2 that was trained (its position table already covers the probe's lengths here)
    assert next(r["params"] for r in result["speed"]["rows"] if r["model"] == "gpt2") == rows["gpt2-scratch"]["params"]
    # files
    out = Path(params.compare.out_dir)
    with open(out / "results.csv", newline="") as f:
        table = list(csv.DictReader(f))
    assert [r["name"] for r in table] == list(rows) and list(table[0]) == cmp.COLUMNS
    assert table[2]["status"] == "skipped" and table[2]["reason"]
    saved = json.loads((out / "results.json").read_text())
    assert [r["name"] for r in saved["rows"]] == list(rows) and saved["env"]["device"] == "cpu"
    assert json.loads((out / "speed.json").read_text())["status"] == "ok"


def test_bpb_and_word_ppl_of_a_slice_count_the_bytes_and_words_of_its_decoded_text(tokens, trained, tmp_path):
    """By hand: decode the evaluated slice's scored ids (all but the first), count its UTF-8 bytes and words."""
    import numpy as np

    from hamt.tokens import load_split, read_meta
    from hamt.tokenize import load_tokenizer

    params = use_trained(with_tokens(tokens, tmp_path), trained)
    n = params.compare.eval_max_tokens
    meta = read_meta(tokens / "tokens")
    ids = np.asarray(load_split(tokens / "tokens", params.compare.eval_split, meta)[:n]).tolist()
    assert n < meta["splits"][params.compare.eval_split]["tokens"]  # a slice, not the whole split
    text = load_tokenizer(tokens / "tokens").decode(ids[1:], skip_special_tokens=True)
    n_bytes, n_words = len(text.encode("utf-8")), len(text.split())
    for name in ("hamt", "gpt2-scratch"):
        row = cmp.run_baseline(params, name)
        assert row["status"] == "ok", row["reason"]
        assert (row["eval_bytes"], row["eval_words"], row["eval_tokens"]) == (n_bytes, n_words, n - 1)
        nll = row["loss"] * row["eval_tokens"]
        assert row["bpb"] == pytest.approx(nll / (math.log(2) * n_bytes), rel=1e-12)
        assert row["word_ppl"] == pytest.approx(math.exp(nll / n_words), rel=1e-12)


def test_llama_and_mamba_are_trained_by_the_same_trainer_and_get_full_rows(tokens, trained, tmp_path):
    params = use_trained(with_tokens(tokens, tmp_path), trained)
    hamt_row = cmp.run_baseline(params, "hamt")
    rows = {}
    for name, cls in (("llama-scratch", "LlamaForCausalLM"), ("mamba-scratch", "Mamba2ForCausalLM")):
        cfg = json.loads((Path(params.train.out_dir) / name / "final" / "config.json").read_text())
        assert cfg["architectures"] == [cls]
        summary = json.loads((Path(params.train.results_dir) / name / "metrics.json").read_text())
        assert summary["steps"] == 2 and summary["tokens"] == hamt_row["tokens_seen"]  # same budget as HAMT
        row = cmp.run_baseline(params, name)
        assert row["status"] == "ok", row["reason"]
        assert all(math.isfinite(row[k]) and row[k] > 0 for k in ("ppl", "bpb", "word_ppl", "train_tok_s", "decode_tok_s"))
        assert row["eval_bytes"] == hamt_row["eval_bytes"] and row["eval_tokens"] == hamt_row["eval_tokens"]
        rows[name] = row
    # Mamba-2 decodes from a constant state, like HAMT; Llama's KV cache grows with the context
    state = {n: [d["state_bytes"] for d in r["decode"] if d["status"] == "ok"] for n, r in rows.items()}
    assert len(state["mamba-scratch"]) >= 2 and len(set(state["mamba-scratch"])) == 1
    assert state["llama-scratch"] == sorted(state["llama-scratch"]) and len(set(state["llama-scratch"])) >= 2


def test_the_whole_split_scores_exactly_the_bytes_and_words_of_the_raw_file(tokens, tmp_path):
    """Over a whole split the decoded scored text is the raw file (separators add nothing): meta.json's counts."""
    params = with_tokens(tokens, tmp_path, "compare.eval_max_tokens=0", "compare.eval_split=train")  # many documents
    ctx = cmp.EvalContext(params)
    split = ctx.meta["splits"][params.compare.eval_split]
    assert len(ctx.ids) == split["tokens"] and split["documents"] >= 2  # separators inside the split
    assert (ctx.counts["bytes"], ctx.counts["words"]) == (split["bytes"], split["words"])


def test_pretrained_offline_and_from_a_local_folder(tokens, tmp_path, monkeypatch):
    local = tmp_path / "local-gpt2"
    save_gpt2(local)
    params = with_tokens(tokens, tmp_path, f"compare.local_models={{gpt2: {local}}}")
    # Pretend the tokens are GPT-2 BPE so the pretrained path runs (the real check is tested above).
    monkeypatch.setattr(cmp.EvalContext, "is_gpt2_bpe", lambda self: True)
    off = cmp.run_baseline(params, "distilgpt2")
    assert off["status"] == "skipped" and "not available" in off["reason"] and "distilgpt2" in off["reason"]
    row = cmp.run_baseline(params, "gpt2")
    assert row["status"] == "ok", row["reason"]
    assert row["model_dir"] == str(local) and row["ppl"] > 0 and row["tokens_seen"] is None


def test_own_tokenizer_models_are_re_tokenized(tokens, tmp_path, monkeypatch):
    """A Pythia-style model with its own tokenizer folder: the evaluated text is decoded and re-encoded."""
    from transformers import GPTNeoXConfig, GPTNeoXForCausalLM

    from hamt.tokenize import load_hf_tokenizer

    folder = tmp_path / "pythia"
    tok = load_hf_tokenizer(tokens / "tokens")
    tok.save_pretrained(folder)
    cfg = GPTNeoXConfig(vocab_size=512, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                        intermediate_size=32, max_position_embeddings=64, bos_token_id=0, eos_token_id=0)
    GPTNeoXForCausalLM(cfg).save_pretrained(folder)
    params = with_tokens(tokens, tmp_path, f"compare.local_models={{EleutherAI/pythia-70m: {folder}}}")
    monkeypatch.setattr(cmp.EvalContext, "is_gpt2_bpe", lambda self: True)
    row = cmp.run_baseline(params, "EleutherAI/pythia-70m")
    assert row["status"] == "ok", row["reason"]
    assert row["tokenizer"].startswith("own")
    # same tokenizer here, so re-tokenizing the decoded text gives (about) the same number of targets
    assert abs(row["eval_tokens"] - 299) <= 5
    assert row["bpb"] > 0 and row["counts_note"].startswith("exact")


def test_missing_hamt_is_a_skipped_row_and_a_failing_cli(tokens, tmp_path, capsys):
    params = with_tokens(tokens, tmp_path, "compare.baselines=[]", "compare.recall_train_steps=0",
                         "compare.speed_seq_lens=[]")
    row = cmp.run_baseline(params, "hamt")
    assert row["status"] == "skipped" and "hamt train" in row["reason"]

    class Args:
        baselines = None
        no_ablations = True

    assert cmp.cli_compare(params, Args()) == 1
    assert "HAMT itself was not evaluated" in capsys.readouterr().err


def test_compare_never_trains_a_missing_model(tokens, tmp_path, monkeypatch):
    import hamt.train

    monkeypatch.setattr(hamt.train, "train", lambda *a, **k: pytest.fail("compare must not train"))
    params = with_tokens(tokens, tmp_path)
    for name in ("gpt2-scratch", "ablation-slots-1"):
        row = cmp.run_baseline(params, name)
        assert row["status"] == "skipped" and f"run `hamt train --model {name}` (or `dvc repro`)" in row["reason"]
        assert not (Path(params.train.out_dir) / name).exists()


def test_a_seed_run_trains_with_its_seed_and_folds_into_its_models_row(tokens, trained, tmp_path):
    import statistics

    from hamt.checkpoint import load_latest

    params = use_trained(with_tokens(tokens, tmp_path, "compare.trained=[hamt, hamt-seed2]"), trained)
    state, _ = load_latest(Path(params.train.out_dir) / "hamt-seed2")
    assert state["params"]["train"]["seed"] == 2 != params.train.seed  # everything else as params.yaml says
    rows = {r["name"]: r for r in cmp.compare(params, baselines=[])["rows"]}
    assert list(rows) == ["hamt", "hamt-seed2"]
    assert rows["hamt-seed2"]["status"] == "ok" and rows["hamt-seed2"]["seed_of"] == "hamt"  # not stale: its seed
    assert rows["hamt"]["bpb"] != rows["hamt-seed2"]["bpb"]  # another initialisation and batch order
    bpbs = [rows["hamt"]["bpb"], rows["hamt-seed2"]["bpb"]]
    assert rows["hamt"]["seeds"] == [params.train.seed, 2] and rows["hamt"]["seeds_missing"] == []
    assert rows["hamt"]["bpb_mean"] == statistics.fmean(bpbs) and rows["hamt"]["bpb_std"] == statistics.stdev(bpbs)


def test_seed_statistics_average_only_evaluated_runs():
    from hamt.compare.seeds import aggregate_seeds

    rows = [{"name": "hamt", "status": "ok", "bpb": 1.0}, {"name": "llama-scratch", "status": "ok", "bpb": 2.0},
            {"name": "hamt-seed2", "status": "ok", "bpb": 1.2}, {"name": "hamt-seed3", "status": "stale", "bpb": None},
            {"name": "llama-scratch-seed2", "status": "skipped", "bpb": None}]
    out = {r["name"]: r for r in aggregate_seeds(rows, base_seed=1337)}
    assert out["hamt"]["seeds"] == [1337, 2] and out["hamt"]["seeds_missing"] == ["hamt-seed3"]
    assert out["hamt"]["bpb_mean"] == pytest.approx(1.1) and out["hamt"]["bpb_std"] == pytest.approx(0.1414213562)
    assert out["llama-scratch"]["seeds"] == [1337] and out["llama-scratch"]["bpb_std"] is None  # one run: no spread
    assert {r["seed_of"] for r in rows if "-seed" in r["name"]} == {"hamt", "llama-scratch"}


def test_ablation_row_is_its_trained_switch(tokens, trained, tmp_path):
    params = use_trained(with_tokens(tokens, tmp_path), trained)
    row = cmp.run_baseline(params, "ablation-aux-on")
    assert row["status"] == "ok", row["reason"]
    cfg = json.loads((Path(params.train.out_dir) / "ablation-aux-on" / "final" / "config.json").read_text())
    assert cfg["use_auxiliary_loss"] is True
    assert row["hamt_switches"]["use_auxiliary_loss"] is True and row["config"] == {"use_auxiliary_loss": True}
    assert row["tokens_seen"] == 2 * params.train.batch_size * params.train.seq_len and row["train_steps"] == 2
    assert row["checkpoint"].endswith("step_00000002.pt")


@pytest.mark.parametrize("change, names, why", [
    ("train.lr=0.002", ["hamt", "gpt2-scratch", "ablation-aux-on", "hamt-seed2"], "train.lr: 0.003 when trained, 0.002 now"),
    ("train.seed=5", ["hamt"], "train.seed: 1337 when trained, 5 now"),
    ("train.max_steps=3", ["hamt"], "train.max_steps: 2 when trained, 3 now"),
    ("model.num_slots=3", ["hamt", "ablation-aux-on"], "model config.num_slots: 2 when trained, 3 now"),
    ("model.hidden_dim=48", ["gpt2-scratch"], "model config.n_embd"),  # the matched GPT-2 follows HAMT's size
])
def test_a_checkpoint_trained_with_other_parameters_is_a_stale_row(tokens, trained, tmp_path, change, names, why):
    params = use_trained(with_tokens(tokens, tmp_path, change), trained)
    for name in names:
        row = cmp.run_baseline(params, name)
        assert row["status"] == "stale" and why in row["reason"], row["reason"]
        assert f"run `hamt train --model {name}`" in row["reason"] and "\n" not in row["reason"]
        assert row["ppl"] is None  # never evaluated
    # what only says how a run executes does not make it stale
    same = use_trained(with_tokens(tokens, tmp_path, "train.log_every=7", "train.micro_batch_size=4"), trained)
    assert cmp.run_baseline(same, "hamt")["status"] == "ok"


def test_a_model_trained_on_other_tokens_is_stale(tokens, trained, tmp_path):
    import shutil

    ckpt = tmp_path / "ckpt"
    shutil.copytree(Path(trained) / "ckpt" / "hamt", ckpt / "hamt")
    meta = json.loads((ckpt / "hamt/final/meta.json").read_text())
    meta["tokenizer_sha256"] = "0" * 64
    (ckpt / "hamt/final/meta.json").write_text(json.dumps(meta))
    params = with_tokens(tokens, tmp_path)
    params.train.results_dir = str(Path(trained) / "results/train")
    row = cmp.run_baseline(params, "hamt")
    assert row["status"] == "stale" and "tokens.tokenizer_sha256" in row["reason"]
    # a final/ folder without the training checkpoint that says how it was made is not evaluated either
    for f in (ckpt / "hamt").glob("step_*"):
        f.unlink()
    row = cmp.run_baseline(params, "hamt")
    assert row["status"] == "skipped" and "records what" in row["reason"]


def test_registry_names_and_ablation_switches():
    assert zoo.ablation_overrides("gating-off") == {"use_gating": False}
    assert zoo.ablation_overrides("slots-8") == {"num_slots": 8}
    assert zoo.ablation_overrides("conv-off") == {"conv_kernel": 0}
    with pytest.raises(ConfigError):
        zoo.ablation_overrides("dropout-on")
    with pytest.raises(ConfigError, match="unknown model"):
        zoo.kind_of("gpt5")


def test_unknown_ablation_or_baseline_fails_before_any_work(tmp_path):
    with pytest.raises(ConfigError, match="unknown ablation"):
        micro_params(tmp_path, "compare.trained=[hamt, ablation-no-such-switch]")
    with pytest.raises(ConfigError, match="unknown model"):
        micro_params(tmp_path, "compare.baselines=[gpt5]")
    names = zoo.evaluation_plan(micro_params(tmp_path, "compare.trained=[hamt, ablation-slots-1, gpt2-scratch]",
                                             "compare.baselines=[gpt2]"))
    assert names == ["hamt", "gpt2-scratch", "gpt2", "ablation-slots-1"]
    assert zoo.training_plan(micro_params(tmp_path)) == micro_params(tmp_path).compare.trained
