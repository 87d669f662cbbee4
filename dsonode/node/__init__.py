"""The composition root (`Node`, `run_node`) and the `dsonode run` command.

Names are imported lazily (PEP 562): `dsonode.node.cli` is imported by every `dsonode`
command, and the composition root imports torch, libp2p and trio.
"""

from __future__ import annotations

from typing import Any

from dsonode.lazy import lazy_attribute

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
    return lazy_attribute(__name__, _EXPORTS, name)
