"""Bad input gets one clear line and exit status 2, and never costs a saved checkpoint.

Every case is driven through the command line (``metabook.cli.main`` in this
process, and a few real subprocesses), on a tiny labelled ``text_file`` corpus
so that data preparation is instant. For each we check: status 2, exactly one
line on stderr naming the input at fault and what to do, no traceback unless
``--debug`` (which lets the exception through), and, where a run existed, that
its files are byte for byte as before and its checkpoint still loads.
"""
from __future__ import annotations

import builtins
import errno
import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Callable

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import metabook.checkpoint as ckpt_mod
import metabook.distributed as dist_mod
from metabook import cli, data as data_mod, recipes
from metabook.checkpoint import META_FILE, MODEL_FILE, VERSION, load_checkpoint, save_checkpoint
from metabook.config import load_config
from metabook.errors import CheckpointError, ConfigError, CorpusError, OutputError
from metabook.rundir import RunDir
from tests.helpers import CLASSES, PER_CLASS, metabook, write_config

def fail(capsys, *argv: str) -> str:
    """Run the command line, expecting exit status 2 and one line on stderr; returns the line."""
    assert cli.main(list(argv)) == 2
    err = capsys.readouterr().err
    lines = err.splitlines()
    assert len(lines) == 1 and "Traceback" not in err, err
    assert lines[0].startswith(f"metabook {argv[0]}: error: "), lines[0]
    return lines[0]


def snapshot(folder: Path) -> dict[str, str]:
    """sha256 of every file under ``folder``, by relative path."""
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def finished(tmp_path_factory) -> Path:
    """A finished 4-step run (checkpoints at steps 2 and 4); copy it before changing it."""
    folder = tmp_path_factory.mktemp("finished")
    assert cli.main(["pretrain", "--config", str(write_config(folder)), "--out",
                     str(folder / "run"), "--quiet"]) == 0
    return folder / "run"


@pytest.fixture
def run(finished, tmp_path) -> Path:
    copy = tmp_path / "run"
    shutil.copytree(finished, copy)
    return copy


# --- corpora ------------------------------------------------------------------------------

ONE_CLASS = "text,label\n" + "".join(f"sentence number {i},only\n" for i in range(20))

CORPORA = {
    "empty": ("empty.csv", b"", "holds no text"),
    "whitespace only": ("blank.txt", b"  \n\t \n\n", "holds no text"),
    "csv without the columns": ("wrong.csv", b"just some text\nwithout a header\n",
                                "lacks the column(s) ['text', 'label']"),
    "jsonl that is csv": ("wrong.jsonl", b"text,label\nhello,a\n", "is not valid JSON"),
    "latin-1": ("latin1.csv", "text,label\ncaf\xe9 au lait,a\n".encode("latin-1"),
                "is not valid utf-8 (byte 0xe9"),
    "binary": ("binary.csv", bytes(range(256)), "is not valid utf-8"),
    "truncated jsonl": ("cut.jsonl", b'{"text": "a b", "label": "x"}\n{"text": "a',
                        "the file looks truncated"),
    "truncated csv": ("cut.csv", b"text,label\nhello there,a\nhalf a li",
                      "has another number of fields"),
    "one class": ("one.csv", ONE_CLASS.encode(), "has 1 class(es) with at least K+Q=4"),
    "unknown format": ("notes.docx", b"text", "cannot tell the format of notes.docx"),
}


@pytest.mark.parametrize("case", CORPORA, ids=list(CORPORA))
def test_bad_corpus_is_one_line_naming_the_file(case, tmp_path, capsys):
    name, data, expected = CORPORA[case]
    corpus = tmp_path / name
    corpus.write_bytes(data)
    options = {"corpus_options": {"path": str(corpus)}} if name.endswith(".txt") else {}
    line = fail(capsys, "pretrain", "--config", str(write_config(tmp_path, corpus, **options)),
                "--out", str(tmp_path / "out"), "--quiet")
    assert expected in line and name in line
    assert not (tmp_path / "out").exists()  # nothing half-made is left behind


def test_missing_corpus_file_and_a_directory(tmp_path, capsys):
    line = fail(capsys, "pretrain", "--config",
                str(write_config(tmp_path, tmp_path / "nowhere.csv")), "--out", str(tmp_path / "o"))
    assert "no file at" in line and "nowhere.csv" in line and "check the path" in line
    line = fail(capsys, "pretrain", "--config", str(write_config(tmp_path, tmp_path)),
                "--out", str(tmp_path / "o"))
    assert "is a directory; pass the path of one file" in line


WHITESPACE = st.text(alphabet=" \t\n\r\u00a0\u2003\u3000", max_size=40)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(text=WHITESPACE, suffix=st.sampled_from([".txt", ".csv", ".jsonl"]))
def test_whitespace_only_corpora(text, suffix, capsys):
    with tempfile.TemporaryDirectory() as folder:
        folder = Path(folder)
        corpus = folder / f"blank{suffix}"
        header = {".txt": "", ".csv": "text,label\n", ".jsonl": ""}[suffix]
        corpus.write_text(header + text, encoding="utf-8")
        options = {"corpus_options": {"path": str(corpus)}} if suffix == ".txt" else {}
        line = fail(capsys, "pretrain", "--config", str(write_config(folder, corpus, **options)),
                    "--out", str(folder / "out"))
        assert f"blank{suffix} holds no text" in line


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(n=st.integers(0, 6), k=st.integers(0, 8), q=st.integers(0, 8))
def test_task_shapes_the_data_cannot_satisfy(n, k, q, capsys):
    held = max(n, 1)  # as many held-out classes as one episode needs
    satisfiable = min(n, k, q) >= 1 and k + q <= PER_CLASS and 3 * n <= CLASSES
    if satisfiable:
        return  # the finished-run fixture trains such a shape; here only the refusals count
    with tempfile.TemporaryDirectory() as folder:
        folder = Path(folder)
        config = write_config(folder, n_way=n, k_shot=k, q_query=q, test_classes=held,
                              val_classes=held)
        line = fail(capsys, "pretrain", "--config", str(config), "--out", str(folder / "out"))
        if min(n, k, q) < 1:
            assert "must be at least 1" in line and "config.json" in line
        else:
            assert f"K+Q={k + q}" in line and f"= {2 * held + n} are needed" in line
            assert "lower those or k_shot/q_query" in line


# --- configs --------------------------------------------------------------------------------

CONFIGS: dict[str, tuple[str, str]] = {
    "typo'd key": ('{"n_ways": 2}', "unknown config key 'n_ways' in {path} (did you mean 'n_way'?)"),
    "wrong type": ('{"steps": "ten"}', "config key 'steps' in {path} must be of type int, got str"),
    "bool for int": ('{"dim": true}', "config key 'dim' in {path} must be of type int"),
    "unknown dataset": ('{"corpus": "wikipedia"}', "unknown corpus 'wikipedia'; known corpora:"),
    "unknown backbone": ('{"backbone": "resnet"}',
                         "config key 'backbone' in {path} must be one of ['transformer'"),
    "unknown learner": ('{"learner": "sgd"}', "config key 'learner' in {path} must be one of"),
    "not a mapping": ("[1, 2]", "config file {path} must hold a mapping"),
    "broken yaml": ("steps: [1,\n", "config file {path} is neither valid JSON nor YAML"),
    "corpus option typo": ('{"corpus_options": {"pth": "x.csv"}}',
                           "corpus 'text_file' does not take the options {{'pth': 'x.csv'}}"),
    "corpus path a number": ('{"corpus_options": {"path": 3}}',
                             "text_file: path must be a file name, got int 3"),
    "label column absent": ('{"label_column": "topic"}', "has no column 'topic' for label_column"),
    "heads do not divide dim": ('{"dim": 9}', "{path}: config key 'dim' (9) must be divisible"),
}


@pytest.mark.parametrize("case", CONFIGS, ids=list(CONFIGS))
def test_bad_config_is_one_line_naming_the_key(case, tmp_path, capsys):
    changes, expected = CONFIGS[case]
    good = json.loads(write_config(tmp_path).read_text())
    loaded = json.loads(changes) if changes.lstrip().startswith(("{", "[")) else None
    path = tmp_path / "bad.yaml"
    if isinstance(loaded, dict):
        path.write_text(json.dumps({**good, **loaded}))
    else:
        path.write_text(changes)
    line = fail(capsys, "pretrain", "--config", str(path), "--out", str(tmp_path / "out"))
    assert expected.format(path=path) in line, line


def test_config_in_another_encoding_or_a_folder(tmp_path, capsys):
    path = tmp_path / "latin1.yaml"
    path.write_bytes("corpus: caf\xe9\n".encode("latin-1"))
    line = fail(capsys, "pretrain", "--config", str(path))
    assert f"config file {path} is not UTF-8 text (byte 0xe9" in line
    line = fail(capsys, "pretrain", "--config", str(tmp_path))
    assert f"cannot read config file {tmp_path} (Is a directory)" in line


# --- checkpoints ----------------------------------------------------------------------------

def _truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def _edit_meta(change: Callable[[dict], object]) -> Callable[[Path], None]:
    def edit(ckpt: Path) -> None:
        meta = json.loads((ckpt / META_FILE).read_text())
        change(meta)
        (ckpt / META_FILE).write_text(json.dumps(meta))
    return edit


def _other_shape(ckpt: Path) -> None:
    """Replace the checkpoint by one of a wider model (dim 16) trained on the same data."""
    run = ckpt.parent.parent
    config = load_config(run / "config.json").replace(dim=16)
    data = data_mod.prepare_data(config)
    wide = recipes.build_learner(config, len(data.vocab), data.vocab.pad_id)
    old = load_checkpoint(ckpt)
    shutil.rmtree(ckpt)
    save_checkpoint(ckpt, wide.state_dict(), {k: v for k, v in old.meta.items()
                                              if k not in ("files", "shapes", "optimizer")},
                    torch.optim.Adam(wide.parameters()).state_dict())


def _foreign(ckpt: Path) -> None:
    shutil.rmtree(ckpt)
    ckpt.mkdir()
    (ckpt / "pytorch_model.bin").write_bytes(b"\x80\x04not ours")


DAMAGE: dict[str, tuple[Callable[[Path], None], str]] = {
    "truncated weights": (lambda c: _truncate(c / MODEL_FILE),
                          "model.safetensors is truncated or corrupt"),
    "truncated meta": (lambda c: _truncate(c / META_FILE), "meta.json is truncated or corrupt"),
    "future format": (_edit_meta(lambda m: m.update(version=VERSION + 1)),
                      f"was written by a newer metabook (checkpoint format version {VERSION + 1}"),
    "another format": (_edit_meta(lambda m: m.update(format="other-tool")),
                       "is not a metabook checkpoint (format 'other-tool'"),
    "not a checkpoint": (_foreign, "is not a metabook checkpoint (it has no meta.json)"),
    "another model shape": (_other_shape, "but the model expects"),
    "broken pointer": (lambda c: (c.parent / "latest.json").write_text('{"latest": '),
                       "latest.json is corrupt"),
}


@pytest.mark.parametrize("command", ["resume", "evaluate"])
@pytest.mark.parametrize("case", DAMAGE, ids=list(DAMAGE))
def test_damaged_checkpoint_is_one_line_and_nothing_else_changes(case, command, run, capsys):
    damage, expected = DAMAGE[case]
    latest = run / "checkpoints" / "step-000004"
    earlier = snapshot(run / "checkpoints" / "step-000002")
    damage(latest)
    before = snapshot(run)
    argv = (["pretrain", "--out", str(run), "--resume", "--quiet"]
            if command == "resume" else
            ["evaluate", str(run), "--checkpoint", "latest", "--episodes", "2", "--quiet"])
    line = fail(capsys, *argv)
    assert expected in line, line
    assert "step-000004" in line or "latest.json" in line  # names the file at fault
    assert any(w in line for w in ("delete", "upgrade", "point", "load it into"))  # what to do
    assert snapshot(run) == before
    assert snapshot(run / "checkpoints" / "step-000002") == earlier
    load_checkpoint(run / "checkpoints" / "step-000002")


def test_debug_lets_the_exception_through(run, tmp_path):
    _truncate(run / "checkpoints" / "step-000004" / MODEL_FILE)
    with pytest.raises(CheckpointError, match="truncated or corrupt"):
        cli.main(["--debug", "evaluate", str(run), "--checkpoint", "latest", "--quiet"])
    with pytest.raises(ConfigError, match="did you mean 'n_way'"):
        config = tmp_path / "typo.json"
        config.write_text('{"n_ways": 2}')
        cli.main(["--debug", "pretrain", "--config", str(config)])
    corpus = tmp_path / "empty.csv"
    corpus.write_text("")
    with pytest.raises(CorpusError, match="holds no text"):
        cli.main(["--debug", "pretrain", "--config", str(write_config(tmp_path, corpus)),
                  "--out", str(tmp_path / "o")])


# --- a loss that blows up -------------------------------------------------------------------

@pytest.mark.parametrize("value", [float("nan"), float("inf")])
def test_nan_loss_keeps_the_last_checkpoint_and_resumes(value, tmp_path, capsys, monkeypatch):
    real, calls = dist_mod.distributed_meta_loss, []

    def blow_up_at_step_3(learner, tasks):
        calls.append(1)
        loss = real(learner, tasks)
        return loss * value if len(calls) == 3 else loss

    monkeypatch.setattr(dist_mod, "distributed_meta_loss", blow_up_at_step_3)
    out = tmp_path / "out"
    line = fail(capsys, "pretrain", "--config", str(write_config(tmp_path)), "--out", str(out),
                "--quiet")
    assert f"the meta-loss became {value} at step 3" in line
    assert f"the last good checkpoint is {out / 'checkpoints' / 'step-000002'}" in line
    assert "Lower outer_lr or clip_grad, or check the data" in line
    saved = snapshot(out / "checkpoints" / "step-000002")
    ckpt = load_checkpoint(RunDir(out).latest())
    assert ckpt.meta["step"] == 2 and all(torch.isfinite(t).all() for t in ckpt.model.values())
    monkeypatch.setattr(dist_mod, "distributed_meta_loss", real)
    assert cli.main(["pretrain", "--out", str(out), "--resume", "--quiet"]) == 0
    assert snapshot(out / "checkpoints" / "step-000002") == saved
    assert [r["step"] for r in RunDir(out).read_log() if "loss" in r] == [1, 2, 3, 4]


# --- a full disk, a read-only or forbidden folder ---------------------------------------------

STRERROR = {errno.ENOSPC: "No space left on device", errno.EROFS: "Read-only file system",
            errno.EACCES: "Permission denied"}
ADVICE = {errno.ENOSPC: "free some space or choose another output folder (--out)",
          errno.EROFS: "choose an output folder on a writable disk (--out)",
          errno.EACCES: "choose an output folder you may write to (--out)"}


def deny_writes(monkeypatch, root: Path, code: int) -> None:
    """Make every write under ``root`` fail with ``code``, as the kernel would.

    Tests run as root, so permissions cannot be used; instead the calls that
    create, write, rename or delete files (Python's and safetensors' writer)
    raise. Reading still works. A full disk still lets directories be made.
    """
    def inside(path) -> bool:
        return isinstance(path, (str, os.PathLike)) and Path(os.path.abspath(path)).is_relative_to(root)

    def refuse(path):
        raise OSError(code, STRERROR[code], str(path))

    real_open, real_os_open = builtins.open, os.open
    real_mkdir, real_rename, real_replace, real_unlink = os.mkdir, os.rename, os.replace, os.unlink
    real_save = ckpt_mod.save_file

    def fake_open(file, mode="r", *args, **kwargs):
        if inside(file) and any(c in mode for c in "wax+"):
            refuse(file)
        return real_open(file, mode, *args, **kwargs)

    def fake_os_open(path, flags, *args, **kwargs):
        if inside(path) and flags & (os.O_WRONLY | os.O_RDWR | os.O_CREAT):
            refuse(path)
        return real_os_open(path, flags, *args, **kwargs)

    def fake_mkdir(path, *args, **kwargs):
        if inside(path) and code != errno.ENOSPC and not os.path.exists(path):
            refuse(path)
        return real_mkdir(path, *args, **kwargs)

    def guard(real):
        def fake(src, *args, **kwargs):
            if inside(src):
                refuse(src)
            return real(src, *args, **kwargs)
        return fake

    def fake_save(tensors, filename, *args, **kwargs):
        if inside(filename):
            refuse(filename)
        return real_save(tensors, filename, *args, **kwargs)

    monkeypatch.setattr(builtins, "open", fake_open)
    monkeypatch.setattr(os, "open", fake_os_open)
    monkeypatch.setattr(os, "mkdir", fake_mkdir)
    monkeypatch.setattr(os, "rename", guard(real_rename))
    monkeypatch.setattr(os, "replace", guard(real_replace))
    monkeypatch.setattr(os, "unlink", guard(real_unlink))
    monkeypatch.setattr(ckpt_mod, "save_file", fake_save)


CODES = [errno.ENOSPC, errno.EROFS, errno.EACCES]


@pytest.mark.parametrize("code", CODES, ids=errno.errorcode.get)
def test_new_run_into_a_folder_that_refuses_writes(code, tmp_path, capsys, monkeypatch):
    config = write_config(tmp_path)
    out = tmp_path / "out"
    deny_writes(monkeypatch, out, code)
    line = fail(capsys, "pretrain", "--config", str(config), "--out", str(out), "--quiet")
    # The folder (a full disk still makes folders), or the lock file in it, is the first write.
    assert f"cannot write the run to {out}: {STRERROR[code]}; {ADVICE[code]}" in line, line
    assert not out.exists()  # nothing half-made is left behind


@pytest.mark.parametrize("code", CODES, ids=errno.errorcode.get)
def test_resume_into_a_folder_that_refuses_writes(code, run, capsys, monkeypatch):
    before = snapshot(run)
    deny_writes(monkeypatch, run, code)
    line = fail(capsys, "pretrain", "--out", str(run), "--steps", "6", "--resume", "--quiet")
    # The lock file is the first write, before config.json.
    assert f"cannot write the run to {run}: {STRERROR[code]}; {ADVICE[code]}" in line, line
    monkeypatch.undo()
    assert snapshot(run) == before
    load_checkpoint(RunDir(run).latest())


@pytest.mark.parametrize("code", CODES, ids=errno.errorcode.get)
def test_disk_fills_during_a_save(code, run, capsys, monkeypatch):
    """The folder turns bad between two checkpoints: the save fails, the last one stays."""
    before = snapshot(run / "checkpoints")
    real, calls = ckpt_mod.save_file, []

    def fail_on_the_next_checkpoint(tensors, filename, *args, **kwargs):
        calls.append(filename)
        raise OSError(code, STRERROR[code], filename)

    monkeypatch.setattr(ckpt_mod, "save_file", fail_on_the_next_checkpoint)
    line = fail(capsys, "pretrain", "--out", str(run), "--steps", "6", "--resume", "--quiet")
    step6 = run / "checkpoints" / "step-000006"
    assert line == (f"metabook pretrain: error: cannot write checkpoint to {step6}: "
                    f"{STRERROR[code]}; {ADVICE[code]}")
    assert calls and not step6.exists()
    monkeypatch.setattr(ckpt_mod, "save_file", real)
    assert snapshot(run / "checkpoints") == before  # no temporary left, nothing replaced
    assert RunDir(run).latest().name == "step-000004"
    assert cli.main(["pretrain", "--out", str(run), "--steps", "6", "--resume", "--quiet"]) == 0
    assert [r["step"] for r in RunDir(run).read_log() if "loss" in r] == list(range(1, 7))


def test_output_error_is_still_an_oserror(tmp_path, monkeypatch):
    """Library code that catches OSError around a save keeps working."""
    deny_writes(monkeypatch, tmp_path, errno.ENOSPC)
    with pytest.raises(OSError) as caught:
        save_checkpoint(tmp_path / "c", {"w": torch.zeros(1)})
    assert isinstance(caught.value, OutputError) and caught.value.errno == errno.ENOSPC


# --- the real command, in a subprocess ----------------------------------------------------------

def test_real_command_prints_one_line_and_debug_the_traceback(run, tmp_path):
    _truncate(run / "checkpoints" / "step-000004" / MODEL_FILE)
    before = snapshot(run)
    result = metabook("evaluate", str(run), "--checkpoint", "latest", "--quiet")
    assert result.returncode == 2 and result.stdout == ""
    assert result.stderr.count("\n") == 1 and "Traceback" not in result.stderr
    assert "model.safetensors is truncated or corrupt" in result.stderr
    config = tmp_path / "typo.yaml"
    config.write_text("n_ways: 2\n")
    result = metabook("--debug", "pretrain", "--config", str(config))
    assert result.returncode == 1 and "Traceback (most recent call last)" in result.stderr
    assert "metabook.errors.ConfigError: unknown config key 'n_ways'" in result.stderr
    assert snapshot(run) == before
