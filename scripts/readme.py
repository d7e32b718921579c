"""Render README.md from nbs/index.ipynb (nbdev's README source) without Quarto.

`nbdev-readme` needs Quarto, which cannot be installed on every machine (not here: no registry ships it). The
index notebook holds markdown cells only (plus `#| hide` cells), so the README is those cells joined.
Usage: `python scripts/readme.py` writes README.md; `--check` exits 1 when README.md is out of date."""
import json, sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def render(index: Path = ROOT/"nbs"/"index.ipynb") -> str:
    "The README text for the index notebook: its markdown cells, and the source of its visible code cells."
    nb = json.loads(index.read_text())
    parts = []
    for c in nb["cells"]:
        src = "".join(c["source"]) if isinstance(c["source"], list) else c["source"]
        if src.lstrip().startswith("#| hide") or c["cell_type"] == "raw": continue
        parts.append(src if c["cell_type"] == "markdown" else f"```python\n{src}\n```")
    return (
        "<!-- Generated from nbs/index.ipynb by scripts/readme.py: edit the notebook, not this file. -->\n\n"
        + "\n\n".join(parts).strip()
        + "\n"
    )


def main(argv):
    "Write README.md, or with --check report whether it is current."
    text, out = render(), ROOT/"README.md"
    if "--check" in argv:
        if not out.exists() or out.read_text() != text:
            print("README.md is out of date with nbs/index.ipynb: run `python scripts/readme.py`", file=sys.stderr)
            return 1
        return 0
    out.write_text(text)
    return 0


if __name__ == "__main__": sys.exit(main(sys.argv[1:]))
