"""Passage sources for the probe (XQuAD, Belebele, NoMIRACL), shaped like the shipped corpus's topics.

Each loader checks its languages before reading anything.
"""

from __future__ import annotations

import hashlib
import random
import re
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import unquote, urlparse

from xlalign.probe.build import ANSWER_ABSENT, ANSWER_PRESENT
from xlalign.sources.common import (
    BELEBELE_CONFIGS,
    LETTERS,
    NOMIRACL_CONFIGS,
    MCQItem,
    NoMiraclSample,
    NoMiraclSet,
    PassageRecord,
    PassageSet,
    _get,
    _hub_rows,
    _nonempty,
    _read_json,
    _require_file,
    check_languages,
)
from xlalign.sources.corpus import CorpusError, iter_jsonl

# ------------------------------------------------------------------------------------------ XQuAD


def _xquad_dir(path_or_dir: str | Path) -> Path:
    p = Path(path_or_dir)
    # A path to one language file stands for its folder: the loader needs every language (and en).
    return p.parent if p.is_file() else p


def load_xquad(path_or_dir: str | Path, langs: list[str]) -> PassageSet:
    """XQuAD (``xquad.<lang>.json``, SQuAD v1.1 layout) as parallel passages.

    Paragraph i of article j is the same passage in every language, so its topic id is
    ``xq-<j>-<i>``; its domain is the English article title, so ``xquad.en.json`` is always read,
    and its document ``xq-<j>`` (the probe splits by article: paragraphs of one article share it).
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
                document=tid.rsplit("-", 1)[0],  # xq-<article>
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
            return list(iter_jsonl(path))
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
                document=link,  # FLORES took several passages from one linked page
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
    return list(iter_jsonl(path))


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


@dataclass(frozen=True)
class NoMiraclQuery:
    """One NoMIRACL query with every candidate passage, as (docid, title, text)."""

    query_id: str
    lang: str
    query: str
    positives: tuple[tuple[str, str, str], ...]
    negatives: tuple[tuple[str, str, str], ...]
    where: str

    @property
    def relevant(self) -> bool:
        return bool(self.positives)

    @property
    def docids(self) -> frozenset[str]:
        return frozenset(d for d, _, _ in self.positives + self.negatives)


def read_nomiracl(
    langs: list[str],
    source: str = "miracl/nomiracl",
    split: str = "test",
    data_dir: str | Path | None = None,
    revision: str | None = None,
) -> dict[str, list[NoMiraclQuery]]:
    """Every query of ``<split>.relevant`` then ``<split>.non_relevant`` per language, in file order
    (hub or ``data_dir`` as in ``load_nomiracl``), checked but not yet sampled."""
    langs = check_languages("nomiracl", langs)
    if split not in ("test", "dev"):
        raise ValueError(f"NoMIRACL split must be 'test' or 'dev', got {split!r}")
    out: dict[str, list[NoMiraclQuery]] = {}
    for lang in langs:
        config = NOMIRACL_CONFIGS[lang]
        out[lang] = []
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
                out[lang].append(NoMiraclQuery(qid, lang, query, tuple(pos), tuple(neg), where))
    return out


def sample_nomiracl_query(
    q: NoMiraclQuery, k: int, seed: int, exclude: frozenset[str] = frozenset()
) -> NoMiraclSample | None:
    """A relevant query gets one of its positives and k-1 negatives, a non-relevant one k negatives,
    none of them in ``exclude`` (docids); choice and order seeded per query. None if too few."""
    pos = [p for p in q.positives if p[0] not in exclude]
    neg = [p for p in q.negatives if p[0] not in exclude]
    n_neg = k - 1 if q.relevant else k
    if len(neg) < n_neg or (q.relevant and not pos):
        return None
    rng = _rng(seed, q.lang, q.query_id)
    chosen = ([rng.choice(pos)] if q.relevant else []) + rng.sample(neg, n_neg)
    rng.shuffle(chosen)
    return NoMiraclSample(
        query_id=q.query_id,
        lang=q.lang,
        query=q.query,
        passages=[(title, text) for _, title, text in chosen],
        label=ANSWER_PRESENT if q.relevant else ANSWER_ABSENT,
        relevant_count=int(q.relevant),
        docids=tuple(docid for docid, _, _ in chosen),
    )


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
    queries = read_nomiracl(langs, source, split, data_dir, revision)
    samples: dict[str, list[NoMiraclSample]] = {}
    skipped: dict[str, int] = {}
    for lang in langs:
        drawn = [sample_nomiracl_query(q, k, seed) for q in queries[lang]]
        samples[lang] = [s for s in drawn if s is not None]
        skipped[lang] = len(drawn) - len(samples[lang])
    return NoMiraclSet(k=k, seed=seed, samples=samples, skipped=skipped)
