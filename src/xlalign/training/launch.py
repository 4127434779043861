"""Training across processes: one entry point that ``accelerate launch`` runs on every rank.

A profile whose ``accelerate_config`` / ``num_processes`` ask for more than one process trains here;
``train_preference`` and ``train_sft`` call ``train_launched`` instead of training in their own process.

    # what train_launched runs (the spec holds the resolved profile, the dataset's path, the output dir):
    accelerate launch --config_file configs/accelerate/multi_gpu_4.yaml --num_processes 4 \\
        --main_process_port 29517 -m xlalign.training.launch /tmp/xlalign-launch-x/spec.json
    # the same spec in one process (what each rank does):
    python -m xlalign.training.launch /tmp/xlalign-launch-x/spec.json

Every rank loads its own model (a 4-bit one on its own GPU, ``models.quantized_device_map``) and trains
with ``run.train_in_process``; rank 0 writes ``train_result.json``, the adapter and ``train_log.jsonl``,
every rank its ``batches.rank{r}.jsonl``: the same files, in the same places, as one process writes.
The ranks never open the run directory's record or lock: the caller holds both and records the step.
"""

from __future__ import annotations

import argparse
import collections
import json
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import yaml

from xlalign.config import REPO_ROOT, ConfigError, Profile, profile_from_dict

if TYPE_CHECKING:
    from xlalign.training.run import TrainResult

log = logging.getLogger(__name__)

SPEC_FILE = "spec.json"
DATASET_DIR = "dataset"


class LaunchError(RuntimeError):
    """``accelerate launch`` of a training run failed; the message holds the command and its last lines."""


# --------------------------------------------------------------------------- how many processes


def accelerate_config_path(profile: Profile) -> Path | None:
    """The profile's accelerate config (relative paths are from the repository root), checked to exist."""
    if not profile.accelerate_config:
        return None
    path = Path(profile.accelerate_config).expanduser()
    path = path if path.is_absolute() else REPO_ROOT / path
    if not path.is_file():
        raise ConfigError(
            f"accelerate_config={profile.accelerate_config!r}: {path} does not exist "
            "(configs/accelerate/ holds the shipped ones)"
        )
    return path


def accelerate_settings(profile: Profile) -> dict:
    """The profile's accelerate config as a mapping ({} without one)."""
    path = accelerate_config_path(profile)
    if path is None:
        return {}
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"accelerate_config {path}: not valid YAML ({exc})") from exc
    if not isinstance(data, dict):
        raise ConfigError(f"accelerate_config {path}: top level must be a mapping")
    n = data.get("num_processes", 1)
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ConfigError(f"accelerate_config {path}: num_processes={n!r} must be an integer >= 1")
    return data


def _gpu_count() -> int:
    import torch

    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def process_count(profile: Profile, gpus: int | None = None) -> int:
    """How many training processes the profile asks for on this machine (``gpus``: GPUs found here).

    ``num_processes`` 0: the accelerate config's ``num_processes`` (1 without a config); N: N; ``auto``:
    the config's number capped at the GPUs here, at least 1 (the gpu-smoke profile: 2 processes on a
    two-GPU machine, 1 on a one-GPU machine). A GPU config asking for more processes than there are
    GPUs is refused: one process per GPU, and a silent cut would change the global batch.
    """
    settings = accelerate_settings(profile)
    configured = settings.get("num_processes", 1)
    want = profile.num_processes
    gpus = _gpu_count() if gpus is None else gpus
    # Without a config, processes run on the CPU where there is no GPU (as accelerate launch does).
    on_cpu = bool(settings.get("use_cpu", False)) if settings else gpus == 0
    if want == "auto" and on_cpu:
        return configured
    if want == "auto":
        return max(1, min(configured, gpus))
    n = configured if want == 0 else want
    if n > 1 and not on_cpu and n > gpus:
        raise ConfigError(
            f"profile {profile.name!r} trains with {n} processes, one per GPU "
            f"({profile.accelerate_config or 'num_processes'}), but this machine has {gpus} GPU(s); "
            "set num_processes=<GPUs here> (the global batch shrinks with it) or num_processes=1"
        )
    return n


def in_launched_process() -> bool:
    """True inside a process that ``accelerate launch`` / torchrun started as one of several."""
    try:
        return int(os.environ.get("WORLD_SIZE", "1")) > 1
    except ValueError:
        return False


def needs_launch(profile: Profile) -> bool:
    """True when training must go through ``accelerate launch`` rather than run in this process."""
    return not in_launched_process() and process_count(profile) > 1


def global_batch(per_device: int, processes: int, grad_accum: int) -> dict[str, int]:
    """Rows per optimizer step: per device x processes x accumulation (what run.json records)."""
    return {
        "per_device": per_device,
        "processes": processes,
        "grad_accum": grad_accum,
        "global": per_device * processes * grad_accum,
    }


def world_size(profile: Profile) -> int:
    """The processes this training runs on: the launch's own inside a launched rank, else the profile's."""
    if in_launched_process():
        return int(os.environ["WORLD_SIZE"])
    return process_count(profile)


def profile_global_batch(profile: Profile, gpus: int | None = None) -> dict[str, int]:
    """The global batch the profile trains with on a machine with ``gpus`` GPUs (default: this one)."""
    t = profile.train
    return global_batch(t.batch_size, process_count(profile, gpus), t.grad_accum)


def describe_launch(profile: Profile, gpus: int | None = None) -> dict:
    """What training on this profile launches, for plans and reports: processes, global batch, command."""
    n = process_count(profile, gpus)
    return {
        "accelerate_config": profile.accelerate_config or None,
        "num_processes": profile.num_processes,
        "processes": n,
        "global_batch": profile_global_batch(profile, gpus),
        "command": " ".join(launch_command(profile, "<spec.json>", n)) if n > 1 else "in process",
    }


# --------------------------------------------------------------------------- the launch


@dataclass
class LaunchSpec:
    """What every rank needs: the resolved profile, the method, the dataset on disk, where to write."""

    profile: dict
    method: str
    dataset: str
    output_dir: str
    resume: bool

    def write(self, path: Path) -> None:
        path.write_text(json.dumps(self.__dict__, indent=1))

    @classmethod
    def read(cls, path: str | Path) -> LaunchSpec:
        try:
            data = json.loads(Path(path).read_text())
        except (OSError, ValueError) as exc:
            raise ConfigError(f"launch spec {path}: cannot be read ({exc})") from exc
        missing = [k for k in cls.__dataclass_fields__ if k not in data]
        if missing:
            raise ConfigError(f"launch spec {path}: missing field(s) {missing}")
        return cls(**{k: data[k] for k in cls.__dataclass_fields__})


def free_port() -> int:
    """A TCP port free right now, so that two launches on one machine do not meet on 29500."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch_command(
    profile: Profile, spec_path: str | Path, processes: int, port: int | None = None
) -> list[str]:
    """The ``accelerate launch`` command line that trains ``spec_path`` on ``processes`` processes."""
    config = accelerate_config_path(profile)
    cmd = [sys.executable, "-m", "accelerate.commands.launch"]
    if config is not None:
        cmd += ["--config_file", str(config)]
    else:
        cmd += ["--multi_gpu"] if _gpu_count() else ["--multi_gpu", "--cpu"]
    cmd += ["--num_processes", str(processes)]
    if port is not None:
        cmd += ["--main_process_port", str(port)]
    return [*cmd, "-m", "xlalign.training.launch", str(spec_path)]


def _stream(cmd: list[str], env: dict) -> tuple[int, list[str]]:
    """Run ``cmd``, echoing its output here line by line (a notebook cell shows it); its last lines."""
    tail: collections.deque[str] = collections.deque(maxlen=60)
    proc = subprocess.Popen(
        cmd,
        cwd=REPO_ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        bufsize=1,
        start_new_session=True,  # so that an interrupt here can end every rank, and only them
    )
    try:
        assert proc.stdout is not None
        for line in proc.stdout:
            sys.stdout.write(line)
            tail.append(line)
        return proc.wait(), list(tail)
    except BaseException:
        try:
            os.killpg(proc.pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
        proc.wait()
        raise


def train_launched(
    profile: Profile, method: str, dataset, output_dir: str | Path, resume: bool
) -> TrainResult:
    """Train ``dataset`` into ``output_dir`` on ``process_count(profile)`` processes and return the
    result rank 0 recorded. The dataset travels through a temporary directory, removed afterwards."""
    from xlalign.models import model_source
    from xlalign.training.run import RESULT_FILE, TrainResult

    processes = process_count(profile)
    out = Path(output_dir).resolve()
    model_source(profile)  # build a model cache (GGUF conversion) once, not on every rank
    tmp = Path(tempfile.mkdtemp(prefix="xlalign-launch-"))
    try:
        dataset.save_to_disk(str(tmp / DATASET_DIR))
        spec = LaunchSpec(profile.to_dict(), method, str(tmp / DATASET_DIR), str(out), resume)
        spec.write(tmp / SPEC_FILE)
        cmd = launch_command(profile, tmp / SPEC_FILE, processes, port=free_port())
        log.info("training %s on %d processes: %s", out, processes, " ".join(cmd))
        rc, tail = _stream(cmd, dict(os.environ))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    if rc != 0:
        raise LaunchError(
            f"training {out} on {processes} processes failed (exit status {rc}); command: "
            f"{' '.join(cmd)}\nlast lines:\n{''.join(tail)}"
        )
    done = out / RESULT_FILE
    if not done.exists():
        raise LaunchError(
            f"training {out} ended without writing {done}; last lines:\n{''.join(tail)}"
        )
    return TrainResult.from_dict(json.loads(done.read_text()))


# --------------------------------------------------------------------------- every rank


def main(spec: LaunchSpec):
    """Train one spec in this process: seed, log the resolved config, load the data, train, save."""
    from datasets import load_from_disk
    from transformers import set_seed

    from xlalign.training.run import train_in_process

    profile = profile_from_dict(spec.profile)
    set_seed(profile.seed)
    if os.environ.get("RANK", "0") == "0":
        log.info("resolved profile: %s", json.dumps(spec.profile))
    dataset = load_from_disk(spec.dataset)
    return train_in_process(
        profile, spec.method, dataset, spec.output_dir, resume=spec.resume, callbacks=None
    )


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("spec", help="the launch spec (JSON) train_launched writes")
    result = main(LaunchSpec.read(parser.parse_args().spec))
    if os.environ.get("RANK", "0") == "0":
        print(json.dumps({"steps": result.steps, "batch": result.batch}))
