"""MetaTrainer: logs, checkpoints, exact resume, early stopping, NaN guard, atomic saves."""
from __future__ import annotations

import json

import pytest
import torch
from torch import nn

import metabook.checkpoint as ckpt_mod
from metabook.checkpoint import MODEL_FILE, load_checkpoint
from metabook.errors import CheckpointError, ConfigError, TrainingError
from metabook.evaluation import draw_episodes
from metabook.learners import MAML, MetaSGD
from metabook.samplers import UniformSampler
from metabook.tasks import EpisodeSource
from metabook.rundir import RunDir
from metabook.training import MetaTrainer, Trainer, make_optimizer, meta_train

N_WAY = 3


def _source(name: str, seed: int) -> EpisodeSource:
    g = torch.Generator().manual_seed(seed)
    centres = torch.randn(12, 4, generator=g) * 2
    labels = [i % 12 for i in range(240)]
    x = centres[labels] + torch.randn(240, 4, generator=g)
    return EpisodeSource(x, labels, N_WAY, 2, 3, name=name)


def _trainer(out, learner=None, **kwargs) -> MetaTrainer:
    torch.manual_seed(0)
    learner = learner or MetaSGD(nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, N_WAY)),
                                 lr=0.3, steps=1)
    sampler = UniformSampler([_source("a", 1), _source("b", 2)], seed=5)
    val = draw_episodes(_source("val", 3), 6, seed=9)
    options = dict(outer_lr=0.01, meta_batch=2, eval_every=4, checkpoint_every=3, patience=0,
                   val_tasks=val, config={"kind": "test"}, progress=False)
    options.update(kwargs)
    return MetaTrainer(learner, sampler, out, **options)


def _weights(trainer: MetaTrainer) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in trainer.learner.state_dict().items()}


def test_log_checkpoints_and_result(tmp_path):
    result = _trainer(tmp_path).train(10)
    assert result.step == 10 and result.stopped == "completed"
    log = RunDir(tmp_path).read_log()
    steps = [r for r in log if "loss" in r]
    assert [r["step"] for r in steps] == list(range(1, 11))
    assert all({"loss", "grad_norm", "sample_seconds", "step_seconds"} <= set(r) for r in steps)
    assert [r["step"] for r in log if r.get("event") == "validation"] == [4, 8]
    # saved every 3 steps, at each validation and at the end; keep_checkpoints=2 (+ the best)
    assert [r["step"] for r in log if r.get("event") == "checkpoint"] == [3, 4, 6, 8, 9, 10]
    assert RunDir(tmp_path).latest().name == "step-000010"
    ckpt = load_checkpoint(RunDir(tmp_path).latest())
    assert ckpt.meta["step"] == 10 and ckpt.meta["config"] == {"kind": "test"}
    assert ckpt.meta["learner"] == "MetaSGD"
    assert any(k.startswith("step_size.") for k in ckpt.model)  # the learned step sizes
    assert {"rng", "sampler", "trainer"} <= set(ckpt.meta) and ckpt.optimizer is not None
    remaining = sorted(p.name for p in (tmp_path / "checkpoints").glob("step-*"))
    assert f"step-{result.best_step:06d}" in remaining and "step-000010" in remaining
    assert len(remaining) <= 3


def test_resume_is_bit_identical(tmp_path):
    straight = _trainer(tmp_path / "a")
    straight.train(10)
    first = _trainer(tmp_path / "b")
    first.train(5)
    # A fresh process would build a fresh learner: start from other weights to prove they are restored.
    other = MetaSGD(nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, N_WAY)), lr=0.9, steps=1)
    torch.manual_seed(123)
    resumed = _trainer(tmp_path / "b", learner=other)
    result = resumed.train(10, resume=True)
    assert result.step == 10
    a, b = _weights(straight), _weights(resumed)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert ((tmp_path / "a/checkpoints/step-000010" / MODEL_FILE).read_bytes()
            == (tmp_path / "b/checkpoints/step-000010" / MODEL_FILE).read_bytes())
    strip = [{k: v for k, v in r.items() if "seconds" not in k and k != "path"}
             for r in RunDir(tmp_path / "a").read_log() if r.get("event") != "checkpoint"]
    again = [{k: v for k, v in r.items() if "seconds" not in k and k != "path"}
             for r in RunDir(tmp_path / "b").read_log() if r.get("event") != "checkpoint"]
    assert strip == again  # same losses, same validations, no duplicated steps
    assert (straight.best_step, straight.best_score) == (resumed.best_step, resumed.best_score)


def test_resume_drops_log_lines_after_the_checkpoint(tmp_path):
    class Crash(Exception):
        pass

    def crash_at_7(step, record):
        if step == 7:
            raise Crash

    with pytest.raises(Crash):
        _trainer(tmp_path, on_step=crash_at_7).train(10)  # last checkpoint: step 6
    assert max(r["step"] for r in RunDir(tmp_path).read_log()) == 7
    _trainer(tmp_path).train(10, resume=True)
    assert [r["step"] for r in RunDir(tmp_path).read_log() if "loss" in r] == list(range(1, 11))


def test_start_and_resume_errors(tmp_path):
    with pytest.raises(CheckpointError, match="holds no run to resume"):
        _trainer(tmp_path).train(4, resume=True)
    _trainer(tmp_path).train(3)
    with pytest.raises(CheckpointError, match="already holds a run; resume it"):
        _trainer(tmp_path).train(6)
    result = _trainer(tmp_path).train(2, resume=True)
    assert result.stopped == "already_done" and result.step == 3


class NaNAt(MAML):
    """A learner whose meta-loss turns NaN at one step (the bad data of a real run)."""

    def __init__(self, bad_step: int, value: float = float("nan")):
        super().__init__(nn.Linear(4, N_WAY), lr=0.3, steps=1)
        self.bad_step, self.value, self.calls = bad_step, value, 0

    def meta_batch_loss(self, tasks):
        self.calls += 1
        loss = super().meta_batch_loss(tasks)
        return loss * self.value if self.calls == self.bad_step else loss


@pytest.mark.parametrize("value", [float("nan"), float("inf")])
def test_nan_loss_stops_naming_the_step(tmp_path, value):
    trainer = _trainer(tmp_path, learner=NaNAt(5, value), checkpoint_every=2, eval_every=100)
    with pytest.raises(TrainingError, match=f"the meta-loss became {value} at step 5 .*"
                                            "the last good checkpoint is .*step-000004"):
        trainer.train(10)
    latest = RunDir(tmp_path).latest()
    assert latest.name == "step-000004"
    ckpt = load_checkpoint(latest)
    assert all(torch.isfinite(v).all() for v in ckpt.model.values())
    # the bad step changed nothing: the weights are still those of the checkpoint
    assert all(torch.equal(ckpt.model[k], v) for k, v in trainer.learner.state_dict().items())
    assert max(r["step"] for r in RunDir(tmp_path).read_log()) == 4


class _NaNGradient(torch.autograd.Function):
    """The identity, whose backward pass returns NaN: a finite loss with a broken gradient."""

    @staticmethod
    def forward(ctx, x):
        return x.clone()

    @staticmethod
    def backward(ctx, grad):
        return grad * float("nan")


class NaNGradient(MAML):
    def meta_batch_loss(self, tasks):
        return _NaNGradient.apply(super().meta_batch_loss(tasks))


def test_nan_gradient_is_caught_too(tmp_path):
    learner = NaNGradient(nn.Linear(4, N_WAY), lr=0.3, steps=1)
    with pytest.raises(TrainingError, match="meta-gradient norm became nan at step 1 .*no "
                                            "checkpoint was saved yet"):
        _trainer(tmp_path, learner=learner).train(3)
    assert not (tmp_path / "checkpoints").exists() or not any((tmp_path / "checkpoints").iterdir())


def test_early_stopping_keeps_the_best(tmp_path, monkeypatch):
    scores = iter([0.5, 0.7, 0.6, 0.65, 0.69, 0.9])
    monkeypatch.setattr(MetaTrainer, "validate", lambda self: next(scores))
    trainer = _trainer(tmp_path, eval_every=2, checkpoint_every=100, patience=3,
                       keep_checkpoints=1)
    result = trainer.train(40)
    assert result.stopped == "early_stopping" and result.step == 10
    assert (result.best_step, result.best_score) == (4, 0.7)
    assert RunDir(tmp_path).best().name == "step-000004"
    assert load_checkpoint(RunDir(tmp_path).best()).meta["step"] == 4
    assert RunDir(tmp_path).latest().name == "step-000010"
    stops = [r["early_stop"] for r in RunDir(tmp_path).read_log() if r.get("event") == "validation"]
    assert stops == [False, False, False, False, True]


def test_crash_while_saving_keeps_the_last_checkpoint(tmp_path, monkeypatch):
    trainer = _trainer(tmp_path, checkpoint_every=2, eval_every=100)
    trainer.train(4)
    good = (RunDir(tmp_path).latest() / MODEL_FILE).read_bytes()
    real = ckpt_mod.save_file

    def crash_mid_save(tensors, filename, *args, **kwargs):
        real(tensors, filename, *args, **kwargs)
        with open(filename, "r+b") as f:
            f.truncate(100)  # the write got half-way
        raise OSError("power cut")

    monkeypatch.setattr(ckpt_mod, "save_file", crash_mid_save)
    with pytest.raises(OSError, match="power cut"):
        _trainer(tmp_path, checkpoint_every=2, eval_every=100).train(8, resume=True)
    assert RunDir(tmp_path).latest().name == "step-000004"
    assert (RunDir(tmp_path).latest() / MODEL_FILE).read_bytes() == good
    load_checkpoint(RunDir(tmp_path).latest())
    leftovers = [p.name for p in (tmp_path / "checkpoints").iterdir() if p.name.startswith(".")]
    assert leftovers == []
    monkeypatch.setattr(ckpt_mod, "save_file", real)
    assert _trainer(tmp_path, checkpoint_every=2, eval_every=100).train(8, resume=True).step == 8


def test_latest_pointer_corruption_is_reported(tmp_path):
    _trainer(tmp_path).train(3)
    (tmp_path / "checkpoints" / "latest.json").write_text('{"latest": ')
    with pytest.raises(CheckpointError, match="latest.json is corrupt"):
        RunDir(tmp_path).latest()
    (tmp_path / "checkpoints" / "latest.json").write_text(json.dumps({"latest": "step-000099"}))
    with pytest.raises(CheckpointError, match="does not exist"):
        load_checkpoint(RunDir(tmp_path).latest())


def test_meta_train_in_memory_takes_the_steps_of_a_run_on_disk(tmp_path):
    torch.manual_seed(0)
    learner = MAML(nn.Linear(4, N_WAY), lr=0.3, steps=1)
    twin = MAML(nn.Linear(4, N_WAY), lr=0.3, steps=1)
    twin.load_state_dict(learner.state_dict())
    sampler = lambda: UniformSampler([_source("a", 1), _source("b", 2)], seed=5)  # noqa: E731
    losses = meta_train(learner, sampler(), steps=6, lr=0.01, meta_batch=2, clip_grad=1.0)
    MetaTrainer(twin, sampler(), tmp_path / "run", outer_lr=0.01, meta_batch=2,
                progress=False).train(6)
    assert losses == [r["loss"] for r in RunDir(tmp_path / "run").read_log() if "loss" in r]
    assert all(torch.equal(a, b) for a, b in zip(learner.parameters(), twin.parameters()))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"]  # meta_train wrote nothing


def test_the_optimizer_is_chosen_by_name():
    torch.manual_seed(0)
    model = nn.Linear(3, 1)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    x, y = torch.randn(8, 3), torch.randn(8, 1)
    loss = lambda _: nn.functional.mse_loss(model(x), y)  # noqa: E731
    grads = torch.autograd.grad(loss(None), list(model.parameters()))
    Trainer(model, lambda: None, loss, optimizer="sgd", lr=0.1, clip_grad=0).train(1)
    for (name, value), g in zip(model.named_parameters(), grads):
        torch.testing.assert_close(value, before[name] - 0.1 * g)  # exactly one SGD step
    with pytest.raises(ConfigError, match="unknown optimizer 'adan' \\(did you mean 'adam'\\?\\)"):
        make_optimizer("adan", model.parameters(), lr=0.1)


def test_a_nan_loss_in_memory_stops_before_the_step():
    model = nn.Linear(3, 1)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    trainer = Trainer(model, lambda: None, lambda _: model.weight.sum() * float("nan"))
    with pytest.raises(TrainingError, match="the loss became nan at step 1; the step was not "
                                            "applied .* still those after step 0"):
        trainer.train(3)
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())
