"""CALM's prompts: one chain-of-thought template per language, multiple-choice or numeric (MGSM).

Builds the sampling prompt of an item and formats an explanation plus answer as a completion.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from xlalign.sources.common import LETTERS

log = logging.getLogger(__name__)


# --------------------------------------------------------------------------- prompts per language


@dataclass(frozen=True)
class LangTemplate:
    """Labels (with their language's colon spacing) and the CoT instruction of one language."""

    passage: str
    question: str
    explanation: str
    answer: str
    instruction: str
    reasoning: str  # placeholder for the explanation in the requested format


# The instruction asks for the answer in the prompt's own language; option letters stay Latin so that
# every language votes over the same labels.
TEMPLATES: dict[str, LangTemplate] = {
    "en": LangTemplate(
        "Passage: ", "Question: ", "Explanation: ", "Answer: ",
        "Answer the following multiple-choice question. Think step by step, then reply in English "
        "in exactly this format:",
        "your reasoning",
    ),
    "ar": LangTemplate(
        "النص: ", "السؤال: ", "الشرح: ", "الإجابة: ",
        "أجب عن سؤال الاختيار من متعدد التالي. فكّر خطوة بخطوة، ثم أجب باللغة العربية بهذا التنسيق تمامًا:",
        "استدلالك",
    ),
    "es": LangTemplate(
        "Texto: ", "Pregunta: ", "Explicación: ", "Respuesta: ",
        "Responde a la siguiente pregunta de opción múltiple. Piensa paso a paso y luego responde en "
        "español exactamente con este formato:",
        "tu razonamiento",
    ),
    "fr": LangTemplate(
        "Texte : ", "Question : ", "Explication : ", "Réponse : ",
        "Réponds à la question à choix multiple suivante. Réfléchis étape par étape, puis réponds en "
        "français exactement dans ce format :",
        "ton raisonnement",
    ),
    "ja": LangTemplate(
        "本文：", "質問：", "説明：", "回答：",
        "次の多肢選択問題に答えてください。段階的に考えてから、次の形式どおりに日本語で答えてください：",
        "あなたの推論",
    ),
    "pt": LangTemplate(
        "Texto: ", "Pergunta: ", "Explicação: ", "Resposta: ",
        "Responda à seguinte pergunta de múltipla escolha. Pense passo a passo e depois responda em "
        "português exatamente neste formato:",
        "o seu raciocínio",
    ),
    "zh": LangTemplate(
        "文章：", "问题：", "解释：", "答案：",
        "请回答下面的单项选择题。请逐步思考，然后严格按照以下格式用中文作答：",
        "你的推理过程",
    ),
    "th": LangTemplate(
        "บทความ: ", "คำถาม: ", "คำอธิบาย: ", "คำตอบ: ",
        "ตอบคำถามแบบเลือกตอบต่อไปนี้ คิดทีละขั้นตอน แล้วตอบเป็นภาษาไทยตามรูปแบบนี้เท่านั้น:",
        "เหตุผลของคุณ",
    ),
    "vi": LangTemplate(
        "Đoạn văn: ", "Câu hỏi: ", "Giải thích: ", "Đáp án: ",
        "Hãy trả lời câu hỏi trắc nghiệm sau. Suy nghĩ từng bước, sau đó trả lời bằng tiếng Việt "
        "theo đúng định dạng này:",
        "lập luận của bạn",
    ),
    "hu": LangTemplate(
        "Szöveg: ", "Kérdés: ", "Magyarázat: ", "Válasz: ",
        "Válaszolj a következő feleletválasztós kérdésre. Gondolkodj lépésről lépésre, majd "
        "válaszolj magyarul pontosan ebben a formában:",
        "az érvelésed",
    ),
    "ro": LangTemplate(
        "Text: ", "Întrebare: ", "Explicație: ", "Răspuns: ",
        "Răspunde la următoarea întrebare cu variante multiple. Gândește pas cu pas, apoi răspunde "
        "în limba română exact în acest format:",
        "raționamentul tău",
    ),
    "de": LangTemplate(
        "Text: ", "Frage: ", "Erklärung: ", "Antwort: ",
        "Beantworte die folgende Multiple-Choice-Frage. Denke Schritt für Schritt nach und antworte "
        "dann auf Deutsch genau in diesem Format:",
        "deine Begründung",
    ),
    "it": LangTemplate(
        "Testo: ", "Domanda: ", "Spiegazione: ", "Risposta: ",
        "Rispondi alla seguente domanda a scelta multipla. Ragiona passo dopo passo, poi rispondi "
        "in italiano esattamente in questo formato:",
        "il tuo ragionamento",
    ),
}  # fmt: skip


# Numeric tasks (MGSM): the instruction and the answer placeholder, for the templates' languages that
# MGSM has. The labels are the language's LangTemplate labels, so parsing is shared.
MATH_TEMPLATES: dict[str, tuple[str, str]] = {
    "en": ("Solve the following math problem. Think step by step, then reply in English in exactly "
           "this format:", "a number"),
    "es": ("Resuelve el siguiente problema de matemáticas. Piensa paso a paso y luego responde en "
           "español exactamente con este formato:", "un número"),
    "fr": ("Résous le problème de mathématiques suivant. Réfléchis étape par étape, puis réponds en "
           "français exactement dans ce format :", "un nombre"),
    "de": ("Löse die folgende Matheaufgabe. Denke Schritt für Schritt nach und antworte dann auf "
           "Deutsch genau in diesem Format:", "eine Zahl"),
    "zh": ("请解下面的数学题。请逐步思考，然后严格按照以下格式用中文作答：", "一个数字"),
    "ja": ("次の算数の問題を解いてください。段階的に考えてから、次の形式どおりに日本語で答えてください：",
           "数値"),
    "th": ("แก้โจทย์คณิตศาสตร์ต่อไปนี้ คิดทีละขั้นตอน แล้วตอบเป็นภาษาไทยตามรูปแบบนี้เท่านั้น:",
           "ตัวเลข"),
}  # fmt: skip


def has_options(item) -> bool:
    """Whether ``item`` is a multiple-choice item (options, a gold letter) rather than a numeric one."""
    return getattr(item, "options", None) is not None


def template(lang: str) -> LangTemplate:
    try:
        return TEMPLATES[lang]
    except KeyError:
        raise ValueError(
            f"no CALM prompt for language {lang!r}; known: {' '.join(TEMPLATES)}"
        ) from None


def build_prompt(item, lang: str | None = None) -> str:
    """The CoT prompt of one item in its language (unrendered: no chat template yet).

    ``item`` is anything with ``question``, ``options`` and ``context`` (None for X-CSQA/MedQA, the
    passage for the shipped corpus, which makes it Belebele-style reading comprehension); an item
    without options (MGSM's ``MathItem``) gets the numeric template of ``MATH_TEMPLATES``.
    """
    lang = lang or item.lang
    t = template(lang)
    if not has_options(item):
        return _math_prompt(item, lang, t)
    letters = LETTERS[: len(item.options)]
    parts = []
    if item.context:
        parts.append(f"{t.passage}{item.context}\n")
    parts.append(f"{t.question}{item.question}")
    parts += [f"{letter}. {opt}" for letter, opt in zip(letters, item.options, strict=True)]
    parts.append("")
    parts.append(t.instruction)
    parts.append(f"{t.explanation}<{t.reasoning}>")
    parts.append(f"{t.answer}<{'/'.join(letters)}>")
    return "\n".join(parts)


def _math_prompt(item, lang: str, t: LangTemplate) -> str:
    if lang not in MATH_TEMPLATES:
        raise ValueError(
            f"no numeric CALM prompt for language {lang!r}; known: {' '.join(MATH_TEMPLATES)}"
        )
    instruction, number = MATH_TEMPLATES[lang]
    parts = [f"{t.question}{item.question}", "", instruction]
    parts += [f"{t.explanation}<{t.reasoning}>", f"{t.answer}<{number}>"]
    return "\n".join(parts)


def format_completion(explanation: str, letter: str, lang: str) -> str:
    """The canonical "Explanation: ...\\nAnswer: X" completion in ``lang``'s labels (X: a letter or,
    for numeric tasks, the canonical number)."""
    t = template(lang)
    explanation = explanation.strip()
    head = f"{t.explanation}{explanation}\n" if explanation else ""
    return f"{head}{t.answer}{letter}"
