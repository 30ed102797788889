"""One knob for the size of every experiment in the book.

Chapters run at ``small`` by default (two CPU cores, a few minutes each). Set
the environment variable ``METABOOK_SCALE=large`` to run the GPU-sized version::

    >>> from metabook.scale import pick
    >>> pick(small=200, large=20_000) in (200, 20_000)
    True
"""
from __future__ import annotations

import os
from typing import TypeVar

import torch

from metabook.errors import ConfigError

__all__ = ["SCALES", "scale", "pick", "device"]

SCALES = ("small", "large")
T = TypeVar("T")


def scale() -> str:
    """The current scale: the value of ``METABOOK_SCALE``, ``"small"`` when unset."""
    value = os.environ.get("METABOOK_SCALE", "small").strip().lower() or "small"
    if value not in SCALES:
        raise ConfigError(f"METABOOK_SCALE={value!r} is not one of {SCALES}; unset it or pick one")
    return value


def pick(small: T, large: T) -> T:
    """``small`` or ``large``, whichever the current :func:`scale` asks for."""
    return large if scale() == "large" else small


def device() -> torch.device:
    """CUDA when the large scale is asked for and a GPU is present, else the CPU."""
    if scale() == "large" and torch.cuda.is_available():
        return torch.device("cuda")
    return torch.device("cpu")
