"""Evaluate the probe and keep per-item predictions: JSONL written batch by batch, resumed after a kill.

Every reader of a predictions file goes through ``read_predictions`` (a torn last line is dropped
with a warning; anything else corrupt is an error). Also loads the model (base or adapter) an evaluation runs on, and compares scoring with generation.
"""

from __future__ import annotations

import json
import logging
import math
import os
import warnings
from collections.abc import Sequence
from pathlib import Path

import pandas as pd

from xlalign.evaluation.parse import INVALID
from xlalign.evaluation.scoring import (
    MODES,
    PRED_COLUMNS,
    SCORE_COLUMNS,
    generate_prompts,
    score_prompts,
)
from xlalign.lm import batches, encode
from xlalign.probe.build import render_prompt

log = logging.getLogger(__name__)

# Share of items with a numerical fault (NaN/inf scores) above which ``evaluate_probe`` fails: a
# model that returns NaN would otherwise read as a model that answers Invalid, and accuracy over
# such a run means nothing.
MAX_FAULT_SHARE = 0.01


class NumericalFaultError(RuntimeError):
    """The model produced non-finite scores for more than ``MAX_FAULT_SHARE`` of the items."""


# --------------------------------------------------------------------------- reading predictions


def read_predictions(path: str | os.PathLike, repair: bool = False) -> list[dict]:
    """The records of a JSONL predictions file, without a tail torn by a killed writer.

    A kill can leave the file empty (no record yet) or its last line half-written. Such a last
    line (no newline after it and not a JSON object) is dropped with a ``RuntimeWarning`` that
    says how many lines and bytes went; a complete last record that only lost its newline is kept.
    A line that is not valid JSON anywhere else is not a torn write: ValueError naming the file and
    line. Blank lines are skipped. With ``repair`` the file itself is fixed for appending: the torn
    tail truncated away, a missing final newline restored. A missing file is FileNotFoundError.
    """
    path = Path(path)
    data = path.read_bytes()
    lines = data.split(b"\n")  # the last element is what follows the last newline ("" if none)
    records: list[dict] = []
    for lineno, line in enumerate(lines, 1):
        if not line.strip():
            continue
        last = lineno == len(lines)
        try:
            rec = json.loads(line)
            if not isinstance(rec, dict):
                raise ValueError(f"a JSON {type(rec).__name__}, not an object")
        except ValueError as exc:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
            if not last:
                raise ValueError(
                    f"{path}:{lineno} is not a valid prediction record ({exc}); it is not a torn "
                    "write at the end of the file, so the file is corrupt: delete it to start over"
                ) from exc
            warnings.warn(
                f"{path}: dropped 1 half-written last line ({len(line)} bytes) left by an "
                f"interrupted write; {len(records)} complete record(s) kept",
                RuntimeWarning,
                stacklevel=2,
            )
            if repair:
                with path.open("r+b") as fh:
                    fh.truncate(len(data) - len(line))
            return records
        records.append(rec)
    if repair and lines[-1].strip():
        # A complete record that lost only its newline: restore it so the next append starts
        # on a line of its own.
        with path.open("ab") as fh:
            fh.write(b"\n")
    return records


def predictions_frame(records: Sequence[dict]) -> pd.DataFrame:
    """Probe prediction records as ``evaluate_probe`` returns them: columns ``PRED_COLUMNS``."""
    frame = pd.DataFrame(list(records), columns=list(PRED_COLUMNS))
    # Generation mode has no scores: None in the file, NaN (not object) in the frame.
    return frame.astype({"correct": bool, "invalid": bool, **dict.fromkeys(SCORE_COLUMNS, float)})


def read_predictions_frame(path: str | os.PathLike, dtype: dict | None = None) -> pd.DataFrame:
    """``read_predictions(path)`` as a DataFrame (columns as in the file), ``dtype`` applied."""
    frame = pd.DataFrame(read_predictions(path))
    return frame.astype(dtype) if dtype and len(frame) else frame


# --------------------------------------------------------------------------- probe evaluation


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
        "fault": out.get("fault"),
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
    ``mode``, otherwise ValueError; a tail torn by a kill is dropped and cut from the file
    (``read_predictions``). Items are batched longest first to limit padding, and the returned
    frame (old + new items) follows the order of ``rows``.

    Items whose scores are NaN or infinite are Invalid with a ``fault``; when they are more than
    ``MAX_FAULT_SHARE`` of the items, NumericalFaultError (after the file is written).
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
    done = read_predictions(path, repair=True) if path.exists() else []
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
        for batch in batches(pending, batch_size):
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
    frame = predictions_frame(done + new)
    frame = frame.sort_values("item_id", key=lambda s: s.map(order)).reset_index(drop=True)
    faults = int(frame["fault"].notna().sum())
    if faults > MAX_FAULT_SHARE * len(frame):
        raise NumericalFaultError(
            f"{faults} of {len(frame)} items ({faults / len(frame):.1%}) in {path} have no usable "
            f"scores ({frame['fault'].dropna().iloc[0]}): the model's outputs are NaN or "
            f"infinite, which no accuracy can be computed from (more than MAX_FAULT_SHARE = "
            f"{MAX_FAULT_SHARE:.0%}). Their predictions are in the file, marked Invalid with a "
            "'fault'; check the weights and dtype, then delete the file to evaluate again"
        )
    if faults:
        log.warning("%s: %d of %d items have non-finite scores (Invalid)", path, faults, len(frame))
    return frame


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
    from xlalign.evaluation.metrics import is_invalid

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
