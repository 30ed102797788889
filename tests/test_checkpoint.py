"""Checkpoints: safetensors + JSON, verified on load, never unpickled, written atomically."""
from __future__ import annotations

import json
import pickle
import random

import numpy as np
import pytest
import torch
from torch import nn

import metabook.checkpoint as ckpt_mod
from metabook.checkpoint import (META_FILE, MODEL_FILE, OPTIMIZER_FILE, VERSION, load_checkpoint,
                                 load_into, rng_state, save_checkpoint, set_rng_state)
from metabook.errors import CheckpointError


def _model(width: int = 4) -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(3, width), nn.Tanh(), nn.Linear(width, 2))


def _trained_adam(model: nn.Module, steps: int = 3) -> torch.optim.Adam:
    opt = torch.optim.Adam(model.parameters(), lr=0.01)
    x = torch.randn(8, 3, generator=torch.Generator().manual_seed(1))
    for _ in range(steps):
        opt.zero_grad()
        model(x).pow(2).mean().backward()
        opt.step()
    return opt


@pytest.fixture
def saved(tmp_path):
    model = _model()
    opt = _trained_adam(model)
    path = save_checkpoint(tmp_path / "step-1", model.state_dict(), {"step": 1, "note": "x"},
                           opt.state_dict())
    return path, model, opt


def test_round_trip(saved):
    path, model, _ = saved
    ckpt = load_checkpoint(path)
    assert ckpt.meta["step"] == 1 and ckpt.meta["note"] == "x"
    assert ckpt.meta["format"] == "metabook-checkpoint" and ckpt.meta["version"] == VERSION
    assert set(ckpt.meta["files"]) == {MODEL_FILE, OPTIMIZER_FILE}
    fresh = _model()
    with torch.no_grad():
        for p in fresh.parameters():
            p.zero_()
    load_into(fresh, ckpt.model, path)
    for key, value in model.state_dict().items():
        assert torch.equal(fresh.state_dict()[key], value)
    assert sorted(p.name for p in path.iterdir()) == sorted([MODEL_FILE, OPTIMIZER_FILE, META_FILE])


def test_optimizer_round_trip_continues_identically(saved):
    path, model, opt = saved
    ckpt = load_checkpoint(path)
    twin = _model()
    load_into(twin, ckpt.model, path)
    twin_opt = torch.optim.Adam(twin.parameters(), lr=0.5)  # the saved lr must come back
    twin_opt.load_state_dict(ckpt.optimizer)
    assert twin_opt.param_groups[0]["lr"] == 0.01
    assert twin_opt.param_groups[0]["betas"] == opt.param_groups[0]["betas"]
    x = torch.randn(8, 3, generator=torch.Generator().manual_seed(2))
    for m, o in ((model, opt), (twin, twin_opt)):
        for _ in range(2):
            o.zero_grad()
            m(x).pow(2).mean().backward()
            o.step()
    for a, b in zip(model.parameters(), twin.parameters()):
        assert torch.equal(a, b)


def test_loading_never_unpickles(saved, monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("a checkpoint must not be unpickled")

    for name in ("load", "loads", "Unpickler"):
        monkeypatch.setattr(pickle, name, refuse)
    monkeypatch.setattr(torch, "load", refuse)
    path, model, _ = saved
    assert torch.equal(load_checkpoint(path).model["0.weight"], model[0].weight)


def test_truncated_tensor_file(saved):
    path = saved[0]
    data = (path / MODEL_FILE).read_bytes()
    (path / MODEL_FILE).write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match=r"model\.safetensors is truncated or corrupt"):
        load_checkpoint(path)


def test_wrong_checksum(saved):
    path = saved[0]
    meta = json.loads((path / META_FILE).read_text())
    meta["files"][OPTIMIZER_FILE] = "0" * 64
    (path / META_FILE).write_text(json.dumps(meta))
    with pytest.raises(CheckpointError, match=r"optimizer\.safetensors is truncated or corrupt .*sha256"):
        load_checkpoint(path)


def test_flipped_byte_is_caught(saved):
    path = saved[0]
    data = bytearray((path / MODEL_FILE).read_bytes())
    data[-1] ^= 0xFF  # inside a tensor: still valid safetensors, wrong weights
    (path / MODEL_FILE).write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="sha256"):
        load_checkpoint(path)


def test_truncated_meta(saved):
    path = saved[0]
    text = (path / META_FILE).read_text()
    (path / META_FILE).write_text(text[: len(text) // 2])
    with pytest.raises(CheckpointError, match=r"meta\.json is truncated or corrupt"):
        load_checkpoint(path)


def test_missing_tensor_file(saved):
    (saved[0] / OPTIMIZER_FILE).unlink()
    with pytest.raises(CheckpointError, match=r"optimizer\.safetensors is missing"):
        load_checkpoint(saved[0])


def test_foreign_directories(tmp_path):
    with pytest.raises(CheckpointError, match="does not exist"):
        load_checkpoint(tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    with pytest.raises(CheckpointError, match=r"not a metabook checkpoint \(it has no meta\.json\)"):
        load_checkpoint(tmp_path / "empty")
    other = tmp_path / "other"
    other.mkdir()
    (other / META_FILE).write_text(json.dumps({"format": "someone-else", "version": 1}))
    with pytest.raises(CheckpointError, match="format 'someone-else'"):
        load_checkpoint(other)
    (other / META_FILE).write_text("[1, 2]")
    with pytest.raises(CheckpointError, match="not a metabook checkpoint"):
        load_checkpoint(other)


def test_future_version_is_refused(saved):
    path = saved[0]
    meta = json.loads((path / META_FILE).read_text())
    meta["version"] = VERSION + 1
    (path / META_FILE).write_text(json.dumps(meta))
    with pytest.raises(CheckpointError, match=f"newer metabook .*version {VERSION + 1}.*upgrade"):
        load_checkpoint(path)


def test_other_shape_model_is_refused(saved):
    path = saved[0]
    ckpt = load_checkpoint(path)
    with pytest.raises(CheckpointError, match=r"holds '0\.(weight|bias)' of shape \(4, ?3?\) but the model expects \(5, ?3?\)"):
        load_into(_model(width=5), ckpt.model, path)
    with pytest.raises(CheckpointError, match=r"does not fit this model: missing \['weight'\]"):
        load_into(nn.Linear(3, 2, bias=False), ckpt.model, path)


def test_replacing_a_checkpoint_is_atomic(saved, monkeypatch):
    path, model, opt = saved
    before = {p.name: p.read_bytes() for p in path.iterdir()}
    calls = []

    def failing_save_file(tensors, filename, *args, **kwargs):
        calls.append(filename)
        with open(filename, "wb") as f:
            f.write(b"\x00" * 10)  # half a file, then the crash
        raise OSError("disk full")

    monkeypatch.setattr(ckpt_mod, "save_file", failing_save_file)
    with pytest.raises(OSError, match="disk full"):
        save_checkpoint(path, {k: v * 0 for k, v in model.state_dict().items()}, {"step": 2})
    assert calls, "the tensor writer was not reached"
    assert {p.name: p.read_bytes() for p in path.iterdir()} == before
    assert load_checkpoint(path).meta["step"] == 1
    assert [p.name for p in path.parent.iterdir()] == [path.name]  # no temporary left behind


def test_saving_over_a_checkpoint_replaces_it(saved):
    path, model, _ = saved
    save_checkpoint(path, {k: v + 1 for k, v in model.state_dict().items()}, {"step": 2})
    ckpt = load_checkpoint(path)
    assert ckpt.meta["step"] == 2 and ckpt.optimizer is None
    assert torch.equal(ckpt.model["2.bias"], model[2].bias + 1)
    assert [p.name for p in path.parent.iterdir()] == [path.name]


def test_rng_state_round_trip_through_json():
    torch.manual_seed(3), np.random.seed(3), random.seed(3)
    state = json.loads(json.dumps(rng_state()))
    first = (torch.rand(3), np.random.rand(3), random.random())
    set_rng_state(state)
    again = (torch.rand(3), np.random.rand(3), random.random())
    assert torch.equal(first[0], again[0])
    assert np.array_equal(first[1], again[1]) and first[2] == again[2]
