"""Checkpoints that are safe to load and survive a crash while being written.

A checkpoint is a directory:

- ``model.safetensors``: the learner's ``state_dict`` (weights, and learned
  step sizes for Meta-SGD);
- ``optimizer.safetensors``: the optimizer's tensors (e.g. Adam's moments),
  present when an optimizer was saved;
- ``meta.json``: everything else as plain JSON: the format name and version,
  the sha256 of each tensor file, the optimizer's structure, and whatever the
  caller adds (step, config, random-number-generator and sampler states).

Nothing is ever unpickled, so a checkpoint from an untrusted source can at
worst fail to load. Saving is atomic: the files are written and ``fsync``-ed in
a temporary directory beside the target, which is then renamed into place, so
a crash mid-save leaves the previous checkpoint as it was::

    >>> import tempfile, torch
    >>> from torch import nn
    >>> model = nn.Linear(2, 1)
    >>> path = save_checkpoint(Path(tempfile.mkdtemp()) / "step-1", model.state_dict(), {"step": 1})
    >>> ckpt = load_checkpoint(path)
    >>> ckpt.meta["step"], torch.equal(ckpt.model["weight"], model.weight)
    (1, True)

Any problem with a checkpoint (missing, truncated, corrupt, foreign, written
by a newer metabook, or of another shape than the model) raises
:class:`~metabook.errors.CheckpointError` naming the file and what to do. A
save that the file system refuses (a full disk, a read-only or foreign folder)
raises :class:`~metabook.errors.OutputError` naming the target::

    >>> import errno
    >>> with writing(Path("runs/x"), "checkpoint"):
    ...     raise OSError(errno.ENOSPC, "No space left on device", "runs/x/.tmp/model.safetensors")
    Traceback (most recent call last):
    ...
    metabook.errors.OutputError: cannot write checkpoint to runs/x: No space left on device; free some space or choose another output folder
"""
from __future__ import annotations

import errno
import hashlib
import json
import os
import random
import shutil
import tempfile
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Mapping

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import Tensor, nn

from metabook.errors import CheckpointError, OutputError

__all__ = ["FORMAT", "VERSION", "MODEL_FILE", "OPTIMIZER_FILE", "META_FILE", "Checkpoint",
           "save_checkpoint", "load_checkpoint", "load_into", "optimizer_to_tensors",
           "optimizer_from_tensors", "rng_state", "set_rng_state", "write_json_atomic", "sha256",
           "writing", "clean_partial_saves"]

FORMAT = "metabook-checkpoint"
#: Raised whenever the layout changes; a loader refuses versions newer than its own.
VERSION = 1
MODEL_FILE, OPTIMIZER_FILE, META_FILE = "model.safetensors", "optimizer.safetensors", "meta.json"


@dataclass
class Checkpoint:
    """A loaded checkpoint: its ``path``, ``meta`` (the JSON), ``model`` and ``optimizer`` states."""

    path: Path
    meta: dict[str, Any]
    model: dict[str, Tensor]
    optimizer: dict[str, Any] | None


# --- files --------------------------------------------------------------------------------

_ADVICE = {errno.ENOSPC: "free some space or choose another output folder",
           errno.EDQUOT: "free some space or choose another output folder",
           errno.EROFS: "choose an output folder on a writable disk",
           errno.EACCES: "choose an output folder you may write to",
           errno.EPERM: "choose an output folder you may write to"}


@contextmanager
def writing(path: str | Path, what: str = "") -> Iterator[None]:
    """Turn an :class:`OSError` raised while writing ``what`` at ``path`` into an :class:`OutputError`.

    The message names ``path`` (the file or directory the user knows, not the
    temporary one the error came from), the system's reason and what to do.
    """
    try:
        yield
    except OutputError:
        raise
    except OSError as err:
        reason = err.strerror or str(err)
        advice = _ADVICE.get(err.errno, "check the folder or choose another output folder")
        target = f"{what} to {path}" if what else str(path)
        error = OutputError(f"cannot write {target}: {reason}; {advice}", options=("out",))
        error.errno = err.errno  # a filename too would make str() OSError's "[Errno n] ..." form
        raise error from err


def sha256(path: str | Path) -> str:
    """The hex sha256 of a file's bytes."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_json(path: Path, value: Any) -> None:
    with open(path, "w", encoding="utf-8") as f:
        json.dump(value, f, indent=1, sort_keys=True)
        f.write("\n")
        f.flush()
        os.fsync(f.fileno())


def write_json_atomic(path: str | Path, value: Any) -> Path:
    """Write ``value`` as JSON to ``path`` so that readers see the old or the new file, never half."""
    path = Path(path)
    with writing(path):
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.tmp-", dir=path.parent)
        os.close(fd)
        try:
            _write_json(Path(tmp), value)
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        _fsync(path.parent)
    return path


def _save_tensors(path: Path, tensors: Mapping[str, Tensor]) -> None:
    # Contiguous CPU copies: safetensors refuses views and tensors that share memory.
    save_file({k: v.detach().to("cpu").contiguous().clone() for k, v in tensors.items()}, str(path))
    _fsync(path)


# --- optimizer and random state as safetensors + JSON ----------------------------------------

def optimizer_to_tensors(state: Mapping[str, Any]) -> tuple[dict[str, Tensor], dict[str, Any]]:
    """Split ``optimizer.state_dict()`` into named tensors and a JSON-ready structure.

    >>> opt = torch.optim.Adam([nn.Parameter(torch.ones(2))])
    >>> opt.param_groups[0]["params"][0].grad = torch.ones(2); opt.step()
    >>> tensors, structure = optimizer_to_tensors(opt.state_dict())
    >>> sorted(tensors)
    ['state.0.exp_avg', 'state.0.exp_avg_sq', 'state.0.step']
    """
    tensors: dict[str, Tensor] = {}
    per_param: dict[str, dict[str, Any]] = {}
    for pid, entries in state["state"].items():
        slots: dict[str, Any] = {}
        for key, value in entries.items():
            if isinstance(value, Tensor):
                name = f"state.{pid}.{key}"
                tensors[name] = value
                slots[key] = {"tensor": name}
            else:
                slots[key] = {"value": value}
        per_param[str(pid)] = slots
    groups = json.loads(json.dumps(state["param_groups"]))  # tuples (Adam's betas) become lists
    return tensors, {"state": per_param, "param_groups": groups}


def optimizer_from_tensors(tensors: Mapping[str, Tensor], structure: Mapping[str, Any]
                           ) -> dict[str, Any]:
    """The inverse of :func:`optimizer_to_tensors`: a dict for ``optimizer.load_state_dict``."""
    state = {int(pid): {key: tensors[slot["tensor"]] if "tensor" in slot else slot["value"]
                        for key, slot in slots.items()}
             for pid, slots in structure["state"].items()}
    groups = [dict(g) for g in structure["param_groups"]]
    for g in groups:
        if isinstance(g.get("betas"), list):
            g["betas"] = tuple(g["betas"])
    return {"state": state, "param_groups": groups}


def rng_state() -> dict[str, Any]:
    """The state of every global random-number generator, as JSON lists.

    >>> s = rng_state(); a = torch.rand(1); set_rng_state(s); bool(torch.rand(1) == a)
    True
    """
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    version, internal, gauss = random.getstate()
    state: dict[str, Any] = {
        "torch": torch.get_rng_state().tolist(),
        "numpy": [kind, keys.tolist(), int(pos), int(has_gauss), float(cached)],
        "python": [version, list(internal), gauss],
    }
    if torch.cuda.is_available():
        state["cuda"] = [s.tolist() for s in torch.cuda.get_rng_state_all()]
    return state


def set_rng_state(state: Mapping[str, Any]) -> None:
    """Restore what :func:`rng_state` returned."""
    torch.set_rng_state(torch.tensor(state["torch"], dtype=torch.uint8))
    kind, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((kind, np.array(keys, dtype=np.uint32), pos, has_gauss, cached))
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([torch.tensor(s, dtype=torch.uint8) for s in state["cuda"]])


# --- save and load --------------------------------------------------------------------------

def save_checkpoint(directory: str | Path, model_state: Mapping[str, Tensor],
                    meta: Mapping[str, Any] | None = None,
                    optimizer_state: Mapping[str, Any] | None = None) -> Path:
    """Write a checkpoint into ``directory`` atomically; returns its path.

    ``meta`` must be JSON-ready. An existing checkpoint of the same name is
    replaced only once the new one is complete on disk.
    """
    directory = Path(directory)
    with writing(directory, "checkpoint"):
        _save_atomically(directory, model_state, meta, optimizer_state)
    return directory


def _save_atomically(directory: Path, model_state: Mapping[str, Tensor],
                     meta: Mapping[str, Any] | None,
                     optimizer_state: Mapping[str, Any] | None) -> None:
    """Write into a temporary directory beside ``directory``, then rename it into place."""
    parent = directory.parent
    parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{directory.name}.tmp-", dir=parent))
    try:
        _save_tensors(tmp / MODEL_FILE, model_state)
        files = {MODEL_FILE: sha256(tmp / MODEL_FILE)}
        record: dict[str, Any] = {**(meta or {}), "format": FORMAT, "version": VERSION}
        if optimizer_state is not None:
            tensors, structure = optimizer_to_tensors(optimizer_state)
            _save_tensors(tmp / OPTIMIZER_FILE, tensors)
            files[OPTIMIZER_FILE] = sha256(tmp / OPTIMIZER_FILE)
            record["optimizer"] = structure
        record["files"] = files
        record["shapes"] = {k: list(v.shape) for k, v in model_state.items()}
        _write_json(tmp / META_FILE, record)
        _fsync(tmp)
        if directory.exists():
            # rename() cannot replace a non-empty directory: move the old one aside first.
            old = Path(tempfile.mkdtemp(prefix=f".{directory.name}.old-", dir=parent))
            os.rename(directory, old / directory.name)
            os.rename(tmp, directory)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.rename(tmp, directory)
        _fsync(parent)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def clean_partial_saves(parent: str | Path) -> list[Path]:
    """Tidy up after saves into ``parent`` that a crash interrupted; returns what was removed.

    A save killed before its rename leaves a ``.NAME.tmp-*`` directory (or a
    JSON temporary file): never committed, so it is deleted. One killed
    between the two renames of a replacement leaves the old checkpoint in
    ``.NAME.old-*/NAME``: it is moved back when ``NAME`` is missing.
    """
    parent = Path(parent)
    removed = []
    for entry in sorted(parent.glob(".*.old-*")):
        for old in entry.iterdir():
            if not (parent / old.name).exists():
                os.rename(old, parent / old.name)
        shutil.rmtree(entry, ignore_errors=True)
        removed.append(entry)
    for entry in sorted(parent.glob(".*.tmp-*")):
        if entry.is_dir():
            shutil.rmtree(entry, ignore_errors=True)
        else:
            entry.unlink(missing_ok=True)
        removed.append(entry)
    return removed


def _read_meta(directory: Path) -> dict[str, Any]:
    if not directory.is_dir():
        raise CheckpointError(f"no checkpoint at {directory}: the directory does not exist; "
                              f"check the path, or train a run first", options=("out",))
    path = directory / META_FILE
    if not path.is_file():
        raise CheckpointError(f"{directory} is not a metabook checkpoint (it has no {META_FILE}); "
                              f"point to a directory written by metabook")
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise CheckpointError(f"{path} is truncated or corrupt ({err}); delete {directory} and "
                              f"resume from an earlier checkpoint") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise CheckpointError(f"{path} is not a metabook checkpoint (format "
                              f"{meta.get('format') if isinstance(meta, dict) else None!r}, "
                              f"expected {FORMAT!r}); point to a directory written by metabook")
    version = meta.get("version")
    if not isinstance(version, int) or version < 1:
        raise CheckpointError(f"{path} has an invalid format version {version!r}; it was not "
                              f"written by metabook")
    if version > VERSION:
        raise CheckpointError(f"{directory} was written by a newer metabook (checkpoint format "
                              f"version {version}; this one reads up to {VERSION}): upgrade "
                              f"metabook (pip install -U metabook) to load it")
    if not isinstance(meta.get("files"), dict) or MODEL_FILE not in meta["files"]:
        raise CheckpointError(f"{path} lists no {MODEL_FILE}; the checkpoint is incomplete: "
                              f"delete {directory} and resume from an earlier one")
    return meta


def _load_tensors(directory: Path, name: str, expected_sha: str) -> dict[str, Tensor]:
    path = directory / name
    if not path.is_file():
        raise CheckpointError(f"{path} is missing: the checkpoint is incomplete; delete "
                              f"{directory} and resume from an earlier checkpoint")
    if sha256(path) != expected_sha:
        raise CheckpointError(f"{path} is truncated or corrupt (its sha256 differs from the one "
                              f"recorded in {META_FILE}); delete {directory} and resume from an "
                              f"earlier checkpoint")
    try:
        return load_file(str(path))
    except (SafetensorError, OSError) as err:
        raise CheckpointError(f"{path} cannot be read as safetensors ({err}); delete "
                              f"{directory} and resume from an earlier checkpoint") from None


def load_checkpoint(directory: str | Path) -> Checkpoint:
    """Read and verify the checkpoint in ``directory`` (tensors on the CPU)."""
    directory = Path(directory)
    meta = _read_meta(directory)
    model = _load_tensors(directory, MODEL_FILE, meta["files"][MODEL_FILE])
    optimizer = None
    if OPTIMIZER_FILE in meta["files"]:
        tensors = _load_tensors(directory, OPTIMIZER_FILE, meta["files"][OPTIMIZER_FILE])
        try:
            optimizer = optimizer_from_tensors(tensors, meta["optimizer"])
        except (KeyError, TypeError, ValueError) as err:
            raise CheckpointError(f"the optimizer state in {directory} does not match its "
                                  f"{META_FILE} ({err!r}); delete the checkpoint and resume "
                                  f"from an earlier one") from None
    return Checkpoint(directory, meta, model, optimizer)


def load_into(module: nn.Module, state: Mapping[str, Tensor], source: str | Path) -> None:
    """Load ``state`` into ``module``, raising :class:`CheckpointError` on any key or shape mismatch.

    >>> load_into(nn.Linear(2, 1), {"weight": torch.zeros(1, 3), "bias": torch.zeros(1)}, "ckpt")
    Traceback (most recent call last):
    ...
    metabook.errors.CheckpointError: ckpt holds 'weight' of shape (1, 3) but the model expects (1, 2): it was saved from a model of another configuration; load it into the model it was trained with
    """
    own = module.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    if missing or unexpected:
        raise CheckpointError(
            f"{source} does not fit this model: missing {missing[:3]}{'...' if len(missing) > 3 else ''}"
            f", unexpected {unexpected[:3]}{'...' if len(unexpected) > 3 else ''}; it was saved "
            f"from another model: load it into the model it was trained with")
    for key, value in state.items():
        if tuple(value.shape) != tuple(own[key].shape):
            raise CheckpointError(
                f"{source} holds {key!r} of shape {tuple(value.shape)} but the model expects "
                f"{tuple(own[key].shape)}: it was saved from a model of another configuration; "
                f"load it into the model it was trained with")
    module.load_state_dict(dict(state))
