"""The command line, run as readers run it: the console script and ``python -m metabook``."""
from __future__ import annotations

import json

import pytest

from metabook import cli
from metabook.config import load_config
from metabook.errors import ConfigError
from tests.helpers import SCRIPT, corpus_text, metabook, write_config

def test_resumed_run_leaves_byte_identical_weights(tmp_path):
    """The done-when check: 20 steps straight = 10 steps, then --resume to 20."""
    assert SCRIPT.is_file(), "the metabook console script is not installed in this environment"
    a = metabook("pretrain", "--steps", "20", "--out", "A", "--quiet", cwd=tmp_path)
    assert a.returncode == 0, a.stderr
    assert "meta-pretraining finished at step 20" in a.stdout
    b = metabook("pretrain", "--steps", "10", "--out", "B", "--quiet", cwd=tmp_path, module=True)
    assert b.returncode == 0, b.stderr
    b = metabook("pretrain", "--steps", "20", "--out", "B", "--resume", "--quiet", cwd=tmp_path)
    assert b.returncode == 0, b.stderr
    weights = [tmp_path / run / "checkpoints/step-000020/model.safetensors" for run in "AB"]
    assert weights[0].read_bytes() == weights[1].read_bytes()
    assert json.loads((tmp_path / "B/checkpoints/latest.json").read_text())["latest"] == "step-000020"
    assert "meta-pretraining" not in a.stderr  # --quiet hides the progress bar


@pytest.mark.parametrize("command", [[], ["pretrain"], ["evaluate"], ["reproduce"], ["datasets"],
                                     ["info"]])
def test_every_command_has_help(command, capsys):
    with pytest.raises(SystemExit) as exit_:
        cli.main(command + ["--help"])
    assert exit_.value.code == 0
    text = capsys.readouterr().out
    assert text.startswith("usage: metabook")
    expected = {"pretrain": ["--config", "--out", "--steps", "--resume", "--scale", "--quiet"],
                "evaluate": ["--episodes", "--json"], "reproduce": ["chapter5", "--out"]}
    for option in expected.get(command[0] if command else "", []):
        assert option in text


def test_python_dash_m_works(tmp_path):
    result = metabook("datasets", cwd=tmp_path, module=True)
    assert result.returncode == 0 and "chatterbot" in result.stdout and "license" in result.stdout


def test_info_lists_what_the_registries_hold(capsys):
    assert cli.main(["info"]) == 0
    out = capsys.readouterr().out
    assert "protomaml (ProtoMAML)" in out and "gpt2 (GPT-2)" in out and "sgd (SGD)" in out
    assert "small: two CPU cores" in out


def _error(capsys, *argv: str) -> str:
    assert cli.main(list(argv)) == 2
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in captured.err, captured.err
    return lines[0]


def test_user_errors_are_one_line(tmp_path, capsys):
    line = _error(capsys, "pretrain", "--config", str(tmp_path / "missing.yaml"))
    assert line.startswith("metabook pretrain: error: config file") and "does not exist" in line
    (tmp_path / "typo.yaml").write_text("inner_step: 3\n")
    line = _error(capsys, "pretrain", "--config", str(tmp_path / "typo.yaml"), "--out",
                  str(tmp_path / "x"))
    assert "unknown config key 'inner_step'" in line and "did you mean 'inner_steps'?" in line
    line = _error(capsys, "evaluate", str(tmp_path / "nothing"))
    assert "holds no metabook run" in line and "metabook pretrain --out" in line
    line = _error(capsys, "pretrain", "--out", str(tmp_path / "y"), "--resume")
    assert "holds no run to resume" in line and line.endswith("instead of resuming (--resume)")


def test_argument_errors_exit_non_zero(capsys):
    for argv in (["pretrain", "--steps", "0"], ["pretrain", "--scale", "huge"],
                 ["evaluate", "d", "--episodes", "1"], ["reproduce", "chapter9"]):
        with pytest.raises(SystemExit) as exit_:
            cli.main(argv)
        assert exit_.value.code == 2
        assert "error:" in capsys.readouterr().err


def test_debug_shows_the_traceback(tmp_path):
    (tmp_path / "typo.yaml").write_text("inner_step: 3\n")
    with pytest.raises(ConfigError, match="inner_step"):
        cli.main(["--debug", "pretrain", "--config", str(tmp_path / "typo.yaml")])


TINY = {"dim": 16, "layers": 1, "heads": 2, "meta_batch": 2, "steps": 4, "eval_every": 2,
        "checkpoint_every": 2, "val_episodes": 3, "test_episodes": 8, "max_len": 24}


def test_pretrain_evaluate_reproduce(tmp_path, capsys):
    config = tmp_path / "tiny.json"
    config.write_text(json.dumps(TINY))
    run = tmp_path / "run"
    assert cli.main(["pretrain", "--config", str(config), "--out", str(run), "--quiet"]) == 0
    out = capsys.readouterr().out
    assert "at step 4" in out and "best validation accuracy" in out
    assert cli.main(["evaluate", str(run), "--episodes", "5", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["episodes"] == 5 and result["n_way"] == 5
    assert 0 <= result["before"]["accuracy"] <= 1 and result["after"]["ci95"] >= 0
    assert cli.main(["evaluate", str(run), "--quiet"]) == 0
    text = capsys.readouterr().out
    assert "8 test episodes" in text and "before adaptation:" in text and "±" in text
    assert cli.main(["reproduce", "chapter5", "--config", str(config), "--out",
                     str(tmp_path / "r5"), "--no-minilm", "--quiet"]) == 0
    text = capsys.readouterr().out
    assert "| Meta-pretraining (ProtoMAML) + adaptation |" in text
    assert "On 8 shared test episodes, meta-pretraining is" in text
    assert all((tmp_path / "r5" / f"results.{ext}").is_file() for ext in ("json", "csv", "md"))


def test_warnings_are_one_line_and_evaluate_says_which_test_classes_training_saw(tmp_path, capsys):
    """A test_corpus of the training classes: said in one warning line, and by evaluate."""
    text = corpus_text()
    (tmp_path / "corpus.csv").write_text(text, encoding="utf-8")
    (tmp_path / "again.csv").write_text(text.replace("\nsentence", "\nagain sentence"),
                                        encoding="utf-8")
    config = write_config(tmp_path, tmp_path / "corpus.csv", test_corpus="text_file",
                          test_corpus_options={"path": str(tmp_path / "again.csv")})
    assert cli.main(["pretrain", "--config", str(config), "--out", str(tmp_path / "run"),
                     "--quiet"]) == 0
    err = capsys.readouterr().err.splitlines()
    assert err and all(line.startswith("metabook: warning: ") for line in err), err
    assert "of the 6 test classes of test_corpus are training classes too" in err[0]
    assert cli.main(["evaluate", str(tmp_path / "run"), "--quiet"]) == 0
    out = capsys.readouterr().out
    assert "from 6 classes, 4 also training classes (test_corpus)" in out
    assert "held out of pretraining" not in out


def test_evaluate_names_inner_steps_only_for_learners_that_take_them(tmp_path, capsys):
    """ProtoNet takes no inner steps; a run that never validated is measured at its last step."""
    for learner in ("protonet", "protomaml"):
        config = write_config(tmp_path, learner=learner, steps=2, eval_every=5)
        assert cli.main(["pretrain", "--config", str(config), "--out", str(tmp_path / learner),
                         "--quiet"]) == 0
        assert cli.main(["evaluate", str(tmp_path / learner), "--quiet"]) == 0
        out = capsys.readouterr().out
        assert ("inner steps" in out) == (learner == "protomaml"), out
        assert "no validation ran, so this is the latest checkpoint" in out


def test_relative_corpus_paths_are_the_config_files_and_stored_absolute(tmp_path, capsys,
                                                                         monkeypatch):
    """path: corpus.csv next to the config is found from any directory, and so is the run."""
    folder = tmp_path / "exp"
    folder.mkdir()
    (folder / "corpus.csv").write_text(corpus_text(), encoding="utf-8")
    config = write_config(folder, folder / "corpus.csv")
    values = json.loads(config.read_text())
    values["corpus_options"]["path"] = "corpus.csv"
    config.write_text(json.dumps(values))
    monkeypatch.chdir(tmp_path)
    assert cli.main(["pretrain", "--config", "exp/config.json", "--out", "run", "--quiet"]) == 0
    saved = json.loads((tmp_path / "run" / "config.json").read_text())
    assert saved["corpus_options"]["path"] == str(folder / "corpus.csv")
    monkeypatch.chdir(folder)
    assert cli.main(["evaluate", str(tmp_path / "run"), "--quiet"]) == 0
    capsys.readouterr()


def test_only_paths_that_exist_are_made_absolute(tmp_path, monkeypatch):
    """A hub or builder name stays a name; a file is found next to the config, else here."""
    (tmp_path / "conf").mkdir()
    (tmp_path / "conf" / "train.parquet").write_bytes(b"")
    (tmp_path / "here.csv").write_text("text\n")
    (tmp_path / "conf" / "c.yaml").write_text(
        "corpus: huggingface\n"
        "corpus_options: {path: parquet, data_files: {train: train.parquet, test: gone.parquet}}\n"
        "test_corpus: text_file\ntest_corpus_options: {path: here.csv}\n"
        "val_corpus: huggingface\nval_corpus_options: {path: banking77}\n")
    monkeypatch.chdir(tmp_path)
    config = load_config("conf/c.yaml")
    assert config.corpus_options == {"path": "parquet", "data_files": {
        "train": str(tmp_path / "conf" / "train.parquet"), "test": "gone.parquet"}}
    assert config.test_corpus_options == {"path": str(tmp_path / "here.csv")}
    assert config.val_corpus_options == {"path": "banking77"}
