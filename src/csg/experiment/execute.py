"""Running a plan: local processes in parallel (``--jobs``), or SLURM through submitit.

Each task is a ``python -m csg`` subprocess with its own log (``OUT/logs/<task>.log``); a task starts
once the tasks it needs are done, and a failed task (its one-line error is shown) skips only the tasks
that need it. With ``J`` jobs on ``N`` cores each process gets ``N // J`` threads. ``OUT/experiment.json``
records every task's command, state and wall time, rewritten atomically after each one, so the figures of
a README table come with the command and the time that made them.
"""
from __future__ import annotations

import os
import subprocess
import time
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from pathlib import Path

from ..core.errors import CsgError
from ..core.io import atomic_write_json
from .plan import Task

STATUS = "experiment.json"


def _cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def _slug(task_id: str) -> str:
    return task_id.replace("/", "_").replace(" ", "_")


class Recorder:
    """The experiment's status file: every task's command, state, seconds and last error line."""

    def __init__(self, out: Path, profile: str, tasks: list[Task]):
        self.path = out / STATUS
        self.state = {"schema": "csg.experiment/1", "profile": profile, "started": time.strftime("%Y-%m-%dT%H:%M:%S"),
                      "tasks": {t.id: {"command": t.shell(), "state": "done" if t.is_done() else "pending"}
                                for t in tasks}}
        self.write()

    def set(self, task: Task, **values) -> None:
        self.state["tasks"][task.id].update(values)
        self.write()

    def write(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_json(self.path, self.state)


def run_local(tasks: list[Task], out: Path, *, jobs: int = 1, profile: str = "", echo=print) -> dict[str, str]:
    """Run the tasks that are not done, ``jobs`` at a time; returns ``{task id: state}``."""
    if jobs < 1:
        raise CsgError(f"--jobs must be >= 1, got {jobs}")
    logs = out / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    recorder = Recorder(out, profile, tasks)
    state = {t.id: ("done" if t.is_done() else "pending") for t in tasks}
    threads = max(1, _cores() // jobs)
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads), PYTHONUNBUFFERED="1")
    todo = sum(1 for s in state.values() if s == "pending")
    echo(f"{len(tasks)} tasks, {len(tasks) - todo} already done, {todo} to run, {jobs} at a time "
         f"({threads} thread{'s' if threads > 1 else ''} each); logs in {logs}")

    def launch(task: Task) -> tuple[int, float, str]:
        start = time.perf_counter()
        log = logs / f"{_slug(task.id)}.log"
        with open(log, "w", encoding="utf-8") as fh:
            proc = subprocess.run(task.command(), stdout=fh, stderr=subprocess.STDOUT, env=env, check=False)
        lines = [l for l in log.read_text(encoding="utf-8", errors="replace").splitlines() if l.startswith("csg: ")]
        return proc.returncode, time.perf_counter() - start, (lines[-1] if lines else "")

    running: dict[Future, Task] = {}
    finished = 0
    with ThreadPoolExecutor(max_workers=jobs) as pool:
        while True:
            for task in tasks:
                if state[task.id] != "pending" or len(running) >= jobs:
                    continue
                needs = [state[n] for n in task.needs]
                if task.stage != "compare" and any(s in ("failed", "skipped") for s in needs):
                    state[task.id] = "skipped"
                    recorder.set(task, state="skipped", reason="a task it needs failed")
                    continue
                if all(s in ("done", "failed", "skipped") for s in needs):
                    state[task.id] = "running"
                    recorder.set(task, state="running", command=task.shell())
                    running[pool.submit(launch, task)] = task
            if not running:
                break
            done, _ = wait(running, return_when=FIRST_COMPLETED)
            for fut in done:
                task = running.pop(fut)
                code, seconds, last = fut.result()
                ok = code == 0 and (task.done_file is None or task.is_done())
                state[task.id] = "done" if ok else "failed"
                finished += 1
                recorder.set(task, state=state[task.id], seconds=round(seconds, 1), exit_code=code,
                             **({} if ok else {"error": last}))
                echo(f"[{finished}/{todo}] {task.id}: {'done' if ok else 'FAILED'} in {_fmt(seconds)}"
                     + ("" if ok else f" ({last or f'exit {code}'}; log {logs / (_slug(task.id) + '.log')})"))
    return state


def run_slurm(tasks: list[Task], out: Path, *, profile: str = "", options: dict | None = None, echo=print) -> dict:
    """Submit the tasks to SLURM with submitit (``pip install 'csg[slurm]'``), wave by wave in dependency
    order; each job runs one task's command."""
    try:
        import submitit
    except ImportError:
        raise CsgError("--executor slurm needs submitit: pip install 'csg[slurm]' (or pip install submitit)") from None
    recorder = Recorder(out, profile, tasks)
    executor = submitit.AutoExecutor(folder=str(out / "slurm"))
    executor.update_parameters(**(options or {}))
    state = {t.id: ("done" if t.is_done() else "pending") for t in tasks}
    while any(s == "pending" for s in state.values()):
        wave = [t for t in tasks if state[t.id] == "pending"
                and all(state[n] in ("done", "failed", "skipped") for n in t.needs)]
        if not wave:
            break
        jobs = []
        for t in wave:
            if t.stage != "compare" and any(state[n] != "done" for n in t.needs):
                state[t.id] = "skipped"
                recorder.set(t, state="skipped")
                continue
            jobs.append((t, executor.submit(submitit.helpers.CommandFunction(t.command()))))
            recorder.set(t, state="submitted")
        for t, job in jobs:
            try:
                job.result()
                state[t.id] = "done"
            except Exception as exc:  # noqa: BLE001 - a failed job is reported, its dependents skipped
                state[t.id] = "failed"
                echo(f"{t.id}: FAILED ({str(exc).splitlines()[0] if str(exc) else type(exc).__name__})")
            recorder.set(t, state=state[t.id])
    return state


def _fmt(seconds: float) -> str:
    return f"{seconds:.0f} s" if seconds < 120 else f"{seconds / 60:.1f} min"
