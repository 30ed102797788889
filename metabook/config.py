"""The configuration of a meta-pretraining run, loaded strictly from JSON or YAML.

A :class:`PretrainConfig` names everything a run depends on: the data, the
backbone, the learner and its task shape (N-way, K-shot, Q queries), the inner
and outer optimisation, and how often to validate and save. Its defaults are
the small, two-CPU-core run the book uses; :meth:`PretrainConfig.for_scale`
gives the GPU-sized one (``METABOOK_SCALE=large``)::

    >>> cfg = PretrainConfig()
    >>> cfg.learner, cfg.n_way, cfg.k_shot
    ('protomaml', 5, 4)
    >>> PretrainConfig.from_dict({"inner_step": 3})
    Traceback (most recent call last):
    ...
    metabook.errors.ConfigError: unknown config key 'inner_step' (did you mean 'inner_steps'?)

A file is read strictly: an unknown key or a value of the wrong type is a
:class:`~metabook.errors.ConfigError` that names the key and the file. The
names a key may take (``learner``, ``backbone``, ``optimizer``, ``scale``) are
those of its registry (:data:`metabook.recipes.LEARNERS`,
:data:`metabook.models.BACKBONES`, :data:`metabook.training.OPTIMIZERS`,
:data:`metabook.scale.SCALES`), so a newly registered one is a valid value at once.
"""
from __future__ import annotations

import dataclasses
import difflib
import hashlib
import json
import os
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Mapping

import yaml

from metabook.errors import ConfigError
from metabook.models import BACKBONES
from metabook.recipes import LEARNERS
from metabook.registry import Registry
from metabook.scale import SCALES, scale as current_scale
from metabook.training import OPTIMIZERS

__all__ = ["TASK_KINDS", "PretrainConfig", "load_config"]

TASK_KINDS = ("smlmt", "supervised", "hybrid")
# A pretrained encoder is fine-tuned, not trained from nothing: a smaller outer learning
# rate, fewer steps validated more often, and the sentences at their length in subwords;
# on two CPU cores, two tasks a step (a step runs a 384-wide transformer layer on each).
_PRETRAINED: dict[str, dict[str, Any]] = {
    "small": dict(outer_lr=1e-4, steps=100, meta_batch=2, eval_every=25, checkpoint_every=25,
                  max_len=32, test_episodes=600),
    "large": dict(outer_lr=5e-5, steps=1000, eval_every=100, checkpoint_every=100, max_len=128,
                  train_layers=2, test_episodes=1000),
}


def _defaults(scale: str, backbone: str | None) -> dict[str, Any]:
    """The values :meth:`PretrainConfig.for_scale` starts from: those of the scale, of a
    pretrained backbone too."""
    if scale not in SCALES:
        raise ConfigError(f"scale {scale!r} is not one of {SCALES.names()}")
    base: dict[str, Any] = {"scale": scale}
    if scale == "large":  # a GPU-sized run: wider, deeper, longer, more episodes
        # Second-order meta-gradients where a GPU can afford them.
        base.update(dim=256, layers=4, heads=8, max_len=64, meta_batch=16, steps=5000,
                    eval_every=250, checkpoint_every=250, val_episodes=200,
                    test_episodes=1000, patience=5, first_order=False)
    if backbone in BACKBONES and BACKBONES[backbone].pretrained:
        base.update(_PRETRAINED[scale])
    return base


# The keys whose values are names in a registry.
_CHOICES: dict[str, Registry[Any]] = {"learner": LEARNERS, "backbone": BACKBONES,
                                      "optimizer": OPTIMIZERS, "scale": SCALES}


@dataclass(frozen=True)
class PretrainConfig:
    """Every setting of a meta-pretraining run (defaults: the small run of Chapter 5).

    Data: ``corpus`` (a name from :mod:`metabook.corpora`) loaded with
    ``corpus_options``; its ``label_column`` names the classes, of which
    ``test_classes`` and ``val_classes`` are held out (chosen with
    ``split_seed``) and the rest are for training. ``tasks`` says what the
    meta-learner trains on: ``"smlmt"`` (self-supervised tasks from the training
    classes' raw text), ``"supervised"`` (N-way episodes over the training
    classes) or ``"hybrid"`` (both, half and half, as Bansal et al. 2020 did).

    Learner: a name in :data:`metabook.recipes.LEARNERS`, around the
    ``backbone`` of :data:`metabook.models.BACKBONES`. ``first_order`` applies to Meta-SGD, ANIL
    and ProtoMAML (MAML is second order, first-order MAML and Reptile first
    order by definition). Training runs ``steps`` outer steps in total, of
    ``optimizer`` (a name in :data:`metabook.training.OPTIMIZERS`) at rate
    ``outer_lr``: a resumed run with a larger ``steps`` continues to it.

    Pretrained encoders (``backbone: minilm``, or ``backbone: hf`` with
    ``pretrained`` naming any Hugging Face encoder or a local folder): the top
    ``train_layers`` transformer layers are meta-trained, the rest stay frozen
    (and cached, see :mod:`metabook.pretrained`); the inner loop adapts the
    learner's head and the top ``adapt_layers`` of those (0: the head only).
    ``dim``, ``layers`` and ``heads`` describe only a backbone built from scratch.

    More data: ``val_corpus`` and ``test_corpus`` (each with its options, and its
    label column when it is not ``label_column``) take the validation or test
    classes from another corpus, a new domain or language, whole;
    ``max_per_class`` keeps a seeded sample of at most that many sentences of each
    class (0: all). ``source_column`` splits the training sentences into task
    sources by that column (a language, a domain), which ``sampling`` draws
    uniformly, by size, or by size to the power ``alpha`` (``"temperature"``).

    Monitoring: every ``eval_every`` steps the learner is measured on
    ``val_episodes`` fixed episodes of the validation classes, and a checkpoint
    is saved (also every ``checkpoint_every`` steps, and once ``checkpoint_minutes``
    have passed since the last one, so that a stop loses little: 0 turns that
    off); training stops early when ``patience`` validations in a row do not
    improve on the best (0: never).
    """

    # data
    corpus: str = "chatterbot"
    corpus_options: dict = field(default_factory=lambda: {"language": "english"})
    label_column: str = "domain"
    test_classes: int = 6
    val_classes: int = 5
    split_seed: int = 0
    min_count: int = 2
    max_len: int = 32
    tasks: Literal["smlmt", "supervised", "hybrid"] = "hybrid"
    max_per_class: int = 0
    val_corpus: str = ""
    val_corpus_options: dict = field(default_factory=dict)
    val_label_column: str = ""
    test_corpus: str = ""
    test_corpus_options: dict = field(default_factory=dict)
    test_label_column: str = ""
    source_column: str = ""
    sampling: Literal["uniform", "size", "temperature"] = "uniform"
    alpha: float = 0.5
    # backbone
    backbone: str = "transformer"
    dim: int = 64
    layers: int = 2
    heads: int = 4
    pretrained: str = ""
    train_layers: int = 1
    adapt_layers: int = 0
    # learner and task shape
    learner: str = "protomaml"
    first_order: bool = True
    n_way: int = 5
    k_shot: int = 4
    q_query: int = 4
    inner_steps: int = 2
    inner_lr: float = 0.1
    # outer loop
    outer_lr: float = 1e-3
    optimizer: str = "adam"
    meta_batch: int = 4
    clip_grad: float = 1.0
    steps: int = 300
    # monitoring and evaluation
    eval_every: int = 50
    val_episodes: int = 40
    patience: int = 3
    checkpoint_every: int = 50
    checkpoint_minutes: float = 5.0
    keep_checkpoints: int = 2
    test_episodes: int = 200
    seed: int = 0
    scale: str = "small"

    def __post_init__(self) -> None:
        for name in _CHOICES:
            _check_choice(name, getattr(self, name), "")
        for name in ("test_classes", "val_classes", "min_count", "max_len", "dim", "layers",
                     "heads", "n_way", "k_shot", "meta_batch", "steps", "eval_every",
                     "val_episodes", "checkpoint_every", "keep_checkpoints", "test_episodes"):
            if getattr(self, name) < 1:
                raise ConfigError(f"config key {name!r} must be at least 1, got {getattr(self, name)}")
        for name in ("inner_steps", "patience", "split_seed", "seed", "max_per_class",
                     "train_layers", "adapt_layers"):
            if getattr(self, name) < 0:
                raise ConfigError(f"config key {name!r} must be >= 0, got {getattr(self, name)}")
        for name in ("inner_lr", "outer_lr"):
            if not getattr(self, name) > 0:
                raise ConfigError(f"config key {name!r} must be > 0, got {getattr(self, name)}")
        if self.checkpoint_minutes < 0:
            raise ConfigError(f"config key 'checkpoint_minutes' must be >= 0 (0: no checkpoints "
                              f"by time), got {self.checkpoint_minutes}")
        if self.clip_grad < 0:
            raise ConfigError(f"config key 'clip_grad' must be >= 0 (0: no clipping), "
                              f"got {self.clip_grad}")
        if self.q_query < 1:
            raise ConfigError("config key 'q_query' must be at least 1: the query set is what "
                              "the meta-loss is measured on")
        if self.dim % self.heads:
            raise ConfigError(f"config key 'dim' ({self.dim}) must be divisible by 'heads' "
                              f"({self.heads})")
        for split in ("val", "test"):
            if getattr(self, f"{split}_classes") < self.n_way and not getattr(self, f"{split}_corpus"):
                raise ConfigError(f"config key '{split}_classes' ({getattr(self, f'{split}_classes')}) "
                                  f"must be at least n_way ({self.n_way}): an N-way episode needs "
                                  f"N classes; raise it or lower n_way")
        if self.adapt_layers > self.train_layers:
            raise ConfigError(f"config key 'adapt_layers' ({self.adapt_layers}) cannot exceed "
                              f"'train_layers' ({self.train_layers}): the inner loop adapts only "
                              f"layers that are trained")
        if self.alpha < 0:
            raise ConfigError(f"config key 'alpha' must be >= 0, got {self.alpha}")
        if self.backbone == "hf" and not self.pretrained:
            raise ConfigError("backbone 'hf' needs 'pretrained': the name of a Hugging Face "
                              "encoder (e.g. bert-base-uncased) or the path of a local copy")

    # --- construction -------------------------------------------------------------------

    @classmethod
    def for_scale(cls, scale: str | None = None, **overrides: Any) -> "PretrainConfig":
        """Defaults for ``scale`` (``"small"`` or ``"large"``; default: ``METABOOK_SCALE``).

        A pretrained backbone in ``overrides`` brings the defaults of fine-tuning
        one (a smaller outer learning rate, fewer steps, longer sentences)::

            >>> PretrainConfig.for_scale("large").dim
            256
            >>> PretrainConfig.for_scale("small", backbone="minilm").outer_lr
            0.0001
        """
        scale = scale or current_scale()
        return cls.from_dict({**_defaults(scale, overrides.get("backbone")), **overrides})

    @classmethod
    def from_dict(cls, values: Mapping[str, Any], source: str = "config") -> "PretrainConfig":
        """A config from ``values``, checking every key and type; ``source`` names it in errors."""
        if not isinstance(values, Mapping):
            raise ConfigError(f"{source} must be a mapping of keys to values, "
                              f"got {type(values).__name__}")
        hints = typing.get_type_hints(cls)
        known = [f.name for f in dataclasses.fields(cls)]
        checked: dict[str, Any] = {}
        for key, value in values.items():
            if key not in hints:
                close = difflib.get_close_matches(str(key), known, n=1)
                hint = f" (did you mean {close[0]!r}?)" if close else f"; known keys: {', '.join(known)}"
                where = "" if source == "config" else f" in {source}"
                raise ConfigError(f"unknown config key {key!r}{where}{hint}")
            checked[key] = _check_type(key, value, hints[key], source)
        try:
            return cls(**checked)
        except ConfigError as err:
            if source == "config":
                raise
            raise ConfigError(f"{source}: {err}") from None

    @classmethod
    def from_file(cls, path: str | Path, **overrides: Any) -> "PretrainConfig":
        """Read a JSON or YAML file over the defaults of its ``scale`` (or the current one)."""
        return load_config(path, **overrides)

    def replace(self, **changes: Any) -> "PretrainConfig":
        """A copy with ``changes`` applied (checked like a file)."""
        return type(self).from_dict({**self.to_dict(), **changes})

    # --- output -------------------------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-ready values.

        >>> PretrainConfig().to_dict()["corpus_options"]
        {'language': 'english'}
        """
        return json.loads(json.dumps(dataclasses.asdict(self)))

    def fingerprint(self, ignore: tuple[str, ...] = ()) -> str:
        """A short hash of every setting except ``ignore``: equal runs have equal fingerprints."""
        values = {k: v for k, v in self.to_dict().items() if k not in ignore}
        return hashlib.sha256(json.dumps(values, sort_keys=True).encode()).hexdigest()[:16]

    def differences(self, other: "PretrainConfig", ignore: tuple[str, ...] = ()) -> list[str]:
        """The keys whose values differ between ``self`` and ``other``."""
        a, b = self.to_dict(), other.to_dict()
        return [k for k in a if k not in ignore and a[k] != b[k]]

    def save(self, path: str | Path) -> Path:
        """Write the config as JSON."""
        path = Path(path)
        path.write_text(json.dumps(self.to_dict(), indent=2, sort_keys=False) + "\n",
                        encoding="utf-8")
        return path


def _check_choice(key: str, value: Any, where: str) -> None:
    if key in _CHOICES and value not in _CHOICES[key]:
        raise ConfigError(f"config key {key!r}{where} must be one of {_CHOICES[key].names()}, "
                          f"got {value!r}")


def _check_type(key: str, value: Any, hint: Any, source: str) -> Any:
    where = "" if source == "config" else f" in {source}"
    origin = typing.get_origin(hint)
    if origin is Literal:
        choices = typing.get_args(hint)
        if value not in choices:
            raise ConfigError(f"config key {key!r}{where} must be one of {list(choices)}, "
                              f"got {value!r}")
        return value
    if hint is bool:
        ok = isinstance(value, bool)
    elif hint is int:
        ok = isinstance(value, int) and not isinstance(value, bool)
    elif hint is float:  # an integer is a fine float (``outer_lr: 1``), a bool is not
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        value = float(value) if ok else value
    elif hint is str:
        ok = isinstance(value, str)
    elif hint is dict:
        ok = isinstance(value, Mapping)
        value = dict(value) if ok else value
    else:  # pragma: no cover - every field above has one of these types
        raise TypeError(f"no type check for {hint!r}")
    if not ok:
        name = getattr(hint, "__name__", str(hint))
        raise ConfigError(f"config key {key!r}{where} must be of type {name}, got "
                          f"{type(value).__name__} {value!r}")
    _check_choice(key, value, where)
    return value


# The corpus options that name data files, in the keys that hold corpus options.
_PATH_OPTIONS = ("path", "data_files")
_CORPUS_OPTIONS = ("corpus_options", "val_corpus_options", "test_corpus_options")


def _absolute_paths(values: dict[str, Any], folder: Path) -> dict[str, Any]:
    """``values`` with each relative ``path`` or ``data_files`` of its corpus options absolute.

    A name is looked up in ``folder`` (the config file's), then in the current
    directory, and made absolute where a file or folder of that name exists
    there, so that a run finds its data from any directory. Anything else (a hub
    name such as ``banking77``, a builder such as ``parquet``) stays as written.
    """
    def absolute(value: Any) -> Any:
        if isinstance(value, list):
            return [absolute(v) for v in value]
        if isinstance(value, Mapping):
            return {k: absolute(v) for k, v in value.items()}
        if not isinstance(value, str) or not value or Path(value).is_absolute():
            return value
        found = [base / value for base in (folder, Path.cwd()) if (base / value).exists()]
        return os.path.abspath(found[0]) if found else value

    out = dict(values)
    for key in _CORPUS_OPTIONS:
        if isinstance(values.get(key), Mapping):
            out[key] = {k: absolute(v) if k in _PATH_OPTIONS else v
                        for k, v in values[key].items()}
    return out


def load_config(path: str | Path | None = None, scale: str | None = None,
                **overrides: Any) -> PretrainConfig:
    """The config in ``path`` (JSON or YAML) over the defaults, then ``overrides``.

    The defaults are those of ``scale``, else of the file's ``scale`` key, else
    of ``METABOOK_SCALE``; a ``scale`` given here also wins over the file's.
    Without ``path`` only the defaults and ``overrides`` count. The file's
    relative data paths become absolute (see :func:`_absolute_paths`).
    """
    values: dict[str, Any] = {}
    source = "config"
    if path is not None:
        path = Path(path)
        source = str(path)
        try:
            text = path.read_text(encoding="utf-8")
        except FileNotFoundError:
            raise ConfigError(f"config file {path} does not exist") from None
        except OSError as err:
            raise ConfigError(f"cannot read config file {path} ({err.strerror}); pass the path "
                              f"of a JSON or YAML file") from None
        except UnicodeDecodeError as err:
            raise ConfigError(f"config file {path} is not UTF-8 text (byte {err.object[err.start]:#04x} "
                              f"at offset {err.start}); save it as UTF-8 JSON or YAML") from None
        try:
            # YAML is a superset of JSON, so one parser reads both.
            loaded = yaml.safe_load(text)
        except yaml.YAMLError as err:
            raise ConfigError(f"config file {path} is neither valid JSON nor YAML: "
                              f"{str(err).splitlines()[0]}") from None
        if loaded is None:
            loaded = {}
        if not isinstance(loaded, dict):
            raise ConfigError(f"config file {path} must hold a mapping of keys to values, "
                              f"not a {type(loaded).__name__}")
        values = _absolute_paths(loaded, path.parent)
    if scale is not None:
        overrides = {**overrides, "scale": scale}
    chosen = overrides.get("scale") or values.get("scale")
    if chosen is not None and chosen not in SCALES:
        where = "" if path is None else f" in {source}"
        raise ConfigError(f"config key 'scale'{where} must be one of {list(SCALES)}, "
                          f"got {chosen!r}")
    backbone = overrides.get("backbone") or values.get("backbone")
    base = {**PretrainConfig().to_dict(), **_defaults(chosen or current_scale(), backbone)}
    # The file is checked on its own first so that an error names the file.
    PretrainConfig.from_dict({**base, **values}, source=source)
    return PretrainConfig.from_dict({**base, **values, **overrides})
