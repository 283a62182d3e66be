"""``params.yaml``: the single source of truth for every stage, loaded into typed, strict sections.

Layout of the file::

    profile: tiny            # the active profile (overridable: --profile NAME)
    profiles:                # named overlays, deep-merged over the base sections
      tiny: {model: {preset: tiny}, train: {...}}
      100m: {...}
    data: {...}              # one mapping per section below
    tokenizer: {...}
    model: {preset: tiny}    # HAMTConfig fields (validated by hamt.config, which imports transformers)
    train: {...}
    ...

Resolution order: dataclass defaults < base sections < ``profiles[profile]`` < ``--set a.b=value``.
Unknown keys and wrong types are rejected with a ``ConfigError`` naming the key. This module imports
no torch, so the CLI validates parameters before any heavy import.

This module is the schema (one dataclass per section, each field documented by the comment above it,
which is why it runs past 400 lines) and the public API (``load_params``, ``resolve``, ``Params``);
reading the file, profile overlays and ``--set`` overrides, which work on plain mappings, are
``hamt.params_file`` (re-exported here).
"""

from __future__ import annotations

import dataclasses
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hamt.errors import ConfigError
from hamt.params_file import (
    apply_overrides,
    deep_merge,
    parse_override,
    read_yaml,
    split_profiles,
)
from hamt.typed import from_dict, to_dict
from hamt.typed import require as _require

# The largest vocabulary a trained BPE may have (the tokenizers library aborts the process far above it).
MAX_VOCAB = 1 << 20

__all__ = ["SECTIONS", "Params", "deep_merge", "from_dict", "load_params", "parse_override", "profile_names",
           "read_yaml", "resolve", "to_dict"]

# --------------------------------------------------------------------------------------------------
# Sections. Each field has a one-line docstring (the comment above it).
# --------------------------------------------------------------------------------------------------


@dataclass
class SyntheticParams:
    """The generated corpus (``data.source: synthetic``, or ``auto`` without the hub; see hamt/synthetic.py)."""

    # random seed of the language (lexicon, chain) and of the text
    seed: int = 0
    # words per split (whitespace-separated, as bpb/word ppl count them); each split ends at the first line end past it
    train_words: int = 340000
    valid_words: int = 34000
    test_words: int = 34000
    # size of the word vocabulary (Zipfian: the frequent words are the short ones)
    vocab_words: int = 2000
    # possible next words per context (the chain's sparsity)
    successors: int = 16
    # Zipf exponent of the unigram and of the successor weights
    zipf: float = 1.1
    # fraction of the words whose next-word weights also depend on the word before (order 2)
    order2_fraction: float = 0.3
    # mean sentence length in words (a sentence ends after each word with probability 1/sentence_words)
    sentence_words: float = 10.0
    # distinct keys of the recall spans ("key = value ;" ... "key -> value ;")
    keys: int = 512
    # distinct values of the recall spans
    values: int = 1024
    # a query asks for one of this many most recently bound distinct keys
    recall_slots: int = 4
    # probability that a line is a binding "key = value ;"
    bind_prob: float = 0.15
    # probability that a line is a query "key -> value ;" (its value is the one bound last to the key)
    query_prob: float = 0.2

    def validate(self) -> None:
        p = "data.synthetic."
        for k in ("train_words", "valid_words", "test_words", "keys", "values"):
            _require(getattr(self, k) >= 1, f"{p}{k}: must be >= 1, got {getattr(self, k)}")
        _require(self.vocab_words >= 2, f"{p}vocab_words: must be >= 2")
        _require(1 <= self.successors <= self.vocab_words, f"{p}successors: must be in [1, vocab_words]")
        _require(self.zipf >= 0, f"{p}zipf: must be >= 0")
        _require(0 <= self.order2_fraction <= 1, f"{p}order2_fraction: must be in [0, 1]")
        _require(self.sentence_words > 1, f"{p}sentence_words: must be > 1")
        _require(1 <= self.recall_slots <= self.keys, f"{p}recall_slots: must be in [1, keys]")
        _require(self.bind_prob > 0 and self.query_prob >= 0 and self.bind_prob + self.query_prob < 1,
                 f"{p}bind_prob, query_prob: need bind_prob > 0, query_prob >= 0 and bind_prob + query_prob < 1")


@dataclass
class DataParams:
    """Where the raw text comes from and where it goes (stage ``download``)."""

    # "auto" (local if HAMT_DATA_DIR/local_path is set, else the hub if it answers, else synthetic), "hub", "local", "synthetic"
    source: typing.Literal["auto", "hub", "local", "synthetic"] = "auto"
    # dataset name on the hub, e.g. wikitext-2-raw-v1 or wikitext-103-raw-v1
    dataset: str = "wikitext-2-raw-v1"
    # local folder or file; used when source is "local" or "auto" (env HAMT_DATA_DIR overrides it)
    local_path: str | None = None
    # train/valid/test fractions used to split a single local text file
    split_fractions: list[float] = field(default_factory=lambda: [0.9, 0.05, 0.05])
    # output folder of the download stage
    raw_dir: str = "data/raw"
    # the generated corpus
    synthetic: SyntheticParams = field(default_factory=SyntheticParams)

    def validate(self) -> None:
        _require(len(self.split_fractions) == 3, "data.split_fractions: needs three numbers (train, valid, test)")
        _require(all(f > 0 for f in self.split_fractions), "data.split_fractions: every fraction must be > 0")
        _require(abs(sum(self.split_fractions) - 1) < 1e-6, "data.split_fractions: must sum to 1")


@dataclass
class TokenizerParams:
    """How text becomes token ids (stage ``tokenize``)."""

    # "bpe": a byte-level BPE trained on the train split; "gpt2": GPT-2's BPE (hub name or local folder)
    kind: typing.Literal["bpe", "gpt2"] = "bpe"
    # vocabulary size of the trained BPE (ignored for gpt2)
    vocab_size: int = 4096
    # hub name or local folder (vocab.json+merges.txt or tokenizer.json) for kind gpt2
    name_or_path: str = "gpt2"
    # output folder: memmapped token ids per split + meta.json + tokenizer.json
    tokens_dir: str = "data/tokens"

    def validate(self) -> None:
        _require(260 <= self.vocab_size <= MAX_VOCAB,
                 f"tokenizer.vocab_size: must be in [260, {MAX_VOCAB:,}] (256 bytes + specials; ids fit the token files)")


@dataclass
class WandbParams:
    """Weights & Biases logging (optional; never blocks)."""

    # disabled | offline | online
    mode: typing.Literal["disabled", "offline", "online"] = "disabled"
    # W&B project name
    project: str = "hamt"
    # run name; None lets W&B choose
    name: str | None = None


@dataclass
class TrainParams:
    """Optimisation and runtime (stage ``train``)."""

    # checkpoint folder
    out_dir: str = "checkpoints"
    # metrics/series folder
    results_dir: str = "results/train"
    # "auto" (cuda if available), "cpu", "cuda", "cuda:N"
    device: str = "auto"
    # fp32 | bf16 | fp16 (autocast; fp16 uses a GradScaler)
    precision: typing.Literal["fp32", "bf16", "fp16"] = "fp32"
    # torch.compile the model (falls back to eager with a warning)
    compile: bool = False
    # sequences per optimiser step (effective batch, across accumulation and ranks)
    batch_size: int = 16
    # sequences per forward pass; batch_size must be a multiple of micro_batch_size x world size
    micro_batch_size: int = 16
    # training context length in tokens
    seq_len: int = 128
    # optimiser steps
    max_steps: int = 200
    # peak learning rate
    lr: float = 3e-3
    # final learning rate of the cosine schedule
    min_lr: float = 3e-4
    # linear warm-up steps
    warmup_steps: int = 30
    # AdamW weight decay (not applied to norms, biases and gates)
    weight_decay: float = 0.1
    # AdamW betas
    betas: list[float] = field(default_factory=lambda: [0.9, 0.95])
    # gradient-norm clipping; 0 disables
    grad_clip: float = 1.0
    # evaluate every N steps (and at the end)
    eval_every: int = 100
    # validation batches per evaluation
    eval_batches: int = 8
    # checkpoint every N steps (and at the end)
    ckpt_every: int = 100
    # log every N steps
    log_every: int = 10
    # recompute activations in the backward pass
    gradient_checkpointing: bool = False
    # random seed
    seed: int = 1337
    # training checkpoints kept in out_dir/<name> (the newest ones)
    keep_checkpoints: int = 3
    # peak FLOP/s for MFU; 0 = datasheet on CUDA, a matmul probe on CPU (env HAMT_PEAK_FLOPS wins)
    peak_flops: float = 0.0
    # Weights & Biases
    wandb: WandbParams = field(default_factory=WandbParams)

    def validate(self) -> None:
        for k in ("batch_size", "micro_batch_size", "seq_len", "max_steps", "eval_every", "eval_batches", "ckpt_every",
                  "log_every"):
            _require(getattr(self, k) >= 1, f"train.{k}: must be >= 1, got {getattr(self, k)}")
        _require(self.lr > 0, f"train.lr: must be > 0, got {self.lr}")
        _require(0 <= self.min_lr <= self.lr, f"train.min_lr: must be in [0, lr], got {self.min_lr}")
        _require(self.warmup_steps >= 0, "train.warmup_steps: must be >= 0")
        _require(self.weight_decay >= 0, "train.weight_decay: must be >= 0")
        _require(self.grad_clip >= 0, "train.grad_clip: must be >= 0 (0 disables)")
        _require(len(self.betas) == 2 and all(0 <= b < 1 for b in self.betas), "train.betas: two numbers in [0, 1)")
        _require(self.keep_checkpoints >= 1, "train.keep_checkpoints: must be >= 1")
        _require(self.peak_flops >= 0, "train.peak_flops: must be >= 0 (0 = look up / measure)")
        _require(
            self.device in ("auto", "cpu", "cuda") or (self.device.startswith("cuda:") and self.device[5:].isdigit()),
            f"train.device: expected auto, cpu, cuda or cuda:N, got {self.device!r}",
        )
        _require(
            self.batch_size % self.micro_batch_size == 0,
            f"train.batch_size ({self.batch_size}) must be a multiple of train.micro_batch_size ({self.micro_batch_size})",
        )


@dataclass
class FallbackParams:
    """The automatic fallback ladder (OOM, divergence) and the flow's model-size fallback."""

    # walk the ladder on OOM / divergence
    enabled: bool = True
    # smallest micro-batch before moving to the next rung
    min_micro_batch_size: int = 1
    # shortest sequence length the ladder may fall back to
    min_seq_len: int = 64
    # roll-backs allowed on NaN/inf loss before giving up
    max_divergence_retries: int = 3
    # learning-rate multiplier applied at each roll-back
    lr_factor: float = 0.5
    # the flow trains this profile first (None: the run's own profile, filled in by ``resolve``) ...
    primary_profile: str | None = None
    # ... and this one if the primary fails
    fallback_profile: str = "micro"

    def validate(self) -> None:
        _require(self.min_micro_batch_size >= 1, "fallback.min_micro_batch_size: must be >= 1")
        _require(self.min_seq_len >= 1, "fallback.min_seq_len: must be >= 1")
        _require(self.max_divergence_retries >= 0, "fallback.max_divergence_retries: must be >= 0")
        _require(0 < self.lr_factor < 1, "fallback.lr_factor: must be in (0, 1)")


@dataclass
class ValidateParams:
    """The small-model sanity run before the expensive one (stage ``validate_small``)."""

    # training steps of the small model
    steps: int = 60
    # the loss must fall by at least this fraction of its first value
    min_loss_drop: float = 0.2
    # output folder (metrics.json, the run's log.csv, its checkpoints)
    out_dir: str = "results/validate"
    # overrides of the model section for the small model (e.g. {preset: tiny} on GPU profiles)
    model: dict = field(default_factory=dict)
    # overrides of the train section for the small run (e.g. {seq_len: 128, compile: false})
    train: dict = field(default_factory=dict)
    # new tokens generated from the small model (generation must produce text)
    generate_tokens: int = 20
    # MQAR training steps of the small recall probe (0 skips the recall check)
    recall_steps: int = 200
    # key-value pairs per MQAR sequence of the recall probe
    recall_pairs: int = 4
    # MQAR vocabulary (filler + keys + values) of the recall probe
    recall_vocab: int = 32

    def validate(self) -> None:
        _require(self.steps >= 2, "validate.steps: must be >= 2 (the loss needs a first and a last value)")
        _require(0 <= self.min_loss_drop < 1, "validate.min_loss_drop: must be in [0, 1)")
        _require(self.generate_tokens >= 1, "validate.generate_tokens: must be >= 1")
        _require(self.recall_steps >= 0, "validate.recall_steps: must be >= 0 (0 skips the recall check)")
        _require(self.recall_pairs >= 1, "validate.recall_pairs: must be >= 1")
        _require(self.recall_vocab >= 2 * self.recall_pairs + 1,
                 "validate.recall_vocab: must be >= 2 * recall_pairs + 1 (filler, distinct keys, values)")


@dataclass
class CompareParams:
    """Which models are compared and how they are evaluated (stage ``compare``)."""

    # the models trained for the comparison, hamt.zoo names: hamt, each from-scratch baseline (gpt2-scratch,
    # gpt2-scratch-2x, llama-scratch, mamba-scratch), each ablation (ablation-<switch>, switch: gating-on|off, aux-on|off,
    # conv-off|conv-K, slots-N). dvc.yaml's train stage is a foreach over this list (hamt.zoo.training_plan), so no profile may change it
    trained: list[str] = field(default_factory=lambda: ["hamt", "gpt2-scratch", "gpt2-scratch-2x", "llama-scratch",
                                                       "mamba-scratch", "ablation-aux-on", "hamt-seed2",
                                                       "gpt2-scratch-seed2", "llama-scratch-seed2", "mamba-scratch-seed2",
                                                       "gpt2-scratch-2x-seed2", "ablation-aux-on-seed2"])
    # the models of ``trained`` this profile trains and evaluates, in any order (null = all of them): a profile
    # may set it (tiny leaves out what its 10-minute budget has no room for); DVC still runs every train@ instance,
    # and one outside the plan writes a "not trained" record instead of training (``hamt train --skip-unplanned``)
    plan: list[str] | None = None
    # models evaluated beside the trained ones, never trained here (pretrained, zero-shot)
    baselines: list[str] = field(default_factory=lambda: ["gpt2", "distilgpt2", "EleutherAI/pythia-70m",
                                                         "EleutherAI/pythia-160m"])
    # local folders of pretrained baselines, {name: path} (used instead of the hub)
    local_models: dict = field(default_factory=dict)
    # split evaluated for perplexity
    eval_split: typing.Literal["train", "valid", "test"] = "test"
    # evaluation context for sliding-window perplexity
    eval_context: int = 128
    # stride of the sliding window (<= eval_context)
    eval_stride: int = 64
    # cap on evaluated tokens (0 = whole split); bpb and word ppl count the bytes and words of the scored slice
    eval_max_tokens: int = 0
    # windows per forward pass during evaluation
    eval_batch_size: int = 8
    # timed steps of the training / inference throughput probes (batch train.micro_batch_size, eval_context tokens)
    throughput_steps: int = 3
    # context lengths of the decoding probe (per-token latency and state/KV-cache bytes)
    decode_contexts: list[int] = field(default_factory=lambda: [64, 256, 1024])
    # tokens generated per context length by the decoding probe
    decode_tokens: int = 16
    # sequence lengths of the throughput probe of freshly initialised HAMT vs matched GPT-2 (empty skips)
    speed_seq_lens: list[int] = field(default_factory=lambda: [128, 512, 1024])
    # key-value pairs of the associative-recall (MQAR) evaluation grid
    recall_pairs: list[int] = field(default_factory=lambda: [1, 2, 4, 8])
    # MQAR sequences per grid point
    recall_samples: int = 64
    # MQAR training steps of the architecture probe (small HAMT vs small GPT-2 trained on MQAR; 0 skips)
    recall_train_steps: int = 400
    # MQAR vocabulary of the architecture probe
    recall_vocab: int = 32
    # new tokens of the HAMT text sample (the "text generation works" check)
    generate_tokens: int = 40
    # output folder
    out_dir: str = "results/compare"

    def validate(self) -> None:
        _require(self.eval_context >= 2, "compare.eval_context: must be >= 2")
        _require(1 <= self.eval_stride <= self.eval_context, "compare.eval_stride: must be in [1, eval_context]")
        _require(self.eval_max_tokens >= 0, "compare.eval_max_tokens: must be >= 0 (0 = whole split)")
        for k in ("eval_batch_size", "throughput_steps", "decode_tokens", "recall_samples", "generate_tokens"):
            _require(getattr(self, k) >= 1, f"compare.{k}: must be >= 1, got {getattr(self, k)}")
        _require(self.recall_train_steps >= 0, "compare.recall_train_steps: must be >= 0 (0 skips the probe)")
        for k in ("decode_contexts", "speed_seq_lens", "recall_pairs"):
            _require(all(v >= 1 for v in getattr(self, k)), f"compare.{k}: every entry must be >= 1")
        _require(self.recall_vocab >= 2 * max(self.recall_pairs or [1]) + 1,
                 "compare.recall_vocab: must be >= 2 * max(recall_pairs) + 1 (filler, distinct keys, values)")
        self._validate_models()
        for name, path in self.local_models.items():
            _require(isinstance(path, str) and path, f"compare.local_models.{name}: expected a folder path")

    def _validate_models(self) -> None:
        from hamt.zoo import TRAINED_KINDS, kind_of  # no torch: names only

        for key in ("trained", "baselines"):
            names = getattr(self, key)
            dup = next((n for n in names if names.count(n) > 1), None)
            _require(dup is None, f"compare.{key}: {dup!r} is listed twice")
            for n in names:
                try:
                    kind = kind_of(n)
                except ConfigError as e:
                    raise ConfigError(f"compare.{key}: {e}") from None
                _require(key == "baselines" or kind in TRAINED_KINDS,
                         f"compare.trained: {n!r} is a pretrained model (evaluated, never trained): list it in compare.baselines")
                _require(key == "trained" or kind not in TRAINED_KINDS,
                         f"compare.baselines: {n!r} is trained here: list it in compare.trained (its own DVC stage train@{n})")
        _require("hamt" in self.trained, "compare.trained: must include hamt (the model the others are compared with)")


@dataclass
class ReportParams:
    """The report (stage ``report``)."""

    # output folder of report.md / report.html / metrics.json (plots go to <out_dir>/plots)
    out_dir: str = "results"
    # folder of the benchmark results (model.json ...) plotted when present
    bench_dir: str = "results/bench"
    # title of the report
    title: str = "HAMT: measured results"


@dataclass
class BenchDeviceParams:
    """The benchmark lengths of one device type (``bench.cpu``, ``bench.cuda``)."""

    # model bench: training sequence lengths
    seq_lens: list[int] = field(default_factory=lambda: [256, 1024, 4096])
    # model bench: tokens per training step; batch = max(1, tokens_per_step // T)
    tokens_per_step: int = 4096
    # decode bench: context lengths
    contexts: list[int] = field(default_factory=lambda: [256, 1024, 4096, 16384])
    # memory bench: batch of the scan
    memory_batch: int = 1


@dataclass
class BenchTokenizeParams:
    """The tokenization bench's corpora (``bench.tokenize``)."""

    # folder holding the files below (env HAMT_SHARED_DATA wins)
    data_dir: str = "/work/shared/data"
    # Tiny Shakespeare, relative to data_dir: a BPE is trained on it and encodes it
    shakespeare: str = "tinyshakespeare/input.txt"
    # WikiText-2 raw valid, relative to data_dir: GPT-2's BPE encodes it
    wikitext: str = "wikitext-2-raw/wiki.valid.raw"
    # folder with GPT-2's vocab.json + merges.txt, relative to data_dir
    gpt2_tokenizer: str = "gpt2-tokenizer"
    # vocabulary of the BPE trained on Tiny Shakespeare
    vocab_size: int = 4096
    # each encoding is timed this many times; the best is reported
    repeats: int = 3


RECALL_MODELS = ("hamt", "llama", "mamba")  # the architectures `hamt bench recall` builds (hamt.bench.recall)


@dataclass
class BenchRecallParams:
    """MQAR on the Zoology grid (``hamt bench recall``; not part of ``hamt bench all``: it trains models)."""

    # architectures compared at the same width: hamt | llama | mamba
    models: list[str] = field(default_factory=lambda: ["hamt", "llama", "mamba"])
    # model widths d (Zoology: 64, 128, 256)
    d_models: list[int] = field(default_factory=lambda: [64, 128, 256])
    # blocks per model (Zoology: 2)
    layers: int = 2
    # (sequence length, key-value pairs) cells (Zoology: (64,4) (128,8) (256,16), (512,64) where affordable)
    grid: list[list[int]] = field(default_factory=lambda: [[64, 4], [128, 8], [256, 16]])
    # vocabulary (Zoology: 8,192)
    vocab_size: int = 8192
    # learning rates tried per cell; the best one's row is kept (Zoology: 4 of them)
    lrs: list[float] = field(default_factory=lambda: [1.0e-4, 4.6e-4, 2.2e-3, 1.0e-2])
    # AdamW steps per cell; every batch is fresh, so training examples = steps x batch_size
    steps: int = 300
    # sequences per step
    batch_size: int = 64
    # sequences evaluated per cell
    eval_samples: int = 256
    # seed of the training batches and the initialisation
    seed: int = 0

    def validate(self) -> None:
        unknown = [m for m in self.models if m not in RECALL_MODELS]
        _require(not unknown, f"bench.recall.models: unknown {unknown}; choose from {', '.join(RECALL_MODELS)}")
        for cell in self.grid:
            _require(len(cell) == 2 and 4 * cell[1] <= cell[0],
                     f"bench.recall.grid: each cell is [seq_len, pairs] with seq_len >= 4 x pairs, got {cell}")
        _require(self.vocab_size >= 5 and self.d_models and min(self.d_models) >= 32 and self.layers >= 1,
                 "bench.recall: need vocab_size >= 5, d_models >= 32 and layers >= 1")
        _require(self.steps >= 1 and self.batch_size >= 1 and self.eval_samples >= 1 and self.lrs
                 and all(0 < lr < 1 for lr in self.lrs),
                 "bench.recall: need steps, batch_size, eval_samples >= 1 and learning rates in (0, 1)")


@dataclass
class BenchParams:
    """Benchmarks (``hamt bench model|memory|decode|tokenize|all``); its flags override these."""

    # cpu | cuda | auto; None = train.device
    device: str | None = None
    # fp32 | bf16; None = train.precision (fp16 is benchmarked as bf16)
    precision: typing.Literal["fp32", "bf16"] | None = None
    # model preset; None = the profile's model section
    preset: str | None = None
    # the model's vocabulary size; 0 = the model's own
    vocab_size: int = 0
    # timed repeats per measurement (the median is reported)
    repeats: int = 5
    # model bench: include gradient clipping (train.grad_clip) and the AdamW step, i.e. the trainer's step
    optimizer: bool = False
    # model bench: torch.compile both models (eager fallback, recorded per row)
    compile: bool = False
    # HAMT's memory implementation in the model and decode benches; None = the model config's
    memory_mode: typing.Literal["auto", "cpu", "chunk", "reference", "triton"] | None = None
    # CPU threads for torch; 0 = torch's choice (1 is steadier on a shared machine)
    threads: int = 0
    # memory bench: sequence length of the scan
    memory_seq_len: int = 1024
    # decode bench: timed single-token steps per context
    decode_steps: int = 32
    # decode bench: HAMT prefills the context in chunks of this many tokens (memory stays O(chunk))
    prefill_chunk: int = 1024
    # lengths on a CPU
    cpu: BenchDeviceParams = field(default_factory=BenchDeviceParams)
    # lengths on a GPU
    cuda: BenchDeviceParams = field(default_factory=lambda: BenchDeviceParams(
        seq_lens=[512, 1024, 2048, 4096, 8192], tokens_per_step=65536,
        contexts=[256, 1024, 4096, 16384, 32768], memory_batch=16))
    # the tokenization bench
    tokenize: BenchTokenizeParams = field(default_factory=BenchTokenizeParams)
    # the MQAR recall grid
    recall: BenchRecallParams = field(default_factory=BenchRecallParams)

    def validate(self) -> None:
        for k in ("repeats", "memory_seq_len", "decode_steps", "prefill_chunk"):
            _require(getattr(self, k) >= 1, f"bench.{k}: must be >= 1, got {getattr(self, k)}")
        _require(self.vocab_size >= 0 and self.threads >= 0, "bench.vocab_size, bench.threads: must be >= 0 (0 = default)")
        for dev in ("cpu", "cuda"):
            d = getattr(self, dev)
            for k in ("seq_lens", "contexts"):
                _require(all(n >= 2 for n in getattr(d, k)), f"bench.{dev}.{k}: every length must be >= 2")
            for k in ("tokens_per_step", "memory_batch"):
                _require(getattr(d, k) >= 1, f"bench.{dev}.{k}: must be >= 1")
        _require(self.tokenize.repeats >= 1 and self.tokenize.vocab_size >= 260,
                 "bench.tokenize: repeats must be >= 1 and vocab_size >= 260")
        self.recall.validate()


SECTIONS: dict[str, type] = {
    "data": DataParams,
    "tokenizer": TokenizerParams,
    "train": TrainParams,
    "fallback": FallbackParams,
    "validate": ValidateParams,
    "compare": CompareParams,
    "report": ReportParams,
    "bench": BenchParams,
}


@dataclass
class Params:
    """All resolved sections. ``model`` stays a mapping: ``model_config()`` validates it."""

    profile: str
    data: DataParams
    tokenizer: TokenizerParams
    model: dict
    train: TrainParams
    fallback: FallbackParams
    validate: ValidateParams
    compare: CompareParams
    report: ReportParams
    bench: BenchParams
    source: str = "<defaults>"

    def model_config(self, **overrides: Any):
        """The ``HAMTConfig`` this profile describes (imports transformers)."""
        from hamt.config import HAMTConfig

        return HAMTConfig.from_params({**self.model, **overrides})

    def to_dict(self) -> dict:
        d = {"profile": self.profile, "model": dict(self.model)}
        for name in SECTIONS:
            d[name] = to_dict(getattr(self, name))
        return d


# --------------------------------------------------------------------------------------------------
# Resolution (reading the file, profiles and overrides as mappings: hamt.params_file)
# --------------------------------------------------------------------------------------------------


def resolve(raw: dict, profile: str | None = None, overrides: typing.Sequence[str] = (), source: str = "") -> Params:
    """Apply the profile and ``--set`` overrides to a raw parameter mapping and validate it."""
    allowed = set(SECTIONS) | {"model"}
    name, base, profiles = split_profiles(raw, profile, allowed)
    for pname, overlay in profiles.items():
        _check_plan_overlay(pname, overlay, base)
    merged = apply_overrides(deep_merge(base, profiles.get(name) or {}), overrides, allowed)
    sections = {k: from_dict(cls, merged.get(k), k) for k, cls in SECTIONS.items()}
    if sections["fallback"].primary_profile is None:  # the flow trains the profile it was asked to run
        sections["fallback"].primary_profile = name
    model = merged.get("model") or {}
    if not isinstance(model, dict):
        raise ConfigError("model: expected a mapping (preset: NAME plus field overrides)")
    return Params(profile=name, model=dict(model), source=source, **sections)


def _check_plan_overlay(name: str, overlay: Any, base: dict) -> None:
    """Refuse ``profiles.<name>.compare.trained`` unless it repeats the base list: dvc.yaml's train stage is a
    foreach over the base ``compare.trained``, and DVC cannot read a profile overlay, so it could not follow."""
    over = ((overlay or {}).get("compare") or {}) if isinstance(overlay, dict) else {}
    if not isinstance(over, dict) or "trained" not in over:
        return
    default = [f.default_factory() for f in dataclasses.fields(CompareParams) if f.name == "trained"][0]
    if over["trained"] != ((base.get("compare") or {}).get("trained", default)):
        raise ConfigError(f"profiles.{name}.compare.trained: a profile cannot change the trained models (DVC's train "
                          f"foreach reads the base compare.trained only); set compare.trained instead")


def load_params(
    path: str | Path = "params.yaml",
    profile: str | None = None,
    overrides: typing.Sequence[str] = (),
    validate_model: bool = True,
) -> Params:
    """Load ``params.yaml``, apply profile and overrides, validate every section (model included)."""
    params = resolve(read_yaml(path), profile, overrides, source=str(path))
    if validate_model:
        params.model_config()
    return params


def profile_names(path: str | Path = "params.yaml") -> list[str]:
    return list((read_yaml(path).get("profiles") or {}).keys())
