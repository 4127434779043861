"""Assemble a run's datasets from the profile's source (the shipped corpus, XQuAD, Belebele or NoMIRACL):
probe rows, splits, preference pairs.

Saves ``datasets`` objects, count and token-length tables into the run directory and reports every exclusion.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field, replace
from pathlib import Path

import pandas as pd

from xlalign.config import Profile
from xlalign.probe import build as probe
from xlalign.sources.common import clean_records
from xlalign.sources.corpus import CorpusError, TopicRecord, load_corpus
from xlalign.sources.rag import load_belebele, load_xquad, read_nomiracl, sample_nomiracl_query
from xlalign.translate import TranslationError, make_translator, translate_corpus


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


def load_passages(profile: Profile, langs: list[str]) -> tuple[dict, dict[str, str], dict]:
    """The parallel passages ``{lang: {topic_id: record}}`` of ``data.source``, cleaned
    (``sources.common.clean_records``), each topic's document, and what loading reported.

    Records are corpus ``TopicRecord``s or ``PassageRecord``s; the probe reads only their domain,
    title, passage and questions. ``data.domains`` / ``data.topics_per_domain`` apply to every
    source (domains: the corpus's folders, XQuAD's article titles, Belebele's source sites)."""
    d = profile.data
    report: dict = {"source": d.source}
    if d.source == "corpus":
        records: dict = load_corpus(d.corpus_dir, langs)
        documents = None
        report["source_dir"] = d.corpus_dir
    elif d.source in ("xquad", "belebele"):
        if d.source == "xquad":
            ps = load_xquad(d.source_dir, langs)
        else:
            ps = load_belebele(langs, data_dir=d.source_dir, revision=d.source_revision)
        records = ps.records
        first = next(iter(records.values()))
        documents = {tid: rec.document or tid for tid, rec in first.items()}
        report["source_dir"] = d.source_dir or "hub"
        # Passages with fewer than two questions in some language: the probe needs two queries.
        report["skipped_topics"] = {"count": ps.n_skipped, "first": list(ps.skipped[:10])}
    else:
        raise ValueError(f"data.source={d.source!r} is not a parallel source")
    records, report["cleaned"] = clean_records(records)
    ref = records["en" if "en" in records else langs[0]]
    topics = probe.select_topics(ref, d.domains, d.topics_per_domain)
    records = {lang: {t: recs[t] for t in topics} for lang, recs in records.items()}
    documents = {t: (documents or {}).get(t, t) for t in topics}
    return records, documents, report


def _translate_passages(records: dict, tgt: str, translator) -> dict:
    """Machine-translate the fields the probe shows (title, passage, questions) into ``tgt`` (C.2).
    Corpus records go through ``translate_corpus`` (which also translates their MCQ)."""
    if all(isinstance(r, TopicRecord) for r in records.values()):
        return translate_corpus(records, tgt, translator)
    out = {}
    for tid in sorted(records):
        rec = records[tid]
        texts = [rec.title, rec.passage, *rec.questions]
        tr = translator.translate(texts, "en", tgt)
        if len(tr) != len(texts):
            raise TranslationError(f"{translator.name}: {len(tr)} outputs for {len(texts)} inputs")
        out[tid] = replace(
            rec, id=f"{tid}.{tgt}", lang=tgt, title=tr[0], passage=tr[1], questions=(tr[2], tr[3])
        )
    return out


def nomiracl_rows(profile: Profile, langs: list[str]) -> tuple[list[dict], dict]:
    """Probe rows from NoMIRACL, whose queries differ per language (nothing is parallel).

    Each language's queries are split on their own (by query, stratified by relevant/non-relevant,
    seeded); training samples draw only passages that no test query of that language has among its
    candidates, so no test passage reaches a training prompt. One sample per query, NoMIRACL's own
    (relevant subset: answer present)."""
    d = profile.data
    if profile.train.batching == "aligned":
        raise ValueError(
            "data.source=nomiracl: NoMIRACL's queries are not translations of each other, so there "
            "is no query to align across languages in a batch; set train.batching=uncoupled, or "
            "use a parallel source (corpus, xquad, belebele)"
        )
    queries = read_nomiracl(langs, data_dir=d.source_dir, revision=d.source_revision)
    rows: list[dict] = []
    report: dict = {"source": "nomiracl", "source_dir": d.source_dir or "hub", "languages": {}}
    for lang in langs:
        side: dict[str, str] = {}
        for relevant in (True, False):
            qids = sorted({q.query_id for q in queries[lang] if q.relevant == relevant})
            key = f"split/nomiracl/{lang}/{'relevant' if relevant else 'non_relevant'}"
            order = probe._rng_for(profile.seed, key).permutation(len(qids))
            n_test = round(len(qids) * d.test_fraction)
            for rank, idx in enumerate(order):
                side[qids[idx]] = "test" if rank < n_test else "train"
        test_docids = frozenset().union(
            *(q.docids for q in queries[lang] if side[q.query_id] == "test")
        )
        counts = {
            "queries": len(queries[lang]),
            "train": 0,
            "test": 0,
            "too_few_passages": 0,  # fewer candidates than k in the source itself
            "train_dropped_for_test_passages": 0,  # enough only with a test query's passages
        }
        most = 0
        for q in queries[lang]:
            part = side[q.query_id]
            exclude = test_docids if part == "train" else frozenset()
            sample = sample_nomiracl_query(q, d.k, profile.seed, exclude)
            most = max(most, len(q.docids - exclude))
            if sample is None:
                whole = exclude and sample_nomiracl_query(q, d.k, profile.seed) is not None
                counts["train_dropped_for_test_passages" if whole else "too_few_passages"] += 1
                continue
            counts[part] += 1
            qid = f"nm-{lang}-{q.query_id}"
            tag = "pos" if sample.relevant_count else "neg"
            rows.append(
                {
                    "item_id": f"{qid}.{tag}.{lang}",
                    "sample_id": f"{qid}.{tag}",
                    "query_id": qid,
                    "topic_id": qid,
                    "domain": "nomiracl",
                    "lang": lang,
                    "label": sample.label,
                    "split": part,
                    "doc_topics": list(sample.docids),
                    "prompt": probe.context_prompt(
                        q.query, sample.passages, lang, d.localized_instruction
                    ),
                }
            )
        if not counts["train"] or not counts["test"]:
            raise CorpusError(
                f"nomiracl {lang}: with k={d.k}, {counts['train']} training and {counts['test']} "
                f"test queries have enough passages ({counts['queries']} queries; the most "
                f"passages available to one query is {most}); lower data.k"
            )
        report["languages"][lang] = counts
    return rows, report


def build_probe_data(profile: Profile, tokenizer=None) -> ProbeData:
    """The probe for ``profile``: train rows in the training (+MT) languages, test rows in all."""
    d = profile.data
    langs_test = list(dict.fromkeys(d.train_langs + d.unseen_langs + d.mt_langs))
    if d.source == "nomiracl":
        rows, report = nomiracl_rows(profile, langs_test)
        test_rows = [r for r in rows if r["split"] == "test"]
        train_rows = [r for r in rows if r["split"] == "train" and r["lang"] in d.train_langs]
    else:
        corpus, documents, report = load_passages(profile, langs_test)
        topics = corpus["en" if "en" in corpus else langs_test[0]]
        split = probe.split_topics(topics, d.test_fraction, profile.seed, documents)
        samples = probe.build_samples(topics, d.k, profile.seed, split, source=d.source)
        rows = probe.probe_rows(corpus, langs_test, samples, split, d.localized_instruction)
        test_rows = [r for r in rows if r["split"] == "test"]
        train_rows = [r for r in rows if r["split"] == "train" and r["lang"] in d.train_langs]
        report.update(
            topics=len(topics),
            documents=len(set(documents.values())),
            samples_per_language=len(samples),
            # Distractors come from the query's side of the split; these many, where the query's
            # domain had too few, from another domain on that side (our fallback, not the paper's).
            distractors=probe.side_counts(samples, split),
        )
        if d.mt_langs:
            # C.2: training data for these languages is machine-translated from English; their test
            # items stay the source's human-authored translations.
            translator = make_translator(d.translator)
            mt_corpus = {
                lang: _translate_passages(corpus["en"], lang, translator) for lang in d.mt_langs
            }
            mt_rows = probe.probe_rows(
                mt_corpus, d.mt_langs, samples, split, d.localized_instruction
            )
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
