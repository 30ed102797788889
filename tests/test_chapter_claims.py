"""A sentence of the book whose result no longer holds stops its chapter, so `make test` fails.

The chapters check what their text states with ``claim(holds, sentence)`` (an ``assert``
whose message quotes the sentence). This test breaks one such result in a copy of a
chapter and runs the copy the way ``make notebooks`` runs every chapter (pytest with
``--nbval-lax``): the run must fail, on the cell of that claim, naming the sentence.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CHAPTER = ROOT / "chapters" / "01_background.ipynb"
SENTENCE = "most sentences get no reply at all"


def _rules_cell(nb: dict) -> dict:
    cells = [c for c in nb["cells"] if c["cell_type"] == "code" and "RULES = [" in "".join(c["source"])]
    assert len(cells) == 1, "Chapter 1 should define its ELIZA-style RULES in one cell"
    return cells[0]


def test_chapter_1_checks_the_claim_this_test_breaks():
    source = "".join(_rules_cell(json.loads(CHAPTER.read_text()))["source"])
    assert f'claim(covered.mean() < 0.5, "{SENTENCE}")' in source


def test_a_broken_claim_fails_the_chapter_under_nbval(tmp_path):
    nb = json.loads(CHAPTER.read_text())
    cell = _rules_cell(nb)
    source = "".join(cell["source"])
    # A catch-all first rule answers every sentence: "most sentences get no reply" becomes false.
    cell["source"] = source.replace("RULES = [", 'RULES = [(r".*", "Tell me more."),', 1)
    copy = tmp_path / CHAPTER.name
    copy.write_text(json.dumps(nb))
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
               MPLBACKEND="Agg")
    # -x stops at the first failing cell, so only the cells up to the broken claim run.
    run = subprocess.run([sys.executable, "-m", "pytest", "-q", "-x", "-p", "no:cacheprovider",
                          "--nbval-lax", str(copy)], cwd=tmp_path, env=env, capture_output=True,
                         text=True, timeout=600)
    assert run.returncode == 1, f"the broken chapter did not fail:\n{run.stdout[-3000:]}"
    assert f"the text says '{SENTENCE}'" in run.stdout, run.stdout[-3000:]
    assert "1 failed" in run.stdout
