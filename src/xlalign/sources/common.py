"""What every public source shares: its languages, the record shapes, and file readers that name
the file, line and field of bad input.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from pathlib import Path

from xlalign.sources.corpus import CorpusError, TopicRecord, parse_record

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

    ``mcq_*`` are None where the source has no options (XQuAD); ``document`` is the article the
    passage comes from (several passages can share one), "" where passage and document coincide; ``answers`` holds the gold answer
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
    # The unit translations share and the probe splits by: XQuAD's article, Belebele's linked page.
    document: str = ""

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
        record = TopicRecord(
            id=self.id,
            topic_id=self.topic_id,
            domain=self.domain,
            lang=self.lang,
            title=self.title,
            passage=self.passage,
            questions=tuple(self.questions),
            mcq_question=self.mcq_question,
            mcq_options=tuple(self.mcq_options or ()),
            mcq_answer=self.mcq_answer,
        )
        return parse_record(record.to_dict(), f"{self.source} {self.id}", self.lang)


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


# ---------------------------------------------------------------------------------------- cleaning

CLEAN_FIELDS = ("title", "passage", "questions")
_NEWLINES = re.compile(r"\s*[\r\n\u2028\u2029\x0b\x0c\x85]+\s*")


def clean_text(text: str) -> tuple[str, tuple[str, ...]]:
    """``text`` without byte-order marks, with line breaks joined by one space and no leading or
    trailing whitespace, and which of those fixes applied (``bom``, ``newlines``, ``outer_whitespace``).

    A prompt lists one context a line (``[i] title: passage``); a line break inside a passage would
    start what reads as another, unnumbered context."""
    fixes = []
    if "\ufeff" in text:
        text = text.replace("\ufeff", "")
        fixes.append("bom")
    stripped = text.strip()
    if stripped != text:
        fixes.append("outer_whitespace")
    joined = _NEWLINES.sub(" ", stripped)
    if joined != stripped:
        fixes.append("newlines")
    return joined, tuple(fixes)


def clean_records(records: dict[str, dict[str, object]]) -> tuple[dict, dict]:
    """Every record's title, passage and questions through ``clean_text``; the records (same type,
    via ``dataclasses.replace``) and counts of fields changed per fix, for the data report."""
    counts = {"bom": 0, "newlines": 0, "outer_whitespace": 0, "fields_changed": 0}
    out: dict[str, dict[str, object]] = {}
    for lang, recs in records.items():
        out[lang] = {}
        for tid, rec in recs.items():
            changes = {}
            for name in CLEAN_FIELDS:
                value = getattr(rec, name)
                texts = value if isinstance(value, tuple) else (value,)
                cleaned = []
                for t in texts:
                    new, fixes = clean_text(t)
                    for fix in fixes:
                        counts[fix] += 1
                    counts["fields_changed"] += bool(fixes)
                    cleaned.append(new)
                if tuple(cleaned) != texts:
                    changes[name] = tuple(cleaned) if isinstance(value, tuple) else cleaned[0]
            out[lang][tid] = replace(rec, **changes) if changes else rec
    return out, counts


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
