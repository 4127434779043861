"""xlalign.paper.settings: what each paper states, checked against the paper profile and its comments."""

from __future__ import annotations

import re

import pytest

from xlalign.config import CONFIG_DIR, load_profile
from xlalign.paper.settings import SETTINGS, profile_value, provenance

PAPER_YAML = (CONFIG_DIR / "paper.yaml").read_text().splitlines()


def _line_of(key: str) -> tuple[int, str]:
    """Index and text of the paper.yaml line holding dotted ``key`` (or the inline mapping holding it)."""
    start, indent = 0, -1
    parts = key.split(".")
    for depth, part in enumerate(parts):
        for i in range(start, len(PAPER_YAML)):
            line = PAPER_YAML[i]
            stripped = line.lstrip()
            if not stripped or stripped.startswith("#"):
                continue
            level = len(line) - len(stripped)
            if level <= indent:
                break  # left the enclosing section
            if stripped.startswith(f"{part}:"):
                rest = parts[depth + 1 :]
                inline = stripped.split(":", 1)[1].split("#")[0]
                if rest and "{" in inline:
                    assert all(re.search(rf"\b{r}:", inline) for r in rest), key
                    return i, line
                start, indent = i + 1, level
                if not rest:
                    return i, line
                break
        else:
            break
    raise LookupError(key)


def _comment_above(index: int) -> str:
    lines = []
    i = index - 1
    while i >= 0 and PAPER_YAML[i].lstrip().startswith("#"):
        lines.append(PAPER_YAML[i])
        i -= 1
    return " ".join(lines)


def _section_comment(index: int) -> str:
    """The comment lines right above line ``index`` and above its top-level section."""
    i = index
    while PAPER_YAML[i].startswith(" "):
        i -= 1
    return _comment_above(index) + " " + _comment_above(i)


@pytest.mark.parametrize("setting", [s for s in SETTINGS if s.stated], ids=lambda s: s.key)
def test_the_paper_profile_has_every_value_the_papers_state(setting):
    assert profile_value(load_profile("paper").to_dict(), setting.key) == setting.value


@pytest.mark.parametrize("setting", [s for s in SETTINGS if not s.stated], ids=lambda s: s.key)
def test_every_value_the_papers_do_not_state_is_labelled_ours_in_paper_yaml(setting):
    index, line = _line_of(setting.key)
    comment = line.split("#", 1)[1] if "#" in line else ""
    assert re.search(r"\bours?\b", comment + " " + _section_comment(index)), (setting.key, line)


def test_nothing_in_paper_yaml_credits_the_paper_with_qlora():
    header = " ".join(line for line in PAPER_YAML[:8] if line.startswith("#"))
    assert (
        "QLoRA (NF4), LoRA r16/a32, beta 0.1 and" in header and "this project's choices" in header
    )
    assert "Batch alignment: QLoRA" not in header


def test_provenance_table():
    table = provenance(load_profile("cpu")).set_index("key")
    assert table.loc["lora.r", "origin"].startswith("ours") and table.loc["lora.r", "value"] == 16
    assert table.loc["train.learning_rate", "paper_value"] == 5e-6
    assert table.loc["train.learning_rate", "value"] == 5e-4  # the cpu profile's own, beside it
    assert table.loc["calm.top_p", "source"] == "CALM paper, Table 6"
    with pytest.raises(KeyError, match="no key 'train.nope'"):
        profile_value(load_profile("cpu").to_dict(), "train.nope")


def test_provenance_markdown_marks_ours():
    from xlalign.report.tables import provenance_markdown

    md = provenance_markdown(load_profile("paper"))
    row = next(line for line in md.splitlines() if line.startswith("| train.beta |"))
    assert "ours (not stated in the paper)" in row and "neither DPO's beta nor ORPO's lambda" in row
