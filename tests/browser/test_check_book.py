"""The browser check finds what a reader would see broken, and passes a site with nothing broken.

Each test builds a tiny site in a temporary folder, shaped like jupyter-book's output (a
redirecting ``index.html``, a sidebar table of contents, ``.math`` equations typeset by the
real MathJax 3 the book ships, notebook cells, a Colab button), and runs the checker on it in
headless Chromium. A broken copy of the site has one planted defect of each kind.

These tests need Debian's chromium and chromium-driver (``make chromium``). Without them they
fail, naming the packages to install: they never skip.
"""
from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

import check_book
from check_book import BrowserMissing, Report, check_site, colab_prefix_from_config, main

pytestmark = pytest.mark.browser

ROOT = Path(__file__).resolve().parents[2]
PREFIX = "https://colab.research.google.com/github/org/repo/blob/main/"
LOGO = (
    '<svg xmlns="http://www.w3.org/2000/svg" width="40" height="20">'
    '<rect width="40" height="20" fill="#236"/></svg>'
)


def _page(title: str, body: str, depth: int = 0, mathjax: bool = True) -> str:
    """One HTML page with the sidebar table of contents, the logo and (optionally) MathJax."""
    up = "../" * depth
    script = (
        '<script>window.MathJax = {options: {processHtmlClass: "math"}};</script>'
        f'<script defer src="{up}_static/mathjax/tex-mml-chtml.js"></script>'
        if mathjax else ""
    )
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>{title}</title>{script}</head>
<body>
<nav class="bd-docs-nav"><ul>
  <li class="toctree-l1"><a class="reference internal" href="{up}intro.html">Home</a></li>
  <li class="toctree-l1"><a class="reference internal" href="{up}chapters/nb.html">1. A chapter</a></li>
  <li class="toctree-l1"><a class="reference internal" href="{up}api.html">API</a></li>
</ul></nav>
<img src="{up}_static/logo.svg" alt="logo">
<main id="main-content"><h1>{title}</h1>
{body}
</main></body></html>
"""


def _cell(source: str, output: str | None) -> str:
    out = f'<div class="cell_output docutils container">{output}</div>' if output is not None else ""
    return f'<div class="cell docutils container"><div class="cell_input"><pre>{source}</pre></div>{out}</div>'


def build_site(root: Path, mathjax: Path, broken: bool) -> Path:
    """Write the fake site into ``root``; with ``broken``, plant one defect of each kind."""
    colab = PREFIX + ("chapters//nb.ipynb" if broken else "chapters/nb.ipynb")
    planted = """
<p><a href="missing.html">a page that does not exist</a> and
   <a href="api.html#nowhere">a section that does not exist</a></p>
<img src="_static/missing.png" alt="an image that does not exist">
<img src="https://example.com/remote.png" alt="an image from the internet">
<script>undefinedFunction();</script>
<p><a href="untypeset.html">equations without MathJax</a></p>
""" if broken else ""
    cells = (
        _cell("print(len(ds))", None) + _cell("ds.shape", None)
        + _cell("1 / 0", '<div class="output traceback"><pre>ZeroDivisionError: division by zero</pre></div>')
        if broken else
        _cell("print(len(ds))", '<div class="output stream"><pre>4403</pre></div>') + _cell("x = 1", None)
        # Letters outside the BMP (MathJax's math italic, \\mathcal): a cut at 120 UTF-16
        # units lands inside a surrogate pair, which the driver cannot deserialize.
        + _cell("t = '" + "\U0001d4af" * 100 + "'", '<div class="output stream"><pre>ok</pre></div>')
    )
    pages = {
        "index.html": '<meta http-equiv="Refresh" content="0; url=intro.html" />',
        "intro.html": _page("Front page", f"""
<p>A model is a mapping <span class="math">\\(f_\\theta: X \\to Y\\)</span>.</p>
<div class="math">\\[\\theta' = \\theta - \\alpha \\nabla_\\theta \\mathcal{{L}}(\\theta; S)\\]</div>
<p>See <a href="chapters/nb.html">chapter 1</a>, <a href="api.html#learners">the learners</a>,
   <a href="#main-content">the top</a> and <a href="https://example.org/">a site on the internet</a>.</p>
{planted}"""),
        "chapters/nb.html": _page("1. A chapter", f"""
<a href="{colab}" class="btn">Colab</a>
<a href="../_sources/chapters/nb.ipynb">download</a>
{cells}""", depth=1),
        "api.html": _page("API", '<section id="learners"><h2>Learners</h2></section>'),
        "_sources/chapters/nb.ipynb": '{"cells": [], "metadata": {}, "nbformat": 4, "nbformat_minor": 5}',
        "_static/logo.svg": LOGO,
    }
    if broken:
        pages["untypeset.html"] = _page("No MathJax", '<p><span class="math">\\(x^2\\)</span></p>', mathjax=False)
    for name, text in pages.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(text, encoding="utf-8")
    (root / "_static/mathjax").symlink_to(mathjax, target_is_directory=True)
    return root


@pytest.fixture(scope="module")
def mathjax() -> Path:
    """The MathJax 3 build the book serves, from the django-static-mathjax package ([book] extra)."""
    spec = importlib.util.find_spec("mathjax")
    if spec is None or spec.origin is None:
        pytest.fail("MathJax is missing: install the [book] extra (pip install -e '.[book,test]')")
    es5 = Path(spec.origin).parent / "static" / "mathjax" / "es5"
    assert (es5 / "tex-mml-chtml.js").is_file(), f"no tex-mml-chtml.js in {es5}"
    return es5


def _run(site: Path, screenshots: Path) -> tuple[Report, list[str]]:
    lines: list[str] = []
    report = check_site(site, colab_prefix=PREFIX, screenshots=screenshots, log=lines.append)
    return report, lines


@pytest.fixture(scope="module")
def clean(tmp_path_factory: pytest.TempPathFactory, mathjax: Path) -> tuple[Report, list[str], Path]:
    root = tmp_path_factory.mktemp("clean")
    report, lines = _run(build_site(root / "site", mathjax, broken=False), root / "shots")
    return report, lines, root / "shots"


@pytest.fixture(scope="module")
def broken(tmp_path_factory: pytest.TempPathFactory, mathjax: Path) -> Report:
    root = tmp_path_factory.mktemp("broken")
    return _run(build_site(root / "site", mathjax, broken=True), root / "shots")[0]


def test_clean_site_passes_and_every_page_is_visited(clean: tuple[Report, list[str], Path]) -> None:
    report, lines, _ = clean
    assert report.problems == [], "\n".join(map(str, report.problems))
    assert report.ok
    assert sorted(report.pages) == ["api.html", "chapters/nb.html", "index.html", "intro.html"]
    log = "\n".join(lines)
    assert "visit index.html -> redirects to intro.html" in log
    assert "visit intro.html: " in log and "2/2 equations typeset" in log
    assert f"Colab -> {PREFIX}chapters/nb.ipynb" in log


def test_screenshots_of_front_page_and_first_two_chapters(clean: tuple[Report, list[str], Path]) -> None:
    report, _, shots = clean
    names = sorted(p.name for p in report.screenshots)
    assert names == ["00-front-page.png", "01-chapters-nb.png", "02-api.png"]
    for path in report.screenshots:
        assert path.parent == shots
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", f"{path} is not a PNG"
        assert path.stat().st_size > 2000, f"{path} looks blank"


PLANTED = [
    # (page, kind, a phrase of the detail)
    ("intro.html", "broken link", "missing.html -> HTTP 404"),
    ("intro.html", "broken link", "api.html#nowhere: no element with id 'nowhere'"),
    ("intro.html", "broken image", "_static/missing.png"),
    ("intro.html", "failed request", "_static/missing.png -> HTTP 404"),
    ("intro.html", "external request", "https://example.com/remote.png"),
    ("intro.html", "broken image", "https://example.com/remote.png"),
    ("intro.html", "javascript", "undefinedFunction is not defined"),
    ("untypeset.html", "equation not typeset", "1 of 1 equations not typeset (MathJax did not load)"),
    ("chapters/nb.html", "colab", f"points at {PREFIX}chapters//nb.ipynb, expected {PREFIX}chapters/nb.ipynb"),
    ("chapters/nb.html", "no cell output", "none of its 3 code cells shows an output"),
    ("chapters/nb.html", "cell error", "ZeroDivisionError"),
]


@pytest.mark.parametrize(("page", "kind", "phrase"), PLANTED, ids=[f"{k}: {p}" for _, k, p in PLANTED])
def test_broken_site_reports_each_planted_defect(broken: Report, page: str, kind: str, phrase: str) -> None:
    found = [p for p in broken.problems if p.page == page and p.kind == kind and phrase in p.detail]
    assert found, f"no [{kind}] problem on {page} mentioning {phrase!r}; found:\n" + "\n".join(
        map(str, broken.problems))


def test_broken_site_reports_nothing_else(broken: Report) -> None:
    unexpected = [
        p for p in broken.problems
        if not any(p.page == page and p.kind == kind and phrase in p.detail for page, kind, phrase in PLANTED)
    ]
    assert unexpected == [], "\n".join(map(str, unexpected))
    assert not broken.ok


def test_command_line_fails_on_a_planted_broken_link(
    tmp_path: Path, mathjax: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    site = build_site(tmp_path / "site", mathjax, broken=False)
    assert main(["--site", str(site), "--colab-prefix", PREFIX]) == 0
    assert "browser check: passed" in capsys.readouterr().out

    (site / "api.html").write_text(
        (site / "api.html").read_text().replace("</main>", '<a href="gone.html">gone</a></main>'))
    assert main(["--site", str(site), "--colab-prefix", PREFIX]) == 1
    out = capsys.readouterr().out
    assert "visit api.html" in out
    assert "api.html: [broken link] gone.html -> HTTP 404" in out


def test_missing_browser_is_an_error_naming_the_packages(tmp_path: Path) -> None:
    (tmp_path / "index.html").write_text("<p>hello</p>")
    with pytest.raises(BrowserMissing, match="apt-get install -y --no-install-recommends chromium chromium-driver"):
        check_site(tmp_path, chromium=tmp_path / "no-chromium", log=lambda line: None)


def test_chromium_is_installed_where_the_checker_looks() -> None:
    for binary in (check_book.DEFAULT_CHROMIUM, check_book.DEFAULT_CHROMEDRIVER):
        assert binary.is_file(), f"{binary} is missing: {check_book.INSTALL_HINT}"


def test_colab_prefix_of_this_book() -> None:
    assert colab_prefix_from_config(ROOT / "_config.yml") == (
        "https://colab.research.google.com/github/metabook-org/metabook/blob/main/")


def test_colab_prefix_normalises_slashes_and_book_path(tmp_path: Path) -> None:
    config = tmp_path / "_config.yml"
    config.write_text(
        "repository:\n  url: https://github.com/o/r/\n  branch: dev\n  path_to_book: docs/\n"
        "launch_buttons:\n  colab_url: https://colab.research.google.com/\n")
    assert colab_prefix_from_config(config) == "https://colab.research.google.com/github/o/r/blob/dev/docs/"
    config.write_text("repository:\n  url: https://gitlab.com/o/r\n")
    with pytest.raises(ValueError, match="github.com"):
        colab_prefix_from_config(config)
