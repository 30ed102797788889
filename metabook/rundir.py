"""The folder of one training run, and everything in it.

::

    OUT/
      config.json          the run's settings (written by metabook.runs.pretrain)
      vocab.json           the tokens its ids stand for
      log.jsonl            one JSON record per line: steps, validations, checkpoints
      result.json          how the run ended
      checkpoints/
        step-000050/       a checkpoint (metabook.checkpoint: safetensors + JSON)
        step-000100/
        latest.json        which checkpoint is the latest and which scored best

:class:`RunDir` is the only code that knows this layout: the trainer asks it to
save a checkpoint, append to the log or continue from the latest checkpoint,
and readers ask it for the log and for the latest or best checkpoint::

    >>> import tempfile, torch
    >>> run = RunDir(tempfile.mkdtemp())
    >>> run.holds_run()
    False
    >>> path = run.save_checkpoint(3, {"w": torch.zeros(2)}, {"note": "x"}, keep=2)
    >>> run.latest().name, run.best().name, run.holds_run()
    ('step-000003', 'step-000003', True)
    >>> run.append_log({"step": 3, "loss": 0.5}); run.read_log()
    [{'step': 3, 'loss': 0.5}]

Every write is atomic or append-only, so a crash at any moment leaves a folder
that :meth:`RunDir.start` can continue from. :meth:`RunDir.start` is also the
one place where a process claims the folder for training, which is where a lock
against a second writer belongs (and :meth:`metabook.training.Trainer.fit`'s
loop, between two steps, is where a stop asked for by a signal belongs).
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any, Mapping

from torch import Tensor

from metabook.checkpoint import (clean_partial_saves, save_checkpoint, write_json_atomic,
                                 writing)
from metabook.errors import CheckpointError

__all__ = ["RunDir", "POINTER", "LOG"]

POINTER, LOG = "latest.json", "log.jsonl"


class RunDir:
    """The run folder ``path`` (see the module docstring for its layout)."""

    def __init__(self, path: str | Path):
        self.path = Path(path)

    def __repr__(self) -> str:
        return f"RunDir({str(self.path)!r})"

    @property
    def checkpoints(self) -> Path:
        return self.path / "checkpoints"

    @property
    def log_path(self) -> Path:
        return self.path / LOG

    def checkpoint_path(self, step: int) -> Path:
        """Where the checkpoint of ``step`` lives."""
        return self.checkpoints / f"step-{step:06d}"

    # --- the run as a whole -------------------------------------------------------------

    def holds_run(self) -> bool:
        """Whether a run has saved a checkpoint here (``checkpoints/latest.json`` exists)."""
        return (self.checkpoints / POINTER).is_file()

    def check(self, resume: bool) -> None:
        """Raise unless the folder holds a run to resume (``resume``) or none (a new run)."""
        if resume and not self.holds_run():
            raise CheckpointError(f"{self.path} holds no run to resume "
                                  f"({self.checkpoints / POINTER} is missing); start a new run "
                                  f"instead of resuming",
                                  options=("resume",))
        if not resume and self.holds_run():
            raise CheckpointError(f"{self.path} already holds a run; resume it or choose another "
                                  f"output folder", options=("resume", "out"))

    def start(self, resume: bool, write: bool = True) -> None:
        """Claim the folder for training, after :meth:`check`.

        A new run clears the log an earlier attempt may have left; a resumed
        one loses what a crash left half-written. With ``write=False`` (every
        process of a distributed job but the one that writes) only the checks
        are made.
        """
        self.check(resume)
        if not write:
            return
        self.create()
        if resume:
            clean_partial_saves(self.checkpoints)
        else:
            with writing(self.log_path, "the training log"):
                self.log_path.unlink(missing_ok=True)

    def create(self) -> None:
        """Make the folder (and its parents) if it does not exist yet."""
        with writing(self.path, "the run"):
            self.path.mkdir(parents=True, exist_ok=True)

    def write_json(self, name: str, value: Any) -> Path:
        """Write ``value`` to the file ``name`` of the run, atomically."""
        return write_json_atomic(self.path / name, value)

    def read_json(self, name: str) -> Any:
        """The JSON in the file ``name`` of the run; ``None`` when there is no such file."""
        path = self.path / name
        if not path.is_file():
            return None
        try:
            return json.loads(path.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as err:
            raise CheckpointError(f"{path} is corrupt ({err}); delete it, or the run, and "
                                  f"train again") from None

    # --- checkpoints --------------------------------------------------------------------

    def pointer(self) -> dict[str, Any] | None:
        """``checkpoints/latest.json``: the latest and the best checkpoint (None before one)."""
        path = self.checkpoints / POINTER
        if not path.is_file():
            return None
        try:
            return json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as err:
            raise CheckpointError(f"{path} is corrupt ({err}); delete it and point it at the "
                                  f"newest complete checkpoints/step-* directory") from None

    def latest(self) -> Path:
        """The directory of the run's last checkpoint."""
        pointer = self.pointer()
        if pointer is None:
            raise CheckpointError(f"{self.path} holds no checkpoint ({self.checkpoints / POINTER} "
                                  f"is missing); train a run into it first", options=("out",))
        return self.checkpoints / pointer["latest"]

    def best(self) -> Path:
        """The checkpoint with the best validation score (the latest one if none was validated)."""
        pointer = self.pointer()
        if pointer is None or not pointer.get("best"):
            return self.latest()
        return self.checkpoints / pointer["best"]

    def save_checkpoint(self, step: int, model_state: Mapping[str, Tensor],
                        meta: Mapping[str, Any] | None = None,
                        optimizer_state: Mapping[str, Any] | None = None, *,
                        best_step: int | None = None, best_score: float | None = None,
                        keep: int = 2) -> Path:
        """Save ``step``'s checkpoint, point ``latest.json`` at it, and prune old ones.

        The ``keep`` newest checkpoints stay, and the best one (``best_step``)
        whatever its age. The pointer is written only after the checkpoint is
        complete, so it never names a half-written one.
        """
        directory = save_checkpoint(self.checkpoint_path(step), model_state, meta,
                                    optimizer_state)
        best = self.checkpoint_path(best_step).name if best_step is not None else None
        write_json_atomic(self.checkpoints / POINTER, {"latest": directory.name, "best": best,
                                                       "step": step, "best_score": best_score})
        steps = sorted(self.checkpoints.glob("step-*"))
        for old in steps[: max(0, len(steps) - keep)]:
            if old.name not in (directory.name, best):
                shutil.rmtree(old, ignore_errors=True)
        return directory

    # --- the log ------------------------------------------------------------------------

    def read_log(self) -> list[dict[str, Any]]:
        """Every record of ``log.jsonl``, in order.

        A last line without its newline was cut off by a crash mid-write: it is
        left out (the step it records is redone on resume).
        """
        if not self.log_path.is_file():
            return []
        lines = self.log_path.read_text(encoding="utf-8").split("\n")
        try:
            return [json.loads(line) for line in lines[:-1] if line]
        except json.JSONDecodeError as err:
            raise CheckpointError(f"{self.log_path} is corrupt ({err}); delete it or the broken "
                                  f"lines to resume") from None

    def append_log(self, record: Mapping[str, Any]) -> None:
        """Add one record to the log."""
        with writing(self.log_path, "the training log"), \
                open(self.log_path, "a", encoding="utf-8") as f:
            f.write(json.dumps(record) + "\n")

    def truncate_log(self, step: int) -> None:
        """Drop the records after ``step``: those steps ran before a crash and will run again."""
        kept = [r for r in self.read_log() if r["step"] <= step]
        with writing(self.log_path, "the training log"):
            tmp = self.log_path.with_suffix(".jsonl.tmp")
            tmp.write_text("".join(json.dumps(r) + "\n" for r in kept), encoding="utf-8")
            tmp.replace(self.log_path)
