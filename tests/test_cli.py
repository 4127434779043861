"""The command line (`python -m xlalign ...`, also the `accelerate launch` entry point) on smoke."""

from __future__ import annotations

import json

import pytest

from xlalign.cli import main


@pytest.fixture
def smoke_args(cache_dir, monkeypatch):
    monkeypatch.setenv("XLALIGN_CACHE", str(cache_dir))
    return ["--profile", "smoke"]


def _last_json(text: str):
    """The command's JSON result: the last top-level JSON value printed on stdout."""
    start = text.rfind("\n{")
    return json.loads(text[start + 1 if start >= 0 else 0 :])


def _record(run_dir) -> dict:
    from pathlib import Path

    return json.loads((Path(run_dir) / "run.json").read_text())


def _one_line_error(capsys) -> str:
    err = capsys.readouterr().err  # may hold progress bars (weights loading) before the error
    assert "Traceback" not in err
    last = err.strip().splitlines()[-1]
    assert last.startswith("xlalign: error: ") and err.count("xlalign: error: ") == 1
    return last


def test_validate_configs(capsys):
    assert main(["validate-configs"]) == 0
    assert capsys.readouterr().out.startswith("ok: ")


def test_train_then_evaluate_the_adapter(tmp_path, smoke_args, capsys):
    run_dir = str(tmp_path / "run")
    overrides = ["train.max_steps=1", "eval.max_items_per_lang=2"]
    assert main(["train", *smoke_args, "--run-dir", run_dir, "--label", "a", *overrides]) == 0
    trained = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert trained["steps"] == 1
    adapter = tmp_path / "run" / "train" / "a" / "adapter"
    assert (adapter / "adapter_config.json").exists()

    args = [
        "evaluate",
        *smoke_args,
        "--run-dir",
        run_dir,
        "--adapter",
        str(adapter),
        "--label",
        "a",
    ]
    assert main([*args, *overrides]) == 0
    summary = _last_json(capsys.readouterr().out)
    assert set(summary["accuracy"]) >= {"en"} and 0.0 <= summary["accuracy"]["en"] <= 100.0
    preds = (tmp_path / "run" / "eval" / "a" / "predictions.jsonl").read_text().splitlines()
    assert len(preds) == 2 * len(summary["accuracy"])  # 2 items in every evaluated language
    record = _record(run_dir)
    assert record["status"] == "ok" and record["end_time"] and "error" not in record


def test_resuming_with_other_overrides_is_a_one_line_error(tmp_path, smoke_args, capsys):
    run_dir = str(tmp_path / "run")
    assert main(["build-data", *smoke_args, "--run-dir", run_dir]) == 0
    capsys.readouterr()
    assert main(["build-data", *smoke_args, "--run-dir", run_dir, "data.k=3"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("xlalign: error: ") and "(data.k)" in err and "Traceback" not in err


def test_an_unknown_key_is_a_one_line_error(capsys):
    assert main(["validate-configs"]) == 0
    assert main(["build-data", "--profile", "smoke", "train.no_such_key=1"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("xlalign: error: ") and "no_such_key" in err


def test_build_data_marks_its_run_ok(tmp_path, smoke_args, capsys):
    run_dir = str(tmp_path / "run")
    assert main(["build-data", *smoke_args, "--run-dir", run_dir]) == 0
    record = _record(run_dir)
    assert record["status"] == "ok" and record["end_time"]
    assert not (tmp_path / "run" / ".lock.pid").exists()  # the lock went with the run


def test_an_overlong_prompt_is_a_one_line_error_and_a_failed_run(tmp_path, smoke_args, capsys):
    run_dir = str(tmp_path / "run")
    assert main(["build-data", *smoke_args, "--run-dir", run_dir, "data.max_prompt_tokens=10"]) == 2
    err = _one_line_error(capsys)
    assert "max_prompt_tokens=10" in err
    record = _record(run_dir)
    assert record["status"] == "failed" and "max_prompt_tokens=10" in record["error"]
    assert record["end_time"]


def test_a_training_config_mismatch_is_a_one_line_error(tmp_path, smoke_args, capsys):
    run_dir = tmp_path / "run"
    out = run_dir / "train" / "a"
    out.mkdir(parents=True)
    (out / "xlalign_train_config.json").write_text(json.dumps({"method": "sft"}))
    args = ["train", *smoke_args, "--run-dir", str(run_dir), "--label", "a", "train.max_steps=1"]
    assert main(args) == 2
    assert "holds a training run of a different config" in _one_line_error(capsys)
    record = _record(run_dir)
    assert record["status"] == "failed" and "different config" in record["error"]


def test_a_corrupt_prediction_file_is_a_one_line_error(tmp_path, smoke_args, capsys):
    run_dir = tmp_path / "run"
    preds = run_dir / "eval" / "x" / "predictions.jsonl"
    preds.parent.mkdir(parents=True)
    preds.write_text('not json\n{"item_id": "a"}\n')
    args = ["evaluate", *smoke_args, "--run-dir", str(run_dir), "--label", "x"]
    assert main([*args, "eval.max_items_per_lang=2"]) == 2
    assert "is not a valid prediction record" in _one_line_error(capsys)
    assert _record(run_dir)["status"] == "failed"


def test_a_library_value_error_keeps_its_traceback_and_fails_the_run(
    tmp_path, smoke_args, monkeypatch
):
    """Only the project's own checks become one-line errors; a ValueError from a library is a bug."""
    from xlalign import cli
    from xlalign.config import load_profile
    from xlalign.runs import start_run

    def boom(args):
        args.run = start_run(load_profile("smoke"), tmp_path / "run")
        int("not a number")

    monkeypatch.setattr(cli, "cmd_build_data", boom)
    with pytest.raises(ValueError, match="invalid literal"):
        main(["build-data", *smoke_args])
    record = _record(tmp_path / "run")
    assert record["status"] == "failed" and "invalid literal" in record["error"]


def test_reproduce_runs_in_the_given_run_dir_and_resumes_it(tmp_path, monkeypatch, capsys):
    """`reproduce --run-dir` was accepted and ignored: the notebooks ran in a new runs/<id>."""
    import xlalign.pipeline as pipeline

    ran = []
    monkeypatch.setattr(
        pipeline, "run_notebooks", lambda profile, run, only, overrides: ran.append(run.path) or {}
    )
    run_dir = tmp_path / "mine"
    args = ["reproduce", "--profile", "smoke", "--no-estimate", "--run-dir", str(run_dir)]
    assert main(args) == 0
    assert ran == [run_dir] and _record(run_dir)["status"] == "ok"
    assert main(args) == 0  # the same directory again: resumed, not refused
    assert ran == [run_dir, run_dir]
    assert main([*args, "--run-id", "other"]) == 2
    assert "not both" in _one_line_error(capsys)


def test_reproduce_names_the_report_only_where_notebook_07_wrote_it(tmp_path, monkeypatch, capsys):
    """`reproduce --only 03` printed "report: <run>/report.md", a file that no notebook had written."""
    import xlalign.pipeline as pipeline

    def fake(profile, run, only, overrides):
        if only is None or any(o.startswith("07") for o in only):
            (run.path / "report.md").write_text("# report\n")
            return {"03_batch_alignment": 1.0, "07_report": 1.0}
        return {"03_batch_alignment": 1.0}

    monkeypatch.setattr(pipeline, "run_notebooks", fake)
    run_dir = tmp_path / "r"
    args = ["reproduce", "--profile", "smoke", "--no-estimate", "--run-dir", str(run_dir)]
    assert main([*args, "--only", "03"]) == 0
    out = capsys.readouterr().out
    assert "no report: notebook 07 did not run" in out and f"--only 07 --run-dir {run_dir}" in out
    assert main(args) == 0
    assert f"report: {run_dir / 'report.md'}\n" in capsys.readouterr().out
    assert main([*args, "--only", "03"]) == 0
    assert "built before this call's notebooks ran" in capsys.readouterr().out


def test_the_report_is_rebuilt_on_every_call_the_other_notebooks_only_once(
    tmp_path, monkeypatch, capsys
):
    """The hint "`--only 07 --run-dir X` builds it again" skipped 07 as done in this run, so a report
    built before a later notebook ran could never be rebuilt."""
    from pathlib import Path

    import papermill

    import xlalign.pipeline as pipeline

    executed = []

    def fake_execute(src, dst, **kw):
        executed.append(Path(src).stem)
        if Path(src).stem.startswith("07"):
            done = sorted(p.stem for p in Path(dst).parent.glob("0[0-6]*.ipynb"))
            (Path(kw["parameters"]["RUN_DIR"]) / "report.md").write_text(" ".join(done))
        Path(dst).write_text("{}")

    names = ["03_batch_alignment", "05_ablations", "07_report"]
    monkeypatch.setattr(pipeline, "notebooks", lambda: [Path(f"{n}.ipynb") for n in names])
    monkeypatch.setattr(papermill, "execute_notebook", fake_execute)
    run_dir = tmp_path / "r"
    args = ["reproduce", "--profile", "smoke", "--no-estimate", "--run-dir", str(run_dir)]

    assert main([*args, "--only", "03", "07"]) == 0
    assert executed == ["03_batch_alignment", "07_report"]
    assert (run_dir / "report.md").read_text() == "03_batch_alignment"
    capsys.readouterr()
    assert main([*args, "--only", "05"]) == 0
    assert "built before this call's notebooks ran" in capsys.readouterr().out
    assert main([*args, "--only", "07"]) == 0  # what that line advises: it rebuilds the report
    assert executed[2:] == ["05_ablations", "07_report"]
    assert (run_dir / "report.md").read_text() == "03_batch_alignment 05_ablations"
    assert f"report: {run_dir / 'report.md'}\n" in capsys.readouterr().out
    assert main(args) == 0  # the whole chain, resumed: only the report runs again
    assert executed[4:] == ["07_report"]
