"""The node's library of experiences: the one owner of its writes (see library.py)."""

from dsonode.library.library import (
    AddOutcome,
    ConsensusRules,
    ForgottenError,
    HonestPolicy,
    Library,
    ServedHit,
    VectorPolicy,
)
from dsonode.library.light import LightEmbedder, LightNodeError
from dsonode.library.trust import TrustSettings, TrustSettingsError

__all__ = [
    "AddOutcome",
    "ConsensusRules",
    "ForgottenError",
    "HonestPolicy",
    "Library",
    "LightEmbedder",
    "LightNodeError",
    "ServedHit",
    "TrustSettings",
    "TrustSettingsError",
    "VectorPolicy",
]
