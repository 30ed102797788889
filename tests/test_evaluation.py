"""Evaluation: confidence intervals checked by hand, before/after adaptation, curves."""
from __future__ import annotations

import math
import random
import statistics

import pytest
import torch
from torch import nn

from metabook import evaluation
from metabook.errors import ConfigError
from metabook.evaluation import (Z95, Interval, accuracies, accuracies_along, adaptation, curve,
                                 draw_episodes, evaluate, mean_ci, select_adaptation)
from metabook.learners import ANIL, MAML, Learner, MetaSGD, ProtoMAML, ProtoNet, Reptile
from metabook.tasks import EpisodeSource


def test_mean_ci_against_a_hand_computation():
    # values 1, 0, 1, 1, 0: mean 0.6; squared deviations 0.16 * 3 + 0.36 * 2 = 1.2;
    # sample variance 1.2 / 4 = 0.3; half-width 1.959964 * sqrt(0.3 / 5) = 1.959964 * 0.244949
    iv = mean_ci([1, 0, 1, 1, 0])
    assert iv.n == 5 and iv.mean == pytest.approx(0.6)
    assert iv.half_width == pytest.approx(0.480091, abs=1e-6)
    assert (iv.low, iv.high) == pytest.approx((0.6 - 0.480091, 0.6 + 0.480091), abs=1e-6)
    assert Z95 == pytest.approx(1.959964, abs=1e-6)
    assert str(iv) == "60.0 ± 48.0"
    assert mean_ci([0.3, 0.3, 0.3]).half_width == 0.0
    assert mean_ci([1, 0, 1, 1, 0], z=1.0).half_width == pytest.approx(math.sqrt(0.3 / 5))


def test_mean_ci_needs_two_values():
    with pytest.raises(ConfigError, match="at least 2 values"):
        mean_ci([0.5])


def test_interval_covers_the_truth_about_95_percent_of_the_time():
    rng = random.Random(0)
    hits = 0
    for _ in range(1000):
        values = [float(rng.random() < 0.3) for _ in range(200)]
        iv = mean_ci(values)
        hits += iv.low <= 0.3 <= iv.high
    assert 0.93 <= hits / 1000 <= 0.97


def test_overlaps():
    a, b, c = Interval(0.5, 0.1, 10), Interval(0.65, 0.1, 10), Interval(0.8, 0.05, 10)
    assert a.overlaps(b) and b.overlaps(a) and not a.overlaps(c)


def _source(noise: float = 1.0, k: int = 1, seed: int = 0) -> EpisodeSource:
    g = torch.Generator().manual_seed(seed)
    centres = torch.randn(10, 8, generator=g) * 1.5
    labels = [i % 10 for i in range(400)]
    x = centres[labels] + noise * torch.randn(400, 8, generator=g)
    return EpisodeSource(x, labels, 4, k, 5)


def test_draw_episodes_depends_on_the_seed_only():
    src = _source()
    a, b = draw_episodes(src, 5, seed=1), draw_episodes(src, 5, seed=1)
    c = draw_episodes(src, 5, seed=2)
    assert all(torch.equal(x.support_x, y.support_x) and x.classes == y.classes for x, y in zip(a, b))
    assert any(not torch.equal(x.support_x, y.support_x) for x, y in zip(a, c))


def test_draw_episodes_takes_several_sources_in_turn_from_one_generator():
    first, second = _source(seed=0), _source(seed=1)
    second.name = "second"
    mixed = draw_episodes([first, second], 6, seed=4)
    assert [t.source for t in mixed] == ["episodes", "second"] * 3
    # one generator, advanced by every draw: episode i is what the i-th draw would give
    g = torch.Generator().manual_seed(4)
    by_hand = [(first, second)[i % 2].sample(g) for i in range(6)]
    assert all(torch.equal(a.support_x, b.support_x) for a, b in zip(mixed, by_hand))
    # a list of one source is that source
    assert all(torch.equal(a.query_x, b.query_x) for a, b in
               zip(draw_episodes([first], 3, seed=2), draw_episodes(first, 3, seed=2)))
    with pytest.raises(ConfigError, match="at least one task source"):
        draw_episodes([], 3, seed=0)


def test_before_and_after_adaptation():
    torch.manual_seed(0)
    episodes = draw_episodes(_source(k=3), 40, seed=0)
    maml = MAML(nn.Linear(8, 4), lr=0.5, steps=10)
    ev = evaluate(maml, episodes)
    assert len(ev.before) == len(ev.after) == 40
    # an unadapted head knows nothing about the task; ten steps on the support set do
    assert ev.before_ci.mean < 0.45 and ev.after_ci.mean > 0.8
    assert ev.after_ci.low > ev.before_ci.high
    assert maml.steps == 10 and maml.training  # evaluation leaves the learner as it was
    proto = ProtoNet(nn.Identity())
    ev = evaluate(proto, episodes)
    assert ev.before == ev.after and ev.after_ci.mean > 0.8


def test_zero_steps_are_measured_once(monkeypatch):
    """Zero inner steps: "after" is "before", and the episodes are adapted to once."""
    episodes = draw_episodes(_source(k=3), 10, seed=0)
    maml = MAML(nn.Linear(8, 4), lr=0.5, steps=10)
    calls = []
    real = evaluation.accuracies
    monkeypatch.setattr(evaluation, "accuracies",
                        lambda learner, eps, steps=None, *a, **k: calls.append(steps)
                        or real(learner, eps, steps, *a, **k))
    ev = evaluate(maml, episodes, steps=0)
    assert calls == [0] and ev.before == ev.after == real(maml, episodes, 0)
    calls.clear()
    evaluate(maml, episodes)  # the learner's own 10 steps, then 0
    assert calls == [None, 0]


def test_adaptation_overrides_and_restores():
    maml = MAML(nn.Linear(8, 4), lr=0.5, steps=3)
    with adaptation(maml, steps=0, lr=0.1):
        assert (maml.steps, maml.lr) == (0, 0.1)
    assert (maml.steps, maml.lr) == (3, 0.5)
    with pytest.raises(ConfigError, match="no inner steps or learning rate"):
        with adaptation(ProtoNet(nn.Identity()), steps=2):
            pass
    with pytest.raises(ConfigError, match="learns its inner step sizes"):
        with adaptation(MetaSGD(nn.Linear(8, 4)), lr=0.2):
            pass
    with pytest.raises(ConfigError, match="must be >= 0"):
        with adaptation(maml, steps=-1):
            pass


def test_curve_over_inner_steps_rises():
    torch.manual_seed(0)
    episodes = draw_episodes(_source(k=3), 30, seed=1)
    learner = ProtoMAML(nn.Linear(8, 8), lr=0.1, steps=0)
    points = curve(lambda s: evaluate(learner, episodes, steps=s).after, [0, 5, 20])
    assert [x for x, _ in points] == [0, 5, 20]
    means = [iv.mean for _, iv in points]
    assert means[0] == pytest.approx(evaluate(learner, episodes).before_ci.mean)
    assert means[2] >= means[0] and all(iv.n == 30 for _, iv in points)


def test_curve_over_shots_rises():
    learner = ProtoNet(nn.Identity())
    points = curve(lambda k: evaluate(learner, draw_episodes(_source(noise=2.0, k=k), 60, 0)).after,
                   [1, 10])
    (_, one), (_, ten) = points
    assert ten.low > one.high  # ten shots give far better prototypes than one


def test_select_adaptation_picks_the_best_setting_on_the_given_episodes():
    torch.manual_seed(0)
    learner = MAML(nn.Linear(8, 4), lr=1e-4, steps=1)
    episodes = draw_episodes(_source(noise=0.3, k=5), 20, seed=3)
    choice = select_adaptation(learner, episodes, steps=[0, 5], lrs=[1e-4, 0.5])
    assert set(choice.scores) == {(0, 1e-4), (5, 1e-4), (5, 0.5)}  # zero steps tried once
    assert (choice.steps, choice.lr) == (5, 0.5)
    assert choice.score == max(choice.scores.values()) > choice.scores[(0, 1e-4)] + 0.2
    assert (learner.steps, learner.lr) == (1, 1e-4), "the learner's own settings are restored"
    meta_sgd = select_adaptation(MetaSGD(nn.Linear(8, 4), lr=0.5), episodes, [0, 1], [0.1, 1.0])
    assert set(meta_sgd.scores) == {(0, None), (1, None)}, "Meta-SGD's step sizes are learned"
    with pytest.raises(ConfigError, match="at least one"):
        select_adaptation(learner, episodes, steps=[], lrs=[0.1])


def _learners() -> dict[str, Learner]:
    from metabook.implicit import IMAML

    torch.manual_seed(0)
    mlp = lambda: nn.Sequential(nn.Linear(8, 16), nn.Tanh(), nn.Linear(16, 4))  # noqa: E731
    return {"MAML": MAML(mlp(), lr=0.3, steps=2),
            "MetaSGD": MetaSGD(mlp(), lr=0.3, steps=2),
            "ANIL": ANIL(nn.Sequential(nn.Linear(8, 16), nn.Tanh()), nn.Linear(16, 4), lr=0.3),
            "Reptile": Reptile(mlp(), lr=0.3),
            "ProtoMAML": ProtoMAML(nn.Linear(8, 16), lr=0.3, first_order=False),
            "ProtoMAML, first order": ProtoMAML(nn.Linear(8, 16), lr=0.3, first_order=True),
            "ProtoMAML, head only": ProtoMAML(nn.Linear(8, 16), lr=0.3, adapt_encoder=False),
            "IMAML (adapted once per step count)": IMAML(mlp(), lr=0.3, steps=2)}


@pytest.mark.parametrize("name", list(_learners()))
def test_accuracies_along_one_adaptation_are_the_accuracies_of_each(name):
    learner = _learners()[name]
    episodes = draw_episodes(_source(noise=2.0, k=2), 12, seed=0)
    steps, lr = [0, 1, 3, 6], None if isinstance(learner, MetaSGD) else 0.7
    along = accuracies_along(learner, episodes, steps, lr)
    alone = {n: accuracies(learner, episodes, n, lr) for n in steps}
    assert along == alone  # exactly: the same states, read off one trajectory
    assert evaluation._adapts_along(learner) == (not name.startswith("IMAML"))
    assert len({tuple(v) for v in alone.values()}) > 1  # the step counts do differ
    assert learner.steps == _learners()[name].steps and learner.training


def test_select_adaptation_scores_are_those_of_separate_runs():
    learner = _learners()["ProtoMAML, first order"]
    episodes = draw_episodes(_source(noise=2.0, k=2), 12, seed=1)
    choice = select_adaptation(learner, episodes, [0, 1, 4], [0.1, 1.0])
    assert list(choice.scores) == [(0, 0.1), (1, 0.1), (1, 1.0), (4, 0.1), (4, 1.0)]
    assert choice.scores == {(n, lr): statistics.fmean(accuracies(learner, episodes, n, lr))
                             for n, lr in choice.scores}
