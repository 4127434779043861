"""Published result tables of the two papers (data/paper/), loaded and validated, with model names.

The tidy schema is data/RESULTS_SCHEMA.md's; ``wide`` renders one block as the paper prints it.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import pandas as pd
import yaml

from xlalign.config import REPO_ROOT

PAPER_DIR = REPO_ROOT / "data" / "paper"
MANIFEST_PATH = PAPER_DIR / "manifest.yaml"

# The tidy schema of data/RESULTS_SCHEMA.md (the same one tables.py writes for our runs).
SCHEMA_COLUMNS = ["table", "block", "model", "column", "value", "delta", "ci_low", "ci_high"]
TEXT_COLUMNS = SCHEMA_COLUMNS[:4]
NUMERIC_COLUMNS = SCHEMA_COLUMNS[4:]

LANGUAGES = {
    "english": "en",
    "arabic": "ar",
    "spanish": "es",
    "french": "fr",
    "japanese": "ja",
    "portuguese": "pt",
    "chinese": "zh",
    "thai": "th",
    "vietnamese": "vi",
    "hungarian": "hu",
    "romanian": "ro",
    "italian": "it",
    "german": "de",
}

# Tolerances, in the printed unit (percentage points). Every cell is printed rounded to its last
# digit, so a relation that holds exactly before rounding can be off by rounding alone:
# - a mean of cells printed with 1 decimal is off by at most 0.05 (each input is), and the printed
#   mean is itself rounded by up to 0.05, so |printed mean - mean of printed cells| <= 0.1;
# - a printed difference a - b: a and b are each off by up to 0.05, and the printed delta by 0.05 more
#   (0.15), but all three are multiples of 0.1, so 0.1 is the largest gap rounding can produce;
# - one number printed twice: a match is exact, or within half a unit of the coarser print (41.65 in
#   one table vs 41.7 in another), hence 0.05.
# Anything beyond these cannot come from rounding, so it is a real inconsistency of the paper.
MEAN_TOL = 0.1
DELTA_TOL = 0.1
SAME_NUMBER_TOL = 0.05
# AC3 (harmonic mean of accuracy and consistency): d AC3 / d input is about 0.5 each, so 1-decimal
# accuracies (off <= 0.05) and 2-decimal consistency move it <= 0.03; plus 0.005 for its own print.
AC3_TOL = 0.05
# Comparisons of floats that were parsed from decimal text need a hair of slack.
_EPS = 1e-9

# Printed model names -> one canonical name per model, so tables that spell a model differently
# (Table 2 "Llama-3-8B", Table 5 "Llama-3-8B-Instruct", Table 1 "Llama-3-1-70B") can be joined.
# Both papers use instruct models unless they say otherwise; the CALM paper's Llama3-8B-Instruct
# and Mistral-7B-Instruct-v0.2 are the same checkpoints as the batch-alignment paper's.
MODEL_ALIASES = {
    "Mistral-7B-v0.1": "Mistral-7B-Instruct-v0.1",
    "Mistral-7B-v0.2": "Mistral-7B-Instruct-v0.2",
    "Mistral-7B-v0.3": "Mistral-7B-Instruct-v0.3",
    "Mixtral-8x22B": "Mixtral-8x22B-Instruct-v0.1",
    "Mixtral-8x22B-v0.1": "Mixtral-8x22B-Instruct-v0.1",
    "Llama-3-8B": "Llama-3-8B-Instruct",
    "Llama-3-70B": "Llama-3-70B-Instruct",
    "Llama-3.1-8B": "Llama-3.1-8B-Instruct",
    "Llama-3.1-70B": "Llama-3.1-70B-Instruct",
    "Llama-3-1-70B": "Llama-3.1-70B-Instruct",  # ba Table 1 as extracted from the PDF
    # CALM paper
    "Llama": "Llama-3-8B-Instruct",
    "Llama3": "Llama-3-8B-Instruct",
    "Llama3-8B": "Llama-3-8B-Instruct",
    "Llama3-8B-Instruct": "Llama-3-8B-Instruct",
    "Mistral": "Mistral-7B-Instruct-v0.2",
    "Mistral-7B": "Mistral-7B-Instruct-v0.2",
    "Mistral-7B-Instruct": "Mistral-7B-Instruct-v0.2",
}

# Total parameters in billions (Mixtral-8x22B: 141B total, 39B active per token).
MODEL_PARAMS_B = {
    "Mistral-7B-Instruct-v0.1": 7.0,
    "Mistral-7B-Instruct-v0.2": 7.0,
    "Mistral-7B-Instruct-v0.3": 7.0,
    "Mixtral-8x22B-Instruct-v0.1": 141.0,
    "Llama-3-8B-Instruct": 8.0,
    "Llama-3-70B-Instruct": 70.0,
    "Llama-3.1-8B-Instruct": 8.0,
    "Llama-3.1-70B-Instruct": 70.0,
}
# Same with Mixtral at its active parameters: the sizes under which ba Fig. 7's printed
# correlations (0.23 DPO, 0.21 ORPO) are reproduced.
MODEL_ACTIVE_PARAMS_B = {**MODEL_PARAMS_B, "Mixtral-8x22B-Instruct-v0.1": 39.0}


class PaperDataError(ValueError):
    """A table file or the manifest does not follow the schema."""


@dataclass(frozen=True)
class Discrepancy:
    """One printed number that disagrees with what other printed numbers imply."""

    table: str
    block: str
    model: str
    column: str
    printed: float
    expected: float
    note: str = ""
    check: str = ""

    def location(self) -> tuple[str, str, str, str, str]:
        """Where the discrepancy is, and which check found it."""
        return (self.table, self.block, self.model, self.column, self.check)

    def matches(self, other: Discrepancy, tol: float = 0.01) -> bool:
        """Same cell and check, same printed and expected numbers up to ``tol`` (notes ignored)."""
        return (
            self.location() == other.location()
            and abs(self.printed - other.printed) <= tol
            and abs(self.expected - other.expected) <= tol
        )

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


# --------------------------------------------------------------------------------------------
# Loading


def table_path(key: str) -> Path:
    """CSV file of a published table, e.g. ``ba_t06`` -> data/paper/ba_t06.csv."""
    if not re.fullmatch(r"[a-z]+_t\d\d", key):
        raise PaperDataError(f"bad table key {key!r}; expected e.g. 'ba_t06' or 'calm_t01'")
    return PAPER_DIR / f"{key}.csv"


def _parse_number(text: str, path: Path, line: int, column: str, required: bool) -> float:
    text = text.strip()
    if text == "":
        if required:
            raise PaperDataError(f"{path}: line {line}: column {column!r} is empty")
        return math.nan
    try:
        number = float(text)
    except ValueError:
        raise PaperDataError(
            f"{path}: line {line}: column {column!r} is not a number: {text!r}"
        ) from None
    if not math.isfinite(number):
        raise PaperDataError(f"{path}: line {line}: column {column!r} is not finite: {text!r}")
    return number


def read_tidy(path: str | Path) -> pd.DataFrame:
    """Read and validate a tidy results CSV (published table or one of our runs).

    Raises PaperDataError naming the file and line of the first malformed cell.
    """
    path = Path(path)
    raw = pd.read_csv(path, dtype=str, keep_default_na=False)
    missing = [c for c in SCHEMA_COLUMNS if c not in raw.columns]
    if missing:
        raise PaperDataError(f"{path}: missing required columns {missing}")
    if raw.empty:
        raise PaperDataError(f"{path}: no rows")
    records = []
    for i, row in enumerate(raw.to_dict("records")):
        line = i + 2  # 1-based, after the header line
        for col in TEXT_COLUMNS:
            if not row[col].strip():
                raise PaperDataError(f"{path}: line {line}: column {col!r} is empty")
        record = {col: row[col].strip() for col in TEXT_COLUMNS}
        for col in NUMERIC_COLUMNS:
            record[col] = _parse_number(row[col], path, line, col, required=col == "value")
        records.append(record)
    frame = pd.DataFrame.from_records(records, columns=SCHEMA_COLUMNS)
    dup = frame.duplicated(subset=TEXT_COLUMNS, keep=False)
    if dup.any():
        first = frame[dup].iloc[0]
        raise PaperDataError(
            f"{path}: line {int(dup.idxmax()) + 2}: duplicate cell "
            f"{tuple(first[c] for c in TEXT_COLUMNS)}"
        )
    return frame


def load_table(key: str) -> pd.DataFrame:
    """One published table in the tidy schema, validated, e.g. ``load_table("ba_t06")``."""
    path = table_path(key)
    if not path.exists():
        raise PaperDataError(f"no such table file: {path}")
    frame = read_tidy(path)
    wrong = frame.index[frame["table"] != key]
    if len(wrong):
        raise PaperDataError(
            f"{path}: line {int(wrong[0]) + 2}: table is {frame.at[wrong[0], 'table']!r}, "
            f"expected {key!r}"
        )
    return frame


def load_manifest() -> dict:
    """data/paper/manifest.yaml as a dict (read afresh on each call, so edits show up)."""
    with MANIFEST_PATH.open(encoding="utf-8") as fh:
        data = yaml.safe_load(fh)
    if not isinstance(data, dict) or not isinstance(data.get("tables"), list):
        raise PaperDataError(f"{MANIFEST_PATH}: expected a mapping with a 'tables' list")
    return data


def table_keys(manifest: Mapping | None = None) -> list[str]:
    """Keys of all tables listed in the manifest, in manifest order."""
    manifest = manifest or load_manifest()
    return [entry["key"] for entry in manifest["tables"]]


def load_all(manifest: Mapping | None = None) -> dict[str, pd.DataFrame]:
    """Every table of the manifest, keyed by table key."""
    return {key: load_table(key) for key in table_keys(manifest)}


def figure_frame(figure: str, manifest: Mapping | None = None) -> pd.DataFrame:
    """The tables a paper figure is drawn from (manifest ``figures``), concatenated."""
    manifest = manifest or load_manifest()
    entries = {f["key"]: f for f in manifest.get("figures", [])}
    if figure not in entries:
        raise PaperDataError(f"unknown figure {figure!r}; known: {sorted(entries)}")
    return pd.concat([load_table(key) for key in entries[figure]["tables"]], ignore_index=True)


# --------------------------------------------------------------------------------------------
# Names


def canonical_model(name: str) -> str:
    """One name per model across tables (printed variants mapped; unknown names unchanged)."""
    name = name.replace("\u00d7", "x").strip()
    return MODEL_ALIASES.get(name, name)


def short_model(name: str) -> str:
    """Compact label for plots: the canonical name without ``-Instruct``."""
    return canonical_model(name).replace("-Instruct", "")


def model_size_b(name: str, sizes: Mapping[str, float] | None = None) -> float:
    """Parameters in billions: from ``sizes`` (default MODEL_PARAMS_B), else parsed from the name.

    Parsing handles names like ``gemma-3-270m`` (0.27) or ``Qwen2-1.5B`` (1.5).
    """
    sizes = MODEL_PARAMS_B if sizes is None else sizes
    canon = canonical_model(name)
    for key in (name, canon):
        if key in sizes:
            return float(sizes[key])
    match = re.search(r"(\d+(?:\.\d+)?)\s*([bBmM])(?![a-zA-Z])", canon)
    if not match:
        raise KeyError(f"no parameter count for model {name!r}; pass sizes=")
    number, unit = float(match.group(1)), match.group(2).lower()
    return number if unit == "b" else number / 1000.0


def split_column(column: str) -> tuple[str | None, str | None]:
    """(dataset prefix, language) of a language column, e.g. 'xcsqa_french' -> ('xcsqa', 'french').

    Returns (None, None) for non-language columns such as 'rest_avg' or 'bs_4'.
    """
    for language in LANGUAGES:
        if column == language:
            return None, language
        if column.endswith("_" + language):
            return column[: -len(language) - 1], language
    return None, None


def is_language(column: str) -> bool:
    return split_column(column)[1] is not None


def _in_order(values: Iterable[str]) -> list[str]:
    """Unique values in first-seen order (the printed order of rows and columns)."""
    return list(dict.fromkeys(values))


def wide(df: pd.DataFrame, block: str) -> pd.DataFrame:
    """Models x columns of one block (values only), rows and columns in printed order."""
    part = df[df["block"] == block]
    if part.empty:
        raise KeyError(f"block {block!r} not in {_in_order(df['block'])}")
    table = part.pivot(index="model", columns="column", values="value")
    return table.loc[_in_order(part["model"]), _in_order(part["column"])].rename_axis(
        index="model", columns=None
    )
