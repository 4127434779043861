"""Tests for xlalign.sources on tiny fixtures in each source's real format (fixtures/public/)."""

import json
import shutil
from pathlib import Path

import pytest

from xlalign.config import ALL_LANGS
from xlalign.probe.build import ANSWER_ABSENT, ANSWER_PRESENT
from xlalign.sources import qa, rag
from xlalign.sources.common import (
    SUPPORTED_LANGS,
    LanguageNotAvailableError,
    check_languages,
    unavailable_languages,
)
from xlalign.sources.corpus import CorpusError, TopicRecord
from xlalign.sources.qa import load_medqa, load_mgsm, load_xcsqa
from xlalign.sources.rag import load_belebele, load_nomiracl, load_xquad

FIX = Path(__file__).parent / "fixtures" / "public"


def copy_fixture(name: str, tmp_path: Path) -> Path:
    dst = tmp_path / name
    shutil.copytree(FIX / name, dst)
    return dst


def replace_line(path: Path, lineno: int, text: str) -> None:
    lines = path.read_text(encoding="utf-8").splitlines()
    lines[lineno - 1] = text
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")


def edit_jsonl(path: Path, lineno: int, edit) -> None:
    lines = path.read_text(encoding="utf-8").splitlines()
    row = json.loads(lines[lineno - 1])
    edit(row)
    lines[lineno - 1] = json.dumps(row, ensure_ascii=False)
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")


@pytest.fixture
def no_hub(monkeypatch):
    """Any call to datasets.load_dataset fails the test: these paths must stay local."""
    import datasets

    def refuse(*args, **kwargs):
        raise AssertionError(f"hub called: {args} {kwargs}")

    monkeypatch.setattr(datasets, "load_dataset", refuse)


# ----------------------------------------------------------------------- language table and check


# What each source lacks among this project's languages; the report quotes this table.
LACKS = {
    "xquad": ["fr", "ja", "pt", "hu"],
    "belebele": [],
    "nomiracl": ["pt", "vi", "hu", "ro"],
    "xcsqa": ["th", "hu", "ro"],
    "medqa": ["ar", "es", "fr", "ja", "pt", "th", "vi", "hu", "ro"],
    "mgsm": ["ar", "pt", "vi", "hu", "ro"],
}


@pytest.mark.parametrize("source", sorted(LACKS))
def test_unavailable_languages_among_ours(source):
    assert unavailable_languages(source, ALL_LANGS) == LACKS[source]
    assert set(SUPPORTED_LANGS) == set(LACKS)


def test_check_languages_returns_requested_in_order_without_duplicates():
    assert check_languages("belebele", ["th", "en", "th"]) == ["th", "en"]


def test_check_languages_error_names_source_missing_and_available():
    with pytest.raises(LanguageNotAvailableError) as info:
        check_languages("mgsm", ["en", "pt", "vi"])
    err = info.value
    assert isinstance(err, ValueError)
    assert (err.source, err.missing) == ("mgsm", ["pt", "vi"])
    msg = str(err)
    assert "mgsm" in msg and "pt, vi" in msg and "bn de en es fr ja ru sw te th zh" in msg


def test_check_languages_rejects_unknown_source_empty_list_and_bare_string():
    with pytest.raises(ValueError, match="unknown source 'squad'"):
        check_languages("squad", ["en"])
    with pytest.raises(ValueError, match="no languages"):
        check_languages("xquad", [])
    with pytest.raises(TypeError, match="list of codes"):
        check_languages("xquad", "en")


@pytest.mark.parametrize(
    "call",
    [
        lambda: load_xquad("/nonexistent/xquad", ["en", "fr"]),
        lambda: load_belebele(["en", "xx"], data_dir="/nonexistent"),
        lambda: load_belebele(["en", "xx"]),  # hub path: refused before any download
        lambda: load_nomiracl(["en", "pt"], k=3, seed=0, data_dir="/nonexistent"),
        lambda: load_nomiracl(["en", "pt"], k=3, seed=0),
        lambda: load_xcsqa("/nonexistent/xcsqa", ["en", "th"]),
        lambda: load_medqa("/nonexistent/test.jsonl", "fr"),
        lambda: load_mgsm("/nonexistent/mgsm", ["en", "ro"]),
    ],
    ids=["xquad", "belebele", "belebele-hub", "nomiracl", "nomiracl-hub", "xcsqa", "medqa", "mgsm"],
)
def test_language_check_comes_before_any_file_or_hub_access(call, no_hub):
    with pytest.raises(LanguageNotAvailableError):
        call()


# ------------------------------------------------------------------------------------------ XQuAD


def test_xquad_records_parallel_and_skipped_counted():
    ps = load_xquad(FIX / "xquad", ["es", "zh"])
    assert ps.langs == ["es", "zh"]
    assert {lang: list(recs) for lang, recs in ps.records.items()} == {
        "es": ["xq-0-0", "xq-0-1"],
        "zh": ["xq-0-0", "xq-0-1"],
    }
    # Article 1's only paragraph has one question: skipped, and counted.
    assert ps.skipped == ("xq-1-0",) and ps.n_skipped == 1
    rec = ps.records["zh"]["xq-0-0"]
    assert rec.id == "xq-0-0.zh" and rec.domain == "Harbour_Lights"
    assert rec.questions == ("谁安装了港口灯？", "1902年以前这些灯燃烧什么？")
    assert rec.answers == ("镇议会", "鲸油")
    assert rec.passage.startswith("港口灯由镇议会")


def test_xquad_has_no_mcq_so_no_topic_record():
    ps = load_xquad(FIX / "xquad", ["en"])
    rec = ps.records["en"]["xq-0-1"]
    assert not rec.has_mcq and rec.answers == ("in a cottage on the pier", "1958")
    with pytest.raises(CorpusError, match="no multiple-choice question"):
        rec.to_topic_record()
    with pytest.raises(CorpusError, match="no passage has a multiple-choice question"):
        ps.topic_records()


def test_xquad_accepts_a_language_file_for_its_folder():
    ps = load_xquad(FIX / "xquad" / "xquad.es.json", ["es"])
    assert list(ps.records["es"]) == ["xq-0-0", "xq-0-1"]


def test_xquad_malformed_json_names_file_and_line(tmp_path):
    root = copy_fixture("xquad", tmp_path)
    path = root / "xquad.es.json"
    path.write_text('{"data": [\n  {"title": "x",\n   "paragraphs": [}\n]}', encoding="utf-8")
    with pytest.raises(CorpusError, match=r"xquad\.es\.json:3: malformed JSON"):
        load_xquad(root, ["es"])


def test_xquad_missing_field_names_file_article_paragraph_and_field(tmp_path):
    root = copy_fixture("xquad", tmp_path)
    path = root / "xquad.zh.json"
    data = json.loads(path.read_text(encoding="utf-8"))
    del data["data"][0]["paragraphs"][1]["context"]
    path.write_text(json.dumps(data, ensure_ascii=False), encoding="utf-8")
    with pytest.raises(
        CorpusError, match=r"xquad\.zh\.json \(article 0, paragraph 1\): missing field 'context'"
    ):
        load_xquad(root, ["zh"])


def test_xquad_misaligned_files_are_rejected(tmp_path):
    root = copy_fixture("xquad", tmp_path)
    path = root / "xquad.es.json"
    data = json.loads(path.read_text(encoding="utf-8"))
    data["data"][0]["paragraphs"].reverse()
    path.write_text(json.dumps(data, ensure_ascii=False), encoding="utf-8")
    with pytest.raises(CorpusError, match="question ids .* differ from English"):
        load_xquad(root, ["es"])


def test_xquad_missing_english_file_is_a_clear_error(tmp_path):
    root = copy_fixture("xquad", tmp_path)
    (root / "xquad.en.json").unlink()
    with pytest.raises(CorpusError, match=r"xquad\.en\.json: missing"):
        load_xquad(root, ["es"])


# --------------------------------------------------------------------------------------- Belebele


def test_belebele_local_records_parallel_with_stable_ids(no_hub):
    ps = load_belebele(["en", "es", "ar"], data_dir=FIX / "belebele")
    for lang in ("en", "es", "ar"):
        assert list(ps.records[lang]) == ["bb-0000", "bb-0001"]
    # The third passage has a single question: skipped and counted.
    assert ps.skipped == ("bb-0002",) and ps.n_skipped == 1
    es = ps.records["es"]["bb-0000"]  # Spanish rows are in another order than English
    assert es.questions == (
        "¿Cuántos visitantes vinieron el sábado?",
        "¿Qué alargaron los organizadores?",
    )
    assert es.domain == "en.wikinews.org" and es.title == "Harbour festival draws record crowds"
    assert es.passage.startswith("El festival del puerto")
    assert es.answers == ("Cuarenta mil", "Los fuegos artificiales")


def test_belebele_gold_letters_from_correct_answer_num(no_hub):
    ps = load_belebele(["en", "ar"], data_dir=FIX / "belebele")
    # correct_answer_num "3" -> C, "2" -> B, "1" -> A, "4" -> D; the same letter in every language.
    for lang in ("en", "ar"):
        assert [i.answer for i in ps.mcq_items[lang]] == ["C", "B", "A", "D", "B"]
    en = ps.records["en"]["bb-0000"]
    assert (en.mcq_answer, en.mcq_options[2]) == ("C", "Forty thousand")


def test_belebele_mcq_items_cover_every_question_with_parallel_ids(no_hub):
    ps = load_belebele(["en", "es"], data_dir=FIX / "belebele")
    ids = {lang: sorted(i.qid for i in items) for lang, items in ps.mcq_items.items()}
    assert (
        ids["en"]
        == ids["es"]
        == [
            "bb-0000.q1",
            "bb-0000.q2",
            "bb-0001.q1",
            "bb-0001.q2",
            "bb-0002.q1",
        ]
    )
    item = next(i for i in ps.mcq_items["es"] if i.qid == "bb-0001.q2")
    assert len(item.options) == 4 and item.answer == "D" and item.answer_text == "Desayuno"
    assert item.context.startswith("Los refugios") and item.source == "belebele"


def test_belebele_converts_to_validated_topic_records(no_hub):
    ps = load_belebele(["es"], data_dir=FIX / "belebele")
    topics = ps.topic_records()
    rec = topics["es"]["bb-0001"]
    assert isinstance(rec, TopicRecord)
    assert rec.id == "bb-0001.es" and rec.mcq_answer == "A" and len(rec.mcq_options) == 4
    assert rec.to_dict()["questions"] == list(ps.records["es"]["bb-0001"].questions)


def test_belebele_data_dir_may_be_a_copy_of_the_hub_repository(tmp_path, no_hub):
    shutil.copytree(FIX / "belebele", tmp_path / "data")
    ps = load_belebele(["es"], data_dir=tmp_path)
    assert list(ps.records["es"]) == ["bb-0000", "bb-0001"]


def test_belebele_missing_local_file_names_path_and_config(tmp_path, no_hub):
    root = copy_fixture("belebele", tmp_path)
    with pytest.raises(
        CorpusError, match=r"tha_Thai\.jsonl: missing; expected the Belebele tha_Thai"
    ):
        load_belebele(["th"], data_dir=root)


def test_belebele_bad_gold_number_names_file_line_and_field(tmp_path):
    root = copy_fixture("belebele", tmp_path)
    edit_jsonl(root / "spa_Latn.jsonl", 2, lambda r: r.update(correct_answer_num="5"))
    with pytest.raises(CorpusError, match=r"spa_Latn\.jsonl:2: field 'correct_answer_num'"):
        load_belebele(["es"], data_dir=root)


def test_belebele_malformed_and_incomplete_rows(tmp_path):
    root = copy_fixture("belebele", tmp_path)
    replace_line(root / "arb_Arab.jsonl", 3, '{"link": "https://x", ')
    with pytest.raises(CorpusError, match=r"arb_Arab\.jsonl:3: malformed JSON"):
        load_belebele(["ar"], data_dir=root)
    root = copy_fixture("belebele", tmp_path / "again")
    edit_jsonl(root / "arb_Arab.jsonl", 4, lambda r: r.pop("mc_answer3"))
    with pytest.raises(CorpusError, match=r"arb_Arab\.jsonl:4: missing field 'mc_answer3'"):
        load_belebele(["ar"], data_dir=root)


def test_belebele_rows_missing_in_a_language_break_parallelism(tmp_path):
    root = copy_fixture("belebele", tmp_path)
    lines = (root / "spa_Latn.jsonl").read_text(encoding="utf-8").splitlines()
    (root / "spa_Latn.jsonl").write_text("\n".join(lines[:-1]) + "\n", encoding="utf-8")
    with pytest.raises(CorpusError, match="spa_Latn: rows .* are missing"):
        load_belebele(["es"], data_dir=root)


def test_belebele_hub_path_uses_flores_configs(monkeypatch):
    import datasets

    calls = []

    def fake_load_dataset(path, name, split, revision=None):
        calls.append((path, name, split, revision))
        rows = (FIX / "belebele" / f"{name}.jsonl").read_text(encoding="utf-8").splitlines()
        return [json.loads(r) for r in rows]

    monkeypatch.setattr(datasets, "load_dataset", fake_load_dataset)
    ps = load_belebele(["ar"], revision="abc123")
    assert calls == [
        ("facebook/belebele", "eng_Latn", "test", "abc123"),
        ("facebook/belebele", "arb_Arab", "test", "abc123"),
    ]
    assert list(ps.records["ar"]) == ["bb-0000", "bb-0001"]


# --------------------------------------------------------------------------------------- NoMIRACL


def test_nomiracl_samples_counts_labels_and_skips(no_hub):
    ns = load_nomiracl(["en", "es"], k=3, seed=7, data_dir=FIX / "nomiracl")
    en = ns.samples["en"]
    # en: query 1077 has 1 negative (< k-1) and 2002 has 2 negatives (< k): both skipped.
    assert [s.query_id for s in en] == ["1042", "2001"] and ns.skipped == {"en": 2, "es": 0}
    assert [s.label for s in en] == [ANSWER_PRESENT, ANSWER_ABSENT]
    assert [s.relevant_count for s in en] == [1, 0]
    assert all(len(s.passages) == 3 for lang in ns.samples for s in ns.samples[lang])
    positives = {"2231#0", "2231#3"}
    assert len(positives & set(en[0].docids)) == 1
    assert not positives & set(en[1].docids)
    assert len(ns.samples["es"]) == 2 and ns.samples["es"][0].lang == "es"
    assert all(isinstance(p, tuple) and len(p) == 2 for p in en[0].passages)


def test_nomiracl_selection_is_seeded(no_hub):
    def docids(seed):
        ns = load_nomiracl(["es"], k=3, seed=seed, data_dir=FIX / "nomiracl")
        return [s.docids for s in ns.samples["es"]]

    assert docids(1) == docids(1)
    assert len({tuple(docids(seed)) for seed in range(10)}) > 1


def test_nomiracl_k_one_keeps_only_the_positive(no_hub):
    ns = load_nomiracl(["en"], k=1, seed=0, data_dir=FIX / "nomiracl")
    rel = [s for s in ns.samples["en"] if s.relevant_count]
    assert [s.query_id for s in rel] == ["1042", "1077"]
    assert rel[1].docids == ("3120#0",)
    with pytest.raises(ValueError, match="k must be a positive integer"):
        load_nomiracl(["en"], k=0, seed=0, data_dir=FIX / "nomiracl")


def test_nomiracl_missing_local_file_is_a_clear_error(tmp_path, no_hub):
    with pytest.raises(CorpusError, match=r"thai/test\.relevant\.jsonl: missing; expected"):
        load_nomiracl(["th"], k=3, seed=0, data_dir=copy_fixture("nomiracl", tmp_path))


def test_nomiracl_bad_rows_name_file_and_line(tmp_path):
    root = copy_fixture("nomiracl", tmp_path)
    edit_jsonl(
        root / "english" / "test.relevant.jsonl", 2, lambda r: r.update(positive_passages=[])
    )
    with pytest.raises(CorpusError, match=r"test\.relevant\.jsonl:2: .*no positive passage"):
        load_nomiracl(["en"], k=2, seed=0, data_dir=root)
    root = copy_fixture("nomiracl", tmp_path / "again")
    edit_jsonl(
        root / "spanish" / "test.non_relevant.jsonl",
        1,
        lambda r: r["negative_passages"][1].pop("text"),
    )
    with pytest.raises(
        CorpusError,
        match=r"test\.non_relevant\.jsonl:1 negative_passages\[1\]: missing field 'text'",
    ):
        load_nomiracl(["es"], k=2, seed=0, data_dir=root)


def test_nomiracl_hub_path_uses_language_configs_and_subset_splits(monkeypatch):
    import datasets

    calls = []

    def fake_load_dataset(path, name, split, revision=None):
        calls.append((path, name, split))
        file = FIX / "nomiracl" / name / f"{split}.jsonl"
        return [json.loads(r) for r in file.read_text(encoding="utf-8").splitlines()]

    monkeypatch.setattr(datasets, "load_dataset", fake_load_dataset)
    ns = load_nomiracl(["es"], k=3, seed=0)
    assert calls == [
        ("miracl/nomiracl", "spanish", "test.relevant"),
        ("miracl/nomiracl", "spanish", "test.non_relevant"),
    ]
    assert len(ns.samples["es"]) == 2


def test_nomiracl_hub_script_refusal_says_what_to_do(monkeypatch):
    import datasets

    def refuse(*args, **kwargs):
        raise RuntimeError("Dataset scripts are no longer supported, but found nomiracl.py")

    monkeypatch.setattr(datasets, "load_dataset", refuse)
    with pytest.raises(RuntimeError, match="Pass revision=.*or export the rows and pass data_dir"):
        load_nomiracl(["en"], k=3, seed=0)


# ----------------------------------------------------------------------------------------- X-CSQA


def test_xcsqa_items_parallel_with_gold_letters():
    items = load_xcsqa(FIX / "xcsqa", ["en", "zh", "ja"])
    assert {lang: len(v) for lang, v in items.items()} == {"en": 3, "zh": 3, "ja": 3}
    for lang in items:
        assert [i.qid for i in items[lang]] == [i.qid for i in items["en"]]
        assert [i.answer for i in items[lang]] == ["B", "A", "E"]
        assert all(len(i.options) == 5 and i.context is None for i in items[lang])
    ja = items["ja"][2]  # read from the release's "jap" folder
    assert ja.lang == "ja" and ja.answer_text == "魚" and ja.source == "xcsqa"


def test_xcsqa_malformed_line_names_file_and_line(tmp_path):
    root = copy_fixture("xcsqa", tmp_path)
    replace_line(root / "zh" / "dev.jsonl", 2, '{"id": "b2e4d6f8a0c21357", "question": ')
    with pytest.raises(CorpusError, match=r"zh/dev\.jsonl:2: malformed JSON"):
        load_xcsqa(root, ["zh"])


def test_xcsqa_missing_answer_key_and_bad_labels(tmp_path):
    root = copy_fixture("xcsqa", tmp_path)
    edit_jsonl(root / "en" / "dev.jsonl", 3, lambda r: r.pop("answerKey"))
    with pytest.raises(CorpusError, match=r"en/dev\.jsonl:3: missing field 'answerKey'"):
        load_xcsqa(root, ["en"])
    root = copy_fixture("xcsqa", tmp_path / "again")
    edit_jsonl(root / "en" / "dev.jsonl", 1, lambda r: r["question"]["choices"].reverse())
    with pytest.raises(CorpusError, match=r"en/dev\.jsonl:1: choice labels"):
        load_xcsqa(root, ["en"])


def test_xcsqa_ids_must_match_across_languages(tmp_path):
    root = copy_fixture("xcsqa", tmp_path)
    edit_jsonl(root / "jap" / "dev.jsonl", 1, lambda r: r.update(id="ffffffffffffffff"))
    with pytest.raises(CorpusError, match="ids differ between en and ja"):
        load_xcsqa(root, ["en", "ja"])


def test_xcsqa_missing_language_folder(tmp_path):
    root = copy_fixture("xcsqa", tmp_path)
    with pytest.raises(CorpusError, match=r"fr/dev\.jsonl: missing"):
        load_xcsqa(root, ["en", "fr"])


# ----------------------------------------------------------------------------------------- MedQA


def test_medqa_us_five_and_four_options():
    five = load_medqa(FIX / "medqa" / "US" / "test.jsonl", "en")
    assert [i.qid for i in five] == ["medqa-us-00000", "medqa-us-00001"]
    assert [i.answer for i in five] == ["B", "D"] and all(len(i.options) == 5 for i in five)
    assert five[0].answer_text == "Thyroid gland" and five[0].lang == "en"
    four = load_medqa(FIX / "medqa" / "US" / "4_options" / "phrases_no_exclude_test.jsonl", "en")
    assert [len(i.options) for i in four] == [4, 4] and four[1].answer_text == "Vitamin A"


def test_medqa_mainland_chinese():
    items = load_medqa(FIX / "medqa" / "Mainland" / "test.jsonl", "zh")
    assert [(i.qid, i.answer, i.answer_text) for i in items] == [
        ("medqa-mainland-00000", "B", "胃溃疡"),
        ("medqa-mainland-00001", "C", "夜盲症"),
    ]


def test_medqa_bad_rows_name_file_line_and_field(tmp_path):
    root = copy_fixture("medqa", tmp_path)
    path = root / "US" / "test.jsonl"
    edit_jsonl(path, 2, lambda r: r.update(answer_idx="F"))
    with pytest.raises(CorpusError, match=r"test\.jsonl:2: field 'answer_idx' 'F'"):
        load_medqa(path, "en")
    edit_jsonl(path, 2, lambda r: r.pop("options"))
    with pytest.raises(CorpusError, match=r"test\.jsonl:2: missing field 'options'"):
        load_medqa(path, "en")
    with pytest.raises(CorpusError, match=r"nope\.jsonl: missing"):
        load_medqa(root / "nope.jsonl", "en")


# ------------------------------------------------------------------------------------------- MGSM


def test_mgsm_rows_parallel_by_index():
    items = load_mgsm(FIX / "mgsm", ["en", "fr", "ja"])
    assert {lang: [i.qid for i in v] for lang, v in items.items()} == {
        lang: ["mgsm-000", "mgsm-001", "mgsm-002"] for lang in ("en", "fr", "ja")
    }
    assert [i.answer_number for i in items["ja"]] == [18.0, 3.0, 700.0]
    assert items["fr"][0].question.startswith("Mia a 12 pommes")


def test_mgsm_wrong_column_count_names_file_and_line(tmp_path):
    root = copy_fixture("mgsm", tmp_path)
    replace_line(root / "mgsm_fr.tsv", 2, "Une question sans réponse")
    with pytest.raises(CorpusError, match=r"mgsm_fr\.tsv:2: 1 tab-separated columns, expected 2"):
        load_mgsm(root, ["fr"])


def test_mgsm_non_numeric_answer_names_file_and_line(tmp_path):
    root = copy_fixture("mgsm", tmp_path)
    replace_line(root / "mgsm_ja.tsv", 3, "問題\t七百")
    with pytest.raises(CorpusError, match=r"mgsm_ja\.tsv:3: answer '七百' is not a number"):
        load_mgsm(root, ["ja"])


def test_mgsm_thousands_separator_and_parallel_checks(tmp_path):
    root = copy_fixture("mgsm", tmp_path)
    replace_line(root / "mgsm_en.tsv", 3, "How many grams are in a kilogram times seven?\t7,000")
    replace_line(root / "mgsm_fr.tsv", 3, "Combien de grammes dans sept kilogrammes ?\t7000")
    items = load_mgsm(root, ["en", "fr"])
    assert items["en"][2].answer_number == items["fr"][2].answer_number == 7000.0
    with pytest.raises(CorpusError, match=r"mgsm_ja\.tsv:3: answer 700 differs from 7000"):
        load_mgsm(root, ["en", "ja"])
    lines = (root / "mgsm_ja.tsv").read_text(encoding="utf-8").splitlines()
    (root / "mgsm_ja.tsv").write_text("\n".join(lines[:2]) + "\n", encoding="utf-8")
    with pytest.raises(CorpusError, match=r"mgsm_ja\.tsv: 2 rows but mgsm_en\.tsv has 3"):
        load_mgsm(root, ["en", "ja"])


def test_datasets_is_imported_only_by_the_hub_path():
    # Local-file loaders never import datasets; only the hub paths do (lazily).
    assert "datasets" not in rag.__dict__ and "datasets" not in qa.__dict__
