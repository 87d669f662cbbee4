"""TESTNET ONLY: the vector policy of a Byzantine node (what it submits instead of the truth).

The composition root injects `ByzantinePolicy` into the library only when the configuration
enables a testnet with an attack (`[testnet] enabled = true`, `attack = ...`); every other
node runs `HonestPolicy`. The attacks themselves are pure (dsonode.core.attacks, which also
says what each one does); this class gives them the context a live node holds: the others'
submissions for the experience (`ipm`) and the nearest other experience in its store
(`mimic`). It poisons gossiped and locally added experiences alike.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from dsonode.core import attacks, bitdelta, wire
from dsonode.library.library import Library

#: Submissions of others an `ipm` attacker averages into its estimate of the honest mean.
IPM_MAX_ROWS = 64


class ByzantinePolicy:
    def __init__(self, library: Library, attack: str, scale: float, seed: int | None = None):
        if attack not in attacks.ATTACKS:
            raise attacks.AttackError(f"attack must be one of {', '.join(attacks.ATTACKS)}")
        self.library = library
        self.name = attack
        self.attack: str | None = attack  # VectorPolicy: what `stats` shows
        self.scale = scale
        self.rng = np.random.default_rng(seed)
        self.direction = attacks.attack_direction(library.author)

    def vector(self, vector: np.ndarray, experience: wire.Experience | None) -> np.ndarray:
        """`experience` gives the attacks that need it their context; without it (or before
        any other submission or sibling is known) `alie_collude` falls back to `alie` and
        `ipm` / `mimic` use only `vector`."""
        attack = self.name
        context: dict[str, Any] = {}
        if experience is not None:
            context["experience_id"] = experience.id
            if attack in attacks.NEEDS_HONEST:
                context["honest"] = self._seen_vectors(experience.id)
            if attack in attacks.NEEDS_SIBLING:
                context["sibling"] = self._sibling_vector(experience.id, vector)
        elif attack == "alie_collude":
            attack = "alie"  # no experience id to collude on: the key's own direction
        return attacks.poison(vector, attack, self.rng, self.scale, self.direction, **context)

    def _seen_vectors(self, exp_id: bytes) -> np.ndarray | None:
        codes = self.library.seen_codes(exp_id, IPM_MAX_ROWS)
        if not codes:
            return None
        packed = np.frombuffer(b"".join(codes), dtype=np.uint8).reshape(len(codes), -1)
        rows = bitdelta.decode(packed, ref=self.library.embedder.reference).astype(np.float64)
        return rows / np.linalg.norm(rows, axis=1, keepdims=True)

    def _sibling_vector(self, exp_id: bytes, vector: np.ndarray) -> np.ndarray | None:
        other = self.library.nearest_other(exp_id, vector)
        if other is None:
            return None
        self.library.count("mimic_targets")
        return self.library.embed(other.text)  # the exact path, as honest nodes embed it
