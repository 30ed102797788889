"""The small models: a seeded MLP is the network that seeding and building it by hand gives."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from metabook.models import mlp_encoder


@pytest.mark.parametrize("activation", [nn.ReLU, nn.Tanh])
def test_a_seeded_mlp_equals_the_one_built_after_manual_seed(activation):
    torch.manual_seed(3)
    by_hand = nn.Sequential(nn.Linear(10, 7), activation(), nn.Linear(7, 5), activation(),
                            nn.Linear(5, 2))
    state = torch.get_rng_state()
    net = mlp_encoder(10, [7, 5], 2, seed=3, activation=activation)
    assert torch.equal(torch.get_rng_state(), state)  # the global generator is left alone
    assert [type(m) for m in net] == [type(m) for m in by_hand]
    assert all(torch.equal(a, b) for a, b in zip(net.parameters(), by_hand.parameters()))
