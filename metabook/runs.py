"""A meta-pretraining run's life: train it into a folder, resume it, load it back, measure it.

:func:`pretrain` runs :class:`~metabook.training.MetaTrainer` on the data,
learner and task stream that a :class:`~metabook.config.PretrainConfig`
describes, into a run folder (:class:`~metabook.rundir.RunDir`) that also holds
the config, the tokenizer's tokens and how the run ended. :func:`load_run`
reads a run back as a :class:`Run`; :func:`evaluate_run` and the curves measure
it on held-out test episodes.
"""
from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import torch
import torch.distributed as dist

from metabook import distributed
from metabook.checkpoint import load_checkpoint, load_into
from metabook.config import PretrainConfig, load_config
from metabook.data import TEST_SEED, VAL_SEED, Data, episodes, prepare_data, to_ids
from metabook.errors import CheckpointError, ConfigError, FolderInUseError, MetabookError
from metabook.evaluation import Evaluation, Interval, accuracies, accuracies_along, curve, evaluate
from metabook.learners import Learner
from metabook.recipes import build_learner, build_sampler
from metabook.rundir import FolderLock, RunDir
from metabook.scale import device
from metabook.source import package_fingerprint
from metabook.tasks import Task
from metabook.text import Tokenizer
from metabook.training import MetaTrainer, TrainResult

__all__ = ["CONFIG", "VOCAB", "RESULT", "pretrain", "Run", "load_run", "evaluate_run",
           "curve_over_shots", "curve_over_steps"]

#: The files a run folder holds besides the trainer's (see :mod:`metabook.rundir`).
CONFIG, VOCAB, RESULT = "config.json", "vocab.json", "result.json"


def pretrain(config: PretrainConfig | None = None, out: str | Path = "runs/pretrain",
             steps: int | None = None, resume: bool = False, progress: bool = True,
             on_step: Callable[[int, dict[str, Any]], None] | None = None) -> TrainResult:
    """Meta-pretrain into the run folder ``out`` (see :mod:`metabook.rundir`).

    ``steps`` overrides ``config.steps`` (a total). With ``resume=True`` the
    run in ``out`` continues with the config it was started with; a ``config``
    given as well must agree with it except for ``steps``.

    The folder is locked while this runs (:meth:`metabook.rundir.RunDir.lock`):
    a second process is refused with :class:`~metabook.errors.FolderInUseError`.
    SIGINT or SIGTERM stop training after a checkpoint of the last step with
    :class:`~metabook.errors.TrainingInterrupted` (:mod:`metabook.training`).

    Launched by ``torchrun`` (``RANK`` and ``WORLD_SIZE`` in the environment),
    every process joins one job (gloo on the CPU, NCCL on GPUs): the weights
    start as process 0's, each process computes its share of every meta-batch,
    and only process 0 writes into ``out`` (and holds its lock), which every
    process must see (on several machines: a shared file system) to resume.
    """
    run = RunDir(out)
    if resume:
        run.check(resume)
        saved = load_config(run.path / CONFIG)
        if config is not None:
            differ = saved.differences(config, ignore=("steps",))
            if differ:
                raise ConfigError(f"the config differs from the one {run.path} was started with "
                                  f"in {differ}; resume without a config (the run's own is used), "
                                  f"or start a new run", options=("config",))
        config = saved
    config = config or PretrainConfig.for_scale()
    if steps is not None:
        config = config.replace(steps=steps)
    where = device(config.scale)
    joined = not dist.is_initialized() and distributed.init_from_env(
        "nccl" if where.type == "cuda" else "gloo")
    try:
        with _owned(run):
            run.check(resume)
            return _pretrain(config, run, resume, progress, on_step, where)
    finally:
        if joined:
            dist.destroy_process_group()


@contextmanager
def _owned(run: RunDir) -> Iterator[None]:
    """Process 0 holds the run folder's lock; if it cannot, no process goes on."""
    lock, refused = FolderLock(), None
    if distributed.rank() == 0:
        try:
            lock = run.lock("training", reading=False)
        except MetabookError as err:
            refused = err
    if distributed.max_over_processes(int(refused is not None)):
        raise refused or FolderInUseError(f"process 0 of this job could not take {run.path}; "
                                          f"its message says why")
    with lock:
        yield


def _pretrain(config: PretrainConfig, run: RunDir, resume: bool, progress: bool,
              on_step: Callable[[int, dict[str, Any]], None] | None,
              where: torch.device) -> TrainResult:
    """:func:`pretrain` once the config is settled and the process group (if any) joined."""
    data = prepare_data(config)
    if resume:
        _check_vocab(run, data.vocab)
    learner = build_learner(config, len(data.vocab), data.vocab.pad_id)
    val = to_ids(episodes(data, "val", config.val_episodes, config.n_way, config.k_shot,
                          config.q_query, VAL_SEED + config.split_seed), data.ids["val"],
                 data.vocab.pad_id)
    trainer = MetaTrainer(learner, build_sampler(config, data), run, outer_lr=config.outer_lr,
                          optimizer=config.optimizer, meta_batch=config.meta_batch,
                          clip_grad=config.clip_grad, eval_every=config.eval_every,
                          checkpoint_every=config.checkpoint_every,
                          checkpoint_minutes=config.checkpoint_minutes, patience=config.patience,
                          keep_checkpoints=config.keep_checkpoints, val_tasks=val,
                          config=config.to_dict(), progress=progress, device=where,
                          on_step=on_step)
    # Every process built the same weights from the seed; the broadcast (on the device, as
    # NCCL needs) makes sure, and no process passes it before all have checked the folder
    # above: process 0 writes into it only after this.
    distributed.broadcast_parameters(trainer.learner)
    if trainer.writer:
        run.create()
        if not resume:
            run.write_json(VOCAB, {"itos": data.vocab.itos})
        run.write_json(CONFIG, config.to_dict())
    result = trainer.train(config.steps, resume=resume)
    if trainer.writer:
        run.write_json(RESULT, {"step": result.step, "stopped": result.stopped,
                                "best_step": result.best_step, "best_score": result.best_score,
                                "fingerprint": config.fingerprint(),
                                "code": package_fingerprint()})
    # Nobody returns before the run's files are complete.
    distributed.barrier()
    return result


def _check_vocab(run: RunDir, vocab: Tokenizer) -> None:
    path = run.path / VOCAB
    try:
        saved = (run.read_json(VOCAB) or {})["itos"]
    except (CheckpointError, KeyError, TypeError) as err:
        raise CheckpointError(f"{path} is missing or corrupt ({err!r}); the run cannot be "
                              f"loaded without the tokens it was trained with") from None
    if saved != vocab.itos:
        raise CheckpointError(f"the corpus gives other tokens than the ones in {path}: the data "
                              f"changed since the run was trained; retrain it")


@dataclass
class Run:
    """A trained run loaded back: its config, data, learner (at ``checkpoint``) and step.

    ``validated`` is False when no validation ran, so that "best" is the latest checkpoint.
    """

    out: Path
    config: PretrainConfig
    data: Data
    learner: Learner
    checkpoint: Path
    step: int
    validated: bool = True

    def test_episodes(self, n: int | None = None, n_way: int | None = None,
                      k_shot: int | None = None, q_query: int | None = None) -> list[Task]:
        """Index episodes of the test classes (the config's shape unless given)."""
        c = self.config
        return episodes(self.data, "test", n or c.test_episodes, n_way or c.n_way,
                        k_shot or c.k_shot, q_query or c.q_query, TEST_SEED + c.split_seed)


def load_run(out: str | Path, which: str = "best") -> Run:
    """The run in ``out`` at its ``"best"`` (validation) or ``"latest"`` checkpoint.

    The folder is locked while it is read, so a run that another process is
    training is refused (:class:`~metabook.errors.FolderInUseError`).
    """
    run = RunDir(out)
    if which not in ("best", "latest"):
        raise ConfigError(f"which must be 'best' or 'latest', got {which!r}",
                          options=("checkpoint",))
    if not (run.path / CONFIG).is_file():
        raise CheckpointError(f"{run.path} holds no metabook run (no {CONFIG}); train one into "
                              f"it first", options=("out",))
    with run.lock("reading"):
        config = load_config(run.path / CONFIG)
        data = prepare_data(config)
        _check_vocab(run, data.vocab)
        path = run.best() if which == "best" else run.latest()
        validated = bool((run.pointer() or {}).get("best"))
        ckpt = load_checkpoint(path)
    learner = build_learner(config, len(data.vocab), data.vocab.pad_id)
    load_into(learner, ckpt.model, path / "model.safetensors")
    learner.to(device(config.scale))
    return Run(run.path, config, data, learner, path, int(ckpt.meta["step"]), validated)


def evaluate_run(run: Run, n_episodes: int | None = None, steps: int | None = None,
                 progress: bool = False) -> Evaluation:
    """Accuracy of the run's learner on its test episodes, before and after adaptation."""
    tasks = to_ids(run.test_episodes(n_episodes), run.data.ids["test"], run.data.vocab.pad_id)
    return evaluate(run.learner, tasks, steps=steps, progress=progress)


def curve_over_shots(run: Run, shots: Sequence[int], n_episodes: int | None = None
                     ) -> list[tuple[int, Interval]]:
    """Accuracy after adaptation against the number of shots ``K`` (fresh test episodes per K)."""
    def measure(k: int) -> list[float]:
        tasks = to_ids(run.test_episodes(n_episodes, k_shot=k), run.data.ids["test"],
                       run.data.vocab.pad_id)
        return accuracies(run.learner, tasks)  # after adaptation (evaluate would add "before")
    return curve(measure, shots)


def curve_over_steps(run: Run, steps: Sequence[int], n_episodes: int | None = None
                     ) -> list[tuple[int, Interval]]:
    """Accuracy against the number of inner steps, on the same test episodes for every point."""
    tasks = to_ids(run.test_episodes(n_episodes), run.data.ids["test"], run.data.vocab.pad_id)
    along = accuracies_along(run.learner, tasks, steps)
    return curve(along.__getitem__, steps)
