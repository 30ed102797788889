"""Diagrams of the book's ideas, drawn with matplotlib so that they can be reused and restyled.

Each function draws one idea into a matplotlib ``Axes`` and returns it: pass ``ax=`` to
draw into a panel of your own figure, or leave it out to get a new figure
(``ax.figure``). Colours come from the current property cycle and fonts from
``rcParams``, so ``matplotlib.pyplot.style.context(...)`` restyles every diagram.
Every drawn box carries a ``gid`` that says what it is (``"support:2:0"``: the
support example of row 2, column 0), which lets tests and readers find the parts::

    >>> ax = episode(n_way=3, k_shot=2, q_query=1)
    >>> sum(p.get_gid().startswith("support:") for p in ax.patches)
    6

The diagrams: :func:`episode` (an N-way K-shot episode), :func:`smlmt_task` (a
self-supervised task built from sentences), :func:`bilevel_path` (the inner and
outer loops in parameter space), :func:`gradient_graphs` (first- against
second-order meta-gradients), :func:`task_distribution` (tasks sharing
meta-knowledge) and :func:`pipeline` (the stages of a meta-pretraining run).
"""
from __future__ import annotations

import math
import textwrap
from typing import Sequence

import matplotlib.pyplot as plt
from matplotlib.axes import Axes
from matplotlib.patches import Ellipse, FancyBboxPatch

from metabook.errors import ConfigError
from metabook.text import MASK, words

__all__ = ["episode", "smlmt_task", "bilevel_path", "gradient_graphs", "task_distribution",
           "pipeline", "EXAMPLE_SENTENCES", "PIPELINE_STAGES"]

#: Sentences for :func:`smlmt_task` when none are given (written for this module).
EXAMPLE_SENTENCES = (
    "I listen to music every morning.",
    "Which music do you like best?",
    "The music was too loud last night.",
    "The weather is lovely today.",
    "What will the weather be like tomorrow?",
    "Bad weather kept us at home.",
    "She wrote a book about robots.",
    "This book has a happy ending.",
    "Can you recommend a good book?",
)


# --------------------------------------------------------------------------- shared helpers


def _colours(n: int) -> list:
    """``n`` colours from the current property cycle (repeated when it is shorter)."""
    cycle = plt.rcParams["axes.prop_cycle"].by_key().get("color", ["C0"])
    return [cycle[i % len(cycle)] for i in range(n)]


def _new_axes(ax: Axes | None, figsize: tuple[float, float]) -> Axes:
    if ax is None:
        _, ax = plt.subplots(figsize=figsize)
    ax.set_axis_off()
    return ax


def _positive(**values: int) -> None:
    for name, value in values.items():
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ConfigError(f"{name} must be a positive integer, got {value!r}")


def _shown(n: int, most: int) -> list[int | None]:
    """Indices to draw out of ``n``: all of them, or the first ``most - 1``, a gap (None), the last."""
    if most < 2:
        raise ConfigError(f"max_shown must be at least 2, got {most}")
    if n <= most:
        return list(range(n))
    return list(range(most - 2)) + [None, n - 1]


def _box(ax: Axes, x: float, y: float, w: float, h: float, text: str = "", *, gid: str,
         face="white", edge="black", alpha: float = 1.0, fontsize=None, lw: float = 1.0,
         ls: str = "-", weight: str = "normal", pad: float = 0.02) -> FancyBboxPatch:
    """A rounded box with lower-left corner (x, y) and ``text`` centred in it."""
    patch = FancyBboxPatch((x, y), w, h, boxstyle=f"round,pad={pad}", facecolor=face,
                           edgecolor=edge, alpha=alpha, lw=lw, ls=ls)
    patch.set_gid(gid)
    ax.add_patch(patch)
    if text:
        ax.text(x + w / 2, y + h / 2, text, ha="center", va="center", fontsize=fontsize,
                weight=weight)
    return patch


def _arrow(ax: Axes, start, end, *, colour="black", ls: str = "-", lw: float = 1.2,
           rad: float = 0.0, gid: str = "arrow", shrink: float = 2.0) -> None:
    annotation = ax.annotate("", xy=end, xytext=start, arrowprops=dict(
        arrowstyle="-|>", color=colour, ls=ls, lw=lw, shrinkA=shrink, shrinkB=shrink,
        connectionstyle=f"arc3,rad={rad}"))
    annotation.set_gid(gid)


def _finish(ax: Axes, xlim, ylim, equal: bool = True) -> Axes:
    ax.set_xlim(*xlim)
    ax.set_ylim(*ylim)
    if equal:
        ax.set_aspect("equal")
    return ax


# --------------------------------------------------------------------------- an N-way K-shot episode


def episode(n_way: int = 3, k_shot: int = 2, q_query: int = 2, *,
            classes: Sequence[str] | None = None, max_shown: int = 6,
            ax: Axes | None = None) -> Axes:
    """An N-way K-shot episode: K labelled support examples and M query examples per class.

    Each row is one of the ``n_way`` classes, relabelled 0..N-1 for this episode
    (``classes`` names them). Support examples show their label; query examples
    show a "?", because the learner must predict them. Beyond ``max_shown`` rows
    or columns the middle ones are replaced by an ellipsis and the panel titles
    keep the true counts.

    >>> ax = episode(n_way=5, k_shot=1, q_query=3, classes=list("abcde"))
    >>> ax.get_title()
    '5-way 1-shot episode'
    >>> sum(p.get_gid().startswith("query:") for p in ax.patches)
    15
    """
    _positive(n_way=n_way, k_shot=k_shot, q_query=q_query)
    names = [f"class {i}" for i in range(n_way)] if classes is None else [str(c) for c in classes]
    if len(names) != n_way:
        raise ConfigError(f"classes has {len(names)} names for n_way={n_way}; give one per class")
    ax = _new_axes(ax, (9, 0.55 * min(n_way, max_shown) + 2.2))
    rows, support_cols, query_cols = (_shown(n, max_shown) for n in (n_way, k_shot, q_query))
    colours = _colours(n_way)
    label_w, cell, gap = 3.4, 0.8, 0.2
    step = cell + gap
    height = len(rows) * step

    def panel(x0: float, cols: list[int | None], kind: str) -> float:
        for r, row in enumerate(rows):
            y = height - (r + 1) * step + gap / 2
            for c, col in enumerate(cols):
                x = x0 + c * step
                if row is None:   # the gap row: one vertical ellipsis per panel
                    if c == 0:
                        ax.text(x + cell / 2, y + cell / 2, "⋮", ha="center", va="center")
                    continue
                if col is None:
                    ax.text(x + cell / 2, y + cell / 2, "…", ha="center", va="center")
                    continue
                if kind == "support":
                    _box(ax, x, y, cell, cell, str(row), gid=f"support:{row}:{col}",
                         face=colours[row], alpha=0.85, edge=colours[row])
                else:
                    _box(ax, x, y, cell, cell, "?", gid=f"query:{row}:{col}",
                         face="white", edge=colours[row], lw=2)
        return x0 + len(cols) * step

    for r, row in enumerate(rows):
        y = height - (r + 0.5) * step
        text = "⋮" if row is None else f"label {row}: {textwrap.shorten(names[row], 18, placeholder='…')}"
        ax.text(label_w - 0.2, y, text, ha="right", va="center")
    support_end = panel(label_w, support_cols, "support")
    query_start = support_end + 1.2
    query_end = panel(query_start, query_cols, "query")
    top = height + 0.15
    ax.text((label_w + support_end) / 2, top, f"support set S\n{n_way} × {k_shot} labelled",
            ha="center", va="bottom", weight="bold")
    ax.text((query_start + query_end) / 2, top, f"query set Q\n{n_way} × {q_query} to predict",
            ha="center", va="bottom", weight="bold")
    _arrow(ax, (support_end + 0.05, height / 2), (query_start - 0.05, height / 2), gid="adapt")
    ax.text((support_end + query_start) / 2, height / 2 - 0.25, "adapt,\nthen\npredict",
            ha="center", va="top", fontsize="small")
    ax.set_title(f"{n_way}-way {k_shot}-shot episode")
    return _finish(ax, (0, query_end + 0.2), (-0.9, top + 1.1))


# --------------------------------------------------------------------------- an SMLMT task


def smlmt_task(sentences: Sequence[str] = EXAMPLE_SENTENCES,
               chosen: Sequence[str] = ("music", "weather", "book"), *, per_word: int = 2,
               max_shown: int = 6, width: int = 44, ax: Axes | None = None) -> Axes:
    """How a self-supervised SMLMT task is built: choose words, mask them, label by position.

    For each word of ``chosen`` (in order, so the word at position n gets label n),
    the first ``per_word`` sentences that contain it are shown as they are, with
    every occurrence of the word replaced by ``[MASK]``, and with the label. Words
    are matched as whole, lower-cased tokens (:func:`metabook.text.words`); a
    sentence that occurs twice is used once, and a long one is cut to the whole
    words around the mask that fit in ``width`` characters.

    >>> ax = smlmt_task()
    >>> [t.get_text() for t in ax.texts if t.get_text().startswith("label")][:2]
    ['label 0', 'label 0']
    >>> smlmt_task(["no such word here"], ["music"])
    Traceback (most recent call last):
    metabook.errors.ConfigError: 'music' occurs in 0 of the 1 sentences, fewer than per_word=2; choose words that occur more often or lower per_word
    """
    _positive(per_word=per_word)
    chosen = [w.lower() for w in chosen]
    if not chosen:
        raise ConfigError("chosen is empty: name at least one word to mask")
    tokenised = list({tuple(words(s)): None for s in sentences})   # each sentence once, in order
    examples = []
    for word in chosen:
        found = [list(t) for t in tokenised if word in t][:per_word]
        if len(found) < per_word:
            raise ConfigError(f"{word!r} occurs in {len(found)} of the {len(tokenised)} sentences, "
                              f"fewer than per_word={per_word}; choose words that occur more "
                              f"often or lower per_word")
        examples.append(found)
    shown = _shown(len(chosen), max_shown)
    line_h = 0.8
    n_lines = sum(per_word if i is not None else 1 for i in shown)
    ax = _new_axes(ax, (11, 0.42 * n_lines + 2.0))
    colours = _colours(len(chosen))
    x_text, x_masked, x_label, right = 0.2, 6.6, 13.0, 14.6

    def fit(tokens: list[str], word: str) -> str:
        # Keep the whole tokens around the word (where the mask is) that fit in `width`.
        at = tokens.index(word)
        start, end = at, at + 1
        while True:
            grown = False
            for s, e in ((start, end + 1), (start - 1, end)):
                if 0 <= s and e <= len(tokens) and len(" ".join(tokens[s:e])) + 4 <= width:
                    start, end, grown = s, e, True
            if not grown:
                break
        return ("… " if start else "") + " ".join(tokens[start:end]) + (" …" if end < len(tokens) else "")

    y = n_lines * line_h
    for i in shown:
        if i is None:
            y -= line_h
            ax.text(x_masked, y + line_h / 2, "⋮", ha="center", va="center")
            continue
        word = chosen[i]
        block = per_word * line_h
        _box(ax, 0.05, y - block + 0.06, right - 0.1, block - 0.12, gid=f"word:{i}",
             face=colours[i], edge=colours[i], alpha=0.18)
        for tokens in examples[i]:
            y -= line_h
            masked = [MASK if t == word else t for t in tokens]
            ax.text(x_text, y + line_h / 2, fit(tokens, word), va="center", fontsize="small")
            ax.text(x_masked, y + line_h / 2, fit(masked, MASK), va="center", fontsize="small",
                    family="monospace")
            ax.text(x_label + 0.6, y + line_h / 2, f"label {i}", va="center", ha="center",
                    weight="bold", color=colours[i])
    top = n_lines * line_h + 0.15
    words_line = ", ".join(f"{w} → {n}" for n, w in enumerate(chosen[:max_shown]))
    words_line += ", …" if len(chosen) > max_shown else ""
    ax.text(x_text, top + 1.0, f"1. choose N = {len(chosen)} words: {words_line}",
            va="bottom", weight="bold")
    for x, text in [(x_text, "2. sentences that contain the word"),
                    (x_masked, "3. the word masked (the input)"),
                    (x_label - 0.2, "4. the label")]:
        ax.text(x, top + 0.2, text, va="bottom", weight="bold", fontsize="small")
    return _finish(ax, (0, right), (-0.2, top + 1.8), equal=False)


# --------------------------------------------------------------------------- the bi-level path


def bilevel_path(n_tasks: int = 3, inner_steps: int = 2, *, max_shown: int = 8,
                 ax: Axes | None = None) -> Axes:
    """The two loops in parameter space: θ → θ'_i (inner) → query loss → meta-gradient (outer).

    From the shared start θ, each task's inner loop takes ``inner_steps``
    gradient steps on its support set towards its own optimum and ends at
    θ'_i; the query loss is measured there, and its gradient with respect to θ,
    taken *through* the inner steps and summed over tasks, moves θ. Tasks
    beyond ``max_shown`` are drawn without labels.

    >>> ax = bilevel_path(n_tasks=2, inner_steps=1)
    >>> sorted(t.get_text() for t in ax.texts if t.get_text().startswith("$\\\\theta'"))
    ["$\\\\theta'_{1}$", "$\\\\theta'_{2}$"]
    """
    _positive(n_tasks=n_tasks, inner_steps=inner_steps)
    ax = _new_axes(ax, (7.5, 6.2))
    colours = _colours(n_tasks)
    radius, reach = 4.0, 0.62   # task optima on a circle; the inner loop covers `reach` of the way
    ends = []
    for i in range(n_tasks):
        angle = math.pi / 2 + 2 * math.pi * (i + 0.5) / n_tasks + 0.35
        optimum = (radius * math.cos(angle), radius * math.sin(angle))
        labelled = i < max_shown
        ax.plot(*optimum, marker="*", ms=12 if labelled else 7, color=colours[i], ls="none",
                gid=f"optimum:{i}")
        point = (0.0, 0.0)
        for j in range(inner_steps):
            share = reach * (1 - (1 - 0.5) ** (j + 1)) / (1 - 0.5 ** inner_steps)
            nxt = (optimum[0] * share, optimum[1] * share)
            _arrow(ax, point, nxt, colour=colours[i], gid=f"inner:{i}:{j}", shrink=1)
            point = nxt
        ax.plot(*point, "o", color=colours[i], ms=7 if labelled else 4, gid=f"adapted:{i}")
        ends.append(point)
        # The meta-gradient of this task's query loss flows back to θ through the inner steps.
        _arrow(ax, point, (0.0, 0.0), colour="grey", ls=":", lw=1.0, rad=0.3,
               gid=f"meta-gradient:{i}", shrink=4)
        if labelled:
            side = "left" if point[0] >= -0.05 else "right"
            lx = point[0] + (0.25 if side == "left" else -0.25)
            ax.text(lx, point[1] + 0.2, f"$\\theta'_{{{i + 1}}}$", fontsize="large",
                    va="bottom", ha=side)
            ax.text(lx, point[1] - 0.1, f"query loss $\\mathcal{{L}}(\\theta'_{{{i + 1}}}; Q_{{{i + 1}}})$",
                    fontsize="small", va="top", ha=side, color=colours[i])
    # The outer step: along the mean direction of the adapted points (a sketch of the sum).
    mx = sum(p[0] for p in ends) / n_tasks
    my = sum(p[1] for p in ends) / n_tasks
    norm = math.hypot(mx, my)
    if norm < 1e-9:   # symmetric tasks: draw the outer step in a fixed direction
        mx, my, norm = 0.0, -1.0, 1.0
    outer = (1.3 * mx / norm, 1.3 * my / norm)
    _arrow(ax, (0, 0), outer, colour="black", lw=2.5, gid="outer")
    ax.plot(0, 0, "ko", ms=9, gid="theta")
    ax.text(-0.2, 0.25, r"$\theta$", fontsize="x-large", ha="right")
    ax.text(outer[0] - 0.2, outer[1] - 0.15, "outer step", ha="right", va="top", weight="bold")
    ax.text(0, -radius - 1.0,
            "inner loop: $\\theta'_i = U(\\theta, S_i)$, gradient steps on the support set\n"
            "outer loop: $\\theta \\leftarrow \\theta - \\beta\\, \\nabla_\\theta "
            "\\sum_i \\mathcal{L}(\\theta'_i; Q_i)$ (the meta-gradient)",
            ha="center", va="top", fontsize="small")
    ax.plot([], [], "*", color="grey", label="task optimum")
    ax.plot([], [], "o", color="grey", label="adapted parameters $\\theta'_i$")
    ax.plot([], [], ":", color="grey", label="meta-gradient, back through $U$")
    ax.legend(loc="upper right", fontsize="small", frameon=False)
    ax.set_title("Bi-level optimisation in parameter space")
    return _finish(ax, (-radius - 1.4, radius + 1.9), (-radius - 2.4, radius + 1.0))


# --------------------------------------------------------------------------- first vs second order


def gradient_graphs(inner_steps: int = 2, *, max_shown: int = 4, ax: Axes | None = None) -> Axes:
    """The computation graphs of the exact (second-order) and first-order meta-gradients.

    Top: exact MAML. The forward pass runs θ → θ'_1 → … → θ'_J → query loss,
    and the backward pass returns along every inner step, multiplying by
    ``I - αH_j`` (a Hessian-vector product), so every step's graph is kept.
    Bottom: first-order MAML takes the query gradient at θ'_J and hands it to
    θ as if every step were the identity, so no step's graph is needed.

    >>> ax = gradient_graphs(inner_steps=3)
    >>> [t.get_text() for t in ax.texts if t.get_text().startswith("second")]
    ['second order (MAML)']
    """
    _positive(inner_steps=inner_steps, max_shown=max_shown)
    steps = _shown(inner_steps, max_shown)
    ax = _new_axes(ax, (10, 5.6))
    forward, exact, approx = _colours(3)
    w, h, gap = 1.3, 0.8, 0.9
    labels = ["$\\theta$"] + ["…" if j is None else f"$\\theta'_{{{j + 1}}}$" for j in steps]
    labels.append("$\\mathcal{L}(\\theta'_J; Q)$" if inner_steps > 1 else "$\\mathcal{L}(\\theta'_1; Q)$")
    xs = [i * (w + gap) for i in range(len(labels))]
    rows = {"second": 3.3, "first": 0.0}
    for kind, y in rows.items():
        for i, (x, label) in enumerate(zip(xs, labels)):
            width = w + 0.7 if i == len(labels) - 1 else w
            _box(ax, x, y, width, h, label, gid=f"{kind}:node:{i}",
                 face="white", edge=forward, lw=1.5, ls=":" if label == "…" else "-")
        for i in range(len(labels) - 1):
            _arrow(ax, (xs[i] + w, y + h * 0.7), (xs[i + 1], y + h * 0.7), colour=forward,
                   gid=f"{kind}:forward:{i}")
        ax.text(xs[0], y + h + 0.55, {"second": "second order (MAML)",
                                      "first": "first order (first-order MAML)"}[kind],
                weight="bold", va="bottom")
    ax.text((xs[0] + xs[1] + w) / 2, rows["second"] + h + 0.1, "$-\\alpha \\nabla\\mathcal{L}(\\cdot; S)$",
            ha="center", va="bottom", fontsize="small", color=forward)
    # Backward pass of the exact gradient: through every step.
    y = rows["second"]
    for i in range(len(labels) - 1, 0, -1):
        _arrow(ax, (xs[i], y + h * 0.25), (xs[i - 1] + w, y + h * 0.25), colour=exact, lw=2,
               gid=f"second:backward:{i}")
        if 0 < i < len(labels) - 1 and labels[i] != "…":
            j = steps[i - 1]
            ax.text((xs[i - 1] + w + xs[i]) / 2, y - 0.12, f"$I - \\alpha H_{{{j}}}$",
                    ha="center", va="top", fontsize="small", color=exact)
    ax.text(xs[-1] + w + 0.9, y + h / 2, "keeps the graph\nof every step:\nmemory grows with J",
            va="center", fontsize="small", color=exact)
    # Backward pass of the first-order gradient: the query gradient, handed straight to θ.
    y = rows["first"]
    last = len(labels) - 1
    _arrow(ax, (xs[last], y + h * 0.25), (xs[last - 1] + w, y + h * 0.25), colour=approx, lw=2,
           gid="first:backward:query")
    ax.text((xs[last - 1] + w + xs[last]) / 2, y - 0.12, "$g_Q(\\theta'_J)$", ha="center",
            va="top", fontsize="small", color=approx)
    _arrow(ax, (xs[last - 1] + w / 2, y - 0.05), (xs[0] + w / 2, y - 0.05), colour=approx,
           ls="--", lw=1.5, rad=0.12, gid="first:backward:skip")
    ax.text((xs[0] + xs[last - 1] + w) / 2, y - 0.95, "every $\\partial\\theta'_{j+1}/\\partial"
            "\\theta'_j$ treated as $I$", ha="center", va="top", fontsize="small", color=approx)
    ax.text(xs[-1] + w + 0.9, y + h / 2, "frees each step:\nmemory constant in J",
            va="center", fontsize="small", color=approx)
    ax.plot([], [], color=forward, label="forward pass")
    ax.plot([], [], color=exact, lw=2, label="backward pass (exact)")
    ax.plot([], [], color=approx, lw=2, label="backward pass (first order)")
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, 0.02), ncol=3, fontsize="small",
              frameon=False)
    return _finish(ax, (-0.3, xs[-1] + w + 3.4), (-1.6, rows["second"] + h + 1.2))


# --------------------------------------------------------------------------- a task distribution


def task_distribution(tasks: int | Sequence[str] = 6, *,
                      shared: str = "meta-knowledge $\\omega$\n(initialisation $\\theta$,\nstep sizes $\\phi$)",
                      new_task: str | None = "new task\n(unseen)", max_shown: int = 12,
                      ax: Axes | None = None) -> Axes:
    """Tasks drawn from p(T), each with its own support and query set, sharing what is meta-learned.

    ``tasks`` is a number of tasks or their names (languages, domains, users).
    Every task is adapted from the shared meta-knowledge in the centre; the
    ``new_task`` (dashed, left out when None) is one that meta-training never
    saw, drawn from the same distribution.

    >>> ax = task_distribution(["english", "yoruba", "tamil"])
    >>> sorted(t.get_text() for t in ax.texts if t.get_text() in {"english", "yoruba", "tamil"})
    ['english', 'tamil', 'yoruba']
    """
    names = [f"task {i + 1}" for i in range(tasks)] if isinstance(tasks, int) else [str(t) for t in tasks]
    if not names:
        raise ConfigError("tasks is empty: give a number of tasks (at least 1) or their names")
    _positive(tasks=len(names))
    drawn = names if len(names) <= max_shown else names[:max_shown - 1]
    ax = _new_axes(ax, (8, 7))
    colours = _colours(len(drawn))
    radius = 4.2
    ax.add_patch(Ellipse((0, 0), 2 * radius + 3.6, 2 * radius + 3.0, facecolor="none",
                         edgecolor="grey", lw=1.2, ls="-", gid="distribution"))
    ax.text(0, radius + 1.65, "task distribution $p(\\mathcal{T})$", ha="center", va="bottom",
            weight="bold", color="dimgrey")
    _box(ax, -1.65, -0.8, 3.3, 1.6, shared, gid="shared", face="whitesmoke", lw=1.5,
         fontsize="small")
    slots = len(drawn) + (1 if len(names) > len(drawn) else 0) + (1 if new_task else 0)
    bw, bh = 1.9, 1.1
    for i, slot in enumerate(range(slots)):
        angle = math.pi / 2 - 2 * math.pi * slot / slots
        cx, cy = radius * math.cos(angle), radius * math.sin(angle)
        if i < len(drawn):
            _box(ax, cx - bw / 2, cy - bh / 2, bw, bh, gid=f"task:{i}", face=colours[i],
                 edge=colours[i], alpha=0.25)
            ax.text(cx, cy + 0.22, textwrap.shorten(drawn[i], 16, placeholder="…"),
                    ha="center", va="center", fontsize="small", weight="bold")
            for k in range(3):   # three support examples (filled) and two query examples
                ax.plot(cx - 0.6 + 0.3 * k, cy - 0.22, "o", color=colours[i], ms=5)
            for k in range(2):
                ax.plot(cx + 0.35 + 0.3 * k, cy - 0.22, "o", mfc="white", mec=colours[i], ms=5)
            _arrow(ax, (1.9 * math.cos(angle), 1.0 * math.sin(angle)),
                   (cx - 0.55 * bw * math.cos(angle), cy - 0.6 * bh * math.sin(angle)),
                   gid=f"adapt:{i}")
        elif len(names) > len(drawn) and i == len(drawn):
            ax.text(cx, cy, f"… {len(names) - len(drawn)} more", ha="center", va="center",
                    fontsize="small")
        else:
            _box(ax, cx - bw / 2, cy - bh / 2, bw, bh, new_task, gid="new-task", ls="--",
                 fontsize="small")
            _arrow(ax, (1.9 * math.cos(angle), 1.0 * math.sin(angle)),
                   (cx - 0.55 * bw * math.cos(angle), cy - 0.6 * bh * math.sin(angle)),
                   ls="--", gid="adapt:new")
    ax.plot([], [], "o", color="grey", ls="none", label="support example")
    ax.plot([], [], "o", mfc="white", mec="grey", ls="none", label="query example")
    ax.plot([], [], color="black", label="adapt: $\\theta'_i = U_\\phi(\\theta, S_i)$")
    ax.legend(loc="lower center", bbox_to_anchor=(0.5, -0.06), ncol=3, fontsize="small",
              frameon=False)
    return _finish(ax, (-radius - 2.2, radius + 2.2), (-radius - 2.2, radius + 2.4))


# --------------------------------------------------------------------------- the pipeline of a run


#: The stages of a meta-pretraining run and the metabook modules that carry them.
PIPELINE_STAGES = (
    ("data", "metabook.corpora\ntext, splits,\nvocabulary"),
    ("tasks", "metabook.tasks,\nmetabook.samplers\nepisodes, SMLMT, p(T)"),
    ("learner", "metabook.learners\nMAML, Meta-SGD,\nProtoNet, ..."),
    ("trainer", "metabook.training\nouter loop,\nclipping, logs"),
    ("checkpoints", "metabook.checkpoint\nsafetensors + JSON,\nexact resume"),
    ("evaluation", "metabook.evaluation\naccuracy ± 95% CI,\nbaselines"),
)


def pipeline(stages: Sequence[tuple[str, str]] = PIPELINE_STAGES, *, resume: bool = True,
             ax: Axes | None = None) -> Axes:
    """The stages of a run, left to right: data → tasks → learner → trainer → checkpoints → evaluation.

    ``stages`` holds (name, description) pairs; the default names the metabook
    module behind each stage. With ``resume``, an arrow from a stage named
    ``"checkpoints"`` back to ``"trainer"`` shows that a run continues from its
    last checkpoint.

    >>> ax = pipeline()
    >>> [t.get_text() for t in ax.texts if t.get_text() in {"data", "evaluation"}]
    ['data', 'evaluation']
    """
    if not stages:
        raise ConfigError("stages is empty: give at least one (name, description) pair")
    ax = _new_axes(ax, (max(6.0, 2.1 * len(stages)), 3.2))
    colours = _colours(len(stages))
    w, h, gap = 2.1, 1.9, 0.55
    for i, (name, description) in enumerate(stages):
        x = i * (w + gap)
        _box(ax, x, 0, w, h, gid=f"stage:{i}", face=colours[i], edge=colours[i], alpha=0.2, lw=1.5)
        ax.text(x + w / 2, h - 0.3, name, ha="center", va="center", weight="bold")
        ax.text(x + w / 2, h / 2 - 0.25, description, ha="center", va="center", fontsize="x-small")
        if i:
            _arrow(ax, (x - gap, h / 2), (x, h / 2), gid=f"flow:{i}")
    names = [n for n, _ in stages]
    if resume and "checkpoints" in names and "trainer" in names:
        a, b = names.index("checkpoints"), names.index("trainer")
        start = (a * (w + gap) + w / 2, h + 0.05)
        end = (b * (w + gap) + w / 2, h + 0.05)
        _arrow(ax, start, end, ls="--", rad=0.35, gid="resume")
        ax.text((start[0] + end[0]) / 2, h + 0.55, "resume", ha="center", va="bottom",
                fontsize="small")
    right = len(stages) * (w + gap) - gap
    return _finish(ax, (-0.2, right + 0.2), (-0.3, h + 1.1))
