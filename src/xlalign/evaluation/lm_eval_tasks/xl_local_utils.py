"""Loader for the local lm-eval tasks in this folder: resolves their jsonl files next to this file.

lm-eval hands ``dataset_kwargs`` straight to ``datasets.load_dataset``, which resolves relative
``data_files`` against the current directory, so a plain ``dataset_path: json`` task would only
work when run from this folder. ``custom_dataset: !function xl_local_utils.load_local_json`` makes
lm-eval call this function instead (with the task's metadata and ``dataset_kwargs`` as keyword
arguments), and the paths are resolved here against this folder, wherever the package lives.
"""

from __future__ import annotations

from pathlib import Path

import datasets

TASKS_DIR = Path(__file__).resolve().parent


def _resolve(files: str | list[str]) -> str | list[str]:
    """Absolute path(s) for ``files`` given relative to this folder (absolute ones pass through)."""
    if isinstance(files, str):
        return str(TASKS_DIR / files)
    return [str(TASKS_DIR / f) for f in files]


def load_local_json(data_files: str | list[str] | dict[str, str | list[str]], **_metadata):
    """``datasets.load_dataset("json", data_files=...)`` with paths relative to this folder.

    ``_metadata`` absorbs what lm-eval passes besides ``dataset_kwargs`` (task version, config
    source, run metadata); none of it affects which data is loaded.
    """
    if isinstance(data_files, dict):
        resolved = {split: _resolve(files) for split, files in data_files.items()}
    else:
        resolved = _resolve(data_files)
    return datasets.load_dataset("json", data_files=resolved)
