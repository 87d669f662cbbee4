"""Bounded connections, discovery and the node's memory of the network.

`ConnectionManager` runs in the daemon's nursery and owns every outbound dial:

- a **gate** installed on the libp2p swarm (`install_gate`): every dial, whoever asks for it
  (our loop, a Kademlia query, anything else in libp2p), passes `refuse_dial` and the address
  policy (`core.peerinfo.parse_multiaddr` with `allow_non_loopback`, never our own address);
  every inbound connection passes the total and per-IP inbound caps before its handshake and
  `net.allow_peers` (and the graylist) after it. Monkeypatched on the swarm instance because
  py-libp2p 0.8.1 has no connection gater hook on those paths (see dsonode/net/README.md,
  "Discovery");
- a **loop** (every `tick_s`): below `low_water` connected peers it dials the best known peers
  (`core.peerbook.choose_dials`, backoff per peer, `unblock_peer` first) and, with discovery
  on, runs a Kademlia lookup for a random key (the DHT in SERVER mode answers others' lookups);
  above `high_water` it disconnects the surplus (`core.peerbook.choose_prunes`: mesh peers and
  the most recently useful are kept, never below low water);
- the **book** of known peers (`core.peerbook.KnownPeer`), loaded from the store at start,
  written back at most every `peers_flush_s`, bounded by `known_peers_max` (worst evicted).
"""

from __future__ import annotations

import dataclasses
import logging
import secrets
import time
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import multiaddr
import trio
from libp2p.abc import IHost
from libp2p.network.exceptions import SwarmException
from libp2p.peer.id import ID
from libp2p.peer.peerinfo import PeerInfo

from dsonode.config.settings import default
from dsonode.core.errors import DsoError
from dsonode.core.peerbook import (
    ConnInfo,
    KnownPeer,
    PeerBookError,
    choose_dials,
    choose_prunes,
    evict,
)
from dsonode.core.peerinfo import PeerAddr, PeerAddrError, parse_multiaddr
from dsonode.net.dialer import Backoff, BackoffPolicy
from dsonode.net.host import connected_peers

if TYPE_CHECKING:
    from dsonode.store import Store

log = logging.getLogger("dsonode.net.connmgr")
#: TTL of the addresses we put in the peerstore before a dial (seconds).
_ADDR_TTL = 600


class ConnError(DsoError):
    """The connection settings are invalid (the message names the setting)."""


@dataclass(frozen=True)
class ConnConfig:
    low_water: int = default("net.low_water")
    high_water: int = default("net.high_water")
    max_inbound: int = default("net.max_inbound")
    max_inbound_per_ip: int = default("net.max_inbound_per_ip")
    allow_peers: tuple[str, ...] = default("net.allow_peers")
    discovery: bool = default("net.discovery")
    mdns: bool = default("net.mdns")
    known_peers_max: int = default("net.known_peers_max")
    peers_flush_s: float = default("net.peers_flush_s")
    tick_s: float = 1.0
    #: A lookup runs this often while below low water, and every lookup_idle_s otherwise.
    lookup_interval_s: float = 3.0
    lookup_idle_s: float = 60.0
    lookup_timeout_s: float = 20.0
    #: Dials in flight at once.
    max_dialing: int = 8
    #: A connection younger than this is never pruned: a joiner that reached us first must
    #: have time for a lookup (every lookup_interval_s) to learn other peers, or a bootstrap
    #: at high water cuts every newcomer off before it knows anyone else (measured at 50
    #: nodes: 33 joiners left with no peer at all).
    prune_grace_s: float = 30.0

    def __post_init__(self) -> None:
        if not 1 <= self.low_water <= self.high_water:
            raise ConnError("need 1 <= net.low_water <= net.high_water")
        if self.max_inbound < 1 or self.max_inbound_per_ip < 1:
            raise ConnError("net.max_inbound and net.max_inbound_per_ip must be >= 1")
        if not 8 <= self.known_peers_max <= 100_000:
            raise ConnError("net.known_peers_max must be 8..100000")
        if not 0.5 <= self.peers_flush_s <= 3600:
            raise ConnError("net.peers_flush_s must be 0.5..3600")


def _ip_of(conn: Any) -> str | None:
    """The remote IP of a raw or muxed libp2p connection (None if it does not say)."""
    for obj in (conn, getattr(conn, "muxed_conn", None)):
        get = getattr(obj, "get_remote_address", None)
        if get is None:
            continue
        try:
            addr = get()
        except Exception:  # a closing connection may fail to answer
            return None
        return str(addr[0]) if addr else None
    return None


def _direction(conn: Any) -> str:
    """The direction, inbound, outbound or unknown (py-libp2p 0.8.1's `SwarmConn.direction` is an
    IntEnum whose INBOUND is 0: its name, not its value, says the direction)."""
    d = getattr(conn, "direction", None)
    name = getattr(d, "name", None)
    return str(name if isinstance(name, str) else d or "unknown").lower()


class ConnectionManager:
    def __init__(
        self,
        host: IHost,
        store: Store,
        config: ConnConfig,
        *,
        bootstrap: Iterable[PeerAddr] = (),
        allow_non_loopback: bool = False,
        dial_timeout_s: float = default("net.dial_timeout_s"),
        backoff: BackoffPolicy | None = None,
        is_graylisted: Callable[[ID], bool] = lambda _p: False,
        mesh: Callable[[], set[ID]] = set,
        busy: Callable[[], set[ID]] = set,
    ) -> None:
        self.host = host
        self.store = store
        self.config = config
        self.allow_non_loopback = allow_non_loopback
        self.dial_timeout_s = dial_timeout_s
        self.backoff_policy = backoff or BackoffPolicy()
        self.is_graylisted = is_graylisted
        self.mesh = mesh
        self.busy = busy
        self.self_id = host.get_id().to_base58()
        self.listen: set[str] = set()
        self.book: dict[str, KnownPeer] = {}
        self.configured: set[str] = set()
        self.dht: Any = None
        self._backoff: dict[str, tuple[Backoff, float]] = {}  # peer -> (backoff, next try)
        self._dialing: set[str] = set()
        self._useful: dict[str, float] = {}
        #: peer -> monotonic time its current connection was first seen (prune grace)
        self._since: dict[str, float] = {}
        self._forget: set[str] = set()
        #: Peers the operator forgot -> "has been disconnected since" (insertion order: the
        #: oldest are dropped past known_peers_max). Not learned back from libp2p's peerstore,
        #: which still holds their addresses, until the operator adds them again or they
        #: connect anew (they dial us, or a lookup dials them).
        self._forgotten: dict[str, bool] = {}
        self._dirty = False
        self._last_flush = 0.0
        self._next_lookup = 0.0
        self._lookup_running = False
        self._pending_inbound: Counter[str] = Counter()
        self.counters: Counter[str] = Counter()
        for addr in bootstrap:
            assert addr.peer_id is not None
            if addr.peer_id != self.self_id:
                self.configured.add(addr.peer_id)
                self._learn(addr.peer_id, [addr.tcp_multiaddr], "config")

    # -- the address policy

    def addr_allowed(self, text: str) -> PeerAddr | None:
        """A dialable address by our policy (loopback unless configured, not ours), or None."""
        try:
            addr = parse_multiaddr(text, allow_non_loopback=self.allow_non_loopback)
        except PeerAddrError:
            return None
        if addr.tcp_multiaddr in self.listen or addr.port == 0:
            return None
        return addr

    def refuse_dial(self, peer: ID) -> str | None:
        pid = peer.to_base58()
        if pid == self.self_id:
            return "self"
        if self.is_graylisted(peer):
            return "graylisted"
        if len(connected_peers(self.host)) >= self.config.high_water:
            return "high_water"
        return None

    def _learn(self, pid: str, addrs: Iterable[str], source: str) -> bool:
        """Add or refresh a known peer; True if the book changed."""
        if pid == self.self_id:
            return False
        good = [a.tcp_multiaddr for a in map(self.addr_allowed, addrs) if a is not None]
        old = self.book.get(pid)
        try:
            if old is None:
                if not good:
                    return False
                new = KnownPeer(pid, tuple(good[:4]), 0, source, 1.0 if source == "config" else 0)
            else:
                new = old.with_addrs(good)
                if source in ("config", "operator") and old.source != source:
                    new = dataclasses.replace(new, source=source)
        except PeerBookError:
            return False
        if new != old:
            self.book[pid] = new
            self._forget.discard(pid)
            self._dirty = True
            return True
        return False

    # -- the gate on the swarm

    def install_gate(self) -> None:
        """Route every dial and every inbound connection of the swarm through our policy.

        py-libp2p 0.8.1 dials from several places (host.connect, new_stream for a Kademlia
        query, GossipSub PX), all through `Swarm.dial_peer`; inbound connections all pass
        `upgrade_inbound_raw_conn` (before the handshake: the IP is known) and `add_conn`
        (after it: the peer id is known). There is no gater hook there, so we wrap them.
        """
        swarm: Any = self.host.get_network()
        orig_dial = swarm.dial_peer
        orig_upgrade = swarm.upgrade_inbound_raw_conn
        orig_add = swarm.add_conn
        peerstore = self.host.get_peerstore()

        async def dial_peer(peer_id: ID) -> Any:
            if swarm.get_connections(peer_id):
                return await orig_dial(peer_id)  # reuses the connection, dials nothing
            reason = self.refuse_dial(peer_id)
            if reason is not None:
                self.counters[f"dial_refused_{reason}"] += 1
                raise SwarmException(f"dial to {peer_id} refused by policy: {reason}")
            try:
                addrs = list(peerstore.addrs(peer_id))
            except Exception:  # PeerStoreError: nothing known
                addrs = []
            allowed = [a for a in addrs if self.addr_allowed(str(a)) is not None]
            if not allowed:
                self.counters["dial_refused_address"] += 1
                raise SwarmException(f"no address of {peer_id} is allowed by policy")
            if len(allowed) != len(addrs):
                peerstore.clear_addrs(peer_id)
                peerstore.add_addrs(peer_id, allowed, _ADDR_TTL)
            return await orig_dial(peer_id)

        async def upgrade_inbound_raw_conn(raw_conn: Any, maddr: Any) -> Any:
            ip = _ip_of(raw_conn) or "?"
            inbound = [_ip_of(c) for c in swarm.get_connections() if _direction(c) == "inbound"]
            total = len(inbound) + sum(self._pending_inbound.values())
            per_ip = inbound.count(ip) + self._pending_inbound[ip]
            if total >= self.config.max_inbound or per_ip >= self.config.max_inbound_per_ip:
                self.counters[
                    "inbound_refused_total"
                    if total >= self.config.max_inbound
                    else "inbound_refused_per_ip"
                ] += 1
                await raw_conn.close()
                raise SwarmException(f"inbound connection from {ip} refused: over the cap")
            self._pending_inbound[ip] += 1
            try:
                return await orig_upgrade(raw_conn, maddr)
            finally:
                self._pending_inbound[ip] -= 1
                if self._pending_inbound[ip] <= 0:
                    del self._pending_inbound[ip]

        async def add_conn(muxed_conn: Any, direction: str = "unknown") -> Any:
            peer = muxed_conn.peer_id
            if direction == "inbound":
                refused = None
                allow = self.config.allow_peers
                if allow and peer.to_base58() not in allow:
                    refused = "not_allowed"
                elif self.is_graylisted(peer):
                    refused = "graylisted"
                if refused is not None:
                    self.counters[f"inbound_refused_{refused}"] += 1
                    await muxed_conn.close()
                    raise SwarmException(f"inbound connection of {peer} refused: {refused}")
            return await orig_add(muxed_conn, direction)

        swarm.dial_peer = dial_peer
        swarm.upgrade_inbound_raw_conn = upgrade_inbound_raw_conn
        swarm.add_conn = add_conn

    # -- lifecycle

    def load(self) -> None:
        """The persisted book (call before `run`, in a worker thread if the store is busy)."""
        for peer in self.store.load_known_peers(self.config.known_peers_max * 2):
            if peer.peer_id == self.self_id:
                continue
            old = self.book.get(peer.peer_id)
            if old is None:
                self.book[peer.peer_id] = peer
            else:  # a configured peer: keep its source, take the remembered score and time
                self.book[peer.peer_id] = dataclasses.replace(
                    old.with_addrs(peer.addrs), score=peer.score, last_seen_ms=peer.last_seen_ms
                )

    async def run(self) -> None:
        if self.config.discovery:
            self._start_dht()
        async with trio.open_nursery() as nursery:
            try:
                while True:
                    await self._tick(nursery)
                    await trio.sleep(self.config.tick_s)
            finally:
                with trio.move_on_after(5) as scope:
                    scope.shield = True
                    self._dirty = True
                    await self._flush(force=True)

    def _start_dht(self) -> None:
        from libp2p.kad_dht.kad_dht import DHTMode, KadDHT

        # SERVER mode: we answer others' lookups (registers /ipfs/kad/1.0.0). Not run as a
        # service: its random walk starts at once (before any peer is known) and then waits
        # 120 s; our loop runs the lookups when the node needs peers instead.
        self.dht = KadDHT(self.host, DHTMode.SERVER, enable_providers=False, enable_values=False)
        # "Failed to read DHT message" is logged at WARNING for every lookup stream a peer
        # closes after its answer: noise, not news.
        logging.getLogger("libp2p.kad_dht").setLevel(logging.ERROR)

    async def _tick(self, nursery: trio.Nursery) -> None:
        now = time.monotonic()
        now_ms = int(time.time() * 1000)
        peers = connected_peers(self.host)
        connected = {p.to_base58() for p in peers}
        mesh = {p.to_base58() for p in self.mesh()}
        for pid in connected:
            if pid in mesh:
                self._useful[pid] = now
            old = self.book.get(pid)
            if old is not None:
                self.book[pid] = dataclasses.replace(old, last_seen_ms=now_ms)
                self._dirty = True
        if self.config.discovery:
            self._harvest(connected)
        # prune above high water
        busy = {p.to_base58() for p in self.busy()}
        for pid in list(self._since):
            if pid not in connected:
                del self._since[pid]
        young = {
            pid
            for pid in connected
            if now - self._since.setdefault(pid, now) < self.config.prune_grace_s
        }
        infos = [
            ConnInfo(pid, pid in mesh, self._useful.get(pid, 0.0), pid in busy or pid in young)
            for pid in sorted(connected)
        ]
        for pid in choose_prunes(
            infos, low_water=self.config.low_water, high_water=self.config.high_water
        ):
            self.counters["pruned"] += 1
            nursery.start_soon(self._close, ID.from_base58(pid))
        # dial below low water
        excluded = {pid for pid, (_b, at) in self._backoff.items() if at > now}
        excluded |= self._dialing
        excluded |= {pid for pid in self.book if self.is_graylisted(ID.from_base58(pid))}
        room = self.config.max_dialing - len(self._dialing)
        for pid in choose_dials(
            self.book,
            connected,
            low_water=self.config.low_water,
            excluded=excluded,
            dialing=len(self._dialing),
        )[: max(0, room)]:
            self._dialing.add(pid)
            nursery.start_soon(self._dial, pid)
        if (
            self.dht is not None
            and not self._lookup_running
            and now >= self._next_lookup
            and connected
        ):
            self._lookup_running = True
            below = len(connected) < self.config.low_water
            wait = self.config.lookup_interval_s if below else self.config.lookup_idle_s
            self._next_lookup = now + wait
            nursery.start_soon(self._lookup)
        await self._flush()

    def _harvest(self, connected: set[str]) -> None:
        """What libp2p learned (identify, Kademlia answers) into the book, by policy."""
        for pid in self._forgotten:
            if pid not in connected:
                self._forgotten[pid] = True
        peerstore = self.host.get_peerstore()
        for peer in peerstore.peers_with_addrs():
            pid = peer.to_base58()
            if pid == self.self_id:
                continue
            try:
                addrs = [str(a) for a in peerstore.addrs(peer)]
            except Exception:  # expired between the two calls
                continue
            if pid in self._forgotten:
                if pid not in connected or not self._forgotten[pid]:
                    continue  # not back, or still the connection it had when forgotten
                del self._forgotten[pid]  # a new connection: it dialled us or a lookup did
            source = "inbound" if pid in connected and pid not in self.book else "dht"
            self._learn(pid, addrs, source)

    async def _lookup(self) -> None:
        try:
            with trio.move_on_after(self.config.lookup_timeout_s):
                await self.dht.peer_routing.find_closest_peers_network(secrets.token_bytes(32))
            self.counters["lookups"] += 1
        except Exception as exc:  # a lookup failing is no reason to stop the node
            self.counters["lookup_errors"] += 1
            log.debug("lookup failed: %r", exc)
        finally:
            self._lookup_running = False

    async def _close(self, peer: ID) -> None:
        try:
            await self.host.get_network().close_peer(peer)
        except Exception as exc:  # already gone
            log.debug("closing %s: %r", peer, exc)

    async def _dial(self, pid: str) -> None:
        try:
            peer = self.book.get(pid)
            if peer is None:
                return
            peer_id = ID.from_base58(pid)
            network: Any = self.host.get_network()
            # A failed dial puts the peer in the swarm's 60 s negative cache (README trap 7).
            unblock = getattr(network, "unblock_peer", None)
            if unblock is not None:
                unblock(peer_id)
            # Dial the remembered addresses only (identify may have replaced them).
            peerstore = self.host.get_peerstore()
            peerstore.clear_addrs(peer_id)
            info = PeerInfo(peer_id, [multiaddr.Multiaddr(a) for a in peer.addrs])
            self.counters["dials"] += 1
            with trio.move_on_after(self.dial_timeout_s):
                try:
                    await self.host.connect(info)
                except Exception as exc:  # libp2p raises many types; all mean "not now"
                    log.debug("dial %s failed: %r", pid, exc)
            ok = bool(network.get_connections(peer_id))
            backoff, _at = self._backoff.get(pid, (Backoff(self.backoff_policy), 0.0))
            current = self.book.get(pid)
            if ok:
                backoff.reset()
                self._backoff.pop(pid, None)
                self.counters["dials_ok"] += 1
                if current is not None:
                    self.book[pid] = current.scored(+1)
            else:
                self._backoff[pid] = (backoff, time.monotonic() + backoff.next_delay())
                self.counters["dials_failed"] += 1
                if current is not None:
                    self.book[pid] = current.scored(-1)
            self._dirty = True
        finally:
            self._dialing.discard(pid)

    async def _flush(self, force: bool = False) -> None:
        now = time.monotonic()
        if not self._dirty or (not force and now - self._last_flush < self.config.peers_flush_s):
            return
        connected = {p.to_base58() for p in connected_peers(self.host)}
        for pid in evict(self.book, self.config.known_peers_max, connected | self.configured):
            self.book.pop(pid, None)
            self._forget.add(pid)
        peers, forget = list(self.book.values()), sorted(self._forget)
        self._dirty = False
        self._last_flush = now
        self._forget.clear()
        try:
            await trio.to_thread.run_sync(self.store.save_known_peers, peers, forget)
            self.counters["flushes"] += 1
        except Exception as exc:  # a full disk must not stop the network
            log.warning("could not save known peers: %r", exc)

    # -- the operator's commands (on the event loop)

    def add(self, text: str) -> KnownPeer:
        addr = parse_multiaddr(
            text, allow_non_loopback=self.allow_non_loopback, require_peer_id=True
        )
        assert addr.peer_id is not None
        if addr.peer_id == self.self_id:
            raise PeerAddrError("that is this node's own peer id")
        if self.addr_allowed(addr.tcp_multiaddr) is None:
            raise PeerAddrError(f"{addr.tcp_multiaddr} is this node's own listen address")
        self._forgotten.pop(addr.peer_id, None)
        self._learn(addr.peer_id, [addr.tcp_multiaddr], "operator")
        self._backoff.pop(addr.peer_id, None)  # the operator asks for it now
        return self.book[addr.peer_id]

    def forget(self, pid: str) -> bool:
        """Drop a peer from the book (and the store at the next flush); True if it was known.

        It is not dialled from the book any more and not learned back from the peerstore;
        an open connection stays, and the peer may dial us or be found by a lookup again."""
        found = self.book.pop(pid, None) is not None
        self._backoff.pop(pid, None)
        self.configured.discard(pid)
        self._forgotten[pid] = False
        while len(self._forgotten) > self.config.known_peers_max:
            del self._forgotten[next(iter(self._forgotten))]
        if found:
            self._forget.add(pid)
            self._dirty = True
        return found

    def snapshot(self) -> dict[str, Any]:
        swarm: Any = self.host.get_network()
        conns = swarm.get_connections()
        connected = {p.to_base58() for p in connected_peers(self.host)}
        inbound = [c for c in conns if _direction(c) == "inbound"]
        return {
            "connections": {
                "total": len(conns),
                "inbound": len(inbound),
                "inbound_by_ip": dict(Counter(_ip_of(c) or "?" for c in inbound)),
                "peers": len(connected),
                "low_water": self.config.low_water,
                "high_water": self.config.high_water,
            },
            "discovery": {"dht": self.dht is not None, **dict(self.counters)},
            "known_peers": [
                {
                    "peer_id": p.peer_id,
                    "addrs": list(p.addrs),
                    "last_seen_ms": p.last_seen_ms,
                    "source": p.source,
                    "score": p.score,
                    "connected": p.peer_id in connected,
                }
                for p in sorted(self.book.values(), key=lambda p: p.peer_id)
            ],
        }
