"""The ``csg`` command: one small module per subcommand.

Each module ``csg.cli.<name>`` defines ``add_parser(subparsers)`` (which sets
``func``) and the function it runs. Every failure a user can cause ends as one
line ``csg: error: ...`` and exit status 2, never a traceback.
"""
from __future__ import annotations

import argparse
import importlib
import sys

from ..errors import CsgError

COMMANDS = ("train", "evaluate", "analyze", "localize", "attack", "explain", "graph", "report", "compare", "prepare")


def build_parser() -> argparse.ArgumentParser:
    from .. import __version__

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


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except CsgError as exc:
        print(f"csg: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("csg: interrupted; finished epochs are saved, continue with --resume", file=sys.stderr)
        return 130
    except MemoryError:
        print("csg: error: out of memory; lower --batch-size or use --subset", file=sys.stderr)
        return 2


def run_main() -> None:  # console-script entry point
    sys.exit(main())
