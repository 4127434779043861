"""Pluggable translators: a transformers MT model by hub id, the policy model itself, identity, and a
deterministic fake for tests. Used for machine-translated training languages (paper C.2) and CALM pairs.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, replace

from xlalign.sources.corpus import TopicRecord

# NLLB-200 / M2M100 language codes for the languages the project uses.
NLLB_CODES = {
    "en": "eng_Latn", "ar": "arb_Arab", "es": "spa_Latn", "fr": "fra_Latn", "ja": "jpn_Jpan",
    "pt": "por_Latn", "zh": "zho_Hans", "th": "tha_Thai", "vi": "vie_Latn", "hu": "hun_Latn",
    "ro": "ron_Latn", "de": "deu_Latn", "it": "ita_Latn",
}  # fmt: skip
LANG_NAMES_EN = {
    "en": "English", "ar": "Arabic", "es": "Spanish", "fr": "French", "ja": "Japanese",
    "pt": "Portuguese", "zh": "Chinese", "th": "Thai", "vi": "Vietnamese", "hu": "Hungarian",
    "ro": "Romanian", "de": "German", "it": "Italian",
}  # fmt: skip


class TranslationError(RuntimeError):
    """One item failed to translate; callers count it and move on."""


class Translator:
    name = "base"

    def translate(self, texts: list[str], src: str, tgt: str) -> list[str]:
        raise NotImplementedError


class IdentityTranslator(Translator):
    """Keeps the source text: the untranslated ablation."""

    name = "identity"

    def translate(self, texts, src, tgt):
        return list(texts)


class FakeTranslator(Translator):
    """Deterministic stand-in for tests: tags the text with the target language and a short hash.

    It keeps numbers and names intact, so downstream code sees text of realistic shape.
    """

    name = "fake"

    def translate(self, texts, src, tgt):
        out = []
        for t in texts:
            h = hashlib.sha1(f"{tgt}|{t}".encode()).hexdigest()[:6]
            out.append(f"[{tgt}:{h}] {t}")
        return out


@dataclass
class HFTranslator(Translator):
    """A transformers seq2seq MT model by hub id (NLLB-200, M2M100)."""

    model_id: str
    batch_size: int = 8
    max_new_tokens: int = 400
    name: str = "hf"

    def __post_init__(self):
        from transformers import AutoModelForSeq2SeqLM, AutoTokenizer

        from xlalign.models import ModelPreset, ModelUnavailableError, _hub_error

        try:
            self.tok = AutoTokenizer.from_pretrained(self.model_id)
            self.model = AutoModelForSeq2SeqLM.from_pretrained(self.model_id)
        except OSError as exc:
            if isinstance(exc, ModelUnavailableError):
                raise
            raise _hub_error(ModelPreset(self.model_id, "hub", self.model_id), exc) from exc
        self.model.eval()
        self.name = f"hf:{self.model_id}"

    def _code(self, lang: str) -> str:
        if "m2m" in self.model_id.lower():
            return lang
        return NLLB_CODES[lang]

    def translate(self, texts, src, tgt):
        import torch

        self.tok.src_lang = self._code(src)
        tgt_id = self.tok.convert_tokens_to_ids(self._code(tgt))
        out = []
        for i in range(0, len(texts), self.batch_size):
            batch = self.tok(
                texts[i : i + self.batch_size], return_tensors="pt", padding=True, truncation=True
            )
            with torch.inference_mode():
                gen = self.model.generate(
                    **batch, forced_bos_token_id=tgt_id, max_new_tokens=self.max_new_tokens
                )
            out.extend(self.tok.batch_decode(gen, skip_special_tokens=True))
        return out


class SelfTranslator(Translator):
    """The policy model translates (CALM's default when no MT system is available)."""

    name = "self"

    def __init__(self, model, tokenizer, max_new_tokens: int = 256):
        self.model, self.tok, self.max_new_tokens = model, tokenizer, max_new_tokens

    def translate(self, texts, src, tgt):
        from xlalign.generation import greedy_generate

        prompts = [
            f"Translate the following text from {LANG_NAMES_EN[src]} to {LANG_NAMES_EN[tgt]}. "
            f"Keep the line starting with 'Answer:' unchanged.\n\n{t}\n\n{LANG_NAMES_EN[tgt]} translation:\n"
            for t in texts
        ]
        outs = greedy_generate(self.model, self.tok, prompts, self.max_new_tokens, progress=False)
        result = []
        for o in outs:
            o = o.strip()
            if not o:
                raise TranslationError("empty translation")
            result.append(o)
        return result


def make_translator(spec: str, model=None, tokenizer=None) -> Translator:
    if spec == "identity":
        return IdentityTranslator()
    if spec == "fake":
        return FakeTranslator()
    if spec == "self":
        if model is None:
            raise ValueError("translator 'self' needs the policy model and tokenizer")
        return SelfTranslator(model, tokenizer)
    if spec.startswith("hf:"):
        return HFTranslator(spec[3:])
    raise ValueError(f"unknown translator {spec!r}; use fake | identity | self | hf:<hub id>")


def translate_corpus(
    source: dict[str, TopicRecord], tgt: str, translator: Translator, src: str = "en"
) -> dict[str, TopicRecord]:
    """Machine-translate every field of a language's topic records into ``tgt`` (paper C.2)."""
    out = {}
    for tid in sorted(source):
        rec = source[tid]
        texts = [rec.title, rec.passage, *rec.questions, rec.mcq_question, *rec.mcq_options]
        tr = translator.translate(texts, src, tgt)
        if len(tr) != len(texts):
            raise TranslationError(f"{translator.name}: {len(tr)} outputs for {len(texts)} inputs")
        out[tid] = replace(
            rec,
            id=f"{tid}.{tgt}",
            lang=tgt,
            title=tr[0],
            passage=tr[1],
            questions=(tr[2], tr[3]),
            mcq_question=tr[4],
            mcq_options=tuple(tr[5:]),
        )
    return out
