"""Helpers shared by the unit tests: tiny text tasks and models, a tiny labelled corpus with a
config over it, and the ``metabook`` command in a subprocess.

A plain module: a test imports what it needs (``from tests.helpers import write_config``).
Fixtures live in ``tests/conftest.py``, where pytest finds them without an import.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import torch
from torch import Tensor, nn

from metabook.models import TextClassifier, TextEncoder
from metabook.tasks import Task

# --- tiny text tasks and models, for gradient checks ----------------------------------------

VOCAB, DIM, N_WAY = 23, 8, 3


def text_task(length: int = 6, k: int = 2, q: int = 2, seed: int = 1) -> Task:
    """An ``N_WAY``-way task of random token ids, some rows padded so that masks matter."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(4, VOCAB, (N_WAY * (k + q), length), generator=g)
    ids[::3, -2:] = 0  # some padding, so the attention mask matters
    y = torch.arange(N_WAY).repeat_interleave(k + q)
    s = torch.cat([torch.arange(i * (k + q), i * (k + q) + k) for i in range(N_WAY)])
    qi = torch.cat([torch.arange(i * (k + q) + k, (i + 1) * (k + q)) for i in range(N_WAY)])
    return Task(ids[s], y[s], ids[qi], y[qi], classes=tuple(range(N_WAY)))


def attention_model() -> TextClassifier:
    """A small model with attention and LayerNorm, the parts where batching bugs hide."""
    return TextClassifier(TextEncoder(VOCAB, dim=DIM, heads=2, layers=1, max_len=8), DIM, N_WAY)


def finite_difference_check(learner: nn.Module, task: Task, directions: int = 3,
                            eps: float = 1e-6, rtol: float = 1e-6) -> float:
    """Compare ⟨∇L, v⟩ with (L(θ+εv) - L(θ-εv)) / 2ε along random directions v."""
    params = [p for p in learner.parameters() if p.requires_grad]
    grads = torch.autograd.grad(learner.meta_loss(task), params, allow_unused=True)
    grads = [torch.zeros_like(p) if g is None else g for p, g in zip(params, grads)]
    worst = 0.0
    gen = torch.Generator().manual_seed(123)
    for _ in range(directions):
        v = [torch.randn(p.shape, generator=gen, dtype=p.dtype) for p in params]
        analytic = sum((g * d).sum() for g, d in zip(grads, v)).item()
        with torch.no_grad():
            for p, d in zip(params, v):
                p.add_(eps * d)
        plus = learner.meta_loss(task).item()
        with torch.no_grad():
            for p, d in zip(params, v):
                p.sub_(2 * eps * d)
        minus = learner.meta_loss(task).item()
        with torch.no_grad():
            for p, d in zip(params, v):
                p.add_(eps * d)
        numeric = (plus - minus) / (2 * eps)
        err = abs(analytic - numeric) / max(1.0, abs(numeric))
        worst = max(worst, err)
        assert err < rtol, f"meta-gradient {analytic:.10g} vs finite difference {numeric:.10g}"
    return worst


def feature_task(seed: int, k: int = 2, q: int = 3, dim: int = 5) -> Task:
    """An N_WAY-way task of Gaussian feature vectors, ``k`` support and ``q`` query per class."""
    g = torch.Generator().manual_seed(seed)
    return Task(torch.randn(N_WAY * k, dim, generator=g), torch.arange(N_WAY).repeat(k),
                torch.randn(N_WAY * q, dim, generator=g), torch.arange(N_WAY).repeat(q))


class MetaBatch(nn.Module):
    """A learner's meta-batch loss behind ``meta_loss``, the interface
    :func:`finite_difference_check` probes."""

    def __init__(self, learner: nn.Module):
        super().__init__()
        self.learner = learner

    def meta_loss(self, tasks: list[Task]) -> Tensor:
        return self.learner.meta_batch_loss(tasks)


# --- a tiny labelled corpus, and a run config over it -----------------------------------------

# Six classes of six distinct sentences: 2 test, 2 validation and 2 training classes for
# 2-way 2-shot tasks with 2 queries.
CLASSES, PER_CLASS = 6, 6
TINY_RUN = {"corpus": "text_file", "label_column": "label", "tasks": "supervised",
            "test_classes": 2, "val_classes": 2, "n_way": 2, "k_shot": 2, "q_query": 2,
            "min_count": 1, "dim": 8, "layers": 1, "heads": 2, "meta_batch": 2, "steps": 4,
            "eval_every": 2, "checkpoint_every": 2, "val_episodes": 2, "test_episodes": 4,
            "max_len": 12, "patience": 0}


def corpus_text(classes: int = CLASSES, per_class: int = PER_CLASS) -> str:
    """A CSV (``text,label``) of ``classes`` topics of ``per_class`` distinct sentences each."""
    lines = ["text,label"]
    for c in range(classes):
        words = [f"w{c}{x}" for x in "abcd"]
        lines += [f"sentence {j} {words[j % 4]} {words[(j + 1) % 4]} and {words[(j + 2) % 4]},"
                  f"topic{c}" for j in range(per_class)]
    return "\n".join(lines) + "\n"


def write_config(folder: Path, corpus: Path | None = None, name: str = "config.json",
                 per_class: int = PER_CLASS, **changes) -> Path:
    """A tiny run config (``TINY_RUN`` with ``changes``) over ``corpus``.

    Without ``corpus`` a fresh copy of :func:`corpus_text` is written into ``folder``.
    """
    if corpus is None:
        corpus = folder / "corpus.csv"
        corpus.write_text(corpus_text(per_class=per_class), encoding="utf-8")
    values = {**TINY_RUN, "corpus_options": {"path": str(corpus), "label_column": "label"},
              **changes}
    path = folder / name
    path.write_text(json.dumps(values), encoding="utf-8")
    return path


# --- the command line in a subprocess -----------------------------------------------------------

BIN = Path(sys.executable).parent
SCRIPT = BIN / "metabook"


def command_env(**extra: str) -> dict[str, str]:
    """The environment for a child process: offline, small scale, one sleeping thread.

    Idle OpenMP threads that spin slow a run on a busy shared machine down many times over;
    results do not depend on the thread settings as long as the runs compared share them.
    """
    return dict(os.environ, METABOOK_SCALE="small", HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1",
                OMP_WAIT_POLICY="PASSIVE", OMP_NUM_THREADS="1", **extra)


def metabook(*args: str, cwd: Path | None = None, module: bool = False,
             timeout: float = 300) -> subprocess.CompletedProcess:
    """Run ``metabook ARGS`` (or ``python -m metabook ARGS``) and capture its output."""
    command = [sys.executable, "-m", "metabook"] if module else [str(SCRIPT)]
    return subprocess.run(command + list(args), cwd=cwd, env=command_env(), capture_output=True,
                          text=True, timeout=timeout)
