"""Meta-pretraining end to end, in one import: the workflow's steps, each from its own module.

1. :func:`prepare_data` (:mod:`metabook.data`) loads the corpus, splits its
   *classes* into training, validation and test classes, and encodes every
   sentence; :func:`episodes` and :func:`to_ids` give the episodes every
   method is measured on;
2. :func:`build_learner` and :func:`build_sampler` (:mod:`metabook.recipes`)
   make the learner the config names and its stream of training tasks;
3. :func:`pretrain` (:mod:`metabook.runs`) runs the meta-trainer into a run
   folder and resumes it; :func:`load_run`, :func:`evaluate_run` and the
   curves measure a run on held-out episodes;
4. :func:`compare` (:mod:`metabook.comparison`) measures every baseline on the
   same episodes; :func:`markdown_table` and :func:`verdict` report it.

The command line (``metabook pretrain``, ``evaluate``, ``reproduce chapter5``;
:mod:`metabook.cli`) calls these functions.
"""
from __future__ import annotations

from metabook.comparison import Row, adaptation_grid, compare, markdown_table, verdict
from metabook.data import TEST_SEED, VAL_SEED, Data, episodes, prepare_data, to_ids
from metabook.recipes import LEARNERS, build_encoder, build_learner, build_sampler
from metabook.runs import (Run, curve_over_shots, curve_over_steps, evaluate_run, load_run,
                           pretrain)

__all__ = ["Data", "prepare_data", "episodes", "to_ids", "VAL_SEED", "TEST_SEED", "LEARNERS",
           "build_encoder", "build_learner", "build_sampler", "pretrain", "Run", "load_run",
           "evaluate_run", "curve_over_shots", "curve_over_steps", "Row", "compare",
           "adaptation_grid", "markdown_table", "verdict"]
