"""claim(): a stated result that no longer holds stops the page with the sentence in the message."""
from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
import torch

import metabook
from metabook.claims import claim


def test_a_true_claim_passes_silently():
    assert claim(True, "always") is None
    claim(np.bool_(True), "numpy booleans count")
    claim(torch.tensor(True), "so do tensors")


def test_a_false_claim_raises_an_assertion_error_that_quotes_the_sentence():
    with pytest.raises(AssertionError) as err:
        claim(np.float64(0.3) > 0.5, "most sentences get no reply at all")
    assert str(err.value) == ("the text says 'most sentences get no reply at all', and the "
                              "numbers above no longer support it")


def test_a_claim_still_checks_when_python_drops_asserts():
    code = "from metabook.claims import claim; claim(False, 'x')"
    run = subprocess.run([sys.executable, "-O", "-c", code], capture_output=True, text=True)
    assert run.returncode != 0 and "the text says 'x'" in run.stderr


def test_it_is_imported_lazily_from_the_package():
    assert metabook.claims.claim is claim
