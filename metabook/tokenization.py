"""Subword tokenizers trained on the book's own corpora with the ``tokenizers`` library.

A tokenizer is trained on a list of texts, wrapped as a ``transformers``
fast tokenizer with the BERT special tokens, and saved next to the model it
belongs to. ``[PAD]``, ``[UNK]`` and ``[MASK]`` get the ids that
:class:`metabook.text.Vocab` gives them, so code written for word ids (masking,
padding) reads subword ids the same way::

    >>> from metabook.text import Vocab
    >>> tok = train_tokenizer(["the cat sat", "the dog sat", "a cat ran"] * 20, vocab_size=60)
    >>> tok.convert_ids_to_tokens(tok("the cat")["input_ids"])
    ['[CLS]', '▁the', '▁cat', '[SEP]']
    >>> (tok.pad_token_id, tok.unk_token_id, tok.mask_token_id) == (Vocab().pad_id, Vocab().unk_id,
    ...                                                             Vocab().mask_id)
    True

:class:`SubwordTokenizer` makes any Hugging Face tokenizer (one trained here,
or a pretrained model's) a run's :class:`~metabook.text.Tokenizer`: a backbone
of :data:`metabook.models.BACKBONES` that brings its own tokenizer returns one.

Two kinds, both BPE: ``"bpe"`` keeps each space as ``▁`` on the word after it
(SentencePiece style, so scripts without spaces still split), and ``"byte"``
works on UTF-8 bytes, so any text in any script encodes with no ``[UNK]``: the
choice where many scripts meet.

Why no WordPiece: the ``tokenizers`` WordPiece trainer (and BPE with a ``##``
prefix) numbers continuation pieces in a per-process hash order, so two runs
on the same text can learn different vocabularies. Plain BPE learns the same
one every time, and the book's numbers must not change between builds.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Iterable, Sequence

import torch
from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers
from torch import Tensor
from transformers import PreTrainedTokenizerFast

from metabook.errors import CheckpointError, CorpusError
from metabook.text import MASK, PAD, UNK

__all__ = ["SPECIAL_TOKENS", "KINDS", "train_tokenizer", "save_tokenizer", "load_tokenizer",
           "SubwordTokenizer"]

#: Special tokens, in id order: [PAD] is 0, [UNK] 1, [MASK] 2 (as in metabook.text), [CLS] 3,
#: [SEP] 4.
SPECIAL_TOKENS = (PAD, UNK, MASK, "[CLS]", "[SEP]")
KINDS = ("bpe", "byte")
_BYTE_ALPHABET = len(pre_tokenizers.ByteLevel.alphabet())


def _backend(kind: str, vocab_size: int, min_frequency: int) -> tuple[Tokenizer, trainers.Trainer]:
    special = list(SPECIAL_TOKENS)
    if kind == "bpe":
        tok = Tokenizer(models.BPE(unk_token=UNK))
        tok.pre_tokenizer = pre_tokenizers.Metaspace()
        tok.decoder = decoders.Metaspace()
        trainer = trainers.BpeTrainer(vocab_size=vocab_size, min_frequency=min_frequency,
                                      special_tokens=special, show_progress=False)
    else:  # "byte"
        tok = Tokenizer(models.BPE())
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=True)
        tok.decoder = decoders.ByteLevel()
        # All 256 byte symbols from the start, so no input is ever unknown.
        trainer = trainers.BpeTrainer(vocab_size=vocab_size, min_frequency=min_frequency,
                                      special_tokens=special, show_progress=False,
                                      initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    return tok, trainer


def _wrap(tok: Tokenizer, max_length: int) -> PreTrainedTokenizerFast:
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, model_max_length=max_length, pad_token=PAD, unk_token=UNK,
        cls_token="[CLS]", sep_token="[SEP]", mask_token=MASK,
        # BERT-style encoders take the segment ids of a text pair.
        model_input_names=["input_ids", "token_type_ids", "attention_mask"])


def train_tokenizer(texts: Iterable[str], vocab_size: int = 2000, kind: str = "bpe",
                    min_frequency: int = 2, lowercase: bool = True,
                    max_length: int = 128) -> PreTrainedTokenizerFast:
    """Train a ``kind`` tokenizer of at most ``vocab_size`` entries on ``texts``.

    The text is NFKC-normalised (and lower-cased if ``lowercase``); a subword
    must occur ``min_frequency`` times to be merged. Encoding adds
    ``[CLS] ... [SEP]`` (and ``[SEP]`` between the two texts of a pair).
    Training is deterministic: the same texts give the same vocabulary, in
    any process.

    >>> byte = train_tokenizer(["hello world"] * 5, vocab_size=300, kind="byte")
    >>> byte.unk_token_id in byte("Ωμέγα 漢字")["input_ids"]
    False
    """
    if kind not in KINDS:
        raise CorpusError(f"unknown tokenizer kind {kind!r}; choose one of {KINDS}")
    corpus = [t for t in texts if isinstance(t, str) and t.strip()]
    if not corpus:
        raise CorpusError("cannot train a tokenizer on no text: pass a list of non-empty strings")
    floor = len(SPECIAL_TOKENS) + (_BYTE_ALPHABET if kind == "byte" else 0)
    if vocab_size <= floor:
        raise CorpusError(f"vocab_size={vocab_size} is too small for a {kind} tokenizer; "
                          f"it needs more than {floor} entries")
    tok, trainer = _backend(kind, vocab_size, min_frequency)
    steps = [normalizers.NFKC()] + ([normalizers.Lowercase()] if lowercase else [])
    tok.normalizer = normalizers.Sequence(steps)
    tok.train_from_iterator(corpus, trainer=trainer, length=len(corpus))
    cls_id, sep_id = tok.token_to_id("[CLS]"), tok.token_to_id("[SEP]")
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1",
        special_tokens=[("[CLS]", cls_id), ("[SEP]", sep_id)])
    return _wrap(tok, max_length)


def save_tokenizer(tokenizer: PreTrainedTokenizerFast, directory: str | Path) -> Path:
    """Write ``tokenizer`` into ``directory`` (``tokenizer.json`` and its config); returns the directory.

    Save it into a model's checkpoint directory so the two travel together.
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    tokenizer.save_pretrained(str(directory))
    return directory


def load_tokenizer(directory: str | Path) -> PreTrainedTokenizerFast:
    """The tokenizer that :func:`save_tokenizer` wrote into ``directory``.

    >>> import tempfile
    >>> tok = train_tokenizer(["one two three"] * 5, vocab_size=40)
    >>> d = save_tokenizer(tok, tempfile.mkdtemp())
    >>> load_tokenizer(d).get_vocab() == tok.get_vocab()
    True
    """
    path = Path(directory) / "tokenizer.json"
    if not path.is_file():
        raise CheckpointError(f"no tokenizer.json in {directory}; save one with save_tokenizer()")
    try:
        backend = Tokenizer.from_file(str(path))
        config = json.loads((Path(directory) / "tokenizer_config.json").read_text(encoding="utf-8"))
    except Exception as err:  # tokenizers raises a bare Exception on a corrupt file
        raise CheckpointError(f"{path} is not a readable tokenizer ({err}); save it again") from None
    return _wrap(backend, int(config.get("model_max_length", 128)))


class SubwordTokenizer:
    """A Hugging Face tokenizer as a run's :class:`~metabook.text.Tokenizer`.

    ``encode_texts`` pads (or cuts) every text to ``max_len`` ids with the
    tokenizer's own padding and special tokens::

        >>> sub = SubwordTokenizer(train_tokenizer(["the cat sat", "a dog ran"] * 20,
        ...                                        vocab_size=60))
        >>> sub.encode_texts(["the cat"], 6).tolist() == [sub.tokenizer("the cat")["input_ids"]
        ...                                               + [sub.pad_id] * 2]
        True
        >>> sub.itos[:3], sub.mask_id
        (['[PAD]', '[UNK]', '[MASK]'], 2)
    """

    def __init__(self, tokenizer: Any):
        if tokenizer.pad_token_id is None or tokenizer.mask_token_id is None:
            raise CorpusError(f"{type(tokenizer).__name__} has no padding or no [MASK] token; "
                              f"a run needs both: give it pad_token and mask_token")
        self.tokenizer = tokenizer
        self.itos = tokenizer.convert_ids_to_tokens(list(range(len(tokenizer))))

    @property
    def pad_id(self) -> int:
        return self.tokenizer.pad_token_id

    @property
    def mask_id(self) -> int:
        return self.tokenizer.mask_token_id

    @property
    def special_ids(self) -> list[int]:
        return sorted(self.tokenizer.all_special_ids)

    def __len__(self) -> int:
        return len(self.tokenizer)

    def encode_texts(self, texts: Sequence[str], max_len: int) -> Tensor:
        ids = self.tokenizer(list(texts), padding="max_length", truncation=True,
                             max_length=max_len)["input_ids"]
        return torch.tensor(ids, dtype=torch.long).view(len(texts), max_len)
