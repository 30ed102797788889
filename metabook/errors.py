"""The exceptions metabook raises for problems in the user's input, and for a stopped run.

Each message names the input at fault and what to change, in the library's own
terms (a parameter or a config key). ``options`` names the settings the fix
involves, so that a front end can add its own words for them: the command line
prints such an error as one line and adds the flags (``--out``, ``--resume``)
that set them; no traceback unless ``--debug``::

    >>> err = CheckpointError("runs/x already holds a run; resume it or choose another "
    ...                       "output folder", options=("resume", "out"))
    >>> str(err), err.options
    ('runs/x already holds a run; resume it or choose another output folder', ('resume', 'out'))
"""
from __future__ import annotations

from pathlib import Path
from typing import Iterable

__all__ = ["MetabookError", "TaskError", "CorpusError", "CheckpointError", "ConfigError",
           "TrainingError", "OutputError", "MissingPackageError", "FolderInUseError",
           "TrainingInterrupted"]


class MetabookError(Exception):
    """Base class: a problem with what the user asked for, not a bug in metabook.

    ``options`` names the parameters or config keys whose change fixes it
    (``"out"``, ``"resume"``, ``"config"``, ``"corpus"``, ...).
    """

    def __init__(self, *args: object, options: Iterable[str] = ()):
        super().__init__(*args)
        self.options = tuple(options)


class TaskError(MetabookError, ValueError):
    """A task cannot be built: too few classes or examples, or an empty source."""


class CorpusError(MetabookError, ValueError):
    """A corpus is unknown, not installed, malformed, or holds no usable text."""


class CheckpointError(MetabookError, ValueError):
    """A checkpoint is missing, truncated, corrupt, foreign, or of another shape or version."""


class ConfigError(MetabookError, ValueError):
    """A configuration has an unknown key or a value of the wrong type."""


class TrainingError(MetabookError, RuntimeError):
    """Training cannot go on (for example the loss became NaN or inf)."""


class OutputError(MetabookError, OSError):
    """A run's output cannot be written: the disk is full, or the folder is read-only or not ours.

    Still an :class:`OSError` (with the original ``errno``), so code that
    catches ``OSError`` around a save keeps working.
    """


class MissingPackageError(MetabookError, ImportError):
    """An optional package that was asked for (a pretrained model's, a peer library) is not installed."""


class FolderInUseError(MetabookError, RuntimeError):
    """Another process owns the folder (see :meth:`metabook.rundir.RunDir.lock`).

    ``pid`` and ``host`` name that process when it recorded them, else None.
    """

    def __init__(self, message: str, pid: int | None = None, host: str | None = None):
        super().__init__(message)
        self.pid, self.host = pid, host


class TrainingInterrupted(KeyboardInterrupt):
    """Training stopped because the process was sent SIGINT (Ctrl-C) or SIGTERM.

    A :class:`KeyboardInterrupt`, so that code which stops on Ctrl-C stops on
    it too, but not a :class:`MetabookError`: nothing was wrong with the
    input. ``signum`` is the signal; ``step`` the step training can continue
    from and ``checkpoint`` the checkpoint that holds it (None when there is
    none: training in memory, or interrupted again before the first save);
    ``saved`` whether that checkpoint was saved for this stop, or is an
    earlier one because a second signal cut the save short.
    """

    def __init__(self, message: str, signum: int, step: int, checkpoint: Path | None,
                 saved: bool):
        super().__init__(message)
        self.signum, self.step, self.checkpoint, self.saved = signum, step, checkpoint, saved

    @property
    def exit_status(self) -> int:
        """128 plus the signal's number, as a shell reports a process the signal ended: 130, 143."""
        return 128 + self.signum
