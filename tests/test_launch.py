"""Training across processes: how many, the accelerate launch command, and a real 2-process launch.

The launched test trains the tiny-random model on two CPU processes (gloo) through the library's own
path (``experiments.steps.train`` -> ``train_preference`` -> ``accelerate launch`` of
``xlalign.training.launch``) while the test holds the run directory's lock, as a notebook does.
"""

from __future__ import annotations

import json
import re
import shutil
import sys
from collections import Counter
from dataclasses import dataclass

import pytest

from xlalign.config import REPO_ROOT, ConfigError, derive, load_profile
from xlalign.training import launch
from xlalign.training.run import TrainResult, train_preference, training_signature
from xlalign.training.sampling import read_batch_logs, verify_batch_log

CPU_2PROC = "configs/accelerate/cpu_2proc.yaml"


# --------------------------------------------------------------------------- how many processes


@pytest.mark.parametrize(("gpus", "expected"), [(0, 1), (1, 1), (2, 2), (4, 2)])
def test_gpu_smoke_uses_two_gpus_where_there_are_two(gpus, expected):
    profile = load_profile("gpu-smoke")
    assert profile.model.name == "gemma-3-270m" and profile.model.dtype == "bfloat16"
    assert profile.model.quantization == "nf4" and profile.train.max_steps <= 10
    assert launch.process_count(profile, gpus=gpus) == expected
    batch = launch.profile_global_batch(profile, gpus=gpus)
    assert batch == {
        "per_device": 7,
        "processes": expected,
        "grad_accum": 1,
        "global": 7 * expected,
    }


def test_paper_profile_trains_on_four_gpus_with_global_batch_28():
    paper = load_profile("paper")
    assert launch.process_count(paper, gpus=4) == 4
    assert launch.profile_global_batch(paper, gpus=8)["global"] == 7 * 4 * 1
    with pytest.raises(ConfigError, match=r"4 processes, one per GPU.*has 2 GPU\(s\)"):
        launch.process_count(paper, gpus=2)
    one = derive(paper, num_processes=1)
    assert launch.process_count(one, gpus=0) == 1
    assert launch.profile_global_batch(one, gpus=0)["global"] == 7


def test_cpu_processes_do_not_need_gpus():
    profile = derive(load_profile("smoke"), accelerate_config=CPU_2PROC)
    assert launch.process_count(profile, gpus=0) == 2
    assert launch.process_count(derive(profile, num_processes="auto"), gpus=0) == 2
    assert launch.process_count(load_profile("smoke"), gpus=0) == 1


def test_bad_accelerate_config_is_named(tmp_path):
    with pytest.raises(ConfigError, match="accelerate_config='configs/accelerate/none.yaml'"):
        launch.process_count(
            derive(load_profile("smoke"), accelerate_config="configs/accelerate/none.yaml")
        )
    bad = tmp_path / "bad.yaml"
    bad.write_text("num_processes: two\n")
    with pytest.raises(ConfigError, match=r"bad.yaml: num_processes='two'"):
        launch.process_count(derive(load_profile("smoke"), accelerate_config=str(bad)))
    with pytest.raises(ConfigError, match="num_processes=-1"):
        load_profile("smoke", overrides=["num_processes=-1"])


def test_launch_commands_render():
    smoke = load_profile("gpu-smoke")
    cmd = launch.launch_command(smoke, "/tmp/x/spec.json", 2, port=29611)
    assert cmd == [
        sys.executable, "-m", "accelerate.commands.launch",
        "--config_file", str(REPO_ROOT / "configs/accelerate/multi_gpu_2.yaml"),
        "--num_processes", "2", "--main_process_port", "29611",
        "-m", "xlalign.training.launch", "/tmp/x/spec.json",
    ]  # fmt: skip
    paper = launch.describe_launch(load_profile("paper"), gpus=4)
    assert paper["processes"] == 4 and paper["global_batch"]["global"] == 28
    assert (
        "--config_file " + str(REPO_ROOT / "configs/accelerate/multi_gpu_4.yaml")
        in (paper["command"])
    )
    assert "--num_processes 4 -m xlalign.training.launch <spec.json>" in paper["command"]
    assert launch.describe_launch(load_profile("gpu-smoke"), gpus=1)["command"] == "in process"


def test_in_a_launched_rank_training_stays_in_process(monkeypatch):
    profile = derive(load_profile("smoke"), accelerate_config=CPU_2PROC)
    assert launch.needs_launch(profile)
    monkeypatch.setenv("WORLD_SIZE", "2")
    assert not launch.needs_launch(profile)  # each rank trains; no launch from inside a launch
    assert launch.world_size(profile) == 2


def test_signature_carries_the_process_count():
    smoke = load_profile("smoke")
    assert "processes" not in training_signature(smoke, "orpo")  # in-process runs: as before
    two = derive(smoke, accelerate_config=CPU_2PROC)
    assert training_signature(two, "orpo") == training_signature(smoke, "orpo") | {"processes": 2}


def test_callbacks_cannot_cross_processes(tmp_path):
    profile = derive(load_profile("smoke"), accelerate_config=CPU_2PROC)
    with pytest.raises(ValueError, match="callbacks cannot reach the 2 processes"):
        train_preference(profile, [], tmp_path / "x", callbacks=[object()])


def test_spec_round_trip_and_errors(tmp_path):
    spec = launch.LaunchSpec(load_profile("smoke").to_dict(), "orpo", "/d", "/o", True)
    spec.write(tmp_path / "spec.json")
    assert launch.LaunchSpec.read(tmp_path / "spec.json") == spec
    (tmp_path / "bad.json").write_text(json.dumps({"method": "orpo"}))
    with pytest.raises(ConfigError, match=r"bad.json: missing field\(s\) \['profile'"):
        launch.LaunchSpec.read(tmp_path / "bad.json")


# --------------------------------------------------------------------------- a real launch


@dataclass
class _Data:
    """What ``steps.train`` reads from a ProbeData: the preference rows as a Dataset."""

    rows: list[dict]

    def train_dataset(self):
        from datasets import Dataset

        return Dataset.from_list(self.rows)


def _pref_rows(groups: int = 16) -> list[dict]:
    """Preference rows of ``groups`` queries in en/ar/zh with prompts of unequal length (the launch
    needs the grouping, not the probe's documents)."""
    words = {"en": "passage", "ar": "مقطع", "zh": "段落"}
    return [
        {
            "prompt": f"Query {g}: {' '.join([words[lang]] * (3 + g % 4 + len(lang)))}? Answer:",
            "chosen": " Yes, answer is present" if g % 2 else " I don't know",
            "rejected": " I don't know" if g % 2 else " Yes, answer is present",
            "sample_id": f"q{g:02d}",
            "lang": lang,
        }
        for g in range(groups)
        for lang in ("en", "ar", "zh")
    ]


def _files(out) -> set[str]:
    """Every file under ``out``; transformers' RNG state in a checkpoint is one file per rank."""
    return {
        re.sub(r"rng_state(_\d+)?\.pth$", "rng_state*.pth", str(p.relative_to(out)))
        for p in out.rglob("*")
        if p.is_file()
    }


@pytest.mark.slow
def test_two_cpu_processes_through_the_library(tiny_profile, tiny_model_dir, tmp_path):
    from xlalign.experiments.steps import train
    from xlalign.runs import start_run

    base = derive(
        tiny_profile,
        train={
            "method": "orpo",
            "max_steps": 2,
            "grad_accum": 2,
            "save_steps": 1,
            "max_length": 256,
        },
        run_root=str(tmp_path / "runs"),
    )
    profile = derive(base, accelerate_config=CPU_2PROC)
    run = start_run(profile)  # holds the run lock while the launched ranks train, as a kernel does
    try:
        res = train(profile, run, "orpo-aligned", _Data(_pref_rows()))
        out = run.path / "train" / "orpo-aligned"

        # What the run records: the global batch, in the result and in run.json.
        expected = {"per_device": 3, "processes": 2, "grad_accum": 2, "global": 12}
        assert res.batch == expected
        assert json.loads((out / "train_result.json").read_text())["batch"] == expected
        step = json.loads((run.path / "run.json").read_text())["steps"]["train/orpo-aligned"]
        assert step["batch"] == expected and step["steps"] == 2

        # Both ranks trained whole, disjoint aligned groups, and ended with the same adapter.
        rows = read_batch_logs(out)
        assert verify_batch_log(rows, "aligned", 3) == {
            "micro_batches": 2 * 2 * 2,
            "ranks": [0, 1],
            "steps": 2,
        }
        for s in range(2):
            by_rank = [
                {r["sample_ids"][0] for r in rows if r["step"] == s and r["rank"] == k}
                for k in (0, 1)
            ]
            assert len(by_rank[0]) == len(by_rank[1]) == 2 and not by_rank[0] & by_rank[1]
        assert Counter(r["rank"] for r in rows) == Counter({0: 4, 1: 4})
        digests = res.metrics["replica_adapter_sha256"]
        assert len(digests) == 2 and digests[0] == digests[1]

        # The same files, in the same places, as one process writes (plus rank 1's batch log).
        one = derive(base, num_processes=1)
        alone = train(one, run, "orpo-aligned-1proc", _Data(_pref_rows()))
        assert alone.batch == expected | {"processes": 1, "global": 6}
        assert _files(out) - {"batches.rank1.jsonl"} == _files(
            run.path / "train" / "orpo-aligned-1proc"
        )
        assert (out / "adapter" / "adapter_model.safetensors").is_file()

        # Resumable: an interrupted launch (checkpoint-1 kept) resumes at step 2, and logs it once.
        for name in ("train_result.json", "checkpoint-2", "adapter"):
            path = out / name
            if path.is_dir():
                shutil.rmtree(path)
            else:
                path.unlink()
        resumed = train_preference(profile, _Data(_pref_rows()).train_dataset(), out, resume=True)
        assert resumed.steps == 2 and resumed.batch == expected
        again = read_batch_logs(out)
        assert sorted((r["step"], r["rank"]) for r in again) == sorted(
            (r["step"], r["rank"]) for r in rows
        )
        assert [(r["step"], r["sample_ids"]) for r in again if r["step"] == 1] == [
            (r["step"], r["sample_ids"]) for r in rows if r["step"] == 1
        ]
        # A finished launch is reused without launching again.
        assert train(profile, run, "orpo-aligned", _Data(_pref_rows())) == TrainResult.from_dict(
            json.loads((out / "train_result.json").read_text())
        )
    finally:
        run.finish("ok")


def test_the_command_line_trains_through_the_launch(monkeypatch, tiny_model_dir, tmp_path, capsys):
    """``python -m xlalign train`` on a multi-process profile hands the training to the launch."""
    from xlalign import cli

    calls = []

    def fake_launch(profile, method, dataset, output_dir, resume):
        calls.append((profile.accelerate_config, method, len(dataset), output_dir, resume))
        return TrainResult(
            output_dir, output_dir / "adapter", 0, 0.0, 0, 0.0, output_dir / "t.jsonl", [], {},
            batch=launch.profile_global_batch(profile),
        )  # fmt: skip

    monkeypatch.setattr(launch, "train_launched", fake_launch)
    monkeypatch.setenv("XLALIGN_CACHE", str(tiny_model_dir.parent.parent))
    rc = cli.main(
        ["train", "--profile", "smoke", "--run-dir", str(tmp_path / "run"), "--label", "x"]
        + [f"accelerate_config={CPU_2PROC}", "train.grad_accum=2"]
    )
    assert rc == 0
    ((config, method, rows, out, resume),) = calls
    assert (config, method, out, resume) == (CPU_2PROC, "orpo", tmp_path / "run/train/x", True)
    assert rows > 0
    printed = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert printed["batch"] == {"per_device": 3, "processes": 2, "grad_accum": 2, "global": 12}


def test_checkpointed_training_runs_the_concatenated_forward(tiny_model_dir, tmp_path, caplog):
    """The paper and gpu-smoke profiles checkpoint activations, which keeps no KV cache to share:
    a shared-prompt DPO step there used to stop with "returned no expandable KV cache"."""
    from xlalign.training.run import trainer_config

    profile = derive(
        load_profile("smoke"),
        train={"method": "dpo", "max_steps": 1, "gradient_checkpointing": True, "max_length": 256},
    )
    assert profile.train.share_prompt
    assert not trainer_config(profile, tmp_path / "cfg").share_prompt
    assert "gradient checkpointing keeps no KV cache" in caplog.text
    res = train_preference(profile, _pref_rows(), tmp_path / "run")
    assert res.steps == 1 and res.batch["global"] == 3
    assert trainer_config(
        derive(profile, train={"gradient_checkpointing": False}), tmp_path
    ).share_prompt
