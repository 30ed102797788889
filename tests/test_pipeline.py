"""The workflow: class-disjoint splits, shared episodes, runs, the comparison, Chapter 5's driver."""
from __future__ import annotations

import json

import pytest
import torch

import metabook.cli.reproduce as reproduce
import metabook.comparison as comparison
from metabook.cli.reproduce import reproduce_chapter5
from metabook.comparison import Row, adaptation_grid, compare, markdown_table, verdict
from metabook.config import PretrainConfig
from metabook.data import episodes, prepare_data, to_ids
from metabook.errors import CheckpointError, ConfigError, CorpusError
from metabook.evaluation import Choice
from metabook.recipes import LEARNERS, build_learner, build_sampler
from metabook.runs import curve_over_shots, curve_over_steps, evaluate_run, load_run, pretrain
from metabook.models import BACKBONES, Backbone, TextEncoder
from metabook.tasks import trim
from metabook.tokenization import SubwordTokenizer, train_tokenizer
from tests.helpers import CLASSES, TINY_RUN, corpus_text

TINY = PretrainConfig(dim=16, layers=1, heads=2, meta_batch=2, steps=4, eval_every=2,
                      checkpoint_every=2, val_episodes=3, test_episodes=6, max_len=24)


@pytest.fixture(scope="module")
def data():
    return prepare_data(TINY)


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    out = tmp_path_factory.mktemp("run")
    pretrain(TINY, out, progress=False)
    return load_run(out)


def test_classes_are_split_disjointly(data):
    train, val, test = (set(data.classes[s]) for s in ("train", "val", "test"))
    assert not (train & val or train & test or val & test)
    assert (len(test), len(val)) == (TINY.test_classes, TINY.val_classes) and len(train) >= TINY.n_way
    for split in ("train", "val", "test"):
        assert set(data.labels[split]) == set(data.classes[split])
        assert data.ids[split].shape == (len(data.texts[split]), TINY.max_len)
    texts = [set(data.texts[s]) for s in ("train", "val", "test")]
    assert not (texts[0] & texts[1] or texts[0] & texts[2] or texts[1] & texts[2])
    again = prepare_data(TINY)
    assert again.classes == data.classes and torch.equal(again.ids["test"], data.ids["test"])
    assert prepare_data(TINY.replace(split_seed=1)).classes != data.classes


def test_too_many_held_out_classes(data):
    with pytest.raises(ConfigError, match="test_classes \\+ val_classes \\+ n_way = 45 are needed"):
        prepare_data(TINY.replace(test_classes=20, val_classes=20))


def test_episodes_are_identical_across_calls(data):
    a = episodes(data, "test", 5, 5, 4, 4, seed=7)
    b = episodes(data, "test", 5, 5, 4, 4, seed=7)
    c = episodes(data, "test", 5, 5, 4, 4, seed=8)
    for x, y in zip(a, b):
        assert torch.equal(x.support_x, y.support_x) and torch.equal(x.query_x, y.query_x)
    assert any(not torch.equal(x.support_x, y.support_x) for x, y in zip(a, c))
    for t in a:
        assert set(t.classes) <= set(data.classes["test"])
        assert not set(t.support_x.tolist()) & set(t.query_x.tolist())


def test_to_ids_looks_up_rows_and_trims_padding(data):
    index = episodes(data, "test", 20, 5, 4, 4, seed=0)
    widths = []
    for task, ids in zip(index, to_ids(index, data.ids["test"])):
        full = torch.cat([data.ids["test"][task.support_x], data.ids["test"][task.query_x]])
        width = int((full != 0).sum(1).max())  # the longest sentence of the task
        assert ids.support_x.shape[1] == ids.query_x.shape[1] == width
        assert torch.equal(ids.support_x, data.ids["test"][task.support_x][:, :width])
        assert torch.equal(ids.query_x, data.ids["test"][task.query_x][:, :width])
        widths.append(width)
    assert min(widths) < TINY.max_len


def test_trimming_does_not_change_what_a_learner_sees(data):
    learner = build_learner(TINY.replace(max_len=TINY.max_len + 8), len(data.vocab))
    (task,) = to_ids(episodes(data, "test", 1, 5, 4, 4, seed=0), data.ids["test"])
    padded = type(task)(torch.nn.functional.pad(task.support_x, (0, 8)), task.support_y,
                        torch.nn.functional.pad(task.query_x, (0, 8)), task.query_y)
    assert trim(padded).support_x.shape == task.support_x.shape
    assert torch.allclose(learner.query_logits(padded), learner.query_logits(task), atol=1e-5)


@pytest.mark.parametrize("kind", LEARNERS.names())
def test_every_learner_builds_and_trains(data, kind):
    learner = build_learner(TINY.replace(learner=kind), len(data.vocab))
    sampler = build_sampler(TINY, data)
    loss = learner.meta_batch_loss(sampler.sample_batch(2))
    loss.backward()
    assert torch.isfinite(loss)
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in learner.parameters())


@pytest.mark.parametrize("tasks, names", [("smlmt", ["smlmt"]), ("supervised", ["train-classes"]),
                                          ("hybrid", ["smlmt", "train-classes"])])
def test_sampler_sources(data, tasks, names):
    sampler = build_sampler(TINY.replace(tasks=tasks), data)
    assert [s.name for s in sampler.sources] == names
    task = sampler.sample()
    assert task.support_x.shape[0] == TINY.n_way * TINY.k_shot and task.support_x.shape[1] <= 24


def test_pretrain_writes_a_loadable_run(run):
    out = run.out
    assert {p.name for p in out.iterdir()} >= {"config.json", "vocab.json", "log.jsonl",
                                               "checkpoints", "result.json"}
    result = json.loads((out / "result.json").read_text())
    assert result["step"] == 4 and result["fingerprint"] == TINY.fingerprint()
    assert run.config == TINY and run.step == result["best_step"]
    assert load_run(out, "latest").step == 4
    ev = evaluate_run(run, n_episodes=5)
    assert len(ev.before) == len(ev.after) == 5
    assert all(0 <= a <= 1 for a in ev.after)


def test_resume_checks(run, tmp_path):
    with pytest.raises(CheckpointError, match="already holds a run"):
        pretrain(TINY, run.out, progress=False)
    with pytest.raises(ConfigError, match=r"differs from the one .* in \['dim'\]"):
        pretrain(TINY.replace(dim=32), run.out, steps=6, resume=True, progress=False)
    with pytest.raises(CheckpointError, match="holds no run to resume"):
        pretrain(TINY, tmp_path, resume=True, progress=False)
    with pytest.raises(CheckpointError, match="holds no metabook run"):
        load_run(tmp_path)
    with pytest.raises(ConfigError, match="which must be"):
        load_run(run.out, "worst")


def test_curves(run):
    steps = curve_over_steps(run, [0, 1], n_episodes=4)
    assert [x for x, _ in steps] == [0, 1] and all(iv.n == 4 for _, iv in steps)
    assert steps[0][1].mean == pytest.approx(evaluate_run(run, 4).before_ci.mean)
    shots = curve_over_shots(run, [1, 2], n_episodes=4)
    assert [x for x, _ in shots] == [1, 2]


def test_compare_measures_every_method_on_the_same_episodes(run, tmp_path, monkeypatch):
    seen = []
    real_evaluate = comparison.evaluate

    def spy(learner, tasks, **kwargs):
        seen.append(tasks)
        return real_evaluate(learner, tasks, **kwargs)

    index_seen = []

    def fake_minilm_embeddings(texts, tokenizer, model, **kwargs):
        assert list(texts) == run.data.texts["test"]
        return torch.randn(len(texts), 8)

    def spy_prototypes(embeddings, tasks):
        index_seen.append(tasks)
        return [0.5] * len(tasks)

    chosen_on = []
    real_select = comparison.select_adaptation

    def spy_select(learner, tasks, steps, lrs):
        chosen_on.append(tasks)
        return real_select(learner, tasks, steps, lrs)

    monkeypatch.setattr(comparison, "evaluate", spy)
    monkeypatch.setattr(comparison, "select_adaptation", spy_select)
    monkeypatch.setattr(comparison, "load_minilm", lambda: (None, torch.nn.Linear(2, 2)))
    monkeypatch.setattr(comparison, "minilm_embeddings", fake_minilm_embeddings)
    monkeypatch.setattr(comparison, "prototype_accuracies", spy_prototypes)
    rows = compare(run, tmp_path, n_episodes=5)
    assert [r.key for r in rows] == ["none", "mlm", "multitask", "meta", "minilm"]
    assert all(len(r.before) == 5 for r in rows)
    assert len(seen) == 4 and len(index_seen) == 1
    for tasks in seen[1:]:
        for a, b in zip(seen[0], tasks):
            assert torch.equal(a.support_x, b.support_x) and torch.equal(a.query_y, b.query_y)
    for a, b in zip(seen[0], to_ids(index_seen[0], run.data.ids["test"])):
        assert torch.equal(a.support_x, b.support_x) and torch.equal(a.query_x, b.query_x)
    assert (tmp_path / "baselines" / "mlm" / "model.safetensors").is_file()
    # every adapted method chose its adaptation from the same grid, on validation episodes
    steps, lrs = adaptation_grid(run.config)
    assert len(chosen_on) == 4
    val_classes = set(run.data.classes["val"])
    for tasks in chosen_on:
        assert tasks is chosen_on[0] and all(set(t.classes) <= val_classes for t in tasks)
    for r in rows[:4]:
        assert r.choice.steps in steps and (r.choice.steps == 0 or r.choice.lr in lrs)


def _row(key, after):
    return Row(key, key.upper(), list(after), list(after), 10, 1.0)


def test_verdict_and_table():
    meta = _row("meta", [0.6, 0.7, 0.8, 0.7])
    rows = [_row("worse", [0.4, 0.5, 0.6, 0.5]), _row("same", [0.7, 0.6, 0.8, 0.7]),
            _row("better", [0.9, 0.95, 1.0, 0.95]), meta]
    text = verdict(rows)
    assert text.startswith("On 4 shared test episodes, meta-pretraining is better than WORSE "
                           "(+20.0 points")
    assert "not distinguishable from SAME" in text and "worse than BETTER (-25.0 points" in text
    twin = _row("twin", meta.after)
    assert verdict([meta, twin]).endswith("meta-pretraining is the same as TWIN on every episode.")
    table = markdown_table(rows).splitlines()
    assert table[0].startswith("| method | parameters | before adaptation | after adaptation |")
    assert table[2] == "| WORSE | 10 | 50.0 ± 8.0 | 50.0 ± 8.0 | — | +20.0 ± 0.0 |"
    assert table[-1].endswith("| 70.0 ± 8.0 | 70.0 ± 8.0 | — | — |")
    chosen = [Choice(4, 0.3, 0.9, {}), Choice(0, 0.1, 0.8, {}), Choice(2, None, 0.7, {})]
    described = [markdown_table([Row("x", "X", [0.5, 0.6], [0.5, 0.6], 1, None, c)]).splitlines()[2]
                 for c in chosen]
    assert [d.split(" | ")[4] for d in described] == \
        ["4 steps, lr 0.3", "0 steps (prototypes)", "2 steps, learned step sizes"]


def test_reproduce_chapter5_writes_and_reuses(run, tmp_path, monkeypatch):
    rows = reproduce_chapter5(tmp_path, TINY, minilm=False)
    assert [r.key for r in rows] == ["none", "mlm", "multitask", "meta"]
    saved = json.loads((tmp_path / "results.json").read_text())
    assert saved["config"] == TINY.to_dict() and len(saved["rows"]) == 4
    assert saved["rows"][0]["episodes"] == TINY.test_episodes
    assert (tmp_path / "results.csv").read_text().startswith("key,method,params,")
    assert (tmp_path / "results.md").read_text().startswith("| method |")

    def no_training(*args, **kwargs):
        raise AssertionError("a finished run and cached baselines must be reused")

    monkeypatch.setattr(reproduce, "pretrain", no_training)
    monkeypatch.setattr(comparison, "pretrain_lm", no_training)
    again = reproduce_chapter5(tmp_path, TINY, minilm=False)
    assert [r.after for r in again] == [r.after for r in rows]


def test_a_backbone_that_brings_its_own_tokenizer_is_one_registration(tmp_path):
    """What a pretrained encoder such as MiniLM needs: its tokenizer replaces the word vocabulary."""
    BACKBONES.register("test-subword", Backbone(
        TextEncoder, tokenizer=lambda texts: SubwordTokenizer(train_tokenizer(texts, vocab_size=400))),
        display="transformer on subwords (a test's)")
    try:
        config = TINY.replace(backbone="test-subword", tasks="supervised", steps=2)
        data = prepare_data(config)
        assert isinstance(data.vocab, SubwordTokenizer) and len(data.vocab) <= 400
        first = data.ids["train"][0]
        assert first[0] == data.vocab.tokenizer.cls_token_id  # subword ids, [CLS] first
        # SMLMT tasks mask with the tokenizer's own [MASK]
        smlmt = build_sampler(config.replace(tasks="smlmt"), data).sample()
        assert (smlmt.support_x == data.vocab.mask_id).any(1).all()
        pretrain(config, tmp_path / "run", progress=False)
        run = load_run(tmp_path / "run")
        assert run.data.vocab.itos == data.vocab.itos and evaluate_run(run, 3).after_ci.n == 3
    finally:
        BACKBONES.remove("test-subword")


def test_a_csv_column_is_a_label_by_naming_it_in_the_config_alone(tmp_path):
    """label_column: speaker is enough; the file's columns need not be named to the reader too."""
    rows = corpus_text().splitlines()
    path = tmp_path / "talks.csv"
    path.write_text("\n".join(["text,topic,speaker"] + [f"{r},spk-{r.rsplit(',', 1)[1]}"
                                                        for r in rows[1:]]) + "\n",
                    encoding="utf-8")
    config = PretrainConfig.from_dict({**TINY_RUN, "corpus_options": {"path": str(path)},
                                       "label_column": "speaker"})
    data = prepare_data(config)
    assert sorted(c for split in data.classes.values() for c in split) == \
        [f"spk-topic{c}" for c in range(CLASSES)]
    with pytest.raises(ConfigError, match=r"has no column 'room' for label_column; its columns "
                                          r"are \['text', 'topic', 'speaker'\]"):
        prepare_data(config.replace(label_column="room"))


def test_a_hugging_face_dataset_on_disk_trains_and_tests_on_its_own_splits(tmp_path):
    """corpus: huggingface with a save_to_disk folder; the test classes come from its test split."""
    import datasets
    rows = [r.rsplit(",", 1) for r in corpus_text().splitlines()[1:]]
    topics = sorted({label for _, label in rows})
    features = datasets.Features({"sentence": datasets.Value("string"),
                                  "topic": datasets.ClassLabel(names=topics)})

    def split(labels, prefix=""):
        kept = [(prefix + t, topics.index(label)) for t, label in rows if label in labels]
        return datasets.Dataset.from_dict({"sentence": [t for t, _ in kept],
                                           "topic": [c for _, c in kept]}, features=features)

    datasets.DatasetDict({"train": split(topics[:4]), "test": split(topics[4:]),
                          "seen": split(topics[:4], prefix="again: ")}).save_to_disk(
        str(tmp_path / "saved"))
    options = {"path": str(tmp_path / "saved"), "text_column": "sentence"}
    config = PretrainConfig.from_dict({**TINY_RUN, "corpus": "huggingface", "label_column": "topic",
                                       "corpus_options": options, "test_corpus": "huggingface",
                                       "test_corpus_options": {**options, "split": "test"}})
    data = prepare_data(config)
    assert data.classes["test"] == topics[4:]  # names, not ids, and from the test split
    # A test split of the training classes is allowed, and said not to test new classes.
    seen = sorted(data.classes["train"])
    with pytest.warns(UserWarning, match=fr"2 of the 4 test classes of test_corpus are training "
                                         fr"classes too \('{seen[0]}', '{seen[1]}'\)"):
        prepare_data(config.replace(test_corpus_options={**options, "split": "seen"}))
    assert sorted(data.classes["train"] + data.classes["val"]) == topics[:4]
    pretrain(config, tmp_path / "run", progress=False)
    assert evaluate_run(load_run(tmp_path / "run"), 3).after_ci.n == 3


def test_rows_without_a_label_are_left_out_with_a_warning_and_6_0_is_the_class_6(tmp_path):
    """A null, empty or blank label is no class; a whole float is the class of its integer."""
    rows = [r.rsplit(",", 1) for r in corpus_text().splitlines()[1:]]
    number = {f"topic{c}": c for c in range(CLASSES)}
    lines = [json.dumps({"text": t, "label": float(number[c]) if i % 2 else number[c]})
             for i, (t, c) in enumerate(rows)]
    lines += [json.dumps({"text": f"no label {i}", "label": None}) for i in range(3)]
    lines += ['{"text": "no label key"}', '{"text": "a blank label", "label": " "}']
    path = tmp_path / "labels.jsonl"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    config = PretrainConfig.from_dict({**TINY_RUN, "corpus_options": {"path": str(path)}})
    with pytest.warns(UserWarning, match=r"labels\.jsonl\): 5 row\(s\) with no 'label' "
                                         r"\(label_column\) are left out"):
        data = prepare_data(config)
    assert sorted(c for split in data.classes.values() for c in split) == \
        [str(c) for c in range(CLASSES)]


def test_a_txt_corpus_is_said_to_have_no_labels(tmp_path):
    path = tmp_path / "sentences.txt"
    path.write_text("".join(f"sentence {i}\n" for i in range(30)), encoding="utf-8")
    config = PretrainConfig.from_dict({**TINY_RUN, "corpus_options": {"path": str(path)}})
    with pytest.raises(ConfigError, match=r"sentences\.txt\) has text only, no labels.*needs "
                                          r"labelled sentences: a \.csv, \.tsv or \.jsonl file"):
        prepare_data(config)


@pytest.mark.parametrize("role", ["val", "test"])
def test_errors_reading_a_val_or_test_corpus_name_its_key_and_file(role, tmp_path):
    config = PretrainConfig.from_dict({
        **TINY_RUN, "corpus_options": {"path": str(tmp_path / "corpus.csv")},
        f"{role}_corpus": "text_file", f"{role}_corpus_options": {"path": str(tmp_path / "x.csv")}})
    (tmp_path / "corpus.csv").write_text(corpus_text(), encoding="utf-8")
    with pytest.raises(CorpusError, match=fr"^{role}_corpus 'text_file' \(.*x\.csv\): "
                                          fr"text_file: no file at"):
        prepare_data(config)
