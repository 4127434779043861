"""Command line: ``python -m xlalign <command> --profile NAME [key=value ...]``.

The same entry point serves one process and ``accelerate launch`` across GPUs or CPU processes.

Examples:
    python -m xlalign reproduce --profile cpu
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

from xlalign.config import CONFIG_DIR, ConfigError, load_profile


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
    model, tok = load_model(profile) if profile.model.quantization == "none" else (None, None)
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
    print(json.dumps(res.to_dict()))


def _jsonable(obj):
    """Metric summaries hold pandas Series (per language); JSON wants plain dicts and floats."""
    if hasattr(obj, "to_dict"):
        return {str(k): float(v) for k, v in obj.to_dict().items()}
    return float(obj)


def cmd_evaluate(args) -> None:
    from xlalign.evaluation import metrics
    from xlalign.experiments import eval_subset, evaluate
    from xlalign.models import load_tokenizer
    from xlalign.probe.dataset import build_probe_data
    from xlalign.runs import start_run

    profile = _profile(args)
    run = start_run(profile, args.run_dir, label="eval", resume=bool(args.run_dir))
    data = build_probe_data(profile, load_tokenizer(profile))
    langs = profile.data.train_langs + profile.data.unseen_langs
    rows = eval_subset(data.test_rows, langs, profile.eval.max_items_per_lang, profile.seed)
    preds = evaluate(profile, run, args.label or "cli", rows, adapter_dir=args.adapter)
    print(json.dumps(metrics.summarize(preds), default=_jsonable, indent=1))


def cmd_reproduce(args) -> None:
    from xlalign.pipeline import reproduce

    profile = _profile(args)
    reproduce(profile, run_id=args.run_id, only=args.only, overrides=args.overrides)


def cmd_validate(args) -> None:
    names = sorted(p.stem for p in CONFIG_DIR.glob("*.yaml"))
    for name in names:
        load_profile(name)
    for overlay in sorted((CONFIG_DIR / "ablations").glob("*.yaml")):
        load_profile("paper", overlays=[str(overlay)])
    print(
        f"ok: {len(names)} profiles, {len(list((CONFIG_DIR / 'ablations').glob('*.yaml')))} overlays"
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
    add("validate-configs", cmd_validate, "load and validate every profile and overlay")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from xlalign.models import ModelUnavailableError
    from xlalign.pipeline import NotebookFailed
    from xlalign.runs import RunMismatchError
    from xlalign.sources.corpus import CorpusError
    from xlalign.training.sampling import AlignmentError

    try:
        args.fn(args)
    except (
        ConfigError,
        ModelUnavailableError,
        CorpusError,
        AlignmentError,
        NotebookFailed,
        RunMismatchError,
        FileExistsError,
        FileNotFoundError,
    ) as exc:
        # One line naming the problem and the fix; no traceback wall for expected errors.
        print(f"xlalign: error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
