"""Library code shown on a page, read from the installed package, so book and package never drift.

:func:`show_source` displays the source of a function, a method or a class of
metabook, with its file and line numbers: as Markdown in a notebook, as plain
text elsewhere. :func:`source_of` returns it as a :class:`Source`::

    >>> from metabook.adaptation import update
    >>> src = source_of(update)
    >>> src.path, src.code.splitlines()[0][:40]
    ('metabook/adaptation.py', 'def update(params: Params, grads: Mappin')
    >>> src.end - src.start + 1 == len(src.code.splitlines())
    True
"""
from __future__ import annotations

import functools
import hashlib
import inspect
import textwrap
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = ["Source", "source_of", "show_source", "package_fingerprint"]

_PACKAGE_PARENT = Path(__file__).resolve().parent.parent


@dataclass(frozen=True)
class Source:
    """The code of one object: its file (relative to the package's folder), first and last line."""

    path: str
    start: int
    end: int
    code: str

    def markdown(self) -> str:
        """The code as a Markdown block under a line that says where it comes from."""
        return f"`{self.path}`, lines {self.start}–{self.end}:\n\n```python\n{self.code}\n```"

    def _repr_markdown_(self) -> str:  # how Jupyter shows it
        return self.markdown()

    def __str__(self) -> str:
        return f"{self.path}, lines {self.start}–{self.end}:\n\n{self.code}"


def source_of(obj: Any) -> Source:
    """The source of ``obj`` (a function, method, class or module) as the interpreter reads it."""
    lines, start = inspect.getsourcelines(obj)
    path = Path(inspect.getsourcefile(obj)).resolve()
    where = (path.relative_to(_PACKAGE_PARENT).as_posix() if path.is_relative_to(_PACKAGE_PARENT)
             else str(path))
    start = max(start, 1)  # a module starts at line 0 for inspect
    return Source(where, start, start + len(lines) - 1, textwrap.dedent("".join(lines)).rstrip())


def show_source(obj: Any) -> None:
    """Show the source of ``obj``: Markdown in a notebook, plain text anywhere else.

    >>> from metabook.adaptation import Proximal
    >>> show_source(Proximal)  # doctest: +ELLIPSIS
    metabook/adaptation.py, lines ...:
    <BLANKLINE>
    @dataclass(frozen=True)
    class Proximal:
    ...
    """
    source = source_of(obj)
    try:
        from IPython import get_ipython
        from IPython.display import Markdown, display
    except ImportError:
        get_ipython = None
    if get_ipython is not None and get_ipython() is not None:
        display(Markdown(source.markdown()))
    else:
        print(source)


@functools.lru_cache(maxsize=1)
def package_fingerprint() -> str:
    """A short hash of metabook's own source code: runs kept on disk are reused only when it matches.

    A saved result depends on the code that computed it as much as on its
    config; with this in its key, a change to the library retrains it.

    >>> len(package_fingerprint()), package_fingerprint() == package_fingerprint()
    (16, True)
    """
    digest = hashlib.sha256()
    for path in sorted((_PACKAGE_PARENT / "metabook").rglob("*.py")):
        digest.update(path.relative_to(_PACKAGE_PARENT).as_posix().encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()[:16]
