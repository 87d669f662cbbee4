"""Library.network_size over a real LMDB store: what the estimate counts and how fast it
follows the network (the multi-process check is in test_net_polite.py)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from dsonode.core import wire
from dsonode.core.consensus import apply_reputation
from dsonode.library import ConsensusRules, Library
from dsonode.library.library import NETWORK_SIZE_WINDOW_S
from dsonode.store import CodeIndex, Store

SPACE = "ab" * 32


@dataclass
class _Space:
    """What network_size needs of an embedder: nothing but the space (never asked to embed)."""

    space_id: str = SPACE
    reference: np.ndarray | None = None
    model_name: str = "none"


@pytest.fixture
def library(tmp_path):
    store = Store(tmp_path / "store", space_id=SPACE)
    lib = Library(
        store=store,
        index=CodeIndex(),
        embedder=_Space(),  # type: ignore[arg-type]  # embedding is not exercised here
        key=Ed25519PrivateKey.generate(),
        rules=ConsensusRules(quorum=2, method="median", committee=7),
    )
    yield lib
    store.close()


def _judged(lib: Library, author: bytes, at_ms: int) -> None:
    lib.store.update_reputation(author, lambda rec: apply_reputation(rec, (1, 0), at_ms))


def test_alone_it_is_one_and_connected_peers_count_for_stats(library):
    assert library.network_size() == 1
    assert library.network_size(connected=5) == 6  # a network without traffic yet


def test_a_new_author_counts_at_once_not_after_the_refresh(library):
    assert library.network_size() == 1  # counted now, on an empty table
    now = wire.now_ms()
    for i in range(4):
        _judged(library, bytes([i + 1]) * 32, now)
    assert library.network_size() == 5  # 4 authors and us, without waiting 30 s
    assert library.network_size(connected=2) == 5  # the larger of the two


def test_authors_not_seen_for_a_week_no_longer_count(library):
    now = wire.now_ms()
    _judged(library, b"\x01" * 32, now)
    _judged(library, b"\x02" * 32, now - int(NETWORK_SIZE_WINDOW_S * 1000) - 60_000)
    library.store.update_reputation(b"\x03" * 32, lambda rec: {"accepted": 1})  # no time
    assert library.network_size() == 3  # author 1, the undated author 3, and us
