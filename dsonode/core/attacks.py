"""What a Byzantine testnet node submits instead of its honest embedding (pure; testnet only).

The attacks of `dsonode bench byzantine`, as a node in a live network can run them. In the
offline bench the attackers know the truth and every honest submission; a live node knows
what it has: its own exact embedding of the text (which is what every honest node embeds,
since they run the same model on the same text), the submissions it has received so far for
the experience, and the other experiences in its store. Colluders never talk: where they
must agree, they derive the same value from what all of them hold (the experience id).

- ``gaussian``: `normalize(v + scale * u)`, u a fresh random unit direction (scale 1:
  cosine ~0.71 to the honest vector; large scales: a random direction).
- ``sign_flip``: `-v` (scale does not matter: a code keeps signs and one magnitude).
- ``alie`` ("A Little Is Enough", Baruch et al. 2019) for one node: `v` pushed by
  `ALIE_STEP * scale` along a fixed direction of the attacker's key (the same for every
  experience). Cosine ~0.96 to `v` at scale 1 in floats, but a 1-bit code magnifies the
  push (every coordinate where |v_i| < step * |d_i| flips sign): the code's cosine to the
  honest code is ~0.82 at scale 1 (under the cut-off, 0.94 when honest codes agree:
  rejected) and ~0.96 at scale 0.2 (inside it: *accepted*, the median has to bound its pull).
- ``alie_collude``: the colluding form, as in the paper where every attacker sends the same
  vector: the same push, along a direction derived from the experience id
  (`experience_direction`), so all colluders submit the *same* point for an experience
  without talking, and their votes add up coordinate by coordinate.
- ``ipm`` (inner product manipulation, Xie et al. 2019): `-IPM_EPS * scale * mean` of the
  honest submissions, estimated from what the node holds: its own honest embedding plus the
  decoded submissions it has received for the experience (`honest` rows). Every colluder
  estimates nearly the same mean, so they collude without talking. After normalisation (and
  in a 1-bit code) it points where `-mean` points: on the wire IPM is a sign flip of the
  *network's* mean rather than of the attacker's own vector.
- ``mimic`` (not from the literature; the attack that matters for retrieval): submit the
  honest vector of a *sibling* experience, so that this experience's consensus points at
  another one. The node picks the sibling as the nearest other experience in its own store
  (what a retrieval attacker wants); colluders holding the same store pick the same one. With
  no sibling known yet (the first experience) it has nothing to mimic and submits `v`.

`NEEDS_HONEST` / `NEEDS_SIBLING` say which attacks need that context from the node.
"""

from __future__ import annotations

import hashlib

import numpy as np

from dsonode.core.constants import DIM
from dsonode.core.errors import DsoError

__all__ = [
    "ALIE_STEP",
    "ATTACKS",
    "IPM_EPS",
    "NEEDS_HONEST",
    "NEEDS_SIBLING",
    "AttackError",
    "attack_direction",
    "experience_direction",
    "poison",
]

ATTACKS = ("gaussian", "sign_flip", "alie", "alie_collude", "ipm", "mimic")
NEEDS_HONEST = frozenset({"ipm"})
NEEDS_SIBLING = frozenset({"mimic"})
#: ALIE's shift, as a fraction of the unit embedding per unit of attack_scale.
ALIE_STEP = 0.3
#: IPM's epsilon (as in dsonode.bench.byzantine).
IPM_EPS = 0.1
_EXPERIENCE_DOMAIN = b"dso/attack/alie_collude/1\x00"


class AttackError(DsoError, ValueError):
    """An unknown attack or unusable attack input (the message names it)."""


def attack_direction(seed: bytes) -> np.ndarray:
    """A fixed unit direction derived from the attacker's key (the same for every experience)."""
    rng = np.random.default_rng(int.from_bytes(seed[:8].ljust(8, b"\0"), "little"))
    d = rng.normal(size=DIM)
    return d / np.linalg.norm(d)


def experience_direction(experience_id: bytes) -> np.ndarray:
    """A unit direction every colluder derives from the experience id alone."""
    digest = hashlib.sha256(_EXPERIENCE_DOMAIN + bytes(experience_id)).digest()
    rng = np.random.default_rng(int.from_bytes(digest[:8], "little"))
    d = rng.normal(size=DIM)
    return d / np.linalg.norm(d)


def _rows(x: np.ndarray | None, what: str) -> np.ndarray | None:
    if x is None:
        return None
    a = np.asarray(x, dtype=np.float64)
    if a.ndim == 1:
        a = a[None, :]
    if a.ndim != 2 or a.shape[1] != DIM or a.shape[0] == 0 or not np.all(np.isfinite(a)):
        raise AttackError(f"{what} must be finite rows of {DIM} floats")
    return a


def poison(
    vector: np.ndarray,
    attack: str,
    rng: np.random.Generator,
    scale: float = 1.0,
    direction: np.ndarray | None = None,
    *,
    experience_id: bytes | None = None,
    honest: np.ndarray | None = None,
    sibling: np.ndarray | None = None,
) -> np.ndarray:
    """The unit float32 vector a Byzantine node submits instead of the unit vector `vector`.

    `direction`: the key's direction for ``alie`` (`attack_direction`); `experience_id`: for
    ``alie_collude``; `honest`: rows of honest submissions seen (``ipm``; `vector` itself is
    always counted); `sibling`: the honest vector of the sibling experience (``mimic``).
    See the module docstring for what each attack does.
    """
    v = np.asarray(vector, dtype=np.float64)
    if attack == "sign_flip":
        out = -v
    elif attack == "gaussian":
        u = rng.normal(size=DIM)
        out = v + scale * u / np.linalg.norm(u)
    elif attack == "alie":
        d = direction if direction is not None else attack_direction(b"alie")
        out = v + ALIE_STEP * scale * np.asarray(d, dtype=np.float64)
    elif attack == "alie_collude":
        if experience_id is None or len(experience_id) != 32:
            raise AttackError("alie_collude needs the 32-byte experience id")
        out = v + ALIE_STEP * scale * experience_direction(experience_id)
    elif attack == "ipm":
        rows = _rows(honest, "ipm's honest rows")
        seen = v[None, :] if rows is None else np.vstack([v[None, :], rows])
        out = -IPM_EPS * scale * seen.mean(axis=0)
    elif attack == "mimic":
        rows = _rows(sibling, "mimic's sibling")
        out = v if rows is None else rows[0]
    else:
        raise AttackError(f"unknown attack {attack!r} (one of {', '.join(ATTACKS)})")
    norm = float(np.linalg.norm(out))
    if not np.isfinite(norm) or norm == 0:  # scale 0 of a cancelling attack: keep honest
        return np.asarray(vector, dtype=np.float32)
    return (out / norm).astype(np.float32)
