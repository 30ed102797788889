"""Every chapter is a clean notebook that the book lists and Colab can run."""
from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
CHAPTERS = sorted((ROOT / "chapters").glob("*.ipynb"))


def _toc_files() -> list[str]:
    toc = yaml.safe_load((ROOT / "_toc.yml").read_text())
    files = [toc["root"]]
    for part in toc.get("parts", []):
        files += [c["file"] for c in part["chapters"]]
    return files


def test_toc_lists_only_existing_pages():
    for entry in _toc_files():
        candidates = [ROOT / f"{entry}{ext}" for ext in (".md", ".ipynb")]
        assert any(p.exists() for p in candidates), f"_toc.yml lists {entry}, which does not exist"


def test_every_chapter_is_in_the_toc():
    listed = set(_toc_files())
    for nb in CHAPTERS:
        assert f"chapters/{nb.stem}" in listed, f"{nb.name} is not in _toc.yml"


@pytest.mark.parametrize("path", CHAPTERS, ids=lambda p: p.name)
def test_chapter_notebook_is_clean_and_colab_ready(path: Path):
    nb = json.loads(path.read_text())
    assert nb["metadata"]["kernelspec"]["name"] == "python3"
    code = [c for c in nb["cells"] if c["cell_type"] == "code"]
    assert code, "a chapter without code cells"
    first = "".join(code[0]["source"])
    assert 'if "google.colab" in sys.modules' in first and "%pip install" in first, \
        "the first code cell must install metabook in Colab and do nothing elsewhere"
    for cell in code:
        assert cell["outputs"] == [] and cell["execution_count"] is None, \
            "commit chapters without outputs: the book build executes them"
    assert nb["cells"][0]["cell_type"] == "markdown" and "".join(nb["cells"][0]["source"]).startswith("# ")
    ids = [c.get("id") for c in nb["cells"]]
    assert None not in ids and len(set(ids)) == len(ids), \
        "every cell needs its own id (nbformat 4.5): run nbformat.validator.normalize on the notebook"
    for cell in code:
        source = "".join(cell["source"])
        if "figure" in cell["metadata"].get("mystnb", {}):
            # myst-nb gives every rich output of a figure cell the figure's name: a second one
            # (shown source, a table) is a duplicate target, which fails the strict build.
            assert "show_source(" not in source and "display(" not in source, \
                f"figure cell {cell['metadata']['mystnb']['figure'].get('name')} shows more than its figure"


def _bib_entries() -> dict[str, str]:
    """Entries of book/references.bib by key; each must close its own braces."""
    text = (ROOT / "book" / "references.bib").read_text()
    entries: dict[str, str] = {}
    for chunk in re.split(r"\n(?=@)", text.strip()):
        match = re.match(r"@\w+\{([^,\s]+),", chunk)
        assert match, f"references.bib: cannot read the entry starting {chunk[:60]!r}"
        key = match.group(1)
        depth = 0
        for i, ch in enumerate(chunk):
            depth += {"{": 1, "}": -1}.get(ch, 0)
            if depth == 0 and ch == "}":
                break
        assert depth == 0 and not chunk[i + 1:].strip(), (
            f"references.bib: entry {key} does not close its braces where it ends"
        )
        assert key not in entries, f"references.bib: {key} is defined twice"
        entries[key] = chunk
    return entries


def test_every_citation_is_in_the_bibliography():
    keys = set(_bib_entries())
    pages = CHAPTERS + sorted((ROOT / "book").glob("*.md"))
    for page in pages:
        for cited in re.findall(r"\{cite(?::\w+)?\}`([^`]+)`", page.read_text()):
            for key in cited.split(","):
                assert key.strip() in keys, f"{page.name} cites {key.strip()}, which references.bib lacks"


def test_the_recorded_chapter_times_name_every_chapter():
    """`make notebooks` starts the longest chapters first, from these times on a fresh clone."""
    times = json.loads((ROOT / ".ci" / "notebook-times.json").read_text())
    assert set(times) == {p.name for p in CHAPTERS}
    assert all(seconds > 0 for seconds in times.values())
