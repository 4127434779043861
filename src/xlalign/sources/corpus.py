"""The shipped parallel corpus: one record per topic per language under ``data/corpus/<domain>/<lang>.jsonl``.

Loading validates everything and names the file, line and topic of any problem.
"""

from __future__ import annotations

import json
from collections import Counter, defaultdict
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from xlalign.config import ALL_LANGS, REPO_ROOT

LETTERS = ("A", "B", "C", "D")
REQUIRED = ("id", "topic_id", "domain", "lang", "title", "passage", "questions", "mcq")
MCQ_FIELDS = ("question", "options", "answer")


class CorpusError(ValueError):
    """Bad corpus input; the message names the file, line and topic."""


@dataclass(frozen=True)
class TopicRecord:
    id: str
    topic_id: str
    domain: str
    lang: str
    title: str
    passage: str
    questions: tuple[str, str]
    mcq_question: str
    mcq_options: tuple[str, ...]
    mcq_answer: str

    def to_dict(self) -> dict:
        return {
            "id": self.id,
            "topic_id": self.topic_id,
            "domain": self.domain,
            "lang": self.lang,
            "title": self.title,
            "passage": self.passage,
            "questions": list(self.questions),
            "mcq": {
                "question": self.mcq_question,
                "options": list(self.mcq_options),
                "answer": self.mcq_answer,
            },
        }


def _nonempty(value, where: str, field: str) -> str:
    if not isinstance(value, str) or not value.strip():
        raise CorpusError(f"{where}: field {field!r} is empty or not a string")
    return value


def _unknown_fields(raw: dict, allowed: tuple[str, ...], where: str, prefix: str = "") -> None:
    """A typo such as ``pasage`` would otherwise leave the real field missing or be silently dropped."""
    unknown = [k for k in raw if k not in allowed]
    if unknown:
        names = ", ".join(repr(f"{prefix}{k}") for k in unknown)
        raise CorpusError(
            f"{where}: unknown field(s) {names}; allowed fields: "
            f"{', '.join(prefix + k for k in allowed)} (see data/corpus/SCHEMA.md)"
        )


def parse_record(raw: dict, where: str, lang: str) -> TopicRecord:
    hint = raw.get("topic_id")
    _unknown_fields(raw, REQUIRED, f"{where} (topic {hint})" if isinstance(hint, str) else where)
    missing = [k for k in REQUIRED if k not in raw]
    if missing:
        raise CorpusError(f"{where}: missing field(s) {missing}")
    # topic_id first: the id check below derives its expectation from it, and would otherwise blame
    # a correct 'id' for a broken 'topic_id'.
    topic = _nonempty(raw["topic_id"], where, "topic_id")
    where = f"{where} (topic {topic})"
    if raw["lang"] != lang:
        raise CorpusError(f"{where}: field 'lang' is {raw['lang']!r} but the file is for {lang!r}")
    if raw["id"] != f"{topic}.{lang}":
        raise CorpusError(f"{where}: field 'id' is {raw['id']!r}, expected {topic}.{lang!s}")
    qs = raw["questions"]
    if not isinstance(qs, list) or len(qs) != 2:
        raise CorpusError(f"{where}: field 'questions' must be a list of 2 questions")
    mcq = raw["mcq"]
    if not isinstance(mcq, dict) or not set(MCQ_FIELDS) <= set(mcq):
        raise CorpusError(f"{where}: field 'mcq' needs question, options and answer")
    _unknown_fields(mcq, MCQ_FIELDS, where, prefix="mcq.")
    opts = mcq["options"]
    if not isinstance(opts, list) or len(opts) != len(LETTERS):
        raise CorpusError(f"{where}: field 'mcq.options' must hold {len(LETTERS)} options")
    if mcq["answer"] not in LETTERS[: len(opts)]:
        raise CorpusError(f"{where}: field 'mcq.answer' {mcq['answer']!r} is not one of {LETTERS}")
    return TopicRecord(
        id=raw["id"],
        topic_id=topic,
        domain=_nonempty(raw["domain"], where, "domain"),
        lang=lang,
        title=_nonempty(raw["title"], where, "title"),
        passage=_nonempty(raw["passage"], where, "passage"),
        questions=(
            _nonempty(qs[0], where, "questions[0]"),
            _nonempty(qs[1], where, "questions[1]"),
        ),
        mcq_question=_nonempty(mcq["question"], where, "mcq.question"),
        mcq_options=tuple(_nonempty(o, where, f"mcq.options[{i}]") for i, o in enumerate(opts)),
        mcq_answer=mcq["answer"],
    )


def iter_jsonl(path: Path) -> Iterator[tuple[str, dict]]:
    """``(where, object)`` per non-blank line of a JSONL file, where = ``<path>:<line>``; bad JSON and
    non-object lines are ``CorpusError``s naming the file, line and column. The one JSONL reader of the
    sources (prediction files have their own, which repairs a torn last line)."""
    with path.open(encoding="utf-8") as fh:
        for lineno, line in enumerate(fh, 1):
            if not line.strip():
                continue
            where = f"{path}:{lineno}"
            try:
                # Without its newline: a line cut short then reads "Unterminated string starting at
                # column N" (where the broken value begins), not a control character past the end.
                raw = json.loads(line.rstrip("\r\n"))
            except json.JSONDecodeError as exc:
                raise CorpusError(
                    f"{where}: malformed JSON ({exc.msg.removesuffix(' at')} at column {exc.colno})"
                ) from exc
            if not isinstance(raw, dict):
                raise CorpusError(f"{where}: each line must be a JSON object")
            yield where, raw


def read_jsonl(path: Path, lang: str) -> list[TopicRecord]:
    """The topic records of one ``<domain>/<lang>.jsonl`` file, validated."""
    return [parse_record(raw, where, lang) for where, raw in iter_jsonl(path)]


def corpus_dir(path: str | Path) -> Path:
    p = Path(path)
    return p if p.is_absolute() else REPO_ROOT / p


def load_corpus(path: str | Path, langs: list[str]) -> dict[str, dict[str, TopicRecord]]:
    """``{lang: {topic_id: record}}`` for the requested languages, validated across languages."""
    root = corpus_dir(path)
    unknown = [lang for lang in langs if lang not in ALL_LANGS]
    if unknown:
        raise CorpusError(f"unknown language code(s) {unknown}; known: {' '.join(ALL_LANGS)}")
    # A domain folder is one that holds language files; anything else (notes, scratch) is ignored.
    domains = sorted(d for d in root.iterdir() if d.is_dir() and any(d.glob("*.jsonl")))
    if not domains:
        raise CorpusError(f"{root}: no domain folders (expected {root}/<domain>/<lang>.jsonl)")
    out: dict[str, dict[str, TopicRecord]] = {}
    seen_ids: dict[str, str] = {}
    for lang in langs:
        out[lang] = {}
        for ddir in domains:
            path_l = ddir / f"{lang}.jsonl"
            if not path_l.exists():
                raise CorpusError(f"{path_l}: missing; every domain needs every language")
            for rec in read_jsonl(path_l, lang):
                if rec.id in seen_ids:
                    raise CorpusError(
                        f"{path_l}: duplicate id {rec.id!r} (also in {seen_ids[rec.id]})"
                    )
                seen_ids[rec.id] = str(path_l)
                if rec.domain != ddir.name:
                    raise CorpusError(
                        f"{path_l} (topic {rec.topic_id}): domain {rec.domain!r} differs from folder"
                    )
                out[lang][rec.topic_id] = rec
    validate_parallel(out)
    return out


def validate_parallel(corpus: dict[str, dict[str, TopicRecord]]) -> None:
    """Every topic in every language, with the same domain and the same gold letter."""
    langs = list(corpus)
    if not langs:
        raise CorpusError("no languages loaded")
    ref_lang = "en" if "en" in corpus else langs[0]
    ref = corpus[ref_lang]
    for lang in langs:
        missing = sorted(set(ref) - set(corpus[lang]))
        extra = sorted(set(corpus[lang]) - set(ref))
        if missing:
            raise CorpusError(
                f"topic(s) {missing[:5]} missing in language {lang!r} (present in {ref_lang})"
            )
        if extra:
            raise CorpusError(f"topic(s) {extra[:5]} in {lang!r} are missing in {ref_lang!r}")
        for tid, rec in corpus[lang].items():
            if rec.domain != ref[tid].domain:
                raise CorpusError(f"topic {tid}: domain differs between {ref_lang} and {lang}")
            if rec.mcq_answer != ref[tid].mcq_answer:
                raise CorpusError(f"topic {tid}: gold letter differs between {ref_lang} and {lang}")


def summary(corpus: dict[str, dict[str, TopicRecord]]) -> dict:
    """Counts per domain and language, English passage word counts, gold letter balance."""
    lang0 = next(iter(corpus))
    domains = Counter(r.domain for r in corpus[lang0].values())
    out = {
        "languages": list(corpus),
        "topics": len(corpus[lang0]),
        "domains": dict(sorted(domains.items())),
        "records": sum(len(v) for v in corpus.values()),
        "gold_letters": dict(sorted(Counter(r.mcq_answer for r in corpus[lang0].values()).items())),
    }
    if "en" in corpus:
        words = [len(r.passage.split()) for r in corpus["en"].values()]
        out["en_passage_words"] = {
            "min": min(words),
            "mean": sum(words) / len(words),
            "max": max(words),
        }
    chars = defaultdict(list)
    for lang, recs in corpus.items():
        chars[lang] = [len(r.passage) for r in recs.values()]
    out["mean_passage_chars"] = {k: round(sum(v) / len(v), 1) for k, v in chars.items()}
    return out


def english_word_check(
    corpus: dict[str, dict[str, TopicRecord]], lo: int = 60, hi: int = 120
) -> list:
    """Topics whose English passage is outside the 60-120 word range the design asks for."""
    return [
        (t, len(r.passage.split()))
        for t, r in corpus.get("en", {}).items()
        if not lo <= len(r.passage.split()) <= hi
    ]
