"""The node's library of experiences: the one owner of its writes (see library.py)."""

from dsonode.library.library import (
    AddOutcome,
    ConsensusRules,
    HonestPolicy,
    Library,
    VectorPolicy,
)

__all__ = ["AddOutcome", "ConsensusRules", "HonestPolicy", "Library", "VectorPolicy"]
