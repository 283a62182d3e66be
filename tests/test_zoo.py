"""``hamt.zoo`` and ``hamt.baselines``: every profile's compare plan resolves to models the zoo builds, matched by one matcher."""

from __future__ import annotations

import pytest

from conftest import ROOT
from hamt import zoo
from hamt.baselines import FAMILIES, matched_config, param_count
from hamt.params import load_params, read_yaml

PROFILES = sorted(read_yaml(ROOT / "params.yaml")["profiles"])
GPU_PROFILES = ("50m", "100m", "200m")


def _vocab(params) -> int:
    return 50257 if params.tokenizer.kind == "gpt2" else params.tokenizer.vocab_size


@pytest.mark.parametrize("profile", PROFILES)
def test_every_profile_resolves_its_dataset_and_a_compare_plan_the_zoo_builds(profile):
    from hamt.model import count_parameters

    params = load_params(ROOT / "params.yaml", profile, [])
    want = "wikitext-103-raw-v1" if profile in GPU_PROFILES else "wikitext-2-raw-v1"
    assert params.data.dataset == want
    # `python flows/hamt_flow.py run --profile P` trains P itself (the flow's primary), and its fallback resolves
    assert params.fallback.primary_profile == profile
    assert params.fallback.fallback_profile in PROFILES
    # a GPU day trains the attention baselines on HAMT's budget (issue 15); the CPU profiles also Mamba-2
    need = {"llama-scratch", "gpt2-scratch"} | (set() if profile in GPU_PROFILES else {"mamba-scratch"})
    assert need <= set(zoo.training_plan(params))
    assert set(zoo.training_plan(params)) <= set(zoo.pipeline_models(params))
    for name in zoo.evaluation_plan(params):
        assert zoo.kind_of(name) in ("hamt", "scratch", "ablation", "pretrained")
    vocab = _vocab(params)
    n_hamt = count_parameters(params.model_config(vocab_size=vocab))
    for name in zoo.training_plan(params):
        cfg = zoo.model_config_for(params, name, vocab)
        n = param_count(cfg)
        assert cfg.vocab_size == vocab
        if zoo.kind_of(name) == "scratch" and profile != "micro":  # micro is no preset: too small to match within 5%
            target = zoo.REGISTRY[zoo.split_seed(name)[0]]["scale"] * n_hamt
            assert abs(n - target) / target <= 0.05, (profile, name, n, target)


def test_the_baseline_families_are_the_architectures_they_name():
    from hamt.config import HAMTConfig

    hamt_cfg = HAMTConfig.from_preset("tiny")
    llama = matched_config("llama", hamt_cfg, n_positions=128)
    assert llama.model_type == "llama" and not llama.attention_bias and not llama.mlp_bias
    assert llama.hidden_act == "silu" and llama.intermediate_size % 32 == 0  # SwiGLU
    mamba = matched_config("mamba2", hamt_cfg, n_positions=128)
    assert mamba.model_type == "mamba2" and mamba.num_heads * mamba.head_dim == mamba.expand * mamba.hidden_size
    assert mamba.chunk_size == 128 and mamba.n_groups == 1
    gpt2 = matched_config("gpt2", hamt_cfg, n_positions=128)
    assert (gpt2.n_embd, gpt2.n_layer) == (96, 7)  # the same GPT-2 the former GPT-2-only matcher chose


@pytest.mark.parametrize("arch", sorted(FAMILIES))
def test_the_meta_count_is_the_built_models_count(arch):
    from transformers import AutoModelForCausalLM

    from hamt.config import HAMTConfig

    hamt_cfg = HAMTConfig.from_preset("tiny", vocab_size=300, hidden_dim=64, hcm_dim=128, num_attention_heads=2)
    for tied in (False, True):
        hamt_cfg.tie_word_embeddings = tied
        cfg = FAMILIES[arch](hamt_cfg, 64, 2, 32)
        model = AutoModelForCausalLM.from_config(cfg)
        assert param_count(cfg) == sum(p.numel() for p in model.parameters())


def test_a_seed_suffix_is_the_same_model_trained_with_another_seed():
    from hamt.errors import ConfigError

    assert zoo.split_seed("llama-scratch-seed7") == ("llama-scratch", 7)
    assert zoo.split_seed("ablation-slots-1-seed2") == ("ablation-slots-1", 2)
    assert zoo.split_seed("hamt") == ("hamt", None) and zoo.split_seed("hamt-seedx") == ("hamt-seedx", None)
    assert [zoo.kind_of(n) for n in ("hamt-seed2", "gpt2-scratch-seed2", "ablation-aux-on-seed3")] == [
        "hamt", "scratch", "ablation"]
    with pytest.raises(ConfigError, match="pretrained"):
        zoo.kind_of("gpt2-seed2")
    params = load_params(ROOT / "params.yaml", "micro", [
        "compare.trained=[hamt, hamt-seed2, gpt2-scratch, gpt2-scratch-seed2, ablation-aux-on-seed2]"])
    assert zoo.params_for(params, "hamt-seed2").train.seed == 2 and zoo.params_for(params, "hamt") is params
    assert zoo.params_for(params, "hamt-seed2").model == params.model  # only the seed differs
    assert zoo.evaluation_plan(params, baselines=["gpt2"]) == [
        "hamt", "hamt-seed2", "gpt2-scratch", "gpt2-scratch-seed2", "gpt2", "ablation-aux-on-seed2"]
    vocab = _vocab(params)
    assert zoo.model_config_for(params, "ablation-aux-on-seed2", vocab).use_auxiliary_loss is True
    assert (zoo.model_config_for(params, "gpt2-scratch-seed2", vocab).to_dict()
            == zoo.model_config_for(params, "gpt2-scratch", vocab).to_dict())
    with pytest.raises(ConfigError, match="is hamt itself"):
        zoo.training_plan(load_params(ROOT / "params.yaml", "micro", [f"compare.trained=[hamt, hamt-seed{params.train.seed}]"]))


def _with(overrides: list[str], profile: str = "micro"):
    return load_params(ROOT / "params.yaml", profile, overrides, validate_model=False)


def test_a_profiles_plan_picks_from_compare_trained_in_its_order():
    params = _with(["compare.trained=[hamt, gpt2-scratch, llama-scratch, hamt-seed2]",
                    "compare.plan=[llama-scratch, hamt, mamba-scratch]"])
    assert zoo.pipeline_models(params) == ["hamt", "gpt2-scratch", "llama-scratch", "hamt-seed2"]
    assert zoo.training_plan(params) == ["hamt", "llama-scratch"]  # mamba: planned but not in compare.trained
    assert zoo.evaluation_plan(params, baselines=[]) == ["hamt", "llama-scratch"]
    assert zoo.not_planned_reason(params, "hamt") is None
    assert "compare.plan" in zoo.not_planned_reason(params, "gpt2-scratch")
    assert zoo.not_planned_reason(params, "mamba-scratch") is None  # not one of compare.trained: nothing to skip
    assert zoo.training_plan(_with(["compare.plan=null"])) == zoo.pipeline_models(_with([]))


@pytest.mark.parametrize("plan, message", [("[gpt2-scratch]", "must include 'hamt'"),
                                           ("[hamt, gtp2-scratch]", "unknown model 'gtp2-scratch'")])
def test_a_bad_plan_is_refused(plan, message):
    from hamt.errors import ConfigError

    with pytest.raises(ConfigError, match=message):
        zoo.training_plan(_with([f"compare.plan={plan}"]))


def test_tiny_leaves_out_the_seed_runs_and_the_2x_the_study_trains():
    tiny, study = (zoo.training_plan(load_params(ROOT / "params.yaml", p, validate_model=False)) for p in ("tiny", "study"))
    assert not [n for n in tiny if zoo.split_seed(n)[1] is not None] and "gpt2-scratch-2x" not in tiny
    assert {"hamt-seed2", "gpt2-scratch-seed2", "llama-scratch-seed2", "mamba-scratch-seed2", "gpt2-scratch-2x"} <= set(study)


@pytest.mark.parametrize("profile", ["tiny", "33m"])
def test_the_speed_probes_gpt2_is_the_architecture_gpt2_scratch_trains(profile):
    """compare's speed probe and `hamt bench model` time the GPT-2 that is trained, its position table extended to the
    longest length: matching it again at 1,024 positions gave another shape (tiny: d 128 x 2 layers, not 96 x 7)."""
    from hamt.baselines import hamt_and_matched_gpt2

    params = load_params(ROOT / "params.yaml", profile, [])
    vocab = _vocab(params)
    trained = zoo.model_config_for(params, "gpt2-scratch", vocab)
    timed = hamt_and_matched_gpt2(params.model_config(vocab_size=vocab), 2048, "cpu")["gpt2"].config
    assert (timed.n_embd, timed.n_layer, timed.n_head, timed.vocab_size) == (
        trained.n_embd, trained.n_layer, trained.n_head, trained.vocab_size)
    assert timed.n_positions == max(2048, trained.n_positions)
