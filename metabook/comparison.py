"""The comparison: a meta-pretraining run against every baseline, on the same episodes.

:func:`compare` measures the run's learner and the baselines of
:mod:`metabook.baselines` (no pretraining, masked- or causal-LM pretraining,
multi-task pretraining, the pretrained MiniLM) on the run's test episodes. The
baselines get the run's budget, and every adapted method the same search for
its adaptation on validation episodes (:func:`adaptation_grid`). Each method is
a :class:`Row`; :func:`markdown_table` and :func:`verdict` put the rows into
words, with paired differences (:func:`metabook.evaluation.paired_difference`).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

from torch import nn

from metabook.baselines import (finetuner, load_minilm, minilm_embeddings, pretrain_lm,
                                prototype_accuracies)
from metabook.checkpoint import load_checkpoint, load_into, save_checkpoint
from metabook.config import PretrainConfig
from metabook.data import VAL_SEED, episodes, to_ids
from metabook.errors import CheckpointError
from metabook.evaluation import (Choice, Interval, accuracies, evaluate, mean_ci,
                                 paired_difference, select_adaptation)
from metabook.learners import Learner
from metabook.models import BACKBONES
from metabook.recipes import LEARNERS, build_encoder, encoder_width
from metabook.rundir import RunDir
from metabook.runs import Run
from metabook.scale import device

__all__ = ["Row", "compare", "adaptation_grid", "markdown_table", "verdict"]


@dataclass
class Row:
    """One method of the comparison, measured on the shared test episodes.

    ``before``/``after``: per-episode accuracies with zero inner steps and
    with the adaptation chosen on validation episodes (``after`` is None for a
    method that is not adapted); ``params``: trainable parameters of its
    encoder; ``seconds``: its pretraining time (None when it was pretrained
    elsewhere); ``choice``: the inner steps and learning rate that were chosen.
    """

    key: str
    method: str
    before: list[float]
    after: list[float] | None
    params: int
    seconds: float | None
    choice: Choice | None = None

    @property
    def score(self) -> list[float]:
        """The per-episode accuracy the method is compared on (after adaptation if it adapts)."""
        return self.after if self.after is not None else self.before

    def as_dict(self, reference: "Row | None" = None) -> dict[str, Any]:
        """Summary numbers (fractions, not percentages) for JSON and CSV."""
        b, a = mean_ci(self.before), mean_ci(self.after) if self.after is not None else None
        d: dict[str, Any] = {"key": self.key, "method": self.method, "params": self.params,
                             "pretrain_seconds": None if self.seconds is None else round(self.seconds, 2),
                             "episodes": b.n,
                             "before": b.mean, "before_ci95": b.half_width,
                             "after": a.mean if a else None, "after_ci95": a.half_width if a else None,
                             "inner_steps": self.choice.steps if self.choice else None,
                             "inner_lr": self.choice.lr if self.choice else None}
        if reference is not None and reference is not self:
            diff = paired_difference(reference.score, self.score)
            d.update(meta_minus_this=diff.mean, meta_minus_this_ci95=diff.half_width)
        return d


def _count(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters() if p.requires_grad)


def _baseline_encoder(run: Run, out: Path, key: str, progress: bool) -> tuple[nn.Module, float]:
    """Pretrain baseline ``key`` (``"mlm"`` or ``"multitask"``), or reuse a saved one."""
    config, data = run.config, run.data
    encoder = build_encoder(config, len(data.vocab), data.vocab.pad_id).to(device(config.scale))
    directory = out / "baselines" / key
    fingerprint = config.fingerprint(ignore=("eval_every", "checkpoint_every", "keep_checkpoints",
                                             "test_episodes", "patience", "checkpoint_minutes"))
    if (directory / "meta.json").is_file():
        try:
            ckpt = load_checkpoint(directory)
            if ckpt.meta.get("fingerprint") == fingerprint:
                load_into(encoder, ckpt.model, directory / "model.safetensors")
                return encoder, float(ckpt.meta["seconds"])
        except CheckpointError:
            pass  # a broken cache entry is simply recomputed
    val = episodes(data, "val", config.val_episodes, config.n_way, config.k_shot,
                   config.q_query, VAL_SEED + config.split_seed)
    val_tasks = to_ids(val, data.ids["val"], data.vocab.pad_id)

    def validate(enc: nn.Module) -> float:
        scores = accuracies(finetuner(enc, config.inner_steps, config.inner_lr), val_tasks)
        return sum(scores) / len(scores)

    # Its checkpoints, until the encoder is saved into `directory` (which replaces them).
    pretraining = RunDir(directory / f"run-{fingerprint}")
    log = pretrain_lm(
        encoder, data.ids["train"], vocab_size=len(data.vocab), mask_id=data.vocab.mask_id,
        pad_id=data.vocab.pad_id, special_ids=data.vocab.special_ids, steps=config.steps,
        batch_size=config.meta_batch * config.n_way * (config.k_shot + config.q_query),
        lr=config.outer_lr, optimizer=config.optimizer, clip_grad=config.clip_grad,
        seed=config.seed, dim=encoder_width(config),
        objective=BACKBONES[config.backbone].objective,
        labels=data.label_ids("train") if key == "multitask" else None, validate=validate,
        eval_every=config.eval_every, progress=progress, out=pretraining,
        resume=pretraining.holds_run(),
        checkpoint_minutes=config.checkpoint_minutes)
    save_checkpoint(directory, encoder.state_dict(),
                    {"fingerprint": fingerprint, "seconds": log.seconds, "losses": log.losses,
                     "validation": log.validation, "best_step": log.best_step})
    return encoder, log.seconds


def compare(run: Run, out: str | Path, n_episodes: int | None = None, minilm: bool = True,
            progress: bool = False) -> list[Row]:
    """Every method on the same test episodes: the run's learner and the baselines.

    Baseline encoders are pretrained with the run's budget (as many steps, on
    as many sentences per step, at the same learning rate, with the same
    validation-based choice of the best step) and cached under
    ``out/baselines``. Each is adapted with :func:`metabook.baselines.finetuner`.
    Every adapted method, the meta-pretrained learner included, gets the same
    search for its adaptation (:func:`adaptation_grid`, chosen on the validation
    episodes with :func:`metabook.evaluation.select_adaptation`), so that no
    method is measured with a learning rate that suits another.
    """
    out = Path(out)
    config, data = run.config, run.data
    index_tasks = run.test_episodes(n_episodes)
    tasks = to_ids(index_tasks, data.ids["test"], data.vocab.pad_id)
    val = to_ids(episodes(data, "val", config.val_episodes, config.n_way, config.k_shot,
                          config.q_query, VAL_SEED + config.split_seed), data.ids["val"],
                 data.vocab.pad_id)
    grid_steps, grid_lrs = adaptation_grid(config)
    rows = []

    def measured(key: str, method: str, learner: Learner, params: int,
                 seconds: float | None) -> Row:
        choice = select_adaptation(learner, val, grid_steps, grid_lrs)
        if choice.steps is None:  # nothing to adapt by gradient steps (ProtoNet)
            ev = evaluate(learner, tasks, progress=progress)
            return Row(key, method, ev.before, None, params, seconds)
        ev = evaluate(learner, tasks, steps=choice.steps, lr=choice.lr, progress=progress)
        return Row(key, method, ev.before, ev.after, params, seconds, choice)

    def adapted(key: str, method: str, encoder: nn.Module, seconds: float) -> Row:
        learner = finetuner(encoder, config.inner_steps, config.inner_lr)
        return measured(key, method, learner, _count(encoder), seconds)

    fresh = build_encoder(config, len(data.vocab), data.vocab.pad_id).to(device(config.scale))
    rows.append(adapted("none", "No pretraining + fine-tuning", fresh, 0.0))
    lm_name = "Causal-LM" if BACKBONES[config.backbone].objective == "causal" else "Masked-LM"
    enc, seconds = _baseline_encoder(run, out, "mlm", progress)
    rows.append(adapted("mlm", f"{lm_name} pretraining + fine-tuning", enc, seconds))
    enc, seconds = _baseline_encoder(run, out, "multitask", progress)
    rows.append(adapted("multitask", f"Multi-task pretraining ({lm_name} + classes) + fine-tuning",
                        enc, seconds))
    rows.append(measured("meta", f"Meta-pretraining ({LEARNERS.display(config.learner)}) + "
                         f"adaptation", run.learner, _count(run.learner),
                         RunDir(run.out).training_seconds()))
    if minilm:
        tokenizer, model = load_minilm()
        emb = minilm_embeddings(data.texts["test"], tokenizer, model, progress=progress)
        rows.append(Row("minilm", "MiniLM (all-MiniLM-L6-v2, frozen) + prototypes",
                        prototype_accuracies(emb, index_tasks), None, _count(model), None))
    return rows


def adaptation_grid(config: PretrainConfig) -> tuple[list[int], list[float]]:
    """The inner steps and learning rates every method's adaptation is chosen from.

    Zero steps (the prototype classifier), the config's steps and twice as
    many; the config's learning rate and a factor of three either side.

    >>> adaptation_grid(PretrainConfig(inner_steps=2, inner_lr=0.1))
    ([0, 2, 4], [0.03333333333333333, 0.1, 0.30000000000000004])
    """
    return (sorted({0, config.inner_steps, 2 * config.inner_steps}),
            [config.inner_lr / 3, config.inner_lr, config.inner_lr * 3])


def markdown_table(rows: Sequence[Row]) -> str:
    """The comparison as a Markdown table (accuracy in %, ± the 95% interval's half-width)."""
    meta = next((r for r in rows if r.key == "meta"), None)
    head = ("| method | parameters | before adaptation | after adaptation | adaptation chosen "
            "on validation | meta-pretraining minus method (paired) |\n"
            "|---|---:|---:|---:|---|---:|\n")
    lines = []
    for r in rows:
        after = str(mean_ci(r.after)) if r.after is not None else "—"
        diff = "—" if meta is None or r is meta else _signed(paired_difference(meta.score, r.score))
        lines.append(f"| {r.method} | {r.params:,} | {mean_ci(r.before)} | {after} | "
                     f"{_describe(r.choice)} | {diff} |")
    return head + "\n".join(lines) + "\n"


def _describe(choice: Choice | None) -> str:
    if choice is None:
        return "—"
    if choice.steps == 0:
        return "0 steps (prototypes)"
    lr = "learned step sizes" if choice.lr is None else f"lr {choice.lr:.3g}"
    return f"{choice.steps} steps, {lr}"


def _signed(iv: Interval) -> str:
    return f"{100 * iv.mean:+.1f} ± {100 * iv.half_width:.1f}"


def verdict(rows: Sequence[Row]) -> str:
    """A plain sentence for each baseline: is meta-pretraining better, worse, or indistinguishable?"""
    meta = next(r for r in rows if r.key == "meta")
    parts = []
    for r in rows:
        if r is meta:
            continue
        diff = paired_difference(meta.score, r.score)
        if diff.low > 0:
            word = "better than"
        elif diff.high < 0:
            word = "worse than"
        else:
            word = "not distinguishable from"
        parts.append(f"{word} {r.method} ({100 * diff.mean:+.1f} points, 95% interval "
                     f"{100 * diff.low:+.1f} to {100 * diff.high:+.1f})")
    return (f"On {mean_ci(meta.score).n} shared test episodes, meta-pretraining is "
            + "; ".join(parts) + ".")
