"""Keep connections to the configured (bootstrap) peers: our own redial loop.

py-libp2p 0.8.1 remembers a peer whose every address failed for 60 s and refuses to dial it
again meanwhile (the swarm's negative peer cache), and its own auto-connector is switched off
in `dsonode.net.host`. So one task per peer watches the connection and, when it is gone,
calls `unblock_peer` and dials again, waiting an exponential backoff with jitter between
failures (capped, reset after a success).
"""

from __future__ import annotations

import contextlib
import logging
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import multiaddr
import trio
from libp2p.abc import IHost
from libp2p.peer.id import ID
from libp2p.peer.peerinfo import PeerInfo

from dsonode.config.settings import default
from dsonode.core.peerinfo import PeerAddr, PeerAddrError
from dsonode.net.host import connected_peers

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class BackoffPolicy:
    initial_s: float = 0.5
    max_s: float = 30.0
    multiplier: float = 2.0
    jitter: float = 0.2  # each delay is scaled by a uniform factor in [1 - jitter, 1 + jitter]

    def __post_init__(self) -> None:
        if not 0.01 <= self.initial_s <= self.max_s <= 3600:
            raise PeerAddrError("backoff needs 0.01 <= initial_s <= max_s <= 3600")
        if not 1.0 <= self.multiplier <= 10 or not 0 <= self.jitter < 1:
            raise PeerAddrError("backoff needs multiplier 1..10 and jitter 0..<1")


class Backoff:
    """Delays initial, initial*m, ... capped at max, each jittered; `reset()` after success."""

    def __init__(self, policy: BackoffPolicy, rng: Callable[[], float] = random.random) -> None:
        self.policy = policy
        self._rng = rng
        self.failures = 0

    def next_delay(self) -> float:
        p = self.policy
        base = min(p.max_s, p.initial_s * p.multiplier**self.failures)
        self.failures += 1
        return base * (1 - p.jitter + 2 * p.jitter * self._rng())

    def reset(self) -> None:
        self.failures = 0


@dataclass
class PeerDialState:
    addr: PeerAddr
    attempts: int = 0
    successes: int = 0
    failures: int = 0
    connected: bool = False
    last_error: str = ""


@dataclass
class DialerStats:
    peers: dict[str, PeerDialState] = field(default_factory=dict)


class Dialer:
    """Dial every peer in `peers` and redial whenever its connection drops."""

    def __init__(
        self,
        host: IHost,
        peers: Sequence[PeerAddr],
        policy: BackoffPolicy | None = None,
        check_interval_s: float = 0.5,
        dial_timeout_s: float = default("net.dial_timeout_s"),
        on_connected: Callable[[ID], None] | None = None,
    ) -> None:
        for p in peers:
            if p.peer_id is None:
                raise PeerAddrError(f"peer address {p} has no /p2p/<peer id>")
        self.host = host
        self.policy = policy or BackoffPolicy()
        self.check_interval_s = check_interval_s
        self.dial_timeout_s = dial_timeout_s
        self.on_connected = on_connected
        self.stats = DialerStats()
        self_id = host.get_id().to_base58()
        for p in peers:
            if p.peer_id != self_id:  # a node listed in its own bootstrap list skips itself
                self.stats.peers[p.multiaddr] = PeerDialState(p)

    async def run(self) -> None:
        async with trio.open_nursery() as nursery:
            for state in self.stats.peers.values():
                nursery.start_soon(self._keep, state)

    def _is_connected(self, peer_id: ID) -> bool:
        return peer_id in connected_peers(self.host)

    async def _keep(self, state: PeerDialState) -> None:
        assert state.addr.peer_id is not None
        peer_id = ID.from_base58(state.addr.peer_id)
        info = PeerInfo(peer_id, [multiaddr.Multiaddr(state.addr.tcp_multiaddr)])
        backoff = Backoff(self.policy)
        network = self.host.get_network()
        while True:
            if self._is_connected(peer_id):
                state.connected = True
                await trio.sleep(self.check_interval_s)
                continue
            state.connected = False
            state.attempts += 1
            # A failed dial puts the peer in the swarm's 60 s negative cache; clear it, or
            # this dial would fail at once without touching the network.
            unblock = getattr(network, "unblock_peer", None)
            if unblock is not None:
                unblock(peer_id)
            # Dial the configured address only: identify replaced the peerstore's addresses
            # with the peer's own listen addresses, and connect() dials every address there
            # (a configured relay or proxy would be bypassed; found by the partition test).
            with contextlib.suppress(Exception):
                self.host.get_peerstore().clear_addrs(peer_id)
            error = ""
            with trio.move_on_after(self.dial_timeout_s) as scope:
                try:
                    await self.host.connect(info)
                except Exception as exc:  # libp2p raises many types; all mean "not now"
                    error = f"{type(exc).__name__}: {exc}"[:300]
            if scope.cancelled_caught:
                error = f"dial timed out after {self.dial_timeout_s} s"
            # connect() can outlive the connection it made (it also waits for identify),
            # so the connection table, not the return, decides success.
            if self._is_connected(peer_id):
                state.successes += 1
                state.connected = True
                state.last_error = ""
                backoff.reset()
                logger.info("connected to %s", state.addr)
                if self.on_connected is not None:
                    self.on_connected(peer_id)
                continue
            state.failures += 1
            state.last_error = error or "not connected after dial"
            delay = backoff.next_delay()
            logger.debug("dial %s failed (%s); retry in %.2f s", state.addr, error, delay)
            await trio.sleep(delay)
