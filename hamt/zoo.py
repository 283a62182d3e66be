"""Every model the project trains or evaluates: its name, its kind, its config, how it is built.

Four kinds of name:

- ``hamt``: HAMT as ``params.model`` describes it;
- ``scratch``: a baseline architecture from transformers, trained from scratch by the same trainer on
  the same tokens and budget, parameter-matched to HAMT by the one matcher ``hamt.baselines.matched_config``
  (within 5%): ``gpt2-scratch`` with HAMT's count, ``gpt2-scratch-2x`` with twice it, ``llama-scratch``
  (Transformer++: RoPE, SwiGLU, RMSNorm, no biases) and ``mamba-scratch`` (Mamba-2, constant-state
  decoding like HAMT) with HAMT's count;
- ``ablation``: ``ablation-<switch>``, HAMT with one switch flipped (``ablation_overrides``);
- ``pretrained``: published checkpoints evaluated zero-shot (never trained here).

A trained name may end in ``-seed<N>`` (``hamt-seed2``, ``llama-scratch-seed7``, ``ablation-aux-on-seed2``):
the same model trained with ``train.seed = N`` instead of params.yaml's seed (``params_for``), for the
seed-to-seed spread that ``hamt.compare.seeds`` reports. Seeds are names, not a second list, because
DVC's ``foreach`` expands exactly one list: each seed is its own stage instance and checkpoint folder.

``pipeline_models(params)`` is every model any profile trains, ``compare.trained`` as written in params.yaml's
base section (no profile may change it, ``hamt.params`` refuses that): dvc.yaml's ``train`` stage is
``foreach: ${compare.trained}`` (a test checks the two agree). ``training_plan(params)`` is the part of it the
active profile trains (``compare.plan``; all of it when null): the flow's training fan-out iterates it and
``hamt compare`` evaluates it (never training). A DVC instance outside the plan writes a "not trained" record
(``hamt train --skip-unplanned``), so the tiny profile can leave out what the study trains. Each trained model
has its own stage instance ``train@<name>``, checkpoint folder ``<train.out_dir>/<name>`` and results folder
``<train.results_dir>/<name>``.
"""

from __future__ import annotations

from typing import Any

from hamt.errors import ConfigError

# name -> how to get it. ``tokenizer``: "tokens" reads the tokens' ids as they are (GPT-2 BPE
# required for pretrained models); "own" re-tokenizes the evaluated text with the model's tokenizer.
REGISTRY: dict[str, dict[str, Any]] = {
    "hamt": {"kind": "hamt", "what": "HAMT, trained by `hamt train`"},
    "gpt2-scratch": {"kind": "scratch", "arch": "gpt2", "scale": 1.0,
                     "what": "GPT-2 architecture, parameter-matched, same tokens and budget"},
    "gpt2-scratch-2x": {"kind": "scratch", "arch": "gpt2", "scale": 2.0,
                        "what": "GPT-2 architecture, 2x HAMT's parameters, same tokens and budget"},
    "llama-scratch": {"kind": "scratch", "arch": "llama", "scale": 1.0,
                      "what": "Llama (Transformer++: RoPE, SwiGLU, RMSNorm), parameter-matched, same tokens and budget"},
    "mamba-scratch": {"kind": "scratch", "arch": "mamba2", "scale": 1.0,
                      "what": "Mamba-2 (selective state space), parameter-matched, same tokens and budget"},
    "gpt2": {"kind": "pretrained", "hub": "gpt2", "tokenizer": "tokens", "what": "OpenAI GPT-2 124M, zero-shot"},
    "distilgpt2": {"kind": "pretrained", "hub": "distilgpt2", "tokenizer": "tokens", "what": "DistilGPT-2 82M, zero-shot"},
    "EleutherAI/pythia-70m": {"kind": "pretrained", "hub": "EleutherAI/pythia-70m", "tokenizer": "own",
                              "what": "Pythia-70M (Pile), zero-shot, own tokenizer"},
    "EleutherAI/pythia-160m": {"kind": "pretrained", "hub": "EleutherAI/pythia-160m", "tokenizer": "own",
                               "what": "Pythia-160M (Pile), zero-shot, own tokenizer"},
}
ABLATION_PREFIX = "ablation-"
SEED_SUFFIX = "-seed"
TRAINED_KINDS = ("hamt", "scratch", "ablation")


def split_seed(name: str) -> tuple[str, int | None]:
    """``("hamt", 2)`` for ``hamt-seed2``; ``(name, None)`` for a name without a seed suffix."""
    head, sep, num = name.rpartition(SEED_SUFFIX)
    if sep and head and num.isdigit():
        return head, int(num)
    return name, None


def params_for(params, name: str):
    """The parameters model ``name`` is trained with: ``train.seed`` replaced for a ``-seed<N>`` name."""
    import dataclasses

    _, seed = split_seed(name)
    if seed is None:
        return params
    return dataclasses.replace(params, train=dataclasses.replace(params.train, seed=seed))


def kind_of(name: str) -> str:
    """``hamt``, ``scratch``, ``ablation`` or ``pretrained``; an unknown name is a ConfigError."""
    base, seed = split_seed(name)
    if seed is not None:
        kind = kind_of(base)
        if kind not in TRAINED_KINDS:
            raise ConfigError(f"'{name}': {base} is a pretrained model; only trained models take a -seed<N> suffix")
        return kind
    if name.startswith(ABLATION_PREFIX):
        ablation_overrides(name[len(ABLATION_PREFIX):])  # validates the switch
        return "ablation"
    if name in REGISTRY:
        return REGISTRY[name]["kind"]
    raise ConfigError(f"unknown model '{name}'; known: {', '.join(REGISTRY)} or {ABLATION_PREFIX}<switch>")


def describe(name: str) -> str:
    base, seed = split_seed(name)
    if seed is not None:
        return f"{describe(base)}; seed {seed}"
    if name.startswith(ABLATION_PREFIX):
        return f"HAMT with {name[len(ABLATION_PREFIX):]}, same budget"
    return REGISTRY.get(name, {}).get("what", "")


def ablation_overrides(switch: str) -> dict:
    """HAMTConfig overrides of one ablation switch (``ablation-<switch>``; the only place that parses them)."""
    fixed = {"gating-on": {"use_gating": True}, "gating-off": {"use_gating": False},
             "aux-on": {"use_auxiliary_loss": True}, "aux-off": {"use_auxiliary_loss": False},
             "conv-off": {"conv_kernel": 0}}
    if switch in fixed:
        return fixed[switch]
    head, _, num = switch.rpartition("-")
    if head == "slots" and num.isdigit():
        return {"num_slots": int(num)}
    if head == "conv" and num.isdigit():
        return {"conv_kernel": int(num)}
    raise ConfigError(f"unknown ablation {switch!r}; use ablation-<switch> with gating-on|off, aux-on|off, conv-off|conv-K, slots-N")


def hamt_overrides(name: str) -> dict:
    """The HAMTConfig overrides of a HAMT name: {} for ``hamt``, the switch of ``ablation-<switch>`` (any
    ``-seed<N>`` suffix ignored: a seed changes the run, not the model)."""
    name, _ = split_seed(name)
    return ablation_overrides(name[len(ABLATION_PREFIX):]) if name.startswith(ABLATION_PREFIX) else {}


def pipeline_models(params) -> list[str]:
    """Every model any profile trains: ``compare.trained`` as written (dvc.yaml's ``train`` foreach), validated."""
    for n in params.compare.trained:
        if kind_of(n) not in TRAINED_KINDS:
            raise ConfigError(f"compare.trained: {n!r} is a pretrained model; it is evaluated, never trained here")
        base, seed = split_seed(n)
        if seed == params.train.seed:
            raise ConfigError(f"compare.trained: {n!r} is {base} itself (train.seed is {seed}); use another seed")
    return list(dict.fromkeys(params.compare.trained))


def training_plan(params) -> list[str]:
    """The models this profile's comparison trains, in ``compare.trained``'s order: those also in ``compare.plan``
    (all of ``compare.trained`` when it is null; a plan must name ``hamt`` when compare.trained has it)."""
    models = pipeline_models(params)
    plan = params.compare.plan
    if plan is None:
        return models
    for n in plan:
        kind_of(n)  # a misspelt name fails; a known one missing from compare.trained is simply not trained
    if "hamt" in models and "hamt" not in plan:
        raise ConfigError("compare.plan: must include 'hamt' (every comparison is HAMT against the others)")
    return [n for n in models if n in plan]


NOT_TRAINED = "not trained"  # the status of a model's record in a profile that does not plan it (hamt.train.unplanned)


def is_not_trained(metrics: dict | None) -> bool:
    """Is this metrics.json a "not trained" record (``hamt.train.unplanned``), not a run?"""
    return isinstance(metrics, dict) and metrics.get("status") == NOT_TRAINED


def not_planned_reason(params, name: str) -> str | None:
    """Why ``name`` (of compare.trained) is not trained in this profile; None when it is in the plan or is not
    one of compare.trained at all (then nothing decides against training it)."""
    if name in training_plan(params) or name not in pipeline_models(params):
        return None
    return (f"not in profile {params.profile}'s compare.plan (add it there, or set compare.plan to null to train "
            f"every model of compare.trained)")


def evaluation_plan(params, baselines: list[str] | None = None) -> list[str]:
    """The models a comparison evaluates: HAMT, the scratch baselines, the pretrained baselines (compare.baselines
    unless given), the ablations. The trained ones come from ``training_plan``; nothing here is trained."""
    trained = training_plan(params)
    names = ["hamt"] + [n for n in trained if kind_of(n) in ("hamt", "scratch")]  # with their -seed<N> runs
    names += list(params.compare.baselines if baselines is None else baselines)
    names += [n for n in trained if kind_of(n) == "ablation"]
    for n in names:
        kind_of(n)  # unknown names fail before any work
    return list(dict.fromkeys(names))


def model_config_for(params, name: str, vocab_size: int):
    """The config model ``name`` is trained from, for tokens of ``vocab_size`` ids."""
    from hamt.tokens import check_vocab

    kind = kind_of(name)
    name, _ = split_seed(name)  # a seed changes the run, not the model
    if kind in ("hamt", "ablation"):
        cfg = params.model_config(vocab_size=vocab_size, **hamt_overrides(name))
    elif kind == "scratch":
        from hamt.baselines import matched_config
        from hamt.model import count_parameters

        hamt_cfg = params.model_config(vocab_size=vocab_size)
        n_pos = max(params.train.seq_len, hamt_cfg.max_position_embeddings)
        spec = REGISTRY[name]
        target = None if spec["scale"] == 1.0 else int(spec["scale"] * count_parameters(hamt_cfg))
        cfg = matched_config(spec["arch"], hamt_cfg, n_positions=n_pos, target=target)
    else:
        raise ConfigError(f"'{name}' is a pretrained model: it is evaluated, never trained here")
    check_vocab({"vocab_size": vocab_size}, cfg.vocab_size)
    return cfg


def build_model(config):
    """The causal LM of a config: HAMTForCausalLM, GPT2LMHeadModel, LlamaForCausalLM, Mamba2ForCausalLM (Auto classes)."""
    import hamt.model  # noqa: F401  registers model_type "hamt" with the Auto classes
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_config(config)
