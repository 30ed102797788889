"""Task builders and samplers: shapes, seeds, and errors that name the problem."""
from __future__ import annotations

import pytest
import torch

from metabook.errors import TaskError
from metabook.samplers import (CurriculumSampler, ProportionalSampler, TemperatureSampler,
                               UniformSampler)
from metabook.tasks import EpisodeSource, SMLMTSource
from metabook.text import pad_batch
from metabook.text import MASK, Vocab, words


def _source(n_classes=5, per_class=6, name="src", dim=3):
    x = torch.arange(n_classes * per_class * dim, dtype=torch.float).view(-1, dim)
    y = [f"c{i % n_classes}" for i in range(n_classes * per_class)]
    return EpisodeSource(x, y, n_way=3, k_shot=2, q_query=3, name=name)


def test_episode_shapes_labels_and_disjoint_support_query():
    task = _source().sample(torch.Generator().manual_seed(0))
    assert task.support_x.shape == (6, 3) and task.query_x.shape == (9, 3)
    assert task.support_y.tolist() == [0, 0, 1, 1, 2, 2]
    assert task.query_y.tolist() == [0, 0, 0, 1, 1, 1, 2, 2, 2]
    rows = {tuple(r) for r in task.support_x.tolist()}
    assert rows.isdisjoint({tuple(r) for r in task.query_x.tolist()})
    assert len(set(task.classes)) == 3 and task.n_way == 3


def test_episodes_are_repeatable_with_a_seed_and_differ_across_seeds():
    src = _source()
    a = src.sample(torch.Generator().manual_seed(7))
    b = src.sample(torch.Generator().manual_seed(7))
    c = src.sample(torch.Generator().manual_seed(8))
    assert torch.equal(a.support_x, b.support_x) and a.classes == b.classes
    assert not torch.equal(a.support_x, c.support_x)


def test_episode_from_texts_uses_the_encoder():
    texts = [f"sentence {i}" for i in range(12)]
    labels = [i % 2 for i in range(12)]
    src = EpisodeSource(texts, labels, 2, 2, 1, encode=lambda xs: torch.tensor([len(x) for x in xs]))
    task = src.sample(torch.Generator().manual_seed(0))
    assert task.support_x.dtype == torch.long and task.support_x.shape == (4,)


@pytest.mark.parametrize("kwargs, message", [
    (dict(n_way=6, k_shot=1, q_query=1), r"5 classes but N=6"),
    (dict(n_way=3, k_shot=4, q_query=3), r"K\+Q=4\+3=7 examples, fewer than N=3"),
    (dict(n_way=0, k_shot=1, q_query=1), r"need n_way >= 1"),
])
def test_impossible_requests_name_the_numbers_and_the_source(kwargs, message):
    x = torch.zeros(30, 2)
    y = [i % 5 for i in range(30)]
    with pytest.raises(TaskError, match=message) as err:
        EpisodeSource(x, y, name="my-corpus", **kwargs)
    assert "my-corpus" in str(err.value)


def test_empty_source_is_an_error():
    with pytest.raises(TaskError, match="empty"):
        EpisodeSource([], [], 2, 1, 1, name="nothing")


SENTENCES = [
    "the river flows past the old mill", "a river can flood the valley",
    "the mill grinds wheat every morning", "bread is made from wheat flour",
    "the valley is green in spring", "spring rain fills the river",
    "wheat grows in the valley", "the old mill stands by the river",
    "morning light on the valley", "flour from the mill makes bread",
]


def test_smlmt_masks_the_chosen_word_and_labels_by_word():
    vocab = Vocab.build(words(s) for s in SENTENCES)
    src = SMLMTSource(SENTENCES, vocab, n_way=2, k_shot=2, q_query=1, max_len=10)
    assert {"river", "mill", "valley", "wheat"} <= set(src.words)
    task = src.sample(torch.Generator().manual_seed(0))
    assert task.support_x.shape == (4, 10) and task.query_x.shape == (2, 10)
    mask = vocab.stoi[MASK]
    for x, y in zip(torch.cat([task.support_x, task.query_x]), torch.cat([task.support_y, task.query_y])):
        word = task.classes[int(y)]
        assert mask in x.tolist(), "every sentence shows the mask"
        assert vocab.stoi[word] not in x.tolist(), "the masked word itself is gone"


def test_smlmt_long_sentence_keeps_the_mask_inside_the_window():
    sentences = [" ".join(["filler"] * 40 + ["target"])] * 3 + ["target word"] * 3
    vocab = Vocab.build(words(s) for s in sentences)
    src = SMLMTSource(sentences, vocab, n_way=2, k_shot=1, q_query=1, max_len=8)
    task = src.sample(torch.Generator().manual_seed(0))
    assert all(vocab.mask_id in row.tolist() for row in task.support_x)


def test_smlmt_errors_on_too_few_words_or_empty_input():
    vocab = Vocab.build(words(s) for s in SENTENCES)
    with pytest.raises(TaskError, match="fewer than N=50"):
        SMLMTSource(SENTENCES, vocab, n_way=50, k_shot=1, q_query=1)
    with pytest.raises(TaskError, match="no non-empty sentences"):
        SMLMTSource(["", "   "], vocab, n_way=2, k_shot=1, q_query=1)


def test_pad_batch_pads_and_cuts():
    out = pad_batch([[1, 2, 3], [4]], pad_id=0, length=2)
    assert out.tolist() == [[1, 2], [4, 0]]


def _sources():
    return [_source(per_class=6, name="small"), _source(per_class=24, name="big")]


def test_sampler_probabilities():
    small, big = 30.0, 120.0
    assert UniformSampler(_sources()).probabilities().tolist() == [0.5, 0.5]
    torch.testing.assert_close(ProportionalSampler(_sources()).probabilities(),
                               torch.tensor([small, big]) / (small + big))
    p = TemperatureSampler(_sources(), alpha=0.5).probabilities()
    torch.testing.assert_close(p, torch.tensor([small, big]).sqrt() / (small ** .5 + big ** .5))
    with pytest.raises(TaskError, match="alpha"):
        TemperatureSampler(_sources(), alpha=-1)


def test_sampler_draw_frequencies_follow_probabilities():
    sampler = ProportionalSampler(_sources(), seed=3)
    names = [sampler.sample().source for _ in range(2000)]
    share = names.count("big") / len(names)
    assert abs(share - 0.8) < 0.03


def test_curriculum_opens_sources_from_easy_to_all():
    sampler = CurriculumSampler(_sources(), warmup=10)
    assert sampler.probabilities().tolist() == [0.0, 1.0]  # the bigger source is easier by default
    sampler.sample_batch(10)
    assert sampler.probabilities().tolist() == [0.5, 0.5]


def test_sampler_state_round_trip_continues_the_same_stream():
    a = TemperatureSampler(_sources(), seed=11)
    a.sample_batch(5)
    state = a.state_dict()
    rest = a.sample_batch(4)
    b = TemperatureSampler(_sources(), seed=999)
    b.load_state_dict(state)
    again = b.sample_batch(4)
    assert [t.classes for t in rest] == [t.classes for t in again]
    assert all(torch.equal(x.support_x, y.support_x) for x, y in zip(rest, again))
    with pytest.raises(TaskError, match="sources"):
        UniformSampler([_source(name="other")]).load_state_dict(state)


def test_sources_need_distinct_names():
    with pytest.raises(TaskError, match="distinct names"):
        UniformSampler([_source(name="x"), _source(name="x")])
