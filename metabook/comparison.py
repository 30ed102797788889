"""The comparison: a meta-pretraining run against every baseline, on the same episodes.

:func:`compare` measures the run's learner and the baselines of
:mod:`metabook.baselines` (no pretraining, masked- or causal-LM pretraining,
multi-task pretraining, the pretrained MiniLM) on the run's test episodes. The
baselines get the run's budget, and every adapted method the same search for
its adaptation on validation episodes (:func:`adaptation_grid`). Each method is
a :class:`Row`; :func:`markdown_table` and :func:`verdict` put the rows into
words, with paired differences (:func:`metabook.evaluation.paired_difference`).

:func:`compare_pretrained` is the same comparison for runs that meta-train a
pretrained encoder (``backbone: minilm`` or ``hf``), against the baselines a
practitioner would try first with such an encoder: the frozen encoder with a
prototype head, the encoder fine-tuned on the training classes (multi-task),
the encoder fine-tuned on each test task's support set, character n-gram
TF-IDF with prototypes, and meta-pretraining from scratch. Every encoder is
adapted the same way: a prototype-initialised head plus the steps and learning
rate chosen on validation episodes from one grid.
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Callable, Sequence

import torch
from torch import Tensor, nn

from metabook.baselines import (PretrainLog, finetuner, load_minilm, minilm_embeddings,
                                pretrain_lm, pretrain_multitask, prototype_accuracies)
from metabook.checkpoint import load_checkpoint, load_into, save_checkpoint
from metabook.config import PretrainConfig
from metabook.data import VAL_SEED, episodes, to_ids
from metabook.errors import CheckpointError, ConfigError
from metabook.evaluation import (Choice, Interval, accuracies, evaluate, mean_ci,
                                 paired_difference, select_adaptation)
from metabook.features import ngram_features
from metabook.learners import Learner, ProtoMAML
from metabook.models import BACKBONES
from metabook.recipes import (LEARNERS, adapted_parameters, build_encoder, encoder_of,
                              encoder_width)
from metabook.rundir import RunDir
from metabook.runs import Run
from metabook.scale import device
from metabook.source import package_fingerprint
from metabook.tasks import Task, trim_padding

__all__ = ["Row", "BASELINES", "check_baselines", "compare", "compare_pretrained", "adaptation_grid",
           "markdown_table", "verdict"]


@dataclass
class Row:
    """One method of the comparison, measured on the shared test episodes.

    ``before``/``after``: per-episode accuracies with zero inner steps and
    with the adaptation chosen on validation episodes (``after`` is None for a
    method that is not adapted); ``params``: the parameters its training
    changed (all of a model trained from scratch, the trained layers of a
    pretrained encoder, none of a frozen one); ``seconds``: its pretraining time (None when it was pretrained
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
    cached = _cached(encoder, out / "baselines" / key, _baseline_fingerprint(config))
    if cached is not None:
        return encoder, cached
    val = episodes(data, "val", config.val_episodes, config.n_way, config.k_shot,
                   config.q_query, VAL_SEED + config.split_seed)
    val_tasks = to_ids(val, data.ids["val"], data.vocab.pad_id)

    def validate(enc: nn.Module) -> float:
        scores = accuracies(finetuner(enc, config.inner_steps, config.inner_lr), val_tasks)
        return sum(scores) / len(scores)

    def train(folder: RunDir, resume: bool) -> PretrainLog:
        return pretrain_lm(
            encoder, data.ids["train"], vocab_size=len(data.vocab), mask_id=data.vocab.mask_id,
            pad_id=data.vocab.pad_id, special_ids=data.vocab.special_ids, steps=config.steps,
            batch_size=config.meta_batch * config.n_way * (config.k_shot + config.q_query),
            lr=config.outer_lr, optimizer=config.optimizer, clip_grad=config.clip_grad,
            seed=config.seed, dim=encoder_width(config),
            objective=BACKBONES[config.backbone].objective,
            labels=data.label_ids("train") if key == "multitask" else None, validate=validate,
            eval_every=config.eval_every, progress=progress, out=folder, resume=resume,
            checkpoint_minutes=config.checkpoint_minutes)
    return encoder, _pretrained(encoder, out / "baselines" / key, _baseline_fingerprint(config),
                                train)


def _baseline_fingerprint(config: PretrainConfig) -> str:
    """What a baseline's pretraining depends on: the config but for what only the meta run
    uses or what does not change the result, and metabook's code."""
    return config.fingerprint(ignore=("learner", "eval_every", "checkpoint_every",
                                      "keep_checkpoints", "test_episodes", "patience",
                                      "checkpoint_minutes")) + package_fingerprint()


def _cached(encoder: nn.Module, directory: Path, fingerprint: str) -> float | None:
    """Load the encoder saved in ``directory`` when it was made with ``fingerprint``; its
    pretraining seconds, or None when there is none to reuse."""
    if not (directory / "meta.json").is_file():
        return None
    try:
        ckpt = load_checkpoint(directory)
        if ckpt.meta.get("fingerprint") != fingerprint:
            return None
        load_into(encoder, ckpt.model, directory / "model.safetensors")
        return float(ckpt.meta["seconds"])
    except CheckpointError:
        return None  # a broken cache entry is simply recomputed


def _pretrained(encoder: nn.Module, directory: Path, fingerprint: str,
                train: Callable[[RunDir, bool], PretrainLog]) -> float:
    """Run ``train(folder, resume)`` with its checkpoints in ``directory/run-FINGERPRINT``
    (continued if stopped), then save the encoder into ``directory``; its seconds."""
    # Its checkpoints, until the encoder is saved into `directory` (which replaces them).
    folder = RunDir(directory / f"run-{fingerprint}")
    log = train(folder, folder.holds_run())
    save_checkpoint(directory, encoder.state_dict(),
                    {"fingerprint": fingerprint, "seconds": log.seconds, "losses": log.losses,
                     "validation": log.validation, "best_step": log.best_step})
    return log.seconds


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
        if list(r.score) == list(meta.score):  # an interval of +0.0 to +0.0 says less
            parts.append(f"the same as {r.method} on every episode")
        else:
            diff = paired_difference(meta.score, r.score)
            parts.append(f"{diff.relation()} {r.method} ({diff.points()})")
    return (f"On {mean_ci(meta.score).n} shared test episodes, meta-pretraining is "
            + "; ".join(parts) + ".")


# --- a pretrained encoder ---------------------------------------------------------------------

def _on(features: Tensor, tasks: Sequence[Task]) -> list[Task]:
    """Index episodes with their rows looked up in ``features`` (vectors or token ids)."""
    return [Task(features[t.support_x], t.support_y, features[t.query_x], t.query_y, t.classes,
                 t.source, t.info) for t in tasks]


def _embed(encoder: nn.Module, ids: Tensor, pad_id: int, batch_size: int = 256) -> Tensor:
    """The encoder's vectors for every row of ``ids``, in batches, without gradients."""
    was_training = encoder.training
    encoder.eval()
    where = next(encoder.parameters()).device
    try:
        with torch.no_grad():
            return torch.cat([encoder(trim_padding(ids[i: i + batch_size], pad_id).to(where)).cpu()
                              for i in range(0, len(ids), batch_size)])
    finally:
        encoder.train(was_training)


def _trained(encoder: nn.Module) -> int:
    return sum(p.numel() for n, p in encoder.named_parameters()
               if p.requires_grad and n != "log_scale")


BASELINES = ("frozen", "multitask", "finetune", "ngram")


def check_baselines(baselines: Sequence[str]) -> None:
    """Raise :class:`~metabook.errors.ConfigError` if ``baselines`` names a row :data:`BASELINES` lacks.

    >>> check_baselines(["ngram", "frozen"])
    >>> check_baselines(["zero-shot"])
    Traceback (most recent call last):
    ...
    metabook.errors.ConfigError: unknown baseline(s) ['zero-shot']; the baselines are ['frozen', 'multitask', 'finetune', 'ngram']
    """
    unknown = sorted(set(baselines) - set(BASELINES))
    if unknown:
        raise ConfigError(f"unknown baseline(s) {unknown}; the baselines are {list(BASELINES)}")


def compare_pretrained(runs: Sequence[Run], out: str | Path, scratch: Run | None = None,
                       n_episodes: int | None = None, progress: bool = False,
                       baselines: Sequence[str] = BASELINES) -> list[Row]:
    """Meta-pretrained encoders against the baselines of a pretrained encoder, on the same episodes.

    ``runs`` meta-train the same pretrained encoder on the same data (one per
    learner; the first is the reference of the paired differences); ``scratch``
    is a meta-pretraining run of a model trained from scratch on the same
    classes, whose test episodes are the same rows. The rows:

    - the frozen encoder with a prototype head;
    - the encoder's trained layers fine-tuned on the training classes with one
      classifier over all of them (multi-task), with the runs' budget of steps,
      sentences per step and learning rate, the best step chosen on validation;
      cached under ``out/baselines/multitask``;
    - the encoder's trained layers and head fine-tuned on each test task's
      support set (zero steps would be the frozen row);
    - character n-gram TF-IDF vectors with a prototype head;
    - each run's meta-trained encoder; the run from scratch.

    ``baselines`` picks some of the first four rows (by key: ``"frozen"``,
    ``"multitask"``, ``"finetune"``, ``"ngram"``). Every encoder whose
    adaptation leaves it unchanged is embedded once and adapted as a head on its
    vectors, which is exactly the same computation.
    """
    check_baselines(baselines)
    out = Path(out)
    config, data = runs[0].config, runs[0].data
    pad = data.vocab.pad_id
    test = runs[0].test_episodes(n_episodes)
    val = episodes(data, "val", config.val_episodes, config.n_way, config.k_shot,
                   config.q_query, VAL_SEED + config.split_seed)
    grid = adaptation_grid(config)
    head = ProtoMAML(nn.Identity(), config.inner_lr, config.inner_steps, first_order=True)

    def on_vectors(key: str, method: str, vectors: dict[str, Tensor], params: int,
                   seconds: float | None) -> Row:
        choice = select_adaptation(head, _on(vectors["val"], val), *grid)
        ev = evaluate(head, _on(vectors["test"], test), steps=choice.steps, lr=choice.lr)
        return Row(key, method, ev.before, ev.after, params, seconds, choice)

    def embedded(key: str, method: str, encoder: nn.Module, seconds: float | None) -> Row:
        vectors = {s: _embed(encoder, data.ids[s], pad) for s in ("val", "test")}
        return on_vectors(key, method, vectors, _trained(encoder), seconds)

    def adapted(key: str, method: str, encoder: nn.Module, adapts: Any, seconds: float | None,
                before: list[float] | None = None) -> Row:
        learner = ProtoMAML(encoder, config.inner_lr, config.inner_steps, first_order=True,
                            adapt_encoder=adapts)
        ids = {s: data.ids[s] for s in ("val", "test")}
        choice = select_adaptation(learner, to_ids(val, ids["val"], pad), *grid)
        tasks = to_ids(test, ids["test"], pad)
        if before is None:
            before = accuracies(learner, tasks, 0)
        # Zero steps chosen: the accuracy after adaptation is the one before it.
        after = (list(before) if choice.steps == 0 else
                 accuracies(learner, tasks, choice.steps, choice.lr, progress=progress))
        return Row(key, method, before, after, _trained(encoder), seconds, choice)

    name = BACKBONES.display(config.backbone) if config.backbone != "hf" else config.pretrained
    short = name.split(" (")[0]
    top = f"top {config.train_layers} layer{'s' * (config.train_layers != 1)}"
    rows = []
    frozen = untrained = None
    if "frozen" in baselines or "finetune" in baselines:
        # The untrained encoder of the runs' config is the frozen model, and it shares their
        # cache of the frozen layers' states: those are computed once for every row.
        untrained = build_encoder(config, len(data.vocab), pad)
        frozen = replace(embedded("frozen", f"{short}, frozen + prototype head", untrained, None),
                         params=0)
    if "frozen" in baselines:
        rows.append(frozen)
    if "multitask" in baselines:
        enc, seconds = _multitask_encoder(runs[0], out, progress)
        rows.append(embedded("multitask", f"{short} fine-tuned on the training classes "
                                          f"(multi-task, {top}) + prototype head", enc, seconds))
    if "finetune" in baselines:
        support = adapted_parameters(config.replace(adapt_layers=config.train_layers))
        # Adaptation works on copies of the parameters: the frozen row's encoder serves again.
        rows.append(adapted("finetune", f"{short} fine-tuned on each support set ({top} + head)",
                            untrained, support, 0.0, frozen.before))
    if "ngram" in baselines:
        vectors = {s: ngram_features(data.texts[s], idf=True) for s in ("val", "test")}
        rows.append(on_vectors("ngram", "character n-gram TF-IDF + prototype head", vectors, 0,
                               0.0))
    for i, run in enumerate(runs):
        learner = LEARNERS.display(run.config.learner)
        encoder = encoder_of(run.learner)
        method = f"{short} meta-pretrained ({learner}, {top}) + adaptation"
        key = "meta" if i == 0 else f"meta-{run.config.learner}"
        seconds = RunDir(run.out).training_seconds()
        if run.config.adapt_layers:
            rows.append(adapted(key, method, encoder, adapted_parameters(run.config), seconds))
        else:
            rows.append(embedded(key, method, encoder, seconds))
    if scratch is not None:
        tasks = to_ids(test, scratch.data.ids["test"], scratch.data.vocab.pad_id)
        sval = to_ids(val, scratch.data.ids["val"], scratch.data.vocab.pad_id)
        choice = select_adaptation(scratch.learner, sval, *grid)
        ev = evaluate(scratch.learner, tasks, steps=choice.steps, lr=choice.lr)
        rows.append(Row("scratch", f"meta-pretrained from scratch "
                                   f"({LEARNERS.display(scratch.config.learner)}, "
                                   f"{BACKBONES.display(scratch.config.backbone)})",
                        ev.before, ev.after, _count(scratch.learner), RunDir(scratch.out).training_seconds(),
                        choice))
    return rows


def _multitask_encoder(run: Run, out: Path, progress: bool) -> tuple[nn.Module, float]:
    """The pretrained encoder fine-tuned on all training classes at once, or a saved one."""
    config, data = run.config, run.data
    pad = data.vocab.pad_id
    encoder = build_encoder(config, len(data.vocab), pad).to(device(config.scale))
    directory, fingerprint = out / "baselines" / "multitask", _baseline_fingerprint(config)
    cached = _cached(encoder, directory, fingerprint)
    if cached is not None:
        return encoder, cached
    val = episodes(data, "val", config.val_episodes, config.n_way, config.k_shot,
                   config.q_query, VAL_SEED + config.split_seed)
    head = ProtoMAML(nn.Identity(), steps=0)

    def validate(enc: nn.Module) -> float:
        scores = accuracies(head, _on(_embed(enc, data.ids["val"], pad), val))
        return sum(scores) / len(scores)

    def train(folder: RunDir, resume: bool) -> PretrainLog:
        return pretrain_multitask(
            encoder, data.ids["train"], data.label_ids("train"), steps=config.steps,
            batch_size=config.meta_batch * config.n_way * (config.k_shot + config.q_query),
            lr=config.outer_lr, optimizer=config.optimizer, clip_grad=config.clip_grad,
            seed=config.seed, validate=validate, eval_every=config.eval_every, pad_id=pad,
            progress=progress, out=folder, resume=resume,
            checkpoint_minutes=config.checkpoint_minutes)
    return encoder, _pretrained(encoder, directory, fingerprint, train)
