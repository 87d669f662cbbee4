"""What every command that talks to the running node shares: finding its socket.

`add_node_args` gives a command `--data-dir` (default $DSONODE_DATA_DIR or ~/.dsonode),
`--socket` (overrides it) and `--timeout`; `node_socket` / `node_client` resolve them. Used by
`search`/`add`/`stats` (dsonode.api.cli), `status`/`peers` (dsonode.ops.cli), `mcp` and
`ingest`. Building the arguments imports nothing heavy (tests/test_cli.py): `dsonode.node` is
, and the client is imported only when a command runs.
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path
from typing import TYPE_CHECKING

from dsonode.argtypes import bounded_float
from dsonode.config.paths import default_data_dir, socket_path

if TYPE_CHECKING:
    from dsonode.api.client import Client


def add_data_dir_arg(p: argparse.ArgumentParser, *, inherit: bool = False) -> None:
    """`--data-dir DIR` (default None: resolved to $DSONODE_DATA_DIR or ~/.dsonode when used;
    `inherit`: no default of its own, see `add_node_args`)."""
    p.add_argument(
        "--data-dir",
        type=Path,
        default=argparse.SUPPRESS if inherit else None,
        help=f"the node's data directory (default: $DSONODE_DATA_DIR or {default_data_dir()})",
    )


def add_node_args(
    p: argparse.ArgumentParser,
    *,
    timeout: float,
    timeout_max: float = math.inf,
    timeout_help: str = "seconds to wait for the node",
    inherit: bool = False,
) -> None:
    """`--data-dir`, `--socket` and `--timeout` (seconds in (0, timeout_max], default
    `timeout`; the help text ends with the default). `inherit` (on a subcommand whose parent
    command has the same arguments): no defaults of their own, because argparse copies a
    subparser's defaults over what was given before the subcommand."""
    add_data_dir_arg(p, inherit=inherit)
    p.add_argument(
        "--socket",
        type=Path,
        default=argparse.SUPPRESS if inherit else None,
        help="socket path (overrides --data-dir)",
    )
    p.add_argument(
        "--timeout",
        type=bounded_float(0, timeout_max, open_low=True),
        default=argparse.SUPPRESS if inherit else timeout,
        help=f"{timeout_help} (default {timeout:g})",
    )


def node_socket(args: argparse.Namespace) -> Path:
    """The socket named by `add_node_args`' arguments: --socket, else DATA_DIR/dsonode.sock."""
    if args.socket is not None:
        return args.socket.expanduser()
    return socket_path(args.data_dir or default_data_dir())


def node_client(args: argparse.Namespace) -> Client:
    """A client (not yet connected) for `node_socket(args)` with `args.timeout`."""
    from dsonode.api.client import Client

    return Client(node_socket(args), timeout=args.timeout)
