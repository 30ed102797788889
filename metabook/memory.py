"""What autograd keeps for the backward pass, measured.

Most of the memory a meta-gradient costs is the tensors autograd saves while
the forward pass (and, for second-order learners, every inner step's backward
pass) runs, for ``backward()`` to use later. :func:`saved_tensors` runs a
computation under :func:`torch.autograd.graph.saved_tensors_hooks` and counts
them, each storage once, however many saved tensors view it.

Two numbers come out: ``peak`` is the most that was held at any moment while the
computation ran (a backward pass inside it frees what it has used, so this is
the high-water mark), and ``held`` is what is still held when it returns, the
graph its result keeps alive until ``backward()``. Tensors in ``exclude``
(the parameters, which exist anyway) are not counted.

The computation may run on PyTorch's ``meta`` device, where tensors have shapes
but no data: the count is then that of the same computation on real tensors,
for a model far too large to run (Chapter 8 counts a BERT-base meta-step so).
"""
from __future__ import annotations

import weakref
from dataclasses import dataclass
from typing import Any, Callable, Iterable

import torch
from torch import Tensor

__all__ = ["SavedTensors", "saved_tensors"]

MIB = 2 ** 20


@dataclass(frozen=True)
class SavedTensors:
    """The result of the measured computation and the bytes autograd saved for it."""

    result: Any
    peak_bytes: int
    held_bytes: int

    @property
    def peak_mib(self) -> float:
        return self.peak_bytes / MIB

    @property
    def held_mib(self) -> float:
        return self.held_bytes / MIB


def _address(tensor: Tensor) -> int:
    """What identifies a tensor's storage: its data's address, or on ``meta`` (no data) itself."""
    storage = tensor.untyped_storage()
    return storage._cdata if storage.device.type == "meta" else storage.data_ptr()


class _Box:
    """Holds one saved tensor; a weak reference to the box sees autograd let it go."""

    __slots__ = ("tensor", "__weakref__")

    def __init__(self, tensor: Tensor):
        self.tensor = tensor


def saved_tensors(compute: Callable[[], Any], exclude: Iterable[Tensor] = ()) -> SavedTensors:
    """Run ``compute()`` and measure the tensors autograd saves for backward (see the module).

    The gradients of the result are those without the measurement: the hooks
    only keep count::

        >>> w = torch.randn(256, 256, requires_grad=True)
        >>> x = torch.randn(64, 256)
        >>> probe = saved_tensors(lambda: (x @ w).tanh().sum(), exclude=[w])
        >>> probe.held_mib  # x, for w's gradient, and tanh's output: 2 x 64 x 256 floats
        0.125
        >>> probe.result.backward()  # the result's graph is intact
    """
    skip = {_address(t) for t in exclude}
    owners: dict[int, int] = {}  # storage address -> saved tensors that hold it
    live = peak = 0

    def release(address: int, nbytes: int) -> None:
        nonlocal live
        owners[address] -= 1
        if owners[address] == 0:
            del owners[address]
            live -= nbytes

    def pack(tensor: Tensor) -> _Box:
        nonlocal live, peak
        # Detached: the box must not keep the graph alive (autograd keeps its own links
        # and restores them when it unpacks the tensor).
        box = _Box(tensor.detach())
        address, nbytes = _address(tensor), tensor.untyped_storage().nbytes()
        if address not in skip and nbytes:
            if address not in owners:
                owners[address] = 0
                live += nbytes
                peak = max(peak, live)
            owners[address] += 1
            weakref.finalize(box, release, address, nbytes)
        return box

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda box: box.tensor):
        result = compute()
    return SavedTensors(result, peak, live)
