"""Read the answer letter out of a chain-of-thought completion, in any of the templates' languages.

A letter is taken only after an answer label, in parentheses, or alone on a line; articles are skipped.
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
    norm, index = _normalize(text or "")
    valid = LETTERS[:n_options]

    # 1. An answer label ("Answer:", "答案：", "La respuesta es"): the language's own labels and
    #    English first, then any language's (a model may switch language mid-answer). The last
    #    statement wins: it is the final answer. A label followed by an impossible letter ("Answer: E"
    #    with four options) is unparsable rather than a reason to guess from elsewhere.
    for pattern in (_OWN_LABELS.get(lang, _OWN_LABELS["en"]), _ALL_LABELS):
        matches = list(pattern.finditer(norm))
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


def parse_letter(text: str, lang: str, n_options: int = 4) -> str | None:
    """The option letter a CoT answer commits to, or None when it commits to none.

    Tries, in order: the last answer label of ``lang`` or English ("Answer:", "Respuesta:",
    "Réponse :", "答案：", "回答：", "الإجابة:", "คำตอบ:", "Đáp án:", "Válasz:", "Răspuns:", "The answer is
    (B)", full-width letters and colons), the last label of any other language, then "(B)", "B." at
    a line start, and finally the last standalone capital letter (skipping an English-style article
    "A word"). Only letters among the first ``n_options`` count.
    """
    return _locate(text, lang, n_options)[0]


def split_answer(text: str, lang: str, n_options: int = 4) -> tuple[str, str | None]:
    """(explanation, letter): the text before the answer statement, less an "Explanation:" label."""
    letter, start = _locate(text, lang, n_options)
    explanation = (text or "")[:start]
    norm, index = _normalize(explanation)
    match = _EXPLANATION_LABEL.match(norm)
    if match:
        explanation = explanation[index[match.end()] :]
    return explanation.strip(), letter
