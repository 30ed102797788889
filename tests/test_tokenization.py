"""Tokenizers trained with `tokenizers`: special tokens, the three kinds, determinism, save and load."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest

from metabook.errors import CheckpointError, CorpusError
from metabook.text import Vocab
from metabook.tokenization import KINDS, SPECIAL_TOKENS, load_tokenizer, save_tokenizer, train_tokenizer

TEXTS = [
    "the cat sat on the mat", "the dog sat on the log", "a cat saw a dog",
    "the dog saw the cat on the mat", "cats and dogs are friends", "the mat is red",
] * 10
MANY_SCRIPTS = "Ωμέγα, Москва, 漢字, नमस्ते and 🙂"


@pytest.mark.parametrize("kind", KINDS)
def test_each_kind_has_the_special_tokens_first(kind):
    tok = train_tokenizer(TEXTS, vocab_size=300, kind=kind)
    assert tok.convert_ids_to_tokens(list(range(5))) == list(SPECIAL_TOKENS)
    assert (tok.pad_token_id, tok.unk_token_id, tok.mask_token_id, tok.cls_token_id,
            tok.sep_token_id) == (0, 1, 2, 3, 4)
    vocab = Vocab()  # the word vocabulary gives the shared special tokens the same ids
    assert (vocab.pad_id, vocab.unk_id, vocab.mask_id) == (0, 1, 2)
    assert len(tok) <= 300


@pytest.mark.parametrize("kind", KINDS)
def test_each_kind_encodes_with_cls_sep_and_decodes_back(kind):
    tok = train_tokenizer(TEXTS, vocab_size=300, kind=kind)
    ids = tok("The cat sat")["input_ids"]
    assert ids[0] == tok.cls_token_id and ids[-1] == tok.sep_token_id
    assert tok.unk_token_id not in ids
    assert tok.decode(ids, skip_special_tokens=True).strip() == "the cat sat"


def test_pairs_get_two_segments():
    tok = train_tokenizer(TEXTS, vocab_size=100)
    enc = tok("the cat", "the dog")
    assert tok.convert_ids_to_tokens(enc["input_ids"]) == [
        "[CLS]", "▁the", "▁cat", "[SEP]", "▁the", "▁dog", "[SEP]"]
    assert enc["token_type_ids"] == [0, 0, 0, 0, 1, 1, 1]


def test_batches_pad_with_the_pad_id():
    tok = train_tokenizer(TEXTS, vocab_size=100)
    batch = tok(["the cat", "the cat sat on the mat"], padding=True)
    assert batch["input_ids"][0][-1] == 0 and batch["attention_mask"][0][-1] == 0
    assert len(batch["input_ids"][0]) == len(batch["input_ids"][1])


def test_byte_level_knows_every_script_where_bpe_does_not():
    bpe = train_tokenizer(TEXTS, vocab_size=300, kind="bpe")
    byte = train_tokenizer(TEXTS, vocab_size=300, kind="byte")
    assert bpe.unk_token_id in bpe(MANY_SCRIPTS)["input_ids"]
    ids = byte(MANY_SCRIPTS)["input_ids"]
    assert byte.unk_token_id not in ids
    assert byte.decode(ids, skip_special_tokens=True).strip() == MANY_SCRIPTS.lower()


def test_lowercase_is_optional():
    cased = train_tokenizer(TEXTS + ["The Cat"] * 5, vocab_size=120, lowercase=False)
    assert "▁The" in cased.get_vocab() and "▁the" in cased.get_vocab()


_VOCAB_SCRIPT = """
import json, sys
from metabook.tokenization import KINDS, train_tokenizer
texts = json.loads(sys.stdin.read())
print(json.dumps({k: train_tokenizer(texts, vocab_size=300, kind=k).get_vocab() for k in KINDS}))
"""


def test_training_is_deterministic_across_processes():
    # Rust's hash maps take a random seed in every process; a fresh process must still
    # agree with this one on every token id.
    texts = TEXTS + ["zebra quagga okapi", "quick brown fox"] * 3
    here = {k: train_tokenizer(texts, vocab_size=300, kind=k).get_vocab() for k in KINDS}
    there = subprocess.run([sys.executable, "-c", _VOCAB_SCRIPT], input=json.dumps(texts),
                           capture_output=True, text=True, check=True, timeout=120).stdout
    assert json.loads(there) == here


def test_save_and_load_round_trip(tmp_path):
    tok = train_tokenizer(TEXTS, vocab_size=200, kind="bpe", max_length=64)
    directory = save_tokenizer(tok, tmp_path / "model")
    assert (directory / "tokenizer.json").is_file()
    again = load_tokenizer(directory)
    assert again("the dog saw a cat")["input_ids"] == tok("the dog saw a cat")["input_ids"]
    assert again.model_max_length == 64 and again.mask_token_id == 2


def test_load_errors_are_checkpoint_errors(tmp_path):
    with pytest.raises(CheckpointError, match="no tokenizer.json in"):
        load_tokenizer(tmp_path)
    save_tokenizer(train_tokenizer(TEXTS, vocab_size=100), tmp_path)
    (tmp_path / "tokenizer.json").write_text('{"truncated": ')
    with pytest.raises(CheckpointError, match="is not a readable tokenizer"):
        load_tokenizer(tmp_path)


def test_training_errors_are_clear():
    with pytest.raises(CorpusError, match="no text"):
        train_tokenizer(["", "   "])
    with pytest.raises(CorpusError, match="unknown tokenizer kind 'char'"):
        train_tokenizer(TEXTS, kind="char")
    with pytest.raises(CorpusError, match="too small for a byte tokenizer"):
        train_tokenizer(TEXTS, vocab_size=200, kind="byte")
