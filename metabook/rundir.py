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
that :meth:`RunDir.start` can continue from.

One process at a time owns a run folder. :meth:`RunDir.start` (a process
claiming the folder for training) and :meth:`RunDir.lock` (one reading it, or
about to write it) take an exclusive ``flock`` on the file ``OUT/.lock`` and
write their process id, host and purpose into it; a second process is refused
with a :class:`~metabook.errors.FolderInUseError` that names them. The kernel
drops the lock when its owner exits, however it exits, so a run killed with
``kill -9`` leaves nothing that blocks its resume. The lock is released (and the
file removed) at the end of the ``with`` block; a process may take a lock it
already holds again::

    >>> with run.lock("a doctest"):
    ...     with run.lock("the same process again"):
    ...         (run.path / LOCK).is_file()
    True
    >>> (run.path / LOCK).exists()
    False

(On a system without ``fcntl``, Windows, folders are not locked.)
"""
from __future__ import annotations

import errno
import json
import os
import shutil
import socket
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

from torch import Tensor

from metabook.checkpoint import (clean_partial_saves, save_checkpoint, write_json_atomic,
                                 writing)
from metabook.errors import CheckpointError, FolderInUseError

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows has no flock; its folders are not locked
    fcntl = None

__all__ = ["RunDir", "POINTER", "LOG", "LOCK", "FolderLock", "lock_folder"]

POINTER, LOG, LOCK = "latest.json", "log.jsonl", ".lock"


@dataclass
class _Held:
    fd: int  # the open lock file, which holds the flock
    holders: int  # the FolderLock objects of this process that hold it
    made: list[Path]  # the folders the lock made, deepest first


# The folders this process holds, by resolved path.
_HELD: dict[Path, _Held] = {}


class FolderLock:
    """This process's hold on a folder (see :func:`lock_folder`); ``with`` releases it."""

    def __init__(self, key: Path | None = None):
        self._key = key

    def __enter__(self) -> "FolderLock":
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()

    @property
    def held(self) -> bool:
        """Whether this object still holds a lock (False for a folder that could not be locked)."""
        return self._key is not None

    def release(self) -> None:
        """Give the folder up (once the last holder in this process releases it)."""
        key, self._key = self._key, None
        if key is None:
            return
        held = _HELD[key]
        held.holders -= 1
        if held.holders:
            return
        del _HELD[key]
        # Removed while still locked: a process that opened the file meanwhile finds, once it
        # has the lock, that the file is gone, and locks the new one instead (lock_folder).
        try:
            (key / LOCK).unlink(missing_ok=True)
        except OSError:
            pass  # a folder we may read but not write, or one deleted meanwhile
        os.close(held.fd)
        _remove_empty(held.made)


def lock_folder(folder: str | Path, purpose: str, reading: bool = False) -> FolderLock:
    """Own ``folder`` (made if missing) for ``purpose``, a few words the refusal quotes.

    Raises :class:`~metabook.errors.FolderInUseError` naming the owner when
    another process holds it. ``reading=True`` is for a process that only
    reads: in a folder it may not write, it takes the lock on an existing lock
    file, or none when there is none (then nobody holds it).
    """
    folder = Path(folder)
    if fcntl is None:  # pragma: no cover
        return FolderLock()
    whole = folder.absolute()
    made = [f for f in (whole, *whole.parents) if not f.exists()]
    with writing(folder, "the run"):
        folder.mkdir(parents=True, exist_ok=True)
    key = folder.resolve()
    if key in _HELD:
        _HELD[key].holders += 1
        return FolderLock(key)
    try:
        fd = _lock(folder, key / LOCK, reading)
    except BaseException:
        _remove_empty(made)
        raise
    if fd is None:
        return FolderLock()
    try:
        os.ftruncate(fd, 0)
        os.write(fd, json.dumps({"pid": os.getpid(), "host": socket.gethostname(),
                                 "purpose": purpose,
                                 "since": time.strftime("%Y-%m-%d %H:%M:%S")}).encode())
    except OSError:
        pass  # a read-only lock file (reading=True): the lock holds without the owner's name
    _HELD[key] = _Held(fd, 1, made)
    return FolderLock(key)


def _remove_empty(folders: list[Path]) -> None:
    """Remove ``folders`` (deepest first) while they are empty: a command that failed before
    writing anything leaves no folder behind."""
    try:
        for folder in folders:
            folder.rmdir()
    except OSError:
        pass  # not empty: something was written into it


def _lock(folder: Path, path: Path, reading: bool) -> int | None:
    """The descriptor of the lock file ``path``, locked; None for a reader where there is none."""
    while True:
        with writing(folder, "the run"):
            fd = _open_lock_file(path, reading)
        if fd is None:
            return None
        try:
            with writing(folder, "the run"):  # a file system without locks, say
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    raise _in_use(folder, _read_owner(fd)) from None
        except BaseException:
            os.close(fd)
            raise
        if _same_file(fd, path):
            return fd
        os.close(fd)  # the owner before us removed the file we locked: lock the one there now


def _open_lock_file(path: Path, reading: bool) -> int | None:
    try:
        return os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    except OSError as err:
        if not (reading and err.errno in (errno.EACCES, errno.EPERM, errno.EROFS)):
            raise
    try:
        return os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        return None


def _same_file(fd: int, path: Path) -> bool:
    try:
        now = os.stat(path)
    except FileNotFoundError:
        return False
    mine = os.fstat(fd)
    return (mine.st_dev, mine.st_ino) == (now.st_dev, now.st_ino)


def _read_owner(fd: int) -> dict[str, Any]:
    try:
        owner = json.loads(os.pread(fd, 4096, 0).decode())
    except (OSError, ValueError):
        return {}  # the owner has not written its name yet
    return owner if isinstance(owner, dict) else {}


def _in_use(folder: Path, owner: dict[str, Any]) -> FolderInUseError:
    pid, host = owner.get("pid"), owner.get("host")
    who = (f"process {pid} on {host} ({owner.get('purpose')}, since {owner.get('since')})"
           if pid else "another process")
    return FolderInUseError(f"{folder} is in use by {who}; one process at a time may use a run "
                            f"folder: wait for that one to end, or stop it", pid=pid, host=host)


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

    def lock(self, purpose: str = "reading", reading: bool = True) -> FolderLock:
        """Own the folder until the lock is released (see the module docstring).

        The default is a reader's lock, which a folder the process may not
        write does not refuse; :meth:`start` takes the writer's.
        """
        return lock_folder(self.path, purpose, reading=reading)

    def start(self, resume: bool, write: bool = True) -> FolderLock:
        """Claim the folder for training: lock it, :meth:`check` it, tidy it; returns the lock.

        Use it as ``with run.start(resume):`` so that the lock is released when
        training ends. A new run clears the log an earlier attempt may have
        left; a resumed one loses what a crash left half-written. With
        ``write=False`` (every process of a distributed job but the one that
        writes) only the checks are made, and no lock is taken.
        """
        if not write or not self.path.is_dir():
            # Checked before the lock makes the folder: a resume of nothing creates nothing.
            self.check(resume)
        if not write:
            return FolderLock()
        lock = lock_folder(self.path, "training")
        try:
            self.check(resume)
            if resume:
                clean_partial_saves(self.checkpoints)
            else:
                with writing(self.log_path, "the training log"):
                    self.log_path.unlink(missing_ok=True)
        except BaseException:
            lock.release()
            raise
        return lock

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

    def training_seconds(self) -> float:
        """Seconds the logged steps and validations took (not start-up, not checkpoints)."""
        return sum(r.get("sample_seconds", 0.0) + r.get("step_seconds", 0.0)
                   + (r.get("seconds", 0.0) if r.get("event") == "validation" else 0.0)
                   for r in self.read_log())

    def truncate_log(self, step: int) -> None:
        """Drop the records after ``step``: those steps ran before a crash and will run again."""
        kept = [r for r in self.read_log() if r["step"] <= step]
        with writing(self.log_path, "the training log"):
            tmp = self.log_path.with_suffix(".jsonl.tmp")
            tmp.write_text("".join(json.dumps(r) + "\n" for r in kept), encoding="utf-8")
            tmp.replace(self.log_path)
