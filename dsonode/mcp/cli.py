"""`dsonode mcp`: serve the running node's experiences to an MCP client over stdio.

Registering the command stays light: the `mcp` package (~1 s to import) is imported only
when the command runs.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path
from typing import Any

from dsonode.argtypes import bounded_float


def register(subparsers: Any) -> None:
    from dsonode.node import default_data_dir

    p = subparsers.add_parser(
        "mcp",
        help="MCP server over stdio for LLM agents (talks to the running node)",
        description="Serve the running node's experiences to an MCP client (Claude Desktop, "
        "IDE agents, ...) over stdio: tools search_experiences, add_experience, "
        "get_experience, submit_rollouts, give_feedback, experience_block, and the prompt "
        "experience_block. The client launches this command; the node must run "
        "(`dsonode run`). Logs go to stderr; stdout carries only MCP messages.",
    )
    p.add_argument(
        "--data-dir",
        type=Path,
        default=None,
        help=f"the node's data directory (default: $DSONODE_DATA_DIR or {default_data_dir()})",
    )
    p.add_argument("--socket", type=Path, default=None, help="socket path (overrides --data-dir)")
    p.add_argument(
        "--timeout",
        type=bounded_float(0, 3600, open_low=True),
        default=120.0,
        help="seconds to wait for the node on each call (default 120)",
    )
    p.add_argument("--log-level", default="WARNING", choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    p.set_defaults(func=cmd_mcp)


def cmd_mcp(args: argparse.Namespace) -> int:
    from dsonode.node import default_data_dir, socket_path

    logging.basicConfig(
        level=getattr(logging, args.log_level),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    path = (
        args.socket if args.socket is not None else socket_path(args.data_dir or default_data_dir())
    )
    from dsonode.mcp.server import serve_stdio

    serve_stdio(path.expanduser(), args.timeout)  # returns when the client closes stdin
    return 0
