"""A run killed with SIGKILL, anywhere, resumes to the very weights of a run never killed.

``metabook pretrain`` runs as a real subprocess and is killed three times: by
this test after some steps, and twice *inside a checkpoint save*, after the
tensor files and meta.json are written but before the directory is renamed
into place. The save is interrupted deterministically by a ``sitecustomize.py``
on ``PYTHONPATH`` that wraps ``metabook.checkpoint._write_json`` in the child
process; the library holds no hook for it.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

from metabook.rundir import RunDir
from tests.helpers import SCRIPT, command_env, write_config

STEPS = 16

# Imported by the child interpreter at start-up. METABOOK_KILL_AT_SAVE=N: the Nth
# checkpoint save of that process kills the process once its files are all written to
# the temporary directory, before the rename that would commit it.
SITECUSTOMIZE = '''
import os, signal
from pathlib import Path

if os.environ.get("METABOOK_KILL_AT_SAVE"):
    import metabook.checkpoint as checkpoint

    target, seen, real = int(os.environ["METABOOK_KILL_AT_SAVE"]), [], checkpoint._write_json

    def write_then_die(path, value):
        real(path, value)
        if Path(path).name == checkpoint.META_FILE:
            seen.append(path)
            if len(seen) == target:
                os.kill(os.getpid(), signal.SIGKILL)

    checkpoint._write_json = write_then_die
'''


def _config(folder: Path) -> Path:
    return write_config(folder, per_class=8, q_query=3, dim=16, meta_batch=4, steps=STEPS,
                        eval_every=4, max_len=16)


def _env(hooks: Path, kill_at_save: int | None = None) -> dict[str, str]:
    env = command_env(PYTHONPATH=os.pathsep.join(filter(None, [str(hooks),
                                                               os.environ.get("PYTHONPATH")])))
    env.pop("METABOOK_KILL_AT_SAVE", None)
    if kill_at_save is not None:
        env["METABOOK_KILL_AT_SAVE"] = str(kill_at_save)
    return env


def _pretrain(out: Path, hooks: Path, *args: str, kill_at_save: int | None = None
              ) -> subprocess.Popen:
    return subprocess.Popen([str(SCRIPT), "pretrain", "--out", str(out), "--quiet", *args],
                            env=_env(hooks, kill_at_save), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def _steps_logged(out: Path) -> int:
    return sum(1 for r in RunDir(out).read_log() if "loss" in r) if (out / "log.jsonl").is_file() else 0


def _partial_saves(out: Path) -> list[str]:
    return sorted(p.name for p in (out / "checkpoints").iterdir() if p.name.startswith("."))


def _pointer(out: Path) -> str:
    return json.loads((out / "checkpoints" / "latest.json").read_text())["latest"]


def test_killed_anywhere_resumes_to_the_uninterrupted_weights(tmp_path):
    hooks = tmp_path / "hooks"
    hooks.mkdir()
    (hooks / "sitecustomize.py").write_text(SITECUSTOMIZE)
    config = _config(tmp_path)

    straight = _pretrain(tmp_path / "A", hooks, "--config", str(config))
    assert straight.wait(timeout=120) == 0, straight.stderr.read()

    out = tmp_path / "B"
    # 1. Killed inside its second save (step 4): the temporary directory is complete, the
    #    rename never happened, so the run's latest checkpoint is still step 2.
    first = _pretrain(out, hooks, "--config", str(config), kill_at_save=2)
    assert first.wait(timeout=120) == -signal.SIGKILL
    assert _pointer(out) == "step-000002"
    assert [name.split(".tmp-")[0] for name in _partial_saves(out)] == [".step-000004"]

    # 2. Resumed, then killed by us once it has logged step 8 or more: between steps.
    second = _pretrain(out, hooks, "--resume")
    deadline = time.monotonic() + 120
    while _steps_logged(out) < 8 and second.poll() is None and time.monotonic() < deadline:
        time.sleep(0.005)
    second.send_signal(signal.SIGKILL)
    assert second.wait(timeout=60) == -signal.SIGKILL, "the run ended before it was killed"
    assert _partial_saves(out) == []  # the resume cleared the uncommitted save of step 4
    killed_at = _steps_logged(out)
    assert 8 <= killed_at < STEPS

    # 3. Resumed, and killed inside the first save this process makes.
    third = _pretrain(out, hooks, "--resume", kill_at_save=1)
    assert third.wait(timeout=120) == -signal.SIGKILL
    assert len(_partial_saves(out)) == 1

    # 4. Resumed to the end.
    last = _pretrain(out, hooks, "--resume")
    assert last.wait(timeout=120) == 0, last.stderr.read()
    assert "Traceback" not in last.stderr.read()
    assert _partial_saves(out) == []

    final = f"checkpoints/step-{STEPS:06d}/model.safetensors"
    assert (tmp_path / "A" / final).read_bytes() == (out / final).read_bytes()
    log = RunDir(out).read_log()
    assert [r["step"] for r in log if "loss" in r] == list(range(1, STEPS + 1))
    validations = [r["step"] for r in log if r.get("event") == "validation"]
    assert validations == list(range(4, STEPS + 1, 4))
    # Same losses as the uninterrupted run, step for step.
    assert ([r["loss"] for r in log if "loss" in r]
            == [r["loss"] for r in RunDir(tmp_path / "A").read_log() if "loss" in r])
