"""Train and evaluate one CALM variant (CALM, SFT, GT-DPO, GT-SFT) with the shared trainer.

Evaluation (greedy, or sampled as Table 6), scoring (accuracy, Consistency_2, AC3), Tables 1/3.
"""

from __future__ import annotations

import copy
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from xlalign.calm.items import gold, n_options
from xlalign.calm.parse import parse_answer
from xlalign.config import Profile, derive
from xlalign.evaluation.parse import INVALID

# --------------------------------------------------------------------------- training


def trainer_rows(rows: Sequence[dict], batching: str, columns: Sequence[str]) -> list[dict]:
    """Rows keyed for the trainer's ``clustered`` sampler, which needs unique (sample_id, lang).

    CALM has several pairs per question and language, so the keys carry a per-(question,
    language) counter. ``aligned`` (beyond the paper): sample_id = question, lang = "fr#1", so a
    question's pairs stay together in consecutive batches. ``shuffled`` (the paper): every pair is
    its own group, so ``clustered`` shuffles pairs freely. (``uncoupled`` cannot serve here: it keeps
    ``batch_size`` languages per group and refuses groups that lack a language.)
    """
    seen: Counter = Counter()
    out = []
    for r in rows:
        base = (r["qid"], r["lang"])
        k = seen[base]
        seen[base] += 1
        if batching == "aligned":
            sid, tag = r["qid"], f"{r['lang']}#{k}"
        else:
            sid, tag = f"{r['qid']}|{r['lang']}#{k}", r["lang"]
        out.append({c: r[c] for c in columns} | {"sample_id": sid, "lang": tag})
    return out


def calm_eval_batch_size(profile: Profile) -> int:
    """Prompts per batch of CALM's evaluation decoding: ``calm.eval_batch_size``, else the probe's
    ``eval.batch_size``."""
    return profile.calm.eval_batch_size or profile.eval.batch_size


def calm_train_profile(profile: Profile, method: str, batch_size: int) -> Profile:
    """The derived profile the shared trainer runs CALM with: ``calm.train`` and ``calm.lora`` (paper
    Table 5) as its train and lora sections, ``method`` and ``batch_size`` set; SFT trains at
    ``calm.sft_learning_rate`` without warmup (Table 5)."""
    c = profile.calm
    train = {"method": method, "batch_size": batch_size}
    if method == "sft":
        train |= {"learning_rate": c.sft_learning_rate, "warmup_ratio": 0.0}
    return derive(
        profile, overrides={f"train.{k}": v for k, v in train.items()}, train=c.train, lora=c.lora
    )


def _train_variant(
    profile, method, rows, batching, batch_size, out_dir, model, tokenizer, init_adapter=None
) -> dict:
    """Train one variant on its own copy of ``model``; ``init_adapter``: continue training that
    LoRA adapter (Table 10's sequential steps) instead of a fresh one."""
    from xlalign.training.run import train_preference, train_sft

    if not rows:
        return {"skipped": "no training rows"}
    bs = max(1, min(batch_size, len(rows)))
    prof = calm_train_profile(profile, method, bs)
    columns = ("prompt", "completion") if method == "sft" else ("prompt", "chosen", "rejected")
    data = trainer_rows(rows, batching, columns)
    # Each variant trains its own copy: peft injects LoRA layers into the model it is given.
    if init_adapter:
        from peft import PeftModel

        policy = PeftModel.from_pretrained(copy.deepcopy(model), init_adapter, is_trainable=True)
    else:
        policy = copy.deepcopy(model)
    if method == "sft":
        result = train_sft(prof, data, out_dir, model=policy, tokenizer=tokenizer)
    else:
        result = train_preference(prof, data, out_dir, model=policy, tokenizer=tokenizer)
    del policy
    return {
        "rows": len(rows),
        "batch_size": bs,
        "batching": batching,
        "steps": result.steps,
        "wall_time_s": result.wall_time_s,
        "adapter_dir": str(result.adapter_dir),
        "train_loss": result.metrics.get("train_loss"),
        "init_adapter": init_adapter,
    }


# --------------------------------------------------------------------------- evaluation


def predict(
    model,
    tokenizer,
    questions: dict[str, dict[str, Any]],
    langs: Sequence[str],
    prompts: dict[tuple[str, str], str],
    max_new_tokens: int,
    batch_size: int,
    *,
    decoding: str = "greedy",
    temperature: float = 1.0,
    top_p: float = 0.9,
    seed: int = 0,
) -> pd.DataFrame:
    """CoT answers with the sampling prompt, parsed: one row per (question, language).

    ``decoding`` "greedy" (deterministic), or "sample": one answer at ``temperature`` / ``top_p``
    (CALM Table 6: T = 1, top-p 0.9), seeded, so a rerun gives the same answers.
    """
    from xlalign.generation import greedy_generate, sample_shared_prefill

    keys = [(q, lang) for q in questions for lang in langs]
    texts_in = [prompts[k] for k in keys]
    if decoding == "greedy":
        texts = greedy_generate(
            model, tokenizer, texts_in, max_new_tokens, batch_size, progress=False
        )
    elif decoding == "sample":
        outs = sample_shared_prefill(
            model, tokenizer, texts_in, 1, temperature=temperature, top_p=top_p,
            max_new_tokens=max_new_tokens, seed=seed, batch_size=batch_size,
        )  # fmt: skip
        texts = [o[0] for o in outs]
    else:
        raise ValueError(f"decoding={decoding!r}; use 'greedy' or 'sample'")
    rows = []
    for (q, lang), raw in zip(keys, texts, strict=True):
        item = questions[q][lang]
        label = gold(item)
        answer = parse_answer(raw, lang, n_options(item))
        rows.append(
            {
                "item_id": f"{q}.{lang}",
                "sample_id": q,
                "lang": lang,
                "label": label,
                "pred": answer or INVALID,
                "correct": answer == label,
                "raw": raw,
            }
        )
    return pd.DataFrame(rows)


def score(preds: pd.DataFrame) -> dict:
    """Per-language accuracy, ACC_avg, Consistency_2 and AC3 (percent), via xlalign.evaluation.metrics."""
    from xlalign.evaluation.metrics import summarize

    s = summarize(preds, s=2)
    return {
        "accuracy": {k: float(v) for k, v in s["accuracy"].items()},
        "acc_avg": s["acc_avg"],
        "consistency": s["consistency"],
        "ac3": s["ac3"],
        "invalid_rate": {k: float(v) for k, v in s["invalid_rate"].items()},
    }


# Our variant names -> the block names of the transcribed CALM Tables 1 and 3 (data/paper).
PAPER_BLOCKS = {
    "base": "base",
    "sft": "sft",
    "calm": "calm",
    "gt_sft": "sft_gt",
    "gt_dpo": "dpo_gt",
}


def results_table(
    calm_dir: str | Path,
    model: str,
    langs: Sequence[str],
    seed: int = 0,
    n_resamples: int = 1000,
    qid_prefix: str | None = None,
) -> pd.DataFrame:
    """CALM Tables 1 and 3 in the tidy schema, from ``calm_dir/predictions/<variant>.jsonl``.

    One block per evaluated variant (named as in the papers' tables where they have one), accuracy
    per language with bootstrap CIs, ACC_avg, Consistency_2 and AC3, and gains over ``base``.
    A run of several tasks (``calm/tasks.json``, one folder per task) gives every task's table,
    its columns prefixed by the task as in the paper's Table 1 (``xcsqa_english``, ``medqa_ac3``),
    each in the languages that task was evaluated in (its ``metrics.json``); ``langs`` is unused.
    MedQA, whose banks are not translations of each other, is shown per bank as in Table 9
    (``medqa_us_*``, ``medqa_cn_*``), by its native languages as in Table 1 (``medqa_english``:
    the US bank in English, ``medqa_chinese``: the Mainland bank in Chinese, ``medqa_acc_avg``:
    their mean), and pooled (``medqa_all_*``, ours). ``qid_prefix`` keeps only those questions.
    """
    import json

    from xlalign.evaluation.predictions import read_predictions_frame
    from xlalign.report.tables import calm_table

    tasks_file = Path(calm_dir) / "tasks.json"
    if not (Path(calm_dir) / "predictions").is_dir() and tasks_file.exists():
        frames = []
        for task in json.loads(tasks_file.read_text())["tasks"]:
            task_dir = Path(calm_dir) / task
            task_langs = json.loads((task_dir / "metrics.json").read_text())["eval_langs"]
            if task == "medqa":
                frames.append(_medqa_table(task_dir, model, task_langs, seed, n_resamples))
                continue
            tidy = results_table(task_dir, model, task_langs, seed, n_resamples)
            frames.append(tidy.assign(column=task + "_" + tidy["column"]))
        return pd.concat(frames, ignore_index=True)
    pred_dir = Path(calm_dir) / "predictions"
    files = {f.stem: f for f in sorted(pred_dir.glob("*.jsonl"))}
    if "base" not in files:
        raise FileNotFoundError(f"{pred_dir}: no base.jsonl; run the CALM chain first")
    # Other variants in the order the chain ran them (Table 10's steps in order), where it says.
    metrics_file = Path(calm_dir) / "metrics.json"
    ran = list(json.loads(metrics_file.read_text())["evaluation"]) if metrics_file.exists() else []
    extra = sorted(
        (n for n in files if n not in PAPER_BLOCKS),
        key=lambda n: (n not in ran, ran.index(n) if n in ran else 0, n),
    )
    order = [n for n in PAPER_BLOCKS if n in files] + extra
    frames, base = [], None
    for name in order:
        preds = read_predictions_frame(files[name], dtype={"sample_id": str, "label": str})
        if qid_prefix is not None:
            preds = preds[preds["sample_id"].str.startswith(qid_prefix)]
        tidy = calm_table(
            preds,
            "ours_calm_t01_03",
            PAPER_BLOCKS.get(name, name),
            model,
            langs,
            baseline=base,
            with_ci=True,
            seed=seed,
            n_resamples=n_resamples,
        )
        base = tidy if name == "base" else base
        frames.append(tidy)
    return pd.concat(frames, ignore_index=True)


# MedQA banks: question-id prefix, Table 9's column prefix, the bank's native language column.
_MEDQA_BANK_COLUMNS = {
    "medqa-us-": ("medqa_us_", "english"),
    "medqa-mainland-": ("medqa_cn_", "chinese"),
}


def _medqa_table(task_dir: Path, model: str, langs, seed: int, n_resamples: int) -> pd.DataFrame:
    pooled = results_table(task_dir, model, langs, seed, n_resamples)
    frames = [pooled.assign(column="medqa_all_" + pooled["column"])]
    natives = []
    for prefix, (col_prefix, native) in _MEDQA_BANK_COLUMNS.items():
        preds = pd.read_json(task_dir / "predictions" / "base.jsonl", lines=True, dtype=False)
        if not preds["sample_id"].astype(str).str.startswith(prefix).any():
            continue  # that bank was not loaded (its native language is not trained on)
        bank = results_table(task_dir, model, langs, seed, n_resamples, qid_prefix=prefix)
        frames.append(bank.assign(column=col_prefix + bank["column"]))
        natives.append(bank[bank["column"] == native].assign(column="medqa_" + native))
    if natives:
        both = pd.concat(natives, ignore_index=True)
        frames += natives
        avg = both.groupby(["table", "block", "model"], sort=False, as_index=False)["value"].mean()
        base = avg.loc[avg["block"] == "base", "value"]
        avg["delta"] = avg["value"] - base.iloc[0] if len(base) else float("nan")
        avg.loc[avg["block"] == "base", "delta"] = float("nan")
        frames.append(avg.assign(column="medqa_acc_avg", ci_low=float("nan"), ci_high=float("nan")))
    return pd.concat(frames, ignore_index=True)[pooled.columns]


def _load_adapter(model, adapter_dir: str):
    from peft import PeftModel

    tuned = PeftModel.from_pretrained(copy.deepcopy(model), adapter_dir)
    tuned.eval()
    return tuned
