"""Read the answer out of a chain-of-thought completion, in any of the templates' languages: an option
letter where the task has options, else a number read with the language's separators.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Iterable

from xlalign.calm.prompts import TEMPLATES
from xlalign.sources.common import LETTERS

# --------------------------------------------------------------------------- parsing answers

# Answer labels per language, beyond each template's own label: the variants models write.
_EXTRA_ANSWER_LABELS: dict[str, tuple[str, ...]] = {
    "en": ("final answer", "correct answer", "answer"),
    "ar": ("الإجابة", "الاجابة", "إجابة", "اجابة", "الجواب"),
    "es": ("respuesta final", "respuesta correcta", "respuesta"),
    "fr": ("réponse finale", "bonne réponse", "réponse", "reponse"),
    "ja": ("回答", "答え", "正解", "解答"),
    "pt": ("resposta final", "resposta correta", "resposta"),
    "zh": ("最终答案", "正确答案", "答案", "回答"),
    "th": ("คำตอบที่ถูกต้อง", "คำตอบ"),
    "vi": ("đáp án đúng", "đáp án", "câu trả lời", "trả lời"),
    "hu": ("helyes válasz", "válasz", "valasz"),
    "ro": ("răspunsul corect", "răspunsul", "răspuns", "raspunsul", "raspuns"),
    "de": ("richtige antwort", "antwort"),
    "it": ("risposta corretta", "risposta"),
}
# Words that may sit between a label and the letter: "The answer is B", "la respuesta es B",
# "a resposta é B", "答案是B", "答えはB", "đáp án là B", "răspunsul este B", "die Antwort ist B".
_BRIDGE = (
    r"(?:[\s:\-–—=]|(?i:is|es|est|é|è|ist|este|là|option|opción|opção|choice)\b"
    r"|是|为|為|は|选|選)*"
)  # one character or word per step: no nested quantifiers, so no catastrophic backtracking
# Opening marks before the letter ("**B**", "(B)", "「B」"); whitespace belongs to the bridge only.
_OPEN = r"(?:[*_\"'“«「【(\[]+\s*)?"


def _answer_labels(lang: str) -> list[str]:
    labels = {TEMPLATES[lang].answer.strip(" :：")} if lang in TEMPLATES else set()
    labels |= set(_EXTRA_ANSWER_LABELS.get(lang, ()))
    # Longest first, so that "respuesta final" is tried before "respuesta".
    return sorted(labels, key=len, reverse=True)


def _label_regex(labels: Iterable[str]) -> re.Pattern:
    alts = "|".join(re.escape(unicodedata.normalize("NFKC", x)) for x in labels)
    # The letter group is case-sensitive (a lower-case "a" after a label is usually an article) and
    # stops at E, the last option letter of any dataset: "Answer: I think it is B" skips the "I".
    return re.compile(rf"(?i:{alts}){_BRIDGE}{_OPEN}([{LETTERS}])(?![A-Za-z])")


_OWN_LABELS = {
    lang: _label_regex(_answer_labels(lang) + _answer_labels("en")) for lang in TEMPLATES
}
_ALL_LABELS = _label_regex(
    sorted({x for lang in TEMPLATES for x in _answer_labels(lang)}, key=len, reverse=True)
)
_EXPLANATION_LABEL = re.compile(
    r"^\s*(?i:"
    + "|".join(
        re.escape(unicodedata.normalize("NFKC", t.explanation.strip(" :：")))
        for t in TEMPLATES.values()
    )
    + r")\s*:\s*"
)
_PAREN_LETTER = re.compile(r"[(\[]([A-Z])[)\]]")
_LINE_LETTER = re.compile(r"(?m)^\s*([A-Z])\s*[.):](?![A-Za-z0-9])")
_BARE_LETTER = re.compile(r"(?<![A-Za-z0-9])([A-Z])(?![A-Za-z0-9])")


def _normalize(text: str) -> tuple[str, list[int]]:
    """NFKC per character (full-width letters, colons and brackets become ASCII) plus an index map.

    Per-character normalization keeps a map from each normalized position back to the original, so
    explanations are cut from the text the model wrote, not from its normalized copy.
    """
    out, index = [], []
    for i, ch in enumerate(text):
        norm = unicodedata.normalize("NFKC", ch)
        out.append(norm)
        index.extend([i] * len(norm))
    index.append(len(text))
    return "".join(out), index


def _is_article(norm: str, match: re.Match) -> bool:
    # "A farmer ..." (English, Portuguese, Spanish "A la ...") is an article, not option A.
    return match.group(1) == "A" and re.match(r"\s+[a-zà-ÿ]", norm[match.end() :]) is not None


def _locate(text: str, lang: str, n_options: int) -> tuple[str | None, int]:
    """(letter or None, position in ``text`` where the answer statement starts)."""
    if n_options < 1:
        return _locate_number(text, lang)
    norm, index = _normalize(text or "")
    valid = LETTERS[:n_options]
    # A label followed by a number ("The answer is 2.") commits to no option: a letter elsewhere in
    # the text ("from station A to station B") is not the answer.
    numeric = _last_numeric_label(norm, lang)

    # 1. An answer label ("Answer:", "答案：", "La respuesta es"): the language's own labels and
    #    English first, then any language's (a model may switch language mid-answer). The last
    #    statement wins: it is the final answer. A label followed by an impossible letter ("Answer: E"
    #    with four options) is unparsable rather than a reason to guess from elsewhere.
    for pattern in (_OWN_LABELS.get(lang, _OWN_LABELS["en"]), _ALL_LABELS):
        matches = list(pattern.finditer(norm))
        if numeric is not None and (not matches or numeric > matches[-1].start()):
            return None, index[numeric]
        if matches:
            letter = matches[-1].group(1)
            return (letter if letter in valid else None), index[matches[-1].start()]
    # 2. Without a label: "(B)", then "B." at a line start, then the last standalone letter.
    for pattern in (_PAREN_LETTER, _LINE_LETTER, _BARE_LETTER):
        matches = [
            m
            for m in pattern.finditer(norm)
            if m.group(1) in valid and not (pattern is _BARE_LETTER and _is_article(norm, m))
        ]
        if matches:
            return matches[-1].group(1), index[matches[-1].start()]
    return None, len(text or "")


# --------------------------------------------------------------------------- numbers

# Languages that write a decimal comma and group thousands with "." (or a space); the rest of the
# templates' languages (en, zh, ja, th, ar) write a decimal point and group with ",".
DECIMAL_COMMA_LANGS = frozenset({"de", "es", "fr", "it", "pt", "ro", "hu", "vi", "ru"})
# Between an answer label and its number: spaces, colons, "=", "is"... but not "-", the sign.
_NUM_BRIDGE = (
    r"(?:[\s:=*_\"'“«「【(\[$€£¥]|(?i:is|es|est|é|è|ist|este|là|about|approximately)\b"
    r"|是|为|為|は|约|約)*"
)
_SPACES = " \u00a0\u202f\u2009"  # space, no-break space, narrow no-break space, thin space
_NUMBER = re.compile(
    r"(?:(?<![\w.,])(?P<neg>-)\s?)?(?<![\d.,])"
    rf"(?P<body>\d{{1,3}}(?:[{_SPACES}']\d{{3}})+(?:[.,]\d+)?|\d+(?:[.,]\d+)*)(?!\d)"
)
_MINUS = str.maketrans({"\u2212": "-", "\ufe63": "-", "\uff0d": "-"})


def _ascii_digits(text: str) -> str:
    """Every Unicode decimal digit (Arabic-Indic, Devanagari, ...) as its ASCII digit; minus signs as
    "-". Applied after NFKC, which already folds full-width digits; lengths are kept."""
    out = [str(unicodedata.decimal(ch)) if ch.isdecimal() else ch for ch in text]
    return "".join(out).translate(_MINUS)


def _group_ok(int_part: str, groups: list[str]) -> bool:
    return (
        1 <= len(int_part) <= 3
        and not int_part.startswith("0")
        and all(len(g) == 3 for g in groups)
    )


def read_number(body: str, lang: str) -> float | None:
    """The value of one number as written in ``lang``, or None where no reading is consistent.

    A space or apostrophe between digit groups groups thousands ("1 000"). With both "," and ".",
    the last one is the decimal mark ("1,234.5", "1.234,5"). One kind repeated groups thousands
    ("1.000.000"). A single separator followed by other than exactly three digits is a decimal mark
    in any language ("3,5", "2.25"); followed by exactly three ("1,000", "1.000") it is read as the
    language writes it: thousands where it is the language's grouping sign, else decimals.
    """
    body = re.sub(rf"(?<=\d)[{_SPACES}'](?=\d{{3}})", "", body)
    seps = re.findall(r"[.,]", body)
    if not seps:
        return float(body)
    parts = re.split(r"[.,]", body)
    group_sign = "." if lang in DECIMAL_COMMA_LANGS else ","
    if len(set(seps)) == 2:
        decimal = seps[-1]
        if seps.count(decimal) != 1 or not _group_ok(parts[0], parts[1:-1]):
            return None
        return float("".join(parts[:-1]) + "." + parts[-1])
    if len(seps) > 1:
        return float("".join(parts)) if _group_ok(parts[0], parts[1:]) else None
    int_part, frac = parts
    if len(frac) == 3 and _group_ok(int_part, [frac]) and seps[0] == group_sign:
        return float(int_part + frac)
    return float(f"{int_part}.{frac}")


def canonical_number(value: float) -> str:
    """One spelling per value, so that votes compare numbers: "18", "-3", "3.5"."""
    if value == int(value):
        return str(int(value))
    return f"{value:.12g}"


def _numbers(norm: str, lang: str, start: int = 0, end: int | None = None):
    for m in _NUMBER.finditer(norm, start, len(norm) if end is None else end):
        value = read_number(m.group("body"), lang)
        if value is not None:
            yield (-value if m.group("neg") else value), m.start()


def _label_only(labels: Iterable[str]) -> re.Pattern:
    alts = "|".join(re.escape(unicodedata.normalize("NFKC", x)) for x in labels)
    return re.compile(rf"(?i:{alts}){_NUM_BRIDGE}")


_OWN_NUM_LABELS = {
    lang: _label_only(_answer_labels(lang) + _answer_labels("en")) for lang in TEMPLATES
}
_ALL_NUM_LABELS = _label_only(
    sorted({x for lang in TEMPLATES for x in _answer_labels(lang)}, key=len, reverse=True)
)


def _last_label(norm: str, lang: str) -> re.Match | None:
    for pattern in (_OWN_NUM_LABELS.get(lang, _OWN_NUM_LABELS["en"]), _ALL_NUM_LABELS):
        matches = list(pattern.finditer(norm))
        if matches:
            return matches[-1]
    return None


def _last_numeric_label(norm: str, lang: str) -> int | None:
    """Start of the last answer label directly followed by a number (letter tasks), else None."""
    digits = _ascii_digits(norm)
    hits = [
        m.start()
        for pattern in (_OWN_NUM_LABELS.get(lang, _OWN_NUM_LABELS["en"]), _ALL_NUM_LABELS)
        for m in pattern.finditer(digits)
        if re.match(r"-?\d", digits[m.end() :])
    ]
    return max(hits) if hits else None


def _locate_number(text: str, lang: str) -> tuple[str | None, int]:
    norm, index = _normalize(text or "")
    norm = _ascii_digits(norm)
    label = _last_label(norm, lang)
    if label is not None:
        # The first number after the last answer label, on its line; none there: no answer.
        line_end = norm.find("\n", label.end())
        found = next(_numbers(norm, lang, label.end(), None if line_end < 0 else line_end), None)
        if found is None:
            return None, index[label.start()]
        return canonical_number(found[0]), index[label.start()]
    found = list(_numbers(norm, lang))
    if not found:
        return None, len(text or "")
    # Without a label the whole text is the explanation; its last number is the answer (MGSM's rule).
    return canonical_number(found[-1][0]), len(text or "")


def parse_number(text: str, lang: str) -> str | None:
    """The number a CoT answer commits to, canonical ("1000", "-3", "3.5"), or None.

    The first number after the last answer label of ``lang`` or English (then of any language),
    on the label's line; without a label, the last number in the text. Numbers are read as
    ``lang`` writes them (``read_number``): "1,000" and "1.000" are a thousand in English and in
    German respectively; "1 000", "3,5", "-4", "−4" and full-width "１８" are read in any language.
    """
    return _locate_number(text, lang)[0]


def parse_answer(text: str, lang: str, n_options: int) -> str | None:
    """A letter where the task has options (``n_options`` > 0), else a canonical number."""
    return parse_letter(text, lang, n_options) if n_options > 0 else parse_number(text, lang)


def parse_letter(text: str, lang: str, n_options: int = 4) -> str | None:
    """The option letter a CoT answer commits to, or None when it commits to none.

    Tries, in order: the last answer label of ``lang`` or English ("Answer:", "Respuesta:",
    "Réponse :", "答案：", "回答：", "الإجابة:", "คำตอบ:", "Đáp án:", "Válasz:", "Răspuns:", "The answer is
    (B)", full-width letters and colons), the last label of any other language, then "(B)", "B." at
    a line start, and finally the last standalone capital letter (skipping an English-style article
    "A word"). Only letters among the first ``n_options`` count. A last answer label followed by a
    number ("The answer is 2.") gives None: the text commits to no option.
    """
    if n_options < 1:
        raise ValueError(f"parse_letter needs n_options >= 1, got {n_options}; use parse_number")
    return _locate(text, lang, n_options)[0]


def split_answer(text: str, lang: str, n_options: int = 4) -> tuple[str, str | None]:
    """(explanation, answer): the text before the answer statement, less an "Explanation:" label.

    ``n_options`` 0: a numeric task (``parse_number``'s answer)."""
    letter, start = _locate(text, lang, n_options)
    explanation = (text or "")[:start]
    norm, index = _normalize(explanation)
    match = _EXPLANATION_LABEL.match(norm)
    if match:
        explanation = explanation[index[match.end()] :]
    return explanation.strip(), letter
