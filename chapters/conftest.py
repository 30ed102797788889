"""Run each chapter once for both checks.

``make notebooks`` executes every chapter under nbval. This plugin keeps the
outputs each cell produced there and, for every chapter whose cells all
passed, stores the executed notebook in jupyter-book's execution cache (the
``execute.cache`` folder of ``_config.yml``). The book build that follows then
renders those outputs instead of executing every chapter a second time. A
chapter that failed, or whose code changed since, is not found in the cache
and the book build executes it itself.
"""
from __future__ import annotations

import copy
from pathlib import Path

import pytest
import yaml
from nbval.plugin import IPyNbCell

ROOT = Path(__file__).resolve().parents[1]
_executed: dict[Path, dict] = {}  # notebook path -> {"nb": executed copy, "failed": bool}


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo):
    outcome = yield
    if not isinstance(item, IPyNbCell) or call.when != "call":
        return
    record = _executed.setdefault(Path(item.parent.path),
                                  {"nb": copy.deepcopy(item.parent.nb), "failed": False, "count": 0})
    if outcome.get_result().failed or item.test_outputs is None:
        record["failed"] = True
        return
    record["count"] += 1
    cell = [c for c in record["nb"].cells if c.cell_type == "code"][item.cell_num]
    cell.outputs = copy.deepcopy(item.test_outputs)
    cell.execution_count = record["count"]
    for out in cell.outputs:
        if out.output_type == "execute_result":
            out.execution_count = record["count"]


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    from jupyter_cache import get_cache
    from jupyter_cache.base import CacheBundleIn

    config = yaml.safe_load((ROOT / "_config.yml").read_text())
    cache = get_cache(ROOT / config["execute"]["cache"])
    for path, record in _executed.items():
        n_code = sum(c.cell_type == "code" for c in record["nb"].cells)
        if record["failed"] or record["count"] != n_code:
            continue
        cache.cache_notebook_bundle(CacheBundleIn(record["nb"], str(path)),
                                    check_validity=False, overwrite=True)
