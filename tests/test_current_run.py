"""The profile's current run: notebooks opened without RUN_DIR share ``<run_root>/<profile>-current``."""

import subprocess
import sys

import pytest

from xlalign.config import load_profile
from xlalign.runs import (
    RunLockedError,
    current_link,
    current_run_dir,
    open_run,
    start_run,
)

_HOLD = """
import sys
from xlalign.config import load_profile
from xlalign.runs import start_run
run = start_run(load_profile("smoke", overrides=[f"run_root={sys.argv[2]}"]), sys.argv[1], resume=True)
print("held", flush=True)
sys.stdin.readline()
"""


def _smoke(root, *overrides):
    return load_profile("smoke", overrides=[f"run_root={root}", *overrides])


@pytest.fixture(autouse=True)
def _no_lock_marks(monkeypatch):
    for var in ("RANK", "LOCAL_RANK", "XLALIGN_RUN_LOCK_HELD"):
        monkeypatch.delenv(var, raising=False)


def test_without_run_dir_notebooks_of_one_profile_share_the_current_run(tmp_path):
    profile = _smoke(tmp_path)
    assert current_run_dir(profile) is None
    first = open_run(profile)
    link = current_link(tmp_path, "smoke")
    assert link.is_symlink() and link.resolve() == first.path.resolve()
    first.path.joinpath("tables").mkdir()
    first.finish("ok")  # a finished run is still the one the next notebook opens
    again = open_run(_smoke(tmp_path))
    assert again.path.resolve() == first.path.resolve() and again.record["resumed"]
    again.finish("ok")


def test_another_configuration_starts_a_new_current_run(tmp_path, capsys):
    first = open_run(_smoke(tmp_path))
    first.finish("ok")
    other = open_run(_smoke(tmp_path, "seed=7"))
    assert other.path != first.path
    assert "different config (seed)" in capsys.readouterr().out
    assert current_run_dir(_smoke(tmp_path)).resolve() == other.path.resolve()
    other.finish("ok")


def test_a_pinned_run_dir_is_used_and_becomes_current(tmp_path):
    pinned = tmp_path / "mine"
    run = open_run(_smoke(tmp_path), pinned)
    assert run.path == pinned
    assert current_link(tmp_path, "smoke").resolve() == pinned.resolve()
    run.finish("ok")


def test_a_deleted_current_run_is_replaced(tmp_path):
    import shutil

    first = open_run(_smoke(tmp_path))
    first.finish("ok")
    shutil.rmtree(first.path)
    assert current_run_dir(_smoke(tmp_path)) is None
    second = open_run(_smoke(tmp_path))
    assert (second.path / "run.json").exists() and "resumed" not in second.record
    second.finish("ok")


def test_the_current_run_open_in_another_kernel_is_refused_with_what_to_do(tmp_path):
    profile = _smoke(tmp_path)
    run = open_run(profile)
    run.finish("ok")  # releases the lock, so the other process can hold it
    holder = subprocess.Popen(
        [sys.executable, "-c", _HOLD, str(run.path), str(tmp_path)],
        text=True,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
    )
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(RunLockedError, match=rf"pid {holder.pid}.*current run.*Shut Down"):
            open_run(profile)
    finally:
        holder.stdin.close()
        assert holder.wait(timeout=120) == 0
    start_run(profile, run.path, resume=True).finish("ok")
