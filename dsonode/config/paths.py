"""Where a node keeps its files: one place for the names every command agrees on."""

from __future__ import annotations

import os
from pathlib import Path

SOCKET_NAME = "dsonode.sock"
STORE_DIR_NAME = "store"
KEY_FILE_NAME = "node.key"
LOCK_FILE_NAME = "node.lock"
CONFIG_FILE_NAME = "dsonode.toml"


def default_data_dir() -> Path:
    """$DSONODE_DATA_DIR, else ~/.dsonode."""
    env = os.environ.get("DSONODE_DATA_DIR")
    return Path(env).expanduser() if env else Path.home() / ".dsonode"


def socket_path(data_dir: str | os.PathLike[str]) -> Path:
    """The retrieval socket of the node whose data directory is `data_dir`."""
    return Path(data_dir).expanduser() / SOCKET_NAME
