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
from xlalign.plan import (
    REPORT_PREFIX,
    ModelRun,
    NotebookPlan,
    format_seconds,
    plan_chain,
    plan_notebook,
)

# Our constants, not measured per machine (seconds); calibrated against smoke and cpu runs here.
KERNEL_START_S = 3.0  # papermill + a Jupyter kernel, beyond the imports that ``measure`` times
TRL_ENCODES_PER_PAIR = {"orpo": 5, "dpo": 3}  # tokenizer calls per preference pair before step 1
TRAIN_SETUP_S = 4.0  # TRL trainer construction, dataset mapping, adapter save
BENCH_SETUP_S = 6.0  # lm-eval task building per benchmark run
BENCH_TOKENS_PER_REQUEST = 96  # a hub task's request (ours: a short context + one choice)
BENCH_REQUESTS_PER_ITEM = 4  # where the plan counted no requests: one per option of 4
# A CALM prompt's tokens where the task's items cannot be read (a hub task offline).
CALM_PROMPT_TOKENS = 160
# CALM's training cost is timed on one sequence of at most this many tokens (a prompt + completion).
CALM_MEASURE_TOKENS = 320
# Notebook 07's build_report: tables and ~20 figures of ours (no model, so bf16 and fp32 alike); the
# one fixed cost the counted work does not cover. 34 s here before the vectorized AUROC bootstrap;
# after it the whole notebook took 12 s, kernel start and imports included.
REPORT_BUILD_S = 3.0
CACHE_MAX_AGE_S = 24 * 3600
TOKEN_SAMPLE_PER_LANG = 8
# The run kinds whose step in run.json is named ``<kind>/<label>`` (experiments.steps).
STEP_KINDS = ("train", "eval")


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
    # CALM's decoding loops at its prompt length: one step of the sampler (sample_batch_size prompts x
    # m rows, top-p) and of greedy evaluation (calm.eval_batch_size rows); 0 where not measured
    sample_decode_s_per_step: float = 0.0
    greedy_decode_s_per_step: float = 0.0
    # CALM's LoRA (every layer) forward + backward, and the DPO reference model's forward (no
    # gradient), per token, projecting the completion positions only (``_calm_train_s``)
    calm_train_s_per_token: float = 0.0
    calm_ref_s_per_token: float = 0.0
    tokenizer_load_s: float = 0.0  # ``load_tokenizer`` on its own (a data step's)
    save_s: float = 0.0  # one checkpoint: adapter, optimizer state and tokenizer files
    adapter_load_s: float = 0.0  # loading a saved adapter onto a loaded base model
    bench_tokens_per_request: float = 0.0  # mean tokens of a shipped stand-in task's request
    measured_s: float = 0.0  # how long the measurement took
    parts_s: dict[str, float] = field(default_factory=dict)  # of which, each part of ``measure``
    measured_at: float = 0.0
    host: str = ""

    def to_dict(self) -> dict:
        return asdict(self)


def _host() -> str:
    """The machine, the threads torch computes with (a 1-thread measurement is not a 2-thread one) and
    the instruction sets its kernels may use (``ATEN_CPU_CAPABILITY``, ``ONEDNN_MAX_CPU_ISA`` and
    ``MKL_ENABLE_INSTRUCTIONS`` change them, and so the speed)."""
    import torch

    from xlalign.models import onednn_isa_cap

    onednn = onednn_isa_cap()
    mkl = os.environ.get("MKL_ENABLE_INSTRUCTIONS", "").strip().upper()
    capped = ([f"{onednn[0]}={onednn[1]}"] if onednn else []) + (
        [f"MKL_ENABLE_INSTRUCTIONS={mkl}"] if mkl else []
    )
    isa = "+".join([str(torch.backends.cpu.get_cpu_capability()), *capped])
    return f"{platform.node()}/{os.cpu_count()}cpu/{torch.get_num_threads()}t/{isa}"


def _cache_file(profile: Profile, dtype: str) -> Path:
    # v2: the measurement gained the CALM prompt length and the probe pass; v3: the trainer's and the
    # samplers' own code paths at the chain's shapes, checkpoint saves and adapter loads; v4: a
    # tokenizer load on its own, CALM training projecting completions only; v5: the stand-in
    # benchmarks' request length
    safe = f"{profile.model.name}-{dtype}-{_host()}-v5".replace("/", "_")
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

    from xlalign.calm.variants import calm_eval_batch_size
    from xlalign.evaluation.benchmarks import local_request_texts
    from xlalign.evaluation.scoring import score_prompts
    from xlalign.generation import greedy_generate, sample_shared_prefill
    from xlalign.lm import encode
    from xlalign.models import dtype_record, load_model, load_tokenizer, lora_config
    from xlalign.probe.build import render_prompt
    from xlalign.probe.dataset import build_probe_data
    from xlalign.training.shared_prompt import shared_prompt_logits, token_logps

    dtype = str(dtype_record(profile).get("resolved", profile.model.dtype))
    cache = _cache_file(profile, dtype)
    if not fresh and (known := cached_throughput(profile)) is not None:
        return known
    t_all = time.perf_counter()
    lap = _Laps()
    startup_s = _import_seconds() if startup else 0.0
    lap("kernel imports")
    t0 = time.perf_counter()
    model, tok = load_model(profile)
    load_s = time.perf_counter() - t0
    lap("first model load")
    model.eval()
    fmt = profile.model.prompt_format
    t0 = time.perf_counter()
    load_tokenizer(profile)  # after the model load: its files are converted and on a warm disk
    tokenizer_load_s = time.perf_counter() - t0
    lap("tokenizer load")

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
    bench_tokens = [len(encode(tok, text)) for text in local_request_texts()]
    sample = [by_lang[lang][0] for lang in sorted(by_lang)]
    lap("probe data and tokenizing")

    with torch.inference_mode():
        score_prompts(model, tok, sample[:1], batch_size=1)  # warm-up (allocations, lazy init)
        n = min(len(sample), max(2, min(profile.eval.batch_size, 4)))
        t0 = time.perf_counter()
        score_prompts(model, tok, sample[:n], batch_size=n)
        dt = time.perf_counter() - t0
    fwd = dt / sum(len(encode(tok, p)) for p in sample[:n])
    lap("scoring")

    from xlalign.evaluation.probing import hidden_states

    n_layers = model.config.get_text_config().num_hidden_layers
    with torch.inference_mode():
        t0 = time.perf_counter()
        hidden_states(model, tok, sample[:n], range(n_layers + 1), batch_size=n, progress=False)
        dt = time.perf_counter() - t0
    probe = dt / sum(len(encode(tok, p)) for p in sample[:n])
    lap("probe hidden states")
    calm_prompts = _calm_prompts(profile, tok)
    calm_tokens = (
        float(statistics.mean(len(encode(tok, p)) for p in calm_prompts))
        if calm_prompts
        else float(CALM_PROMPT_TOKENS)
    )
    lap("CALM items")
    # Decoding at the chain's shapes, through the chain's own loops: CALM's prompts (probe prompts
    # where its task cannot be read), its sampler's rows and its evaluation's batch.
    dec_prompts = calm_prompts or sample
    c = profile.calm
    sample_rows = max(1, c.sample_batch_size)
    sampled = _decode_step_s(
        lambda n, lm=model: sample_shared_prefill(
            lm,
            tok,
            _cycle(dec_prompts, sample_rows),
            max(1, c.num_samples),
            temperature=c.temperature,
            top_p=c.top_p,
            max_new_tokens=n,
            progress=False,
        )
    )
    lap("CALM sampling")

    def greedy_step_s(rows: int, lm=model) -> float:
        return _decode_step_s(
            lambda n: greedy_generate(
                lm, tok, _cycle(dec_prompts, rows), n, batch_size=rows, progress=False
            )
        )

    # CALM's evaluation decodes calm.eval_batch_size rows a step; the probe's generation mode (not the
    # cpu profile's) eval.batch_size rows, timed on its own only where that differs.
    decode_batch = max(1, profile.eval.batch_size)
    calm_batch = max(1, calm_eval_batch_size(profile))
    greedy = greedy_step_s(calm_batch)
    decode = greedy
    if calm_batch != decode_batch and profile.eval.mode == "generation":
        decode = greedy_step_s(decode_batch)
    lap("greedy decoding")

    from peft import get_peft_model

    # The probe trainer's forward (xlalign.training.shared_prompt: each prompt encoded once, its two
    # answers continued from the KV cache) and backward, on two real prompts left-padded as a batch.
    peft_model = get_peft_model(model, lora_config(profile, model))
    peft_model.train()
    prompts2 = [encode(tok, p) for p in sample[:2]]
    answer_ids = [tok(a, add_special_tokens=False)["input_ids"] for a in _answers()]
    completions = [answer_ids[0]] * len(prompts2) + [answer_ids[1]] * len(prompts2)
    pad = tok.pad_token_id if tok.pad_token_id is not None else 0

    def train_step(pm=peft_model):
        logits, targets, mask = shared_prompt_logits(pm, prompts2, completions, pad)
        token_logps(logits, targets, mask).sum().backward()
        pm.zero_grad()

    padded = len(prompts2) * max(len(p) for p in prompts2)
    train = _timed(train_step) / (padded + sum(len(a) for a in completions))
    lap("probe training step")
    save_s, adapter_load_s, model = _save_and_load_s(peft_model, tok)
    lap("adapter save and load")
    calm_train, calm_ref = _calm_train_s(profile, model, tok, dec_prompts)
    lap("CALM training step")
    del peft_model, model
    import gc

    gc.collect()
    # The first load may convert the GGUF once or read a cold disk (22 s measured on a fresh clone
    # against 3-6 s later); every notebook's loads come after it, so the second load is the figure.
    t0 = time.perf_counter()
    model, _ = load_model(profile)
    load_s = min(load_s, time.perf_counter() - t0)
    lap("second model load")
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
        sample_decode_s_per_step=sampled,
        greedy_decode_s_per_step=greedy,
        calm_train_s_per_token=calm_train,
        calm_ref_s_per_token=calm_ref,
        tokenizer_load_s=round(tokenizer_load_s, 3),
        save_s=round(save_s, 3),
        adapter_load_s=round(adapter_load_s, 3),
        bench_tokens_per_request=float(statistics.mean(bench_tokens)) if bench_tokens else 0.0,
        startup_s=round(startup_s, 3),
        tokenize_s_per_row=tokenize_s,
        tokens_per_lang=tokens_per_lang,
        answer_tokens=float(statistics.mean(answers)),
        n_layers=int(n_layers),
        calm_prompt_tokens=calm_tokens,
        probe_s_per_token=probe,
        measured_s=round(time.perf_counter() - t_all, 2),
        parts_s=lap.parts,
        measured_at=time.time(),
        host=_host(),
    )
    try:
        cache.parent.mkdir(parents=True, exist_ok=True)
        cache.write_text(json.dumps(th.to_dict(), indent=1))
    except OSError:
        pass  # a read-only cache only costs a new measurement next time
    return th


class _Laps:
    """Seconds between successive calls, by name: what each part of ``measure`` cost."""

    def __init__(self):
        self.parts: dict[str, float] = {}
        self.t = time.perf_counter()

    def __call__(self, name: str) -> None:
        now = time.perf_counter()
        self.parts[name] = round(self.parts.get(name, 0.0) + now - self.t, 2)
        self.t = now


def _timed(fn, repeat: int = 2) -> float:
    """Seconds of the last of ``repeat`` calls (the first warms up allocations and lazy init)."""
    dt = 0.0
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        dt = time.perf_counter() - t0
    return dt


def _decode_step_s(run, short: int = 1, long: int = 16) -> float:
    """One decoding step of ``run(max_new_tokens)``: the difference of a long and a short run (the
    prefill cancels), after a warm-up. Over 15 steps: a 1-to-5-token difference measured 0.066 s a
    greedy step at batch 8 where 48-token decoding ran 0.14-0.16 s a step (fp32, AVX-512)."""
    import torch

    with torch.inference_mode():
        run(short)  # warm-up
        t0 = time.perf_counter()
        run(short)
        t1 = time.perf_counter()
        run(long)
        t2 = time.perf_counter()
    return max(1e-4, ((t2 - t1) - (t1 - t0)) / (long - short))


def _cycle(items: list, n: int) -> list:
    return [items[i % len(items)] for i in range(n)]


def _save_and_load_s(peft_model, tok):
    """A checkpoint as the trainer writes it (adapter, tokenizer, optimizer moments of the LoRA
    weights), and loading such an adapter onto the base model: (save s, load s, the base model with
    every adapter removed)."""
    import tempfile

    import torch
    from peft import PeftModel

    with tempfile.TemporaryDirectory() as d:
        t0 = time.perf_counter()
        peft_model.save_pretrained(d)
        tok.save_pretrained(d)
        moments = {
            f"{n}.{k}": p.detach().clone()
            for n, p in peft_model.named_parameters()
            if p.requires_grad
            for k in ("exp_avg", "exp_avg_sq")
        }
        torch.save(moments, Path(d) / "optimizer.pt")
        save_s = time.perf_counter() - t0
        base = peft_model.unload()
        t0 = time.perf_counter()
        loaded = PeftModel.from_pretrained(base, d)
        load_s = time.perf_counter() - t0
        base = loaded.unload()
    return save_s, load_s, base


def _calm_train_s(profile: Profile, model, tok, prompts: list[str]) -> tuple[float, float]:
    """Per token: CALM's LoRA (``calm.lora``, every layer) forward + backward, and the reference
    forward, each projecting only the last ``calm.max_new_tokens`` positions onto the vocabulary, as
    the trainers project only completions (``trainers.compact_fused_lm_head``). Projecting every
    position instead measured 0.0072 s a token, against 0.0033 this way (fp32, AVX-512)."""
    import torch
    from peft import get_peft_model

    from xlalign.lm import encode
    from xlalign.models import lora_config

    ids = encode(tok, prompts[0])[: int(CALM_MEASURE_TOKENS)]
    x = torch.tensor([ids])
    keep = max(1, min(profile.calm.max_new_tokens, len(ids)))
    peft_model = get_peft_model(model, lora_config(profile, model, section=profile.calm.lora))
    peft_model.train()

    def step():
        out = peft_model(input_ids=x, logits_to_keep=keep)
        out.logits.float().log_softmax(-1)[..., 0].sum().backward()
        peft_model.zero_grad()

    train = _timed(step) / x.numel()

    def ref():
        with torch.no_grad(), peft_model.disable_adapter():
            peft_model(input_ids=x, logits_to_keep=keep).logits.float().log_softmax(-1)

    ref_s = _timed(ref) / x.numel()
    peft_model.unload()
    return train, ref_s


def _calm_prompts(profile: Profile, tok) -> list[str]:
    """Rendered prompts of the first CALM task's items in its training languages (a sample of
    ``TOKEN_SAMPLE_PER_LANG`` per language); none where they cannot be read here (a hub task
    offline)."""
    from xlalign.calm.items import load_task_items
    from xlalign.calm.prompts import build_prompt
    from xlalign.probe.build import render_prompt

    tasks = list(getattr(profile.calm, "tasks", None) or ["corpus_mcq"])
    langs = list(profile.calm.train_langs)
    try:
        items = load_task_items(profile, tasks[0], langs).items
    except Exception:  # noqa: BLE001 - an estimate falls back to probe prompts, it does not fail
        return []
    picked: dict[str, list] = {}
    for item in items:
        lang = getattr(item, "lang", None)
        if lang in langs and len(picked.setdefault(lang, [])) < TOKEN_SAMPLE_PER_LANG:
            picked[lang].append(item)
    fmt = profile.model.prompt_format
    return [
        render_prompt(build_prompt(item, lang), tok, fmt)
        for lang, chosen in picked.items()
        for item in chosen
    ]


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


def _load_s(run: ModelRun, th: Throughput) -> float:
    """An evaluation's model load, and its adapter's where it evaluates a trained one."""
    return th.load_s + (th.adapter_load_s if run.adapter else 0.0)


def _saves(save_steps: int, steps: int | None) -> int:
    """Checkpoints a training writes: one every ``save_steps`` steps (0: none), plus the final adapter."""
    n = int(steps or 0)
    return (n // save_steps if save_steps and save_steps > 0 else 0) + 1


def _row_key(row: dict) -> str:
    return str(row.get("prompt", row.get("sample_id", id(row))))


def run_seconds(
    run: ModelRun, th: Throughput, scored: set | None = None, trained: set | None = None
) -> float:
    """Seconds for one planned run (0 when it reuses an earlier one). ``scored``: the prompts earlier
    evaluations of the same run directory scored; with ``train.reuse_frozen`` their frozen-layer
    states are kept (as files in the run directory), so scoring them again runs the adapted layers
    only. ``trained``: the prompts earlier trainings of the same run saw, whose states the trainers
    keep in the run directory too; ``scored`` stands in where it is None. Both updated in place."""
    if run.reuses:
        return 0.0
    p = run.profile
    if run.kind == "eval" and scored is not None:
        share = _reused_share(p, th)
        again = [r for r in run.rows if _row_key(r) in scored]
        new = [r for r in run.rows if _row_key(r) not in scored]
        scored.update(_row_key(r) for r in new)
        tokens = _tokens(new, th) + share * _tokens(again, th)
        s = _load_s(run, th) + tokens * th.forward_s_per_token
        if p is not None and p.eval.mode == "generation":
            batches = math.ceil(len(run.rows) / max(1, p.eval.batch_size))
            s += batches * p.eval.max_new_tokens * th.decode_s_per_step
        return s
    if run.kind in ("eval", "probe"):
        per_token = th.forward_s_per_token
        if run.kind == "probe" and th.probe_s_per_token > 0:
            per_token = th.probe_s_per_token
        s = _load_s(run, th) + _tokens(run.rows, th) * per_token
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
        # With train.reuse_frozen, a prompt whose frozen-layer states an earlier training of this
        # run computed (notebook 03's other arm, or 03's arms for notebook 05) skips those layers'
        # forward: the trainers keep the states in <run>/cache/frozen-train (experiments.steps.train).
        share = _reused_share(p, th)
        memo = trained if trained is not None else scored
        again = [r for r in seen if _row_key(r) in memo] if memo is not None else []
        saved = (1 - share) * _tokens(again, th) * th.forward_s_per_token
        if memo is not None:
            memo.update(_row_key(r) for r in seen)
        # TRL tokenizes the whole training set before the first step: ORPO's tokenize_row (TRL 1.16)
        # encodes the prompt, then prompt + answer and the prompt again for each answer (5 tokenizer
        # calls a pair, counted in a profiled run: 6,720 for 1,344 pairs); DPO prompt, chosen, rejected.
        prep = TRL_ENCODES_PER_PAIR.get(t.method, 3) * len(run.pairs) * th.tokenize_s_per_row
        s = th.load_s + TRAIN_SETUP_S + prep + (prompt_tok + answers) * th.train_s_per_token - saved
        s += _saves(t.save_steps, run.steps) * th.save_s
        if t.method == "dpo":  # the reference model's forward (adapters disabled)
            s += (prompt_tok + answers) * th.forward_s_per_token
        return s
    if run.kind == "calm-sample":
        # xlalign.generation.sample_shared_prefill: each batch of ``sample_batch_size`` prompts is
        # encoded once and decoded as prompts x m rows, to the longest sample (``new_tokens``).
        items = run.items or 0
        m = max(1, p.calm.num_samples)
        prompts = items / m
        per_step = th.sample_decode_s_per_step or th.decode_s_per_step
        steps = math.ceil(prompts / max(1, run.batch_size or 1)) * (run.new_tokens or 0)
        return (
            th.load_s + prompts * th.calm_prompt_tokens * th.forward_s_per_token + steps * per_step
        )
    if run.kind == "calm-train":
        # TRL's trainers on CALM's LoRA (every layer): one sequence (prompt + completion) per SFT row;
        # DPO's chosen and rejected, their prompt encoded once (calm.train.share_prompt) or each with
        # its own, plus the reference model's forward over the same. A model load and the final
        # adapter save each. Completions are counted at calm.max_new_tokens (an upper bound).
        prompt, completion = th.calm_prompt_tokens, p.calm.max_new_tokens
        seq = prompt + completion
        pair = prompt + 2 * completion if p.calm.train.share_prompt else 2 * seq
        rows = (run.steps or 0) * (run.batch_size or 1)
        train = th.calm_train_s_per_token or th.train_s_per_token
        ref = th.calm_ref_s_per_token or th.forward_s_per_token
        fixed = th.load_s + TRAIN_SETUP_S + _saves(p.calm.train.save_steps, run.steps) * th.save_s
        if run.method == "dpo":
            return fixed + rows * pair * (train + ref)
        return fixed + rows * seq * train
    if run.kind == "calm-eval":
        # Greedy decoding in batches of ``calm.eval_batch_size`` to the longest answer, on the base
        # model or a trained adapter.
        items = run.items or 0
        per_step = th.greedy_decode_s_per_step or th.decode_s_per_step
        steps = math.ceil(items / max(1, run.batch_size or 1)) * (run.new_tokens or 0)
        return (
            _load_s(run, th)
            + items * th.calm_prompt_tokens * th.forward_s_per_token
            + steps * per_step
        )
    if run.kind == "benchmark":
        requests = (
            run.requests if run.requests is not None else (run.items or 0) * BENCH_REQUESTS_PER_ITEM
        )
        # The stand-ins' requests at their measured length; other tasks' at a typical short one.
        per_request = (
            th.bench_tokens_per_request
            if run.local_tasks and th.bench_tokens_per_request > 0
            else BENCH_TOKENS_PER_REQUEST
        )
        return th.load_s + BENCH_SETUP_S + requests * per_request * th.forward_s_per_token
    return 0.0


def notebook_seconds(
    nb: NotebookPlan,
    th: Throughput,
    scored: set | None = None,
    trained: set | None = None,
    per_run: dict[str, float] | None = None,
) -> float:
    """A notebook's kernel start, its data steps and its runs. ``scored`` and ``trained``: prompts
    scored and trained on earlier in the run (``run_seconds``); fresh sets when None, as for a
    notebook run on its own. ``per_run``, where given, receives each training's and evaluation's
    seconds under its step name (``estimate_plan_steps``)."""
    scored = set() if scored is None else scored
    trained = set() if trained is None else trained
    s = th.startup_s + KERNEL_START_S
    # Each data step tokenizes the probe rows it builds for its length checks.
    s += nb.data_rows * th.tokenize_s_per_row + nb.tokenizer_loads * th.tokenizer_load_s
    if nb.notebook.startswith(REPORT_PREFIX):
        s += REPORT_BUILD_S
    for r in nb.runs:
        cost = run_seconds(r, th, scored, trained)
        if per_run is not None and r.kind in STEP_KINDS and cost > 0:
            per_run[f"{r.kind}/{r.label}"] = round(cost, 1)
        s += cost
    return s


def estimate_plan(plans: list[NotebookPlan], th: Throughput) -> dict[str, float]:
    """Seconds per notebook of one chain: prompts scored or trained on by one notebook keep their
    frozen-layer states for the next."""
    return estimate_plan_steps(plans, th)[0]


def estimate_plan_steps(
    plans: list[NotebookPlan], th: Throughput
) -> tuple[dict[str, float], dict[str, float]]:
    """``estimate_plan``'s seconds per notebook, and from the same pass the seconds of each training
    and evaluation step, keyed by its step name in ``run.json`` (``train/<label>``,
    ``eval/<label>``). A step planned twice (the base model scored in notebook 02, then on more
    items in 03) keeps the later estimate, as ``run.json`` keeps the later call; reused runs cost
    nothing and are left out."""
    scored: set = set()
    trained: set = set()
    notebooks: dict[str, float] = {}
    steps: dict[str, float] = {}
    for nb in plans:
        s = notebook_seconds(nb, th, scored, trained, per_run=steps)
        notebooks[nb.notebook] = round(s, 1)
    return notebooks, steps


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
