"""`dsonode demo`: what `make run` runs - a 3-node local testnet, seeded, queried, stopped.

A shorthand for `dsonode testnet --nodes 3 --duration 0` (see dsonode/testnet/cli.py): three
real `dsonode run` processes on 127.0.0.2-4 gossip the packaged sample experiences, each
node embeds and submits its own code for every one, the median consensus is confirmed at
every node, and the query is answered over the last node's socket.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from dsonode.testnet.cli import DEFAULT_QUERY


def register(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "demo",
        help="run the main job: a 3-node local testnet, sample experiences, a query (make run)",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--data-dir", type=Path, default=None, help="keep the nodes' data here")
    p.add_argument("--query", default=DEFAULT_QUERY, help="the question to ask at the end")
    p.set_defaults(func=cmd_demo)


def cmd_demo(args: argparse.Namespace) -> int:
    from dsonode.cli import build_parser

    argv = ["testnet", "--nodes", "3", "--duration", "0", "--query", args.query]
    if args.data_dir is not None:
        argv += ["--data-dir", str(args.data_dir)]
    testnet_args = build_parser().parse_args(argv)
    return int(testnet_args.func(testnet_args) or 0)
