"""The `dsonode` command line. Each area registers its own subcommands (see COMMAND_MODULES)."""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from pathlib import Path

from dsonode import __version__


def command_modules() -> list[str]:
    """Modules that contribute subcommands through `register(subparsers)`.

    Every area of the package that has a `cli.py` (dsonode/<area>/cli.py) registers its own
    commands, plus `dsonode.bench`. Each sets `func` on its parser(s); `func(args)` returns a
    process exit code. Discovery keeps areas independent: adding a command is adding a file.
    """
    import dsonode

    root = Path(dsonode.__file__).parent
    areas = sorted(p.parent.name for p in root.glob("*/cli.py"))
    return ["dsonode.bench", *(f"dsonode.{area}.cli" for area in areas)]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="dsonode",
        description="DSO peer node: shared LLM experiences over GossipSub with median consensus.",
    )
    parser.add_argument("--version", action="version", version=f"dsonode {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in command_modules():
        importlib.import_module(name).register(sub)
    return parser


#: Exit status after the reader of our output went away (`dsonode stats | head -1`): what a
#: shell reports for a process killed by SIGPIPE (128 + 13).
EXIT_BROKEN_PIPE = 141


def main(argv: list[str] | None = None) -> int:
    try:
        code = _run(argv)
        sys.stdout.flush()  # a closed pipe shows here, not in the interpreter's exit flush
        return code
    except BrokenPipeError:
        _discard_stdout()
        return EXIT_BROKEN_PIPE


def _run(argv: list[str] | None) -> int:
    from dsonode.core.errors import DsoError

    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except DsoError as exc:
        print(f"dsonode: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("dsonode: interrupted", file=sys.stderr)
        return 130


def _discard_stdout() -> None:
    """Point stdout at /dev/null: what is still buffered for the closed pipe is dropped
    instead of raising again (with a traceback) when the interpreter flushes at exit."""
    try:
        fd = sys.stdout.fileno()
    except (AttributeError, OSError, ValueError):  # replaced by a non-file (tests)
        return
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, fd)
    finally:
        os.close(devnull)


if __name__ == "__main__":
    sys.exit(main())
