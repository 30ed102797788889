"""The meta-trainer: the outer loop, its log, its checkpoints, and exact resume.

:class:`MetaTrainer` draws a meta-batch of tasks from a sampler, averages the
learner's meta-loss over it, clips the meta-gradient and takes an optimizer
step. Around that loop it

- shows a ``tqdm`` progress bar and appends one JSON line per step to
  ``OUT/log.jsonl`` (losses, gradient norm, timings), plus a line per
  validation and per checkpoint;
- validates on a fixed list of held-out tasks every ``eval_every`` steps and
  stops early after ``patience`` validations without improvement; the best
  step is recorded (the latest one stands in when none was validated);
- saves a checkpoint (:mod:`metabook.checkpoint`) every ``checkpoint_every``
  steps, at every validation and at the end, then points
  ``OUT/checkpoints/latest.json`` at it;
- stops with a :class:`~metabook.errors.TrainingError` naming the step when
  the loss or the gradient is NaN or infinite, before the bad step changes
  anything, so the last checkpoint stays good.

Under ``torchrun`` (a process group of several processes) every process draws
the same meta-batch and computes the meta-loss of its share
(:mod:`metabook.distributed`); the gradients are summed before clipping, the
logged loss is the mean over the whole meta-batch, validation is split among
the processes and its scores gathered, so every process takes the same
decisions. Only process 0 writes the log and the checkpoints; on resume every
process loads the same checkpoint.

A resumed run restores the weights, the optimizer, the sampler and every
random-number generator, so on a CPU ``N`` steps straight and ``N/2`` steps,
a resume, and ``N/2`` more give bit-identical weights. No learning-rate
schedule depends on the total number of steps, which is what lets a finished
run be extended by asking for more steps.
"""
from __future__ import annotations

import json
import math
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import torch
from torch import nn
from tqdm import tqdm

from metabook import distributed
from metabook.checkpoint import (clean_partial_saves, load_checkpoint, load_into, rng_state,
                                 save_checkpoint, set_rng_state, write_json_atomic, writing)
from metabook.errors import CheckpointError, TrainingError
from metabook.learners import Learner
from metabook.samplers import TaskSampler
from metabook.tasks import Task

__all__ = ["TrainResult", "MetaTrainer", "read_log", "latest_checkpoint", "best_checkpoint"]

POINTER = "latest.json"


@dataclass
class TrainResult:
    """How a :meth:`MetaTrainer.train` call ended."""

    step: int
    stopped: str  # "completed", "early_stopping" or "already_done"
    best_step: int | None
    best_score: float | None
    checkpoint: Path


def read_log(out: str | Path) -> list[dict[str, Any]]:
    """Every record of ``OUT/log.jsonl``, in order.

    A last line without its newline was cut off by a crash mid-write: it is
    left out (the step it records is redone on resume).
    """
    path = Path(out) / "log.jsonl"
    if not path.is_file():
        return []
    lines = path.read_text(encoding="utf-8").split("\n")
    try:
        return [json.loads(line) for line in lines[:-1] if line]
    except json.JSONDecodeError as err:
        raise CheckpointError(f"{path} is corrupt ({err}); delete it or the broken lines "
                              f"to resume") from None


def _pointer(out: Path) -> dict[str, Any] | None:
    path = out / "checkpoints" / POINTER
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise CheckpointError(f"{path} is corrupt ({err}); delete it and point it at the newest "
                              f"complete checkpoints/step-* directory") from None


def latest_checkpoint(out: str | Path) -> Path:
    """The directory of the last checkpoint of the run in ``out``."""
    out = Path(out)
    pointer = _pointer(out)
    if pointer is None:
        raise CheckpointError(f"{out} holds no checkpoint ({out / 'checkpoints' / POINTER} is "
                              f"missing); train with `metabook pretrain --out {out}` first")
    return out / "checkpoints" / pointer["latest"]


def best_checkpoint(out: str | Path) -> Path:
    """The checkpoint with the best validation score (the latest one if none was validated)."""
    out = Path(out)
    pointer = _pointer(out)
    if pointer is None:
        return latest_checkpoint(out)
    return out / "checkpoints" / (pointer.get("best") or pointer["latest"])


class MetaTrainer:
    """Meta-trains ``learner`` on tasks from ``sampler``, logging and checkpointing into ``out``.

    ``val_tasks`` are fixed held-out tasks for validation (none: no validation
    and no early stopping). ``config`` (JSON-ready) is stored in every
    checkpoint. ``on_step(step, record)`` is called after every step with the
    step's log record; raising from it interrupts training like a crash would.
    """

    def __init__(self, learner: Learner, sampler: TaskSampler, out: str | Path, *,
                 outer_lr: float = 1e-3, meta_batch: int = 4, clip_grad: float = 1.0,
                 eval_every: int = 50, checkpoint_every: int = 50, patience: int = 0,
                 keep_checkpoints: int = 2, val_tasks: Sequence[Task] = (),
                 config: dict[str, Any] | None = None, progress: bool = True,
                 device: torch.device | str = "cpu",
                 on_step: Callable[[int, dict[str, Any]], None] | None = None):
        self.learner, self.sampler, self.out = learner.to(device), sampler, Path(out)
        # Process 0 writes; in a single process that is this one.
        self.writer = distributed.rank() == 0
        self.meta_batch, self.clip_grad = meta_batch, clip_grad
        self.eval_every, self.checkpoint_every = eval_every, checkpoint_every
        self.patience, self.keep = patience, keep_checkpoints
        self.val_tasks = [t.to(device) for t in val_tasks]
        self.config, self.progress, self.device, self.on_step = config or {}, progress, device, on_step
        self.optimizer = torch.optim.Adam(learner.parameters(), lr=outer_lr)
        self.step = 0
        self.best_score: float | None = None
        self.best_step: int | None = None
        self.bad_evals = 0
        self.last_checkpoint: Path | None = None

    # --- state ------------------------------------------------------------------------

    @property
    def log_path(self) -> Path:
        return self.out / "log.jsonl"

    def _trainer_state(self) -> dict[str, Any]:
        return {"best_score": self.best_score, "best_step": self.best_step,
                "bad_evals": self.bad_evals}

    def save(self) -> Path:
        """Checkpoint the current step and point ``latest.json`` at it (process 0 only)."""
        started = time.perf_counter()
        directory = self.out / "checkpoints" / f"step-{self.step:06d}"
        self.last_checkpoint = directory
        if not self.writer:
            return directory
        meta = {"step": self.step, "learner": type(self.learner).__name__,
                "config": self.config, "sampler": self.sampler.state_dict(),
                "rng": rng_state(), "trainer": self._trainer_state()}
        save_checkpoint(directory, self.learner.state_dict(), meta, self.optimizer.state_dict())
        best = f"step-{self.best_step:06d}" if self.best_step is not None else None
        write_json_atomic(self.out / "checkpoints" / POINTER,
                          {"latest": directory.name, "best": best, "step": self.step,
                           "best_score": self.best_score})
        self._prune(keep={directory.name, best})
        self._log({"step": self.step, "event": "checkpoint", "path": str(directory),
                   "seconds": time.perf_counter() - started})
        return directory

    def _prune(self, keep: set[str | None]) -> None:
        steps = sorted((self.out / "checkpoints").glob("step-*"))
        for old in steps[: max(0, len(steps) - self.keep)]:
            if old.name not in keep:
                shutil.rmtree(old, ignore_errors=True)

    def restore(self) -> int:
        """Continue from the latest checkpoint in ``out``; returns its step."""
        ckpt = load_checkpoint(latest_checkpoint(self.out))
        load_into(self.learner, ckpt.model, ckpt.path / "model.safetensors")
        if ckpt.optimizer is None:
            raise CheckpointError(f"{ckpt.path} has no optimizer state, so training cannot "
                                  f"continue from it exactly; start a new run instead")
        try:
            self.optimizer.load_state_dict(ckpt.optimizer)
        except (ValueError, KeyError) as err:
            raise CheckpointError(f"the optimizer state in {ckpt.path} does not fit this "
                                  f"learner ({err}); resume with the configuration the run "
                                  f"was started with") from None
        try:
            self.sampler.load_state_dict(ckpt.meta["sampler"])
        except Exception as err:
            raise CheckpointError(f"the sampler state in {ckpt.path} does not fit this run's "
                                  f"task sources ({err}); resume with the configuration the run "
                                  f"was started with") from None
        set_rng_state(ckpt.meta["rng"])
        state = ckpt.meta["trainer"]
        self.best_score, self.best_step = state["best_score"], state["best_step"]
        self.bad_evals = state["bad_evals"]
        self.step = int(ckpt.meta["step"])
        self.last_checkpoint = ckpt.path
        if self.writer:
            clean_partial_saves(self.out / "checkpoints")
            self._truncate_log(self.step)
        return self.step

    def _truncate_log(self, step: int) -> None:
        # Steps after the checkpoint ran before the interruption and will run again.
        kept = [r for r in read_log(self.out) if r["step"] <= step]
        with writing(self.log_path, "the training log"):
            tmp = self.log_path.with_suffix(".jsonl.tmp")
            tmp.write_text("".join(json.dumps(r) + "\n" for r in kept), encoding="utf-8")
            tmp.replace(self.log_path)

    def _log(self, record: dict[str, Any]) -> None:
        if not self.writer:
            return
        with writing(self.log_path, "the training log"), \
                open(self.log_path, "a", encoding="utf-8") as f:
            f.write(json.dumps(record) + "\n")

    # --- validation -------------------------------------------------------------------

    def validate(self) -> float:
        """Mean query accuracy on the validation tasks after adaptation.

        Each process measures its share of the tasks; the scores are gathered
        in task order and summed as one process would, so all agree exactly.
        """
        mine = distributed.shard(self.val_tasks, distributed.rank(), distributed.world_size())
        self.learner.eval()
        try:
            scores = [self.learner.evaluate(t)["accuracy"] for t in mine]
        finally:
            self.learner.train()
        scores = distributed.gather_shards(scores, len(self.val_tasks))
        return sum(scores) / len(scores)

    def _validate_and_check(self) -> bool:
        """Validate, track the best step; True when training should stop early."""
        started = time.perf_counter()
        score = self.validate()
        improved = self.best_score is None or score > self.best_score
        if improved:
            self.best_score, self.best_step, self.bad_evals = score, self.step, 0
        else:
            self.bad_evals += 1
        stop = self.patience > 0 and self.bad_evals >= self.patience
        self._log({"step": self.step, "event": "validation", "accuracy": score,
                   "best_score": self.best_score, "best_step": self.best_step,
                   "early_stop": stop, "seconds": time.perf_counter() - started})
        return stop

    # --- the loop ---------------------------------------------------------------------

    def _check_finite(self, what: str, value: float, tasks: Sequence[Task]) -> None:
        if math.isfinite(value):
            return
        where = (f"the last good checkpoint is {self.last_checkpoint}" if self.last_checkpoint
                 else "no checkpoint was saved yet")
        sources = sorted({t.source for t in tasks})
        raise TrainingError(f"{what} became {value} at step {self.step + 1} (tasks from "
                            f"{sources}); the step was not applied and nothing was saved for it; "
                            f"{where}. Lower outer_lr or clip_grad, or check the data")

    def _one_step(self) -> dict[str, Any]:
        started = time.perf_counter()
        tasks = [t.to(self.device) for t in self.sampler.sample_batch(self.meta_batch)]
        sampled = time.perf_counter()
        # This process's share, weighted so that the shares of all processes sum to the mean.
        loss = distributed.distributed_meta_loss(self.learner, tasks)
        total = float(distributed.all_reduce_sum(loss.detach().clone()))
        self._check_finite("the meta-loss", total, tasks)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        distributed.all_reduce_gradients(self.learner)
        params = [p for p in self.learner.parameters() if p.grad is not None]
        if self.clip_grad > 0:
            norm = float(nn.utils.clip_grad_norm_(params, self.clip_grad))
        else:
            norm = float(torch.linalg.vector_norm(torch.stack([p.grad.norm() for p in params])))
        self._check_finite("the meta-gradient norm", norm, tasks)
        self.optimizer.step()
        self.step += 1
        done = time.perf_counter()
        return {"step": self.step, "loss": total, "grad_norm": norm,
                "sample_seconds": sampled - started, "step_seconds": done - sampled}

    def train(self, steps: int, resume: bool = False) -> TrainResult:
        """Train until step ``steps`` (a total, not a count of new steps).

        With ``resume=True`` training continues from the latest checkpoint in
        ``out``; without it, ``out`` must not hold a run already.
        """
        if self.writer:
            with writing(self.out, "the run"):
                self.out.mkdir(parents=True, exist_ok=True)
        if resume:
            self.restore()
        elif _pointer(self.out) is not None:
            raise CheckpointError(f"{self.out} already holds a run; resume it (--resume) or "
                                  f"choose another output directory")
        elif self.writer:
            with writing(self.log_path, "the training log"):
                self.log_path.unlink(missing_ok=True)
        if self.step >= steps:
            return TrainResult(self.step, "already_done", self.best_step, self.best_score,
                               self.last_checkpoint or latest_checkpoint(self.out))
        stopped = "completed"
        self.learner.train()
        bar = tqdm(total=steps, initial=self.step, desc="meta-pretraining", unit="step",
                   disable=not (self.progress and self.writer), dynamic_ncols=True)
        try:
            while self.step < steps:
                record = self._one_step()
                self._log(record)
                bar.update(1)
                bar.set_postfix(loss=f"{record['loss']:.3f}")
                stop = False
                # Validation follows the eval_every grid only (not the end of this call), so
                # an interrupted-and-resumed run validates, and picks its best step, exactly
                # as the uninterrupted run does.
                validate = bool(self.val_tasks) and self.step % self.eval_every == 0
                if validate:
                    stop = self._validate_and_check()
                if validate or stop or self.step % self.checkpoint_every == 0 or self.step == steps:
                    self.save()
                if self.on_step is not None:
                    self.on_step(self.step, record)
                if stop:
                    stopped = "early_stopping"
                    break
        finally:
            bar.close()
        return TrainResult(self.step, stopped, self.best_step, self.best_score,
                           self.last_checkpoint)
