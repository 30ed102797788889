"""Run chapters under nbval, several at a time, and print the time each one took.

``make notebooks`` calls this with ``--jobs 2`` on a machine with two cores or
more. Each chapter is its own ``pytest --nbval-lax`` process (its own kernel;
chapters set torch to one thread, so two of them fill two cores). The slowest
chapters of the previous run start first, which keeps both cores busy until
the end; their times are kept in ``_build/notebook-times.json`` (a fresh clone uses
the times committed in ``.ci/notebook-times.json``).

Exit status: 0 when every chapter passed, 1 otherwise (the output of every
failed chapter is printed).

Usage: python .ci/notebooks.py [--jobs N] chapters/*.ipynb
"""
from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TIMES = ROOT / "_build" / "notebook-times.json"
# Times of a full run on a two-core machine, committed, so that a fresh clone also starts
# the longest chapters first (refresh it from _build/notebook-times.json after a full run).
RECORDED = Path(__file__).with_name("notebook-times.json")
PYTEST = [sys.executable, "-m", "pytest", "--nbval-lax", "--nbval-cell-timeout=900", "-q",
          "-p", "no:cacheprovider", "--durations=3"]
SLOW_CELL = re.compile(r"^\s*\d+\.\d+s call\s")  # pytest's --durations lines


def run_chapter(path: Path) -> tuple[Path, int, float, str]:
    """Run one chapter under nbval; its exit code, wall time and output."""
    start = time.perf_counter()
    proc = subprocess.run([*PYTEST, str(path)], cwd=ROOT, capture_output=True, text=True,
                          stdin=subprocess.DEVNULL)
    seconds = time.perf_counter() - start
    slowest = [line.strip() for line in proc.stdout.splitlines() if SLOW_CELL.match(line)]
    print(f"{path.name}: {'passed' if proc.returncode == 0 else 'FAILED'} in {seconds:.0f} s"
          + "".join(f"\n    {line}" for line in slowest), flush=True)
    return path, proc.returncode, seconds, proc.stdout + proc.stderr


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("chapters", nargs="+", type=Path)
    parser.add_argument("--jobs", type=int, default=1, help="chapters run at once (default 1)")
    args = parser.parse_args()
    chapters = [p.resolve() for p in args.chapters]
    missing = [str(p) for p in chapters if not p.is_file()]
    if missing:
        print(f"no such notebook: {', '.join(missing)}", file=sys.stderr)
        return 1
    previous = {}
    for times in (RECORDED, TIMES):  # this machine's last run, where there was one, wins
        try:
            previous.update(json.loads(times.read_text()))
        except (OSError, ValueError):
            pass
    # Longest first (unknown ones first of all): the last to start are the short ones.
    order = sorted(chapters, key=lambda p: -previous.get(p.name, float("inf")))
    print(f"running {len(order)} chapters under nbval, {args.jobs} at a time", flush=True)
    start = time.perf_counter()
    with ThreadPoolExecutor(max_workers=max(1, args.jobs)) as pool:
        results = list(pool.map(run_chapter, order))
    wall = time.perf_counter() - start

    print(f"\n{'chapter':<28}{'seconds':>8}  result")
    for path, code, seconds, _ in sorted(results):
        print(f"{path.name:<28}{seconds:>8.0f}  {'passed' if code == 0 else 'FAILED'}")
    total = sum(r[2] for r in results)
    print(f"{'all chapters':<28}{wall:>8.0f}  wall clock ({total:.0f} s of chapter time, "
          f"{args.jobs} at a time)")
    TIMES.parent.mkdir(exist_ok=True)
    TIMES.write_text(json.dumps({**previous, **{p.name: round(s, 1) for p, _, s, _ in results}},
                                indent=1, sort_keys=True) + "\n")
    failed = [(path, out) for path, code, _, out in results if code != 0]
    for path, out in failed:
        print(f"\n===== {path.name} failed =====\n{out}", flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
