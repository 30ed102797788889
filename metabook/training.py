"""The training loop: one for meta-pretraining, for the baselines' pretraining, and in memory.

:class:`Trainer` is the loop every model in metabook is trained with. A step
takes the next batch, computes its loss, stops with a
:class:`~metabook.errors.TrainingError` *before* changing anything if the loss or
the gradient is not finite, clips the gradient's norm, and steps the optimizer
that :data:`OPTIMIZERS` names (the config's ``optimizer``, Adam by default).
Every ``eval_every`` steps it validates, keeps track of the best step, and stops
early after ``patience`` validations without a gain. Given a run folder
(:class:`~metabook.rundir.RunDir`) it logs every step, checkpoints, and resumes
exactly; without one it trains in memory.

- :class:`MetaTrainer` trains a learner on meta-batches from a task sampler
  (:func:`meta_train`: in memory).
- :func:`metabook.baselines.pretrain_lm` and :func:`metabook.baselines.pretrain_multitask`
  run the same loop on batches of sentences.

A resumed run restores the weights, the optimizer, the sampler and every
random-number generator, so on a CPU ``N`` steps straight and ``N/2`` steps,
a resume, and ``N/2`` more give bit-identical weights. No learning-rate
schedule depends on the total number of steps, which is what lets a finished
run be extended by asking for more steps. When a checkpoint is saved changes
nothing else, so checkpoints every ``checkpoint_minutes`` as well as every
``checkpoint_every`` steps keep that promise.

**Stopping.** While :meth:`Trainer.fit` runs (in the main thread) it catches
SIGINT (Ctrl-C, or a notebook's interrupt button) and SIGTERM (what schedulers
send before they kill a job). The step in progress is finished, a trainer with
a run folder saves a checkpoint of it, and
:class:`~metabook.errors.TrainingInterrupted`, a :class:`KeyboardInterrupt`
that names the step and the checkpoint, is raised; resuming from that
checkpoint gives the weights of a run never stopped. A second signal, sent
:data:`REPEAT_SECONDS` or more after the first, stops at once and abandons the
step or the save; saves are atomic, so the checkpoint before stays as it was.
The handlers that were there before are back when :meth:`~Trainer.fit` ends,
however it ends, and a signal the process ignores (a background job's SIGINT)
stays ignored. Under ``torchrun`` the processes agree after every step on
whether to stop, so that all of them stop after the same one.
"""
from __future__ import annotations

import copy
import math
import signal
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

import torch
from torch import Tensor, nn
from tqdm import tqdm

from metabook import distributed
from metabook.checkpoint import Checkpoint, load_checkpoint, load_into, rng_state, set_rng_state
from metabook.errors import CheckpointError, ConfigError, TrainingError, TrainingInterrupted
from metabook.learners import Learner
from metabook.registry import Registry
from metabook.rundir import RunDir
from metabook.samplers import TaskSampler
from metabook.tasks import Task

__all__ = ["OPTIMIZERS", "make_optimizer", "TrainResult", "REPEAT_SECONDS", "Trainer",
           "MetaTrainer", "meta_train"]

#: The outer optimizers a config may name (``optimizer: adam``).
OPTIMIZERS: Registry[type[torch.optim.Optimizer]] = Registry("optimizer")
OPTIMIZERS.register("adam", torch.optim.Adam, display="Adam")
OPTIMIZERS.register("adamw", torch.optim.AdamW, display="AdamW")
OPTIMIZERS.register("sgd", torch.optim.SGD, display="SGD")

Batch = Any
OnStep = Callable[[int, dict[str, Any]], None]


def make_optimizer(name: str, params: Iterable[nn.Parameter], lr: float) -> torch.optim.Optimizer:
    """The optimizer :data:`OPTIMIZERS` registers as ``name``, over ``params`` at rate ``lr``.

    >>> make_optimizer("sgd", [nn.Parameter(torch.zeros(1))], lr=0.1).defaults["lr"]
    0.1
    """
    return OPTIMIZERS[name](params, lr=lr)


#: A second signal sooner than this after the first is the same request delivered twice (by a
#: scheduler that signals every process of a job, and a launcher that passes it on as well).
REPEAT_SECONDS = 1.0


class _StopNow(KeyboardInterrupt):
    """The second signal: stop at once, wherever the loop is."""

    def __init__(self, signum: int):
        super().__init__(signum)
        self.signum = signum


class _Signals:
    """SIGINT and SIGTERM, caught while the ``with`` block runs (see the module docstring)."""

    def __init__(self) -> None:
        self.signum: int | None = None
        self._first = 0.0
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> "_Signals":
        if threading.current_thread() is threading.main_thread():  # the only one Python lets
            for number in (signal.SIGINT, signal.SIGTERM):
                if signal.getsignal(number) is not signal.SIG_IGN:
                    self._previous[number] = signal.signal(number, self._handle)
        return self

    def __exit__(self, *exc: object) -> None:
        for number, handler in self._previous.items():
            # None: a handler set outside Python, which Python cannot put back; the default is.
            signal.signal(number, signal.SIG_DFL if handler is None else handler)

    def _handle(self, signum: int, frame: object) -> None:
        if self.signum is None:
            self.signum, self._first = signum, time.monotonic()
        elif time.monotonic() - self._first >= REPEAT_SECONDS:
            self.signum = signum
            raise _StopNow(signum)


@dataclass
class TrainResult:
    """How a :meth:`Trainer.train` call ended.

    ``stopped`` is ``"completed"``, ``"early_stopping"`` or ``"already_done"``;
    ``checkpoint`` is the last one saved (None when training in memory).
    """

    step: int
    stopped: str
    best_step: int | None
    best_score: float | None
    checkpoint: Path | None


class Trainer:
    """The training loop for ``module`` (see the module docstring).

    ``batches()`` returns the next batch and ``loss(batch)`` its loss; a
    subclass can override :meth:`next_batch` and :meth:`batch_loss` instead.
    ``optimizer`` is a name from :data:`OPTIMIZERS` (over the module's
    parameters, at rate ``lr``) or an optimizer already built. ``validate()``
    scores the module (higher is better) every ``eval_every`` steps; with
    ``keep_best=True`` training ends at the weights of the best validation.
    ``on_step(step, record)`` is called after every step with the step's
    record; raising from it interrupts training like a crash would.

    ``out`` is the run folder (a path or a :class:`~metabook.rundir.RunDir`)
    to log and checkpoint into, or None to train in memory. A checkpoint is
    saved at every validation, every ``checkpoint_every`` steps, whenever
    ``checkpoint_minutes`` (0: never) have passed since the last one, and at
    the end; the ``keep_checkpoints`` newest (and the best) are kept.
    ``config`` (JSON-ready) is stored in every checkpoint, and so is the state
    of each of ``generators``, the random-number generators that draw the batches.
    """

    loss_name, gradient_name = "the loss", "the gradient norm"
    advice = "Lower the learning rate or clip_grad, or check the data"

    def __init__(self, module: nn.Module, batches: Callable[[], Batch] | None = None,
                 loss: Callable[[Batch], Tensor] | None = None, *,
                 optimizer: str | torch.optim.Optimizer = "adam", lr: float = 1e-3,
                 clip_grad: float = 1.0, validate: Callable[[], float] | None = None, eval_every: int = 50,
                 patience: int = 0, keep_best: bool = False, progress: bool = False,
                 desc: str = "training", on_step: OnStep | None = None,
                 out: str | Path | RunDir | None = None, checkpoint_every: int = 50,
                 checkpoint_minutes: float = 0.0, keep_checkpoints: int = 2,
                 config: dict[str, Any] | None = None,
                 generators: Sequence[torch.Generator] = ()):
        self.module, self._batches, self._loss, self._validate = module, batches, loss, validate
        self.params = list(module.parameters())
        self.optimizer = (optimizer if isinstance(optimizer, torch.optim.Optimizer)
                          else make_optimizer(optimizer, self.params, lr))
        self.clip_grad, self.eval_every, self.patience = clip_grad, eval_every, patience
        self.keep_best, self.progress, self.desc, self.on_step = keep_best, progress, desc, on_step
        self.run = out if isinstance(out, RunDir) or out is None else RunDir(out)
        # Process 0 writes; in a single process that is this one.
        self.writer = distributed.rank() == 0
        self.checkpoint_every, self.checkpoint_minutes = checkpoint_every, checkpoint_minutes
        self.keep, self.config, self.generators = keep_checkpoints, config or {}, list(generators)
        self.step = 0
        self.best_score: float | None = None
        self.best_step: int | None = None
        self.bad_evals = 0
        self.losses: list[float] = []
        self.validations: list[tuple[int, float]] = []
        self.last_checkpoint: Path | None = None
        self._saved_step = 0  # the step of last_checkpoint
        self._best_state: dict[str, Tensor] | None = None
        self._saved_at = time.monotonic()

    # --- what a step is made of (override to change) -------------------------------------

    def next_batch(self) -> Batch:
        """The batch of the next step."""
        return self._batches()

    def batch_loss(self, batch: Batch) -> Tensor:
        """The loss of ``batch``, to be minimised."""
        return self._loss(batch)

    def reduce_loss(self, loss: Tensor) -> float:
        """The loss's value as logged (across processes for a distributed trainer)."""
        return float(loss.detach())

    def reduce_gradients(self) -> None:
        """Combine the gradients of every process (nothing to do in one process)."""

    def describe(self, batch: Batch) -> str:
        """Where ``batch`` came from, for an error message."""
        return ""

    @property
    def validating(self) -> bool:
        return self._validate is not None

    def validate(self) -> float:
        """The module's validation score (higher is better)."""
        return self._validate()

    def stop_signal(self, caught: int | None) -> int | None:
        """The signal to stop for after this step: the one caught, if any (agreed across processes
        by a distributed trainer)."""
        return caught

    # --- the loop ------------------------------------------------------------------------

    def _check_finite(self, what: str, value: float, batch: Batch) -> None:
        if math.isfinite(value):
            return
        raise TrainingError(f"{what} became {value} at step {self.step + 1}{self.describe(batch)}; "
                            f"the step was not applied and nothing was saved for it; "
                            f"{self.where_saved()}. {self.advice}",
                            options=("outer_lr", "clip_grad"))

    def train_step(self) -> dict[str, Any]:
        """One step: batch, loss, backward, clipping, optimizer; returns the step's record."""
        started = time.perf_counter()
        batch = self.next_batch()
        sampled = time.perf_counter()
        loss = self.batch_loss(batch)
        total = self.reduce_loss(loss)
        self._check_finite(self.loss_name, total, batch)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.reduce_gradients()
        params = [p for p in self.params if p.grad is not None]
        if self.clip_grad > 0:
            norm = float(nn.utils.clip_grad_norm_(params, self.clip_grad))
        else:
            norm = float(torch.linalg.vector_norm(torch.stack([p.grad.norm() for p in params])))
        self._check_finite(self.gradient_name, norm, batch)
        self.optimizer.step()
        self.step += 1
        self.losses.append(total)
        done = time.perf_counter()
        return {"step": self.step, "loss": total, "grad_norm": norm,
                "sample_seconds": sampled - started, "step_seconds": done - sampled}

    def _validate_and_check(self) -> bool:
        """Validate, track the best step; True when training should stop early."""
        started = time.perf_counter()
        score = self.validate()
        self.validations.append((self.step, score))
        if self.best_score is None or score > self.best_score:
            self.best_score, self.best_step, self.bad_evals = score, self.step, 0
            if self.keep_best:
                self._best_state = copy.deepcopy(self.module.state_dict())
        else:
            self.bad_evals += 1
        stop = self.patience > 0 and self.bad_evals >= self.patience
        self.log({"step": self.step, "event": "validation", "accuracy": score,
                  "best_score": self.best_score, "best_step": self.best_step,
                  "early_stop": stop, "seconds": time.perf_counter() - started})
        return stop

    def fit(self, steps: int, show: bool = True) -> str:
        """Train until step ``steps`` (a total); returns why it stopped.

        Raises :class:`~metabook.errors.TrainingInterrupted` on SIGINT or
        SIGTERM (see the module docstring).
        """
        stopped = "completed"
        self.module.train()
        bar = tqdm(total=steps, initial=self.step, desc=self.desc, unit="step",
                   disable=not (self.progress and show), dynamic_ncols=True)
        self._saved_at = time.monotonic()
        try:
            with _Signals() as signals:
                while self.step < steps:
                    record = self.train_step()
                    self.log(record)
                    bar.update(1)
                    bar.set_postfix(loss=f"{record['loss']:.3f}")
                    stop = False
                    # Validation follows the eval_every grid only (not the end of this call), so
                    # an interrupted-and-resumed run validates, and picks its best step, exactly
                    # as the uninterrupted run does.
                    validated = self.validating and self.step % self.eval_every == 0
                    if validated:
                        stop = self._validate_and_check()
                    self.after_step(validated, stop, self.step == steps)
                    if self.on_step is not None:
                        self.on_step(self.step, record)
                    # Between two steps: the one place where stopping leaves a state to save.
                    signum = self.stop_signal(signals.signum)
                    if signum:
                        raise self._interrupted(signum)
                    if stop:
                        stopped = "early_stopping"
                        break
        except _StopNow as now:
            raise self._interrupted(now.signum, at_once=True) from None
        finally:
            bar.close()
        self._keep_best()
        return stopped

    def _keep_best(self) -> None:
        if self._best_state is not None:
            self.module.load_state_dict(self._best_state)

    def _interrupted(self, signum: int, at_once: bool = False) -> TrainingInterrupted:
        """Save the last completed step (unless a second signal said ``at_once``); the exception."""
        how = f"{self.desc} stopped by {signal.Signals(signum).name}"
        if at_once:
            how = f"{self.desc} stopped at once by a second {signal.Signals(signum).name}"
        if self.run is None:
            where = ("the weights may be partway through a step" if at_once
                     else f"the weights are those after step {self.step}")
            return TrainingInterrupted(f"{how}; {where} (in memory: nothing saved)", signum,
                                       self.step, None, saved=False)
        if at_once:
            where = (f"the latest checkpoint is {self.last_checkpoint}" if self.last_checkpoint
                     else "no checkpoint was saved yet")
            return TrainingInterrupted(f"{how}, before saving; {where}", signum,
                                       self._saved_step, self.last_checkpoint, saved=False)
        if self.last_checkpoint != self.run.checkpoint_path(self.step):
            self.save()
        return TrainingInterrupted(f"{how} after step {self.step}; checkpoint: "
                                   f"{self.last_checkpoint}", signum, self.step,
                                   self.last_checkpoint, saved=True)

    # --- the run on disk ------------------------------------------------------------------

    def log(self, record: dict[str, Any]) -> None:
        """Keep the record of a step, a validation or a checkpoint (in the run's log)."""
        if self.run is not None and self.writer:
            self.run.append_log(record)

    def after_step(self, validated: bool, stop: bool, last: bool) -> None:
        """Save a checkpoint when one is due (for a run on disk)."""
        if self.run is None:
            return
        due = (self.checkpoint_minutes > 0
               and time.monotonic() - self._saved_at >= 60 * self.checkpoint_minutes)
        if validated or stop or last or due or self.step % self.checkpoint_every == 0:
            self.save()

    def where_saved(self) -> str:
        """What is left to fall back on, for an error message."""
        if self.run is None:
            return f"the weights are still those after step {self.step}"
        return (f"the last good checkpoint is {self.last_checkpoint}" if self.last_checkpoint
                else "no checkpoint was saved yet")

    def state(self) -> dict[str, Any]:
        """What a checkpoint holds besides the weights, the optimizer and the trainer's state."""
        return {"generators": [g.get_state().tolist() for g in self.generators]}

    def load_state(self, ckpt: Checkpoint) -> None:
        """Restore what :meth:`state` saved into ``ckpt``."""
        saved = ckpt.meta.get("generators", [])
        if len(saved) != len(self.generators):
            raise CheckpointError(f"{ckpt.path} holds {len(saved)} random-number generators, "
                                  f"this training draws with {len(self.generators)}; resume "
                                  f"with the settings the run was started with")
        for generator, value in zip(self.generators, saved):
            generator.set_state(torch.tensor(value, dtype=torch.uint8))

    def save(self) -> Path:
        """Checkpoint the current step into the run folder (process 0 writes)."""
        started = time.perf_counter()
        path = self.run.checkpoint_path(self.step)
        if self.writer:
            meta = {"step": self.step, "config": self.config, "rng": rng_state(),
                    "trainer": {"best_score": self.best_score, "best_step": self.best_step,
                                "bad_evals": self.bad_evals}, **self.state()}
            self.run.save_checkpoint(self.step, self.module.state_dict(), meta,
                                     self.optimizer.state_dict(), best_step=self.best_step,
                                     best_score=self.best_score, keep=self.keep)
            self.log({"step": self.step, "event": "checkpoint", "path": str(path),
                      "seconds": time.perf_counter() - started})
        # Only now: a save cut short leaves the last checkpoint what it was.
        self.last_checkpoint, self._saved_step, self._saved_at = path, self.step, time.monotonic()
        return path

    def restore(self) -> int:
        """Continue from the latest checkpoint in the run folder; returns its step."""
        ckpt = load_checkpoint(self.run.latest())
        load_into(self.module, ckpt.model, ckpt.path / "model.safetensors")
        if ckpt.optimizer is None:
            raise CheckpointError(f"{ckpt.path} has no optimizer state, so training cannot "
                                  f"continue from it exactly; start a new run instead")
        try:
            self.optimizer.load_state_dict(ckpt.optimizer)
        except (ValueError, KeyError) as err:
            raise CheckpointError(f"the optimizer state in {ckpt.path} does not fit this "
                                  f"model ({err}); resume with the configuration the run "
                                  f"was started with") from None
        self.load_state(ckpt)
        set_rng_state(ckpt.meta["rng"])
        state = ckpt.meta["trainer"]
        self.best_score, self.best_step = state["best_score"], state["best_step"]
        self.bad_evals = state["bad_evals"]
        self.step = int(ckpt.meta["step"])
        self.last_checkpoint, self._saved_step = ckpt.path, self.step
        if self.keep_best and self.best_step is not None:
            # The best step's checkpoint is never pruned; it holds the weights kept in memory.
            self._best_state = load_checkpoint(self.run.checkpoint_path(self.best_step)).model
        if self.writer:
            self.run.truncate_log(self.step)
        return self.step

    def train(self, steps: int, resume: bool = False) -> TrainResult:
        """Train until step ``steps`` (a total, not a count of new steps).

        With a run folder and ``resume=True`` training continues from the
        latest checkpoint in it; without ``resume``, the folder must not hold a
        run already. The folder is locked while training
        (:meth:`metabook.rundir.RunDir.start`).
        """
        if self.run is None:
            if resume:
                raise ConfigError("a trainer without a run folder has nothing to resume; give "
                                  "it the folder of the run", options=("out",))
            stopped = self.fit(steps) if self.step < steps else "already_done"
            return TrainResult(self.step, stopped, self.best_step, self.best_score, None)
        with self.run.start(resume, write=self.writer):
            if resume:
                self.restore()
            if self.step >= steps:
                self._keep_best()
                return TrainResult(self.step, "already_done", self.best_step, self.best_score,
                                   self.last_checkpoint or self.run.latest())
            stopped = self.fit(steps, show=self.writer)
        return TrainResult(self.step, stopped, self.best_step, self.best_score,
                           self.last_checkpoint)


class MetaTrainer(Trainer):
    """Meta-trains ``learner`` on meta-batches of ``meta_batch`` tasks from ``sampler``.

    ``out`` is the run folder to log and checkpoint into, or None to train in
    memory, as for :class:`Trainer`. ``val_tasks`` are fixed held-out tasks for
    validation (none: no validation and no early stopping). The sampler's
    state is stored in every checkpoint.

    Launched by ``torchrun``, every process computes its share of each
    meta-batch and only process 0 writes (:mod:`metabook.distributed`).
    """

    loss_name, gradient_name = "the meta-loss", "the meta-gradient norm"
    advice = "Lower outer_lr or clip_grad, or check the data"

    def __init__(self, learner: Learner, sampler: TaskSampler,
                 out: str | Path | RunDir | None = None, *, outer_lr: float = 1e-3,
                 optimizer: str | torch.optim.Optimizer = "adam", meta_batch: int = 4,
                 clip_grad: float = 1.0, eval_every: int = 50, checkpoint_every: int = 50,
                 checkpoint_minutes: float = 0.0, patience: int = 0, keep_checkpoints: int = 2,
                 val_tasks: Sequence[Task] = (), config: dict[str, Any] | None = None,
                 progress: bool = True, device: torch.device | str = "cpu",
                 on_step: OnStep | None = None):
        super().__init__(learner.to(device), optimizer=optimizer, lr=outer_lr,
                         clip_grad=clip_grad, eval_every=eval_every, patience=patience,
                         progress=progress, desc="meta-pretraining", on_step=on_step, out=out,
                         checkpoint_every=checkpoint_every,
                         checkpoint_minutes=checkpoint_minutes,
                         keep_checkpoints=keep_checkpoints, config=config)
        self.learner, self.sampler = learner, sampler
        self.meta_batch, self.device = meta_batch, device
        self.val_tasks = [t.to(device) for t in val_tasks]

    # --- a meta-batch ---------------------------------------------------------------------

    def next_batch(self) -> list[Task]:
        return [t.to(self.device) for t in self.sampler.sample_batch(self.meta_batch)]

    def batch_loss(self, tasks: list[Task]) -> Tensor:
        # This process's share, weighted so that the shares of all processes sum to the mean.
        return distributed.distributed_meta_loss(self.learner, tasks)

    def reduce_loss(self, loss: Tensor) -> float:
        return float(distributed.all_reduce_sum(loss.detach().clone()))

    def reduce_gradients(self) -> None:
        distributed.all_reduce_gradients(self.learner)

    def describe(self, tasks: list[Task]) -> str:
        return f" (tasks from {sorted({t.source for t in tasks})})"

    def stop_signal(self, caught: int | None) -> int | None:
        # Every process stops after the same step, or the collectives of the next would hang.
        return distributed.max_over_processes(caught or 0) or None

    # --- validation -----------------------------------------------------------------------

    @property
    def validating(self) -> bool:
        return bool(self.val_tasks)

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

    # --- the run on disk ------------------------------------------------------------------

    def state(self) -> dict[str, Any]:
        return {**super().state(), "learner": type(self.learner).__name__,
                "sampler": self.sampler.state_dict()}

    def load_state(self, ckpt: Checkpoint) -> None:
        super().load_state(ckpt)
        try:
            self.sampler.load_state_dict(ckpt.meta["sampler"])
        except Exception as err:
            raise CheckpointError(f"the sampler state in {ckpt.path} does not fit this run's "
                                  f"task sources ({err}); resume with the configuration the run "
                                  f"was started with") from None


def meta_train(learner: Learner, sampler: TaskSampler, steps: int, *,
               optimizer: str | torch.optim.Optimizer = "adam", lr: float = 1e-3,
               meta_batch: int = 4, clip_grad: float = 0.0, progress: bool = False,
               on_step: OnStep | None = None, device: torch.device | str | None = None
               ) -> list[float]:
    """Meta-train ``learner`` in place for ``steps`` outer steps, writing no files.

    The loop of :class:`MetaTrainer` without a run folder: each step draws
    ``meta_batch`` tasks from ``sampler`` and steps ``optimizer`` (a name from
    :data:`OPTIMIZERS` at rate ``lr``, or an optimizer already built) on the
    mean meta-loss, clipping the gradient norm to ``clip_grad`` (0: no
    clipping). Returns the meta-batch loss of every step::

        >>> from metabook.learners import MAML
        >>> from metabook.samplers import UniformSampler
        >>> from metabook.tasks import EpisodeSource
        >>> x = torch.randn(40, 3, generator=torch.Generator().manual_seed(0))
        >>> source = EpisodeSource(x, [int(v > 0) for v in x[:, 0]], 2, 2, 2)
        >>> _ = torch.manual_seed(0)
        >>> learner = MAML(nn.Linear(3, 2), lr=0.5)
        >>> losses = meta_train(learner, UniformSampler([source]), steps=30, lr=0.05)
        >>> len(losses), sum(losses[-5:]) < sum(losses[:5])
        (30, True)
    """
    if device is None:
        first = next(learner.parameters(), None)
        device = first.device if first is not None else "cpu"
    trainer = MetaTrainer(learner, sampler, None, optimizer=optimizer, outer_lr=lr,
                          meta_batch=meta_batch, clip_grad=clip_grad, progress=progress,
                          device=device, on_step=on_step)
    trainer.train(steps)
    return trainer.losses
