"""Figures and HTML pages: the per-run report and the comparison of runs."""
from .compare import compare_runs
from .comparison import compare
from .run_report import build_run_report

__all__ = ["build_run_report", "compare_runs", "compare"]
