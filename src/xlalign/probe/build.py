"""The NoMIRACL-style binary RAG probe: question + k passages -> "Yes, answer is present" | "I don't know".

Document choice and order depend only on the query id and the seed, so every language sees a translation
of the same sample; the split is by document, and distractors come from the query's own side of it.
"""

from __future__ import annotations

import hashlib
from collections import Counter, defaultdict
from dataclasses import dataclass

import numpy as np

from xlalign.sources.corpus import CorpusError, TopicRecord

ANSWER_PRESENT = "Yes, answer is present"
ANSWER_ABSENT = "I don't know"
LABELS = (ANSWER_PRESENT, ANSWER_ABSENT)

# Paper A.3.2, word for word; the instruction stays in English for every language (A.3.3).
INSTRUCTION_EN = (
    "I will give you a question and several contexts containing information about the question. "
    "Read the contexts carefully. If any of the contexts answers the question, respond as either\n"
    '"Yes, answer is present"\nor "I don\'t know":'
)
# The localized-instruction variant (A.3.3 discusses it): the instruction is translated, the two
# answer strings stay in English so that scoring and parsing are identical across languages.
INSTRUCTION_LOCAL = {
    "en": INSTRUCTION_EN,
    "ar": "سأعطيك سؤالاً وعدة سياقات تحتوي على معلومات حول السؤال. اقرأ السياقات بعناية. "
    'إذا كان أي من السياقات يجيب عن السؤال، فأجب إما بـ\n"Yes, answer is present"\nأو "I don\'t know":',
    "es": "Te daré una pregunta y varios contextos con información sobre la pregunta. Lee los contextos "
    "con atención. Si alguno de los contextos responde a la pregunta, responde\n"
    '"Yes, answer is present"\no "I don\'t know":',
    "fr": "Je vais vous donner une question et plusieurs contextes contenant des informations sur la "
    "question. Lisez attentivement les contextes. Si l'un des contextes répond à la question, répondez\n"
    '"Yes, answer is present"\nou "I don\'t know" :',
    "ja": "質問と、その質問に関する情報を含む複数のコンテキストを示します。コンテキストを注意深く読んでください。"
    'いずれかのコンテキストが質問に答えている場合は\n"Yes, answer is present"\nと、そうでなければ "I don\'t know" と答えてください：',
    "pt": "Vou lhe dar uma pergunta e vários contextos com informações sobre a pergunta. Leia os "
    "contextos com atenção. Se algum dos contextos responder à pergunta, responda\n"
    '"Yes, answer is present"\nou "I don\'t know":',
    "zh": "我会给你一个问题和若干包含该问题相关信息的上下文。请仔细阅读这些上下文。如果任何一个上下文回答了该问题，"
    '请回答\n"Yes, answer is present"\n或 "I don\'t know"：',
    "th": "ฉันจะให้คำถามและบริบทหลายรายการที่มีข้อมูลเกี่ยวกับคำถามนั้น โปรดอ่านบริบทอย่างละเอียด "
    'หากบริบทใดตอบคำถามได้ ให้ตอบว่า\n"Yes, answer is present"\nหรือ "I don\'t know":',
    "vi": "Tôi sẽ đưa cho bạn một câu hỏi và một số ngữ cảnh chứa thông tin về câu hỏi. Hãy đọc kỹ các "
    "ngữ cảnh. Nếu có ngữ cảnh nào trả lời câu hỏi, hãy trả lời\n"
    '"Yes, answer is present"\nhoặc "I don\'t know":',
    "hu": "Adok egy kérdést és több szövegrészt, amelyek információt tartalmaznak a kérdésről. Olvasd el "
    "figyelmesen a szövegrészeket. Ha bármelyik szövegrész megválaszolja a kérdést, válaszolj így:\n"
    '"Yes, answer is present"\nvagy "I don\'t know":',
    "ro": "Îți voi da o întrebare și mai multe contexte care conțin informații despre întrebare. Citește "
    "cu atenție contextele. Dacă oricare dintre contexte răspunde la întrebare, răspunde fie\n"
    '"Yes, answer is present"\nfie "I don\'t know":',
}


@dataclass(frozen=True)
class ProbeSample:
    """A language-independent probe sample: which query and which documents, in which order."""

    sample_id: str  # <topic>.q<1|2>.<pos|neg>
    query_id: str  # <topic>.q<1|2>
    topic_id: str
    domain: str
    question_index: int
    label: str
    doc_topics: tuple[str, ...]
    outside_domain: int = 0  # distractors drawn from other domains (the own domain was too small)


def _rng_for(seed: int, key: str) -> np.random.Generator:
    # Seeding on the query id (not on a running counter) keeps each query's documents stable when
    # topics, languages or domains are added or removed.
    digest = int.from_bytes(hashlib.sha256(key.encode()).digest()[:8], "little")
    return np.random.default_rng([seed, digest])


def _draw(rng: np.random.Generator, same: list[str], other: list[str], n: int) -> tuple[list, int]:
    """``n`` distinct distractors, same-domain first; the rest (counted) from other domains."""
    n_same = min(n, len(same))
    picked = [str(d) for d in rng.choice(same, size=n_same, replace=False)] if n_same else []
    if n > n_same:
        picked += [str(d) for d in rng.choice(other, size=n - n_same, replace=False)]
    return picked, n - n_same


def build_samples(
    topics: dict, k: int, seed: int, split: dict[str, str] | None = None, source: str = "corpus"
) -> list[ProbeSample]:
    """One positive and one negative sample per query (two queries per topic).

    Distractors come from the query's own side of ``split`` (a test passage never appears in a
    training prompt, nor a training passage in a test prompt), from its own domain where that holds
    enough, and otherwise (our choice; the paper's domains were large enough) from the other
    domains on the same side; ``ProbeSample.outside_domain`` counts those. Without ``split`` every
    topic is drawn from, as for a single pool.
    """
    side = split if split is not None else dict.fromkeys(topics, "all")
    missing = sorted(set(topics) - set(side))
    if missing:
        raise ValueError(f"topics {missing[:5]} have no split")
    pools: dict[tuple[str, str], list[str]] = defaultdict(list)
    sides: dict[str, list[str]] = defaultdict(list)
    for tid in sorted(topics):
        pools[side[tid], topics[tid].domain].append(tid)
        sides[side[tid]].append(tid)
    samples = []
    for tid in sorted(topics):
        domain, part = topics[tid].domain, side[tid]
        same = [t for t in pools[part, domain] if t != tid]
        other = [t for t in sides[part] if t != tid and topics[t].domain != domain]
        if len(same) + len(other) < k:
            where = "" if split is None else f" on the {part} side of the split"
            raise CorpusError(
                f"{source}: {len(same) + len(other) + 1} passages{where} ({len(same) + 1} in domain "
                f"{domain!r}); a negative sample for {tid} needs k={k} other passages there. "
                f"Lower data.k to at most {len(same) + len(other)} or add topics"
            )
        for qi in (1, 2):
            qid = f"{tid}.q{qi}"
            rng = _rng_for(seed, qid)
            pos_docs, pos_out = _draw(rng, same, other, k - 1)
            pos_docs = [tid, *pos_docs]
            rng.shuffle(pos_docs)
            neg_docs, neg_out = _draw(rng, same, other, k)
            for label, docs, tag, n_out in (
                (ANSWER_PRESENT, pos_docs, "pos", pos_out),
                (ANSWER_ABSENT, neg_docs, "neg", neg_out),
            ):
                samples.append(
                    ProbeSample(
                        f"{qid}.{tag}",
                        qid,
                        tid,
                        domain,
                        qi,
                        label,
                        tuple(str(d) for d in docs),
                        n_out,
                    )
                )
    return samples


def split_topics(
    topics: dict, test_fraction: float, seed: int, documents: dict[str, str] | None = None
) -> dict[str, str]:
    """Topic -> "train" | "test", by document (all passages of one document, and their
    translations, on one side), stratified by domain and seeded; never depends on languages.

    ``documents`` maps topic -> document (default: each topic its own document, as in the shipped
    corpus). A domain too small to give both sides a document (e.g. XQuAD, where each article is
    its own domain) is pooled with the other such domains and split with them (our choice).
    """
    doc_of = documents or {tid: tid for tid in topics}
    doc_domain: dict[str, str] = {}
    for tid in sorted(topics):
        doc_domain.setdefault(doc_of[tid], topics[tid].domain)
    by_domain: dict[str, list[str]] = defaultdict(list)
    for doc in sorted(doc_domain):
        by_domain[doc_domain[doc]].append(doc)
    strata: dict[str, list[str]] = {}
    pooled: list[str] = []
    for domain, docs in sorted(by_domain.items()):
        if len(docs) >= 2 and round(len(docs) * test_fraction) < len(docs):
            strata[domain] = docs
        else:
            pooled += docs
    if pooled:
        strata["\0pooled small domains"] = sorted(pooled)
    doc_split = {}
    for name, docs in strata.items():
        order = _rng_for(seed, f"split/{name}").permutation(len(docs))
        n_test = max(1, round(len(docs) * test_fraction)) if len(docs) >= 2 else 0
        for rank, idx in enumerate(order):
            doc_split[docs[idx]] = "test" if rank < n_test else "train"
    return {tid: doc_split[doc_of[tid]] for tid in topics}


def side_counts(samples: list[ProbeSample], split: dict[str, str]) -> dict:
    """Per side of the split: samples, distractors drawn, and how many came from other domains."""
    out: dict[str, dict[str, int]] = {}
    for s in samples:
        c = out.setdefault(split[s.topic_id], {"samples": 0, "distractors": 0, "outside_domain": 0})
        c["samples"] += 1
        c["distractors"] += len(s.doc_topics) - (s.label == ANSWER_PRESENT)
        c["outside_domain"] += s.outside_domain
    return dict(sorted(out.items()))


def context_prompt(
    question: str, contexts: list[tuple[str, str]], lang: str, localized: bool
) -> str:
    """The A.3.2 prompt for one question and its (title, passage) contexts."""
    instruction = INSTRUCTION_LOCAL[lang] if localized else INSTRUCTION_EN
    lines = "\n".join(f"[{i}] {title}: {passage}" for i, (title, passage) in enumerate(contexts, 1))
    return f"{instruction}\nQUESTION: {question}\nCONTEXTS:\n{lines}\nOUTPUT:"


def format_prompt(sample: ProbeSample, corpus_lang: dict, lang: str, localized: bool) -> str:
    question = corpus_lang[sample.topic_id].questions[sample.question_index - 1]
    contexts = [(corpus_lang[t].title, corpus_lang[t].passage) for t in sample.doc_topics]
    return context_prompt(question, contexts, lang, localized)


def probe_rows(
    corpus: dict[str, dict[str, TopicRecord]],
    langs: list[str],
    samples: list[ProbeSample],
    split: dict[str, str],
    localized: bool = False,
) -> list[dict]:
    """Flat rows, one per (sample, language), with the text prompt and gold label."""
    rows = []
    for s in samples:
        for lang in langs:
            rows.append(
                {
                    "item_id": f"{s.sample_id}.{lang}",
                    "sample_id": s.sample_id,
                    "query_id": s.query_id,
                    "topic_id": s.topic_id,
                    "domain": s.domain,
                    "lang": lang,
                    "label": s.label,
                    "split": split[s.topic_id],
                    "doc_topics": list(s.doc_topics),
                    "prompt": format_prompt(s, corpus[lang], lang, localized),
                }
            )
    return rows


def select_topics(
    topics: dict[str, TopicRecord], domains: list[str], per_domain: int
) -> dict[str, TopicRecord]:
    """Subset for small profiles: chosen domains, first ``per_domain`` topics of each (0: all)."""
    known = sorted({r.domain for r in topics.values()})
    unknown = [d for d in domains if d not in known]
    if unknown:
        raise CorpusError(f"unknown domain(s) {unknown}; the corpus has {known}")
    keep = {}
    counts: Counter = Counter()
    for tid in sorted(topics):
        rec = topics[tid]
        if domains and rec.domain not in domains:
            continue
        if per_domain and counts[rec.domain] >= per_domain:
            continue
        counts[rec.domain] += 1
        keep[tid] = rec
    return keep


# --------------------------------------------------------------------------- preference data


def render_prompt(prompt: str, tokenizer, prompt_format: str) -> str:
    """Plain text for base models; the chat template's user turn for chat models."""
    use_chat = prompt_format == "chat" or (
        prompt_format == "auto" and getattr(tokenizer, "chat_template", None)
    )
    if not use_chat:
        return prompt + "\n"
    return tokenizer.apply_chat_template(
        [{"role": "user", "content": prompt}], tokenize=False, add_generation_prompt=True
    )


def preference_rows(rows: list[dict], tokenizer=None, prompt_format: str = "plain") -> list[dict]:
    """TRL preference format: prompt, chosen (gold), rejected (other answer), plus grouping columns."""
    out = []
    for r in rows:
        other = ANSWER_ABSENT if r["label"] == ANSWER_PRESENT else ANSWER_PRESENT
        prompt = (
            render_prompt(r["prompt"], tokenizer, prompt_format)
            if tokenizer
            else r["prompt"] + "\n"
        )
        out.append(
            {
                "prompt": prompt,
                "chosen": r["label"],
                "rejected": other,
                "sample_id": r["sample_id"],
                "query_id": r["query_id"],
                "topic_id": r["topic_id"],
                "lang": r["lang"],
                "label": r["label"],
            }
        )
    return out


def token_lengths(rows: list[dict], tokenizer, field: str = "prompt") -> list[int]:
    enc = tokenizer([r[field] for r in rows], add_special_tokens=True)["input_ids"]
    return [len(x) for x in enc]


def pair_lengths(pref: list[dict], tokenizer) -> list[int]:
    """Tokens TRL trains per preference pair: the prompt with the tokenizer's special tokens, plus the
    longer of the two completions and the EOS token TRL appends to it (the rejected answer can be the
    longer one; counting only prompt + chosen let TRL cut it silently)."""
    prompts = token_lengths(pref, tokenizer, "prompt")
    eos = 1 if tokenizer.eos_token_id is not None else 0
    out = []
    for r, n_prompt in zip(pref, prompts, strict=True):
        longest = max(
            len(tokenizer(r[side], add_special_tokens=False)["input_ids"])
            for side in ("chosen", "rejected")
        )
        out.append(n_prompt + longest + eos)
    return out


def enforce_max_length(
    rows: list[dict], lengths: list[int], max_tokens: int, policy: str
) -> tuple[list, dict]:
    """Apply the over-length policy to whole sample groups, never to single languages.

    TRL silently drops examples whose prompt fills ``max_length``; that would drop a long Arabic item
    while keeping its English twin. Here the choice is explicit: refuse, or drop the whole group.
    """
    long_groups = sorted(
        {r["sample_id"] for r, n in zip(rows, lengths, strict=True) if n >= max_tokens}
    )
    report = {
        "max_tokens": max_tokens,
        "policy": policy,
        "overlong_groups": long_groups,
        "dropped_rows": 0,
    }
    if not long_groups:
        return rows, report
    offenders = [
        f"{r['item_id'] if 'item_id' in r else r['sample_id'] + '.' + r['lang']} ({n} tokens)"
        for r, n in zip(rows, lengths, strict=True)
        if n >= max_tokens
    ]
    if policy == "refuse":
        raise ValueError(
            f"{len(offenders)} prompt(s) reach max_prompt_tokens={max_tokens}, e.g. {offenders[:3]}; "
            "raise data.max_prompt_tokens / train.max_length, lower data.k, or set "
            "data.overlong=drop_group to drop those samples in every language"
        )
    drop = set(long_groups)
    kept = [r for r in rows if r["sample_id"] not in drop]
    report["dropped_rows"] = len(rows) - len(kept)
    return kept, report


def counts_table(rows: list[dict]):
    """Counts per language, split and label (a pandas DataFrame)."""
    import pandas as pd

    df = pd.DataFrame([{k: r[k] for k in ("lang", "split", "label")} for r in rows])
    return df.groupby(["split", "label", "lang"]).size().unstack("lang", fill_value=0)
