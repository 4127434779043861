"""Assemble a run's datasets from the corpus and the profile: probe rows, splits, preference pairs.

Saves ``datasets`` objects, count and token-length tables into the run directory and reports every exclusion.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from xlalign.config import Profile
from xlalign.probe import build as probe
from xlalign.sources.corpus import load_corpus
from xlalign.translate import make_translator, translate_corpus


@dataclass
class ProbeData:
    rows: list[dict]  # every (sample, language) item, train and test, text prompts
    train_pref: list[dict]  # TRL preference rows for the training languages (train split)
    test_rows: list[dict]  # test split, training + unseen languages
    report: dict = field(default_factory=dict)

    def train_dataset(self):
        from datasets import Dataset

        return Dataset.from_list(self.train_pref)

    def test_frame(self) -> pd.DataFrame:
        return pd.DataFrame(self.test_rows)


def build_probe_data(profile: Profile, tokenizer=None) -> ProbeData:
    """The probe for ``profile``: train rows in the training (+MT) languages, test rows in all."""
    d = profile.data
    langs_test = list(dict.fromkeys(d.train_langs + d.unseen_langs + d.mt_langs))
    corpus = load_corpus(d.corpus_dir, langs_test)
    topics = probe.select_topics(
        corpus["en" if "en" in corpus else langs_test[0]], d.domains, d.topics_per_domain
    )
    corpus = {lang: {t: recs[t] for t in topics} for lang, recs in corpus.items()}
    samples = probe.build_samples(topics, d.k, profile.seed)
    split = probe.split_topics(topics, d.test_fraction, profile.seed)

    rows = probe.probe_rows(corpus, langs_test, samples, split, d.localized_instruction)
    test_rows = [r for r in rows if r["split"] == "test"]
    train_rows = [r for r in rows if r["split"] == "train" and r["lang"] in d.train_langs]
    report: dict = {"topics": len(topics), "samples_per_language": len(samples)}
    if d.mt_langs:
        # C.2: training data for these languages is machine-translated from English; their test items
        # stay the shipped (human-authored) translations.
        translator = make_translator(d.translator)
        mt_corpus = {lang: translate_corpus(corpus["en"], lang, translator) for lang in d.mt_langs}
        mt_rows = probe.probe_rows(mt_corpus, d.mt_langs, samples, split, d.localized_instruction)
        train_rows += [r for r in mt_rows if r["split"] == "train"]
        report["mt"] = {"langs": d.mt_langs, "translator": translator.name}

    pref = probe.preference_rows(train_rows, tokenizer, profile.model.prompt_format)
    if tokenizer is not None:
        limit = min(d.max_prompt_tokens, profile.train.max_length)
        for r, p in zip(pref, train_rows, strict=True):
            r["item_id"] = p["item_id"]
        lengths = probe.pair_lengths(pref, tokenizer)
        pref, length_report = probe.enforce_max_length(pref, lengths, limit, d.overlong)
        report["length_check"] = length_report
        # Test prompts as the evaluation renders them, against the prompt limit (no truncation there).
        rendered = [
            {"prompt": probe.render_prompt(r["prompt"], tokenizer, profile.model.prompt_format)}
            for r in test_rows
        ]
        test_lengths = [
            n + 1 for n in probe.token_lengths(rendered, tokenizer)
        ]  # + first answer token
        test_rows, test_report = probe.enforce_max_length(
            test_rows, test_lengths, d.max_prompt_tokens, d.overlong
        )
        report["length_check_test"] = test_report
    report["counts"] = {
        "train_pref_rows": len(pref),
        "test_rows": len(test_rows),
        "train_groups": len({r["sample_id"] for r in pref}),
    }
    return ProbeData(rows=rows, train_pref=pref, test_rows=test_rows, report=report)


def token_length_table(rows: list[dict], tokenizer) -> pd.DataFrame:
    """Prompt token lengths per language for the profile's tokenizer (mean, max, ratio to English)."""
    df = pd.DataFrame(
        {"lang": [r["lang"] for r in rows], "tokens": probe.token_lengths(rows, tokenizer)}
    )
    table = df.groupby("lang", sort=False)["tokens"].agg(["mean", "median", "max"]).round(1)
    if "en" in table.index:
        table["ratio_to_en"] = (table["mean"] / table.loc["en", "mean"]).round(2)
    return table


def save_probe_data(data: ProbeData, out_dir: Path) -> dict[str, Path]:
    """Write the datasets (``datasets`` format), counts and the exclusion report."""
    from datasets import Dataset

    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {
        "train_pref": out_dir / "train_pref",
        "test": out_dir / "test",
        "report": out_dir / "data_report.json",
        "counts": out_dir / "counts.csv",
    }
    Dataset.from_list(data.train_pref).save_to_disk(str(paths["train_pref"]))
    Dataset.from_list(data.test_rows).save_to_disk(str(paths["test"]))
    paths["report"].write_text(json.dumps(data.report, indent=2, ensure_ascii=False))
    probe.counts_table(data.rows).to_csv(paths["counts"])
    return paths


def load_probe_split(out_dir: Path, name: str):
    from datasets import load_from_disk

    path = out_dir / name
    if not path.exists():
        raise FileNotFoundError(
            f"{path} not found; run the dataset step (notebook 01) for this run first"
        )
    return load_from_disk(str(path))
