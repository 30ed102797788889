"""The book's drivers: regenerate a chapter's results from the command line.

``metabook reproduce chapter5`` calls :func:`reproduce_chapter5`, and so does
Chapter 5, so the page and the command share their runs and their files.
"""
from __future__ import annotations

import csv
import shutil
from pathlib import Path

from metabook.checkpoint import write_json_atomic
from metabook.comparison import Row, compare, markdown_table, verdict
from metabook.config import PretrainConfig
from metabook.rundir import RunDir, lock_folder
from metabook.runs import CONFIG, RESULT, load_run, pretrain

__all__ = ["reproduce_chapter5"]


def reproduce_chapter5(out: str | Path = "runs/chapter5", config: PretrainConfig | None = None,
                       minilm: bool = True, progress: bool = False) -> list[Row]:
    """Train (or reuse) the meta-pretraining run and every baseline; write Chapter 5's table.

    Writes ``out/results.json``, ``out/results.csv`` and ``out/results.md``. A
    finished run in ``out/meta`` with the same config is reused, as are cached
    baselines, so the chapter and the command share their work; a run or a
    baseline's pretraining that was stopped continues from its checkpoint.
    ``out`` is locked while this runs (:meth:`metabook.rundir.RunDir.lock`).
    """
    out = Path(out)
    config = config or PretrainConfig.for_scale()
    with lock_folder(out, "reproduce"):
        return _reproduce_chapter5(out, config, minilm, progress)


def _reproduce_chapter5(out: Path, config: PretrainConfig, minilm: bool,
                        progress: bool) -> list[Row]:
    meta = RunDir(out / "meta")
    result = meta.read_json(RESULT)
    if not (result and result.get("fingerprint") == config.fingerprint()):
        resume = meta.holds_run() and meta.read_json(CONFIG) == config.to_dict()
        if meta.path.exists() and not resume:  # a run of another config
            shutil.rmtree(meta.path)
        pretrain(config, meta.path, resume=resume, progress=progress)
    rows = compare(load_run(meta.path), out, minilm=minilm, progress=progress)
    reference = next(r for r in rows if r.key == "meta")
    records = [r.as_dict(reference) for r in rows]
    write_json_atomic(out / "results.json", {"config": config.to_dict(), "rows": records,
                                             "verdict": verdict(rows)})
    with open(out / "results.csv", "w", newline="", encoding="utf-8") as f:
        # Every row's keys in first-seen order: the reference row lacks the difference columns.
        writer = csv.DictWriter(f, fieldnames=list(dict.fromkeys(k for r in records for k in r)))
        writer.writeheader()
        writer.writerows(records)
    (out / "results.md").write_text(markdown_table(rows) + "\n" + verdict(rows) + "\n",
                                    encoding="utf-8")
    return rows
