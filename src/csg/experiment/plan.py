"""The protocol as a list of tasks: each one ``csg`` command, its dependencies and how to tell it is done.

    train ──> analyze ──> report ─┐
      ├─────> localize (clutter) ─┼──> compare (one page per part)
      └─────> attack (F-MNIST) ───┘

A task is done when the file its command writes exists (``metrics.json`` after training and evaluation,
``analysis.json``, ``localization.json``, ``adversarial.json``), so running the plan again skips finished
work; a training interrupted after its first checkpoint continues with ``--resume``. The run folders are
``OUT/<part>/<method>-seed<seed>``, the comparison pages ``OUT/<part>/compare/``.
"""
from __future__ import annotations

import shlex
import sys
from dataclasses import dataclass, field
from pathlib import Path

from ..core.run_files import ADVERSARIAL, ANALYSIS, CHECKPOINT, LOCALIZATION, METRICS, REPORT_DIR
from .profiles import PARTS, Profile

#: the parts and the stages each has
PART_STAGES = {"fashion-mnist": ("train", "analyze", "report", "attack"), "clutter": ("train", "localize", "report")}


@dataclass
class Task:
    id: str
    part: str
    stage: str
    argv: list[str]
    done_file: Path | None
    needs: list[str] = field(default_factory=list)
    resume_file: Path | None = None
    compare_runs: list[Path] = field(default_factory=list)

    def is_done(self) -> bool:
        return self.done_file is not None and self.done_file.exists()

    def command(self) -> list[str]:
        """The argv to run now: training continues with ``--resume`` once a checkpoint exists; a comparison
        takes the runs that finished (a failed training leaves its run out, with the others compared)."""
        argv = list(self.argv)
        if self.resume_file is not None and self.resume_file.exists():
            argv.append("--resume")
        if self.compare_runs:
            finished = [str(r) for r in self.compare_runs if (r / METRICS).exists()]
            argv = argv[:1] + finished + argv[1:]
        return [sys.executable, "-m", "csg", *argv]

    def shell(self) -> str:
        return "csg " + " ".join(shlex.quote(a) for a in self.command()[3:])


def run_dir(out: Path, part: str, method: str, seed: int) -> Path:
    return out / part / f"{method}-seed{seed}"


def build_plan(profile: Profile, out: str | Path, parts: tuple[str, ...] = PARTS,
               stages: tuple[str, ...] | None = None) -> list[Task]:
    """Every task of ``parts`` (``fashion-mnist``: Table 1, analyses, attacks; ``clutter``: localization),
    in an order that respects their dependencies."""
    out = Path(out)
    tasks: list[Task] = []
    for part in parts:
        train_flags = profile.fashion_mnist if part == "fashion-mnist" else profile.clutter
        part_tasks = []
        for method in profile.methods:
            for seed in profile.seeds:
                run = run_dir(out, part, method, seed)
                tid = f"{part}/{method}-seed{seed}"
                train = Task(f"train {tid}", part, "train",
                             ["train", *train_flags, "--method", method, "--seed", str(seed), "--no-progress",
                              "--out", str(run)],
                             run / METRICS, resume_file=run / CHECKPOINT)
                part_tasks.append(train)
                if part == "fashion-mnist":
                    part_tasks.append(Task(f"analyze {tid}", part, "analyze", ["analyze", str(run), *profile.analyze],
                                           run / ANALYSIS, [train.id]))
                    part_tasks.append(Task(f"report {tid}", part, "report", ["report", str(run)],
                                           run / REPORT_DIR / "index.html", [f"analyze {tid}"]))
                    if seed in profile.attack_seeds:
                        part_tasks.append(Task(f"attack {tid}", part, "attack",
                                               ["attack", str(run), *profile.attack, "--no-progress"],
                                               run / ADVERSARIAL, [train.id]))
                else:
                    part_tasks.append(Task(f"localize {tid}", part, "localize",
                                           ["localize", str(run), *profile.localize, "--no-progress"],
                                           run / LOCALIZATION, [train.id]))
                    part_tasks.append(Task(f"report {tid}", part, "report", ["report", str(run)],
                                           run / REPORT_DIR / "index.html", [f"localize {tid}"]))
        runs = [run_dir(out, part, m, s) for m in profile.methods for s in profile.seeds]
        part_tasks.append(Task(f"compare {part}", part, "compare", ["compare", "--out", str(out / part / "compare")],
                               None, [t.id for t in part_tasks], compare_runs=runs))
        tasks.extend(part_tasks)
    if stages is not None:
        keep = set(stages) | {"compare"}
        kept = [t for t in tasks if t.stage in keep]
        ids = {t.id for t in kept}
        for t in kept:
            t.needs = [n for n in t.needs if n in ids]
        tasks = kept
    return tasks
