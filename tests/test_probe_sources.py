"""The probe from each source (shipped corpus, XQuAD, Belebele, NoMIRACL): no test passage in a
training prompt, splits by document, same-domain distractors with a counted fallback, cleaned
passages, and clear errors for a missing language or a source too small for k.

The public sources run on fixtures in their real on-disk format (tests/fixtures/probe/, written by
its make_fixtures.py); the hub paths run through ``datasets.load_dataset`` with the hub's names.
"""

import json
from collections import Counter, defaultdict
from pathlib import Path

import pytest

from xlalign.config import (
    ConfigError,
    DataSection,
    ExperimentsSection,
    Profile,
    TrainSection,
    derive,
    load_profile,
)
from xlalign.probe import build as probe
from xlalign.probe.dataset import build_probe_data, load_passages
from xlalign.sources.common import clean_records, clean_text
from xlalign.sources.corpus import CorpusError
from xlalign.sources.rag import read_nomiracl

FIX = Path(__file__).parent / "fixtures" / "probe"
LANGS = {"xquad": ["en", "es", "zh"], "belebele": ["en", "es", "ar"], "nomiracl": ["en", "es"]}


def source_profile(source: str, k: int = 3, **data) -> Profile:
    langs = LANGS[source]
    return Profile(
        data=DataSection(
            source=source,
            source_dir=str(FIX / source),
            train_langs=langs[:2],
            unseen_langs=langs[2:],
            k=k,
            **data,
        ),
        train=TrainSection(
            batch_size=2, batching="uncoupled" if source == "nomiracl" else "aligned"
        ),
        experiments=ExperimentsSection(batch_sizes=[1, 2]),
    )


def _test_passages(data) -> dict[str, set[str]]:
    """Every passage a test prompt shows, per language (the documents of its test topics)."""
    out: dict[str, set[str]] = defaultdict(set)
    for r in data.rows:
        if r["split"] == "test":
            for line in r["prompt"].split("\nCONTEXTS:\n", 1)[1].split("\n")[:-1]:
                out[r["lang"]].add(line.split(": ", 1)[1])
    return out


def assert_no_test_passage_in_training(data) -> None:
    passages = {p for ps in _test_passages(data).values() for p in ps}
    assert passages
    train_prompts = [r["prompt"] for r in data.train_pref]
    assert train_prompts
    leaked = {p for p in passages for prompt in train_prompts if p in prompt}
    assert not leaked, f"{len(leaked)} test passages in training prompts, e.g. {sorted(leaked)[:2]}"


# ---------------------------------------------------------------------------- leakage, per source


@pytest.mark.parametrize("k", [2, 10])
def test_shipped_corpus_keeps_every_test_passage_out_of_training(k):
    data = build_probe_data(Profile(data=DataSection(k=k)))
    assert_no_test_passage_in_training(data)
    # and the other way round: a test prompt shows only test topics
    split = {r["topic_id"]: r["split"] for r in data.rows}
    for r in data.rows:
        assert {split[t] for t in r["doc_topics"]} == {r["split"]}


def test_machine_translated_training_rows_hold_no_test_passage():
    data = build_probe_data(
        Profile(data=DataSection(k=2, mt_langs=["th"], unseen_langs=["vi"], translator="fake"))
    )
    assert any(r["lang"] == "th" for r in data.train_pref)
    assert_no_test_passage_in_training(data)


@pytest.mark.parametrize("source", ["xquad", "belebele", "nomiracl"])
def test_public_source_keeps_every_test_passage_out_of_training(source):
    data = build_probe_data(source_profile(source))
    assert {r["lang"] for r in data.train_pref} == set(LANGS[source][:2])
    assert_no_test_passage_in_training(data)


def test_nomiracl_training_queries_draw_around_test_candidates():
    """The fixture's negatives come from one shared pool, so without the exclusion training
    prompts would show passages that test queries have among their candidates."""
    data = build_probe_data(source_profile("nomiracl"))
    queries = read_nomiracl(["en", "es"], data_dir=FIX / "nomiracl")
    split = {(r["lang"], r["query_id"]): r["split"] for r in data.rows}
    for lang in ("en", "es"):
        test_ids = {
            d
            for q in queries[lang]
            if split.get((lang, f"nm-{lang}-{q.query_id}")) == "test"
            for d in q.docids
        }
        train_docs = {
            d
            for r in data.rows
            if r["lang"] == lang and r["split"] == "train"
            for d in r["doc_topics"]
        }
        assert test_ids and train_docs and not test_ids & train_docs
        counts = data.report["languages"][lang]
        assert counts["train_dropped_for_test_passages"] > 0  # the exclusion did something
        assert (
            counts["train"]
            + counts["test"]
            + counts["too_few_passages"]
            + counts["train_dropped_for_test_passages"]
            == counts["queries"]
        )


def test_nomiracl_refuses_aligned_batches():
    p = derive(source_profile("nomiracl"), train={"batching": "aligned"})
    with pytest.raises(ValueError, match="not translations of each other.*batching=uncoupled"):
        build_probe_data(p)


# ------------------------------------------------------------------------- splits and distractors


def test_xquad_splits_by_article_not_by_paragraph():
    data = build_probe_data(source_profile("xquad"))
    sides = defaultdict(set)
    for r in data.rows:
        sides[r["topic_id"].rsplit("-", 1)[0]].add(r["split"])  # xq-<article>-<paragraph>
    assert all(len(v) == 1 for v in sides.values())
    assert {s for v in sides.values() for s in v} == {"train", "test"}
    assert data.report["documents"] == len(sides) == 8
    assert data.report["skipped_topics"] == {"count": 1, "first": ["xq-6-4"]}  # one question


def test_split_by_document_hand_worked():
    class T:
        def __init__(self, domain):
            self.domain = domain

    topics = {f"d{d}-p{p}": T("big" if d < 4 else f"solo{d}") for d in range(8) for p in range(3)}
    documents = {tid: tid.split("-")[0] for tid in topics}
    split = probe.split_topics(topics, 0.25, seed=0, documents=documents)
    by_doc = defaultdict(set)
    for tid, side in split.items():
        by_doc[documents[tid]].add(side)
    assert all(len(v) == 1 for v in by_doc.values())
    big = Counter(next(iter(by_doc[f"d{d}"])) for d in range(4))
    solo = Counter(next(iter(by_doc[f"d{d}"])) for d in range(4, 8))
    # "big" (4 documents) is split on its own: 1 test; the four one-document domains are pooled
    assert big == {"train": 3, "test": 1} and solo == {"train": 3, "test": 1}
    # without documents, each topic is its own document (the shipped corpus)
    assert probe.split_topics(topics, 0.25, 0) == probe.split_topics(
        topics, 0.25, 0, {t: t for t in topics}
    )


@pytest.mark.parametrize("source", ["xquad", "belebele"])
def test_distractors_prefer_the_domain_and_the_fallback_is_counted(source):
    p = source_profile(source)
    records, documents, _ = load_passages(p, LANGS[source])
    data = build_probe_data(p)
    topics = records["en"]
    split = {r["topic_id"]: r["split"] for r in data.rows}
    outside = Counter()
    seen = set()
    for r in data.rows:
        if r["sample_id"] in seen:
            continue
        seen.add(r["sample_id"])
        docs = [t for t in r["doc_topics"] if t != r["topic_id"]]
        n_out = sum(topics[t].domain != r["domain"] for t in docs)
        same_available = sum(
            1
            for t in topics
            if t != r["topic_id"] and topics[t].domain == r["domain"] and split[t] == r["split"]
        )
        assert n_out == max(0, len(docs) - same_available)  # other domains only once it ran out
        outside[r["split"]] += n_out
    report = data.report["distractors"]
    assert {side: c["outside_domain"] for side, c in report.items()} == dict(outside)
    assert sum(outside.values()) > 0  # these fixtures' domains are too small for k=3


def test_xquad_k_beyond_an_article_falls_back_instead_of_raising():
    """k beyond an article's paragraphs used to raise (real XQuAD: k=10, at most 5 paragraphs)."""
    p = source_profile("xquad", k=6, test_fraction=0.5)
    data = build_probe_data(p)
    assert all(len(r["doc_topics"]) == 6 for r in data.rows)
    assert data.report["distractors"]["train"]["outside_domain"] > 0


EN_ONLY = Profile(
    data=DataSection(train_langs=["en"], unseen_langs=[]),
    train=TrainSection(batch_size=1),
    experiments=ExperimentsSection(batch_sizes=[1]),
)


def test_corpus_without_split_keeps_same_domain_documents():
    corpus = load_passages(EN_ONLY, ["en"])[0]
    samples = probe.build_samples(corpus["en"], k=11, seed=0)
    assert all(s.outside_domain == 0 for s in samples)  # 12 topics a domain: 11 others
    samples = probe.build_samples(corpus["en"], k=12, seed=0)
    assert all(s.outside_domain == (1 if s.label == probe.ANSWER_ABSENT else 0) for s in samples)


# ------------------------------------------------------------------------------------- cleaning


def test_clean_text_hand_worked():
    assert clean_text("\ufeffA title  ") == ("A title", ("bom", "outer_whitespace"))
    assert clean_text("one\r\n  two\nthree") == ("one two three", ("newlines",))
    assert clean_text("clean") == ("clean", ())


@pytest.mark.parametrize(
    ("source", "expected"),
    # per language: xquad 3 dirty paragraphs (BOM, line break, trailing spaces); belebele 2 pages
    [
        ("xquad", {"bom": 3, "newlines": 3, "outer_whitespace": 3, "fields_changed": 9}),
        ("belebele", {"bom": 3, "newlines": 0, "outer_whitespace": 3, "fields_changed": 6}),
    ],
)
def test_public_passages_are_cleaned_and_counted(source, expected):
    data = build_probe_data(source_profile(source))
    assert data.report["cleaned"] == expected
    for r in data.rows:
        assert "\ufeff" not in r["prompt"]
        contexts = r["prompt"].split("\nCONTEXTS:\n", 1)[1].split("\n")[:-1]
        assert [c.split("]", 1)[0] for c in contexts] == [f"[{i}" for i in range(1, 4)]
        assert all(c == c.strip() for c in contexts)


def test_clean_records_keeps_clean_records_unchanged():
    records, _, _ = load_passages(EN_ONLY, ["en"])
    again, counts = clean_records(records)
    assert counts["fields_changed"] == 0
    assert all(again["en"][t] is records["en"][t] for t in records["en"])


# ---------------------------------------------------------------------------------- bad input


@pytest.mark.parametrize(
    ("source", "lang"), [("nomiracl", "pt"), ("xquad", "ja"), ("nomiracl", "vi")]
)
def test_a_language_the_source_lacks_is_refused_with_the_profile(source, lang):
    with pytest.raises(ConfigError) as exc:
        load_profile("cpu", overrides=[f"data.source={source}", "data.source_dir=/x"])
    msg = str(exc.value)
    assert f"data.source={source}" in msg and lang in msg


@pytest.mark.parametrize("command", ["build-data", "train"])
def test_the_command_line_stops_on_a_missing_language_before_any_model(
    command, monkeypatch, tmp_path, capsys
):
    import xlalign.models
    from xlalign import cli

    def refuse(*args, **kwargs):
        pytest.fail("a tokenizer or model was loaded")

    monkeypatch.setattr(xlalign.models, "load_tokenizer", refuse)
    monkeypatch.setattr(xlalign.models, "load_model", refuse)
    argv = [command, "--profile", "smoke", "--run-dir", str(tmp_path / "run")]
    assert cli.main([*argv, "data.source=nomiracl", "data.train_langs=[en,pt]"]) == 2
    err = capsys.readouterr().err
    assert "data.source=nomiracl has no data for language(s) pt" in err
    assert not (tmp_path / "run").exists()  # refused before a run directory was even made


def test_xquad_needs_a_folder():
    with pytest.raises(ConfigError, match="data.source=xquad needs data.source_dir"):
        DataSection(source="xquad", train_langs=["en", "es"], unseen_langs=[])


@pytest.mark.parametrize(("source", "k", "available"), [("xquad", 30, 15), ("belebele", 30, 9)])
def test_a_source_too_small_for_k_says_how_many_passages_it_has(source, k, available):
    with pytest.raises(CorpusError) as exc:
        build_probe_data(source_profile(source, k=k))
    msg = str(exc.value)
    assert msg.startswith(f"{source}: ") and f"k={k}" in msg
    assert f"Lower data.k to at most {available}" in msg


def test_corpus_too_small_for_k_names_the_side_of_the_split():
    with pytest.raises(CorpusError, match=r"corpus: 24 passages on the test side.*k=30"):
        build_probe_data(Profile(data=DataSection(k=30)))


def test_nomiracl_too_small_for_k_says_what_is_available():
    with pytest.raises(CorpusError, match=r"nomiracl en: with k=9.*20 queries.*most passages"):
        build_probe_data(source_profile("nomiracl", k=9))


# ------------------------------------------------------------------------------------ hub paths


def _fake_hub(monkeypatch, rows_of):
    import datasets

    calls = []

    def load_dataset(path, name, split, revision=None):
        calls.append((path, name, split, revision))
        return rows_of(name, split)

    monkeypatch.setattr(datasets, "load_dataset", load_dataset)
    return calls


def _jsonl(path):
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def test_belebele_probe_from_the_hub_uses_the_hub_names(monkeypatch):
    calls = _fake_hub(
        monkeypatch, lambda name, split: _jsonl(FIX / "belebele" / "data" / f"{name}.jsonl")
    )
    p = derive(source_profile("belebele"), data={"source_dir": None, "source_revision": "abc"})
    hub = build_probe_data(p)
    local = build_probe_data(source_profile("belebele"))
    assert {c[:2] for c in calls} == {
        ("facebook/belebele", c) for c in ("eng_Latn", "spa_Latn", "arb_Arab")
    }
    assert {c[2:] for c in calls} == {("test", "abc")}
    assert [r["prompt"] for r in hub.rows] == [r["prompt"] for r in local.rows]
    assert hub.report["source_dir"] == "hub"


def test_nomiracl_probe_from_the_hub_uses_the_hub_names(monkeypatch):
    def rows_of(name, split):
        return _jsonl(FIX / "nomiracl" / name / f"{split}.jsonl")

    calls = _fake_hub(monkeypatch, rows_of)
    p = derive(source_profile("nomiracl"), data={"source_dir": None})
    hub = build_probe_data(p)
    assert {c[:3] for c in calls} == {
        ("miracl/nomiracl", lang, f"test.{subset}")
        for lang in ("english", "spanish")
        for subset in ("relevant", "non_relevant")
    }
    local = build_probe_data(source_profile("nomiracl"))
    assert [r["prompt"] for r in hub.rows] == [r["prompt"] for r in local.rows]


def test_fixtures_are_what_make_fixtures_writes(tmp_path, monkeypatch):
    import importlib.util

    spec = importlib.util.spec_from_file_location("make_fixtures", FIX / "make_fixtures.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    monkeypatch.setattr(mod, "HERE", tmp_path)
    mod.xquad(), mod.belebele(), mod.nomiracl()
    written = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*") if p.is_file())
    shipped = sorted(p.relative_to(FIX) for p in FIX.rglob("*") if p.suffix in (".json", ".jsonl"))
    assert written == shipped
    for rel in written:
        assert (tmp_path / rel).read_bytes() == (FIX / rel).read_bytes(), rel
