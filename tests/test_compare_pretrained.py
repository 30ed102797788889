"""`metabook reproduce` with a pretrained encoder, end to end, on any corpus the registry knows.

The encoder is a tiny BERT saved as a Hugging Face checkpoint with MiniLM's
tokenizer (``backbone: hf``, ``pretrained: FOLDER``), so every step runs in
seconds; the corpora are local files in the public formats of CLINC150, FewRel
and SIB-200, written from the chatterbot conversations (topics as classes).
"""
from __future__ import annotations

import csv
import json
from collections import defaultdict
from pathlib import Path

import pytest
import torch
import yaml
from transformers import BertConfig, BertModel

from metabook import corpora
from metabook.cli import main
from metabook.cli import reproduce as drivers
from metabook.config import PretrainConfig
from metabook.pretrained import load_pretrained

TINY = dict(backbone="hf", train_layers=1, n_way=3, k_shot=2, q_query=2, inner_steps=1,
            steps=4, eval_every=2, checkpoint_every=2, patience=0, val_episodes=4,
            test_episodes=6, max_per_class=6, max_len=24, meta_batch=2, tasks="hybrid")
ROWS = ["frozen", "multitask", "finetune", "ngram", "meta", "meta-protonet"]


@pytest.fixture(scope="module")
def encoder_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny BERT with MiniLM's tokenizer, saved as a local Hugging Face checkpoint."""
    path = tmp_path_factory.mktemp("tiny-bert")
    tokenizer, _ = load_pretrained("minilm")
    torch.manual_seed(0)
    BertModel(BertConfig(vocab_size=tokenizer.vocab_size, hidden_size=16, num_hidden_layers=2,
                         num_attention_heads=2, intermediate_size=32),
              add_pooling_layer=False).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def topics() -> dict[str, list[str]]:
    """Up to 10 English chatterbot sentences of each topic."""
    ds = corpora.load("chatterbot", language="english")
    by_topic: dict[str, list[str]] = defaultdict(list)
    for text, topic in zip(ds["text"], ds["domain"]):
        if len(by_topic[topic]) < 10 and text not in by_topic[topic]:
            by_topic[topic].append(text)
    return by_topic


def _run(tmp_path: Path, config: dict, *extra: str) -> dict:
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config), encoding="utf-8")
    out = tmp_path / "out"
    assert main(["reproduce", "chapter5", "--config", str(path), "--out", str(out), "--quiet",
                 *extra]) == 0
    return json.loads((out / "results.json").read_text(encoding="utf-8"))


def _check(results: dict, keys: list[str], episodes: int) -> None:
    rows = {r["key"]: r for r in results["rows"]}
    assert list(rows) == keys
    assert all(r["episodes"] == episodes for r in rows.values())
    assert all(0.0 <= r["before"] <= 1.0 for r in rows.values())
    # zero steps chosen on validation: the test accuracy after adaptation is the one before
    assert all(r["after"] == r["before"] for r in rows.values() if r["inner_steps"] == 0)
    assert rows["frozen"]["params"] == 0 and rows["meta"]["params"] > 0
    assert "meta_minus_this" in rows["frozen"] and "meta_minus_this" not in rows["meta"]
    assert results["verdict"].startswith(f"On {episodes} shared test episodes")


def test_clinc150_format(tmp_path, encoder_dir, topics):
    """Held-out intents of one corpus, as CLINC150's data_full.json holds them."""
    rows = [[t, topic] for topic, texts in topics.items() for t in texts]
    data = tmp_path / "data_full.json"
    data.write_text(json.dumps({"train": rows, "val": [], "test": []}), encoding="utf-8")
    config = {**TINY, "pretrained": str(encoder_dir), "corpus": "clinc150", "label_column": "label",
              "corpus_options": {"split": "train", "data_files": str(data)},
              "test_classes": 4, "val_classes": 3}
    results = _run(tmp_path, config, "--no-scratch")
    _check(results, ROWS, 6)
    with open(tmp_path / "out" / "results.csv", encoding="utf-8") as f:
        assert [r["key"] for r in csv.DictReader(f)] == ROWS


def test_fewrel_format_with_its_validation_relations_as_the_test(tmp_path, encoder_dir, topics):
    """FewRel's split: train on the train relations, test on the validation file's."""
    def relations(names: list[str]) -> dict:
        out = {}
        for name in names:
            out[f"P_{name}"] = [{"tokens": t.split(), "h": [t.split()[0], "Q1", [[0]]],
                                 "t": [t.split()[-1], "Q2", [[len(t.split()) - 1]]]}
                                for t in topics[name] if len(t.split()) > 1]
        return out
    names = sorted(topics)
    files = {"train": tmp_path / "train_wiki.json", "validation": tmp_path / "val_wiki.json"}
    files["train"].write_text(json.dumps(relations(names[:-5])), encoding="utf-8")
    files["validation"].write_text(json.dumps(relations(names[-5:])), encoding="utf-8")
    options = {"data_files": {k: str(v) for k, v in files.items()}}
    config = {**TINY, "pretrained": str(encoder_dir), "corpus": "fewrel", "label_column": "label",
              "corpus_options": {**options, "split": "train"}, "val_classes": 3,
              "test_corpus": "fewrel", "test_corpus_options": {**options, "split": "validation"}}
    _check(_run(tmp_path, config, "--no-scratch", "--baselines", "frozen", "ngram"),
           ["frozen", "ngram", "meta", "meta-protonet"], 6)


def test_sib200_format_with_new_languages_for_validation_and_test(tmp_path, encoder_dir, topics,
                                                                  monkeypatch):
    """SIB-200's setting: the same topics, validated and tested in languages not trained on."""
    def language(code: str, part: slice) -> dict[str, str]:
        folder = tmp_path / code
        folder.mkdir()
        lines = ["index_id\tcategory\ttext"] + [
            f"{i}\t{topic}\t{text}" for i, (topic, text) in enumerate(
                (topic, t) for topic in sorted(topics)[:6] for t in topics[topic][part])]
        for split in ("train", "dev", "test"):
            (folder / f"{split}.tsv").write_text("\n".join(lines) + "\n", encoding="utf-8")
        return {s: str(folder / f"{f}.tsv") for s, f in
                (("train", "train"), ("validation", "dev"), ("test", "test"))}
    options = {code: {"language": code, "data_files": language(code, part)}
               for code, part in (("eng_Latn", slice(0, 6)), ("fra_Latn", slice(6, 8)),
                                  ("nya_Latn", slice(8, 10)))}
    config = {**TINY, "pretrained": str(encoder_dir), "corpus": "sib200", "label_column": "label",
              "corpus_options": {**options["eng_Latn"], "split": "train"},
              "val_corpus": "sib200", "val_corpus_options": {**options["fra_Latn"], "split": "test"},
              "test_corpus": "sib200", "test_corpus_options": {**options["nya_Latn"], "split": "test"},
              "k_shot": 1, "q_query": 1}
    # The from-scratch row too, at a budget that fits a test.
    small = drivers.scratch_config
    monkeypatch.setattr(drivers, "scratch_config",
                        lambda c: small(c).replace(steps=4, eval_every=2, checkpoint_every=2,
                                                   val_episodes=4))
    _check(_run(tmp_path, config), ROWS + ["scratch"], 6)


def test_runs_and_baselines_are_reused_only_with_the_same_config_and_code(tmp_path, encoder_dir,
                                                                          monkeypatch):
    config = PretrainConfig.from_dict({**TINY, "pretrained": str(encoder_dir), "max_per_class": 8,
                                       "learner": "protonet"})
    first = drivers.reproduce(config, tmp_path, learners=["protonet"], scratch=False)
    calls = []
    real_pretrain = drivers.pretrain
    monkeypatch.setattr(drivers, "pretrain", lambda *a, **k: calls.append(a) or real_pretrain(*a, **k))
    again = drivers.reproduce(config, tmp_path, learners=["protonet"], scratch=False)
    assert calls == [] and [r.after for r in again] == [r.after for r in first]
    monkeypatch.setattr(drivers, "package_fingerprint", lambda: "another version of the code")
    weights = sorted((tmp_path / "meta").rglob("*.safetensors"))
    saved = {p.relative_to(tmp_path / "meta"): p.read_bytes() for p in weights}
    drivers.reproduce(config, tmp_path, learners=["protonet"], scratch=False)
    assert len(calls) == 1  # the meta-pretraining run was trained again
    # ... and the older run was kept beside it, not deleted
    assert saved and all((tmp_path / "meta.previous" / name).read_bytes() == data
                         for name, data in saved.items())


def test_examples_are_the_drivers_settings():
    root = Path(__file__).resolve().parents[1] / "examples"
    from metabook.config import load_config

    assert load_config(root / "minilm.yaml") == PretrainConfig.for_scale("small", **drivers.CHAPTER5)
    for name, change in drivers.CHAPTER6.items():
        assert load_config(root / f"chapter6-{name}.yaml") == PretrainConfig.for_scale(
            "small", **{**drivers.CHAPTER5, **change}), name


def test_a_pretrained_run_resumes_bit_for_bit_and_evaluates(tmp_path, encoder_dir, capsys):
    """`metabook pretrain` with a pretrained backbone: stopped, resumed, the same weights."""
    from safetensors.torch import load_file

    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump({**TINY, "pretrained": str(encoder_dir), "steps": 6,
                                      "checkpoint_every": 3, "eval_every": 3}), encoding="utf-8")
    straight, stopped = tmp_path / "straight", tmp_path / "stopped"
    assert main(["pretrain", "--config", str(config), "--out", str(straight), "--quiet"]) == 0
    assert main(["pretrain", "--config", str(config), "--out", str(stopped), "--quiet",
                 "--steps", "3"]) == 0
    assert main(["pretrain", "--out", str(stopped), "--resume", "--steps", "6", "--quiet"]) == 0

    def weights(out: Path) -> dict:
        latest = json.loads((out / "checkpoints" / "latest.json").read_text())["latest"]
        return load_file(out / "checkpoints" / latest / "model.safetensors")
    a, b = weights(straight), weights(stopped)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert not any(k.startswith("frozen.") for k in a)  # the frozen layers come from their source
    capsys.readouterr()
    assert main(["evaluate", str(stopped), "--episodes", "4", "--json", "--quiet"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["episodes"] == 4 and 0 <= report["after"]["accuracy"] <= 1
    assert report["before"]["ci95"] >= 0
