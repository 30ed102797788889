"""The diagrams of metabook.figures: what they draw, that they draw it the same way every time,
and that they cope with small and large settings."""
from __future__ import annotations

import io

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt
import pytest

from metabook import figures
from metabook.errors import ConfigError

DIAGRAMS = {
    "episode": lambda **kw: figures.episode(3, 2, 2, **kw),
    "smlmt_task": lambda **kw: figures.smlmt_task(**kw),
    "bilevel_path": lambda **kw: figures.bilevel_path(3, 2, **kw),
    "gradient_graphs": lambda **kw: figures.gradient_graphs(2, **kw),
    "task_distribution": lambda **kw: figures.task_distribution(5, **kw),
    "pipeline": lambda **kw: figures.pipeline(**kw),
}


@pytest.fixture(autouse=True)
def close_figures():
    yield
    plt.close("all")


def texts(ax) -> list[str]:
    return [t.get_text() for t in ax.texts]


def gids(ax, prefix: str) -> list[str]:
    artists = list(ax.patches) + list(ax.lines) + list(ax.texts)
    return [a.get_gid() for a in artists if (a.get_gid() or "").startswith(prefix)]


def png(ax) -> bytes:
    buffer = io.BytesIO()
    ax.figure.savefig(buffer, format="png", dpi=40, metadata={"Software": None})
    return buffer.getvalue()


@pytest.mark.parametrize("name", DIAGRAMS)
def test_draws_into_a_given_axes_and_returns_it(name):
    fig, (left, right) = plt.subplots(1, 2)
    assert DIAGRAMS[name](ax=right) is right
    assert not left.patches and not left.texts, "drew outside the axes it was given"
    assert right.figure is fig


@pytest.mark.parametrize("name", DIAGRAMS)
def test_same_arguments_give_the_same_picture(name):
    first, second = png(DIAGRAMS[name]()), png(DIAGRAMS[name]())
    assert first == second


@pytest.mark.parametrize("name", DIAGRAMS)
def test_restyled_by_the_property_cycle(name):
    plain = png(DIAGRAMS[name]())
    with plt.style.context({"axes.prop_cycle": matplotlib.cycler(color=["#000000", "#777777"])}):
        restyled = png(DIAGRAMS[name]())
    assert plain != restyled


def test_episode_draws_every_example_with_its_label():
    ax = figures.episode(4, 3, 2, classes=["sports", "food", "ai", "money"])
    assert len(gids(ax, "support:")) == 4 * 3 and len(gids(ax, "query:")) == 4 * 2
    shown = texts(ax)
    assert ax.get_title() == "4-way 3-shot episode"
    assert "label 0: sports" in shown and "label 3: money" in shown
    assert shown.count("?") == 4 * 2, "every query example is to be predicted"
    assert shown.count("2") == 3, "each support example carries its episode label"
    assert any(t.startswith("support set S\n4 × 3") for t in shown)
    assert any(t.startswith("query set Q\n4 × 2") for t in shown)


@pytest.mark.parametrize("n, k, m", [(1, 1, 1), (2, 1, 15), (5, 5, 5), (50, 100, 30)])
def test_episode_small_and_large(n, k, m):
    ax = figures.episode(n, k, m, max_shown=6)
    drawn_rows = min(n, 5) if n > 6 else n
    drawn_support = (min(k, 5) if k > 6 else k) * drawn_rows
    assert len(gids(ax, "support:")) == drawn_support
    assert f"{n} × {k}" in " ".join(texts(ax)), "the titles keep the true counts"
    if n > 6:
        assert "⋮" in texts(ax) and f"label {n - 1}: class {n - 1}" in texts(ax)


def test_episode_rejects_bad_input():
    with pytest.raises(ConfigError, match="n_way must be a positive integer"):
        figures.episode(0, 1, 1)
    with pytest.raises(ConfigError, match="one per class"):
        figures.episode(3, 1, 1, classes=["a", "b"])


def test_smlmt_task_masks_the_chosen_words_and_labels_by_position():
    sentences = ["the cat sat", "a cat ran", "my dog barks", "the dog sleeps", "a cat and a dog"]
    ax = figures.smlmt_task(sentences, ["dog", "cat"], per_word=2)
    shown = texts(ax)
    assert shown.index("my dog barks") < shown.index("the cat sat"), "dog was chosen first"
    assert "my [MASK] barks" in shown and "the [MASK] sleeps" in shown
    assert "the [MASK] sat" in shown and "a [MASK] ran" in shown
    assert shown.count("label 0") == 2 and shown.count("label 1") == 2
    assert any(t.startswith("1. choose N = 2 words: dog → 0, cat → 1") for t in shown)
    assert not any("dog" in t and "[MASK]" in t for t in shown if "barks" in t or "sleeps" in t)
    assert len(gids(ax, "word:")) == 2


def test_smlmt_task_large_and_long():
    names = [f"target{chr(97 + i)}" for i in range(12)]
    long = ["start " + " ".join(["filler"] * (30 + i)) + f" {names[i % 12]} end" for i in range(40)]
    ax = figures.smlmt_task(long, names, per_word=3, max_shown=4,
                            width=30)
    assert len(gids(ax, "word:")) == 3, "three word blocks and an ellipsis for twelve words"
    masked = [t for t in texts(ax) if "[MASK]" in t]
    assert masked and all(len(t) <= 30 for t in masked), "long sentences are cut around the mask"
    assert all(t.startswith("… ") and t.endswith("[MASK] end") for t in masked), "cut at whole words"


def test_smlmt_task_uses_a_repeated_sentence_once():
    with pytest.raises(ConfigError, match="'cat' occurs in 1 of the 2 sentences"):
        figures.smlmt_task(["the cat sat", "The cat sat", "a dog"], ["cat"], per_word=2)


def test_smlmt_task_rejects_a_word_without_sentences():
    with pytest.raises(ConfigError, match="'zebra' occurs in 0 of the 9 sentences"):
        figures.smlmt_task(chosen=["zebra"])


def test_bilevel_path_labels_every_adapted_point():
    ax = figures.bilevel_path(4, 3)
    shown = texts(ax)
    for i in range(1, 5):
        assert f"$\\theta'_{{{i}}}$" in shown
    assert len(gids(ax, "inner:")) == 4 * 3, "one arrow per inner step per task"
    assert len(gids(ax, "meta-gradient:")) == 4 and gids(ax, "outer") == ["outer"]
    assert "$\\theta$" in shown


@pytest.mark.parametrize("tasks, steps", [(1, 1), (2, 5), (40, 10)])
def test_bilevel_path_small_and_large(tasks, steps):
    ax = figures.bilevel_path(tasks, steps, max_shown=8)
    assert len(gids(ax, "adapted:")) == tasks
    assert sum("theta'" in t and "mathcal" not in t for t in texts(ax)) == min(tasks, 8)


def test_gradient_graphs_contrast_the_two_backward_passes():
    ax = figures.gradient_graphs(3)
    shown = texts(ax)
    assert "second order (MAML)" in shown and "first order (first-order MAML)" in shown
    for j in range(3):
        assert f"$I - \\alpha H_{{{j}}}$" in shown, "the exact pass multiplies by every step"
    assert len(gids(ax, "second:backward:")) == 4, "back through every node"
    assert sorted(gids(ax, "first:backward:")) == ["first:backward:query", "first:backward:skip"]
    assert len(gids(ax, "second:node:")) == len(gids(ax, "first:node:")) == 5


@pytest.mark.parametrize("steps", [1, 2, 4, 5, 30])
def test_gradient_graphs_small_and_large(steps):
    ax = figures.gradient_graphs(steps, max_shown=4)
    nodes = len(gids(ax, "second:node:"))
    assert nodes == (steps + 2 if steps <= 4 else 4 + 2)
    assert ("…" in texts(ax)) == (steps > 4)


def test_task_distribution_names_tasks_and_the_shared_knowledge():
    ax = figures.task_distribution(["english", "yoruba", "tamil"])
    shown = texts(ax)
    assert {"english", "yoruba", "tamil"} <= set(shown)
    assert any("meta-knowledge" in t for t in shown)
    assert any("p(\\mathcal{T})" in t for t in shown)
    assert len(gids(ax, "adapt:")) == 4, "each task and the new one adapt from the centre"
    assert gids(ax, "new-task") == ["new-task"]
    ax = figures.task_distribution(2, new_task=None)
    assert not gids(ax, "new-task") and len(gids(ax, "task:")) == 2


@pytest.mark.parametrize("n", [1, 12, 100])
def test_task_distribution_small_and_large(n):
    ax = figures.task_distribution(n, max_shown=12)
    assert len(gids(ax, "task:")) == min(n, 11 if n > 12 else n)
    if n > 12:
        assert f"… {n - 11} more" in texts(ax)


def test_task_distribution_rejects_no_tasks():
    with pytest.raises(ConfigError, match="tasks is empty"):
        figures.task_distribution([])


def test_pipeline_draws_the_stages_in_order_with_resume():
    ax = figures.pipeline()
    names = [name for name, _ in figures.PIPELINE_STAGES]
    assert names == ["data", "tasks", "learner", "trainer", "checkpoints", "evaluation"]
    shown = texts(ax)
    positions = [shown.index(n) for n in names]
    assert positions == sorted(positions)
    xs = [ax.texts[i].get_position()[0] for i in positions]
    assert xs == sorted(xs), "left to right"
    assert len(gids(ax, "flow:")) == 5 and "resume" in shown
    assert all(any(f"metabook.{m}" in t for t in shown)
               for m in ["corpora", "tasks", "learners", "training", "checkpoint", "evaluation"])
    assert "resume" not in texts(figures.pipeline(resume=False))


def test_pipeline_custom_stages():
    ax = figures.pipeline([("read", "a file"), ("train", "a model")] * 6)
    assert len(gids(ax, "stage:")) == 12 and "resume" not in texts(ax)
    with pytest.raises(ConfigError, match="stages is empty"):
        figures.pipeline([])
