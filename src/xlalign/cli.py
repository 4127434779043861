"""Command line: ``python -m xlalign <command> --profile NAME [key=value ...]``.

The same entry point serves one process and ``accelerate launch`` across GPUs or CPU processes.

Examples:
    python -m xlalign reproduce --profile cpu
    python -m xlalign reproduce --profile paper --dry-run
    python -m xlalign prepare-model --profile cpu
    python -m xlalign build-data --profile smoke --run-dir runs/try
    python -m xlalign train --profile smoke --run-dir runs/try train.batching=uncoupled
    accelerate launch --config_file configs/accelerate/multi_gpu_4.yaml -m xlalign train --profile paper
    python -m xlalign validate-configs
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from xlalign.config import CONFIG_DIR, ConfigError, load_profile
from xlalign.runs import jsonable


def _profile(args):
    return load_profile(args.profile, overrides=args.overrides, overlays=args.overlay or [])


def cmd_prepare_model(args) -> None:
    from xlalign.models import load_model

    profile = _profile(args)
    t0 = time.perf_counter()
    model, tok = load_model(profile)
    first = time.perf_counter() - t0
    t0 = time.perf_counter()
    load_model(profile)
    print(
        json.dumps(
            {
                "model": profile.model.name,
                "first_load_s": round(first, 1),
                "cached_load_s": round(time.perf_counter() - t0, 1),
                "parameters": model.num_parameters(),
            }
        )
    )


def cmd_build_data(args) -> None:
    from xlalign.models import load_tokenizer
    from xlalign.probe.dataset import build_probe_data, save_probe_data, token_length_table
    from xlalign.runs import start_run

    profile = _profile(args)
    run = start_run(profile, args.run_dir, label="data", resume=bool(args.run_dir))
    args.run = run  # main() marks it ok or failed
    tok = load_tokenizer(profile)
    data = build_probe_data(profile, tok)
    save_probe_data(data, run.path / "data")
    print(json.dumps(data.report["counts"]))
    print(token_length_table(data.test_rows, tok).to_string())


def cmd_train(args) -> None:
    from xlalign.models import load_model
    from xlalign.probe.dataset import build_probe_data
    from xlalign.runs import start_run
    from xlalign.training.run import train_preference

    profile = _profile(args)
    run = start_run(profile, args.run_dir, label="train", resume=bool(args.run_dir))
    args.run = run  # main() marks it ok or failed
    from xlalign.training.launch import needs_launch

    # A launched training loads the model in each rank; a quantized one is built by the trainer.
    in_process = profile.model.quantization == "none" and not needs_launch(profile)
    model, tok = load_model(profile) if in_process else (None, None)
    if tok is None:
        from xlalign.models import load_tokenizer

        tok = load_tokenizer(profile)
    data = build_probe_data(profile, tok)
    label = (
        args.label
        or f"{profile.train.method}-{profile.train.batching}-bs{profile.train.batch_size}"
    )
    res = train_preference(
        profile,
        data.train_dataset(),
        run.path / "train" / label,
        model=model,
        tokenizer=tok,
        resume=True,
    )
    run.step(f"train/{label}", steps=res.steps, batch=res.batch)
    print(json.dumps(res.to_dict()))


def cmd_evaluate(args) -> None:
    from xlalign.evaluation import metrics
    from xlalign.experiments import eval_subset, evaluate
    from xlalign.models import load_tokenizer
    from xlalign.probe.dataset import build_probe_data
    from xlalign.runs import start_run

    profile = _profile(args)
    run = start_run(profile, args.run_dir, label="eval", resume=bool(args.run_dir))
    args.run = run  # main() marks it ok or failed
    data = build_probe_data(profile, load_tokenizer(profile))
    langs = profile.data.train_langs + profile.data.unseen_langs
    rows = eval_subset(data.test_rows, langs, profile.eval.max_items_per_lang, profile.seed)
    preds = evaluate(profile, run, args.label or "cli", rows, adapter_dir=args.adapter)
    print(json.dumps(metrics.summarize(preds), default=jsonable, indent=1))


def cmd_reproduce(args) -> None:
    profile = _profile(args)
    if args.dry_run:
        dry_run(profile, only=args.only, as_json=args.json)
        return
    from xlalign.pipeline import reproduce

    reproduce(
        profile,
        run_id=args.run_id,
        run_dir=args.run_dir,
        only=args.only,
        overrides=args.overrides,
        estimate=not args.no_estimate,
    )


def dry_run(profile, only: list[str] | None = None, as_json: bool = False) -> None:
    """Print what ``reproduce`` would do per notebook; no model is loaded, no run directory made.
    With a measurement of this machine from the last day, each notebook's estimate too."""
    import os

    from xlalign.estimate import cached_throughput, estimate_plan
    from xlalign.plan import format_plan, plan_chain

    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # a dry run downloads nothing
    plans = plan_chain(profile, only=only)
    th = cached_throughput(profile)
    estimates = estimate_plan(plans, th) if th is not None else None
    if as_json:
        out = {"profile": profile.name, "notebooks": [nb.to_dict() for nb in plans]}
        if estimates:
            out["estimate_s"] = estimates
        print(json.dumps(out, indent=1, default=jsonable))
        return
    print(
        f"profile {profile.name}: model {profile.model.name}, dry run (nothing loaded or written)"
    )
    print(format_plan(plans, estimates))
    if estimates is None:
        print("(no estimate: this machine's throughput is measured when `make reproduce` starts)")


def cmd_validate(args) -> None:
    """Every profile in configs/, every overlay on the cpu profile, then ``--profile`` with the
    given overlays and overrides; the first invalid one raises ``ConfigError`` (exit status 2)."""
    profiles = sorted(CONFIG_DIR.glob("*.yaml"))
    overlays = sorted((CONFIG_DIR / "ablations").glob("*.yaml"))
    for path in profiles:
        load_profile(path.stem)
    for overlay in overlays:
        load_profile("cpu", overlays=[str(overlay)])
    profile = _profile(args)
    given = f"{args.profile}" + "".join(f" +{o}" for o in args.overlay or [])
    given += "".join(f" {o}" for o in args.overrides)
    print(
        f"ok: {len(profiles)} profiles, {len(overlays)} overlays on cpu, and {given} "
        f"(profile {profile.name!r})"
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="xlalign", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)

    def add(name, fn, help_):
        p = sub.add_parser(name, help=help_)
        p.add_argument(
            "--profile", default="cpu", help="cpu | smoke | paper | path/to/profile.yaml"
        )
        p.add_argument("--overlay", action="append", help="configs/ablations/<name>.yaml overlay")
        p.add_argument("--run-dir", default=None, help="an existing or new run directory")
        p.add_argument("overrides", nargs="*", help="section.key=value overrides")
        p.set_defaults(fn=fn)
        return p

    add(
        "prepare-model",
        cmd_prepare_model,
        "convert and cache the profile's model, print load times",
    )
    add("build-data", cmd_build_data, "build the probe datasets into a run directory")
    p = add("train", cmd_train, "train one adapter (the accelerate entry point)")
    p.add_argument("--label", default=None)
    p = add("evaluate", cmd_evaluate, "evaluate the base model or an adapter on the probe")
    p.add_argument("--adapter", default=None)
    p.add_argument("--label", default=None)
    p = add("reproduce", cmd_reproduce, "run every notebook with papermill")
    p.add_argument("--run-id", default=None, help="resume this run (runs/<id>)")
    p.add_argument("--only", nargs="*", default=None, help="notebook prefixes, e.g. 00 01")
    p.add_argument(
        "--dry-run",
        action="store_true",
        help="print each notebook's datasets, benchmarks, launches and model runs; run nothing",
    )
    p.add_argument("--json", action="store_true", help="with --dry-run: the plan as JSON")
    p.add_argument(
        "--no-estimate", action="store_true", help="skip the up-front throughput measurement"
    )
    add(
        "validate-configs",
        cmd_validate,
        "validate every profile and overlay in configs/, then --profile with --overlay and overrides",
    )
    return parser


_PACKAGE_DIR = Path(__file__).resolve().parent


def _raised_by_xlalign(exc: BaseException) -> bool:
    """True when the innermost frame of ``exc`` is xlalign's own code (a check that names the fix),
    not a library's: a ValueError from torch or pandas is a bug and keeps its traceback."""
    tb = exc.__traceback__
    if tb is None:
        return False
    while tb.tb_next is not None:
        tb = tb.tb_next
    return Path(tb.tb_frame.f_code.co_filename).resolve().is_relative_to(_PACKAGE_DIR)


def _expected_errors() -> tuple[type[BaseException], ...]:
    """The project's own error types: each message names the problem and the fix."""
    from xlalign.evaluation.predictions import NumericalFaultError
    from xlalign.models import ModelUnavailableError
    from xlalign.pipeline import NotebookFailed
    from xlalign.runs import RunLockedError, RunMismatchError
    from xlalign.sources.corpus import CorpusError
    from xlalign.training.sampling import AlignmentError
    from xlalign.translate import TranslationError

    return (
        ConfigError,
        ModelUnavailableError,
        CorpusError,
        AlignmentError,
        NotebookFailed,
        RunMismatchError,
        RunLockedError,
        NumericalFaultError,
        TranslationError,
        FileExistsError,
        FileNotFoundError,
    )


def main(argv: list[str] | None = None) -> int:
    """Run one command. Expected errors end in one line ``xlalign: error: ...`` and exit status 2.

    ``build-data``, ``train`` and ``evaluate`` finish their run: ``status`` ``ok`` in ``run.json``, or
    ``failed`` with the error message (also for unexpected errors, which keep their traceback).
    """
    args = build_parser().parse_args(argv)
    args.run = None
    expected = _expected_errors()
    try:
        args.fn(args)
    except BaseException as exc:
        one_line = isinstance(exc, expected) or (
            isinstance(exc, ValueError) and _raised_by_xlalign(exc)
        )
        if args.run is not None:
            args.run.finish("failed", error=f"{type(exc).__name__}: {exc}")
        if not one_line:
            raise
        # One line naming the problem and the fix; no traceback wall for expected errors.
        print(f"xlalign: error: {exc}", file=sys.stderr)
        return 2
    if args.run is not None:
        args.run.finish("ok")
    return 0


if __name__ == "__main__":
    sys.exit(main())
