"""`dsonode mcp`: serve the running node's experiences to an MCP client over stdio.

Registering the command stays light: the `mcp` package (~1 s to import) is imported only
when the command runs.
"""

from __future__ import annotations

import argparse
import logging
import sys
from typing import Any

from dsonode.api.cliargs import add_node_args, node_socket


def register(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "mcp",
        help="MCP server over stdio for LLM agents (talks to the running node)",
        description="Serve the running node's experiences to an MCP client (Claude Desktop, "
        "IDE agents, ...) over stdio: tools search_experiences, add_experience, "
        "get_experience, submit_rollouts, give_feedback, experience_block, and the prompt "
        "experience_block. The client launches this command; the node must run "
        "(`dsonode run`). Logs go to stderr; stdout carries only MCP messages.",
    )
    add_node_args(
        p, timeout=120.0, timeout_max=3600, timeout_help="seconds to wait for the node on each call"
    )
    p.add_argument("--log-level", default="WARNING", choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    p.set_defaults(func=cmd_mcp)


def cmd_mcp(args: argparse.Namespace) -> int:
    logging.basicConfig(
        level=getattr(logging, args.log_level),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    from dsonode.mcp.server import serve_stdio

    serve_stdio(node_socket(args), args.timeout)  # returns when the client closes stdin
    return 0
