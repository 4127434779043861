"""Run records: provenance is written, runs never overwrite, secrets never land in records."""

import json

import pytest

from xlalign.config import load_profile
from xlalign.runs import RunMismatchError, redact, start_run, write_json


def test_run_record_holds_provenance(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_TOKEN", "hf_secret_value")
    profile = load_profile("smoke")
    run = start_run(profile, tmp_path / "r1", argv=["x", "--token", "t"])
    rec = json.loads((run.path / "run.json").read_text())
    for key in ("config", "packages", "git", "device", "seed", "start_time"):
        assert key in rec
    assert rec["packages"]["torch"] and rec["config"]["model"]["name"] == "tiny-random"
    assert "hf_secret_value" not in (run.path / "run.json").read_text()
    run.finish()
    assert json.loads((run.path / "run.json").read_text())["end_time"]


def test_a_new_run_never_overwrites(tmp_path):
    profile = load_profile("smoke")
    start_run(profile, tmp_path / "r")
    with pytest.raises(FileExistsError, match="already holds a run"):
        start_run(profile, tmp_path / "r")
    resumed = start_run(profile, tmp_path / "r", resume=True)
    assert resumed.record["resumed"]
    other = load_profile("smoke", overrides=["train.max_steps=5", "seed=3"])
    with pytest.raises(RunMismatchError, match=r"different config \(seed, train\.max_steps\)"):
        start_run(other, tmp_path / "r", resume=True)


def test_write_json_refuses_to_overwrite(tmp_path):
    write_json(tmp_path / "m.json", {"a": 1})
    with pytest.raises(FileExistsError):
        write_json(tmp_path / "m.json", {"a": 2})
    assert json.loads((tmp_path / "m.json").read_text()) == {"a": 1}


def test_redact_keeps_settings_that_count_tokens():
    cfg = {"data": {"max_prompt_tokens": 1024}, "eval": {"max_new_tokens": 12}, "tokens_per_s": 3.5}
    assert redact(cfg) == cfg
    assert redact({"token": "x", "HF_TOKEN": "y", "auth-token": "z"}) == {
        "token": "<redacted>",
        "HF_TOKEN": "<redacted>",
        "auth-token": "<redacted>",
    }


def test_redact_drops_secret_keys():
    assert redact({"hf_token": "x", "a": {"api_key": "y", "b": 1}}) == {
        "hf_token": "<redacted>",
        "a": {"api_key": "<redacted>", "b": 1},
    }


def test_steps_recorded_by_another_process_survive(tmp_path):
    """The pipeline's Run and a notebook kernel's Run share run.json; neither drops the other's steps."""
    profile = load_profile("smoke")
    pipeline = start_run(profile, tmp_path / "run")
    kernel = start_run(profile, tmp_path / "run", resume=True)
    kernel.step("train/orpo-aligned", wall_time_s=12.0)
    kernel.step("eval/orpo-aligned", wall_time_s=3.0)
    pipeline.step("notebook/03_batch_alignment", status="ok", wall_time_s=20.0)
    pipeline.finish("ok")
    steps = json.loads((tmp_path / "run" / "run.json").read_text())["steps"]
    assert set(steps) == {"train/orpo-aligned", "eval/orpo-aligned", "notebook/03_batch_alignment"}
    assert steps["train/orpo-aligned"] == {"wall_time_s": 12.0}


def test_a_stale_copy_of_a_step_never_replaces_the_newer_record(tmp_path):
    """Measured in a chain: notebook 02's kernel recorded eval/baseline (110 items), 03's recorded it
    again (280), and the pipeline's Run, holding 02's copy, put the 110-item record back."""
    profile = load_profile("smoke")
    pipeline = start_run(profile, tmp_path / "run")
    nb02 = start_run(profile, tmp_path / "run", resume=True)
    nb02.step("eval/base", items=110, wall_time_s=49.1)
    pipeline.step("notebook/02_baseline_gap", status="ok")  # the pipeline now holds 02's copy
    nb03 = start_run(profile, tmp_path / "run", resume=True)
    nb03.step("eval/base", items=280, wall_time_s=70.0)
    pipeline.step("notebook/03_batch_alignment", status="ok")
    pipeline.finish("ok")
    steps = json.loads((tmp_path / "run" / "run.json").read_text())["steps"]
    assert steps["eval/base"]["items"] == 280
    assert steps["eval/base"]["earlier"] == [{"items": 110, "wall_time_s": 49.1}]
    assert set(steps) == {"eval/base", "notebook/02_baseline_gap", "notebook/03_batch_alignment"}
    assert pipeline.record["steps"]["eval/base"]["items"] == 280


_HOLD = """
import sys
from xlalign.config import load_profile
from xlalign.runs import start_run
run = start_run(load_profile("smoke"), sys.argv[1], resume=True)
print("held", flush=True)
sys.stdin.readline()  # hold the run until the test closes stdin
run.finish("ok")
"""

_OPEN = """
import sys
from xlalign.config import load_profile
from xlalign.runs import start_run
run = start_run(load_profile("smoke"), sys.argv[1], resume=True)
run.step("kernel/step", status="ok")
print("owns_lock", run.owns_lock)
"""


def _python(code, *args, **kw):
    import subprocess
    import sys

    return subprocess.Popen([sys.executable, "-c", code, *map(str, args)], text=True, **kw)


def test_a_second_process_on_the_same_run_is_refused_naming_the_holder(tmp_path, monkeypatch):
    import subprocess

    from xlalign.runs import RunLockedError

    for var in ("RANK", "LOCAL_RANK", "XLALIGN_RUN_LOCK_HELD"):
        monkeypatch.delenv(var, raising=False)
    profile = load_profile("smoke")
    run_dir = tmp_path / "run"
    holder = _python(_HOLD, run_dir, stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(
            RunLockedError, match=rf"in use by another xlalign process \(pid {holder.pid}"
        ):
            start_run(profile, run_dir, resume=True)
        # The mark lets in only descendants of the holder, not any process that sets it.
        monkeypatch.setenv("XLALIGN_RUN_LOCK_HELD", str(run_dir))
        with pytest.raises(RunLockedError, match=f"pid {holder.pid}"):
            start_run(profile, run_dir, resume=True)
        monkeypatch.delenv("XLALIGN_RUN_LOCK_HELD")
    finally:
        holder.stdin.close()
        assert holder.wait(timeout=120) == 0
    rerun = start_run(profile, run_dir, resume=True)
    assert rerun.owns_lock and json.loads((run_dir / ".lock.pid").read_text())["pid"] != holder.pid
    rerun.finish("ok")
    assert not (run_dir / ".lock.pid").exists()
    assert json.loads((run_dir / "run.json").read_text())["status"] == "ok"


def test_children_marked_by_the_holder_and_other_ranks_are_let_in(tmp_path, monkeypatch):
    """The pipeline holds the lock while papermill's kernels record their steps in the same run."""
    import subprocess

    for var in ("RANK", "LOCAL_RANK", "XLALIGN_RUN_LOCK_HELD"):
        monkeypatch.delenv(var, raising=False)
    profile = load_profile("smoke")
    run = start_run(profile, tmp_path / "run")
    assert run.owns_lock
    monkeypatch.setenv("XLALIGN_RUN_LOCK_HELD", str(run.path))
    kernel = _python(_OPEN, run.path, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    out, err = kernel.communicate(timeout=120)
    assert kernel.returncode == 0, err
    assert out.strip() == "owns_lock False"
    monkeypatch.delenv("XLALIGN_RUN_LOCK_HELD")
    monkeypatch.setenv("LOCAL_RANK", "1")
    rank1 = _python(_OPEN, run.path, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    out, err = rank1.communicate(timeout=120)
    assert rank1.returncode == 0, err
    run.finish("ok")
    assert "kernel/step" in json.loads((run.path / "run.json").read_text())["steps"]


def test_finish_records_the_error_of_a_failed_run(tmp_path):
    run = start_run(load_profile("smoke"), tmp_path / "r")
    run.finish("failed", error="ValueError: prompt too long")
    rec = json.loads((tmp_path / "r" / "run.json").read_text())
    assert rec["status"] == "failed" and rec["error"] == "ValueError: prompt too long"
    assert rec["end_time"]
