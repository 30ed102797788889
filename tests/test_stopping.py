"""Stopping a run and sharing its folder: Ctrl-C, SIGTERM, a second process, ``kill -9``.

The first test drives the real ``metabook pretrain`` in subprocesses. A
``sitecustomize.py`` on ``PYTHONPATH`` (as in tests/test_killed_run.py) holds
the child inside a step drawn at random until the test has sent its signal, so
the signal lands in the middle of that step and the step the run must stop
after is known exactly. The library holds no hook for it. The other tests
check the pieces in this process, where a test can signal itself.
"""
from __future__ import annotations

import errno
import hashlib
import multiprocessing
import os
import random
import shlex
import signal
import subprocess
import tempfile
import time
from pathlib import Path

import pytest
import torch
from torch import nn

import metabook.checkpoint as ckpt_mod
import metabook.cli.reproduce as reproduce
import metabook.training as training
from metabook import cli, comparison
from metabook.baselines import pretrain_lm
from metabook.config import PretrainConfig, load_config
from metabook.errors import ConfigError, FolderInUseError, TrainingInterrupted
from metabook.learners import MAML
from metabook.models import TextEncoder
from metabook.rundir import LOCK, RunDir, lock_folder
from metabook.runs import load_run, pretrain
from metabook.samplers import UniformSampler
from metabook.tasks import EpisodeSource
from metabook.training import MetaTrainer, Trainer
from tests.helpers import SCRIPT, command_env, write_config

STEPS, EVERY = 24, 8  # validation and a checkpoint every EVERY steps

# METABOOK_PAUSE_AT_STEP=N: step N waits, before it is computed, until the file `go` appears
# in METABOOK_PAUSE_DIR; the file `paused` there says that it waits.
SITECUSTOMIZE = '''
import os, time
from pathlib import Path

if os.environ.get("METABOOK_PAUSE_AT_STEP"):
    import metabook.training as training

    at, folder = int(os.environ["METABOOK_PAUSE_AT_STEP"]), Path(os.environ["METABOOK_PAUSE_DIR"])
    real = training.Trainer.train_step

    def waiting_step(self):
        if self.step + 1 == at:
            (folder / "paused").touch()
            while not (folder / "go").exists():
                time.sleep(0.005)
        return real(self)

    training.Trainer.train_step = waiting_step
'''


class Child:
    """``metabook pretrain ARGS`` in a subprocess, paused inside step ``pause_at`` if given."""

    def __init__(self, folder: Path, *args: str, pause_at: int | None = None):
        # A folder of its own: a child killed while paused leaves its `paused` file behind, and
        # the next child may pause at the same step.
        self.args, self.signals = list(args), Path(tempfile.mkdtemp(prefix="signals-", dir=folder))
        env = command_env(PYTHONPATH=os.pathsep.join(filter(None, [str(folder / "hooks"),
                                                                   os.environ.get("PYTHONPATH")])))
        env.pop("METABOOK_PAUSE_AT_STEP", None)
        if pause_at is not None:
            env.update(METABOOK_PAUSE_AT_STEP=str(pause_at), METABOOK_PAUSE_DIR=str(self.signals))
        self.process = subprocess.Popen([str(SCRIPT), "pretrain", *args], env=env,
                                        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)

    def wait_paused(self) -> None:
        deadline = time.monotonic() + 120
        while not (self.signals / "paused").exists():
            assert self.process.poll() is None, self.process.communicate()
            assert time.monotonic() < deadline, "the run never reached its step"
            time.sleep(0.005)

    def stop(self, signum: int) -> tuple[int, str, str]:
        """Send ``signum`` while the step waits, let the step go on; status, stdout, stderr."""
        self.process.send_signal(signum)
        (self.signals / "go").touch()
        out, err = self.process.communicate(timeout=120)
        return self.process.returncode, out, err

    def finish(self) -> tuple[int, str, str]:
        out, err = self.process.communicate(timeout=120)
        return self.process.returncode, out, err


def _pointer(out: Path) -> str:
    return RunDir(out).latest().name


def _snapshot(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def _refused(capsys, out: Path, owner: int, *argv: str) -> None:
    """The command line, in this process, refuses the folder: status 2, one line naming both."""
    assert cli.main(list(argv)) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err, err
    assert err.startswith(f"metabook {argv[0]}: error: {out} is in use by process {owner} on "), err


def _stopped(status: int, stdout: str, stderr: str, signum: int, step: int, out: Path,
             args: list[str], note: str) -> None:
    """A clean stop: the exit status, one line naming the step, its checkpoint, the resume."""
    assert status == 128 + signum, (note, stderr)
    assert stdout == "" and stderr.count("\n") == 1 and "Traceback" not in stderr, (note, stderr)
    again = shlex.join(["metabook", "pretrain", *args, *([] if "--resume" in args else ["--resume"])])
    assert stderr == (f"metabook pretrain: meta-pretraining stopped by {signal.Signals(signum).name} "
                      f"after step {step}; checkpoint: {out}/checkpoints/step-{step:06d}; "
                      f"resume with: {again}\n"), (note, stderr)
    assert _pointer(out) == f"step-{step:06d}", note


def test_stopped_by_signals_shared_and_killed_it_resumes_to_the_same_weights(tmp_path, capsys):
    (tmp_path / "hooks").mkdir()
    (tmp_path / "hooks" / "sitecustomize.py").write_text(SITECUSTOMIZE)
    config = write_config(tmp_path, per_class=8, q_query=3, dim=16, meta_batch=4, steps=STEPS,
                          eval_every=EVERY, checkpoint_every=EVERY, max_len=16)
    rng = random.Random()
    first, second = rng.sample([signal.SIGINT, signal.SIGTERM], 2)
    before = rng.randint(1, EVERY - 1)  # before the first periodic checkpoint
    killed = rng.randint(EVERY + 1, 2 * EVERY - 1)
    after = rng.randint(EVERY + 1, STEPS - 1)  # after it
    note = f"{first.name} in step {before}, SIGKILL in {killed}, {second.name} in {after}"
    reference, out = tmp_path / "reference", tmp_path / "run"
    new = ["--config", str(config), "--out", str(out), "--quiet"]
    resume = ["--out", str(out), "--resume", "--quiet"]

    straight = Child(tmp_path, "--config", str(config), "--out", str(reference), "--quiet")
    child = Child(tmp_path, *new, pause_at=before)
    child.wait_paused()
    _stopped(*child.stop(first), first, before, out, new, note)
    assert straight.finish()[0] == 0

    # A second process is refused while the first trains, and changes nothing.
    child = Child(tmp_path, *resume, pause_at=killed)
    child.wait_paused()
    owner, files = child.process.pid, _snapshot(out)
    _refused(capsys, out, owner, "pretrain", *resume)
    _refused(capsys, out, owner, "pretrain", *new)
    _refused(capsys, out, owner, "evaluate", str(out), "--quiet")
    assert _snapshot(out) == files, note
    child.process.kill()
    assert child.process.wait(timeout=60) == -signal.SIGKILL
    assert str(owner) in (out / LOCK).read_text()  # the dead owner's lock file is still there

    # ... and does not block the resume.
    child = Child(tmp_path, *resume, pause_at=after)
    child.wait_paused()
    _stopped(*child.stop(second), second, after, out, resume, note)

    status, _, stderr = Child(tmp_path, *resume).finish()
    assert status == 0 and "Traceback" not in stderr, (note, stderr)
    final = f"checkpoints/step-{STEPS:06d}/model.safetensors"
    assert (out / final).read_bytes() == (reference / final).read_bytes(), note
    log, straight_log = RunDir(out).read_log(), RunDir(reference).read_log()
    assert [r["step"] for r in log if "loss" in r] == list(range(1, STEPS + 1)), note
    assert [r["loss"] for r in log if "loss" in r] == [r["loss"] for r in straight_log
                                                       if "loss" in r], note
    assert not (out / LOCK).exists()


# --- the loop: where a signal stops it, what a second one does, what stays as it was -------------

def _trainer(out: Path | None, **options) -> MetaTrainer:
    torch.manual_seed(0)
    x = torch.randn(60, 3, generator=torch.Generator().manual_seed(0))
    source = EpisodeSource(x, [i % 4 for i in range(60)], 2, 2, 2)
    return MetaTrainer(MAML(nn.Linear(3, 2), lr=0.5), UniformSampler([source], seed=1), out,
                       outer_lr=0.05, meta_batch=2, progress=False, **options)


def _signal_at(step: int, signum: int, then=None):
    """An ``on_step`` that sends this process ``signum`` after ``step`` (and calls ``then``)."""
    def on_step(at: int, record: dict) -> None:
        if at == step:
            if then is not None:
                then()
            os.kill(os.getpid(), signum)
    return on_step


def _same(a: nn.Module, b: nn.Module) -> bool:
    return all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))


def test_a_second_signal_abandons_the_save_and_the_checkpoint_before_stays(tmp_path, monkeypatch):
    straight = _trainer(tmp_path / "straight", checkpoint_every=3)
    straight.train(8)
    monkeypatch.setattr(training, "REPEAT_SECONDS", 0.0)
    real = ckpt_mod.save_file

    def save_then_signal(tensors, filename, *args, **kwargs):
        real(tensors, filename, *args, **kwargs)
        os.kill(os.getpid(), signal.SIGINT)  # the impatient second Ctrl-C, mid-save

    def second_signal_in_the_next_save():
        monkeypatch.setattr(ckpt_mod, "save_file", save_then_signal)

    out = tmp_path / "stopped"
    trainer = _trainer(out, checkpoint_every=3,
                       on_step=_signal_at(5, signal.SIGINT, second_signal_in_the_next_save))
    with pytest.raises(TrainingInterrupted) as caught:
        trainer.train(8)
    err = caught.value
    assert (err.signum, err.step, err.saved, err.exit_status) == (signal.SIGINT, 3, False, 130)
    assert err.checkpoint == RunDir(out).checkpoint_path(3)
    assert str(err).startswith("meta-pretraining stopped at once by a second SIGINT, before "
                               "saving; the latest checkpoint is ")
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == \
        ["latest.json", "step-000003"]  # nothing half-saved
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
    monkeypatch.setattr(ckpt_mod, "save_file", real)
    resumed = _trainer(out, checkpoint_every=3)
    resumed.train(8, resume=True)
    assert _same(resumed.learner, straight.learner)


def test_in_memory_training_stops_after_the_step_and_restores_the_handlers():
    reference = _trainer(None)
    reference.train(3)
    trainer = _trainer(None, on_step=_signal_at(3, signal.SIGTERM))
    with pytest.raises(KeyboardInterrupt) as caught:
        trainer.train(10)
    err = caught.value
    assert isinstance(err, TrainingInterrupted) and err.exit_status == 143
    assert (err.step, err.checkpoint, err.saved) == (3, None, False)
    assert "stopped by SIGTERM; the weights are those after step 3" in str(err)
    assert _same(trainer.learner, reference.learner)
    assert signal.getsignal(signal.SIGTERM) == signal.SIG_DFL


def test_a_signal_the_process_ignores_stays_ignored():
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)  # as for a background job
    try:
        result = _trainer(None, on_step=_signal_at(2, signal.SIGINT)).train(4)
        assert result.stopped == "completed" and result.step == 4
        assert signal.getsignal(signal.SIGINT) == signal.SIG_IGN
    finally:
        signal.signal(signal.SIGINT, previous)


def test_checkpoints_by_time_leave_the_trajectory_alone(tmp_path):
    by_time = _trainer(tmp_path / "a", checkpoint_every=100, checkpoint_minutes=1e-9)
    by_time.train(6)
    by_steps = _trainer(tmp_path / "b", checkpoint_every=100)
    by_steps.train(6)
    saved = lambda out: [r["step"] for r in RunDir(out).read_log()  # noqa: E731
                         if r.get("event") == "checkpoint"]
    assert saved(tmp_path / "a") == [1, 2, 3, 4, 5, 6] and saved(tmp_path / "b") == [6]
    assert _same(by_time.learner, by_steps.learner)
    assert by_time.losses == by_steps.losses
    assert PretrainConfig().checkpoint_minutes > 0  # on unless a config turns it off
    with pytest.raises(ConfigError, match="'checkpoint_minutes' must be >= 0"):
        PretrainConfig(checkpoint_minutes=-1)


# --- the baselines' pretraining: the same loop, the same stop --------------------------------------

def _lm(out: Path | None, steps: int = 16, **options):
    torch.manual_seed(0)
    encoder = TextEncoder(30, dim=8, heads=2, layers=1, max_len=8)
    ids = torch.randint(4, 30, (64, 8), generator=torch.Generator().manual_seed(0))
    start = [p.detach().clone() for p in encoder.parameters()]

    def validate(enc: nn.Module) -> float:  # falls as training moves away: the first is best
        return -sum(float((p.detach() - s).abs().sum()) for p, s in zip(enc.parameters(), start))

    log = pretrain_lm(encoder, ids, vocab_size=30, mask_id=2, pad_id=0, special_ids=[1, 2, 3],
                      steps=steps, batch_size=8, lr=1e-2, seed=0, dim=8, eval_every=5,
                      validate=validate, out=out, **options)
    return encoder, log


def _signal_in_step(step: int, monkeypatch) -> None:
    """Every Trainer sends this process SIGINT while it computes step ``step``."""
    real = Trainer.train_step

    def step_then_signal(self):
        if self.step + 1 == step:
            os.kill(os.getpid(), signal.SIGINT)
        return real(self)

    monkeypatch.setattr(Trainer, "train_step", step_then_signal)


def test_baseline_pretraining_stops_and_resumes_to_the_same_encoder(tmp_path, monkeypatch):
    straight, straight_log = _lm(tmp_path / "straight")
    _signal_in_step(8, monkeypatch)
    with pytest.raises(TrainingInterrupted, match=r"^mlm pretraining stopped by SIGINT after "
                                                  r"step 8; checkpoint: .*step-000008$"):
        _lm(tmp_path / "stopped")
    monkeypatch.undo()
    resumed, log = _lm(tmp_path / "stopped", resume=True)
    assert straight_log.best_step == 5  # so the resumed run ends at weights from its checkpoint
    assert _same(resumed, straight)
    assert (log.losses, log.validation, log.best_step) == \
        (straight_log.losses, straight_log.validation, straight_log.best_step)


def test_reproduce_continues_a_stopped_baseline_and_a_stopped_run(tmp_path, monkeypatch):
    config = load_config(write_config(tmp_path))  # 4 steps, checkpoints at 2 and 4
    _signal_in_step(3, monkeypatch)
    with pytest.raises(TrainingInterrupted):
        pretrain(config, tmp_path / "b" / "meta", progress=False)
    run = load_run(tmp_path / "b" / "meta")
    with pytest.raises(TrainingInterrupted):
        comparison._baseline_encoder(run, tmp_path / "b", "mlm", progress=False)
    monkeypatch.undo()
    encoder, _ = comparison._baseline_encoder(run, tmp_path / "a", "mlm", progress=False)
    assert list((tmp_path / "b" / "baselines" / "mlm").glob("run-*/checkpoints/step-000003"))
    again, _ = comparison._baseline_encoder(run, tmp_path / "b", "mlm", progress=False)
    assert _same(again, encoder)
    assert not list((tmp_path / "b" / "baselines" / "mlm").glob("run-*"))  # replaced by the cache

    class Resumed(Exception):
        pass

    def spy(config, out, resume=False, progress=False):
        assert resume, "the stopped meta-pretraining run was not continued"
        raise Resumed

    monkeypatch.setattr(reproduce, "pretrain", spy)
    with pytest.raises(Resumed):
        reproduce.reproduce_chapter5(tmp_path / "b", config, minilm=False)


# --- the lock ---------------------------------------------------------------------------------------

def _hold(folder: Path, ready) -> None:
    lock_folder(folder, "a test's child")
    ready.set()
    time.sleep(120)


def test_one_process_owns_a_folder_until_it_dies(tmp_path, capsys):
    out = tmp_path / "out"
    context = multiprocessing.get_context("fork")
    ready = context.Event()
    child = context.Process(target=_hold, args=(out, ready), daemon=True)
    child.start()
    try:
        assert ready.wait(60)
        with pytest.raises(FolderInUseError, match=f"in use by process {child.pid} on .* "
                                                   f"\\(a test's child, since ") as caught:
            lock_folder(out, "a test")
        assert caught.value.pid == child.pid
        _refused(capsys, out, child.pid, "reproduce", "chapter5", "--out", str(out),
                 "--no-minilm")
    finally:
        os.kill(child.pid, signal.SIGKILL)
        child.join()
    assert (out / LOCK).is_file()  # left by the killed owner, and no obstacle:
    with RunDir(out).lock("a test") as lock:
        with RunDir(out).lock("the same process again"):
            assert lock.held
        assert (out / LOCK).is_file()
    assert not (out / LOCK).exists()


def test_a_reader_of_a_folder_it_may_not_write_takes_no_lock(tmp_path, monkeypatch):
    run = RunDir(tmp_path / "shared")
    run.create()
    real = os.open

    def read_only(path, flags, *args):
        if Path(path).parent == run.path and flags & os.O_CREAT:
            raise OSError(errno.EROFS, "Read-only file system", str(path))
        return real(path, flags, *args)

    monkeypatch.setattr(os, "open", read_only)
    with run.lock() as lock:
        assert not lock.held
    with pytest.raises(OSError, match="cannot write the run to .*: Read-only file system"):
        run.start(resume=False)
