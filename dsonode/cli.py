"""The `dsonode` command line. Each area registers its own subcommands (see COMMAND_MODULES)."""

from __future__ import annotations

import argparse
import importlib
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


def main(argv: list[str] | None = None) -> int:
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


if __name__ == "__main__":
    sys.exit(main())
