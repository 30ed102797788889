"""show_source: the library's code with its file and lines, as Markdown or as plain text."""
from __future__ import annotations

import inspect

from metabook.learners import GradientLearner
from metabook.source import show_source, source_of


def test_source_names_the_file_and_the_lines_it_came_from():
    src = source_of(GradientLearner.split_params)
    lines, start = inspect.getsourcelines(GradientLearner.split_params)
    assert (src.path, src.start, src.end) == ("metabook/learners.py", start, start + len(lines) - 1)
    assert src.code.startswith("def split_params(self)")  # dedented out of the class
    with open(inspect.getsourcefile(GradientLearner)) as f:
        assert f.read().splitlines()[src.start - 1].strip() == "def split_params(self) -> " \
                                                               "tuple[Params, Params]:"
    assert src.markdown().startswith(f"`metabook/learners.py`, lines {src.start}–{src.end}:\n\n"
                                     "```python\ndef split_params")
    assert src.markdown().endswith("\n```") and src._repr_markdown_() == src.markdown()


def test_outside_a_notebook_it_prints_plain_text(capsys):
    show_source(source_of)
    out = capsys.readouterr().out
    assert out.startswith("metabook/source.py, lines ") and "def source_of(obj: Any)" in out
    assert "```" not in out


def test_in_a_notebook_it_displays_markdown(monkeypatch):
    import IPython
    import IPython.display

    shown = []
    monkeypatch.setattr(IPython, "get_ipython", lambda: object())
    monkeypatch.setattr(IPython.display, "display", shown.append)
    show_source(source_of)
    assert len(shown) == 1 and isinstance(shown[0], IPython.display.Markdown)
    assert shown[0].data == source_of(source_of).markdown()
