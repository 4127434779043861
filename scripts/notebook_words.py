"""Count the narrative words (markdown cells) of each notebook.

    .venv/bin/python scripts/notebook_words.py              # notebooks/*.ipynb, a table
    .venv/bin/python scripts/notebook_words.py --json a.ipynb b.ipynb

A word is a whitespace-separated token of a markdown cell's text outside LaTeX display blocks ($$...$$)
and with markdown punctuation (#, *, `, -, |, >) stripped; tokens left empty are not counted.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

NOTEBOOKS = Path(__file__).resolve().parents[1] / "notebooks"
_DISPLAY_MATH = re.compile(r"\$\$.*?\$\$", re.DOTALL)
_MARKUP = "#*`|>-_"


def narrative_words(path: Path) -> int:
    nb = json.loads(path.read_text(encoding="utf-8"))
    words = 0
    for cell in nb.get("cells", []):
        if cell.get("cell_type") != "markdown":
            continue
        source = cell.get("source", "")
        text = "".join(source) if isinstance(source, list) else str(source)
        text = _DISPLAY_MATH.sub(" ", text)
        words += sum(1 for token in text.split() if token.strip(_MARKUP))
    return words


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "paths", nargs="*", type=Path, help="notebooks (default: notebooks/*.ipynb)"
    )
    parser.add_argument("--json", action="store_true", help="print {notebook: words} as JSON")
    args = parser.parse_args(argv)
    paths = args.paths or sorted(NOTEBOOKS.glob("[0-9][0-9]_*.ipynb"))
    counts = {p.stem: narrative_words(p) for p in paths}
    if args.json:
        print(json.dumps(counts, indent=2))
    else:
        width = max(len(k) for k in counts) if counts else 8
        for name, n in counts.items():
            print(f"{name:<{width}}  {n:>5}")
        print(f"{'total':<{width}}  {sum(counts.values()):>5}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
