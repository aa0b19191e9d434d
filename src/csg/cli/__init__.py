"""The ``csg`` command: one small module per subcommand.

Each module ``csg.cli.<name>`` defines ``add_parser(subparsers)`` (which sets
``func``) and the function it runs. Every failure a user can cause ends as one
line ``csg: error: ...`` and exit status 2, never a traceback.
"""
from __future__ import annotations

import argparse
import importlib
import os
import sys

from ..core.errors import CsgError

COMMANDS = ("train", "evaluate", "analyze", "localize", "attack", "explain", "graph", "atlas", "report", "compare",
            "experiment", "prepare")


class DefaultsFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """argparse's ``(default: ...)`` on options that take a value; none on on/off flags, whose default
    is what happens without them (``--no-progress  (default: True)`` would read as the opposite)."""

    def _get_help_string(self, action):
        if action.nargs == 0:
            return action.help or ""
        return super()._get_help_string(action)


def build_parser() -> argparse.ArgumentParser:
    from ..core.version import __version__

    parser = argparse.ArgumentParser(
        prog="csg",
        description="Train CNNs with class-specific filters and measure how interpretable they are.",
    )
    parser.add_argument("--version", action="version", version=f"csg {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in COMMANDS:
        try:
            module = importlib.import_module(f"{__name__}.{name}")
        except ModuleNotFoundError as exc:  # a subcommand not built into this install
            if exc.name != f"{__name__}.{name}":
                raise
            continue
        module.add_parser(sub)
    return parser


#: What an interrupted command kept, and how to go on (every write is atomic: nothing half-written remains).
INTERRUPTED = {
    "train": "finished epochs are saved, continue with --resume",
    "experiment": "finished tasks are recorded; run the same command again to continue",
    "attack": "finished attack steps are saved; run the same command again to continue them",
    "localize": "finished map methods are saved; run the same command again to continue",
    None: "files written before the interruption are complete; run the command again",
}


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except CsgError as exc:
        print(f"csg: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"csg: interrupted; {INTERRUPTED.get(getattr(args, 'command', None), INTERRUPTED[None])}",
              file=sys.stderr)
        return 130
    except MemoryError:
        print("csg: error: out of memory; lower --batch-size or use --subset", file=sys.stderr)
        return 2
    except BrokenPipeError:  # `csg ... | head`: the reader left; say nothing more
        sys.stdout = open(os.devnull, "w")
        return 0
    except OSError as exc:  # a full disk, a read-only folder, a file that vanished: one line, no traceback
        print(f"csg: error: {describe_os_error(exc)}", file=sys.stderr)
        return 2


def describe_os_error(exc: OSError) -> str:
    """One line for an operating-system error: what failed, on which file, and what to do."""
    import errno

    where = f" ({exc.filename})" if getattr(exc, "filename", None) else ""
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return (f"no space left on the device{where}; free some space and run the command again (files already "
                "written are complete: every write is atomic, and training resumes with --resume)")
    if exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        return f"permission denied{where}; write to a folder you own (e.g. --out under your home)"
    return f"{exc.strerror or exc}{where}"


def run_main() -> None:  # console-script entry point
    sys.exit(main())
