"""Run the numbered notebooks in order with papermill, headless, into ``runs/<id>/notebooks/``.

A failed notebook stops the chain and names the notebook and cell; a rerun with the same run id resumes.

This process holds the run directory's lock (``runs.start_run``) while the notebooks run; their kernels
open the same run to record steps, so they are started with ``XLALIGN_RUN_LOCK_HELD=<run dir>`` in
their environment, which ``start_run`` accepts from descendants of the lock's holder.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

from xlalign.config import REPO_ROOT, Profile
from xlalign.plan import REPORT_PREFIX, plan_chain
from xlalign.runs import LOCK_ENV, Run, start_run

NOTEBOOK_DIR = REPO_ROOT / "notebooks"


class NotebookFailed(RuntimeError):
    """A notebook raised; the message names the notebook, the cell and where the executed copy is."""


def notebooks() -> list[Path]:
    return sorted(p for p in NOTEBOOK_DIR.glob("[0-9][0-9]_*.ipynb"))


def _failed_cell(nb_path: Path) -> str:
    import nbformat

    nb = nbformat.read(nb_path, as_version=4)
    for i, cell in enumerate(nb.cells):
        for out in cell.get("outputs", []):
            if out.get("output_type") == "error":
                return f"cell {i} ({out.get('ename')}: {str(out.get('evalue'))[:200]})"
    return "an unknown cell"


def run_notebooks(
    profile: Profile,
    run: Run,
    only: list[str] | None = None,
    overrides: list[str] = (),
    progress: bool = True,
) -> dict[str, float]:
    """Execute every notebook (or those whose name starts with one of ``only``); returns wall times."""
    out_dir = run.sub("notebooks")
    previous = os.environ.get(LOCK_ENV)
    os.environ[LOCK_ENV] = str(run.path)  # inherited by the kernels papermill starts
    try:
        return _run_notebooks(profile, run, out_dir, only, overrides, progress)
    finally:
        if previous is None:
            os.environ.pop(LOCK_ENV, None)
        else:
            os.environ[LOCK_ENV] = previous


def _run_notebooks(profile, run, out_dir, only, overrides, progress) -> dict[str, float]:
    import papermill as pm

    times: dict[str, float] = {}
    done = run.record.get("steps", {})
    for nb in notebooks():
        if only and not any(nb.name.startswith(o) for o in only):
            continue
        key = f"notebook/{nb.stem}"
        # The report only reads what the run holds (seconds): it is rebuilt on every call, so that a
        # notebook run after it, or a rerun of `--only 07`, is never left out of it.
        if done.get(key, {}).get("status") == "ok" and not nb.stem.startswith(REPORT_PREFIX):
            times[nb.stem] = done[key]["wall_time_s"]
            print(f"[xlalign] {nb.name}: already done in this run, skipped")
            continue
        target = out_dir / nb.name
        print(f"[xlalign] {nb.name} -> {target}", flush=True)
        t0 = time.perf_counter()
        try:
            pm.execute_notebook(
                str(nb),
                str(target),
                parameters={
                    "PROFILE": profile.name,
                    "RUN_DIR": str(run.path),
                    "SEED": profile.seed,
                    "OVERRIDES": list(overrides),
                },
                kernel_name="python3",
                cwd=str(NOTEBOOK_DIR),
                progress_bar=progress,
                log_output=False,
            )
        except pm.PapermillExecutionError as exc:
            wall = round(time.perf_counter() - t0, 1)
            run.step(
                key, status="failed", wall_time_s=wall, error=f"{exc.ename}: {exc.evalue}"[:500]
            )
            raise NotebookFailed(
                f"{nb.name} failed at {_failed_cell(target)}; executed copy: {target}. Fix the cause and "
                f"rerun with --run-id {run.id} to resume from this notebook"
            ) from None
        wall = round(time.perf_counter() - t0, 1)
        times[nb.stem] = wall
        run.step(key, status="ok", wall_time_s=wall)
        print(f"[xlalign] {nb.name}: {wall:.0f} s", flush=True)
    return times


def up_front_estimate(profile: Profile, run: Run, only: list[str] | None = None) -> dict | None:
    """Measure this machine's throughput on the profile's model (1-3 min), print the expected
    wall time of each notebook still to run and of the chain, and record it in ``run.json``
    (``estimate``; the report puts each notebook's estimate beside its actual time). A failed
    measurement is reported and skipped: it never stops the chain.

    Notebooks that load no model (the report alone: ``--only 07``) are not worth a fresh
    measurement that takes longer than they do: they reuse this host's measurement of the day, or
    go without an estimate."""
    from xlalign.estimate import cached_throughput, chain_lines, estimate_plan_steps, measure

    try:
        t0 = time.perf_counter()
        plans = plan_chain(profile, only=only)
        fresh = any(nb.loads_model for nb in plans)
        if fresh:
            th = measure(profile, fresh=True)
        else:
            th = cached_throughput(profile)
            if th is None:
                print(
                    "[xlalign] no up-front estimate: the notebooks to run load no model, and this "
                    "machine has no measurement of the day to reuse",
                    flush=True,
                )
                return None
        estimates, step_estimates = estimate_plan_steps(plans, th)
    except Exception as exc:  # noqa: BLE001 - the estimate is advice, the chain is the work
        print(f"[xlalign] no up-front estimate ({type(exc).__name__}: {exc})"[:300], flush=True)
        return None
    steps = run.record.get("steps", {})
    done = {
        nb: steps[f"notebook/{nb}"]["wall_time_s"]
        for nb in estimates
        if steps.get(f"notebook/{nb}", {}).get("status") == "ok"
        and not nb.startswith(REPORT_PREFIX)
    }
    took = time.perf_counter() - t0
    if fresh:
        print(
            f"[xlalign] measured {th.model} ({th.dtype}, {th.device}) in {took:.0f} s", flush=True
        )
        top = sorted(th.parts_s.items(), key=lambda kv: -kv[1])[:4]
        if top:
            print(
                "[xlalign]   longest parts: " + ", ".join(f"{k} {v:.0f} s" for k, v in top),
                flush=True,
            )
    else:
        age = (time.time() - th.measured_at) / 60
        print(
            f"[xlalign] no model to load: reused this machine's measurement of {th.model} "
            f"({th.dtype}, {th.device}) from {age:.0f} min ago",
            flush=True,
        )
    print("[xlalign] expected wall time:", flush=True)
    for line in chain_lines(estimates, done):
        print(f"[xlalign] {line}", flush=True)
    record = {
        "notebooks_s": estimates,
        "total_s": round(sum(s for nb, s in estimates.items() if nb not in done), 1),
        # each training's and evaluation's share, for the report's per-step comparison
        "steps_s": step_estimates,
        "throughput": th.to_dict(),
    }
    run.record["estimate"] = record
    run.save()
    return record


def reproduce(
    profile: Profile,
    run_id: str | None = None,
    only: list[str] | None = None,
    overrides: list[str] = (),
    estimate: bool = True,
    run_dir: str | Path | None = None,
) -> Run:
    """``make reproduce``: one run directory, every notebook, the report last; first, with
    ``estimate``, the expected wall time per notebook (``up_front_estimate``).

    The directory is ``runs/<run_id>`` or ``run_dir`` (any path; not both), else a new one; a
    directory that holds a ``run.json`` is resumed."""
    if run_id and run_dir:
        raise ValueError(f"give run_id ({run_id!r}) or run_dir ({str(run_dir)!r}), not both")
    if run_id:
        run_dir = Path(profile.run_root) / run_id
    if run_dir is not None:
        run_dir = Path(run_dir)
        if not run_dir.is_absolute():
            run_dir = REPO_ROOT / run_dir
    resume = run_dir is not None and (run_dir / "run.json").exists()
    run = start_run(profile, run_dir, label="reproduce", resume=resume)
    print(f"[xlalign] run directory: {run.path}", flush=True)
    try:
        if estimate:
            up_front_estimate(profile, run, only=only)
        times = run_notebooks(profile, run, only=only, overrides=overrides)
    except BaseException as exc:  # a failed notebook, Ctrl-C, anything: the record says so
        run.finish(status="failed", error=f"{type(exc).__name__}: {exc}"[:500])
        raise
    run.finish(
        status="ok", notebook_wall_times_s=times, total_wall_time_s=round(sum(times.values()), 1)
    )
    print(f"[xlalign] done in {sum(times.values()):.0f} s; {report_line(run, times)}", flush=True)
    return run


def report_line(run: Run, times: dict[str, float]) -> str:
    """Where this run's report is, or why there is none: notebook 07 writes it, and ``--only`` may
    leave it out, or leave an earlier call's report in place without this call's results."""
    report = run.path / "report.md"
    rebuild = f"`--only 07 --run-dir {run.path}` builds it"
    if report.exists() and any(stem.startswith(REPORT_PREFIX) for stem in times):
        return f"report: {report}"
    if report.exists():
        return f"report: {report}, built before this call's notebooks ran; {rebuild} again"
    return f"no report: notebook 07 did not run; {rebuild}"
