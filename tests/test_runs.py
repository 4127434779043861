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
