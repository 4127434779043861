"""The shipped corpus validates; the probe is parallel across languages and split by topic."""

import json
import shutil
from collections import Counter

import pytest

from xlalign.config import ALL_LANGS, DataSection, ExperimentsSection, Profile, TrainSection
from xlalign.probe import build as probe
from xlalign.probe.dataset import build_probe_data
from xlalign.sources.corpus import CorpusError, corpus_dir, load_corpus, summary
from xlalign.translate import FakeTranslator, translate_corpus


@pytest.fixture(scope="module")
def corpus():
    return load_corpus("data/corpus", ALL_LANGS)


def test_shipped_corpus_validates_and_is_balanced(corpus):
    s = summary(corpus)
    assert s["topics"] >= 60 and len(s["domains"]) >= 5 and s["languages"] == ALL_LANGS
    assert s["records"] == s["topics"] * len(ALL_LANGS)
    assert 60 <= s["en_passage_words"]["min"] and s["en_passage_words"]["max"] <= 120
    assert len(set(s["gold_letters"].values())) == 1  # A/B/C/D equally often


def test_probe_is_identical_across_languages_and_split_by_topic(corpus):
    data = build_probe_data(Profile(data=DataSection(k=10)))
    per_lang = Counter(r["lang"] for r in data.rows)
    assert len(set(per_lang.values())) == 1 and set(per_lang) == set(ALL_LANGS)
    docs = {}
    for r in data.rows:
        docs.setdefault(r["sample_id"], set()).add(tuple(r["doc_topics"]))
    assert all(len(v) == 1 for v in docs.values())  # same documents, same order, every language
    sides = {}
    for r in data.rows:
        sides.setdefault(r["topic_id"], set()).add(r["split"])
    assert all(len(v) == 1 for v in sides.values())  # no topic on both sides
    test_topics = {t for t, v in sides.items() if v == {"test"}}
    assert abs(len(test_topics) / len(sides) - 0.3) < 0.05
    labels = Counter((r["split"], r["label"]) for r in data.rows)
    assert labels["train", probe.ANSWER_PRESENT] == labels["train", probe.ANSWER_ABSENT]
    assert {r["lang"] for r in data.train_pref} == set(
        DataSection().train_langs
    )  # unseen: test only


def test_positive_holds_the_relevant_document_negative_does_not(corpus):
    samples = probe.build_samples(corpus["en"], k=10, seed=0)
    for s in samples:
        assert len(s.doc_topics) == 10 and len(set(s.doc_topics)) == 10
        domains = {corpus["en"][t].domain for t in s.doc_topics}
        assert domains == {s.domain}
        assert (s.topic_id in s.doc_topics) == (s.label == probe.ANSWER_PRESENT)


def test_samples_and_split_are_stable_when_languages_are_added(corpus):
    a = build_probe_data(
        Profile(
            data=DataSection(k=3, train_langs=["en", "fr"], unseen_langs=[]),
            train=TrainSection(batch_size=2),
            experiments=ExperimentsSection(batch_sizes=[1, 2]),
        )
    )
    b = build_probe_data(Profile(data=DataSection(k=3)))
    key = lambda rows: {(r["sample_id"], tuple(r["doc_topics"]), r["split"]) for r in rows}  # noqa: E731
    assert key(a.rows) == key(b.rows)


def test_prompt_is_the_paper_template(corpus):
    s = probe.build_samples(corpus["en"], k=2, seed=0)[0]
    text = probe.format_prompt(s, corpus["en"], "en", localized=False)
    assert text.startswith("I will give you a question and several contexts")
    assert '"Yes, answer is present"\nor "I don\'t know":\nQUESTION: ' in text
    assert "\nCONTEXTS:\n[1] " in text and "\n[2] " in text and text.endswith("\nOUTPUT:")
    fr = probe.format_prompt(s, corpus["fr"], "fr", localized=True)
    assert "Yes, answer is present" in fr and fr.startswith("Je vais")


def test_overlong_groups_are_refused_or_dropped_whole():
    rows = [
        {"sample_id": "s1", "lang": "en"},
        {"sample_id": "s1", "lang": "ar"},
        {"sample_id": "s2", "lang": "en"},
    ]
    with pytest.raises(ValueError, match="max_prompt_tokens=100"):
        probe.enforce_max_length(rows, [50, 150, 50], 100, "refuse")
    kept, report = probe.enforce_max_length(rows, [50, 150, 50], 100, "drop_group")
    assert [r["sample_id"] for r in kept] == ["s2"] and report["dropped_rows"] == 2


def test_too_few_documents_names_the_fix(corpus):
    # 72 topics: a negative sample needs k others, from other domains once its own runs out
    assert probe.build_samples(corpus["en"], k=71, seed=0)
    with pytest.raises(CorpusError, match="corpus: 72 passages.*k=72.*Lower data.k to at most 71"):
        probe.build_samples(corpus["en"], k=72, seed=0)


def _copy_corpus(tmp_path, domains=("finance",), langs=("en", "fr")):
    for d in domains:
        (tmp_path / d).mkdir(parents=True)
        for lang in langs:
            shutil.copy(
                corpus_dir("data/corpus") / d / f"{lang}.jsonl", tmp_path / d / f"{lang}.jsonl"
            )
    return tmp_path


def test_malformed_json_names_file_and_line(tmp_path):
    root = _copy_corpus(tmp_path)
    path = root / "finance" / "fr.jsonl"
    lines = path.read_text().splitlines()
    lines[2] = lines[2][:-5]
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(CorpusError, match=r"fr.jsonl:3: malformed JSON"):
        load_corpus(root, ["en", "fr"])


def test_missing_topic_and_duplicate_ids_are_named(tmp_path):
    root = _copy_corpus(tmp_path)
    path = root / "finance" / "fr.jsonl"
    lines = path.read_text().splitlines()
    path.write_text("\n".join(lines[:-1]) + "\n")
    with pytest.raises(CorpusError, match=r"fin-12.*missing in language 'fr'"):
        load_corpus(root, ["en", "fr"])
    path.write_text("\n".join(lines + [lines[0]]) + "\n")
    with pytest.raises(CorpusError, match="duplicate id 'fin-01.fr'"):
        load_corpus(root, ["en", "fr"])


def test_empty_field_and_bad_gold_letter_are_named(tmp_path):
    root = _copy_corpus(tmp_path)
    path = root / "finance" / "en.jsonl"
    recs = [json.loads(x) for x in path.read_text().splitlines()]
    recs[1]["title"] = " "
    path.write_text("\n".join(json.dumps(r, ensure_ascii=False) for r in recs) + "\n")
    with pytest.raises(CorpusError, match=r"en.jsonl:2 \(topic fin-02\): field 'title' is empty"):
        load_corpus(root, ["en"])
    recs[1]["title"] = "ok"
    recs[1]["mcq"]["answer"] = "E"
    path.write_text("\n".join(json.dumps(r, ensure_ascii=False) for r in recs) + "\n")
    with pytest.raises(CorpusError, match="mcq.answer"):
        load_corpus(root, ["en"])


def test_unknown_language_code(tmp_path):
    with pytest.raises(CorpusError, match="unknown language code"):
        load_corpus("data/corpus", ["en", "xx"])


def test_machine_translated_language_with_fake_translator(corpus):
    mt = translate_corpus(corpus["en"], "th", FakeTranslator())
    rec = mt["fin-01"]
    assert rec.lang == "th" and rec.id == "fin-01.th" and rec.passage.startswith("[th:")
    assert rec.mcq_answer == corpus["en"]["fin-01"].mcq_answer
    again = translate_corpus(corpus["en"], "th", FakeTranslator())
    assert again == mt  # deterministic


def test_preference_rows_plain_and_chat(corpus):
    from transformers import AutoTokenizer  # noqa: F401

    rows = [
        {
            "prompt": "P",
            "label": probe.ANSWER_PRESENT,
            "sample_id": "s",
            "query_id": "q",
            "topic_id": "t",
            "lang": "en",
        }
    ]
    plain = probe.preference_rows(rows)
    assert (
        plain[0]["chosen"] == probe.ANSWER_PRESENT and plain[0]["rejected"] == probe.ANSWER_ABSENT
    )
    assert plain[0]["prompt"] == "P\n" and plain[0]["sample_id"] == "s"

    class ChatTok:
        chat_template = "x"

        def apply_chat_template(self, messages, tokenize, add_generation_prompt):
            return f"<user>{messages[0]['content']}</user><assistant>"

    chat = probe.preference_rows(rows, ChatTok(), "auto")
    assert chat[0]["prompt"] == "<user>P</user><assistant>"


def test_a_bad_topic_id_is_blamed_on_topic_id_not_id(tmp_path):
    """The id check derives its expectation from topic_id; a broken topic_id used to be reported as a
    wrong 'id' (the right field, blamed on the wrong column)."""
    root = _copy_corpus(tmp_path)
    path = root / "finance" / "en.jsonl"
    recs = [json.loads(x) for x in path.read_text().splitlines()]
    recs[2]["topic_id"] = ""
    path.write_text("\n".join(json.dumps(r, ensure_ascii=False) for r in recs) + "\n")
    with pytest.raises(CorpusError, match=r"en.jsonl:3: field 'topic_id' is empty") as exc:
        load_corpus(root, ["en"])
    assert "'id'" not in str(exc.value)


def test_a_truncated_line_points_at_the_broken_value(tmp_path):
    root = _copy_corpus(tmp_path)
    path = root / "finance" / "fr.jsonl"
    lines = path.read_text().splitlines()
    opens = lines[2].index('"passage": "') + len('"passage": ')  # the value's opening quote
    lines[2] = lines[2][: opens + 10]
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(
        CorpusError, match=r"fr.jsonl:3: malformed JSON \(Unterminated string"
    ) as exc:
        load_corpus(root, ["en", "fr"])
    col = int(str(exc.value).rsplit("column ", 1)[1].rstrip(")"))
    assert col - 1 == opens  # where the cut string opens, not past the end of the line


@pytest.mark.parametrize(
    ("edit", "field", "allowed"),
    [
        (lambda r: r.update(pasage=r.pop("passage")), "'pasage'", "title, passage, questions, mcq"),
        (
            lambda r: r["mcq"].update(hint="x"),
            "'mcq.hint'",
            "mcq.question, mcq.options, mcq.answer",
        ),
    ],
)
def test_unknown_fields_are_refused_naming_file_line_and_field(tmp_path, edit, field, allowed):
    root = _copy_corpus(tmp_path, domains=("science",), langs=("en",))
    path = root / "science" / "en.jsonl"
    recs = [json.loads(x) for x in path.read_text().splitlines()]
    edit(recs[3])
    path.write_text("\n".join(json.dumps(r, ensure_ascii=False) for r in recs) + "\n")
    with pytest.raises(CorpusError) as exc:
        load_corpus(root, ["en"])
    msg = str(exc.value)
    assert "science/en.jsonl:4" in msg and f"unknown field(s) {field}" in msg and allowed in msg


def test_schema_names_the_real_corpus_layout():
    schema = (corpus_dir("data/corpus") / "SCHEMA.md").read_text()
    assert "data/corpus/<domain>/<lang>.jsonl" in schema
    assert "`data/corpus/<lang>.jsonl`" not in schema
