"""Pretraining objectives as small functions on tensors.

- :func:`mask_tokens` corrupts a batch of token ids the way BERT does and
  returns the labels a masked language model must recover;
- :func:`masked_lm_loss` is the cross-entropy on the masked positions only;
- :func:`causal_lm_loss` is the next-token cross-entropy of a left-to-right
  model (GPT); ``exp`` of it is the model's perplexity.

Labels use ``-100`` (:data:`IGNORE_INDEX`, PyTorch's default ``ignore_index``)
for positions that carry no target::

    >>> import torch
    >>> ids = torch.tensor([[5, 6, 7, 8, 0, 0]])        # 0 is padding
    >>> inputs, labels = mask_tokens(ids, mask_id=2, vocab_size=10, prob=0.5,
    ...                              generator=torch.Generator().manual_seed(1), special_ids=[0])
    >>> bool(((labels == IGNORE_INDEX) | (labels == ids)).all())   # a label is the original id
    True
    >>> logits = torch.zeros(1, 6, 10)                    # a model that knows nothing
    >>> round(causal_lm_loss(logits, ids, pad_id=0).item(), 4) == round(math.log(10), 4)
    True
"""
from __future__ import annotations

import math  # used by the module docstring's example
from typing import Iterable

import torch
import torch.nn.functional as F
from torch import Tensor

from metabook.errors import ConfigError, TrainingError

__all__ = ["IGNORE_INDEX", "mask_tokens", "masked_lm_loss", "causal_lm_loss"]

IGNORE_INDEX = -100


def mask_tokens(ids: Tensor, mask_id: int, vocab_size: int, prob: float = 0.15, *,
                generator: torch.Generator, special_ids: Iterable[int] = (),
                mask_frac: float = 0.8, random_frac: float = 0.1) -> tuple[Tensor, Tensor]:
    """BERT-style corruption: returns ``(inputs, labels)`` for a masked language model.

    Each position whose id is not in ``special_ids`` is chosen with probability
    ``prob``. A chosen position becomes ``mask_id`` with probability
    ``mask_frac``, a random non-special id with probability ``random_frac``, and
    keeps its id otherwise (BERT: 80/10/10). ``labels`` holds the original id at
    chosen positions and :data:`IGNORE_INDEX` everywhere else. ``ids`` is not
    modified; the same ``generator`` state gives the same result.

        >>> g = torch.Generator().manual_seed(0)
        >>> ids = torch.arange(4, 1004).view(10, 100)
        >>> inputs, labels = mask_tokens(ids, mask_id=3, vocab_size=1004, prob=0.15, generator=g)
        >>> round((labels != IGNORE_INDEX).float().mean().item(), 2)     # about prob
        0.15
    """
    if ids.dtype == torch.bool or ids.is_floating_point() or ids.is_complex():
        raise ConfigError(f"ids must be an integer tensor of token ids, got dtype {ids.dtype}")
    if not 0 < prob <= 1:
        raise ConfigError(f"prob, the share of tokens to mask, must be in (0, 1], got {prob}")
    if mask_frac < 0 or random_frac < 0 or mask_frac + random_frac > 1:
        raise ConfigError(f"mask_frac and random_frac must be >= 0 with a sum <= 1, "
                          f"got {mask_frac} and {random_frac}")
    if not 0 <= mask_id < vocab_size:
        raise ConfigError(f"mask_id={mask_id} is not an id of a vocabulary of size {vocab_size}")
    if ids.numel() and (int(ids.min()) < 0 or int(ids.max()) >= vocab_size):
        raise ConfigError(f"ids must lie in [0, {vocab_size}); found "
                          f"{int(ids.min())}..{int(ids.max())}: is vocab_size right?")
    special = sorted(set(int(i) for i in special_ids))
    if special and not (0 <= special[0] and special[-1] < vocab_size):
        raise ConfigError(f"special_ids {special} must be ids of a vocabulary of size {vocab_size}")
    specials = torch.tensor(special, dtype=ids.dtype, device=ids.device)
    # Random replacements are ordinary words: never padding, [MASK] or another special id.
    allowed = torch.ones(vocab_size, dtype=torch.bool, device=ids.device)
    allowed[specials.long()] = False  # indexing needs int64
    allowed[mask_id] = False
    candidates = allowed.nonzero().flatten().to(ids.dtype)
    if random_frac > 0 and candidates.numel() == 0:
        raise ConfigError("random_frac > 0 but every id is special or the mask: "
                          "no ordinary word is left to substitute")

    # Draw on the generator's device, then move, so CPU and CUDA runs agree for one seed.
    def uniform() -> Tensor:
        return torch.rand(ids.shape, generator=generator, device=generator.device).to(ids.device)

    chosen = (uniform() < prob) & ~torch.isin(ids, specials)
    how = uniform()
    to_mask = chosen & (how < mask_frac)
    to_random = chosen & (how >= mask_frac) & (how < mask_frac + random_frac)
    pick = torch.randint(max(candidates.numel(), 1), ids.shape, generator=generator,
                         device=generator.device).to(ids.device)
    inputs = torch.where(to_mask, torch.full_like(ids, mask_id), ids)
    if candidates.numel():
        inputs = torch.where(to_random, candidates[pick], inputs)
    labels = torch.where(chosen, ids, torch.full_like(ids, IGNORE_INDEX))
    return inputs, labels


def masked_lm_loss(logits: Tensor, labels: Tensor) -> Tensor:
    """Mean cross-entropy over the positions whose label is not :data:`IGNORE_INDEX`.

    ``logits`` has shape ``(..., V)`` and ``labels`` the same shape without the
    last dimension. Positions labelled ``-100`` do not affect the loss or its gradient.

        >>> logits = torch.tensor([[2.0, 0.0], [0.0, 0.0]])
        >>> labels = torch.tensor([0, IGNORE_INDEX])
        >>> round(masked_lm_loss(logits, labels).item(), 4)   # -log(e^2 / (e^2 + 1))
        0.1269
    """
    if logits.dim() < 1 or logits.shape[:-1] != labels.shape:
        raise ConfigError(f"logits of shape {tuple(logits.shape)} do not match labels of shape "
                          f"{tuple(labels.shape)}: expected logits (..., V) and labels (...)")
    if labels.is_floating_point() or labels.dtype == torch.bool:
        raise ConfigError(f"labels must be integer class ids, got dtype {labels.dtype}")
    n_classes = logits.shape[-1]
    kept = labels != IGNORE_INDEX
    # cross_entropy would return NaN for zero targets and fail obscurely (or assert on
    # CUDA) for ids out of range; both checks cost one device sync.
    if not bool(kept.any()):
        raise TrainingError("no position has a label (every label is -100), so the loss is "
                            "undefined: mask more tokens (raise prob) or use longer sequences")
    bad = kept & ((labels < 0) | (labels >= n_classes))
    if bool(bad.any()):
        raise ConfigError(f"labels must be -100 or ids in [0, {n_classes}); found "
                          f"{labels[bad][0].item()}")
    return F.cross_entropy(logits.reshape(-1, n_classes), labels.reshape(-1),
                           ignore_index=IGNORE_INDEX)


def causal_lm_loss(logits: Tensor, ids: Tensor, pad_id: int | None = None) -> Tensor:
    """Next-token cross-entropy: ``logits[..., t, :]`` predicts ``ids[..., t + 1]``.

    ``logits`` has shape ``(..., T, V)`` and ``ids`` ``(..., T)``. Targets equal
    to ``pad_id`` are ignored, so padded batches give the mean over real tokens.

        >>> ids = torch.tensor([4, 5, 0])
        >>> logits = torch.zeros(3, 6)
        >>> logits[0, 5] = 10.0                   # sure that 5 follows 4
        >>> round(causal_lm_loss(logits, ids, pad_id=0).item(), 4)   # the pad target is ignored
        0.0002
    """
    if ids.dim() < 1 or logits.shape[:-1] != ids.shape:
        raise ConfigError(f"logits of shape {tuple(logits.shape)} do not match ids of shape "
                          f"{tuple(ids.shape)}: expected logits (..., T, V) and ids (..., T)")
    if ids.shape[-1] < 2:
        raise ConfigError("a causal language model needs sequences of at least 2 tokens: "
                          f"got length {ids.shape[-1]}")
    targets = ids[..., 1:]
    if pad_id is not None:
        targets = targets.masked_fill(targets == pad_id, IGNORE_INDEX)
    return masked_lm_loss(logits[..., :-1, :], targets)
