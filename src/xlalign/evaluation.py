"""Probe evaluation: score both answers from one cached forward pass, or generate and parse them.

Per-item predictions go to JSONL batch by batch, so an interrupted run resumes where it stopped.
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
from collections.abc import Iterable, Sequence
from contextlib import contextmanager
from pathlib import Path

import pandas as pd
import torch

from xlalign.probe import ANSWER_ABSENT, ANSWER_PRESENT, render_prompt

log = logging.getLogger(__name__)

INVALID = "Invalid"
MODES = ("scoring", "generation")
SCORE_COLUMNS = (
    "logp_first_present",
    "logp_first_absent",
    "logp_full_present",
    "logp_full_absent",
)
PRED_COLUMNS = (
    "item_id",
    "sample_id",
    "query_id",
    "lang",
    "label",
    "pred",
    "correct",
    "invalid",
    "raw",
    *SCORE_COLUMNS,
    "mode",
)

# NoMIRACL's VanillaTemplate(count=10) builds f"\[(\d+|{max_count})\]"; spelled out here.
_REFERENCE_RE = re.compile(r"\[(\d+|10)\]")


# --------------------------------------------------------------------------- parsing


def parse_nomiracl(text) -> str:
    """Map a model output to ANSWER_PRESENT, ANSWER_ABSENT or "Invalid", as NoMIRACL does.

    Mirrors ``nomiracl.prompts.template.VanillaTemplate().postprocess`` (nomiracl 1.0.0) branch for
    branch: newlines and tabs become spaces, the text is lower-cased (``str.lower``, not casefold),
    then

    1. both phrases present -> Invalid;
    2. "i don't know" present -> ANSWER_ABSENT;
    3. "yes, answer is present" present -> ANSWER_PRESENT;
    4. "answer is present" -> ANSWER_PRESENT, then "answer is not present" -> ANSWER_ABSENT;
    5. a "[n]" reference in a response shorter than 10 characters -> ANSWER_PRESENT;
    6. anything else (including "") -> Invalid.

    Nothing is stripped and "\\r" is kept, exactly as in the reference; a curly apostrophe
    ("I don’t know") is therefore Invalid there and here.

    Where we deliberately differ:

    * Both phrases present. The reference tests ``count_word(response, answer) > 1``, but
      ``count_word`` compares whitespace-split single words with the multi-word phrase, so it is
      always 0 and the branch always ends in Invalid. We return Invalid directly instead of
      "taking the phrase that occurs first": with a 12-token budget both phrases appear almost only
      when the model echoes the instruction's '"Yes, answer is present" or "I don't know"', and the
      first-phrase rule would score every such echo as "present" -- a free 50% on a balanced test
      set for a model that did not answer. Same result as the reference, without its dead code.
    * Input that is not ``str``. The reference raises (``None`` has no ``.replace``; ``bytes``
      gets a TypeError); we decode ``bytes`` as UTF-8 with replacement characters and map any
      other non-string (e.g. ``None`` from a failed generation) to Invalid, so one bad output
      cannot abort a long evaluation.
    """
    if isinstance(text, bytes | bytearray):
        text = bytes(text).decode("utf-8", errors="replace")
    if not isinstance(text, str):
        return INVALID
    response = text.replace("\n", " ").replace("\t", " ").lower()
    has_present = ANSWER_PRESENT.lower() in response
    has_absent = ANSWER_ABSENT.lower() in response
    if has_present and has_absent:
        return INVALID
    if has_absent:
        return ANSWER_ABSENT
    if has_present:
        return ANSWER_PRESENT
    if "answer is present" in response:
        return ANSWER_PRESENT
    if "answer is not present" in response:
        return ANSWER_ABSENT
    if _REFERENCE_RE.search(response) and len(response) < 10:
        return ANSWER_PRESENT
    return INVALID


# --------------------------------------------------------------------------- tokenization


def encode(tokenizer, text: str) -> list[int]:
    """Token ids of a rendered prompt (or prompt + answer) as the model sees them.

    Chat templates write the BOS token into the text themselves; adding it again would give the
    model a double BOS it was not trained with (TRL's ORPO adds BOS only "if needed" for the same
    reason). Plain prompts get the tokenizer's usual special tokens, e.g. Gemma's <bos>.
    """
    bos = tokenizer.bos_token
    add_special = not (bos and text.startswith(bos))
    return tokenizer(text, add_special_tokens=add_special)["input_ids"]


def _common_prefix(a: Sequence[int], b: Sequence[int]) -> int:
    n = 0
    for x, y in zip(a, b, strict=False):
        if x != y:
            break
        n += 1
    return n


def answer_tokens(tokenizer, rendered_prompt: str) -> tuple[list[int], list[int], list[int]]:
    """(context ids, ANSWER_PRESENT continuation ids, ANSWER_ABSENT continuation ids).

    Each answer is tokenized together with the prompt, as in training. Where a tokenizer merges the
    prompt's last token with the answer's first (a prompt ending in a space and " Yes" becoming one
    token), the tokenized prompt is not a prefix of prompt + answer; the context then stops where
    the two diverge and the merged token opens both continuations -- TRL's DPO trainer splits its
    training sequences the same way (``common_prefix_length``).
    """
    prompt_ids = encode(tokenizer, rendered_prompt)
    full_present = encode(tokenizer, rendered_prompt + ANSWER_PRESENT)
    full_absent = encode(tokenizer, rendered_prompt + ANSWER_ABSENT)
    n = min(_common_prefix(prompt_ids, full_present), _common_prefix(prompt_ids, full_absent))
    present, absent = full_present[n:], full_absent[n:]
    if n == 0:
        raise ValueError(f"prompt {rendered_prompt[:60]!r} leaves no context token to score from")
    # The first-token decision needs the two answers to part at their first token ("Yes" vs "I").
    if not present or not absent or present[0] == absent[0]:
        raise ValueError(
            f"the two answers do not differ at their first token after prompt "
            f"{rendered_prompt[-60:]!r} (present={present[:3]}, absent={absent[:3]}); "
            "first-token scoring is undefined for this tokenizer/prompt format"
        )
    return full_present[:n], present, absent


# --------------------------------------------------------------------------- model helpers


@contextmanager
def _eval_mode(model):
    """Dropout off for the duration (evaluation may run mid-training); restores the old mode."""
    was_training = model.training
    model.eval()
    try:
        yield
    finally:
        model.train(was_training)


def _input_device(model) -> torch.device:
    device = getattr(model, "device", None)
    return device if isinstance(device, torch.device) else next(model.parameters()).device


def _pad_id(tokenizer) -> int:
    # The pad id only fills masked positions, so any valid id works when the tokenizer has none.
    for candidate in (tokenizer.pad_token_id, tokenizer.eos_token_id):
        if candidate is not None:
            return int(candidate)
    return 0


def _left_pad(
    seqs: Sequence[Sequence[int]], pad_id: int, device
) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(seqs), width), dtype=torch.long)
    for i, s in enumerate(seqs):
        ids[i, width - len(s) :] = torch.tensor(s, dtype=torch.long)
        mask[i, width - len(s) :] = 1
    return ids.to(device), mask.to(device)


def _batches(items: Sequence, size: int) -> Iterable[Sequence]:
    if size < 1:
        raise ValueError(f"batch_size={size} must be >= 1")
    for start in range(0, len(items), size):
        yield items[start : start + size]


# --------------------------------------------------------------------------- scoring mode


@torch.inference_mode()
def score_prompts(
    model, tokenizer, rendered_prompts: Sequence[str], batch_size: int = 8
) -> list[dict]:
    """Decide each prompt by the first-token log-probs of the two answers; also score whole answers.

    Per batch, ONE forward pass over the left-padded contexts returns logits at the last position
    only (``logits_to_keep=1``) plus the KV cache. The cache is then repeated for the two answers
    and only their remaining tokens are run through the model, so the prompt is never encoded twice
    and no full-vocabulary logits exist for prompt positions.

    Returns per prompt: ``pred`` (the answer with the larger first-token log-prob; a tie goes to
    ANSWER_ABSENT), ``logp_first_present``/``logp_first_absent`` and ``logp_full_present``/
    ``logp_full_absent`` (sum of token log-probs of the whole answer string, without EOS).
    """
    pad_id = _pad_id(tokenizer)
    results: list[dict] = []
    with _eval_mode(model):
        for batch in _batches(list(rendered_prompts), batch_size):
            splits = [answer_tokens(tokenizer, p) for p in batch]
            results.extend(_score_batch(model, splits, pad_id))
    return results


def _score_batch(
    model, splits: list[tuple[list[int], list[int], list[int]]], pad_id: int
) -> list[dict]:
    device = _input_device(model)
    ids, mask = _left_pad([ctx for ctx, _, _ in splits], pad_id, device)
    # Left padding shifts every real token; positions must count real tokens only.
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    out = model(
        input_ids=ids,
        attention_mask=mask,
        position_ids=positions,
        use_cache=True,
        logits_to_keep=1,
    )
    first = torch.log_softmax(out.logits[:, -1].float(), dim=-1)
    first_ids = torch.tensor([[p[0], a[0]] for _, p, a in splits], device=first.device)
    first_lp = first.gather(1, first_ids)  # (B, 2): present, absent

    # Continuations interleaved (item0 present, item0 absent, item1 present, ...) to line up with
    # ``batch_repeat_interleave(2)`` of the cache.
    conts = [c for _, p, a in splits for c in (p, a)]
    rest = torch.zeros(len(conts), device=first.device)
    width = max(len(c) for c in conts) - 1
    if width > 0:
        cache = out.past_key_values
        if cache is None or not hasattr(cache, "batch_repeat_interleave"):
            raise TypeError(f"{type(model).__name__} returned no expandable KV cache")
        cache.batch_repeat_interleave(2)
        # Feed each answer minus its last token; right padding here is safe because the causal
        # mask keeps real continuation tokens from ever seeing the padding after them.
        cont_ids = torch.full((len(conts), width), pad_id, dtype=torch.long)
        targets = torch.zeros((len(conts), width), dtype=torch.long)
        cont_mask = torch.zeros((len(conts), width), dtype=torch.long)
        for i, c in enumerate(conts):
            n = len(c) - 1
            if n:
                cont_ids[i, :n] = torch.tensor(c[:-1])
                targets[i, :n] = torch.tensor(c[1:])
                cont_mask[i, :n] = 1
        cont_ids, targets, cont_mask = cont_ids.to(device), targets.to(device), cont_mask.to(device)
        ctx_mask = mask.repeat_interleave(2, dim=0)
        start = ctx_mask.sum(-1, keepdim=True)
        out2 = model(
            input_ids=cont_ids,
            attention_mask=torch.cat([ctx_mask, cont_mask], dim=1),
            position_ids=start + torch.arange(width, device=device),
            past_key_values=cache,
            use_cache=True,
        )
        token_lp = torch.log_softmax(out2.logits.float(), dim=-1)
        token_lp = token_lp.gather(2, targets.to(token_lp.device).unsqueeze(-1)).squeeze(-1)
        rest = (token_lp * cont_mask.to(token_lp.device)).sum(-1).to(first.device)
    full_lp = first_lp + rest.view(-1, 2)

    results = []
    for (fp, fa), (up, ua) in zip(first_lp.tolist(), full_lp.tolist(), strict=True):
        results.append(
            {
                "pred": ANSWER_PRESENT if fp > fa else ANSWER_ABSENT,
                "logp_first_present": fp,
                "logp_first_absent": fa,
                "logp_full_present": up,
                "logp_full_absent": ua,
            }
        )
    return results


# --------------------------------------------------------------------------- generation mode


def _stop_ids(model, tokenizer) -> set[int]:
    ids: set[int] = set()
    for source in (getattr(model, "generation_config", None), tokenizer):
        eos = getattr(source, "eos_token_id", None)
        if eos is not None:
            ids.update(eos if isinstance(eos, list | tuple) else [eos])
    return {int(i) for i in ids}


def _decode_new(tokenizer, new_ids: list[int], stop: set[int]) -> str:
    cut = next((i for i, t in enumerate(new_ids) if t in stop), len(new_ids))
    text = tokenizer.decode(new_ids[:cut], skip_special_tokens=True)
    # A token cut mid-character decodes to U+FFFD already; lone surrogates would still break the
    # UTF-8 JSONL writer, so round-trip through UTF-8 with replacement.
    return text.encode("utf-8", errors="replace").decode("utf-8")


@torch.inference_mode()
def generate_prompts(
    model,
    tokenizer,
    rendered_prompts: Sequence[str],
    max_new_tokens: int = 12,
    batch_size: int = 8,
    generation_kwargs: dict | None = None,
) -> list[dict]:
    """Greedy decoding of each prompt; returns ``raw`` (new text only) and ``pred`` (parsed).

    Prompts are tokenized exactly as in scoring mode and left-padded. Text stops at the first EOS;
    an empty output parses as Invalid. ``generation_kwargs`` go to ``model.generate`` (e.g. a
    ``logits_processor``); they cannot switch sampling back on.
    """
    pad_id = _pad_id(tokenizer)
    stop = _stop_ids(model, tokenizer)
    kwargs = dict(generation_kwargs or {})
    kwargs.update(do_sample=False, max_new_tokens=max_new_tokens, pad_token_id=pad_id)
    # Greedy decoding ignores these; unsetting them keeps transformers from warning per batch.
    kwargs.update(temperature=None, top_p=None, top_k=None)
    results: list[dict] = []
    with _eval_mode(model):
        for batch in _batches(list(rendered_prompts), batch_size):
            ids, mask = _left_pad(
                [encode(tokenizer, p) for p in batch], pad_id, _input_device(model)
            )
            out = model.generate(input_ids=ids, attention_mask=mask, **kwargs)
            for row in out[:, ids.shape[1] :].tolist():
                raw = _decode_new(tokenizer, row, stop)
                results.append({"raw": raw, "pred": parse_nomiracl(raw)})
    return results


# --------------------------------------------------------------------------- probe evaluation


def _read_predictions(path: Path) -> list[dict]:
    """Records already in ``path``, repairing the end of a file left by an interrupted write."""
    if not path.exists():
        return []
    data = path.read_bytes()
    lines = data.split(b"\n")
    records = []
    for lineno, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError as exc:
            if lineno == len(lines):  # the last line, no newline after it: a torn write
                log.warning("%s: dropping a partial last line left by an interrupted run", path)
                with path.open("r+b") as fh:
                    fh.truncate(len(data) - len(line))
                return records
            raise ValueError(f"{path}:{lineno} is not valid JSON ({exc}); delete the file") from exc
    if lines[-1].strip():
        # A complete record that lost only its newline: restore it so the next append starts
        # on a line of its own.
        with path.open("ab") as fh:
            fh.write(b"\n")
    return records


def _check_resume(done: list[dict], by_id: dict[str, dict], mode: str, path: Path) -> None:
    ids = [r.get("item_id") for r in done]
    if len(set(ids)) != len(ids):
        raise ValueError(f"{path} holds duplicate item_ids; it was not written by evaluate_probe")
    foreign = [i for i in ids if i not in by_id]
    if foreign:
        raise ValueError(
            f"{path} holds {len(foreign)} item(s) that are not in rows, e.g. {foreign[:3]}: it "
            "belongs to a different item set. Use another out_path or delete the file to start over"
        )
    modes = {r.get("mode") for r in done}
    if modes - {mode}:
        raise ValueError(
            f"{path} holds {sorted(map(str, modes))} predictions; cannot resume as {mode!r}"
        )
    relabeled = [r["item_id"] for r in done if r.get("label") != by_id[r["item_id"]]["label"]]
    if relabeled:
        raise ValueError(
            f"{path}: gold labels differ from rows for {relabeled[:3]}; delete the file"
        )


def _record(row: dict, out: dict, mode: str) -> dict:
    pred = out["pred"]
    return {
        "item_id": row["item_id"],
        "sample_id": row["sample_id"],
        "query_id": row["query_id"],
        "lang": row["lang"],
        "label": row["label"],
        "pred": pred,
        "correct": pred == row["label"],  # the label is never Invalid, so Invalid is wrong
        "invalid": pred == INVALID,
        "raw": out.get("raw"),
        **{c: out.get(c) for c in SCORE_COLUMNS},
        "mode": mode,
    }


def evaluate_probe(
    model,
    tokenizer,
    rows: Sequence[dict],
    out_path: str | os.PathLike,
    mode: str = "scoring",
    prompt_format: str = "auto",
    batch_size: int = 8,
    max_new_tokens: int = 12,
    progress: bool = True,
    generation_kwargs: dict | None = None,
) -> pd.DataFrame:
    """Evaluate probe ``rows`` and return one prediction row per item (columns ``PRED_COLUMNS``).

    Prompts are rendered with ``probe.render_prompt`` -- the text training used. Predictions are
    appended to ``out_path`` (JSONL) and flushed after every batch; items already there are
    skipped, so a rerun resumes. The file must hold a subset of ``rows`` scored in the same
    ``mode``, otherwise ValueError. Items are batched longest first to limit padding, and the
    returned frame (old + new items) follows the order of ``rows``.
    """
    if mode not in MODES:
        raise ValueError(f"mode={mode!r}; choose one of {', '.join(MODES)}")
    if batch_size < 1:
        raise ValueError(f"batch_size={batch_size} must be >= 1")
    rows = list(rows)
    if not rows:
        raise ValueError("rows is empty: there are no probe items to evaluate")
    by_id: dict[str, dict] = {}
    for r in rows:
        if r["item_id"] in by_id:
            raise ValueError(f"item_id {r['item_id']!r} occurs more than once in rows")
        by_id[r["item_id"]] = r
    path = Path(out_path)
    done = _read_predictions(path)
    _check_resume(done, by_id, mode, path)
    done_ids = {r["item_id"] for r in done}
    pending = [r for r in rows if r["item_id"] not in done_ids]
    rendered = {r["item_id"]: render_prompt(r["prompt"], tokenizer, prompt_format) for r in pending}
    lengths = {i: len(encode(tokenizer, text)) for i, text in rendered.items()}
    pending.sort(key=lambda r: -lengths[r["item_id"]])  # stable: ties keep the order of rows

    from tqdm.auto import tqdm

    new: list[dict] = []
    path.parent.mkdir(parents=True, exist_ok=True)
    with (
        path.open("a", encoding="utf-8") as fh,
        tqdm(
            total=len(rows), initial=len(done), disable=not progress, desc=mode, unit="item"
        ) as bar,
    ):
        for batch in _batches(pending, batch_size):
            prompts = [rendered[r["item_id"]] for r in batch]
            if mode == "scoring":
                outs = score_prompts(model, tokenizer, prompts, batch_size=len(batch))
            else:
                outs = generate_prompts(
                    model, tokenizer, prompts, max_new_tokens, len(batch), generation_kwargs
                )
            records = [_record(r, o, mode) for r, o in zip(batch, outs, strict=True)]
            fh.write("".join(json.dumps(rec, ensure_ascii=False) + "\n" for rec in records))
            fh.flush()
            os.fsync(fh.fileno())
            new.extend(records)
            bar.update(len(batch))

    order = {item_id: i for i, item_id in enumerate(by_id)}
    frame = pd.DataFrame(done + new, columns=list(PRED_COLUMNS))
    frame = frame.sort_values("item_id", key=lambda s: s.map(order)).reset_index(drop=True)
    # Generation mode has no scores: None in the file, NaN (not object) in the frame.
    return frame.astype({"correct": bool, "invalid": bool, **dict.fromkeys(SCORE_COLUMNS, float)})


def load_eval_model(profile, adapter_dir: str | os.PathLike | None = None):
    """(model, tokenizer) of the profile's model, plus the LoRA adapter in ``adapter_dir``."""
    from xlalign.models import load_model

    model, tokenizer = load_model(profile)
    if adapter_dir is not None:
        adapter = Path(adapter_dir)
        if not (adapter / "adapter_config.json").exists():
            raise FileNotFoundError(
                f"{adapter} holds no adapter_config.json; pass the directory a training run saved "
                "its LoRA adapter to, or adapter_dir=None for the base model"
            )
        from peft import PeftModel

        model = PeftModel.from_pretrained(model, str(adapter))  # inference-only by default
    model.eval()
    return model, tokenizer


def agreement(scoring_df: pd.DataFrame, generation_df: pd.DataFrame) -> dict:
    """How often generation, where it gives a valid answer, decides as scoring does.

    Both frames must cover the same items. ``agreement`` = n_agree / n_generation_valid (NaN when
    generation is never valid); ``agree_over_all`` = n_agree / n_items.
    """
    from xlalign.metrics import is_invalid

    frames = {"scoring_df": scoring_df, "generation_df": generation_df}
    for name, df in frames.items():
        if df["item_id"].duplicated().any():
            raise ValueError(f"{name} repeats item_ids")
    scored = scoring_df.set_index("item_id")["pred"]
    generated = generation_df.set_index("item_id")["pred"]
    if set(scored.index) != set(generated.index):
        diff = sorted(set(scored.index) ^ set(generated.index))
        raise ValueError(f"the two frames cover different items, e.g. {diff[:3]}")
    generated = generated.reindex(scored.index)
    valid = ~is_invalid(generated)
    agree = valid & generated.eq(scored)
    n_items, n_valid, n_agree = len(scored), int(valid.sum()), int(agree.sum())
    return {
        "n_items": n_items,
        "n_generation_valid": n_valid,
        "n_agree": n_agree,
        "agreement": n_agree / n_valid if n_valid else math.nan,
        "agree_over_all": n_agree / n_items if n_items else math.nan,
    }
