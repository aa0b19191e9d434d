"""``csg experiment``: the whole protocol (train, evaluate, analyze, localize, attack, compare) over
methods and seeds, at the sizes of a named profile, resumable, in parallel local processes or on SLURM."""
from .execute import run_local, run_slurm
from .plan import Task, build_plan, run_dir
from .profiles import METHODS, PARTS, PROFILES, Profile, get_profile

__all__ = ["run_local", "run_slurm", "Task", "build_plan", "run_dir", "METHODS", "PARTS", "PROFILES", "Profile",
           "get_profile"]
