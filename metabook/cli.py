"""The ``metabook`` command line.

Every subcommand has ``--help``. Errors that come from the user's input print
one line naming the problem and exit with status 2; ``--debug`` shows the
traceback instead.
"""
from __future__ import annotations

import argparse
import platform
import sys
from typing import Callable, Sequence

from metabook.errors import MetabookError

__all__ = ["main", "build_parser"]

Handler = Callable[[argparse.Namespace], int]


def _cmd_info(args: argparse.Namespace) -> int:
    import torch

    import metabook

    print(f"metabook {metabook.__version__}")
    print(f"python   {platform.python_version()}")
    print(f"torch    {torch.__version__} (threads: {torch.get_num_threads()}, "
          f"cuda: {torch.cuda.is_available()})")
    return 0


def _cmd_datasets(args: argparse.Namespace) -> int:
    from metabook import corpora

    for name in corpora.names():
        c = corpora.info(name)
        print(f"{c.name}\n  {c.description}\n  source:    {c.source}\n  license:   {c.license}"
              f"\n  languages: {', '.join(c.languages)}\n  domains:   {', '.join(c.domains)}"
              f"\n  size:      {c.size}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    """The argument parser with every subcommand registered."""
    parser = argparse.ArgumentParser(
        prog="metabook",
        description="Meta-learning-based pretraining for NLP: the library behind the book "
                    "'Everything is a mapping'.",
    )
    parser.add_argument("--debug", action="store_true", help="show full tracebacks on errors")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    p = sub.add_parser("info", help="print versions and the compute device")
    p.set_defaults(handler=_cmd_info)
    p = sub.add_parser("datasets", help="list every corpus with its source and license")
    p.set_defaults(handler=_cmd_datasets)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    handler: Handler | None = getattr(args, "handler", None)
    if handler is None:
        parser.print_help()
        return 0
    try:
        return handler(args)
    except (MetabookError, OSError) as err:
        if args.debug:
            raise
        print(f"metabook {args.command}: error: {err}", file=sys.stderr)
        return 2
