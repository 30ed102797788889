"""PretrainConfig: strict loading from JSON and YAML, types, scales, and derived values."""
from __future__ import annotations

import json

import pytest

from metabook.config import PretrainConfig, load_config
from metabook.errors import ConfigError
from metabook.learners import MAML
from metabook.models import TextClassifier
from metabook.recipes import LEARNERS, build_learner


def test_defaults_are_the_small_scale(monkeypatch):
    monkeypatch.delenv("METABOOK_SCALE", raising=False)
    cfg = PretrainConfig.for_scale()
    assert cfg == PretrainConfig()
    assert cfg.scale == "small" and cfg.test_episodes >= 100


def test_large_scale_is_one_switch(monkeypatch):
    large = PretrainConfig.for_scale("large")
    assert large.scale == "large" and large.dim > PretrainConfig().dim
    assert large.steps > PretrainConfig().steps
    monkeypatch.setenv("METABOOK_SCALE", "large")
    assert PretrainConfig.for_scale() == large
    assert load_config() == large


def test_typo_key_is_named_with_a_suggestion(tmp_path):
    with pytest.raises(ConfigError, match=r"unknown config key 'inner_step' \(did you mean 'inner_steps'\?\)"):
        PretrainConfig.from_dict({"inner_step": 3})
    path = tmp_path / "run.yaml"
    path.write_text("steps: 10\nouter_lrr: 0.01\n")
    with pytest.raises(ConfigError, match=r"'outer_lrr' in .*run\.yaml \(did you mean 'outer_lr'\?\)"):
        load_config(path)


def test_unknown_key_without_a_close_match_lists_the_keys():
    with pytest.raises(ConfigError, match="known keys: corpus, corpus_options"):
        PretrainConfig.from_dict({"zzzzzz": 1})


@pytest.mark.parametrize("key, value, expected", [
    ("steps", "10", "must be of type int, got str '10'"),
    ("steps", 2.5, "must be of type int, got float"),
    ("steps", True, "must be of type int, got bool"),
    ("first_order", 1, "must be of type bool, got int"),
    ("outer_lr", "fast", "must be of type float, got str"),
    ("corpus_options", ["english"], "must be of type dict, got list"),
    ("learner", "mamll", r"must be one of \['maml'"),
    ("tasks", "all", r"must be one of \['smlmt', 'supervised', 'hybrid'\]"),
])
def test_wrong_types_are_refused(key, value, expected):
    with pytest.raises(ConfigError, match=f"config key '{key}' {expected}"):
        PretrainConfig.from_dict({key: value})


def test_an_integer_is_a_fine_float():
    cfg = PretrainConfig.from_dict({"outer_lr": 1})
    assert cfg.outer_lr == 1.0 and isinstance(cfg.outer_lr, float)


@pytest.mark.parametrize("values, expected", [
    ({"steps": 0}, "'steps' must be at least 1"),
    ({"q_query": 0}, "'q_query' must be at least 1"),
    ({"inner_steps": -1}, "'inner_steps' must be >= 0"),
    ({"inner_lr": 0.0}, "'inner_lr' must be > 0"),
    ({"dim": 30, "heads": 4}, "must be divisible by 'heads'"),
    ({"n_way": 8}, "must be at least n_way"),
])
def test_inconsistent_values_are_refused(values, expected):
    with pytest.raises(ConfigError, match=expected):
        PretrainConfig.from_dict(values)


def test_bad_scale(tmp_path, monkeypatch):
    with pytest.raises(ConfigError, match=r"'scale' must be one of \['small', 'large'\]"):
        PretrainConfig.from_dict({"scale": "huge"})
    with pytest.raises(ConfigError, match="scale 'huge' is not one of"):
        PretrainConfig.for_scale("huge")
    path = tmp_path / "c.json"
    path.write_text(json.dumps({"scale": "medium"}))
    with pytest.raises(ConfigError, match=r"'scale' in .*c\.json must be one of"):
        load_config(path)
    monkeypatch.setenv("METABOOK_SCALE", "giant")
    with pytest.raises(ConfigError, match="METABOOK_SCALE='giant'"):
        load_config()


def test_yaml_and_json_files_give_the_same_config(tmp_path):
    (tmp_path / "a.yaml").write_text("# a comment\nsteps: 40\nlearner: maml\n"
                                     "corpus_options:\n  language: english\n")
    (tmp_path / "a.json").write_text(json.dumps({"steps": 40, "learner": "maml",
                                                 "corpus_options": {"language": "english"}}))
    a, b = load_config(tmp_path / "a.yaml"), load_config(tmp_path / "a.json")
    assert a == b and a.steps == 40 and a.learner == "maml"
    assert a.differences(PretrainConfig()) == ["learner", "steps"]


def test_scale_argument_beats_the_file_and_overrides_beat_both(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("scale: small\nsteps: 7\n")
    cfg = load_config(path, scale="large")
    assert cfg.scale == "large" and cfg.dim == 256 and cfg.steps == 7
    assert load_config(path, steps=9).steps == 9
    (tmp_path / "large.yaml").write_text("scale: large\n")
    assert load_config(tmp_path / "large.yaml").dim == 256  # the file's scale picks the defaults


@pytest.mark.parametrize("text, expected", [
    ("steps: [1, 2\n", "neither valid JSON nor YAML"),
    ("- 1\n- 2\n", "must hold a mapping of keys to values, not a list"),
])
def test_malformed_files(tmp_path, text, expected):
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=expected):
        load_config(path)


def test_missing_file(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "nope.yaml")


def test_empty_file_is_the_defaults(tmp_path, monkeypatch):
    monkeypatch.delenv("METABOOK_SCALE", raising=False)
    (tmp_path / "empty.yaml").write_text("")
    assert load_config(tmp_path / "empty.yaml") == PretrainConfig()


def test_save_load_round_trip_and_fingerprint(tmp_path):
    cfg = PretrainConfig(steps=12, learner="metasgd", corpus_options={"language": "spanish"})
    assert load_config(cfg.save(tmp_path / "config.json")) == cfg
    assert cfg.fingerprint() == PretrainConfig.from_dict(cfg.to_dict()).fingerprint()
    assert cfg.fingerprint() != cfg.replace(steps=13).fingerprint()
    assert cfg.fingerprint(ignore=("steps",)) == cfg.replace(steps=13).fingerprint(ignore=("steps",))
    with pytest.raises(ConfigError, match="unknown config key 'step'"):
        cfg.replace(step=3)


def test_names_come_from_the_registries_and_a_new_entry_is_valid_at_once():
    with pytest.raises(ConfigError, match=r"'optimizer' must be one of \['adam', 'adamw', 'sgd'\]"):
        PretrainConfig(optimizer="adagrad")
    with pytest.raises(ConfigError, match=r"'backbone' must be one of \['transformer', 'bert'"):
        PretrainConfig(backbone="resnet")
    LEARNERS.register("test-maml", lambda enc, c: MAML(TextClassifier(enc, c.dim, c.n_way)),
                      display="MAML, registered by a test")
    try:
        config = PretrainConfig.from_dict({"learner": "test-maml", "dim": 8, "heads": 2})
        assert isinstance(build_learner(config, vocab_size=20), MAML)
        assert LEARNERS.display(config.learner) == "MAML, registered by a test"
    finally:
        LEARNERS.remove("test-maml")
    with pytest.raises(ConfigError, match="must be one of"):
        PretrainConfig(learner="test-maml")
