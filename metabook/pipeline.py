"""Meta-pretraining end to end: data, tasks, training, evaluation, and the comparison.

One :class:`~metabook.config.PretrainConfig` drives every step:

1. :func:`prepare_data` loads the corpus, removes repeated sentences, splits
   its *classes* into training, validation and test classes (so test episodes
   ask about classes no pretraining saw labels or text of), builds a word
   vocabulary and turns every sentence into a row of token ids;
2. :func:`build_learner` and :func:`build_sampler` make the learner and the
   stream of training tasks (self-supervised SMLMT tasks from the training
   text, N-way episodes over the training classes, or both);
3. :func:`pretrain` runs :class:`~metabook.training.MetaTrainer` into a
   directory, and resumes it;
4. :func:`load_run` and :func:`evaluate_run` measure a run on held-out episodes;
5. :func:`compare` measures every baseline of :mod:`metabook.baselines` on the
   same episodes, and :func:`reproduce_chapter5` writes the table of Chapter 5.

The command line (``metabook pretrain``, ``evaluate``, ``reproduce chapter5``)
calls these functions and nothing else.
"""
from __future__ import annotations

import csv
import json
import random
import shutil
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import torch
import torch.distributed as dist
from torch import Tensor, nn

from metabook import corpora, distributed
from metabook.baselines import (finetuner, load_minilm, minilm_embeddings,
                                pretrain_lm, prototype_accuracies)
from metabook.checkpoint import (load_checkpoint, load_into, save_checkpoint,
                                 write_json_atomic, writing)
from metabook.config import PretrainConfig, load_config
from metabook.errors import CheckpointError, ConfigError
from metabook.evaluation import (Choice, Evaluation, Interval, accuracies, curve, draw_episodes,
                                 evaluate, mean_ci, select_adaptation)
from metabook.learners import (ANIL, MAML, FirstOrderMAML, Learner, MetaSGD,
                               ProtoMAML, ProtoNet, Reptile)
from metabook.models import BACKBONES, TextClassifier, TextEncoder
from metabook.samplers import TaskSampler, UniformSampler
from metabook.tasks import EpisodeSource, SMLMTSource, Task, pad_batch, trim
from metabook.text import SPECIALS, Vocab, words
from metabook.rundir import RunDir
from metabook.training import MetaTrainer, TrainResult

__all__ = ["Data", "prepare_data", "build_encoder", "build_learner", "encoder_of", "build_sampler",
           "episodes", "trim", "to_ids", "device_for", "pretrain", "Run", "load_run", "evaluate_run",
           "curve_over_shots", "curve_over_steps", "Row", "paired_difference", "compare",
           "adaptation_grid", "verdict", "reproduce_chapter5", "markdown_table"]

# Episode streams get their own seeds, apart from the training seed, so that every
# run and every baseline is measured on the very same validation and test episodes.
VAL_SEED, TEST_SEED = 1_000, 2_000


# --- data -----------------------------------------------------------------------------------

@dataclass
class Data:
    """A corpus split by class, with a vocabulary and token ids for every split.

    ``classes[split]``, ``texts[split]``, ``labels[split]`` (class names) and
    ``ids[split]`` (``(n, max_len)`` token ids) for ``split`` in
    ``"train"``, ``"val"``, ``"test"``.
    """

    vocab: Vocab
    classes: dict[str, list[str]]
    texts: dict[str, list[str]]
    labels: dict[str, list[str]]
    ids: dict[str, Tensor]
    dropped: list[str] = field(default_factory=list)

    def label_ids(self, split: str) -> Tensor:
        """The labels of ``split`` as ids into ``classes[split]``."""
        index = {c: i for i, c in enumerate(self.classes[split])}
        return torch.tensor([index[c] for c in self.labels[split]])


def prepare_data(config: PretrainConfig) -> Data:
    """Load ``config.corpus`` and split, tokenise and encode it (deterministic in the config).

    Repeated sentences are kept once (chatterbot repeats each conversation's
    opening line; a repeat in both the support and the query set would be
    memorised, not learned). Classes with fewer than ``k_shot + q_query``
    distinct sentences are dropped. The vocabulary is built from every
    sentence without its label, as a tokenizer trained on general text would
    be; only the training classes' sentences are used for pretraining.
    """
    ds = corpora.load(config.corpus, **config.corpus_options)
    name = _corpus_name(config)
    if config.label_column not in ds.column_names:
        raise ConfigError(f"{name} has no column {config.label_column!r} for label_column; its "
                          f"columns are {ds.column_names}: set label_column to the one that "
                          f"names the classes")
    first_label: dict[str, str] = {}
    for text, label in zip(ds["text"], ds[config.label_column]):
        first_label.setdefault(text.strip(), str(label))
    by_class: dict[str, list[str]] = defaultdict(list)
    for text, label in first_label.items():
        by_class[label].append(text)
    need = config.k_shot + config.q_query
    kept = sorted(c for c, texts in by_class.items() if len(texts) >= need)
    dropped = sorted(set(by_class) - set(kept))
    held_out = config.test_classes + config.val_classes
    if len(kept) < held_out + config.n_way:
        raise ConfigError(
            f"{name} has {len(kept)} class(es) with at least K+Q={need} distinct sentences "
            f"(of {len(by_class)} in all), but test_classes + val_classes + n_way = "
            f"{held_out + config.n_way} are needed; lower those or k_shot/q_query, or use a "
            f"corpus with more classes")
    order = list(kept)
    random.Random(config.split_seed).shuffle(order)
    classes = {"test": sorted(order[: config.test_classes]),
               "val": sorted(order[config.test_classes: held_out]),
               "train": sorted(order[held_out:])}
    texts = {s: [t for c in cs for t in by_class[c]] for s, cs in classes.items()}
    labels = {s: [c for c in cs for _ in by_class[c]] for s, cs in classes.items()}
    vocab = Vocab.build([words(t) for t in first_label], min_count=config.min_count)
    ids = {s: encode(texts[s], vocab, config.max_len) for s in classes}
    return Data(vocab, classes, texts, labels, ids, dropped)


def _corpus_name(config: PretrainConfig) -> str:
    """``corpus 'NAME'``, with the file it reads when the config names one (for messages)."""
    path = config.corpus_options.get("path") or config.corpus_options.get("data_files")
    return f"corpus {config.corpus!r}" + (f" ({path})" if path else "")


def encode(texts: Sequence[str], vocab: Vocab, max_len: int) -> Tensor:
    """Token ids ``(len(texts), max_len)`` of ``texts``: words, cut to ``max_len``, padded.

    >>> vocab = Vocab.build([["hello", "world"]])
    >>> encode(["Hello, world!"], vocab, 4).tolist()
    [[4, 1, 5, 1]]
    """
    return pad_batch([vocab.encode(words(t)) for t in texts], vocab.pad_id, max_len)


# --- learner and tasks ----------------------------------------------------------------------

def build_encoder(config: PretrainConfig, vocab_size: int, pad_id: int = 0) -> nn.Module:
    """The backbone ``config.backbone``, randomly initialised from ``config.seed``."""
    torch.manual_seed(config.seed)
    size = dict(dim=config.dim, layers=config.layers, heads=config.heads,
                max_len=config.max_len, pad_id=pad_id)
    if config.backbone == "transformer":
        return TextEncoder(vocab_size, **size)
    return BACKBONES[config.backbone](vocab_size, **size)


def build_learner(config: PretrainConfig, vocab_size: int, pad_id: int = 0) -> Learner:
    """The learner ``config.learner`` around a fresh :func:`build_encoder`.

    Learners with a classifier head get a linear head of ``n_way`` outputs;
    Meta-SGD learns one step size per parameter tensor (SMLMT's per-layer rates).
    """
    encoder = build_encoder(config, vocab_size, pad_id)
    kind, lr, steps = config.learner, config.inner_lr, config.inner_steps
    if kind == "protonet":
        return ProtoNet(encoder)
    if kind == "protomaml":
        return ProtoMAML(encoder, lr=lr, steps=steps, first_order=config.first_order)
    if kind == "anil":
        return ANIL(encoder, nn.Linear(config.dim, config.n_way), lr=lr, steps=steps,
                    first_order=config.first_order)
    model = TextClassifier(encoder, config.dim, config.n_way)
    if kind == "maml":
        return MAML(model, lr=lr, steps=steps)
    if kind == "fomaml":
        return FirstOrderMAML(model, lr=lr, steps=steps)
    if kind == "metasgd":
        return MetaSGD(model, lr=lr, steps=steps, granularity="tensor",
                       first_order=config.first_order)
    return Reptile(model, lr=lr, steps=steps)


def encoder_of(learner: Learner) -> nn.Module:
    """The part of ``learner`` that maps token ids to a sentence vector."""
    if isinstance(learner, ProtoNet):
        return learner.encoder
    if isinstance(learner, ANIL):
        return learner.body
    if isinstance(learner, ProtoMAML):
        return learner.model
    return learner.model.encoder


def build_sampler(config: PretrainConfig, data: Data) -> TaskSampler:
    """The training-task stream of ``config.tasks``; ``"hybrid"`` draws each kind half the time."""
    sources = []
    if config.tasks in ("smlmt", "hybrid"):
        sources.append(SMLMTSource(data.texts["train"], data.vocab, config.n_way, config.k_shot,
                                   config.q_query, max_len=config.max_len, name="smlmt"))
    if config.tasks in ("supervised", "hybrid"):
        sources.append(EpisodeSource(data.ids["train"], data.labels["train"], config.n_way,
                                     config.k_shot, config.q_query, name="train-classes"))
    pad = data.vocab.pad_id
    return UniformSampler([_Trimmed(s, pad) for s in sources], seed=config.seed)


class _Trimmed:
    """A task source whose tasks lose the padding columns no sentence uses (see :func:`trim`)."""

    def __init__(self, source: EpisodeSource | SMLMTSource, pad_id: int):
        self.source, self.pad_id, self.name = source, pad_id, source.name

    def __len__(self) -> int:
        return len(self.source)

    def __getattr__(self, name: str) -> Any:  # words, classes, ...: those of the source
        return getattr(self.source, name)

    def sample(self, generator: torch.Generator) -> Task:
        return trim(self.source.sample(generator), self.pad_id)


def episodes(data: Data, split: str, n: int, n_way: int, k_shot: int, q_query: int,
             seed: int) -> list[Task]:
    """``n`` episodes of ``split`` whose inputs are *row indices* into that split.

    Every method turns the same index episodes into its own inputs
    (:func:`to_ids` for metabook's encoders, sentence vectors for MiniLM), so
    all are measured on exactly the same examples.
    """
    rows = torch.arange(len(data.labels[split]))
    source = EpisodeSource(rows, data.labels[split], n_way, k_shot, q_query, name=split)
    return draw_episodes(source, n, seed)


def to_ids(tasks: Sequence[Task], table: Tensor, pad_id: int = 0) -> list[Task]:
    """Index episodes with their rows looked up in ``table`` (e.g. ``data.ids[split]``).

    Each task is :func:`trim`-med of the padding its sentences do not use.
    """
    return [trim(Task(table[t.support_x], t.support_y, table[t.query_x], t.query_y, t.classes,
                      t.source, t.info), pad_id) for t in tasks]


def device_for(config: PretrainConfig) -> torch.device:
    """Where a run of ``config`` computes: CUDA for ``scale="large"`` when a GPU is present."""
    if config.scale == "large" and torch.cuda.is_available():
        return torch.device("cuda")
    return torch.device("cpu")


# --- training -------------------------------------------------------------------------------

def pretrain(config: PretrainConfig | None = None, out: str | Path = "runs/pretrain",
             steps: int | None = None, resume: bool = False, progress: bool = True,
             on_step: Callable[[int, dict[str, Any]], None] | None = None) -> TrainResult:
    """Meta-pretrain into ``out`` (``config.json``, ``vocab.json``, ``log.jsonl``, ``checkpoints/``).

    ``steps`` overrides ``config.steps`` (a total). With ``resume=True`` the
    run in ``out`` continues with the config it was started with; a ``config``
    given as well must agree with it except for ``steps``.

    Launched by ``torchrun`` (``RANK`` and ``WORLD_SIZE`` in the environment),
    every process joins one job (gloo on the CPU, NCCL on GPUs): the weights
    start as process 0's, each process computes its share of every meta-batch,
    and only process 0 writes into ``out``, which every process must see (on
    several machines: a shared file system) to resume.
    """
    out = Path(out)
    if resume:
        if not RunDir(out).holds_run():
            raise CheckpointError(f"{out} holds no run to resume (no checkpoints/latest.json); "
                                  f"drop --resume to start one")
        saved = load_config(out / "config.json")
        if config is not None:
            differ = saved.differences(config, ignore=("steps",))
            if differ:
                raise ConfigError(f"the config differs from the one {out} was started with in "
                                  f"{differ}; resume without --config, or start a new run")
        config = saved
    elif RunDir(out).holds_run():
        raise CheckpointError(f"{out} already holds a run; resume it (--resume) or choose "
                              f"another output directory")
    config = config or PretrainConfig.for_scale()
    if steps is not None:
        config = config.replace(steps=steps)
    device = device_for(config)
    joined = not dist.is_initialized() and distributed.init_from_env(
        "nccl" if device.type == "cuda" else "gloo")
    try:
        return _pretrain(config, out, resume, progress, on_step, device)
    finally:
        if joined:
            dist.destroy_process_group()


def _pretrain(config: PretrainConfig, out: Path, resume: bool, progress: bool,
              on_step: Callable[[int, dict[str, Any]], None] | None,
              device: torch.device) -> TrainResult:
    """:func:`pretrain` once the config is settled and the process group (if any) joined."""
    data = prepare_data(config)
    vocab_path = out / "vocab.json"
    if resume:
        _check_vocab(vocab_path, data.vocab)
    learner = build_learner(config, len(data.vocab), data.vocab.pad_id)
    val = to_ids(episodes(data, "val", config.val_episodes, config.n_way, config.k_shot,
                          config.q_query, VAL_SEED + config.split_seed), data.ids["val"],
                 data.vocab.pad_id)
    trainer = MetaTrainer(learner, build_sampler(config, data), out, outer_lr=config.outer_lr,
                          meta_batch=config.meta_batch, clip_grad=config.clip_grad,
                          eval_every=config.eval_every, checkpoint_every=config.checkpoint_every,
                          patience=config.patience, keep_checkpoints=config.keep_checkpoints,
                          val_tasks=val, config=config.to_dict(), progress=progress,
                          device=device, on_step=on_step)
    # Every process built the same weights from the seed; the broadcast (on the device, as
    # NCCL needs) makes sure, and no process passes it before all have checked `out`
    # above: process 0 writes into it only after this.
    distributed.broadcast_parameters(trainer.learner)
    if trainer.writer:
        with writing(out, "the run"):
            out.mkdir(parents=True, exist_ok=True)
        if not resume:
            write_json_atomic(vocab_path, {"itos": data.vocab.itos})
        write_json_atomic(out / "config.json", config.to_dict())
    result = trainer.train(config.steps, resume=resume)
    if trainer.writer:
        write_json_atomic(out / "result.json", {"step": result.step, "stopped": result.stopped,
                                                "best_step": result.best_step,
                                                "best_score": result.best_score,
                                                "fingerprint": config.fingerprint()})
    # Nobody returns before the run's files are complete.
    distributed.barrier()
    return result


def _check_vocab(path: Path, vocab: Vocab) -> None:
    try:
        saved = json.loads(path.read_text(encoding="utf-8"))["itos"]
    except (OSError, json.JSONDecodeError, KeyError, TypeError) as err:
        raise CheckpointError(f"{path} is missing or corrupt ({err!r}); the run cannot be "
                              f"loaded without the vocabulary it was trained with") from None
    if saved != vocab.itos:
        raise CheckpointError(f"the corpus gives another vocabulary than the one in {path}: the "
                              f"data changed since the run was trained; retrain it")


@dataclass
class Run:
    """A trained run loaded back: its config, data, learner (at ``checkpoint``) and step."""

    out: Path
    config: PretrainConfig
    data: Data
    learner: Learner
    checkpoint: Path
    step: int

    def test_episodes(self, n: int | None = None, n_way: int | None = None,
                      k_shot: int | None = None, q_query: int | None = None) -> list[Task]:
        """Index episodes of the test classes (the config's shape unless given)."""
        c = self.config
        return episodes(self.data, "test", n or c.test_episodes, n_way or c.n_way,
                        k_shot or c.k_shot, q_query or c.q_query, TEST_SEED + c.split_seed)


def load_run(out: str | Path, which: str = "best") -> Run:
    """The run in ``out`` at its ``"best"`` (validation) or ``"latest"`` checkpoint."""
    out = Path(out)
    if which not in ("best", "latest"):
        raise ConfigError(f"which must be 'best' or 'latest', got {which!r}")
    if not (out / "config.json").is_file():
        raise CheckpointError(f"{out} holds no metabook run (no config.json); train one with "
                              f"`metabook pretrain --out {out}`")
    config = load_config(out / "config.json")
    data = prepare_data(config)
    _check_vocab(out / "vocab.json", data.vocab)
    path = RunDir(out).best() if which == "best" else RunDir(out).latest()
    ckpt = load_checkpoint(path)
    learner = build_learner(config, len(data.vocab), data.vocab.pad_id)
    load_into(learner, ckpt.model, path / "model.safetensors")
    learner.to(device_for(config))
    return Run(out, config, data, learner, path, int(ckpt.meta["step"]))


def evaluate_run(run: Run, n_episodes: int | None = None, steps: int | None = None,
                 progress: bool = False) -> Evaluation:
    """Accuracy of the run's learner on its test episodes, before and after adaptation."""
    tasks = to_ids(run.test_episodes(n_episodes), run.data.ids["test"], run.data.vocab.pad_id)
    return evaluate(run.learner, tasks, steps=steps, progress=progress)


def curve_over_shots(run: Run, shots: Sequence[int], n_episodes: int | None = None
                     ) -> list[tuple[int, Interval]]:
    """Accuracy after adaptation against the number of shots ``K`` (fresh test episodes per K)."""
    def measure(k: int) -> list[float]:
        tasks = to_ids(run.test_episodes(n_episodes, k_shot=k), run.data.ids["test"],
                       run.data.vocab.pad_id)
        return evaluate(run.learner, tasks).after
    return curve(measure, shots)


def curve_over_steps(run: Run, steps: Sequence[int], n_episodes: int | None = None
                     ) -> list[tuple[int, Interval]]:
    """Accuracy against the number of inner steps, on the same test episodes for every point."""
    tasks = to_ids(run.test_episodes(n_episodes), run.data.ids["test"], run.data.vocab.pad_id)
    return curve(lambda s: accuracies(run.learner, tasks, steps=s), steps)


# --- the comparison -------------------------------------------------------------------------

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
            diff = paired_difference(reference, self)
            d.update(meta_minus_this=diff.mean, meta_minus_this_ci95=diff.half_width)
        return d


def paired_difference(a: Row, b: Row) -> Interval:
    """Mean per-episode difference ``a - b`` of the compared scores, with its 95% interval.

    The methods ran on the same episodes, so the paired difference removes the
    variation between episodes and is far tighter than two separate intervals.
    """
    return mean_ci([x - y for x, y in zip(a.score, b.score)])


def _count(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters() if p.requires_grad)


def _baseline_encoder(run: Run, out: Path, key: str, progress: bool) -> tuple[nn.Module, float]:
    """Pretrain baseline ``key`` (``"mlm"`` or ``"multitask"``), or reuse a saved one."""
    config, data = run.config, run.data
    encoder = build_encoder(config, len(data.vocab), data.vocab.pad_id).to(device_for(config))
    directory = out / "baselines" / key
    fingerprint = config.fingerprint(ignore=("eval_every", "checkpoint_every", "keep_checkpoints",
                                             "test_episodes", "patience"))
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

    objective = "causal" if config.backbone == "gpt2" else "mlm"
    log = pretrain_lm(
        encoder, data.ids["train"], vocab_size=len(data.vocab), mask_id=data.vocab.mask_id,
        pad_id=data.vocab.pad_id, special_ids=range(len(SPECIALS)), steps=config.steps,
        batch_size=config.meta_batch * config.n_way * (config.k_shot + config.q_query),
        lr=config.outer_lr, seed=config.seed, dim=config.dim, objective=objective,
        labels=data.label_ids("train") if key == "multitask" else None, validate=validate,
        eval_every=config.eval_every, progress=progress)
    save_checkpoint(directory, encoder.state_dict(),
                    {"fingerprint": fingerprint, "seconds": log.seconds, "losses": log.losses,
                     "validation": log.validation, "best_step": log.best_step})
    return encoder, log.seconds


def _meta_seconds(out: Path) -> float:
    """Training and validation time in the run's log (what the baselines' times also count)."""
    return sum(r.get("sample_seconds", 0.0) + r.get("step_seconds", 0.0)
               + (r.get("seconds", 0.0) if r.get("event") == "validation" else 0.0)
               for r in RunDir(out).read_log())


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

    fresh = build_encoder(config, len(data.vocab), data.vocab.pad_id).to(device_for(config))
    rows.append(adapted("none", "No pretraining + fine-tuning", fresh, 0.0))
    lm_name = "Causal-LM" if config.backbone == "gpt2" else "Masked-LM"
    enc, seconds = _baseline_encoder(run, out, "mlm", progress)
    rows.append(adapted("mlm", f"{lm_name} pretraining + fine-tuning", enc, seconds))
    enc, seconds = _baseline_encoder(run, out, "multitask", progress)
    rows.append(adapted("multitask", f"Multi-task pretraining ({lm_name} + classes) + fine-tuning",
                        enc, seconds))
    rows.append(measured("meta", f"Meta-pretraining ({_LEARNER_NAMES[config.learner]}) + "
                         f"adaptation", run.learner, _count(run.learner), _meta_seconds(run.out)))
    if minilm:
        tokenizer, model = load_minilm()
        emb = minilm_embeddings(data.texts["test"], tokenizer, model, progress=progress)
        rows.append(Row("minilm", "MiniLM (all-MiniLM-L6-v2, frozen) + prototypes",
                        prototype_accuracies(emb, index_tasks), None, _count(model), None))
    return rows


_LEARNER_NAMES = {"maml": "MAML", "fomaml": "first-order MAML", "metasgd": "Meta-SGD",
                  "reptile": "Reptile", "anil": "ANIL", "protonet": "ProtoNet",
                  "protomaml": "ProtoMAML"}


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
        diff = "—" if meta is None or r is meta else _signed(paired_difference(meta, r))
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
        diff = paired_difference(meta, r)
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


def reproduce_chapter5(out: str | Path = "runs/chapter5", config: PretrainConfig | None = None,
                       minilm: bool = True, progress: bool = False) -> list[Row]:
    """Train (or reuse) the meta-pretraining run and every baseline; write Chapter 5's table.

    Writes ``out/results.json``, ``out/results.csv`` and ``out/results.md``. A
    finished run in ``out/meta`` with the same config is reused, as are cached
    baselines, so the chapter and the command share their work.
    """
    out = Path(out)
    config = config or PretrainConfig.for_scale()
    meta_dir = out / "meta"
    result = meta_dir / "result.json"
    reuse = (result.is_file()
             and json.loads(result.read_text(encoding="utf-8")).get("fingerprint")
             == config.fingerprint())
    if not reuse:
        if meta_dir.exists():  # a run of another config, or one that never finished
            shutil.rmtree(meta_dir)
        pretrain(config, meta_dir, progress=progress)
    run = load_run(meta_dir)
    rows = compare(run, out, minilm=minilm, progress=progress)
    meta = next(r for r in rows if r.key == "meta")
    records = [r.as_dict(meta) for r in rows]
    write_json_atomic(out / "results.json", {"config": config.to_dict(), "rows": records,
                                             "verdict": verdict(rows)})
    with open(out / "results.csv", "w", newline="", encoding="utf-8") as f:
        # Every row's keys in first-seen order: the reference row lacks the difference columns.
        writer = csv.DictWriter(f, fieldnames=list(dict.fromkeys(k for r in records for k in r)))
        writer.writeheader()
        writer.writerows(records)
    (out / "results.md").write_text(markdown_table(rows) + "\n" + verdict(rows) + "\n",
                                    encoding="utf-8")
    return rows
