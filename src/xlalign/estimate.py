"""How long a notebook, or the chain, will take on this machine: measured throughput x counted work.

``measure(profile)`` times, in a few seconds and on the profile's model in its resolved dtype, a
scoring forward over real probe prompts, one LoRA forward+backward, a few decoding steps, a model
load and the import a notebook kernel pays. ``estimate_plan`` multiplies these by the work that
``xlalign.plan`` counts (prompt tokens scored, training steps x tokens per step, CALM samples x new
tokens, probe items, model loads). The cost model is this project's, not the papers'.

    from xlalign.estimate import estimate_notebook, about
    print(about("notebook 03's aligned arm", estimate_notebook(profile, "03")))
"""

from __future__ import annotations

import json
import math
import os
import platform
import statistics
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from xlalign.config import Profile
from xlalign.plan import ModelRun, NotebookPlan, format_seconds, plan_chain, plan_notebook

# Our constants, not measured per machine (seconds); calibrated against smoke and cpu runs here.
KERNEL_START_S = 3.0  # papermill + a Jupyter kernel, beyond the imports that ``measure`` times
TRAIN_SETUP_S = 4.0  # TRL trainer construction, dataset mapping, adapter save
BENCH_SETUP_S = 6.0  # lm-eval task building per benchmark run
BENCH_TOKENS_PER_REQUEST = 96  # local stand-in tasks: a short context + one choice
BENCH_REQUESTS_PER_ITEM = 4  # multiple choice: one log-likelihood request per option
# A CALM prompt's tokens where the task's items cannot be read (a hub task offline).
CALM_PROMPT_TOKENS = 160
# Notebook 07's build_report: tables and ~20 figures of ours (no model, so bf16 and fp32 alike); the
# one fixed cost the counted work does not cover. 34 s here before the vectorized AUROC bootstrap;
# after it the whole notebook took 12 s, kernel start and imports included.
REPORT_BUILD_S = 3.0
CACHE_MAX_AGE_S = 24 * 3600
TOKEN_SAMPLE_PER_LANG = 8


@dataclass
class Throughput:
    """Seconds per unit of work on this machine for one model and dtype."""

    model: str
    dtype: str
    device: str
    load_s: float  # one (cached) model load
    forward_s_per_token: float  # scoring prefill, at the profile's eval batch size
    train_s_per_token: float  # LoRA forward + backward, per token of the batch
    decode_s_per_step: float  # one decoding step of a batch of ``decode_batch`` rows
    decode_batch: int
    startup_s: float  # a notebook kernel's imports
    tokenize_s_per_row: float  # tokenizing one probe prompt (the data steps' length checks)
    tokens_per_lang: dict[str, float] = field(default_factory=dict)  # mean rendered prompt tokens
    answer_tokens: float = 6.0
    n_layers: int = 0  # the model's decoder layers (0: unknown, no frozen-state reuse counted)
    calm_prompt_tokens: float = CALM_PROMPT_TOKENS  # mean CALM prompt of the first task, measured
    probe_s_per_token: float = 0.0  # the frozen-feature probe's pass (every layer's hidden states)
    measured_s: float = 0.0  # how long the measurement took
    measured_at: float = 0.0
    host: str = ""

    def to_dict(self) -> dict:
        return asdict(self)


def _host() -> str:
    return f"{platform.node()}/{os.cpu_count()}cpu"


def _cache_file(profile: Profile, dtype: str) -> Path:
    # v2: the measurement gained the CALM prompt length and the probe pass (older files lack them)
    safe = f"{profile.model.name}-{dtype}-{_host()}-v2".replace("/", "_")
    return profile.cache_path / "throughput" / f"{safe}.json"


NOTEBOOK_IMPORTS = "import xlalign.experiments, xlalign.report, xlalign.calm, peft, trl"


def _import_seconds() -> float:
    """What importing every notebook's modules costs a fresh kernel, timed in a fresh interpreter.

    This process imports them first where it has not yet (``make reproduce``): the first import on a
    fresh clone or after a reboot reads everything from a cold disk (24 s measured here against 6 s
    warm), which each notebook's kernel, started later, no longer pays."""
    if "transformers" not in sys.modules:
        exec(NOTEBOOK_IMPORTS, {})  # noqa: S102 - a fixed import line
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-c", NOTEBOOK_IMPORTS], check=False, capture_output=True)
    return time.perf_counter() - t0


def cached_throughput(profile: Profile) -> Throughput | None:
    """The last measurement of this model on this host, if one is younger than a day (no model is
    loaded: what a dry run can show)."""
    from xlalign.models import dtype_record

    cache = _cache_file(profile, str(dtype_record(profile).get("resolved", profile.model.dtype)))
    try:
        d = json.loads(cache.read_text())
        if time.time() - d.get("measured_at", 0) < CACHE_MAX_AGE_S:
            return Throughput(**d)
    except (OSError, ValueError, TypeError):
        pass
    return None


def measure(profile: Profile, fresh: bool = False, startup: bool = True) -> Throughput:
    """Time the profile's model on this machine (a few seconds; cached for a day per model, dtype
    and host unless ``fresh``). ``startup``: also time a kernel's imports in a subprocess."""
    import torch

    from xlalign.evaluation.scoring import score_prompts
    from xlalign.lm import encode
    from xlalign.models import dtype_record, load_model, lora_config
    from xlalign.probe.build import render_prompt
    from xlalign.probe.dataset import build_probe_data

    dtype = str(dtype_record(profile).get("resolved", profile.model.dtype))
    cache = _cache_file(profile, dtype)
    if not fresh and (known := cached_throughput(profile)) is not None:
        return known
    t_all = time.perf_counter()
    startup_s = _import_seconds() if startup else 0.0
    t0 = time.perf_counter()
    model, tok = load_model(profile)
    load_s = time.perf_counter() - t0
    model.eval()
    fmt = profile.model.prompt_format

    # Mean rendered prompt length per language, and the cost of tokenizing, on a sample.
    data = build_probe_data(profile)
    by_lang: dict[str, list[str]] = {}
    for r in data.test_rows:
        if len(by_lang.setdefault(r["lang"], [])) < TOKEN_SAMPLE_PER_LANG:
            by_lang[r["lang"]].append(render_prompt(r["prompt"], tok, fmt))
    t0 = time.perf_counter()
    lengths = {lang: [len(encode(tok, p)) for p in ps] for lang, ps in by_lang.items()}
    n_rows = sum(len(v) for v in lengths.values())
    tokenize_s = (time.perf_counter() - t0) / max(1, n_rows)
    tokens_per_lang = {lang: float(statistics.mean(v)) for lang, v in lengths.items()}
    answers = [len(tok(a, add_special_tokens=False)["input_ids"]) for a in _answers()]
    sample = [by_lang[lang][0] for lang in sorted(by_lang)]

    with torch.inference_mode():
        score_prompts(model, tok, sample[:1], batch_size=1)  # warm-up (allocations, lazy init)
        n = min(len(sample), max(2, min(profile.eval.batch_size, 4)))
        t0 = time.perf_counter()
        score_prompts(model, tok, sample[:n], batch_size=n)
        dt = time.perf_counter() - t0
    fwd = dt / sum(len(encode(tok, p)) for p in sample[:n])

    from xlalign.evaluation.probing import hidden_states

    n_layers = model.config.get_text_config().num_hidden_layers
    with torch.inference_mode():
        t0 = time.perf_counter()
        hidden_states(model, tok, sample[:n], range(n_layers + 1), batch_size=n, progress=False)
        dt = time.perf_counter() - t0
    probe = dt / sum(len(encode(tok, p)) for p in sample[:n])
    calm_tokens = _calm_prompt_tokens(profile, tok)

    decode_batch = max(1, profile.calm.sample_batch_size)
    ids = torch.randint(10, 1000, (decode_batch, 32))
    steps = 6
    with torch.inference_mode():
        t0 = time.perf_counter()
        model.generate(
            input_ids=ids,
            attention_mask=torch.ones_like(ids),
            max_new_tokens=steps,
            min_new_tokens=steps,
            do_sample=False,
            pad_token_id=0,
        )
        dt = time.perf_counter() - t0
    decode = max(1e-4, (dt - ids.numel() * fwd) / steps)

    from peft import get_peft_model

    peft_model = get_peft_model(model, lora_config(profile, model))
    peft_model.train()
    batch = [encode(tok, p) for p in sample[:2]]
    width = min(len(b) for b in batch)
    x = torch.tensor([b[:width] for b in batch])

    times = []
    for _ in range(2):  # the first is a warm-up (autograd graph, LoRA weights)
        t0 = time.perf_counter()
        out = peft_model(input_ids=x, logits_to_keep=8)
        out.logits.float().logsumexp(-1).mean().backward()
        peft_model.zero_grad()
        times.append(time.perf_counter() - t0)
    train = times[-1] / x.numel()
    del peft_model, model, out
    import gc

    gc.collect()
    # The first load may convert the GGUF once or read a cold disk (22 s measured on a fresh clone
    # against 3-6 s later); every notebook's loads come after it, so the second load is the figure.
    t0 = time.perf_counter()
    model, _ = load_model(profile)
    load_s = min(load_s, time.perf_counter() - t0)
    del model
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()  # the chain's notebooks need the memory

    th = Throughput(
        model=profile.model.name,
        dtype=dtype,
        device="cuda" if torch.cuda.is_available() else "cpu",
        load_s=round(load_s, 3),
        forward_s_per_token=fwd,
        train_s_per_token=train,
        decode_s_per_step=decode,
        decode_batch=decode_batch,
        startup_s=round(startup_s, 3),
        tokenize_s_per_row=tokenize_s,
        tokens_per_lang=tokens_per_lang,
        answer_tokens=float(statistics.mean(answers)),
        n_layers=int(n_layers),
        calm_prompt_tokens=calm_tokens,
        probe_s_per_token=probe,
        measured_s=round(time.perf_counter() - t_all, 2),
        measured_at=time.time(),
        host=_host(),
    )
    try:
        cache.parent.mkdir(parents=True, exist_ok=True)
        cache.write_text(json.dumps(th.to_dict(), indent=1))
    except OSError:
        pass  # a read-only cache only costs a new measurement next time
    return th


def _calm_prompt_tokens(profile: Profile, tok) -> float:
    """Mean rendered prompt tokens of the first CALM task's items in its training languages (a
    sample of ``TOKEN_SAMPLE_PER_LANG`` per language); ``CALM_PROMPT_TOKENS`` where they cannot be
    read here (a hub task offline)."""
    from xlalign.calm.items import load_task_items
    from xlalign.calm.prompts import build_prompt
    from xlalign.lm import encode
    from xlalign.probe.build import render_prompt

    tasks = list(getattr(profile.calm, "tasks", None) or ["corpus_mcq"])
    langs = list(profile.calm.train_langs)
    try:
        items = load_task_items(profile, tasks[0], langs).items
    except Exception:  # noqa: BLE001 - an estimate falls back to the constant, it does not fail
        return float(CALM_PROMPT_TOKENS)
    picked: dict[str, list] = {}
    for item in items:
        lang = getattr(item, "lang", None)
        if lang in langs and len(picked.setdefault(lang, [])) < TOKEN_SAMPLE_PER_LANG:
            picked[lang].append(item)
    fmt = profile.model.prompt_format
    lengths = [
        len(encode(tok, render_prompt(build_prompt(item, lang), tok, fmt)))
        for lang, chosen in picked.items()
        for item in chosen
    ]
    return float(statistics.mean(lengths)) if lengths else float(CALM_PROMPT_TOKENS)


def _answers() -> list[str]:
    from xlalign.probe.build import ANSWER_ABSENT, ANSWER_PRESENT

    return [ANSWER_PRESENT, ANSWER_ABSENT]


# --------------------------------------------------------------------------- the cost model


def _tokens(rows: list[dict], th: Throughput) -> float:
    """Prompt tokens of ``rows``, from the measured mean per language."""
    default = statistics.mean(th.tokens_per_lang.values()) if th.tokens_per_lang else 400.0
    return sum(th.tokens_per_lang.get(r.get("lang"), default) for r in rows)


def _reused_share(p: Profile | None, th: Throughput) -> float:
    """The share of a forward an already-scored prompt still costs with ``train.reuse_frozen``: the
    adapted top layers only (1.0 where nothing is frozen or the layer count is unknown)."""
    if p is None or not getattr(p.train, "reuse_frozen", False) or th.n_layers < 1:
        return 1.0
    top = p.lora.top_layers or 0
    return top / th.n_layers if 0 < top < th.n_layers else 1.0


def _trained_rows(run: ModelRun, th: Throughput) -> tuple[list[dict], float]:
    """The pairs a training run trains on, from the trainer's own batch plan (``GroupedBatchSampler``
    with its max_steps stop, epochs in turn), and their prompt tokens as padded per micro-batch (each
    row as long as the batch's longest language, from the measured means per language)."""
    from xlalign.training.sampling import GroupedBatchSampler

    t, pairs = run.profile.train, run.pairs
    steps = run.steps or 0
    if not pairs or steps <= 0:
        return [], 0.0
    unit = t.grad_accum  # one process: the planner estimates in-process runs
    try:
        sampler = GroupedBatchSampler.for_pairs(pairs, t, run.profile.seed)
    except (ValueError, KeyError, RuntimeError):
        # Pairs the sampler refuses are refused by the trainer too; count the mean pair then.
        mean = _tokens(pairs, th) / len(pairs)
        rows = steps * t.batch_size * t.grad_accum
        return [pairs[i % len(pairs)] for i in range(rows)], rows * mean
    batches: list[list[int]] = []
    epoch = 0
    while len(batches) < steps * unit:
        plan = sampler.plan(epoch)
        if not plan:
            break
        batches += plan
        epoch += 1
    batches = batches[: steps * unit]
    default = statistics.mean(th.tokens_per_lang.values()) if th.tokens_per_lang else 400.0
    seen, padded = [], 0.0
    for b in batches:
        rows = [pairs[i] for i in b]
        seen += rows
        padded += len(rows) * max(th.tokens_per_lang.get(r.get("lang"), default) for r in rows)
    return seen, padded


def _row_key(row: dict) -> str:
    return str(row.get("prompt", row.get("sample_id", id(row))))


def run_seconds(run: ModelRun, th: Throughput, scored: set | None = None) -> float:
    """Seconds for one planned run (0 when it reuses an earlier one). ``scored``: the prompts earlier
    evaluations of the same run directory scored; with ``train.reuse_frozen`` their frozen-layer
    states are kept, so scoring them again runs the adapted layers only. Updated in place."""
    if run.reuses:
        return 0.0
    p = run.profile
    if run.kind == "eval" and scored is not None:
        share = _reused_share(p, th)
        again = [r for r in run.rows if _row_key(r) in scored]
        new = [r for r in run.rows if _row_key(r) not in scored]
        scored.update(_row_key(r) for r in new)
        tokens = _tokens(new, th) + share * _tokens(again, th)
        s = th.load_s + tokens * th.forward_s_per_token
        if p is not None and p.eval.mode == "generation":
            batches = math.ceil(len(run.rows) / max(1, p.eval.batch_size))
            s += batches * p.eval.max_new_tokens * th.decode_s_per_step
        return s
    if run.kind in ("eval", "probe"):
        per_token = th.forward_s_per_token
        if run.kind == "probe" and th.probe_s_per_token > 0:
            per_token = th.probe_s_per_token
        s = th.load_s + _tokens(run.rows, th) * per_token
        if run.kind == "eval" and p is not None and p.eval.mode == "generation":
            batches = math.ceil(len(run.rows) / max(1, p.eval.batch_size))
            s += batches * p.eval.max_new_tokens * th.decode_s_per_step
        return s
    if run.kind == "train":
        t = p.train
        seen, padded = _trained_rows(run, th)
        # One prompt encoding per pair (train.share_prompt), else chosen and rejected each in full.
        answers = 2 * th.answer_tokens * len(seen)
        prompt_tok = padded if t.share_prompt else 2 * padded
        # With train.reuse_frozen, a prompt whose frozen-layer states an earlier run of this chain
        # computed (an evaluation, or the other arm's training) skips those layers' forward.
        share = _reused_share(p, th)
        again = [r for r in seen if _row_key(r) in scored] if scored is not None else []
        saved = (1 - share) * _tokens(again, th) * th.forward_s_per_token
        if scored is not None:
            scored.update(_row_key(r) for r in seen)
        # TRL tokenizes the whole training set (prompt, chosen, rejected) before the first step.
        prep = 3 * len(run.pairs) * th.tokenize_s_per_row
        s = th.load_s + TRAIN_SETUP_S + prep + (prompt_tok + answers) * th.train_s_per_token - saved
        if t.method == "dpo":  # the reference model's forward (adapters disabled)
            s += (prompt_tok + answers) * th.forward_s_per_token
        return s
    if run.kind == "calm-sample":
        items = run.items or 0
        prompts = items / max(1, p.calm.num_samples)
        steps = math.ceil(items / max(1, run.batch_size or 1)) * (run.new_tokens or 0)
        return (
            th.load_s
            + prompts * th.calm_prompt_tokens * th.forward_s_per_token
            + steps * th.decode_s_per_step
        )
    if run.kind == "calm-train":
        # One sequence (prompt + completion) per SFT row; DPO concatenates chosen and rejected, each
        # with its prompt, and adds the reference model's forward over both.
        seq = th.calm_prompt_tokens + p.calm.max_new_tokens
        rows = (run.steps or 0) * (run.batch_size or 1)
        if run.method == "dpo":
            return TRAIN_SETUP_S + rows * 2 * seq * (th.train_s_per_token + th.forward_s_per_token)
        return TRAIN_SETUP_S + rows * seq * th.train_s_per_token
    if run.kind == "calm-eval":
        items = run.items or 0
        steps = math.ceil(items / max(1, run.batch_size or 1)) * (run.new_tokens or 0)
        return items * th.calm_prompt_tokens * th.forward_s_per_token + steps * th.decode_s_per_step
    if run.kind == "benchmark":
        requests = (run.items or 0) * BENCH_REQUESTS_PER_ITEM
        return (
            th.load_s + BENCH_SETUP_S + requests * BENCH_TOKENS_PER_REQUEST * th.forward_s_per_token
        )
    return 0.0


def notebook_seconds(nb: NotebookPlan, th: Throughput, scored: set | None = None) -> float:
    """A notebook's kernel start, its data steps and its runs. ``scored``: prompts scored earlier in
    the run (``run_seconds``); a fresh set when None, as for a notebook run on its own."""
    scored = set() if scored is None else scored
    s = th.startup_s + KERNEL_START_S
    # Each data step tokenizes the probe rows it builds for its length checks.
    s += nb.data_rows * th.tokenize_s_per_row
    if nb.notebook.startswith("07"):
        s += REPORT_BUILD_S
    return s + sum(run_seconds(r, th, scored) for r in nb.runs)


def estimate_plan(plans: list[NotebookPlan], th: Throughput) -> dict[str, float]:
    """Seconds per notebook of one chain: prompts scored by one notebook stay scored for the next."""
    scored: set = set()
    return {nb.notebook: round(notebook_seconds(nb, th, scored), 1) for nb in plans}


def estimate_chain(
    profile: Profile, th: Throughput | None = None, only: list[str] | None = None
) -> dict[str, float]:
    """Expected seconds per notebook of ``make reproduce`` (reuse across notebooks counted)."""
    th = th or measure(profile)
    return estimate_plan(plan_chain(profile, only=only), th)


def estimate_notebook(
    profile: Profile, notebook: str, alone: bool = True, th: Throughput | None = None
) -> float:
    """Expected seconds of one notebook on this machine. ``alone`` (default): run on its own in a
    fresh run directory, as in JupyterLab; False: as part of the chain (earlier runs reused)."""
    th = th or measure(profile, startup=False)
    return round(notebook_seconds(plan_notebook(profile, notebook, alone=alone), th), 1)


def estimate_runs(runs: list[ModelRun], th: Throughput) -> float:
    return round(sum(run_seconds(r, th) for r in runs), 1)


def chain_lines(estimates: dict[str, float], done: dict[str, float] | None = None) -> list[str]:
    """What ``make reproduce`` prints before it starts: one line per notebook and the total."""
    done = done or {}
    lines = []
    for nb, s in estimates.items():
        if nb in done:
            lines.append(f"  {nb:<22} done earlier in this run ({format_seconds(done[nb])})")
        else:
            lines.append(f"  {nb:<22} about {format_seconds(s)}")
    left = sum(s for nb, s in estimates.items() if nb not in done)
    lines.append(f"  {'total':<22} about {format_seconds(left)} on this machine")
    return lines


def about(what: str, seconds: float) -> str:
    """One line before a long step: ``computing X, about N min on this machine``."""
    return f"computing {what}, about {format_seconds(seconds)} on this machine"
