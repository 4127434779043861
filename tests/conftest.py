"""Shared fixtures: a model cache, a tiny profile, the tiny-random model and tiny preference data.

The cache is ``$XLALIGN_CACHE`` when set (the tiny model is built there once and reused), else a fresh
temporary directory for the session.
"""

from __future__ import annotations

import copy
import os
from pathlib import Path

# No test may reach a model or dataset hub (CI has no network to one). huggingface_hub and datasets
# read these once, at import, so they are set before anything imports them; without them the paper
# profile's dry run spent 46 s in the hub client's retries for Belebele before noting it unreadable.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

import pytest  # noqa: E402

from xlalign.config import (  # noqa: E402
    DataSection,
    ExperimentsSection,
    LoraSection,
    ModelSection,
    Profile,
    TrainSection,
)

TINY_LANGS = ["en", "ar", "zh"]


@pytest.fixture(scope="session")
def cache_dir(tmp_path_factory) -> Path:
    env = os.environ.get("XLALIGN_CACHE")
    return Path(env) if env else tmp_path_factory.mktemp("xlalign-cache")


@pytest.fixture(scope="session")
def tiny_profile(cache_dir) -> Profile:
    """tiny-random, three training languages, 24 groups, LoRA without dropout, 2 DPO steps."""
    return Profile(
        name="tiny",
        cache_dir=str(cache_dir),
        model=ModelSection(name="tiny-random", dtype="float32", prompt_format="plain"),
        lora=LoraSection(r=4, alpha=8, dropout=0.0, target_modules=["q_proj", "v_proj"]),
        data=DataSection(
            train_langs=list(TINY_LANGS),
            unseen_langs=["th"],
            domains=["finance", "science"],
            topics_per_domain=5,  # 2 test topics a domain: test negatives draw k=2 test passages
            k=2,
        ),
        train=TrainSection(
            method="dpo",
            batching="aligned",
            batch_size=3,
            max_steps=2,
            learning_rate=1e-3,
            max_length=2048,
            logging_steps=1,
        ),
        experiments=ExperimentsSection(batch_sizes=[1, 3]),  # at most the three languages
    )


@pytest.fixture(scope="session")
def tiny_model_dir(tiny_profile) -> Path:
    from xlalign.models import ModelUnavailableError, tiny_random_dir

    try:
        return tiny_random_dir(tiny_profile.cache_path)
    except ModelUnavailableError as exc:
        pytest.skip(str(exc))


@pytest.fixture(scope="session")
def tiny_tokenizer(tiny_profile, tiny_model_dir):
    from xlalign.models import load_tokenizer

    return load_tokenizer(tiny_profile)


@pytest.fixture
def tiny_model_and_tokenizer(tiny_profile, tiny_model_dir, tiny_tokenizer):
    """A fresh float32 tiny-random model per test (training wraps and changes it in place)."""
    from xlalign.models import load_model

    model, _ = load_model(tiny_profile)
    return model, tiny_tokenizer


@pytest.fixture(scope="session")
def _tiny_pref_rows(tiny_profile, tiny_tokenizer) -> list[dict]:
    from xlalign.probe.dataset import build_probe_data

    rows = build_probe_data(tiny_profile, tiny_tokenizer).train_pref
    # The probe prompts run to ~700 tokens; the tests need the grouping, not the documents. Keep the
    # start and the end of each prompt (as scripts/train_2proc.py does), so that lengths still differ
    # across languages.
    return [dict(r, prompt=r["prompt"][:70] + " ... " + r["prompt"][-70:]) for r in rows]


@pytest.fixture
def tiny_pref_rows(_tiny_pref_rows) -> list[dict]:
    """Preference rows (prompt, chosen, rejected, sample_id, lang, ...): 24 groups x 3 languages."""
    return copy.deepcopy(_tiny_pref_rows)
