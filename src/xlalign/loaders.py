"""Public corpora (XQuAD, Belebele, NoMIRACL, X-CSQA, MedQA, MGSM) loaded into the project's shapes.

Each loader checks its languages before reading anything; bad input errors name file, line, field.
"""

from __future__ import annotations

import hashlib
import json
import random
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import unquote, urlparse

from xlalign.corpus import CorpusError, TopicRecord, parse_record
from xlalign.probe import ANSWER_ABSENT, ANSWER_PRESENT

LETTERS = "ABCDE"

# ISO 639-1 code -> the name each source uses for it (file stem, folder or hub config).
# Belebele configs are FLORES-200 codes; it has 122, of which only those this project may ask for
# are mapped (add a code here to load another).
BELEBELE_CONFIGS = {
    "en": "eng_Latn",
    "ar": "arb_Arab",
    "es": "spa_Latn",
    "fr": "fra_Latn",
    "ja": "jpn_Jpan",
    "pt": "por_Latn",
    "zh": "zho_Hans",
    "th": "tha_Thai",
    "vi": "vie_Latn",
    "hu": "hun_Latn",
    "ro": "ron_Latn",
    "de": "deu_Latn",
    "it": "ita_Latn",
    "ru": "rus_Cyrl",
    "ko": "kor_Hang",
    "hi": "hin_Deva",
    "sw": "swh_Latn",
    "bn": "ben_Beng",
    "te": "tel_Telu",
}
# NoMIRACL covers MIRACL's 18 languages; its hub configs are lower-case English language names.
# It has no Portuguese, Vietnamese, Hungarian or Romanian.
NOMIRACL_CONFIGS = {
    "ar": "arabic",
    "bn": "bengali",
    "de": "german",
    "en": "english",
    "es": "spanish",
    "fa": "persian",
    "fi": "finnish",
    "fr": "french",
    "hi": "hindi",
    "id": "indonesian",
    "ja": "japanese",
    "ko": "korean",
    "ru": "russian",
    "sw": "swahili",
    "te": "telugu",
    "th": "thai",
    "yo": "yoruba",
    "zh": "chinese",
}
# X-CSQA folders are ISO codes except Japanese, which the release calls "jap".
XCSQA_DIRS = {
    **{lang: lang for lang in ("en", "zh", "de", "es", "fr", "it", "nl", "pl", "pt", "ru")},
    **{lang: lang for lang in ("ar", "vi", "hi", "sw", "ur")},
    "ja": "jap",
}
# MedQA question banks: US (English, USMLE) and Mainland China (simplified Chinese, MCMLE).
MEDQA_REGIONS = {"en": "US", "zh": "Mainland"}

SUPPORTED_LANGS: dict[str, frozenset[str]] = {
    "xquad": frozenset({"ar", "de", "el", "en", "es", "hi", "ro", "ru", "th", "tr", "vi", "zh"}),
    "belebele": frozenset(BELEBELE_CONFIGS),
    "nomiracl": frozenset(NOMIRACL_CONFIGS),
    "xcsqa": frozenset(XCSQA_DIRS),
    "medqa": frozenset(MEDQA_REGIONS),
    "mgsm": frozenset({"en", "es", "fr", "de", "ru", "zh", "ja", "th", "sw", "bn", "te"}),
}


class LanguageNotAvailableError(ValueError):
    """A source lacks some requested languages; raised before any file is read."""

    def __init__(self, source: str, missing: list[str], available: Iterable[str]):
        self.source = source
        self.missing = list(missing)
        self.available = sorted(available)
        super().__init__(
            f"{source} has no data for language(s) {', '.join(self.missing)}; "
            f"it has: {' '.join(self.available)}"
        )

    def __reduce__(self):  # the custom __init__ needs its own arguments to unpickle
        return type(self), (self.source, self.missing, self.available)


def unavailable_languages(source: str, requested: Iterable[str]) -> list[str]:
    """The requested languages ``source`` lacks, in order (no error; for up-front reports)."""
    if source not in SUPPORTED_LANGS:
        raise ValueError(f"unknown source {source!r}; known: {', '.join(sorted(SUPPORTED_LANGS))}")
    return [lang for lang in dict.fromkeys(requested) if lang not in SUPPORTED_LANGS[source]]


def check_languages(source: str, requested: Iterable[str]) -> list[str]:
    """The requested languages, de-duplicated; LanguageNotAvailableError if the source lacks any."""
    if isinstance(requested, str):
        raise TypeError(f"languages must be a list of codes, not the string {requested!r}")
    langs = list(dict.fromkeys(requested))
    if not langs:
        raise ValueError(f"{source}: no languages requested")
    missing = unavailable_languages(source, langs)
    if missing:
        raise LanguageNotAvailableError(source, missing, SUPPORTED_LANGS[source])
    return langs


# ----------------------------------------------------------------------------------------- shapes


@dataclass(frozen=True)
class PassageRecord:
    """One passage of a parallel source in one language, shaped like a corpus topic.

    ``mcq_*`` are None where the source has no options (XQuAD); ``answers`` holds the gold answer
    text of each of the two questions (XQuAD: first annotated answer; Belebele: the gold option).
    Only records with an MCQ convert to ``TopicRecord``.
    """

    id: str
    topic_id: str
    domain: str
    lang: str
    title: str
    passage: str
    questions: tuple[str, str]
    answers: tuple[str, str]
    source: str
    mcq_question: str | None = None
    mcq_options: tuple[str, ...] | None = None
    mcq_answer: str | None = None

    @property
    def has_mcq(self) -> bool:
        return self.mcq_question is not None

    def to_topic_record(self) -> TopicRecord:
        """The record as a corpus ``TopicRecord``, validated by ``corpus.parse_record``."""
        if not self.has_mcq:
            raise CorpusError(
                f"{self.source} {self.id}: no multiple-choice question, so no TopicRecord "
                "(use the PassageRecord, whose `answers` carry the gold answer text)"
            )
        raw = {
            "id": self.id,
            "topic_id": self.topic_id,
            "domain": self.domain,
            "lang": self.lang,
            "title": self.title,
            "passage": self.passage,
            "questions": list(self.questions),
            "mcq": {
                "question": self.mcq_question,
                "options": list(self.mcq_options or ()),
                "answer": self.mcq_answer,
            },
        }
        return parse_record(raw, f"{self.source} {self.id}", self.lang)


@dataclass(frozen=True)
class MCQItem:
    """A multiple-choice item for CALM: ``options`` in letter order, ``answer`` the gold letter."""

    qid: str
    lang: str
    question: str
    options: list[str]
    answer: str
    context: str | None
    source: str

    @property
    def answer_text(self) -> str:
        return self.options[LETTERS.index(self.answer)]


@dataclass
class PassageSet:
    """Parallel passages: ``records[lang][topic_id]``, the same topic ids in every language.

    ``skipped`` lists topics dropped because some language had fewer than two questions for them.
    ``mcq_items`` (Belebele only) holds every question as an MCQItem, skipped passages included.
    """

    source: str
    langs: list[str]
    records: dict[str, dict[str, PassageRecord]]
    skipped: tuple[str, ...] = ()
    mcq_items: dict[str, list[MCQItem]] = field(default_factory=dict)

    @property
    def n_skipped(self) -> int:
        return len(self.skipped)

    def topic_records(self) -> dict[str, dict[str, TopicRecord]]:
        """``{lang: {topic_id: TopicRecord}}``; only sources with options (Belebele) have these."""
        out = {
            lang: {tid: r.to_topic_record() for tid, r in recs.items() if r.has_mcq}
            for lang, recs in self.records.items()
        }
        if not any(out.values()):
            raise CorpusError(f"{self.source}: no passage has a multiple-choice question")
        return out


@dataclass(frozen=True)
class NoMiraclSample:
    """A probe sample: a query, k (title, text) passages; ``relevant_count`` of them answer it."""

    query_id: str
    lang: str
    query: str
    passages: list[tuple[str, str]]
    label: str
    relevant_count: int
    docids: tuple[str, ...] = ()


@dataclass
class NoMiraclSet:
    """``samples[lang]``: relevant-subset samples first, then non-relevant, in file order.

    ``skipped[lang]`` counts queries left out for having too few passages to fill k.
    """

    k: int
    seed: int
    samples: dict[str, list[NoMiraclSample]]
    skipped: dict[str, int]


@dataclass(frozen=True)
class MathItem:
    """An MGSM problem; ``qid`` is the row index, shared by every language."""

    qid: str
    lang: str
    question: str
    answer_number: float


# ---------------------------------------------------------------------------------------- helpers


def _nonempty(value, where: str, name: str) -> str:
    if not isinstance(value, str) or not value.strip():
        raise CorpusError(f"{where}: field {name!r} is missing, empty or not a string")
    return value


def _get(raw: dict, name: str, where: str):
    if not isinstance(raw, dict) or name not in raw:
        raise CorpusError(f"{where}: missing field {name!r}")
    return raw[name]


def _require_file(path: Path, what: str) -> Path:
    if not path.is_file():
        raise CorpusError(f"{path}: missing; expected {what}")
    return path


def _read_jsonl(path: Path) -> Iterator[tuple[str, dict]]:
    """``(where, object)`` per non-blank line, where = ``<path>:<line>``."""
    with path.open(encoding="utf-8") as fh:
        for lineno, line in enumerate(fh, 1):
            if not line.strip():
                continue
            where = f"{path}:{lineno}"
            try:
                raw = json.loads(line)
            except json.JSONDecodeError as exc:
                raise CorpusError(
                    f"{where}: malformed JSON ({exc.msg} at column {exc.colno})"
                ) from exc
            if not isinstance(raw, dict):
                raise CorpusError(f"{where}: each line must be a JSON object")
            yield where, raw


def _read_json(path: Path) -> dict:
    try:
        with path.open(encoding="utf-8") as fh:
            raw = json.load(fh)
    except json.JSONDecodeError as exc:
        raise CorpusError(
            f"{path}:{exc.lineno}: malformed JSON ({exc.msg} at column {exc.colno})"
        ) from exc
    if not isinstance(raw, dict):
        raise CorpusError(f"{path}: the top level must be a JSON object")
    return raw


def _hub_rows(source: str, config: str, split: str, revision: str | None) -> list[tuple[str, dict]]:
    """Rows of one hub config and split via ``datasets.load_dataset``, each with its location."""
    import datasets  # imported here: slow to import, and only the hub path needs it

    try:
        ds = datasets.load_dataset(source, config, split=split, revision=revision)
    except RuntimeError as exc:
        # datasets >= 4 refuses repositories whose loader is a Python script (NoMIRACL's main
        # revision is one); say what to do instead of surfacing the bare refusal.
        if "Dataset scripts are no longer supported" in str(exc):
            raise RuntimeError(
                f"{source}: the hub revision {revision or 'main'!r} loads through a dataset "
                "script, which this `datasets` version refuses. Pass revision= a commit or "
                "branch with data files (e.g. 'refs/convert/parquet' where the hub has one), "
                "or export the rows and pass data_dir="
            ) from exc
        raise
    label = f"{source} (config {config}, split {split})"
    return [(f"{label} row {i}", dict(row)) for i, row in enumerate(ds)]


# ------------------------------------------------------------------------------------------ XQuAD


def _xquad_dir(path_or_dir: str | Path) -> Path:
    p = Path(path_or_dir)
    # A path to one language file stands for its folder: the loader needs every language (and en).
    return p.parent if p.is_file() else p


def load_xquad(path_or_dir: str | Path, langs: list[str]) -> PassageSet:
    """XQuAD (``xquad.<lang>.json``, SQuAD v1.1 layout) as parallel passages.

    Paragraph i of article j is the same passage in every language, so its topic id is
    ``xq-<j>-<i>``; its domain is the English article title, so ``xquad.en.json`` is always read.
    XQuAD has no options: records carry the two questions' gold answer texts and no MCQ.
    Paragraphs with fewer than two questions in English or any requested language are skipped
    and listed in ``skipped``.
    """
    langs = check_languages("xquad", langs)
    root = _xquad_dir(path_or_dir)
    articles: dict[str, list] = {}
    files: dict[str, Path] = {}
    for lang in dict.fromkeys(["en", *langs]):
        path = _require_file(root / f"xquad.{lang}.json", f"XQuAD file for {lang!r}")
        data = _get(_read_json(path), "data", str(path))
        if not isinstance(data, list):
            raise CorpusError(f"{path}: field 'data' must be a list of articles")
        articles[lang], files[lang] = data, path

    ref = articles["en"]
    parsed: dict[str, dict[str, tuple]] = {lang: {} for lang in articles}
    short: set[str] = set()
    for lang, data in articles.items():
        if len(data) != len(ref):
            raise CorpusError(
                f"{files[lang]}: {len(data)} articles but xquad.en.json has {len(ref)}; "
                "XQuAD files must be parallel"
            )
        for j, article in enumerate(data):
            where_a = f"{files[lang]} (article {j})"
            paragraphs = _get(article, "paragraphs", where_a)
            if not isinstance(paragraphs, list):
                raise CorpusError(f"{where_a}: field 'paragraphs' must be a list")
            if len(paragraphs) != len(ref[j]["paragraphs"]):  # English was checked first
                raise CorpusError(f"{where_a}: paragraph count differs from xquad.en.json")
            title = _nonempty(_get(article, "title", where_a), where_a, "title")
            for i, para in enumerate(paragraphs):
                where = f"{files[lang]} (article {j}, paragraph {i})"
                tid = f"xq-{j}-{i}"
                context = _nonempty(_get(para, "context", where), where, "context")
                qas = _get(para, "qas", where)
                if not isinstance(qas, list):
                    raise CorpusError(f"{where}: field 'qas' must be a list")
                if len(qas) < 2:
                    short.add(tid)
                    continue
                qs, ans, ids = [], [], []
                for n, qa in enumerate(qas[:2]):
                    w = f"{where} qas[{n}]"
                    qs.append(_nonempty(_get(qa, "question", w), w, "question"))
                    answers = _get(qa, "answers", w)
                    if not isinstance(answers, list) or not answers:
                        raise CorpusError(f"{w}: field 'answers' must be a non-empty list")
                    ans.append(_nonempty(_get(answers[0], "text", w), w, "answers[0].text"))
                    ids.append(_get(qa, "id", w))
                parsed[lang][tid] = (title, context, tuple(qs), tuple(ans), tuple(ids), where)

    out: dict[str, dict[str, PassageRecord]] = {lang: {} for lang in langs}
    for tid, (en_title, *_rest, en_ids, _w) in parsed["en"].items():
        if tid in short:
            continue
        for lang in langs:
            title, context, qs, ans, ids, where = parsed[lang][tid]
            # Same question ids as English = the paragraphs really are aligned.
            if ids != en_ids:
                raise CorpusError(f"{where}: question ids {ids} differ from English {en_ids}")
            out[lang][tid] = PassageRecord(
                id=f"{tid}.{lang}",
                topic_id=tid,
                domain=en_title,
                lang=lang,
                title=title,
                passage=context,
                questions=qs,
                answers=ans,
                source="xquad",
            )
    return PassageSet("xquad", langs, out, skipped=tuple(sorted(short, key=_topic_sort_key)))


def _topic_sort_key(tid: str) -> tuple:
    return tuple(int(p) if p.isdigit() else p for p in re.split(r"[-.]", tid))


# --------------------------------------------------------------------------------------- Belebele


def _belebele_rows(
    config: str, source: str, split: str, data_dir: str | Path | None, revision: str | None
) -> list[tuple[str, dict]]:
    if data_dir is None:
        return _hub_rows(source, config, split, revision)
    root = Path(data_dir)
    # A copy of the hub repository keeps the files under data/; a flat folder of them works too.
    candidates = [root / f"{config}.jsonl", root / "data" / f"{config}.jsonl"]
    for path in candidates:
        if path.is_file():
            return list(_read_jsonl(path))
    raise CorpusError(
        f"{candidates[0]}: missing; expected the Belebele {config} rows "
        f"(also looked for {candidates[1]})"
    )


def _belebele_title(link: str) -> str:
    # Belebele has no titles; FLORES links are wiki pages, whose page name is the article title.
    path = unquote(urlparse(link).path)
    name = path.split("/wiki/", 1)[1] if "/wiki/" in path else path.rstrip("/").rsplit("/", 1)[-1]
    return name.replace("_", " ").strip() or link


def _belebele_domain(link: str) -> str:
    return urlparse(link).netloc or link


def _belebele_gold(raw: dict, where: str) -> str:
    value = _get(raw, "correct_answer_num", where)
    # The hub files store the number as a string ("3"); accept an int too.
    text = str(value).strip()
    if text not in {"1", "2", "3", "4"}:
        raise CorpusError(f"{where}: field 'correct_answer_num' is {value!r}, expected 1-4")
    return LETTERS[int(text) - 1]


def load_belebele(
    langs: list[str],
    source: str = "facebook/belebele",
    split: str = "test",
    data_dir: str | Path | None = None,
    revision: str | None = None,
) -> PassageSet:
    """Belebele passages (about two questions each) as parallel records, plus every question as MCQ.

    Without ``data_dir`` the rows come from the hub (``load_dataset(source, <FLORES code>)``);
    with it, from ``<data_dir>/<FLORES code>.jsonl`` (or ``<data_dir>/data/...``, the hub layout).
    Rows are parallel by (link, question_number); the English config groups them into passages by
    (link, flores_passage), in file order, giving topic ids ``bb-0000``... in every language.
    A record's MCQ is its first question; ``domain`` is the source site of the link, ``title``
    the linked page name (Belebele has no titles).
    """
    langs = check_languages("belebele", langs)
    rows = {
        lang: _belebele_rows(BELEBELE_CONFIGS[lang], source, split, data_dir, revision)
        for lang in dict.fromkeys(["en", *langs])
    }

    topic_of: dict[tuple[str, str], str] = {}
    passage_key_to_topic: dict[tuple[str, str], str] = {}
    for where, raw in rows["en"]:
        link = _nonempty(_get(raw, "link", where), where, "link")
        passage = _nonempty(_get(raw, "flores_passage", where), where, "flores_passage")
        tid = passage_key_to_topic.setdefault(
            (link, passage), f"bb-{len(passage_key_to_topic):04d}"
        )
        topic_of[(link, str(_get(raw, "question_number", where)))] = tid

    per_lang: dict[str, dict[str, list[tuple[int, MCQItem, str, str]]]] = {}
    mcq_items: dict[str, list[MCQItem]] = {}
    for lang in langs:
        config = BELEBELE_CONFIGS[lang]
        grouped: dict[str, list] = {}
        seen: dict[tuple[str, str], str] = {}
        items = []
        for where, raw in rows[lang]:
            link = _nonempty(_get(raw, "link", where), where, "link")
            qnum = str(_get(raw, "question_number", where))
            key = (link, qnum)
            if key in seen:
                raise CorpusError(
                    f"{where}: duplicate (link, question_number) {key}, see {seen[key]}"
                )
            seen[key] = where
            if key not in topic_of:
                raise CorpusError(f"{where}: row {key} has no English counterpart (not parallel)")
            dialect = raw.get("dialect")
            if dialect is not None and dialect != config:
                raise CorpusError(f"{where}: field 'dialect' is {dialect!r}, expected {config!r}")
            tid = topic_of[key]
            options = [
                _nonempty(_get(raw, f"mc_answer{n}", where), where, f"mc_answer{n}")
                for n in range(1, 5)
            ]
            item = MCQItem(
                qid=f"{tid}.q{qnum}",
                lang=lang,
                question=_nonempty(_get(raw, "question", where), where, "question"),
                options=options,
                answer=_belebele_gold(raw, where),
                context=_nonempty(_get(raw, "flores_passage", where), where, "flores_passage"),
                source="belebele",
            )
            items.append(item)
            order = int(qnum) if qnum.isdigit() else 0
            grouped.setdefault(tid, []).append((order, item, link, where))
        missing = sorted(set(topic_of) - set(seen))
        if missing:
            raise CorpusError(
                f"Belebele {config}: rows {missing[:3]} of the English config are missing "
                f"({len(missing)} in all; not parallel)"
            )
        per_lang[lang] = grouped
        mcq_items[lang] = items

    en_counts = {tid: 0 for tid in passage_key_to_topic.values()}
    for tid in topic_of.values():
        en_counts[tid] += 1
    skipped = tuple(tid for tid, n in en_counts.items() if n < 2)

    records: dict[str, dict[str, PassageRecord]] = {lang: {} for lang in langs}
    for lang in langs:
        for tid in passage_key_to_topic.values():  # English order, the same in every language
            if tid in skipped:
                continue
            group = sorted(per_lang[lang][tid], key=lambda g: g[0])
            (_, first, link, where), (_, second, _, _) = group[0], group[1]
            if any(g[1].context != first.context for g in group):
                raise CorpusError(f"{where}: rows of topic {tid} disagree on 'flores_passage'")
            records[lang][tid] = PassageRecord(
                id=f"{tid}.{lang}",
                topic_id=tid,
                domain=_belebele_domain(link),
                lang=lang,
                title=_belebele_title(link),
                passage=first.context,
                questions=(first.question, second.question),
                answers=(first.answer_text, second.answer_text),
                source="belebele",
                mcq_question=first.question,
                mcq_options=tuple(first.options),
                mcq_answer=first.answer,
            )
    return PassageSet("belebele", langs, records, skipped=skipped, mcq_items=mcq_items)


# --------------------------------------------------------------------------------------- NoMIRACL


NOMIRACL_SUBSETS = ("relevant", "non_relevant")


def _nomiracl_rows(
    config: str,
    subset: str,
    source: str,
    split: str,
    data_dir: str | Path | None,
    revision: str | None,
) -> list[tuple[str, dict]]:
    if data_dir is None:
        return _hub_rows(source, config, f"{split}.{subset}", revision)
    path = Path(data_dir) / config / f"{split}.{subset}.jsonl"
    _require_file(
        path,
        f"the NoMIRACL {config} {split}.{subset} rows, one JSON object per line "
        f"(e.g. load_dataset({source!r}, {config!r}, split='{split}.{subset}').to_json(path))",
    )
    return list(_read_jsonl(path))


def _passages(raw: dict, name: str, where: str) -> list[tuple[str, str, str]]:
    value = _get(raw, name, where)
    if not isinstance(value, list):
        raise CorpusError(f"{where}: field {name!r} must be a list of passages")
    out = []
    for n, p in enumerate(value):
        w = f"{where} {name}[{n}]"
        docid = str(_get(p, "docid", w))
        title = _get(p, "title", w)
        if not isinstance(title, str):
            raise CorpusError(f"{w}: field 'title' must be a string")
        out.append((docid, title, _nonempty(_get(p, "text", w), w, "text")))
    return out


def _rng(seed: int, lang: str, query_id: str) -> random.Random:
    # Seeded per query (not a running stream) so one query's sample does not depend on the others.
    digest = hashlib.sha256(f"{seed}:{lang}:{query_id}".encode()).digest()
    return random.Random(int.from_bytes(digest[:8], "little"))


def load_nomiracl(
    langs: list[str],
    k: int,
    seed: int,
    source: str = "miracl/nomiracl",
    split: str = "test",
    data_dir: str | Path | None = None,
    revision: str | None = None,
) -> NoMiraclSet:
    """NoMIRACL probe samples of ``k`` passages per query.

    Hub configs are language names (``english``, ``arabic``...), splits ``<split>.relevant`` and
    ``<split>.non_relevant`` with ``split`` = ``test`` or ``dev``. With ``data_dir`` the same rows
    are read from ``<data_dir>/<config>/<split>.<subset>.jsonl``. A relevant query gets one of its
    positives and k-1 negatives, a non-relevant one k negatives; choice and order are seeded per
    query. Queries with too few passages for k are skipped and counted.
    """
    langs = check_languages("nomiracl", langs)
    if not isinstance(k, int) or k < 1:
        raise ValueError(f"k must be a positive integer, got {k!r}")
    if split not in ("test", "dev"):
        raise ValueError(f"NoMIRACL split must be 'test' or 'dev', got {split!r}")
    samples: dict[str, list[NoMiraclSample]] = {}
    skipped: dict[str, int] = {}
    for lang in langs:
        config = NOMIRACL_CONFIGS[lang]
        samples[lang], skipped[lang] = [], 0
        for subset in NOMIRACL_SUBSETS:
            relevant = subset == "relevant"
            for where, raw in _nomiracl_rows(config, subset, source, split, data_dir, revision):
                qid = str(_get(raw, "query_id", where))
                query = _nonempty(_get(raw, "query", where), where, "query")
                pos = _passages(raw, "positive_passages", where)
                neg = _passages(raw, "negative_passages", where)
                if relevant and not pos:
                    raise CorpusError(
                        f"{where}: relevant-subset query {qid} has no positive passage"
                    )
                if not relevant and pos:
                    raise CorpusError(f"{where}: non-relevant query {qid} has positive passages")
                n_neg = k - 1 if relevant else k
                if len(neg) < n_neg:
                    skipped[lang] += 1
                    continue
                rng = _rng(seed, lang, qid)
                chosen = ([rng.choice(pos)] if relevant else []) + rng.sample(neg, n_neg)
                rng.shuffle(chosen)
                samples[lang].append(
                    NoMiraclSample(
                        query_id=qid,
                        lang=lang,
                        query=query,
                        passages=[(title, text) for _, title, text in chosen],
                        label=ANSWER_PRESENT if relevant else ANSWER_ABSENT,
                        relevant_count=int(relevant),
                        docids=tuple(docid for docid, _, _ in chosen),
                    )
                )
    return NoMiraclSet(k=k, seed=seed, samples=samples, skipped=skipped)


# ----------------------------------------------------------------------------------------- X-CSQA


def load_xcsqa(
    path_or_dir: str | Path, langs: list[str], split: str = "dev"
) -> dict[str, list[MCQItem]]:
    """X-CSQA (``<lang>/<split>.jsonl``; Japanese is ``jap/``) as 5-option MCQ items per language.

    Item ids are the dataset's own, identical across languages; every language must hold the same
    ids. The public test split has no ``answerKey``, so only ``dev`` has gold letters.
    """
    langs = check_languages("xcsqa", langs)
    root = Path(path_or_dir)
    out: dict[str, list[MCQItem]] = {}
    for lang in langs:
        path = _require_file(
            root / XCSQA_DIRS[lang] / f"{split}.jsonl", f"X-CSQA {split} file for {lang!r}"
        )
        items = []
        for where, raw in _read_jsonl(path):
            qid = _nonempty(_get(raw, "id", where), where, "id")
            if raw.get("lang", XCSQA_DIRS[lang]) not in (lang, XCSQA_DIRS[lang]):
                raise CorpusError(f"{where}: field 'lang' is {raw['lang']!r} in the {lang!r} file")
            question = _get(raw, "question", where)
            stem = _nonempty(_get(question, "stem", where), where, "question.stem")
            choices = _get(question, "choices", where)
            if not isinstance(choices, list) or not 2 <= len(choices) <= len(LETTERS):
                raise CorpusError(f"{where}: field 'question.choices' must list 2-5 choices")
            labels = [
                _get(c, "label", f"{where} question.choices[{n}]") for n, c in enumerate(choices)
            ]
            if labels != list(LETTERS[: len(choices)]):
                raise CorpusError(f"{where}: choice labels {labels} are not A, B, C... in order")
            options = [
                _nonempty(_get(c, "text", where), where, f"question.choices[{n}].text")
                for n, c in enumerate(choices)
            ]
            answer = _get(raw, "answerKey", where)
            if answer not in labels:
                raise CorpusError(f"{where}: field 'answerKey' {answer!r} is not one of {labels}")
            items.append(MCQItem(qid, lang, stem, options, answer, None, "xcsqa"))
        out[lang] = items
    _check_same_ids("X-CSQA", {lang: [i.qid for i in items] for lang, items in out.items()})
    return out


def _check_same_ids(name: str, ids: dict[str, list[str]]) -> None:
    ref_lang = next(iter(ids))
    ref = set(ids[ref_lang])
    for lang, got in ids.items():
        diff = sorted(ref ^ set(got))
        if diff:
            raise CorpusError(
                f"{name}: ids differ between {ref_lang} and {lang} (e.g. {diff[:5]}); not parallel"
            )


# ----------------------------------------------------------------------------------------- MedQA


def load_medqa(path: str | Path, lang: str) -> list[MCQItem]:
    """MedQA question-bank jsonl (``question``, ``options`` {letter: text}, ``answer_idx``).

    ``lang`` is ``en`` for the US bank (4- or 5-option files) or ``zh`` for Mainland China. The
    banks are not translations of each other; ids are ``medqa-<us|mainland>-<row>``.
    """
    (lang,) = check_languages("medqa", [lang])
    path = _require_file(Path(path), f"a MedQA {MEDQA_REGIONS[lang]} jsonl file")
    prefix = f"medqa-{MEDQA_REGIONS[lang].lower()}"
    items = []
    for n, (where, raw) in enumerate(_read_jsonl(path)):
        question = _nonempty(_get(raw, "question", where), where, "question")
        opts = _get(raw, "options", where)
        if not isinstance(opts, dict):
            raise CorpusError(f"{where}: field 'options' must be an object {{letter: text}}")
        letters = sorted(opts)
        if letters != list(LETTERS[: len(letters)]) or len(letters) < 2:
            raise CorpusError(f"{where}: field 'options' has keys {letters}, expected A, B, C...")
        options = [_nonempty(opts[x], where, f"options.{x}") for x in letters]
        answer = _get(raw, "answer_idx", where)
        if answer not in letters:
            raise CorpusError(f"{where}: field 'answer_idx' {answer!r} is not one of {letters}")
        items.append(MCQItem(f"{prefix}-{n:05d}", lang, question, options, answer, None, "medqa"))
    return items


# ------------------------------------------------------------------------------------------ MGSM


_THOUSANDS = re.compile(r"^-?\d{1,3}(,\d{3})+(\.\d+)?$")


def _parse_number(text: str, where: str) -> float:
    t = text.strip()
    if _THOUSANDS.match(t):
        t = t.replace(",", "")
    try:
        return float(t)
    except ValueError:
        raise CorpusError(f"{where}: answer {text!r} is not a number") from None


def load_mgsm(dir: str | Path, langs: list[str]) -> dict[str, list[MathItem]]:
    """MGSM (``mgsm_<lang>.tsv``: question TAB answer number, no header) per language.

    Row i is the same problem in every language (``qid`` ``mgsm-<i>``), so row counts and answers
    must agree across languages.
    """
    langs = check_languages("mgsm", langs)
    root = Path(dir)
    out: dict[str, list[MathItem]] = {}
    wheres: dict[str, list[str]] = {}
    for lang in langs:
        path = _require_file(root / f"mgsm_{lang}.tsv", f"MGSM file for {lang!r}")
        items, locs = [], []
        with path.open(encoding="utf-8") as fh:
            for lineno, line in enumerate(fh, 1):
                line = line.rstrip("\r\n")
                if not line.strip():
                    continue
                where = f"{path}:{lineno}"
                cols = line.split("\t")
                if len(cols) != 2:
                    raise CorpusError(
                        f"{where}: {len(cols)} tab-separated columns, expected 2 (question, answer)"
                    )
                question = _nonempty(cols[0], where, "question")
                number = _parse_number(cols[1], where)
                items.append(MathItem(f"mgsm-{len(items):03d}", lang, question, number))
                locs.append(where)
        out[lang], wheres[lang] = items, locs
    ref = langs[0]
    for lang in langs[1:]:
        if len(out[lang]) != len(out[ref]):
            raise CorpusError(
                f"{root / f'mgsm_{lang}.tsv'}: {len(out[lang])} rows but mgsm_{ref}.tsv has "
                f"{len(out[ref])}; MGSM rows are parallel"
            )
        for a, b, where in zip(out[ref], out[lang], wheres[lang], strict=True):
            if a.answer_number != b.answer_number:
                raise CorpusError(
                    f"{where}: answer {b.answer_number:g} differs from {a.answer_number:g} in "
                    f"mgsm_{ref}.tsv (rows out of step?)"
                )
    return out
