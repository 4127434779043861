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
