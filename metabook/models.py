"""Models to meta-learn: small ones built here, and Hugging Face backbones.

Every model maps a batch of inputs to a batch of outputs and exposes its
parts the way the learners need them: ``encoder`` (inputs to features) and
``head`` (features to logits). Nothing here is specific to meta-learning, which
is the point: :mod:`metabook.learners` adapts any ``nn.Module``.

:data:`BACKBONES` registers the encoders of token ids a run's config can name
(``backbone: bert``). An entry is a :class:`Backbone`: how to build the encoder,
the language-model objective of its baselines, and, for a pretrained model
that brings its own tokenizer and width, those too; adding one is one
``BACKBONES.register(name, Backbone(...), display=...)``.

    >>> model = ResidualMLP(in_dim=64, hidden=256, depth=3, out_dim=5)
    >>> sum(p.numel() for p in model.parameters())
    217349
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from metabook.errors import ConfigError
from metabook.registry import Registry
from metabook.text import Tokenizer

__all__ = ["masked_mean", "mlp_encoder", "ResidualMLP", "TextEncoder", "TextClassifier",
           "HFEncoder", "tiny_bert", "tiny_gpt2", "tiny_xlnet", "Backbone", "BACKBONES"]


def masked_mean(states: Tensor, keep: Tensor) -> Tensor:
    """Mean of ``states`` ``(batch, length, dim)`` over the positions where ``keep`` is true.

    How every encoder here pools token states into one vector per sentence:
    padding takes no part. A row with nothing to keep pools to zeros.

    >>> states = torch.tensor([[[1.0], [3.0], [100.0]]])
    >>> masked_mean(states, torch.tensor([[True, True, False]]))
    tensor([[2.]])
    """
    w = keep.unsqueeze(-1).to(states.dtype)
    return (states * w).sum(1) / w.sum(1).clamp_min(1.0)


def mlp_encoder(in_dim: int, hidden: int | Sequence[int], out_dim: int,
                seed: int | None = None, activation: type[nn.Module] = nn.ReLU) -> nn.Sequential:
    """A small network for feature vectors: ``Linear, ReLU, ..., Linear``.

    ``hidden`` is the width of the hidden layer, or a list of widths for
    several; ``activation`` the nonlinearity between layers (``nn.Tanh``, say).
    With ``seed`` the weights are those that ``torch.manual_seed(seed)``
    followed by the construction would give, without touching the global
    random state::

        >>> net = mlp_encoder(8, 16, 4, seed=0)
        >>> net
        Sequential(
          (0): Linear(in_features=8, out_features=16, bias=True)
          (1): ReLU()
          (2): Linear(in_features=16, out_features=4, bias=True)
        )
        >>> torch.equal(net[0].weight, mlp_encoder(8, [16], 4, seed=0)[0].weight)
        True
        >>> mlp_encoder(8, 16, 4, activation=nn.Tanh)[1]
        Tanh()
    """
    if seed is not None:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            return mlp_encoder(in_dim, hidden, out_dim, activation=activation)
    widths = [in_dim, *([hidden] if isinstance(hidden, int) else hidden)]
    layers: list[nn.Module] = []
    for a, b in zip(widths, widths[1:]):
        layers += [nn.Linear(a, b), activation()]
    return nn.Sequential(*layers, nn.Linear(widths[-1], out_dim))


class _Block(nn.Module):
    """Pre-LayerNorm residual block: ``x + W2 σ(W1 LN(x))``."""

    def __init__(self, dim: int, expansion: int = 1):
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.fc1 = nn.Linear(dim, dim * expansion)
        self.fc2 = nn.Linear(dim * expansion, dim) if expansion != 1 else None

    def forward(self, x: Tensor) -> Tensor:
        h = F.gelu(self.fc1(self.norm(x)))
        return x + (self.fc2(h) if self.fc2 is not None else h)


class ResidualMLP(nn.Module):
    """A pre-LayerNorm residual MLP on feature vectors: ``encoder`` then a linear ``head``."""

    def __init__(self, in_dim: int, hidden: int = 128, depth: int = 2, out_dim: int = 5):
        super().__init__()
        self.encoder = nn.Sequential(nn.Linear(in_dim, hidden), *[_Block(hidden) for _ in range(depth)],
                                     nn.LayerNorm(hidden))
        self.head = nn.Linear(hidden, out_dim)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.encoder(x))


class _SelfAttention(nn.Module):
    def __init__(self, dim: int, heads: int):
        super().__init__()
        if dim % heads:
            raise ConfigError(f"model width {dim} must be divisible by the number of heads {heads}")
        self.heads = heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.out = nn.Linear(dim, dim)

    def forward(self, x: Tensor, keep: Tensor) -> Tensor:
        b, t, d = x.shape
        q, k, v = self.qkv(x).view(b, t, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        scores = q @ k.transpose(-1, -2) / math.sqrt(d // self.heads)
        # Written out rather than fused so that second-order gradients exist on every backend.
        scores = scores.masked_fill(~keep[:, None, None, :], torch.finfo(scores.dtype).min)
        return self.out((scores.softmax(-1) @ v).transpose(1, 2).reshape(b, t, d))


class _TransformerBlock(nn.Module):
    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.norm1, self.norm2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.attn = _SelfAttention(dim, heads)
        self.mlp = nn.Sequential(nn.Linear(dim, 2 * dim), nn.GELU(), nn.Linear(2 * dim, dim))

    def forward(self, x: Tensor, keep: Tensor) -> Tensor:
        x = x + self.attn(self.norm1(x), keep)
        return x + self.mlp(self.norm2(x))


class TextEncoder(nn.Module):
    """A small pre-LayerNorm transformer over token ids, mean-pooled over non-padding tokens.

    Input: ``(batch, length)`` ids with ``pad_id`` as padding. Output: ``(batch, dim)``.
    """

    def __init__(self, vocab_size: int, dim: int = 64, heads: int = 4, layers: int = 2,
                 max_len: int = 64, pad_id: int = 0):
        super().__init__()
        self.pad_id, self.max_len = pad_id, max_len
        self.tokens = nn.Embedding(vocab_size, dim)
        self.positions = nn.Embedding(max_len, dim)
        self.blocks = nn.ModuleList(_TransformerBlock(dim, heads) for _ in range(layers))
        self.norm = nn.LayerNorm(dim)

    def forward(self, ids: Tensor) -> Tensor:
        if ids.shape[1] > self.max_len:
            raise ConfigError(f"sequences of length {ids.shape[1]} exceed the encoder's "
                              f"max_len={self.max_len}; cut them or build a longer encoder")
        keep = ids != self.pad_id
        x = self.tokens(ids) + self.positions(torch.arange(ids.shape[1], device=ids.device))
        for block in self.blocks:
            x = block(x, keep)
        return masked_mean(self.norm(x), keep)


class TextClassifier(nn.Module):
    """``head(encoder(ids))``: any encoder to features, then a linear layer to ``n_classes``."""

    def __init__(self, encoder: nn.Module, dim: int, n_classes: int):
        super().__init__()
        self.encoder = encoder
        self.head = nn.Linear(dim, n_classes)

    def forward(self, ids: Tensor) -> Tensor:
        return self.head(self.encoder(ids))


class HFEncoder(nn.Module):
    """A Hugging Face ``transformers`` model used as an encoder: masked mean of its last hidden state."""

    def __init__(self, model: nn.Module, pad_id: int = 0):
        super().__init__()
        self.model, self.pad_id = model, pad_id

    def forward(self, ids: Tensor) -> Tensor:
        keep = ids != self.pad_id
        return masked_mean(self.model(input_ids=ids, attention_mask=keep.long()).last_hidden_state,
                           keep)


def _eager(config):  # second-order gradients need the plain attention, not fused kernels
    config._attn_implementation = "eager"
    return config


def tiny_bert(vocab_size: int, dim: int = 64, layers: int = 2, heads: int = 4,
              max_len: int = 64, pad_id: int = 0) -> HFEncoder:
    """A randomly initialised BERT encoder of the given size (no download)."""
    from transformers import BertConfig, BertModel

    cfg = BertConfig(vocab_size=vocab_size, hidden_size=dim, num_hidden_layers=layers,
                     num_attention_heads=heads, intermediate_size=2 * dim,
                     max_position_embeddings=max_len, pad_token_id=pad_id,
                     hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    return HFEncoder(BertModel(_eager(cfg), add_pooling_layer=False), pad_id)


def tiny_gpt2(vocab_size: int, dim: int = 64, layers: int = 2, heads: int = 4,
              max_len: int = 64, pad_id: int = 0) -> HFEncoder:
    """A randomly initialised GPT-2 decoder used as an encoder (no download)."""
    from transformers import GPT2Config, GPT2Model

    cfg = GPT2Config(vocab_size=vocab_size, n_embd=dim, n_layer=layers, n_head=heads,
                     n_positions=max_len, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0,
                     pad_token_id=pad_id, bos_token_id=pad_id, eos_token_id=pad_id)
    return HFEncoder(GPT2Model(_eager(cfg)), pad_id)


def tiny_xlnet(vocab_size: int, dim: int = 64, layers: int = 2, heads: int = 4,
               max_len: int = 64, pad_id: int = 0) -> HFEncoder:
    """A randomly initialised XLNet encoder (no download); ``max_len`` is unused (relative positions)."""
    from transformers import XLNetConfig, XLNetModel

    cfg = XLNetConfig(vocab_size=vocab_size, d_model=dim, n_layer=layers, n_head=heads,
                      d_inner=2 * dim, dropout=0.0, pad_token_id=pad_id)
    model = XLNetModel(_eager(cfg))
    # Used only for permutation-LM targets and for segment ids, which an encoder of single
    # sentences never passes: frozen, so that no step pretends to train them.
    for name, param in model.named_parameters():
        if name == "mask_emb" or name.endswith(("rel_attn.r_s_bias", "rel_attn.seg_embed")):
            param.requires_grad_(False)
    return HFEncoder(model, pad_id)


@dataclass(frozen=True)
class Backbone:
    """An encoder of token ids that a run can be built on (an entry of :data:`BACKBONES`).

    ``build(vocab_size, dim=, layers=, heads=, max_len=, pad_id=)`` returns a
    fresh encoder that maps ``(batch, length)`` ids to ``(batch, width)``
    vectors. ``objective`` is the language-model objective of its baselines:
    ``"mlm"`` (masked) or ``"causal"`` (left to right). A backbone that brings
    its own tokenizer sets ``tokenizer(texts)``, which returns the
    :class:`~metabook.text.Tokenizer` it was trained with (the corpus's texts are
    passed for a tokenizer that is trained on them), and ``width``, its fixed
    output width; by default the corpus's word vocabulary and the config's
    ``dim`` are used. A pretrained encoder whose every piece depends on the run's
    config (:class:`metabook.pretrained.PretrainedBackbone`) overrides the three
    methods below instead, through which the rest of the library reads an entry.
    """

    build: Callable[..., nn.Module]
    objective: str = "mlm"
    tokenizer: Callable[[Sequence[str]], Tokenizer] | None = None
    width: int | None = None
    #: Whether the encoder starts from pretrained weights (no language-model baselines then).
    pretrained: bool = False

    def encoder(self, config: Any, vocab_size: int, pad_id: int) -> nn.Module:
        """A fresh encoder for the run ``config`` (a :class:`~metabook.config.PretrainConfig`)."""
        return self.build(vocab_size, dim=config.dim, layers=config.layers, heads=config.heads,
                          max_len=config.max_len, pad_id=pad_id)

    def own_tokenizer(self, config: Any, texts: Sequence[str]) -> Tokenizer | None:
        """The tokenizer the backbone brings for ``config``, or None for a word vocabulary."""
        return self.tokenizer(texts) if self.tokenizer is not None else None

    def output_width(self, config: Any) -> int:
        """The width of the vectors the encoder puts out for ``config``."""
        return self.width or config.dim


#: The backbones a config may name, with their display names.
BACKBONES: Registry[Backbone] = Registry("backbone")
BACKBONES.register("transformer", Backbone(TextEncoder), display="transformer (metabook)")
BACKBONES.register("bert", Backbone(tiny_bert), display="BERT")
BACKBONES.register("gpt2", Backbone(tiny_gpt2, objective="causal"), display="GPT-2")
BACKBONES.register("xlnet", Backbone(tiny_xlnet), display="XLNet")
