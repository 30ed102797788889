"""Fixtures shared by the unit tests; plain helpers are in ``tests/helpers.py``."""
from __future__ import annotations

import pytest
import torch


@pytest.fixture
def float64():
    """Seed 0 and float64 as the default dtype, for gradient checks that need the precision."""
    torch.manual_seed(0)
    old = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(old)
