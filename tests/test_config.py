"""Profiles: every YAML parses and validates; bad keys and values are rejected by name; overrides work."""

from pathlib import Path

import pytest

from xlalign.config import (
    CONFIG_DIR,
    ConfigError,
    Profile,
    load_profile,
    parse_override,
    profile_from_dict,
)


@pytest.mark.parametrize("path", sorted(CONFIG_DIR.glob("*.yaml")), ids=lambda p: p.stem)
def test_every_profile_validates(path):
    profile = load_profile(path.stem)
    assert isinstance(profile, Profile)
    assert profile.name == path.stem


@pytest.mark.parametrize(
    "path", sorted((CONFIG_DIR / "ablations").glob("*.yaml")), ids=lambda p: p.stem
)
def test_every_ablation_overlay_validates_on_paper(path):
    profile = load_profile("paper", overlays=[str(path)])
    assert profile.train.batch_size >= 1


def test_accelerate_configs_parse():
    import yaml

    for path in (CONFIG_DIR / "accelerate").glob("*.yaml"):
        cfg = yaml.safe_load(path.read_text())
        assert cfg["num_processes"] >= 2


def test_paper_profile_holds_paper_hyperparameters():
    p = load_profile("paper")
    assert (p.train.learning_rate, p.train.batch_size, p.train.max_length, p.train.epochs) == (
        5e-6,
        7,
        4096,
        3.0,
    )
    assert p.model.quantization == "nf4" and p.data.k == 10
    c = p.calm
    assert (c.lora.r, c.lora.alpha, c.lora.target_modules) == (8, 16, ["q_proj", "v_proj"])
    assert (c.learning_rate, c.lr_scheduler, c.warmup_ratio, c.beta, c.epochs) == (
        5e-6,
        "cosine",
        0.1,
        0.1,
        3.0,
    )
    assert (c.num_samples, c.temperature, c.top_p, c.max_new_tokens) == (3, 1.0, 0.9, 512)


def test_unknown_key_is_named_with_suggestion():
    with pytest.raises(
        ConfigError, match=r"unknown profile key 'train.lerning_rate'.*learning_rate"
    ):
        load_profile("smoke", overrides=["train.lerning_rate=1e-3"])


def test_wrong_type_is_named():
    with pytest.raises(ConfigError, match=r"train.batch_size must be an integer"):
        load_profile("smoke", overrides=["train.batch_size=seven"])
    with pytest.raises(ConfigError, match=r"eval.mode='fast' is not allowed"):
        load_profile("smoke", overrides=["eval.mode=fast"])


def test_unknown_profile_lists_known():
    with pytest.raises(ConfigError, match="known profiles: .*cpu"):
        load_profile("gpu-giant")


def test_batch_size_larger_than_languages_rejected():
    with pytest.raises(ConfigError, match="larger than the number of training languages"):
        load_profile("smoke", overrides=["train.batch_size=4"])


def test_english_anchor_without_english_rejected():
    with pytest.raises(ConfigError, match="include_english=true but 'en'"):
        load_profile("smoke", overrides=["data.train_langs=[ar, zh]", "train.batch_size=2"])


def test_unknown_language_rejected():
    with pytest.raises(ConfigError, match="unknown language code 'xx'"):
        load_profile("smoke", overrides=["data.unseen_langs=[xx]"])


def test_overrides_parse_yaml_values():
    assert parse_override("train.learning_rate=5e-6") == (["train", "learning_rate"], "5e-6")
    p = load_profile("smoke", overrides=["train.learning_rate=5e-6", "data.k=3", "seed=7"])
    assert (p.train.learning_rate, p.data.k, p.seed) == (5e-6, 3, 7)


def test_inherit_merges_sections():
    smoke, cpu = load_profile("smoke"), load_profile("cpu")
    assert smoke.model.name == "tiny-random" and cpu.model.name == "gemma-3-270m"
    assert smoke.data.test_fraction == cpu.data.test_fraction  # inherited, not restated


def test_round_trip_through_dict():
    p = load_profile("cpu", overrides=["train.batching=uncoupled"])
    assert profile_from_dict(p.to_dict()) == p


def test_no_secrets_in_configs():
    for path in CONFIG_DIR.rglob("*.yaml"):
        text = Path(path).read_text().lower()
        assert "hf_" not in text and "token:" not in text, path
