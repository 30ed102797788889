"""Write each <script> once: Sphinx 7.4 repeats inline scripts added after the builder starts.

sphinx-thebe's ``const THEBE_JS_URL = ...`` is one of them, and its second copy is a JavaScript
SyntaxError on every page. Fixed upstream in Sphinx 8.2 (sphinx-doc/sphinx#13402), which
jupyter-book 1.x cannot use.
"""
from __future__ import annotations

from typing import Any


def _drop_repeated_scripts(app: Any, pagename: str, templatename: str, context: dict, doctree: Any) -> None:
    """Keep the first of identical scripts (same file or body, attributes and priority) on a page."""
    scripts = context.get("script_files")
    if not isinstance(scripts, list):
        return
    seen: set[tuple] = set()
    unique = []
    for script in scripts:
        key = (str(script.filename or ""), script.priority, tuple(sorted(script.attributes.items())))
        if key not in seen:
            seen.add(key)
            unique.append(script)
    scripts[:] = unique


def setup(app: Any) -> dict[str, bool]:
    """Run after the other ``html-page-context`` handlers, which may add scripts of their own."""
    app.connect("html-page-context", _drop_repeated_scripts, priority=900)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
