"""Profiles: every YAML parses and validates; bad keys and values are rejected by name; overrides work."""

import dataclasses
import typing
from pathlib import Path

import pytest
import yaml

from xlalign.config import (
    COMMON_OPTIMIZERS,
    CONFIG_DIR,
    CalmSection,
    ConfigError,
    EvalSection,
    ExperimentsSection,
    LoraSection,
    ModelSection,
    Profile,
    TrainSection,
    allowed_values,
    derive,
    load_profile,
    parse_override,
    profile_from_dict,
)

PROFILES = ["cpu", "cpu-long", "gpu-smoke", "paper", "smoke"]
OVERLAYS = [f"batch_size_{b}" for b in range(1, 8)] + [
    "dpo",
    "machine_translated",
    "no_english",
    "uncoupled",
]


@pytest.mark.parametrize("path", sorted(CONFIG_DIR.glob("*.yaml")), ids=lambda p: p.stem)
def test_every_profile_validates(path):
    profile = load_profile(path.stem)
    assert isinstance(profile, Profile)
    assert profile.name == path.stem


@pytest.mark.parametrize(
    "path", sorted((CONFIG_DIR / "ablations").glob("*.yaml")), ids=lambda p: p.stem
)
def test_every_ablation_overlay_validates_on_paper(path):
    """The overlay's values land in the profile; every other value stays the paper profile's."""
    base = load_profile("paper").to_dict()
    got = load_profile("paper", overlays=[str(path)]).to_dict()
    overlay = yaml.safe_load(path.read_text())
    for section, values in overlay.items():
        for key, value in values.items():
            assert got[section][key] == value, f"{section}.{key}"
            got[section][key] = base[section][key]
    assert got == base


def test_the_expected_profiles_and_overlays_exist():
    assert sorted(p.stem for p in CONFIG_DIR.glob("*.yaml")) == PROFILES
    assert sorted(p.stem for p in (CONFIG_DIR / "ablations").glob("*.yaml")) == sorted(OVERLAYS)


def test_accelerate_configs_parse():
    paths = sorted((CONFIG_DIR / "accelerate").glob("*.yaml"))
    assert [p.stem for p in paths] == ["cpu_2proc", "multi_gpu_2", "multi_gpu_4"]
    for path in paths:
        cfg = yaml.safe_load(path.read_text())
        assert cfg["num_processes"] >= 2
    assert load_profile("paper").accelerate_config == "configs/accelerate/multi_gpu_4.yaml"


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
    t = c.train
    assert (t.learning_rate, t.lr_scheduler, t.warmup_ratio, t.beta, t.epochs) == (
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
    paths = sorted(CONFIG_DIR.rglob("*.yaml"))
    assert len(paths) == len(PROFILES) + len(OVERLAYS) + 3  # + the three accelerate configs
    for path in paths:
        text = Path(path).read_text().lower()
        assert "hf_" not in text and "token:" not in text, path


# --------------------------------------------------------------------------- allowed values (Literal)


def _literal_fields():
    for section in (ModelSection, TrainSection, EvalSection, CalmSection, ExperimentsSection):
        prefix = {CalmSection: "calm", ExperimentsSection: "experiments"}.get(
            section, section.__name__.removesuffix("Section").lower()
        )
        for name, tp in typing.get_type_hints(section).items():
            if allowed_values(tp):
                yield f"{prefix}.{name}", tp


LITERAL_FIELDS = dict(_literal_fields())


def test_the_choices_are_the_literal_annotations():
    hints = typing.get_type_hints(TrainSection)
    assert typing.get_origin(hints["method"]) is typing.Literal
    assert allowed_values(hints["method"]) == ("dpo", "orpo", "sft")
    assert set(LITERAL_FIELDS) >= {
        "model.dtype",
        "model.quantization",
        "model.prompt_format",
        "model.attn_implementation",
        "train.method",
        "train.batching",
        "train.lr_scheduler",
        "train.orpo_nll_scope",
        "eval.mode",
        "calm.batching",
        "experiments.methods",
        "experiments.ablation_methods",
    }


@pytest.mark.parametrize("key", sorted(LITERAL_FIELDS))
def test_a_value_outside_the_literal_is_rejected_naming_every_allowed_value(key):
    allowed = allowed_values(LITERAL_FIELDS[key])
    is_list = typing.get_origin(LITERAL_FIELDS[key]) is list
    value = "[no_such_choice]" if is_list else "no_such_choice"
    with pytest.raises(ConfigError) as err:
        load_profile("cpu", overrides=[f"{key}={value}"])
    msg = str(err.value)
    assert key in msg and "'no_such_choice' is not allowed" in msg
    assert msg.endswith("choose one of " + ", ".join(allowed))


@pytest.mark.parametrize("key", sorted(LITERAL_FIELDS))
def test_every_value_of_the_literal_is_accepted(key):
    section, name = key.split(".")
    is_list = typing.get_origin(LITERAL_FIELDS[key]) is list
    for value in allowed_values(LITERAL_FIELDS[key]):
        # clustered batches are CALM's (one question's rows); the others only need a valid profile
        p = load_profile("cpu", overrides=[f"{key}={[value] if is_list else value}"])
        assert getattr(getattr(p, section), name) == ([value] if is_list else value)


def test_constructing_a_section_in_python_checks_the_same_choices():
    with pytest.raises(
        ConfigError, match=r"model.dtype='fp8' is not allowed; choose one of float32"
    ):
        ModelSection(dtype="fp8")
    with pytest.raises(ConfigError, match=r"experiments.methods\[1\]='sft' is not allowed"):
        ExperimentsSection(methods=["dpo", "sft"])


# --------------------------------------------------------------------------- rejected values

REJECTED = [
    # NaN / inf floats (YAML .nan, .inf)
    ("train.learning_rate=.nan", "train.learning_rate=nan must be a finite number"),
    ("train.beta=.inf", "train.beta=inf must be a finite number"),
    ("eval.alpha=-.inf", "eval.alpha=-inf must be a finite number"),
    ("calm.temperature=.NaN", "calm.temperature=nan must be a finite number"),
    ("calm.train.warmup_ratio=.nan", "calm.train.warmup_ratio=nan must be a finite number"),
    # counts and sizes
    ("eval.batch_size=0", "eval.batch_size=0 must be >= 1"),
    ("eval.max_new_tokens=0", "eval.max_new_tokens=0 must be >= 1"),
    ("eval.n_bootstrap=0", "eval.n_bootstrap=0 must be >= 1"),
    ("eval.max_items_per_lang=-1", "eval.max_items_per_lang=-1 must be >= 0"),
    ("eval.alpha=1", "eval.alpha=1.0 must be in (0, 1)"),
    ("train.grad_accum=0", "train.grad_accum=0 must be >= 1"),
    ("train.logging_steps=0", "train.logging_steps=0 must be >= 1"),
    ("train.save_steps=-1", "train.save_steps=-1 must be >= 0"),
    ("train.max_length=0", "train.max_length=0 must be >= 1"),
    ("train.max_steps=-2", "train.max_steps=-2 must be >= -1"),
    ("train.epochs=0", "train.epochs=0.0 must be > 0"),
    ("train.warmup_ratio=1.5", "train.warmup_ratio=1.5 must be in [0.0, 1.0]"),
    ("train.beta=0", "train.beta=0.0 must be > 0"),
    ("train.beta=-0.1", "train.beta=-0.1 must be > 0"),
    (
        "train.optim=adamw_typo",
        "train.optim='adamw_typo' is not one of transformers' OptimizerNames",
    ),
    ("lora.dropout=1.0", "lora.dropout=1.0 must be in [0.0, 1.0)"),
    ("lora.dropout=-0.1", "lora.dropout=-0.1 must be in [0.0, 1.0)"),
    ("lora.alpha=0", "lora.alpha=0 must be >= 1"),
    ("lora.top_layers=-1", "lora.top_layers=-1 must be >= 0"),
    ("data.topics_per_domain=-1", "data.topics_per_domain=-1 must be >= 0"),
    ("data.max_prompt_tokens=0", "data.max_prompt_tokens=0 must be >= 1"),
    ("data.translator=google", "data.translator='google' is not allowed; choose one of fake"),
    ("seed=-1", "seed=-1 must be >= 0"),
    # CALM
    ("calm.train_langs=[en, xx]", "calm.train_langs: unknown language code 'xx'; known codes: en"),
    ("calm.eval_langs=[qq]", "calm.eval_langs: unknown language code 'qq'"),
    ("calm.num_samples=0", "calm.num_samples=0 must be >= 1"),
    ("calm.top_p=0", "calm.top_p=0.0 must be in (0, 1]"),
    ("calm.max_new_tokens=0", "calm.max_new_tokens=0 must be >= 1"),
    ("calm.sample_batch_size=0", "calm.sample_batch_size=0 must be >= 1"),
    ("calm.eval_batch_size=-1", "calm.eval_batch_size=-1 must be >= 0"),
    ("calm.max_questions=-1", "calm.max_questions=-1 must be >= 0"),
    ('calm.translator="hf:"', "calm.translator='hf:' is not allowed; choose one of self"),
    ("calm.sft_learning_rate=0", "calm.sft_learning_rate=0.0 must be > 0"),
    ("calm.train.beta=0", "calm.train.beta=0.0 must be > 0"),
    ("calm.train.grad_accum=0", "calm.train.grad_accum=0 must be >= 1"),
    ("calm.train.batching=aligned", "calm.train.batching='aligned' is not allowed"),
    ("calm.train.balance_labels=true", "calm.train.balance_labels=true is not allowed"),
    ("calm.lora.dropout=1", "calm.lora.dropout=1.0 must be in [0.0, 1.0)"),
    # what the notebooks run
    ("experiments.batch_sizes=[1, 9]", "experiments.batch_sizes: 9 is not in 1..7"),
    ("experiments.batch_sizes=[0, 2]", "experiments.batch_sizes: 0 is not in 1..7"),
    ("experiments.batch_sizes=[]", "experiments.batch_sizes must name at least one"),
    ("experiments.ablation_max_steps=-2", "experiments.ablation_max_steps=-2 must be >= -1"),
    ("experiments.benchmark_limit=-1", "experiments.benchmark_limit=-1 must be >= 0"),
]


@pytest.mark.parametrize("override,message", REJECTED, ids=[r[0] for r in REJECTED])
def test_invalid_values_are_rejected_naming_key_and_range(override, message):
    with pytest.raises(ConfigError) as err:
        load_profile("cpu", overrides=[override])
    assert message in str(err.value)


def test_batch_sizes_are_bounded_by_the_profiles_training_languages():
    with pytest.raises(ConfigError, match=r"experiments.batch_sizes: 4 is not in 1..3"):
        load_profile("smoke", overrides=["experiments.batch_sizes=[1, 4]"])
    # Table 11 trains at batch size 7: the profile's training languages plus four MT languages.
    mt = load_profile("cpu", overlays=["machine_translated"])
    assert mt.train.batch_size == 7 and mt.data.mt_langs == ["th", "vi", "hu", "ro"]
    assert mt.data.train_langs == load_profile("cpu").data.train_langs
    smoke_mt = load_profile("smoke", overlays=["machine_translated"])  # en ar zh + four MT
    assert smoke_mt.train.batch_size == 7


def test_the_common_optimizers_are_transformers_names():
    from transformers.training_args import OptimizerNames

    assert set(COMMON_OPTIMIZERS) <= {o.value for o in OptimizerNames}
    # a name outside the fast path is looked up in the installed transformers
    assert load_profile("cpu", overrides=["train.optim=rmsprop"]).train.optim == "rmsprop"


# --------------------------------------------------------------------------- duplicate YAML keys


def test_a_duplicate_key_in_a_profile_is_rejected_naming_file_and_key(tmp_path):
    path = tmp_path / "dup.yaml"
    path.write_text("inherit: smoke\nname: dup\ntrain:\n  max_steps: 1\n  max_steps: 5\n")
    with pytest.raises(ConfigError) as err:
        load_profile(str(path))
    assert str(path) in str(err.value) and "duplicate key 'max_steps' (line 5)" in str(err.value)


def test_a_duplicate_section_or_overlay_key_is_rejected(tmp_path):
    path = tmp_path / "dup.yaml"
    path.write_text("inherit: smoke\nname: dup\ntrain: {max_steps: 1}\ntrain: {max_steps: 2}\n")
    with pytest.raises(ConfigError, match=r"dup.yaml: duplicate key 'train'"):
        load_profile(str(path))
    overlay = tmp_path / "over.yaml"
    overlay.write_text("train: {method: dpo, method: orpo}\n")
    with pytest.raises(ConfigError, match=r"over.yaml: duplicate key 'method'"):
        load_profile("smoke", overlays=[str(overlay)])
    # the same key in two different mappings is fine
    overlay.write_text("train: {max_steps: 3}\ncalm: {train: {max_steps: 3}}\n")
    p = load_profile("smoke", overlays=[str(overlay)])
    assert (p.train.max_steps, p.calm.train.max_steps) == (3, 3)


# --------------------------------------------------------------------------- CALM's train section


def test_calm_train_section_starts_from_calms_defaults():
    calm = CalmSection().train
    assert (calm.method, calm.batching, calm.batch_size, calm.include_english) == (
        "dpo",
        "clustered",
        1,
        False,
    )
    assert (calm.learning_rate, calm.epochs, calm.beta, calm.lr_scheduler, calm.warmup_ratio) == (
        5e-6,
        3.0,
        0.1,
        "cosine",
        0.1,
    )
    # a YAML mapping that sets one key keeps CALM's defaults for the rest, not TrainSection's
    p = derive(load_profile("cpu"), overrides={"calm": {"train": {"max_steps": 1}}})
    assert p.calm.train == dataclasses.replace(calm, max_steps=1)
    assert load_profile("smoke").calm.train.max_steps == 1


def test_calm_section_refuses_a_non_clustered_train_section():
    with pytest.raises(ConfigError, match=r"calm.train.batching='aligned' is not allowed"):
        CalmSection(train=TrainSection())


_OLD_ENGINE = {"grad_accum": 1, "logging_steps": 1, "optim": "adamw_torch", "share_prompt": True}
# Added since (train.reuse_frozen, off on smoke and paper); CALM adapts every layer, so nothing to reuse.
_OLD_ENGINE["reuse_frozen"] = False
# What ``calm_train_profile`` produced before calm.train existed (git show c38d305:src/xlalign/calm/
# variants.py copied 11 calm fields into profile.train): the train and lora sections, field by field.
OLD_CALM_TRAIN = {
    ("smoke", "dpo"): {
        "method": "dpo", "batching": "clustered", "batch_size": 1, "include_english": False,
        "learning_rate": 5e-4, "epochs": 3.0, "max_steps": 1, "beta": 0.1,
        "lr_scheduler": "cosine", "warmup_ratio": 0.1, "gradient_checkpointing": False,
        "save_steps": 0, "max_length": 4096, "orpo_nll_scope": "completion", **_OLD_ENGINE,
    },
    ("smoke", "sft"): {
        "method": "sft", "batching": "clustered", "batch_size": 1, "include_english": False,
        "learning_rate": 5e-4, "epochs": 3.0, "max_steps": 1, "beta": 0.1,
        "lr_scheduler": "cosine", "warmup_ratio": 0.0, "gradient_checkpointing": False,
        "save_steps": 0, "max_length": 4096, "orpo_nll_scope": "completion", **_OLD_ENGINE,
    },
    ("paper", "dpo"): {
        "method": "dpo", "batching": "clustered", "batch_size": 1, "include_english": False,
        "learning_rate": 5e-6, "epochs": 3.0, "max_steps": -1, "beta": 0.1,
        "lr_scheduler": "cosine", "warmup_ratio": 0.1, "gradient_checkpointing": True,
        "save_steps": 200, "max_length": 4096, "orpo_nll_scope": "full", **_OLD_ENGINE,
    },
    ("paper", "sft"): {
        "method": "sft", "batching": "clustered", "batch_size": 1, "include_english": False,
        "learning_rate": 5e-5, "epochs": 3.0, "max_steps": -1, "beta": 0.1,
        "lr_scheduler": "cosine", "warmup_ratio": 0.0, "gradient_checkpointing": True,
        "save_steps": 200, "max_length": 4096, "orpo_nll_scope": "full", **_OLD_ENGINE,
    },
}  # fmt: skip
OLD_CALM_LORA = {
    "r": 8,
    "alpha": 16,
    "dropout": 0.0,
    "target_modules": ["q_proj", "v_proj"],
    "top_layers": 0,
}


@pytest.mark.parametrize("name,method", sorted(OLD_CALM_TRAIN), ids="-".join)
def test_calm_train_profile_equals_the_old_derived_profile(name, method):
    from xlalign.calm.variants import calm_train_profile

    profile = load_profile(name)
    derived = calm_train_profile(profile, method, 1)
    train = dataclasses.asdict(derived.train)
    # Fields added to TrainSection since then take their default, which leaves training unchanged.
    added = {"balance_labels": False}
    assert set(train) == set(OLD_CALM_TRAIN[name, method]) | set(added)
    assert {k: train[k] for k in added} == added
    for key, value in OLD_CALM_TRAIN[name, method].items():
        assert train[key] == value and type(train[key]) is type(value), key
    assert dataclasses.asdict(derived.lora) == OLD_CALM_LORA
    # everything else is the profile's own
    got, base = derived.to_dict(), profile.to_dict()
    assert {k: v for k, v in got.items() if k not in ("train", "lora")} == {
        k: v for k, v in base.items() if k not in ("train", "lora")
    }
    assert calm_train_profile(profile, method, 2).train.batch_size == 2


# --------------------------------------------------------------------------- derive


def test_derive_applies_overlays_then_sections_then_overrides():
    base = load_profile("cpu")
    p = derive(
        base,
        ["dpo"],
        {"train.max_steps": 3},
        train={"max_steps": 2, "batching": "uncoupled"},
        model={"name": "smollm2-135m"},
        seed=4,
    )
    assert (p.train.method, p.train.batching, p.train.max_steps) == ("dpo", "uncoupled", 3)
    assert (p.model.name, p.model.dtype, p.seed) == ("smollm2-135m", base.model.dtype, 4)
    assert base == load_profile("cpu")  # the input is untouched
    assert derive(base) == base
    assert derive(base, overrides=["train.max_steps=7"]).train.max_steps == 7


def test_derive_replaces_a_section_given_whole_and_validates_again():
    base = load_profile("cpu")
    lora = LoraSection(r=2, alpha=4, dropout=0.0, target_modules=["q_proj"])
    assert derive(base, lora=lora).lora == lora
    with pytest.raises(ConfigError, match="larger than the number of training languages"):
        derive(base, train={"batch_size": 8})
    with pytest.raises(ConfigError, match=r"unknown profile key 'trian'"):
        derive(base, trian={"max_steps": 1})


# --------------------------------------------------------------------------- validate-configs


def test_validate_configs_checks_the_given_profile_and_overrides(capsys):
    from xlalign.cli import main

    assert main(["validate-configs", "bogus=2"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("xlalign: error: ") and "'bogus'" in err
    assert len(err.strip().splitlines()) == 1
    assert main(["validate-configs", "--profile", "smoke", "train.batch_size=4"]) == 2
    assert "train.batch_size=4" in capsys.readouterr().err
    assert main(["validate-configs", "--profile", "smoke", "--overlay", "dpo"]) == 0
    assert capsys.readouterr().out.startswith(f"ok: {len(PROFILES)} profiles, 11 overlays")


def test_validate_configs_checks_every_overlay(tmp_path, monkeypatch, capsys):
    import shutil

    import xlalign.cli
    import xlalign.config
    from xlalign.cli import main

    configs = tmp_path / "configs"
    shutil.copytree(CONFIG_DIR, configs)
    (configs / "ablations" / "broken.yaml").write_text("train: {grad_accum: 0}\n")
    monkeypatch.setattr(xlalign.config, "CONFIG_DIR", configs)
    monkeypatch.setattr(xlalign.cli, "CONFIG_DIR", configs)
    assert main(["validate-configs"]) == 2
    assert "train.grad_accum=0 must be >= 1" in capsys.readouterr().err


def test_k_of_one_builds_single_document_prompts_and_zero_is_refused():
    from xlalign.probe.dataset import build_probe_data

    with pytest.raises(ConfigError, match=r"data.k=0 must be >= 1"):
        load_profile("smoke", overrides=["data.k=0"])
    data = build_probe_data(load_profile("smoke", overrides=["data.k=1"]))
    for row in data.test_rows[:20]:
        contexts = row["prompt"].split("CONTEXTS:")[1]
        assert "[1]" in contexts and "[2]" not in contexts  # one document, whatever the label
    assert {r["label"] for r in data.test_rows} == {"Yes, answer is present", "I don't know"}
