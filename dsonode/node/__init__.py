"""The composition root (`Node`, `run_node`) and the `dsonode run` command.

Names are imported lazily (PEP 562): `dsonode.node.cli` is imported by every `dsonode`
command, and the composition root imports torch, libp2p and trio.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "Node": "dsonode.node.node",
    "NodeConfig": "dsonode.node.node",
    "NodeError": "dsonode.node.node",
    "consensus_rules": "dsonode.node.node",
    "daemon_config": "dsonode.node.node",
    "run_node": "dsonode.node.node",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'dsonode.node' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value
