"""Open every page of the built book in headless Chromium and report what a reader would see broken.

The checker serves a built HTML site (``_build/html``) with ``python -m http.server`` on
127.0.0.1, and opens ``index.html``, every page the Sphinx build wrote (from its search index)
and every page any of them links to. Each page is opened
in Debian's Chromium, driven through chromedriver by Selenium, with all traffic that is not
for 127.0.0.1 blocked. On every page it checks that:

* no JavaScript error is raised (uncaught exceptions, rejected promises, ``console.error``);
* every request the page makes succeeds, and none leaves 127.0.0.1 (a blocked request to
  the internet is a problem: the book must read offline);
* every image loads and decodes;
* every internal link resolves, including its ``#fragment``;
* every equation (``.math`` element) is typeset by MathJax, without TeX errors;
* notebook pages show the outputs of their code cells and no error traceback;
* a page built from a notebook (``_sources/<page>.ipynb``) has a Colab button pointing at
  that notebook in the repository.

It saves full-page screenshots of the front page and the first chapters of the table of
contents, prints every page it visits and each problem, and exits 1 on any problem (2 when
Chromium or the built site is missing)::

    python tests/browser/check_book.py --site _build/html --config _config.yml \\
        --screenshots _build/screenshots
"""
from __future__ import annotations

import argparse
import base64
import contextlib
import http.client
import json
import re
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import unquote, urldefrag, urljoin, urlsplit

import yaml
from selenium import webdriver
from selenium.common.exceptions import TimeoutException
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.remote.webdriver import WebDriver
from selenium.webdriver.support.wait import WebDriverWait

DEFAULT_CHROMIUM = Path("/usr/bin/chromium")
DEFAULT_CHROMEDRIVER = Path("/usr/bin/chromedriver")
INSTALL_HINT = (
    "install Debian's chromium and chromium-driver: `make chromium` "
    "(as root: apt-get install -y --no-install-recommends chromium chromium-driver)"
)
COLAB = "https://colab.research.google.com"
# The flags the browser check starts Chromium with; networking flags are added per run.
CHROMIUM_FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
    "--hide-scrollbars",
    "--force-device-scale-factor=1",
    "--window-size=1280,900",
)
PAGE_TIMEOUT_S = 30
SCRIPT_TIMEOUT_S = 20
NETWORK_IDLE_TIMEOUT_S = 5.0
SCREENSHOT_MAX_HEIGHT = 12000

Log = Callable[[str], None]


class BrowserMissing(RuntimeError):
    """Chromium or chromedriver is not installed where the checker looks for it."""


@dataclass(frozen=True)
class Problem:
    """One thing a reader would see broken on one page."""

    page: str
    kind: str
    detail: str

    def __str__(self) -> str:
        return f"{self.page}: [{self.kind}] {self.detail}"


@dataclass
class Report:
    """What one run of the checker saw."""

    pages: list[str] = field(default_factory=list)
    problems: list[Problem] = field(default_factory=list)
    screenshots: list[Path] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """Pages were checked and none had a problem."""
        return not self.problems and bool(self.pages)


# --------------------------------------------------------------------------- the expected Colab link


def colab_prefix_from_config(config: Path) -> str:
    """The Colab URL prefix that jupyter-book's launch button should use, from ``_config.yml``.

    ``repository: {url: https://github.com/OWNER/NAME, branch: B, path_to_book: P}`` gives
    ``https://colab.research.google.com/github/OWNER/NAME/blob/B/P/``; the page's notebook path
    is appended to it.
    """
    settings = yaml.safe_load(config.read_text(encoding="utf-8")) or {}
    repo = settings.get("repository") or {}
    url = str(repo.get("url", ""))
    match = re.fullmatch(r"https://github\.com/([\w.-]+)/([\w.-]+?)(?:\.git)?/?", url)
    if not match:
        raise ValueError(f"{config}: repository.url must be https://github.com/OWNER/NAME, got {url!r}")
    branch = str(repo.get("branch") or "main").strip("/")
    book_dir = str(repo.get("path_to_book") or "").strip("/")
    colab = str((settings.get("launch_buttons") or {}).get("colab_url") or COLAB).rstrip("/")
    parts = [colab, "github", match.group(1), match.group(2), "blob", branch] + ([book_dir] if book_dir else [])
    return "/".join(parts) + "/"


# --------------------------------------------------------------------------- serving and the browser


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextlib.contextmanager
def serve(site: Path, startup_timeout_s: float = 10.0) -> Iterator[str]:
    """Serve ``site`` with ``python -m http.server`` on 127.0.0.1 and a free port; yield its base URL."""
    last_error = ""
    for _ in range(3):  # another process may take the free port before the server binds it
        port = _free_port()
        with tempfile.TemporaryFile() as server_log:
            server = subprocess.Popen(
                [sys.executable, "-m", "http.server", str(port), "--bind", "127.0.0.1",
                 "--directory", str(site)],
                stdout=server_log, stderr=server_log,
            )
            try:
                deadline = time.monotonic() + startup_timeout_s
                while server.poll() is None and time.monotonic() < deadline:
                    with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.2):
                        break
                    time.sleep(0.05)
                else:
                    server_log.seek(0)
                    last_error = server_log.read().decode(errors="replace")[-2000:]
                    continue
                yield f"http://127.0.0.1:{port}/"
                return
            finally:
                server.terminate()
                try:
                    server.wait(timeout=5)
                except subprocess.TimeoutExpired:
                    server.kill()
                    server.wait()
    raise RuntimeError(f"could not start python -m http.server for {site}:\n{last_error}")


def launch_chromium(chromium: Path, chromedriver: Path, user_data_dir: Path) -> WebDriver:
    """Start headless Chromium through chromedriver, able to reach 127.0.0.1 and nothing else.

    Every other host fails fast: names do not resolve, and all non-loopback traffic is sent to
    a proxy on a closed local port (Chromium never proxies loopback). Console and network
    events are recorded for :func:`check_site` to read.
    """
    for binary in (chromium, chromedriver):
        if not binary.is_file():
            raise BrowserMissing(f"{binary} not found: {INSTALL_HINT}")
    options = webdriver.ChromeOptions()
    options.binary_location = str(chromium)
    for flag in CHROMIUM_FLAGS:
        options.add_argument(flag)
    options.add_argument(f"--user-data-dir={user_data_dir}")
    options.add_argument(f"--proxy-server=http://127.0.0.1:{_free_port()}")
    options.add_argument("--host-resolver-rules=MAP * ~NOTFOUND , EXCLUDE 127.0.0.1")
    options.set_capability("goog:loggingPrefs", {"browser": "ALL", "performance": "ALL"})
    driver = webdriver.Chrome(service=Service(executable_path=str(chromedriver)), options=options)
    driver.set_page_load_timeout(PAGE_TIMEOUT_S)
    driver.set_script_timeout(SCRIPT_TIMEOUT_S)
    driver.execute_cdp_cmd("Network.enable", {})
    driver.execute_cdp_cmd("Network.setCacheDisabled", {"cacheDisabled": True})
    return driver


# --------------------------------------------------------------------------- what runs in the page

# Links, ids, images, equations, notebook cells and launch buttons of the page, once images
# have decoded and MathJax has finished its first typesetting pass.
_INSPECT_JS = """
const done = arguments[arguments.length - 1];
const settle = (promise, ms) => Promise.race([promise, new Promise(r => setTimeout(r, ms))]);
const images = Array.from(document.images);
images.forEach(img => { if (img.loading === 'lazy') img.loading = 'eager'; });
const decoded = Promise.allSettled(images.map(img => img.decode()));
const mj = window.MathJax;
const typeset = mj && mj.startup && mj.startup.promise ? mj.startup.promise : Promise.resolve();
Promise.all([settle(decoded, 10000), settle(typeset.catch(() => null), 10000)]).then(([results]) => {
  const outcome = results || [];
  const math = Array.from(document.querySelectorAll('.math'));
  const cells = Array.from(document.querySelectorAll('div.cell'));
  // Cut by code points: a cut inside a surrogate pair (MathJax's math italic letters are
  // outside the BMP) makes a string the driver cannot deserialize.
  const text = el => Array.from((el.innerText || el.textContent || '').trim().replace(/\\s+/g, ' '))
    .slice(0, 120).join('');
  const hasContent = el => text(el) !== '' ||
    el.querySelector('img, svg, canvas, table, iframe, video, mjx-container') !== null;
  done({
    url: location.href,
    title: document.title,
    links: Array.from(document.querySelectorAll('a[href]')).map(a => a.href),
    ids: Array.from(document.querySelectorAll('[id], a[name]')).map(el => el.id || el.getAttribute('name')),
    images: images.map((img, i) => ({
      src: img.getAttribute('src') || '',
      url: img.currentSrc || img.src,
      ok: !!outcome[i] && outcome[i].status === 'fulfilled' && img.naturalWidth > 0,
    })),
    mathjax: !!(mj && mj.version),
    math: math.map(el => ({
      typeset: el.querySelector('mjx-container') !== null,
      error: el.querySelector('mjx-merror') ? (el.querySelector('mjx-merror').getAttribute('data-mjx-error')
                                              || text(el)) : null,
      source: text(el),
    })),
    cells: cells.map(cell => {
      const outputs = Array.from(cell.querySelectorAll('.cell_output'));
      const traceback = cell.querySelector('.output.traceback, .output.error');
      return {
        input: cell.querySelector('.cell_input') ? text(cell.querySelector('.cell_input')) : '',
        outputs: outputs.length,
        shown: outputs.filter(hasContent).length,
        traceback: traceback ? text(traceback) : null,
      };
    }),
    colab: Array.from(document.querySelectorAll('a[href^="COLAB"]')).map(a => a.href),
    toc: Array.from(document.querySelectorAll('nav.bd-docs-nav li.toctree-l1 > a[href], li.toctree-l1 > a[href]'))
      .map(a => a.href),
  });
});
""".replace("COLAB", COLAB)


# --------------------------------------------------------------------------- the checker


@dataclass
class _Link:
    source: str  # page path the link is on
    url: str  # absolute URL with any fragment


class _Checker:
    """One crawl of one served site; see :func:`check_site`."""

    def __init__(self, driver: WebDriver, base: str, colab_prefix: str | None, log: Log) -> None:
        self.driver = driver
        self.base = base
        self.colab_prefix = colab_prefix
        self.log = log
        self.report = Report()
        self.status: dict[str, tuple[int, str]] = {}  # URL (no fragment) -> (HTTP status, content type)
        self.ids: dict[str, set[str]] = {}  # URL of a checked page -> the ids on it
        self.links: list[_Link] = []
        self.shown: str | None = None  # the page in the browser, whose late events are still arriving

    # ---- helpers

    def rel(self, url: str) -> str:
        """A URL of the site as a path relative to its root (``book/intro.html``)."""
        path = urldefrag(url)[0]
        return path[len(self.base):] if path.startswith(self.base) else path

    def internal(self, url: str) -> bool:
        """Whether ``url`` is on the served site."""
        return urlsplit(url).netloc == urlsplit(self.base).netloc and url.startswith(("http:", "https:"))

    def problem(self, page: str, kind: str, detail: str) -> None:
        found = Problem(page, kind, detail)
        if found not in self.report.problems:
            self.report.problems.append(found)
            self.log(f"  PROBLEM {found}")

    def fetch_status(self, url: str) -> tuple[int, str]:
        """HTTP status and content type of a URL of the served site (cached; fragment and query dropped)."""
        key = urlsplit(url)._replace(query="", fragment="").geturl()
        if key not in self.status:
            request = urllib.request.Request(key, method="HEAD")
            try:
                with urllib.request.urlopen(request, timeout=10) as response:
                    self.status[key] = (response.status, response.headers.get_content_type())
            except urllib.error.HTTPError as err:
                self.status[key] = (err.code, "")
            except (urllib.error.URLError, http.client.HTTPException, OSError) as err:
                self.status[key] = (0, str(err))
        return self.status[key]

    def favicon_probe(self, request: dict) -> bool:
        """Whether a ``Network.requestWillBeSent`` is Chromium's own look for ``/favicon.ico``.

        The browser makes it for a site without an icon; the page does not, and it may never finish.
        """
        url = request.get("request", {}).get("url", "")
        return request.get("type") == "Other" and self.internal(url) and urlsplit(url).path == "/favicon.ico"

    def meta_refresh(self, url: str) -> str | None:
        """Where a ``<meta http-equiv="refresh">`` page sends the reader (absolute URL), if it is one."""
        with urllib.request.urlopen(url, timeout=10) as response:
            html = response.read(65536).decode("utf-8", errors="replace")
        for tag in re.findall(r"<meta\b[^>]*>", html, flags=re.I):
            if re.search(r"http-equiv\s*=\s*[\"']?refresh", tag, flags=re.I):
                content = re.search(r"content\s*=\s*(?:\"([^\"]*)\"|'([^']*)')", tag, flags=re.I)
                value = (content.group(1) or content.group(2)) if content else ""
                target = re.sub(r"^\s*\d*\s*;?\s*(url\s*=\s*)?", "", value, flags=re.I).strip("'\" ")
                return urljoin(url, target) if target else url
        return None

    def read_events(self) -> tuple[list[dict], list[dict]]:
        """Console entries and network events recorded since the last call."""
        console = self.driver.get_log("browser")
        network = [json.loads(entry["message"])["message"] for entry in self.driver.get_log("performance")]
        return console, network

    def settle_network(self, network: list[dict]) -> list[dict]:
        """Add network events until every request the page started has ended (or a timeout)."""
        events = list(network)
        deadline = time.monotonic() + NETWORK_IDLE_TIMEOUT_S
        while time.monotonic() < deadline:
            pending: set[str] = set()
            for event in events:
                params = event.get("params", {})
                if event["method"] == "Network.requestWillBeSent" and not self.favicon_probe(params) and \
                        params.get("request", {}).get("url", "").startswith("http"):
                    pending.add(params["requestId"])
                elif event["method"] in ("Network.loadingFinished", "Network.loadingFailed"):
                    pending.discard(params.get("requestId"))
            if not pending:
                break
            time.sleep(0.1)
            events += self.read_events()[1]
        return events

    def flush(self) -> None:
        """Check what the page still in the browser logged after it was checked."""
        console, network = self.read_events()
        if self.shown is not None:
            self.check_console(self.shown, console)
            self.check_network(self.shown, network)

    # ---- one page

    def visit(self, url: str) -> tuple[str, dict] | None:
        """Open one page and check it; return its URL and what :data:`_INSPECT_JS` saw.

        A page that redirects (``index.html`` of a jupyter-book) is followed in the browser, as a
        reader would be, and the page it leads to is checked in its place. ``None`` when there is
        nothing to check: a redirect to a page already checked, or one that does not load.
        """
        page = self.rel(url)
        target = self.meta_refresh(url)
        self.flush()
        self.shown = None
        self.driver.get(url)
        if target is not None:
            self.links.append(_Link(page, target))
            self.report.pages.append(page)
            self.log(f"visit {page} -> redirects to {self.rel(target)}")
            target = urldefrag(target)[0]
            if target in self.ids or not self.internal(target) or self.fetch_status(target)[0] != 200:
                return None  # already checked, or reported as a broken link
            try:
                WebDriverWait(self.driver, PAGE_TIMEOUT_S).until(
                    lambda d: urldefrag(d.current_url)[0] == target
                    and d.execute_script("return document.readyState") == "complete")
            except TimeoutException:
                self.problem(page, "redirect", f"the browser did not go on to {self.rel(target)}")
                return None
            url, page = target, self.rel(target)
        self.shown = page
        seen = self.driver.execute_async_script(_INSPECT_JS)
        console, network = self.read_events()
        network = self.settle_network(network)
        self.report.pages.append(page)
        self.ids[url] = set(seen["ids"])
        self.links += [_Link(page, link) for link in seen["links"]]
        internal = sum(1 for link in seen["links"] if self.internal(link))
        typeset = sum(1 for m in seen["math"] if m["typeset"])
        self.log(
            f"visit {page}: {internal} internal links, {len(seen['images'])} images, "
            f"{typeset}/{len(seen['math'])} equations typeset, {len(seen['cells'])} code cells"
            + (f", Colab -> {seen['colab'][0]}" if seen["colab"] else "")
        )
        self.check_console(page, console)
        self.check_network(page, network)
        self.check_images(page, seen["images"])
        self.check_math(page, seen)
        self.check_cells(page, seen["cells"])
        self.check_colab(page, seen["colab"])
        return url, seen

    def screenshot(self, path: Path) -> None:
        """Save the page in the browser, whole (up to :data:`SCREENSHOT_MAX_HEIGHT` pixels tall), as a PNG.

        The viewport is stretched to the page's height for the shot, so the page lays out as for a
        reader at the top of it, then put back.
        """
        width, height = self.driver.execute_script(
            "window.scrollTo(0, 0); const d = document.documentElement;"
            "return [window.innerWidth, Math.max(d.scrollHeight, document.body ? document.body.scrollHeight : 0)];")
        metrics = {"width": width, "height": max(1, min(height, SCREENSHOT_MAX_HEIGHT)),
                   "deviceScaleFactor": 1, "mobile": False}
        self.driver.execute_cdp_cmd("Emulation.setDeviceMetricsOverride", metrics)
        try:
            shot = self.driver.execute_cdp_cmd("Page.captureScreenshot", {"format": "png"})
        finally:
            self.driver.execute_cdp_cmd("Emulation.clearDeviceMetricsOverride", {})
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(base64.b64decode(shot["data"]))
        self.report.screenshots.append(path)
        self.log(f"  screenshot {path}")

    # ---- the checks

    def check_console(self, page: str, console: list[dict]) -> None:
        """JavaScript errors: every SEVERE console entry that is not a failed request (the network check's)."""
        for entry in console:
            if entry.get("level") == "SEVERE" and entry.get("source") != "network":
                message = entry.get("message", "").replace(self.base, "/")
                self.problem(page, "javascript", message[:300])

    def check_network(self, page: str, events: list[dict]) -> None:
        """Every request stays on 127.0.0.1 and succeeds."""
        urls: dict[str, str] = {}
        for event in events:
            params = event.get("params", {})
            method = event["method"]
            if method == "Network.requestWillBeSent":
                url = params.get("request", {}).get("url", "")
                if not url.startswith(("http:", "https:", "ws:", "wss:")):
                    continue
                if self.favicon_probe(params):
                    continue
                urls[params["requestId"]] = url
                if not self.internal(url):
                    self.problem(page, "external request", f"{params.get('type', 'request')} {url} "
                                 "(blocked: the book must read offline)")
            elif method == "Network.responseReceived":
                response = params.get("response", {})
                if params.get("requestId") in urls and int(response.get("status", 200)) >= 400:
                    self.problem(page, "failed request", f"{params.get('type', 'request')} "
                                 f"{self.rel(response.get('url', ''))} -> HTTP {response['status']}")
            elif method == "Network.loadingFailed":
                url = urls.get(params.get("requestId", ""), "")
                if self.internal(url) and not params.get("canceled"):
                    self.problem(page, "failed request",
                                 f"{params.get('type', 'request')} {self.rel(url)} -> {params.get('errorText')}")

    def check_images(self, page: str, images: list[dict]) -> None:
        """Every ``<img>`` loads and decodes."""
        for image in images:
            if not image["ok"]:
                self.problem(page, "broken image", f"{image['src'] or '(no src)'} does not load")

    def check_math(self, page: str, seen: dict) -> None:
        """Every ``.math`` element holds MathJax output, and none of it is a TeX error."""
        math = seen["math"]
        untypeset = [m for m in math if not m["typeset"]]
        if untypeset:
            why = "MathJax did not load" if not seen["mathjax"] else "MathJax left them as text"
            first = untypeset[0]["source"]
            self.problem(page, "equation not typeset",
                         f"{len(untypeset)} of {len(math)} equations not typeset ({why}); first: {first!r}")
        for m in math:
            if m["error"]:
                self.problem(page, "equation error", f"TeX error {m['error']!r} in {m['source']!r}")

    def check_cells(self, page: str, cells: list[dict]) -> None:
        """A notebook page shows the outputs of its code cells, and none of them is an error."""
        if cells and not any(cell["shown"] and not cell["traceback"] for cell in cells):
            self.problem(page, "no cell output",
                         f"none of its {len(cells)} code cells shows an output (was the notebook executed?)")
        for number, cell in enumerate(cells, 1):
            if cell["outputs"] and not cell["shown"]:
                self.problem(page, "no cell output", f"code cell {number} has an empty output: {cell['input']!r}")
            if cell["traceback"]:
                self.problem(page, "cell error", f"code cell {number} shows an error: {cell['traceback']!r}")

    def check_colab(self, page: str, colab: list[str]) -> None:
        """A page built from ``chapters/x.ipynb`` launches exactly that notebook in Colab."""
        if self.colab_prefix is None:
            return
        notebook = f"{page.removesuffix('.html')}.ipynb"
        is_notebook = self.fetch_status(self.base + f"_sources/{notebook}")[0] == 200
        expected = self.colab_prefix + notebook
        if is_notebook and not colab:
            self.problem(page, "colab", f"no Colab launch button (expected {expected})")
        for href in colab:
            if not is_notebook or href != expected:
                self.problem(page, "colab", f"Colab button points at {href}, expected "
                             + (expected if is_notebook else "no Colab button on a page not built from a notebook"))

    def check_links(self) -> None:
        """Every internal link resolves, and its fragment names an element of the target page."""
        for link in self.links:
            if not self.internal(link.url):
                continue
            target, fragment = urldefrag(link.url)
            status, _ = self.fetch_status(target)
            if status != 200:
                self.problem(link.source, "broken link", f"{self.rel(link.url)} -> "
                             + (f"HTTP {status}" if status else "no response"))
                continue
            ids = self.ids.get(urlsplit(target)._replace(query="").geturl())
            if fragment and ids is not None and unquote(fragment) not in ids:
                self.problem(link.source, "broken link",
                             f"{self.rel(target)}#{fragment}: no element with id {unquote(fragment)!r}")

    # ---- the crawl

    def run(self, start: str, also: list[str], screenshots: Path | None, chapters: int, max_pages: int) -> Report:
        """Visit ``start``, the pages in ``also`` and every page they link to; then check the links."""
        queue = list(dict.fromkeys(self.base + page for page in [start, *also]))
        queued = set(queue)
        shoot: dict[str, Path] = {}  # URL of a page -> where to save its screenshot
        front: str | None = None
        while queue and len(self.report.pages) < max_pages:
            url = queue.pop(0)
            status, content_type = self.fetch_status(url)
            if url in self.ids or status != 200 or content_type != "text/html":
                continue  # checked already, or not a page: a missing one is reported by the links to it
            first_new_link = len(self.links)
            visited = self.visit(url)
            if visited is not None:
                url, seen = visited
                if front is None:
                    front = url
                    if screenshots is not None:
                        shoot[url] = screenshots / "00-front-page.png"
                        for n, chapter in enumerate(self.toc_chapters(seen, url)[:chapters], 1):
                            name = self.rel(chapter).removesuffix(".html").replace("/", "-")
                            shoot[chapter] = screenshots / f"{n:02d}-{name}.png"
                if url in shoot:
                    self.screenshot(shoot[url])
            for link in self.links[first_new_link:]:
                target = urlsplit(link.url)._replace(query="", fragment="").geturl()
                if self.internal(target) and target not in queued:
                    queued.add(target)
                    queue.append(target)
        self.flush()
        if queue:
            self.problem("(site)", "too many pages", f"stopped after {max_pages} pages; {len(queue)} not visited")
        if front is None:
            self.problem(start, "no front page", "the start page leads to no page the browser could check")
        for url, path in shoot.items():
            if path not in self.report.screenshots:
                self.problem(self.rel(url), "screenshot", f"{path.name} not taken: the page could not be opened")
        self.check_links()
        return self.report

    def toc_chapters(self, seen: dict, front: str) -> list[str]:
        """The pages the front page's table of contents lists, in order, without the front page."""
        chapters: list[str] = []
        for href in seen["toc"]:
            page = urldefrag(href)[0]
            if self.internal(page) and page != front and page not in chapters:
                chapters.append(page)
        return chapters


def sphinx_pages(site: Path) -> list[str]:
    """Every page a Sphinx build wrote, linked or not: its documents (from ``searchindex.js``) and indices."""
    index = site / "searchindex.js"
    if not index.is_file():
        return []
    match = re.search(r'"docnames"\s*:\s*(\[[^\]]*\])', index.read_text(encoding="utf-8"))
    documents = [f"{name}.html" for name in json.loads(match.group(1))] if match else []
    special = [name for name in ("genindex.html", "py-modindex.html", "search.html", "_modules/index.html")
               if (site / name).is_file()]
    return documents + special


def check_site(
    site: Path,
    *,
    colab_prefix: str | None = None,
    screenshots: Path | None = None,
    chapters: int = 2,
    chromium: Path = DEFAULT_CHROMIUM,
    chromedriver: Path = DEFAULT_CHROMEDRIVER,
    start: str = "index.html",
    max_pages: int = 500,
    log: Log = print,
) -> Report:
    """Serve ``site``, open every page in headless Chromium, and report.

    The pages are ``start``, every page a Sphinx build of ``site`` wrote (:func:`sphinx_pages`),
    and every page they link to.

    ``colab_prefix`` (see :func:`colab_prefix_from_config`) turns on the Colab button check.
    With ``screenshots``, the front page and the first ``chapters`` pages of its table of
    contents are saved there as PNG files.
    """
    site = Path(site)
    if not (site / start).is_file():
        raise FileNotFoundError(f"{site / start} does not exist: build the book first (make book)")
    if screenshots is not None:
        for old in Path(screenshots).glob("[0-9][0-9]-*.png"):  # a previous run's, maybe of other pages
            old.unlink()
    with tempfile.TemporaryDirectory(prefix="book-check-chromium-") as profile, serve(site) as base:
        log(f"browser check: serving {site} at {base}, Chromium profile {profile}")
        driver = launch_chromium(Path(chromium), Path(chromedriver), Path(profile))
        try:
            checker = _Checker(driver, base, colab_prefix, log)
            return checker.run(start, sphinx_pages(site), screenshots, chapters, max_pages)
        finally:
            driver.quit()


def main(argv: list[str] | None = None) -> int:
    """Command line: check a built site; exit 0 when no page has a problem, 1 when one has, 2 when it cannot run."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--site", type=Path, default=Path("_build/html"), help="the built HTML (default: %(default)s)")
    parser.add_argument("--config", type=Path, help="the book's _config.yml, for the expected Colab links")
    parser.add_argument("--colab-prefix", help="expected Colab URL prefix (overrides --config)")
    parser.add_argument("--screenshots", type=Path, help="folder for screenshots of the front page and first chapters")
    parser.add_argument("--chapters", type=int, default=2, help="how many chapters to screenshot (default: %(default)s)")
    parser.add_argument("--chromium", type=Path, default=DEFAULT_CHROMIUM, help="default: %(default)s")
    parser.add_argument("--chromedriver", type=Path, default=DEFAULT_CHROMEDRIVER, help="default: %(default)s")
    args = parser.parse_args(argv)

    prefix = args.colab_prefix or (colab_prefix_from_config(args.config) if args.config else None)
    started = time.monotonic()
    try:
        report = check_site(args.site, colab_prefix=prefix, screenshots=args.screenshots, chapters=args.chapters,
                            chromium=args.chromium, chromedriver=args.chromedriver)
    except (BrowserMissing, FileNotFoundError) as err:
        print(f"browser check: {err}", file=sys.stderr)
        return 2
    elapsed = time.monotonic() - started
    print(f"browser check: {len(report.pages)} pages visited, {len(report.problems)} problems, "
          f"{len(report.screenshots)} screenshots, {elapsed:.1f} s")
    for found in report.problems:
        print(f"  {found}")
    if not report.ok:
        print("browser check: FAILED", file=sys.stderr)
        return 1
    print("browser check: passed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
