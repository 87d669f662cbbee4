"""The node's library of experiences: the one owner of its writes (see library.py)."""

from dsonode.library.library import (
    AddOutcome,
    ConsensusRules,
    HonestPolicy,
    Library,
    VectorPolicy,
)
from dsonode.library.light import LightEmbedder, LightNodeError

__all__ = [
    "AddOutcome",
    "ConsensusRules",
    "HonestPolicy",
    "Library",
    "LightEmbedder",
    "LightNodeError",
    "VectorPolicy",
]
