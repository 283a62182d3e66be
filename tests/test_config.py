"""HAMTConfig presets and validation; params.yaml strict loading."""

import pytest

from hamt.config import PRESETS, SEED_CLAIMED_PARAMS, HAMTConfig
from hamt.model import count_parameters
from hamt.errors import ConfigError
from hamt.params import load_params


@pytest.mark.parametrize("preset", ["33m", "100m"])
def test_presets_within_ten_percent_of_seed(preset):
    n = count_parameters(HAMTConfig.from_preset(preset))
    claimed = SEED_CLAIMED_PARAMS[preset]
    assert abs(n - claimed) / claimed < 0.10, (preset, n)


def test_every_preset_builds():
    for name in PRESETS:
        cfg = HAMTConfig.from_preset(name)
        assert cfg.hcm_dim % cfg.num_attention_heads == 0
        assert count_parameters(cfg) > 0


@pytest.mark.parametrize(
    "bad, needle",
    [
        ({"hcm_dim": 100, "num_attention_heads": 3}, "divisible"),
        ({"hcm_dim": 102, "num_attention_heads": 2}, "even"),
        ({"num_slots": 0}, "num_slots"),
        ({"dropout": 1.0}, "dropout"),
        ({"dropout": -0.1}, "dropout"),
        ({"hidden_dim": "wide"}, "hidden_dim"),
        ({"use_gating": "yes"}, "use_gating"),
        ({"memory_mode": "fast"}, "memory_mode"),
        ({"num_slotz": 4}, "did you mean 'num_slots'"),
        ({"preset": "7b"}, "unknown preset"),
    ],
)
def test_config_validation_names_the_field(bad, needle):
    with pytest.raises(ConfigError, match=needle):
        HAMTConfig.from_params({"preset": "tiny", **bad})


def test_params_profiles_and_overrides(root):
    p = load_params(root / "params.yaml", "micro", ["train.lr=1e-3", "model.num_slots=3"])
    assert p.train.lr == pytest.approx(1e-3)
    assert p.model_config().num_slots == 3
    assert p.train.seq_len == 32  # from the micro overlay


@pytest.mark.parametrize(
    "override, needle",
    [
        ("train.lrr=1", "did you mean 'lr'"),
        ("train.lr=-1", "train.lr"),
        ("train.batch_size=abc", "train.batch_size"),
        ("trian.lr=1", "unknown section"),
        ("train.batch_size=10", "multiple"),
        ("lr=1", "needs a section"),
    ],
)
def test_params_rejects_bad_overrides(root, override, needle):
    with pytest.raises(ConfigError, match=needle):
        load_params(root / "params.yaml", "micro", [override])


def test_unknown_profile(root):
    with pytest.raises(ConfigError, match="unknown profile"):
        load_params(root / "params.yaml", "tinny")
