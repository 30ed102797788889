"""Register the ``browser`` marker: tests that drive headless Chromium (deselect with ``-m "not browser"``)."""
from __future__ import annotations

import pytest


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "browser: drives headless Chromium; needs Debian's chromium and chromium-driver")
