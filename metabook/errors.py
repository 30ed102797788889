"""The exceptions metabook raises for problems in the user's input.

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

from typing import Iterable

__all__ = ["MetabookError", "TaskError", "CorpusError", "CheckpointError", "ConfigError",
           "TrainingError", "OutputError"]


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
