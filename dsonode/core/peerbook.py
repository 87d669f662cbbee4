"""The node's memory of the network, and whom to dial or drop: pure (no I/O, no libp2p).

`KnownPeer` is one remembered peer (peer id, dialable addresses, when it was last seen, how
we learned of it, a score); `encode_peer`/`decode_peer` are its record in the store's
`known_peers` database (msgpack, versioned). The connection manager in `dsonode.net.connmgr`
asks `choose_dials` whom to dial while it is below low water, `choose_prunes` whom to
disconnect above high water, and `evict` which records to forget when the book is full.
See dsonode/net/README.md ("Discovery") for the policy around them.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass

import msgpack

from dsonode.core.errors import DsoError
from dsonode.core.peerinfo import MAX_PEER_ID_CHARS, PeerAddrError, parse_multiaddr

#: Where a peer's address came from (shown by `dsonode peers`).
SOURCES = ("config", "operator", "dht", "inbound", "stored")
#: Addresses remembered per peer.
MAX_ADDRS = 4
#: A score stays within +-SCORE_CAP: one success or failure moves it by 1.
SCORE_CAP = 20.0
RECORD_VERSION = 1


class PeerBookError(DsoError, ValueError):
    """A known-peer record is malformed (the message says which field)."""


@dataclass(frozen=True)
class KnownPeer:
    peer_id: str
    addrs: tuple[str, ...]
    last_seen_ms: int = 0  # last time we were connected to it (0 = never)
    source: str = "dht"
    score: float = 0.0  # + successful dials and useful connections, - failed dials

    def __post_init__(self) -> None:
        if not isinstance(self.peer_id, str) or not 1 <= len(self.peer_id) <= MAX_PEER_ID_CHARS:
            raise PeerBookError("peer_id must be a base58 peer id")
        if self.source not in SOURCES:
            raise PeerBookError(f"source must be one of {', '.join(SOURCES)}")
        if not isinstance(self.addrs, tuple) or len(self.addrs) > MAX_ADDRS:
            raise PeerBookError(f"addrs must be a tuple of at most {MAX_ADDRS} multiaddrs")
        for a in self.addrs:
            try:  # syntax only; the loopback rule is the dialer's policy (allow_non_loopback)
                addr = parse_multiaddr(a, allow_non_loopback=True)
            except PeerAddrError as exc:
                raise PeerBookError(f"addr {a!r}: {exc}") from None
            if addr.peer_id is not None:
                raise PeerBookError(f"addr {a!r}: store the address without /p2p/")
        if isinstance(self.last_seen_ms, bool) or not isinstance(self.last_seen_ms, int):
            raise PeerBookError("last_seen_ms must be an int")
        if not -SCORE_CAP <= float(self.score) <= SCORE_CAP:
            raise PeerBookError(f"score must be within +-{SCORE_CAP}")

    def scored(self, delta: float) -> KnownPeer:
        score = max(-SCORE_CAP, min(SCORE_CAP, self.score + delta))
        return dataclasses.replace(self, score=score)

    def with_addrs(self, addrs: Iterable[str]) -> KnownPeer:
        """Newest first, deduplicated, at most MAX_ADDRS."""
        merged = list(dict.fromkeys([*addrs, *self.addrs]))[:MAX_ADDRS]
        return dataclasses.replace(self, addrs=tuple(merged))


def encode_peer(peer: KnownPeer) -> bytes:
    return msgpack.packb(
        {
            "v": RECORD_VERSION,
            "addrs": list(peer.addrs),
            "seen": peer.last_seen_ms,
            "src": peer.source,
            "score": float(peer.score),
        },
        use_bin_type=True,
    )


def decode_peer(peer_id: str, raw: bytes) -> KnownPeer:
    """The record stored under `peer_id`; PeerBookError if it is not one of ours."""
    try:
        obj = msgpack.unpackb(raw, raw=False, strict_map_key=True)
    except Exception as exc:  # msgpack raises several types for garbage
        raise PeerBookError(f"not a msgpack record: {type(exc).__name__}") from None
    if not isinstance(obj, dict) or obj.get("v") != RECORD_VERSION:
        raise PeerBookError("not a known-peer record of version 1")
    addrs, seen, src, score = obj.get("addrs"), obj.get("seen"), obj.get("src"), obj.get("score")
    if not isinstance(addrs, list) or not all(isinstance(a, str) for a in addrs):
        raise PeerBookError("addrs must be a list of strings")
    if not isinstance(score, int | float) or isinstance(score, bool):
        raise PeerBookError("score must be a number")
    if not isinstance(src, str):
        raise PeerBookError("source must be a string")
    return KnownPeer(peer_id, tuple(addrs), seen, src, float(score))  # type: ignore[arg-type]


def _rank(peer: KnownPeer) -> tuple[float, int]:
    """Better first: higher score, then seen more recently."""
    return (-peer.score, -peer.last_seen_ms)


def choose_dials(
    known: Mapping[str, KnownPeer],
    connected: Collection[str],
    *,
    low_water: int,
    excluded: Collection[str] = (),
    dialing: int = 0,
) -> list[str]:
    """Peers to dial now: none at or above low water; else the best known peers that are not
    connected, not `excluded` (ourselves, graylisted, in backoff, not allowed), enough to
    reach low water counting the dials in flight."""
    want = low_water - len(connected) - dialing
    if want <= 0:
        return []
    candidates = [
        p for pid, p in known.items() if pid not in connected and pid not in excluded and p.addrs
    ]
    candidates.sort(key=_rank)
    return [p.peer_id for p in candidates[:want]]


@dataclass(frozen=True)
class ConnInfo:
    """What the pruning choice knows about one connected peer."""

    peer_id: str
    in_mesh: bool = False
    last_useful_s: float = 0.0  # monotonic time of the last gossip/sync it brought us
    protected: bool = False  # e.g. a sync exchange is running with it, or it is brand new


def choose_prunes(connected: Sequence[ConnInfo], *, low_water: int, high_water: int) -> list[str]:
    """Peers to disconnect: none at or below high water; else down to high water, never
    below low water, never a protected peer, mesh peers last, then the least recently
    useful first."""
    surplus = len(connected) - high_water
    if surplus <= 0:
        return []
    surplus = min(surplus, len(connected) - low_water)
    candidates = [c for c in connected if not c.protected]
    candidates.sort(key=lambda c: (c.in_mesh, c.last_useful_s, c.peer_id))
    return [c.peer_id for c in candidates[: max(0, surplus)]]


def evict(known: Mapping[str, KnownPeer], max_peers: int, keep: Collection[str] = ()) -> list[str]:
    """Records to forget so that at most `max_peers` remain: the worst first (lowest score,
    then seen longest ago); `keep` (connected, configured) are never chosen."""
    over = len(known) - max_peers
    if over <= 0:
        return []
    candidates = [p for pid, p in known.items() if pid not in keep]
    candidates.sort(key=_rank, reverse=True)
    return [p.peer_id for p in candidates[:over]]
