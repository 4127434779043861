"""Question-answering sources for CALM (X-CSQA, MedQA, MGSM) as multiple-choice or numeric items.

Each loader checks its languages before reading anything.
"""

from __future__ import annotations

import re
from pathlib import Path

from xlalign.sources.common import (
    LETTERS,
    MEDQA_REGIONS,
    XCSQA_DIRS,
    MathItem,
    MCQItem,
    _get,
    _nonempty,
    _require_file,
    check_languages,
)
from xlalign.sources.corpus import CorpusError, iter_jsonl

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
        for where, raw in iter_jsonl(path):
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
    for n, (where, raw) in enumerate(iter_jsonl(path)):
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
