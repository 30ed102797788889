"""One second-order MAML meta-step in metabook and its peers: time, peak memory, meta-gradient.

The step: a meta-batch of 8 tasks, each 5-way 5-shot with 15 queries per class,
5 inner SGD steps (lr 0.1) with the full second-order meta-gradient, on
``metabook.models.ResidualMLP(in_dim=64, hidden=256, depth=3, out_dim=5)``: a
pre-LayerNorm residual MLP with 217,349 parameters. Every implementation leaves
the meta-gradient (mean over tasks of the query cross-entropy) in ``.grad``.

Implementations, each run the way its documentation shows:

- ``metabook batched``: ``MAML(model, batched=True).meta_batch_loss(tasks).backward()``;
- ``metabook loop``: the same with ``batched=False`` (the default), for comparison;
- ``learn2learn``: ``MAML.clone()`` and ``adapt()`` per task, ``backward()`` per task;
- ``higher``: ``innerloop_ctx`` per task, ``backward()`` per task;
- ``autograd loop``: the reference, ``functional_call`` and ``autograd.grad(create_graph=True)``
  per task, ``backward()`` per task;
- ``torch.func vmap``: ``vmap`` over tasks of an inner loop written with ``torch.func.grad``.

**Fairness.** All read the same weights and tasks from one file. Each runs in its
own process with 2 threads; the parent asks them for one step in turn, round after
round, so that a slow spell on the machine hits all of them alike. Time: median
over the measured rounds, after warm-up rounds. Memory: the rise of the process's
peak resident set (``VmHWM``, reset through ``/proc/self/clear_refs``) over its
resident set after imports and set-up, over all rounds; this is the memory the
meta-steps need, without the libraries' import footprint, which the column
``RSS MB`` (the absolute peak) includes. metabook keeps every task's graph until
its single ``backward()``; the peers call ``backward()`` once per task and so hold
one task's graph at a time. Linux only: it reads ``/proc/self``.

**Correctness.** Every implementation's meta-gradient is compared with the
autograd loop's (itself checked against finite differences in the unit tests), once
from the float32 run and once from one more step in float64. One that differs
anywhere by more than 1e-6 in float32, or 1e-9 in float64 (where rounding leaves
about 1e-16), is reported as WRONG and is not a candidate for the fastest peer.

The last line is ``speedup_vs_fastest_peer=<x> peak_mem_ratio=<y> grad_maxdiff=<z>``:
the fastest correct peer's median time over metabook batched's, metabook batched's
memory over that peer's, and the largest absolute difference between metabook
batched's float32 meta-gradient and the reference's.

**Record.** With ``--json PATH`` the table is also written to ``PATH`` with its
provenance: date, CPU, cores, threads, load average before and after, Python,
library versions and the git commit; per implementation the median, quartiles,
minimum and maximum time, memory and gradient differences. Chapter 7 reads the
copy ``make bench`` writes to ``benchmarks/results/meta_step.json``.

Usage: ``python benchmarks/meta_step.py [--rounds 20] [--warmup 3] [--json PATH]``
(``make bench`` installs the peers into ``.venv`` and runs it there).
"""
from __future__ import annotations

import argparse
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
REFERENCE, METABOOK = "autograd loop", "metabook batched"

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

def metabook_step(model: nn.Module, tasks: Tasks, batched: bool) -> Step:
    """metabook's API: the meta-batch's loss, then one ``backward()`` for all tasks."""
    from metabook.learners import MAML
    from metabook.tasks import Task

    learner = MAML(model, lr=LR, steps=STEPS, batched=batched)
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
    METABOOK: ("metabook", lambda m, t: metabook_step(m, t, batched=True)),
    "metabook loop": ("metabook", lambda m, t: metabook_step(m, t, batched=False)),
    "learn2learn": ("learn2learn", learn2learn_step),
    "higher": ("higher", higher_step),
    REFERENCE: (None, autograd_loop_step),
    "torch.func vmap": (None, torch_func_vmap_step),
}
NOT_PEERS = {METABOOK, "metabook loop"}


# ---- the worker: one implementation in its own process ----

def _status_mb(field: str) -> float:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith(field):
                return int(line.split()[1]) / 1024
    raise RuntimeError(f"no {field} in /proc/self/status")


def _double(task: tuple[Tensor, ...]) -> tuple[Tensor, ...]:
    return tuple(x.double() if x.is_floating_point() else x for x in task)


def worker(name: str, problem: Path, grads_out: Path) -> None:
    """Build ``name``'s step, then serve ``step`` and ``finish`` commands on stdin."""
    torch.set_num_threads(THREADS)
    state, tasks = torch.load(problem)
    model = build_model(state, torch.float32)
    step = IMPLEMENTATIONS[name][1](model, tasks)
    gc.collect()
    baseline = _status_mb("VmRSS:")
    try:  # "5" resets the peak resident set to the current one (Linux >= 4.0)
        Path("/proc/self/clear_refs").write_text("5")
        peak_from_reset = True
    except OSError:
        peak_from_reset = False
    for command in sys.stdin:
        if command.strip() == "step":
            gc.collect()
            start = time.perf_counter()
            step()
            print(time.perf_counter() - start, flush=True)
        else:
            break
    peak = _status_mb("VmHWM:")  # before the float64 step below raises it
    grads = {"float32": [p.grad.detach().clone() for p in model.parameters()]}
    model64 = build_model(state, torch.float64)
    IMPLEMENTATIONS[name][1](model64, [_double(t) for t in tasks])()
    grads["float64"] = [p.grad.detach().clone() for p in model64.parameters()]
    torch.save(grads, grads_out)
    print(json.dumps({"peak_mb": peak - baseline, "rss_mb": peak, "exact_peak": peak_from_reset}),
          flush=True)


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


def run(rounds: int, warmup: int, names: list[str], json_path: Path | None = None) -> None:
    torch.set_num_threads(THREADS)
    record = {"provenance": provenance(rounds, warmup)}
    state, tasks = make_problem()
    n_params = sum(v.numel() for v in state.values())
    print(f"one second-order MAML meta-step: {META_BATCH} tasks, {N_WAY}-way {K_SHOT}-shot, "
          f"{N_QUERY} queries per class, {STEPS} inner SGD steps; ResidualMLP(64, 256, depth 3), "
          f"{n_params:,} parameters; torch {torch.__version__}, {THREADS} threads; "
          f"{warmup} warm-up + {rounds} measured rounds")
    missing = [n for n in names if not _installed(IMPLEMENTATIONS[n][0])]
    names = [n for n in names if n not in missing]
    env = {**os.environ, "OMP_NUM_THREADS": str(THREADS), "MKL_NUM_THREADS": str(THREADS)}
    with tempfile.TemporaryDirectory() as tmp:
        problem = Path(tmp) / "problem.pt"
        torch.save((state, tasks), problem)
        # A worker's stderr goes to a file, shown if it dies: gym, which learn2learn imports,
        # prints a notice on every import.
        errors = {n: Path(tmp) / f"{i}.err" for i, n in enumerate(names)}
        procs: dict[str, subprocess.Popen] = {}
        for i, n in enumerate(names):
            with errors[n].open("w") as err:
                procs[n] = subprocess.Popen(
                    [sys.executable, __file__, "--worker", n, "--problem", str(problem),
                     "--grads", str(Path(tmp) / f"{i}.pt")],
                    stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=err, text=True, env=env)

        def ask(n: str, command: str) -> str:
            try:
                procs[n].stdin.write(command + "\n")
                procs[n].stdin.flush()
                answer = procs[n].stdout.readline()
            except BrokenPipeError:
                answer = ""
            if not answer:
                raise SystemExit(f"the {n!r} worker died:\n{errors[n].read_text()}")
            return answer

        try:
            times: dict[str, list[float]] = {n: [] for n in names}
            for r in range(warmup + rounds):
                # Rotate the order so that no implementation always runs right after another.
                for n in names[r % len(names):] + names[:r % len(names)]:
                    seconds = float(ask(n, "step"))
                    if r >= warmup:
                        times[n].append(seconds)
            memory, grads = {}, {}
            for i, n in enumerate(names):
                memory[n] = json.loads(ask(n, "finish"))
                grads[n] = torch.load(Path(tmp) / f"{i}.pt")
        finally:
            for proc in procs.values():
                proc.kill()
                proc.wait()
    diff = {precision: {n: max(float((a - b).abs().max()) for a, b in
                               zip(grads[n][precision], grads[REFERENCE][precision]))
                        for n in names} for precision in TOLERANCE}
    correct = {n: all(diff[p][n] <= TOLERANCE[p] for p in TOLERANCE) for n in names}
    median = {n: statistics.median(times[n]) * 1e3 for n in names}

    print(f"\n{'implementation':<18}{'median ms':>10}{'min ms':>8}{'peak MB':>9}{'RSS MB':>8}"
          f"{'|Δgrad| f32':>13}{'|Δgrad| f64':>13}  meta-gradient")
    for n in sorted(names, key=median.get):
        verdict = "reference" if n == REFERENCE else "same as reference" if correct[n] else "WRONG"
        print(f"{n:<18}{median[n]:>10.1f}{min(times[n]) * 1e3:>8.1f}{memory[n]['peak_mb']:>9.1f}"
              f"{memory[n]['rss_mb']:>8.0f}{diff['float32'][n]:>13.1e}{diff['float64'][n]:>13.1e}"
              f"  {verdict}")
    for n in missing:
        print(f"{n:<18}  not installed (bash benchmarks/install_peers.sh adds the peers to .venv)")
    print(f"|Δgrad|: largest absolute difference from the {REFERENCE}'s meta-gradient; WRONG above "
          f"{TOLERANCE['float32']:.0e} in float32 or {TOLERANCE['float64']:.0e} in float64")
    if not all(m["exact_peak"] for m in memory.values()):
        print("note: /proc/self/clear_refs is not writable, so peak MB includes set-up peaks")

    fastest = min((n for n in names if n not in NOT_PEERS and correct[n]), key=median.get)
    summary = {"fastest_peer": fastest,
               "speedup_vs_fastest_peer": median[fastest] / median[METABOOK],
               "peak_mem_ratio": memory[METABOOK]["peak_mb"] / memory[fastest]["peak_mb"],
               "grad_maxdiff": diff["float32"][METABOOK]}
    if json_path is not None:
        record["provenance"]["load_average_after"] = round(os.getloadavg()[0], 2)
        record["setup"] = {"meta_batch": META_BATCH, "n_way": N_WAY, "k_shot": K_SHOT,
                           "n_query": N_QUERY, "inner_steps": STEPS, "inner_lr": LR,
                           "model": f"ResidualMLP(in_dim={IN_DIM}, hidden=256, depth=3, "
                                    f"out_dim={N_WAY})", "parameters": n_params,
                           "tolerance": TOLERANCE, "reference": REFERENCE}
        record["results"] = []
        for n in sorted(names, key=median.get):
            q1, _, q3 = statistics.quantiles(times[n], n=4)
            record["results"].append({
                "implementation": n, "peer": n not in NOT_PEERS,
                "median_ms": median[n], "q1_ms": q1 * 1e3, "q3_ms": q3 * 1e3,
                "min_ms": min(times[n]) * 1e3, "max_ms": max(times[n]) * 1e3,
                "times_ms": [round(t * 1e3, 3) for t in times[n]],
                "peak_mb": memory[n]["peak_mb"], "rss_mb": memory[n]["rss_mb"],
                "grad_diff_float32": diff["float32"][n], "grad_diff_float64": diff["float64"][n],
                "meta_gradient": "reference" if n == REFERENCE else
                                 "same as reference" if correct[n] else "WRONG"})
        record["not_installed"] = missing
        record["summary"] = summary
        write_record(json_path, record)
    print(f"fastest correct peer: {fastest}")
    if json_path is not None:
        print(f"written to {json_path}")
    print(f"speedup_vs_fastest_peer={summary['speedup_vs_fastest_peer']:.2f} "
          f"peak_mem_ratio={summary['peak_mem_ratio']:.2f} "
          f"grad_maxdiff={summary['grad_maxdiff']:.1e}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=20, help="measured rounds (default 20)")
    parser.add_argument("--warmup", type=int, default=3, help="warm-up rounds (default 3)")
    parser.add_argument("--only", nargs="+", choices=list(IMPLEMENTATIONS),
                        default=list(IMPLEMENTATIONS),
                        help=f"implementations to run ({METABOOK!r} and {REFERENCE!r} always run)")
    parser.add_argument("--json", type=Path, default=None,
                        help="also write the results and their provenance to this JSON file")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--problem", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--grads", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(args.worker, args.problem, args.grads)
    else:
        names = [n for n in IMPLEMENTATIONS if n in args.only or n in (METABOOK, REFERENCE)]
        run(args.rounds, args.warmup, names, args.json)


if __name__ == "__main__":
    main()
