"""The ``metabook`` command line (also ``python -m metabook``).

::

    metabook pretrain [--config FILE] [--out DIR] [--steps N] [--resume] [--scale large]
    metabook evaluate DIR [--episodes N] [--json]
    metabook reproduce chapter5|chapter6 [--config FILE] [--out DIR] [--learners NAME ...]
                       [--baselines KEY ...] [--no-scratch]
    metabook datasets
    metabook info

Every subcommand has ``--help``; the defaults are the small run that fits two
CPU cores, and ``--scale large`` is the one switch to the GPU-sized run.
Errors that come from the user's input, or from a disk that refuses the
output, print one line naming the problem and what to do, with the flags that
change it, and exit with status 2; ``--debug`` shows the traceback instead.
A warning prints as one line too, ``metabook: warning: ...``.
A run folder that another process is using is such an error, naming that
process. Ctrl-C (SIGINT) or SIGTERM during training saves a checkpoint of the
last finished step and prints one line naming the step, the checkpoint and the
command that resumes; the exit status is 130 or 143, as for a process the
signal had ended (:mod:`metabook.training` says what a second Ctrl-C does).

This package is the command line's side of metabook: its wording, its flags,
and the book's drivers (:mod:`metabook.cli.reproduce`). It imports the library
only when a command runs, so ``metabook --help`` stays quick.

``torchrun --nproc_per_node=2 -m metabook pretrain ...`` runs one shared job
over two processes (see :mod:`metabook.distributed`); only process 0 prints.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import signal
import sys
import warnings
from pathlib import Path
from typing import Callable, Sequence

from metabook.errors import MetabookError, TrainingInterrupted
from metabook.scale import SCALES

__all__ = ["main", "build_parser"]

Handler = Callable[[argparse.Namespace], int]

# Settings that no flag of the running command sets, and the words that say where to.
_ELSEWHERE = {"out": "`metabook pretrain --out DIR`",
              "corpus": "`metabook datasets` lists every corpus with its license"}


def _cmd_info(args: argparse.Namespace) -> int:
    import torch

    import metabook
    from metabook.models import BACKBONES
    from metabook.recipes import LEARNERS
    from metabook.training import OPTIMIZERS

    print(f"metabook {metabook.__version__}")
    print(f"python   {platform.python_version()}")
    print(f"torch    {torch.__version__} (threads: {torch.get_num_threads()}, "
          f"cuda: {torch.cuda.is_available()})")
    for title, registry in (("learners", LEARNERS), ("backbones", BACKBONES),
                            ("optimizers", OPTIMIZERS)):
        print(f"{title + ':':<11}" + ", ".join(f"{n} ({registry.display(n)})" for n in registry))
    print("scales:    " + "; ".join(f"{n}: {SCALES[n]}" for n in SCALES))
    return 0


def _cmd_datasets(args: argparse.Namespace) -> int:
    from metabook import corpora

    for name in corpora.names():
        c = corpora.info(name)
        print(f"{c.name}\n  {c.description}\n  source:    {c.source}\n  license:   {c.license}"
              f"\n  languages: {', '.join(c.languages)}\n  domains:   {', '.join(c.domains)}"
              f"\n  size:      {c.size}")
    return 0


def _config(args: argparse.Namespace):  # -> PretrainConfig | None, imported lazily for speed
    """The config that ``--config`` and ``--scale`` ask for; None when neither was given."""
    from metabook.config import load_config

    if args.config is None and args.scale is None:
        return None
    return load_config(args.config, scale=args.scale)


def _cmd_pretrain(args: argparse.Namespace) -> int:
    from metabook import runs

    result = runs.pretrain(_config(args), args.out, steps=args.steps, resume=args.resume,
                               progress=not args.quiet)
    if int(os.environ.get("RANK", "0")) != 0:  # under torchrun, process 0 reports for all
        return 0
    how = {"completed": "finished", "early_stopping": "stopped early (no validation gain)",
           "already_done": "had already reached the requested step"}[result.stopped]
    print(f"meta-pretraining {how} at step {result.step}; checkpoint: {result.checkpoint}")
    if result.best_step is not None:
        print(f"best validation accuracy {100 * result.best_score:.1f}% at step {result.best_step}")
    print(f"next: metabook evaluate {args.out}")
    return 0


def _cmd_evaluate(args: argparse.Namespace) -> int:
    from metabook import runs
    from metabook.learners import GradientLearner

    run = runs.load_run(args.run, args.checkpoint)
    ev = runs.evaluate_run(run, args.episodes, progress=not (args.quiet or args.json))
    before, after = ev.before_ci, ev.after_ci
    c = run.config
    # ProtoNet adapts by averaging the support set, not by gradient steps.
    steps = run.learner.steps if isinstance(run.learner, GradientLearner) else None
    if args.json:
        print(json.dumps({
            "run": str(run.out), "checkpoint": str(run.checkpoint), "step": run.step,
            "episodes": before.n, "n_way": c.n_way, "k_shot": c.k_shot, "q_query": c.q_query,
            "inner_steps": steps,
            "before": {"accuracy": before.mean, "ci95": before.half_width},
            "after": {"accuracy": after.mean, "ci95": after.half_width}}, indent=2))
        return 0
    unvalidated = ("; no validation ran, so this is the latest checkpoint"
                   if args.checkpoint == "best" and not run.validated else "")
    print(f"run {run.out} at {run.checkpoint.name} (step {run.step}{unvalidated})")
    test = run.data.classes["test"]
    seen = len(set(test) & set(run.data.classes["train"]))  # only a test_corpus shares classes
    origin = (f"{len(test)} classes held out of pretraining" if not seen else
              f"{len(test)} classes, {'all ' if seen == len(test) else ''}{seen} also training "
              f"classes (test_corpus)")
    print(f"{before.n} test episodes: {c.n_way}-way {c.k_shot}-shot, {c.q_query} queries per "
          f"class, from {origin}")
    print(f"accuracy before adaptation: {before}  (%, mean ± 95% interval)")
    print(f"accuracy after adaptation:  {after}" +
          (f"  ({steps} inner steps)" if steps is not None else ""))
    return 0


def _cmd_reproduce(args: argparse.Namespace) -> int:
    from metabook.cli import reproduce
    from metabook.comparison import markdown_table, verdict

    out = Path(args.out or f"runs/{args.target}")
    config = _config(args) if args.config else None
    options = dict(learners=args.learners, scratch=not args.no_scratch, scale=args.scale,
                   progress=not args.quiet)
    if args.baselines:
        options["baselines"] = args.baselines
    if args.target == "chapter5":
        results = {"": reproduce.reproduce_chapter5(out, config, minilm=not args.no_minilm,
                                                    **options)}
    else:
        results = reproduce.reproduce_chapter6(out, config, **options)
    for name, rows in results.items():
        print(f"## {name}\n" if name else "", end="")
        print(markdown_table(rows))
        print(verdict(rows) + "\n")
    written = [out / f"results.{kind}" for kind in ("json", "csv", "md")] if "" in results else \
        [out / "results.md"] + [out / name / "results.json" for name in results]
    print("written: " + ", ".join(map(str, written)))
    return 0


def _add_config_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", metavar="FILE",
                   help="JSON or YAML file of PretrainConfig keys over the defaults")
    p.add_argument("--scale", choices=SCALES.names(),
                   help="defaults for 2 CPU cores (small, the default) or a GPU (large); "
                        "overrides METABOOK_SCALE")
    p.add_argument("--quiet", action="store_true", help="hide the progress bars")


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
    p.set_defaults(handler=_cmd_info, parser=p)
    p = sub.add_parser("datasets", help="list every corpus with its source and license")
    p.set_defaults(handler=_cmd_datasets, parser=p)

    p = sub.add_parser(
        "pretrain", help="meta-pretrain a learner, with checkpoints and exact resume",
        description="Meta-pretrain into OUT: config.json, vocab.json, log.jsonl (one JSON line "
                    "per step) and checkpoints/ (safetensors + JSON). With --resume the run in "
                    "OUT continues from its latest checkpoint exactly as if it had not stopped; "
                    "Ctrl-C or SIGTERM saves a checkpoint of the last finished step before it "
                    "exits.")
    _add_config_options(p)
    p.add_argument("--out", default="runs/pretrain", metavar="DIR",
                   help="output directory (default: %(default)s)")
    p.add_argument("--steps", type=int, metavar="N",
                   help="train until step N in total (default: the config's steps)")
    p.add_argument("--resume", action="store_true",
                   help="continue the run in --out from its latest checkpoint")
    p.set_defaults(handler=_cmd_pretrain, parser=p)

    p = sub.add_parser(
        "evaluate", help="accuracy of a run on held-out episodes, with 95%% intervals",
        description="Adapt the run's learner to each held-out test episode and print its "
                    "query accuracy before and after adaptation (mean ± half-width of the 95%% "
                    "confidence interval).")
    p.add_argument("run", metavar="DIR", help="a directory written by `metabook pretrain`")
    p.add_argument("--episodes", type=int, metavar="N",
                   help="number of test episodes (default: the run's test_episodes)")
    p.add_argument("--checkpoint", choices=("best", "latest"), default="best",
                   help="the best-validated checkpoint or the last one (default: %(default)s)")
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    p.add_argument("--quiet", action="store_true", help="hide the progress bar")
    p.set_defaults(handler=_cmd_evaluate, parser=p)

    p = sub.add_parser(
        "reproduce", help="regenerate a chapter's comparison: meta-pretraining against every "
                          "baseline on the same episodes",
        description="Train every meta-pretraining run and baseline that the chapter's comparison "
                    "needs (or reuse those already in --out, when their config and metabook's "
                    "code are unchanged), measure all of them on the same test episodes, print "
                    "the Markdown table and the verdict, and write results.{json,csv,md}. "
                    "chapter5: MiniLM meta-trained on the conversation topics; chapter6: an "
                    "unseen language (Chichewa) and a new domain. --config replaces the "
                    "chapter's setting with yours, on any corpus metabook knows (metabook "
                    "datasets), for example sib200, clinc150 or fewrel with local data_files.")
    p.add_argument("target", choices=("chapter5", "chapter6"), help="what to reproduce")
    _add_config_options(p)
    p.add_argument("--out", metavar="DIR", help="output directory (default: runs/TARGET)")
    p.add_argument("--learners", nargs="+", metavar="NAME",
                   help="meta-pretrain these learners besides the config's (pretrained backbones; "
                        "default: one more, ProtoNet or ProtoMAML)")
    p.add_argument("--no-scratch", action="store_true",
                   help="leave out meta-pretraining from scratch (pretrained backbones)")
    p.add_argument("--baselines", nargs="+", metavar="KEY",
                   help="measure only these baseline rows, by key: frozen, multitask, finetune, "
                        "ngram (pretrained backbones; default: all)")
    p.add_argument("--no-minilm", action="store_true",
                   help="leave out the frozen MiniLM row (a backbone trained from scratch)")
    p.set_defaults(handler=_cmd_reproduce, parser=p)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    handler: Handler | None = getattr(args, "handler", None)
    if handler is None:
        parser.print_help()
        return 0
    if getattr(args, "steps", None) is not None and args.steps < 1:
        parser.error(f"--steps must be at least 1, got {args.steps}")
    if getattr(args, "episodes", None) is not None and args.episodes < 2:
        parser.error(f"--episodes must be at least 2 (a confidence interval needs two), "
                     f"got {args.episodes}")
    try:
        with warnings.catch_warnings():  # puts Python's own showwarning back afterwards
            warnings.showwarning = _show_warning
            return handler(args)
    except KeyboardInterrupt as err:
        if args.debug:
            raise
        return _interrupted(err, args, sys.argv[1:] if argv is None else list(argv))
    except (MetabookError, OSError) as err:
        if args.debug:
            raise
        print(f"metabook {args.command}: error: {_one_line(err)}{_flags(err, args.parser)}",
              file=sys.stderr)
        return 2


def _show_warning(message: Warning | str, category: type[Warning], filename: str, lineno: int,
                  file: object = None, line: str | None = None) -> None:
    """Print a warning as one line, as errors are, without Python's source line."""
    print(f"metabook: warning: {' '.join(str(message).split())}", file=sys.stderr)


def _interrupted(err: KeyboardInterrupt, args: argparse.Namespace, argv: list[str]) -> int:
    """Say in one line where a signal stopped the command and how to go on; the exit status."""
    if isinstance(err, TrainingInterrupted):
        again = list(argv)
        if err.checkpoint is not None and args.command == "pretrain" and "--resume" not in again:
            again.append("--resume")
        how = "resume with" if err.checkpoint is not None else "start again with"
        line, status = f"{err}; {how}: {shlex.join(['metabook', *again])}", err.exit_status
    else:  # Ctrl-C before or after training, where there is nothing to save
        line, status = "interrupted (SIGINT) while no training step ran", 128 + signal.SIGINT
    if int(os.environ.get("RANK", "0")) == 0:  # under torchrun, process 0 reports for all
        print(f"metabook {args.command}: {line}", file=sys.stderr)
    return status


def _flags(err: BaseException, parser: argparse.ArgumentParser) -> str:
    """`` (--out, --resume)``: the flags that set what the error says to change, if any."""
    words = []
    for option in getattr(err, "options", ()):
        flag = "--" + option.replace("_", "-")
        if flag in parser._option_string_actions:
            words.append(flag)
        elif option in _ELSEWHERE:
            words.append(_ELSEWHERE[option])
    return f" ({', '.join(words)})" if words else ""


def _one_line(err: BaseException) -> str:
    """The error's message on one line; a bare OSError (none of metabook's) as PATH: REASON."""
    if isinstance(err, OSError) and not isinstance(err, MetabookError) and err.strerror:
        text = f"{err.filename}: {err.strerror}" if err.filename else err.strerror
    else:
        text = str(err)
    return " ".join(text.split())
