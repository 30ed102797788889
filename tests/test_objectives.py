"""Pretraining objectives: BERT masking statistics and losses checked against hand computations."""
from __future__ import annotations

import math

import pytest
import torch

from metabook.errors import ConfigError, TrainingError
from metabook.objectives import IGNORE_INDEX, causal_lm_loss, mask_tokens, masked_lm_loss

PAD, MASK, VOCAB = 0, 2, 5000


def _big_batch(seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(4, VOCAB, (400, 500), generator=g)
    ids[:, 450:] = PAD  # a padded tail that must never be masked
    return ids


def test_masking_rate_and_80_10_10_split():
    ids = _big_batch()
    inputs, labels = mask_tokens(ids, MASK, VOCAB, prob=0.15, special_ids=[PAD, 1, 2, 3],
                                 generator=torch.Generator().manual_seed(0))
    real = ids != PAD
    chosen = labels != IGNORE_INDEX
    assert abs(chosen[real].float().mean().item() - 0.15) < 0.003
    n = chosen.sum().item()
    as_mask = (inputs[chosen] == MASK).sum().item() / n
    kept = (inputs[chosen] == ids[chosen]).sum().item() / n
    replaced = ((inputs[chosen] != MASK) & (inputs[chosen] != ids[chosen])).sum().item() / n
    assert abs(as_mask - 0.8) < 0.01 and abs(kept - 0.1) < 0.01 and abs(replaced - 0.1) < 0.01


def test_labels_hold_originals_and_unchosen_inputs_are_untouched():
    ids = _big_batch(1)
    original = ids.clone()
    inputs, labels = mask_tokens(ids, MASK, VOCAB, prob=0.3, special_ids=[PAD],
                                 generator=torch.Generator().manual_seed(1))
    assert torch.equal(ids, original), "mask_tokens must not modify its input"
    chosen = labels != IGNORE_INDEX
    assert torch.equal(labels[chosen], ids[chosen])
    assert torch.equal(inputs[~chosen], ids[~chosen])
    assert not chosen[ids == PAD].any()


def test_random_replacements_are_never_special():
    ids = torch.full((200, 200), 7)
    specials = [0, 1, 3]
    inputs, labels = mask_tokens(ids, MASK, 10, prob=1.0, mask_frac=0.0, random_frac=1.0,
                                 special_ids=specials, generator=torch.Generator().manual_seed(0))
    assert (labels == 7).all()
    assert not torch.isin(inputs, torch.tensor(specials + [MASK])).any()
    # Every ordinary id (4..9) is drawn.
    assert set(inputs.unique().tolist()) == {4, 5, 6, 7, 8, 9}


def test_prob_one_with_mask_frac_one_masks_every_ordinary_token():
    ids = torch.tensor([[5, 6, 7, PAD], [8, PAD, PAD, PAD]])
    inputs, labels = mask_tokens(ids, MASK, 10, prob=1.0, mask_frac=1.0, random_frac=0.0,
                                 special_ids=[PAD], generator=torch.Generator())
    assert inputs.tolist() == [[MASK, MASK, MASK, PAD], [MASK, PAD, PAD, PAD]]
    assert labels.tolist() == [[5, 6, 7, -100], [8, -100, -100, -100]]


def test_masking_is_seeded():
    ids = _big_batch()
    a = mask_tokens(ids, MASK, VOCAB, generator=torch.Generator().manual_seed(5))
    b = mask_tokens(ids, MASK, VOCAB, generator=torch.Generator().manual_seed(5))
    c = mask_tokens(ids, MASK, VOCAB, generator=torch.Generator().manual_seed(6))
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    assert not torch.equal(a[1], c[1])


def test_masking_keeps_dtype_and_shape():
    ids = torch.tensor([3, 4, 5, 6], dtype=torch.int32)
    inputs, labels = mask_tokens(ids, 0, 7, prob=0.5, generator=torch.Generator().manual_seed(0))
    assert inputs.dtype == labels.dtype == torch.int32 and inputs.shape == labels.shape == ids.shape


@pytest.mark.parametrize("kwargs, message", [
    (dict(prob=0.0), r"\(0, 1\]"),
    (dict(prob=1.5), r"\(0, 1\]"),
    (dict(prob=-0.1), r"\(0, 1\]"),
    (dict(mask_frac=0.8, random_frac=0.3), "sum <= 1"),
    (dict(mask_frac=-0.1), ">= 0"),
    (dict(mask_id=10), "mask_id"),
    (dict(vocab_size=8), "vocab_size right"),
    (dict(special_ids=[11]), "special_ids"),
])
def test_bad_masking_arguments_are_rejected(kwargs, message):
    args = dict(mask_id=MASK, vocab_size=10, generator=torch.Generator())
    args.update(kwargs)
    with pytest.raises(ConfigError, match=message):
        mask_tokens(torch.tensor([[4, 5, 9]]), **args)


def test_float_ids_are_rejected():
    with pytest.raises(ConfigError, match="integer tensor"):
        mask_tokens(torch.tensor([1.0, 2.0]), MASK, 10, generator=torch.Generator())


def test_no_ordinary_word_left_for_random_replacement():
    with pytest.raises(ConfigError, match="no ordinary word"):
        mask_tokens(torch.tensor([0, 1]), 2, 3, special_ids=[0, 1], generator=torch.Generator())


def test_masked_lm_loss_equals_hand_computation():
    logits = torch.tensor([[[1.0, 2.0, 0.5], [0.0, -1.0, 3.0], [2.0, 2.0, 2.0]]], dtype=torch.float64)
    labels = torch.tensor([[1, IGNORE_INDEX, 0]])
    hand = -(math.log(math.exp(2.0) / (math.exp(1.0) + math.exp(2.0) + math.exp(0.5)))
             + math.log(1 / 3)) / 2
    assert math.isclose(masked_lm_loss(logits, labels).item(), hand, rel_tol=1e-12)


def test_unmasked_positions_do_not_affect_loss_or_gradient():
    torch.manual_seed(0)
    logits = torch.randn(4, 6, 11, requires_grad=True)
    labels = torch.randint(0, 11, (4, 6))
    labels[:, ::2] = IGNORE_INDEX
    loss = masked_lm_loss(logits, labels)
    loss.backward()
    assert (logits.grad[:, ::2] == 0).all() and (logits.grad[:, 1::2] != 0).any()
    changed = logits.detach().clone()
    changed[:, ::2] += 100 * torch.randn(4, 3, 11)
    assert torch.allclose(masked_lm_loss(changed, labels), loss.detach())


def test_uniform_logits_give_log_vocabulary_size():
    labels = torch.randint(0, 50, (3, 7), generator=torch.Generator().manual_seed(0))
    assert math.isclose(masked_lm_loss(torch.zeros(3, 7, 50), labels).item(), math.log(50),
                        rel_tol=1e-6)


def test_masked_lm_loss_rejects_bad_input():
    with pytest.raises(TrainingError, match="no position has a label"):
        masked_lm_loss(torch.zeros(2, 3, 5), torch.full((2, 3), IGNORE_INDEX))
    with pytest.raises(ConfigError, match="do not match"):
        masked_lm_loss(torch.zeros(2, 3, 5), torch.zeros(2, 4, dtype=torch.long))
    with pytest.raises(ConfigError, match=r"in \[0, 5\)"):
        masked_lm_loss(torch.zeros(2, 5), torch.tensor([1, 5]))
    with pytest.raises(ConfigError, match="integer class ids"):
        masked_lm_loss(torch.zeros(2, 5), torch.tensor([1.0, 2.0]))


def test_causal_lm_loss_shifts_and_ignores_padding():
    torch.manual_seed(1)
    logits = torch.randn(2, 4, 9, dtype=torch.float64)
    ids = torch.tensor([[3, 4, 5, 6], [7, 8, PAD, PAD]])
    log_p = torch.log_softmax(logits, dim=-1)
    # Real targets: 4, 5, 6 in row 0 (from positions 0, 1, 2) and 8 in row 1 (from position 0).
    hand = -(log_p[0, 0, 4] + log_p[0, 1, 5] + log_p[0, 2, 6] + log_p[1, 0, 8]) / 4
    assert math.isclose(causal_lm_loss(logits, ids, pad_id=PAD).item(), hand.item(), rel_tol=1e-12)
    # Without pad_id the padding is a target like any other token.
    with_pad = -(log_p[0, :3].gather(-1, ids[0, 1:, None]).sum()
                 + log_p[1, :3].gather(-1, ids[1, 1:, None]).sum()) / 6
    assert math.isclose(causal_lm_loss(logits, ids).item(), with_pad.item(), rel_tol=1e-12)


def test_causal_lm_loss_works_on_one_sequence_and_rejects_bad_input():
    logits = torch.zeros(5, 3)
    assert math.isclose(causal_lm_loss(logits, torch.tensor([0, 1, 2, 1, 0])).item(), math.log(3),
                        rel_tol=1e-6)
    with pytest.raises(ConfigError, match="at least 2 tokens"):
        causal_lm_loss(torch.zeros(1, 3), torch.tensor([1]))
    with pytest.raises(ConfigError, match="do not match"):
        causal_lm_loss(torch.zeros(2, 5, 3), torch.zeros(2, 4, dtype=torch.long))
    with pytest.raises(TrainingError):
        causal_lm_loss(torch.zeros(2, 3), torch.tensor([1, PAD]), pad_id=PAD)
