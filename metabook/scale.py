"""One knob for the size of every experiment in the book.

Chapters run at ``small`` by default (two CPU cores, a few minutes each). Set
the environment variable ``METABOOK_SCALE=large`` to run the GPU-sized version::

    >>> from metabook.scale import pick
    >>> pick(small=200, large=20_000) in (200, 20_000)
    True

:data:`SCALES` registers the two with what they are for; the config's
``scale`` and the command line's ``--scale`` read their choices from it.
"""
from __future__ import annotations

import os
from typing import TYPE_CHECKING, TypeVar

from metabook.errors import ConfigError
from metabook.registry import Registry

if TYPE_CHECKING:
    import torch

__all__ = ["SCALES", "scale", "pick", "device"]

#: The scales, each with what it is for.
SCALES: Registry[str] = Registry("scale")
SCALES.register("small", "two CPU cores: every chapter in a few minutes (the default)")
SCALES.register("large", "one GPU or Colab: wider models, longer runs, more episodes")

T = TypeVar("T")


def scale() -> str:
    """The current scale: the value of ``METABOOK_SCALE``, ``"small"`` when unset."""
    value = os.environ.get("METABOOK_SCALE", "small").strip().lower() or "small"
    if value not in SCALES:
        raise ConfigError(f"METABOOK_SCALE={value!r} is not one of {SCALES.names()}; unset it or "
                          f"pick one")
    return value


def pick(small: T, large: T) -> T:
    """``small`` or ``large``, whichever the current :func:`scale` asks for."""
    return large if scale() == "large" else small


def device(name: str | None = None) -> torch.device:
    """CUDA at the ``large`` scale (``name``, or the current one) if a GPU is present; else the CPU."""
    import torch  # here, not above: the command line reads SCALES without loading torch

    if (name or scale()) == "large" and torch.cuda.is_available():
        return torch.device("cuda")
    return torch.device("cpu")
