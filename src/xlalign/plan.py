"""What ``make reproduce`` would do, notebook by notebook, without loading a model or touching a run.

``plan_chain(profile)`` lists each notebook's datasets, benchmarks, launches and model runs (model,
method, batching, batch size, optimizer steps, evaluation items), built from the functions the
notebooks' steps call (``experiments.*_runs``, ``arm_profiles``, ``eval_subset``, the probe data and
the batch sampler), so it counts what the chain runs. ``xlalign.estimate`` turns it into seconds.
"""

from __future__ import annotations

import inspect
import json
import math
from dataclasses import asdict, dataclass, field

from xlalign.config import REPO_ROOT, Profile

NOTEBOOK_DIR = REPO_ROOT / "notebooks"
IN_PROCESS = "in-process"


def notebook_stems() -> list[str]:
    """The chain's notebooks in order (the files ``pipeline.notebooks`` runs)."""
    return [p.stem for p in sorted(NOTEBOOK_DIR.glob("[0-9][0-9]_*.ipynb"))]


@dataclass
class ModelRun:
    """One model run: ``kind`` is eval, probe (frozen-feature probe), train, calm-sample,
    calm-train, calm-eval or benchmark. ``reuses`` names the earlier run whose result it reuses
    (no compute then). ``rows``/``pairs`` are the prompts it would run, kept for the estimate."""

    kind: str
    label: str
    model: str
    items: int | None = None
    langs: list[str] = field(default_factory=list)
    method: str | None = None
    batching: str | None = None
    batch_size: int | None = None
    steps: int | None = None
    new_tokens: int | None = None
    requests: int | None = None  # a benchmark run's log-likelihood requests (items x choices)
    local_tasks: bool | None = None  # a benchmark run of the shipped stand-in tasks only
    launch: str = IN_PROCESS
    reuses: str | None = None
    note: str = ""
    adapter: bool | None = None  # an evaluation of a trained adapter (True), not of the base model
    profile: Profile | None = field(default=None, repr=False, compare=False)
    rows: list[dict] = field(default_factory=list, repr=False, compare=False)
    pairs: list[dict] = field(default_factory=list, repr=False, compare=False)

    def to_dict(self) -> dict:
        d = asdict(self)
        for k in ("profile", "rows", "pairs"):
            d.pop(k)
        return {k: v for k, v in d.items() if v not in (None, "")}

    def describe(self) -> str:
        bits = [f"{self.kind:<11} {self.label:<34} {self.model}"]
        if self.method:
            bits.append(f"{self.method} {self.batching or ''}".strip())
        if self.batch_size:
            bits.append(f"batch {self.batch_size}")
        if self.steps is not None:
            bits.append(f"{self.steps} steps")
        if self.items is not None:
            bits.append(f"{self.items} items")
        if self.langs:
            bits.append("/".join(self.langs))
        if self.new_tokens:
            bits.append(f"{self.new_tokens} new tokens")
        if self.launch != IN_PROCESS:
            bits.append(self.launch)
        if self.reuses:
            bits.append(f"reuses {self.reuses}")
        if self.note:
            bits.append(self.note)
        return ", ".join(bits)


REPORT_PREFIX = "07"  # the report notebook: it reads the run's results and writes report.md


@dataclass
class NotebookPlan:
    notebook: str
    datasets: list[str] = field(default_factory=list)
    benchmarks: list[str] = field(default_factory=list)
    runs: list[ModelRun] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    data_rows: int = 0  # probe rows its data steps build and tokenize (preference + test rows)
    tokenizer_loads: int = 0  # ``load_tokenizer`` calls outside model loads (its data steps)

    @property
    def loads_model(self) -> bool:
        """Whether it runs a model or tokenizes probe rows: the work the throughput measurement
        prices (the report alone does neither)."""
        return bool(self.runs or self.data_rows or self.tokenizer_loads)

    @property
    def launches(self) -> list[str]:
        """How its training runs start: in this notebook's process, or ``accelerate launch``."""
        return sorted({r.launch for r in self.runs if r.kind == "train" and not r.reuses})

    def to_dict(self) -> dict:
        return {
            "notebook": self.notebook,
            "datasets": self.datasets,
            "benchmarks": self.benchmarks,
            "launches": self.launches,
            "runs": [r.to_dict() for r in self.runs],
            "notes": self.notes,
        }


# --------------------------------------------------------------------------- helpers


def processes(profile: Profile) -> int:
    """Processes per training run on the machine the profile is meant for (as many GPUs as its
    accelerate config asks for): ``training.launch.process_count`` there, 1 without a config."""
    try:
        from xlalign.training import launch as _launch
    except ImportError:  # pragma: no cover - older trees train in one process
        return 1
    configured = _launch.accelerate_settings(profile).get("num_processes", 1)
    return _launch.process_count(profile, gpus=configured)


def launch(profile: Profile) -> str:
    n = processes(profile)
    if n <= 1:
        return IN_PROCESS
    config = f" --config_file {profile.accelerate_config}" if profile.accelerate_config else ""
    return f"accelerate launch{config} ({n} processes)"


def _signature(profile: Profile) -> str:
    """``training_signature`` (what ``steps.same_training`` compares), on the planned machine."""
    from xlalign.config import ConfigError
    from xlalign.training.run import training_signature

    try:
        sig = training_signature(profile, profile.train.method)
    except ConfigError:  # this machine lacks the profile's GPUs: sign as the planned machine would
        sig = {
            "method": profile.train.method,
            "model": asdict(profile.model),
            "lora": asdict(profile.lora),
            "train": asdict(profile.train),
            "data": asdict(profile.data),
            "seed": profile.seed,
            "processes": processes(profile),
        }
    return json.dumps(sig, sort_keys=True, default=str)


def train_steps(profile: Profile, pairs: list[dict]) -> int:
    """Optimizer steps of one training run: ``train.max_steps`` if set, else epochs x the batch
    sampler's plan (whole groups per process and accumulation step, as the trainer builds it)."""
    from xlalign.training.sampling import GroupedBatchSampler

    t = profile.train
    if t.max_steps and t.max_steps > 0:
        return int(t.max_steps)
    n = processes(profile)
    sampler = GroupedBatchSampler.for_pairs(pairs, t, profile.seed, num_replicas=n)
    per_epoch = len(sampler.plan(0)) // (n * t.grad_accum)
    return int(math.ceil(t.epochs * per_epoch))


@dataclass
class Unavailable:
    """Probe data a dry run cannot build here (a hub source offline): runs are listed, not counted."""

    reason: str
    rows: None = None
    test_rows: None = None
    train_pref: None = None
    report: dict = field(default_factory=dict)


def subset(
    rows: list[dict] | None, langs: list[str], per_lang: int, seed: int
) -> list[dict] | None:
    """``steps.eval_subset`` (the items a step evaluates), or None where the data is unavailable."""
    from xlalign.experiments.steps import eval_subset

    return None if rows is None else eval_subset(rows, langs, per_lang, seed)


def train_steps_or_none(profile: Profile, pairs: list[dict] | None) -> int | None:
    if pairs is None:
        t = profile.train
        return int(t.max_steps) if t.max_steps and t.max_steps > 0 else None
    return train_steps(profile, pairs)


class _Chain:
    """Reuse across the chain, as the steps do it: a training of the same signature is trained once
    (``steps.same_training``), an evaluation label whose items are a subset of an earlier one's is
    read back (``steps.evaluate``)."""

    def __init__(self, profile: Profile):
        self.profile = profile
        self.trained: dict[str, str] = {}  # signature -> label
        self.evaluated: dict[str, set[str]] = {}  # label -> item ids
        self._data: dict[str, object] = {}

    def data(self, profile: Profile):
        from xlalign.probe.dataset import build_probe_data

        if profile.data.mt_langs and profile.data.translator not in ("fake", "identity"):
            # A dry run loads no model: the fake translator gives the same samples, splits and
            # counts (only the translated text differs).
            from xlalign.config import derive

            profile = derive(profile, data={"translator": "fake"})
        key = json.dumps(asdict(profile.data), sort_keys=True, default=str)
        if key not in self._data:
            try:
                self._data[key] = build_probe_data(profile)
            except Exception as exc:  # noqa: BLE001 - e.g. a hub source on an offline machine
                self._data[key] = Unavailable(f"{type(exc).__name__}: {exc}"[:300])
        return self._data[key]

    def train(self, label: str, profile: Profile, data) -> ModelRun:
        t = profile.train
        sig = _signature(profile)
        run = ModelRun(
            "train",
            label,
            profile.model.name,
            method=t.method,
            batching=t.batching,
            batch_size=t.batch_size,
            steps=train_steps_or_none(profile, data.train_pref),
            launch=launch(profile),
            reuses=self.trained.get(sig),
            profile=profile,
            pairs=data.train_pref or [],
        )
        self.trained.setdefault(sig, label)
        return run

    def adapter_label(self, run: ModelRun) -> str:
        """The evaluation label of a training run's adapter: its (first) training directory."""
        return run.reuses or run.label

    def evaluate(
        self,
        label: str,
        profile: Profile,
        rows: list[dict] | None,
        langs: list[str],
        note: str = "",
        adapter: bool = False,
    ) -> ModelRun:
        ids = {r["item_id"] for r in rows or []}
        done = self.evaluated.get(label)
        reuses = label if done is not None and ids <= done else None
        if reuses is None:
            self.evaluated[label] = ids | (done or set())
        mode = profile.eval.mode
        return ModelRun(
            "eval",
            label,
            profile.model.name,
            items=None if rows is None else len(rows),
            langs=list(langs),
            new_tokens=profile.eval.max_new_tokens if mode == "generation" else None,
            reuses=reuses,
            note=note or mode,
            adapter=True if adapter else None,
            profile=profile,
            rows=rows or [],
        )


def _corpus(profile: Profile) -> str:
    d = profile.data
    where = d.corpus_dir if getattr(d, "source", "corpus") == "corpus" else d.source
    return f"probe passages: {where} (k = {d.k})"


def _dataset(chain: _Chain, nb: NotebookPlan, profile: Profile):
    """The probe data of ``profile``, listed under the notebook's datasets."""
    data = chain.data(profile)
    if f"{_corpus(profile)}" not in nb.datasets:
        nb.datasets.append(_corpus(profile))
    if isinstance(data, Unavailable):
        nb.notes.append(
            f"probe data not readable here, items and steps not counted ({data.reason})"
        )
    else:
        nb.data_rows += len(data.train_pref) + len(data.test_rows)
    return data


# --------------------------------------------------------------------------- per notebook


def _nb00(chain: _Chain, nb: NotebookPlan) -> None:

    p = chain.profile
    data = _dataset(chain, nb, p)
    # Notebook 00's tour: 2 samples in the first four training languages (its own literal values).
    langs = p.data.train_langs[:4]
    rows = subset(data.test_rows, langs, 2, p.seed)
    nb.runs.append(chain.evaluate("quickstart", p, rows, langs, note="scoring (tour)"))


def _nb01(chain: _Chain, nb: NotebookPlan) -> None:
    p = chain.profile
    data = _dataset(chain, nb, p)
    c = data.report.get("counts")
    if c:
        nb.datasets[-1] += (
            f": {c['train_pref_rows']} preference rows ({c['train_groups']} groups), "
            f"{c['test_rows']} test rows"
        )
    nb.datasets[-1] += f", languages {p.data.train_langs} + unseen {p.data.unseen_langs}"
    nb.notes.append("tokenizer only: counts and token lengths")
    nb.tokenizer_loads += 1


def _nb02(chain: _Chain, nb: NotebookPlan) -> None:
    from xlalign.config import derive
    from xlalign.experiments.steps import knows_vs_says
    from xlalign.results import baseline

    p = chain.profile
    data = _dataset(chain, nb, p)
    langs = p.data.train_langs + p.data.unseen_langs
    rows = subset(data.test_rows, langs, p.eval.max_items_per_lang, p.seed)
    for name in p.experiments.models:  # notebook 02's loop over the baseline models
        q = derive(p, model={"name": name})
        nb.runs.append(
            chain.evaluate(baseline(name), q, rows, langs, note=f"{p.eval.mode}, baseline")
        )
    per_lang = inspect.signature(knows_vs_says).parameters["train_per_lang"].default
    train_rows = None if data.rows is None else [r for r in data.rows if r.get("split") == "train"]
    train_rows = subset(train_rows, p.data.train_langs, per_lang, p.seed)
    test_rows = subset(data.test_rows, p.data.train_langs, p.eval.max_items_per_lang, p.seed)
    nb.runs.append(
        ModelRun(
            "probe",
            "knows_vs_says",
            p.model.name,
            items=None if train_rows is None else len(train_rows) + len(test_rows),
            note=(
                f"hidden states of {len(train_rows)} train + {len(test_rows)} test items, "
                if train_rows is not None
                else f"hidden states of {per_lang} train samples per language + the test items, "
            )
            + "a logistic regression per layer",
            profile=p,
            rows=(train_rows or []) + (test_rows or []),
        )
    )


def _nb03(chain: _Chain, nb: NotebookPlan) -> None:
    from xlalign.experiments.batch_alignment import arm_profiles
    from xlalign.results import baseline

    p = chain.profile
    data = _dataset(chain, nb, p)
    nb.tokenizer_loads += 1  # prepare_data's tokenizer
    langs = p.data.train_langs
    rows = subset(data.test_rows, langs, p.eval.compare_items, p.seed)
    for _key, (label, q) in arm_profiles(p).items():
        tr = chain.train(label, q, data)
        nb.runs += [tr, chain.evaluate(chain.adapter_label(tr), q, rows, langs, adapter=True)]
    nb.runs.append(
        chain.evaluate(baseline(p.model.name), p, rows, langs, note=p.eval.mode + ", baseline")
    )


def _calm_counts(p: Profile, task: str, nb: NotebookPlan) -> tuple[int | None, int | None]:
    """(training questions, test questions) of one CALM task, split as ``calm.pipeline`` splits
    them; (None, None) where its items cannot be read here (a hub source offline)."""
    from xlalign.calm.items import group_items, load_task_items, split_questions, task_eval_langs

    c = p.calm
    langs = list(dict.fromkeys(list(c.train_langs) + task_eval_langs(p, task)))
    try:
        ti = load_task_items(p, task, langs)
    except Exception as exc:  # noqa: BLE001 - a dry run reports what it cannot count
        nb.notes.append(
            f"CALM task {task}: items not readable here ({type(exc).__name__}: {exc})"[:300]
        )
        return None, None
    questions, _dropped = group_items(ti.items, langs) if not ti.translate_from else ({}, [])
    if ti.translate_from:  # translated at run time: count the native bank's questions
        questions = {i.qid: None for i in ti.items}
    if ti.split is None:
        train_ids, test_ids = split_questions(list(questions), p.data.test_fraction, p.seed)
    else:
        train_ids = [q for q in questions if ti.split.get(q) == "train"]
        test_ids = [q for q in questions if ti.split.get(q) == "test"]
    n_train = min(len(train_ids), c.max_questions) if c.max_questions else len(train_ids)
    n_test = len(test_ids)
    if p.eval.max_items_per_lang:
        n_test = min(n_test, p.eval.max_items_per_lang)
    nb.datasets.append(f"CALM task {task}: {n_train} training and {n_test} test questions")
    return n_train, n_test


def _nb04(chain: _Chain, nb: NotebookPlan) -> None:
    from xlalign.calm.items import task_eval_langs
    from xlalign.calm.variants import calm_eval_batch_size

    p = chain.profile
    c = p.calm
    train_langs = list(c.train_langs)
    tasks = list(getattr(c, "tasks", None) or ["corpus_mcq"])
    t = c.train
    steps = t.max_steps if t.max_steps and t.max_steps > 0 else None
    for task in tasks:
        eval_langs = task_eval_langs(p, task)
        n_train, n_test = _calm_counts(p, task, nb)
        variants = ["calm", "sft", "gt_dpo", "gt_sft"]
        if c.incremental and len(train_langs) > 1:
            variants += ["calm_" + "+".join(train_langs[:k]) for k in range(1, len(train_langs))]
        where = f"calm/{task}" if len(tasks) > 1 else "calm"
        nb.runs.append(
            ModelRun(
                "calm-sample",
                f"{where}/samples",
                p.model.name,
                items=None if n_train is None else n_train * len(train_langs) * c.num_samples,
                batch_size=c.sample_batch_size,
                new_tokens=c.max_new_tokens,
                note=f"m = {c.num_samples} in {train_langs}, T = {c.temperature}, top-p {c.top_p}",
                profile=p,
            )
        )
        for v in variants:
            nb.runs.append(
                ModelRun(
                    "calm-train",
                    f"{where}/train/{v}",
                    p.model.name,
                    method="sft" if v in ("sft", "gt_sft") else "dpo",
                    batching=c.batching,
                    batch_size=t.batch_size,
                    steps=steps,
                    launch=launch(p),
                    note="" if steps else f"{t.epochs} epochs over the voted pairs",
                    profile=p,
                )
            )
        for v in ["base", *variants]:
            nb.runs.append(
                ModelRun(
                    "calm-eval",
                    f"{where}/predictions/{v}",
                    p.model.name,
                    items=None if n_test is None else n_test * len(eval_langs),
                    batch_size=calm_eval_batch_size(p),
                    new_tokens=c.max_new_tokens,
                    note=f"in {eval_langs}",
                    adapter=True if v != "base" else None,
                    profile=p,
                )
            )


def _nb05(chain: _Chain, nb: NotebookPlan) -> None:
    from xlalign.experiments import ablations
    from xlalign.results import baseline_mt

    p = chain.profile
    data = _dataset(chain, nb, p)
    langs = p.data.train_langs
    rows = subset(data.test_rows, langs, p.eval.max_items_per_lang, p.seed)
    methods = getattr(p.experiments, "ablation_methods", None) or [p.experiments.ablation_method]
    for method in methods:
        for _b, (label, q) in ablations.batch_size_runs(p, method).items():
            tr = chain.train(label, q, data)
            nb.runs += [tr, chain.evaluate(chain.adapter_label(tr), q, rows, langs, adapter=True)]
    for method in methods:
        label, q = ablations.english_run(p, method)
        tr = chain.train(label, q, data)
        nb.runs += [tr, chain.evaluate(chain.adapter_label(tr), q, rows, langs, adapter=True)]
    p_al, runs = ablations.machine_translated_runs(p)
    mt_data = _dataset(chain, nb, p_al)
    nb.tokenizer_loads += 2  # prepare_data's tokenizer, and the machine-translated data's
    nb.datasets.append(
        f"machine-translated training data for {p_al.data.mt_langs} ({p_al.data.translator})"
    )
    mt_langs = ["en", *p_al.data.mt_langs]
    mt_rows = subset(mt_data.test_rows, mt_langs, p.eval.max_items_per_lang, p.seed)
    nb.runs.append(chain.evaluate(baseline_mt(p.model.name), p, mt_rows, mt_langs, note="baseline"))
    for _batching, (label, q) in runs.items():
        tr = chain.train(label, q, mt_data)
        nb.runs += [tr, chain.evaluate(chain.adapter_label(tr), q, mt_rows, mt_langs, adapter=True)]


def _nb06(chain: _Chain, nb: NotebookPlan) -> None:
    from xlalign.evaluation import benchmarks
    from xlalign.experiments import generalization as g
    from xlalign.experiments.batch_alignment import arm_profiles
    from xlalign.results import baseline, unseen

    p = chain.profile
    data = _dataset(chain, nb, p)
    label, q = g.aligned_arm_profile(p)
    tr = chain.train(label, q, data)
    nb.runs.append(tr)
    if not tr.reuses:  # trained here: generalization.aligned_arm loads a tokenizer for its data
        nb.tokenizer_loads += 1
    langs = ["en", *p.data.unseen_langs]
    rows = subset(data.test_rows, langs, p.eval.max_items_per_lang, p.seed)
    nb.runs.append(
        chain.evaluate(baseline(p.model.name), p, rows, langs, note=p.eval.mode + ", baseline")
    )
    nb.runs.append(chain.evaluate(unseen(g._method(p)), q, rows, langs, adapter=True))
    # Tables 2-4: lm-eval on the base model and on notebook 03's default and ours per method.
    registry = g.benchmark_registry(p)
    tasks = [t for cells in registry.values() for ts in cells.values() for t in ts]
    nb.benchmarks += [
        f"{b} ({', '.join(cells)})" + (" [local stand-in]" if benchmarks.is_stand_in(b) else "")
        for b, cells in registry.items()
    ]
    limit = p.experiments.benchmark_limit or None
    # Items and requests per task: the shipped stand-ins' own (they hold fewer items than a limit
    # may ask for), else the limit and its requests (none counted without a limit: all items).
    local = {t: benchmarks.local_task_requests(t, limit) for t in tasks}

    def task_requests(t: str) -> int | None:
        if local[t] is not None:
            return sum(map(len, local[t]))
        return None if limit is None else limit * benchmarks.requests_per_item(t)

    items = [len(local[t]) if local[t] is not None else limit for t in tasks]
    counts = [task_requests(t) for t in tasks]
    arms = arm_profiles(p)
    for block, method, batching in g.benchmark_arms(p):
        if method is not None:
            label, q = arms[method, batching]
            nb.runs.append(chain.train(label, q, data))
        nb.runs.append(
            ModelRun(
                "benchmark",
                f"lm-eval/{block}",
                p.model.name,
                items=None if None in items else sum(items),
                requests=None if None in counts else sum(counts),
                local_tasks=all(v is not None for v in local.values()),
                note=f"{len(tasks)} lm-eval tasks, "
                + ("all items" if limit is None else f"at most {limit} per task"),
                profile=p,
            )
        )


def _nb07(chain: _Chain, nb: NotebookPlan) -> None:
    nb.datasets.append("the published tables in data/paper/")
    nb.notes.append("no model: the papers' figures, our report")


PLANNERS = {
    "00": _nb00,
    "01": _nb01,
    "02": _nb02,
    "03": _nb03,
    "04": _nb04,
    "05": _nb05,
    "06": _nb06,
    "07": _nb07,
}


def plan_chain(profile: Profile, only: list[str] | None = None) -> list[NotebookPlan]:
    """Every notebook's plan, in chain order (reuse across notebooks counted as the chain has it);
    ``only``: notebook prefixes to return (the earlier ones are still planned, for reuse)."""
    chain = _Chain(profile)
    out = []
    for stem in notebook_stems():
        nb = NotebookPlan(stem)
        planner = PLANNERS.get(stem[:2])
        if planner is None:
            nb.notes.append("no planner for this notebook: its work is not counted")
        else:
            planner(chain, nb)
        if not only or any(stem.startswith(o) for o in only):
            out.append(nb)
    return out


def plan_notebook(profile: Profile, notebook: str, alone: bool = False) -> NotebookPlan:
    """One notebook's plan (``notebook``: a stem or its ``NN`` prefix). ``alone``: as when it runs
    on its own in a fresh run directory (nothing reused from earlier notebooks)."""
    stems = [s for s in notebook_stems() if s.startswith(notebook)]
    if not stems:
        raise ValueError(f"no notebook {notebook!r} in {NOTEBOOK_DIR}; have {notebook_stems()}")
    if alone:
        chain, nb = _Chain(profile), NotebookPlan(stems[0])
        PLANNERS[stems[0][:2]](chain, nb)
        return nb
    return plan_chain(profile, only=[stems[0]])[0]


def format_plan(plans: list[NotebookPlan], estimates: dict[str, float] | None = None) -> str:
    lines = []
    for nb in plans:
        head = nb.notebook
        if estimates and nb.notebook in estimates:
            head += f"  (about {format_seconds(estimates[nb.notebook])})"
        lines.append(head)
        for d in nb.datasets:
            lines.append(f"  dataset    {d}")
        if nb.benchmarks:
            lines.append(f"  benchmarks {', '.join(nb.benchmarks)}")
        if nb.launches:
            lines.append(f"  launches   {'; '.join(nb.launches)}")
        for r in nb.runs:
            lines.append(f"  run        {r.describe()}")
        for n in nb.notes:
            lines.append(f"  note       {n}")
    return "\n".join(lines)


def format_seconds(s: float) -> str:
    if s < 90:
        return f"{s:.0f} s"
    if s < 5400:
        return f"{s / 60:.0f} min"
    return f"{s / 3600:.1f} h"
