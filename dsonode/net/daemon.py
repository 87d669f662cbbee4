"""The networked node service: gossip and sync in, stored items and consensus out.

`NetDaemon` runs inside the node's trio nursery (`dsonode run --config F` or `--listen ...`):

- one libp2p host (Noise, yamux), the `Gossip` layer on the node's space topic, the
  `ConnectionManager` (dsonode/net/connmgr.py: configured and known peers, Kademlia
  discovery, watermarks, inbound caps; see dsonode/net/README.md for the traps handled
  there), and the `/dso/sync/1.0.0` server (registered before the host runs);
- every received batch goes through `Pipeline` (size, envelope, duplicates, per-peer rate,
  schema, signature, clock skew; penalties and graylist) on the event loop, then the
  accepted items go to the node's library in one worker thread (`Library.accept_items`:
  committee filter, store, our own submission for new experiences, consensus recomputed,
  index and reputation updated; see dsonode/library/library.py), and what it returns (our
  new submissions) is published;
- catch-up: `_sync_loop` pulls from every connected peer (dialled or inbound) as soon as the
  connection appears and then every `sync_interval_s` (jittered), one exchange per peer at a
  time and at most `sync_concurrency` at once; what arrives goes to the library exactly
  like gossip. A peer whose exchange fails with a WireError (bad frame, wrong answer,
  invalid items) is penalised in the pipeline like invalid gossip; timeouts and broken
  streams are not;
- `publish_local(raws)` is the library's publisher (attached in `run`): what the node
  itself adds (experiences, our submissions, votes) is published from any worker thread.
"""

from __future__ import annotations

import logging
import random
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import multiaddr
import trio
from libp2p.abc import IHost
from libp2p.peer.id import ID
from libp2p.peer.peerstore import PeerStoreError
from libp2p.protocol_muxer.exceptions import MultiselectClientError

from dsonode.config.settings import default
from dsonode.core import wire
from dsonode.core.errors import DsoError, SyncTimeoutError, WireError
from dsonode.core.peerinfo import parse_multiaddr, peer_id_from_public_key
from dsonode.library import Library
from dsonode.net.connmgr import ConnConfig, ConnectionManager
from dsonode.net.dialer import BackoffPolicy
from dsonode.net.gossip import Gossip, GossipConfig
from dsonode.net.host import HostConfig, build_host, connected_peers, listen_multiaddrs
from dsonode.net.pipeline import PENALTY, BatchOutcome, Pipeline, PipelineConfig, reason_of
from dsonode.net.sync import (
    PROTOCOL as SYNC_PROTOCOL,
)
from dsonode.net.sync import (
    SyncConfig,
    SyncReport,
    SyncServer,
    SyncTransportError,
    sync_with,
)

log = logging.getLogger("dsonode.net.daemon")

#: Peers a node may be configured to dial.
MAX_PEERS = 256


class DaemonError(DsoError):
    """The network settings are invalid (the message names the setting)."""


@dataclass(frozen=True)
class DaemonConfig:
    listen: str
    peers: tuple[str, ...] = ()
    allow_non_loopback: bool = default("net.allow_non_loopback")
    max_connections: int = default("net.max_connections")
    max_connections_per_peer: int = default("net.max_connections_per_peer")
    dial_timeout_s: float = default("net.dial_timeout_s")
    redial_initial_s: float = default("net.redial_initial_s")
    redial_max_s: float = default("net.redial_max_s")
    #: Catch-up: pull from each connected peer this often (and at once on connection).
    sync_interval_s: float = default("net.sync_interval_s")
    sync_concurrency: int = 2
    #: Expire and evict (`Library.sweep`, ARCHITECTURE.md "Trust") this often.
    sweep_interval_s: float = default("trust.sweep_interval_s")
    #: A new connection's first pull waits this long at most for the peer to join our mesh.
    sync_mesh_wait_s: float = 10.0
    #: ... and this long at most for identify to tell whether the peer speaks the sync
    #: protocol; after that it is tried once (a refusal then also stops the pulls).
    sync_identify_wait_s: float = 20.0
    sync: SyncConfig = field(default_factory=SyncConfig)
    gossip: GossipConfig = field(default_factory=GossipConfig)
    pipeline: PipelineConfig = field(default_factory=PipelineConfig)
    drain_timeout_s: float = 5.0
    #: Discovery, connection bounds, known peers (dsonode/net/connmgr.py).
    conn: ConnConfig = field(default_factory=ConnConfig)

    def __post_init__(self) -> None:
        try:
            self.host_config()
        except DsoError as exc:
            raise DaemonError(f"--listen: {exc}") from None
        if len(self.peers) > MAX_PEERS:
            raise DaemonError(f"--peer: at most {MAX_PEERS} peers")
        for peer in self.peers:
            try:
                parse_multiaddr(
                    peer, allow_non_loopback=self.allow_non_loopback, require_peer_id=True
                )
            except DsoError as exc:
                raise DaemonError(f"--peer {peer[:80]!r}: {exc}") from None
        if not 0.01 <= self.redial_initial_s <= self.redial_max_s <= 3600:
            raise DaemonError("need 0.01 <= redial_initial_s <= redial_max_s <= 3600")
        if not 0.1 <= self.dial_timeout_s <= 120:
            raise DaemonError("dial_timeout_s must be 0.1..120")
        if not 1 <= self.sync_interval_s <= 86_400:
            raise DaemonError("sync_interval_s must be 1..86400")
        if not 1 <= self.sync_concurrency <= 64:
            raise DaemonError("sync_concurrency must be 1..64")
        if not 0 <= self.sync_mesh_wait_s <= 600:
            raise DaemonError("sync_mesh_wait_s must be 0..600")
        if not 0 <= self.sync_identify_wait_s <= 600:
            raise DaemonError("sync_identify_wait_s must be 0..600")
        if self.gossip.degree_high > self.conn.high_water:
            raise DaemonError("net.gossip_degree_high must not exceed net.high_water")
        if self.conn.high_water > self.max_connections:
            raise DaemonError("net.high_water must not exceed net.max_connections")

    def host_config(self) -> HostConfig:
        return HostConfig(
            listen=self.listen,
            max_connections=self.max_connections,
            max_connections_per_peer=self.max_connections_per_peer,
            dial_timeout_s=self.dial_timeout_s,
            allow_non_loopback=self.allow_non_loopback,
            mdns=self.conn.mdns,
        )


class NetDaemon:
    def __init__(self, config: DaemonConfig, *, library: Library) -> None:
        self.config = config
        self.library = library
        self.store = library.store
        self.key = library.key
        self.space_id = library.space_id
        self.author = library.author
        library.attach_publisher(self.publish_local)
        self.pipeline = Pipeline(config.pipeline, is_stored=library.holds)
        self.host: IHost | None = None
        self.gossip: Gossip | None = None
        self.connmgr: ConnectionManager | None = None
        self.sync_server: SyncServer | None = None
        self.topic: str | None = None
        self._token: trio.lowlevel.TrioToken | None = None
        self._ingest_limiter = trio.CapacityLimiter(1)
        self._lock = threading.Lock()  # counters below, written from worker threads
        self.counters = {"published_local": 0}
        #: Catch-up counters (event loop only).
        self.sync_stats: dict[str, Any] = {
            "runs": 0,
            "ok": 0,
            "failures": 0,
            "timeouts": 0,
            "penalised": 0,
            "items_received": 0,
            "items_stored": 0,
            "items_rejected": 0,
            "errors": Counter(),
        }
        self._syncing: set[ID] = set()
        #: Connected peers that do not speak /dso/sync/1.0.0 (identify said so, or they
        #: refused the stream): not pulled from until they reconnect.
        self._no_sync: set[ID] = set()

    # -- lifecycle

    async def run(
        self,
        task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,  # type: ignore[name-defined]  # trio-typing's stubs shadow trio's own TaskStatus
    ) -> None:
        """Start host, sync server, gossip, connection manager and the sync loop;
        `task_status.started()` once joined to the topic."""
        host_config = self.config.host_config()
        quiet_normal_libp2p_errors()
        self.host = build_host(self.key, host_config)
        self.sync_server = SyncServer(self.host, self.store, self.config.sync)
        self.sync_server.register()  # before host.run: inbound streams need the handler
        self.gossip = Gossip(
            self.host,
            self.config.gossip,
            wire.encode_batch,
            self._handle,
            prevalidate=self._prevalidate,  # the pipeline runs before libp2p forwards
        )
        self.gossip.on_invalid = self._penalise_gossip  # oversize / unparsable frames
        self.connmgr = ConnectionManager(
            self.host,
            self.store,
            self.config.conn,
            bootstrap=[
                parse_multiaddr(
                    p, allow_non_loopback=self.config.allow_non_loopback, require_peer_id=True
                )
                for p in self.config.peers
            ],
            allow_non_loopback=self.config.allow_non_loopback,
            dial_timeout_s=self.config.dial_timeout_s,
            backoff=BackoffPolicy(
                initial_s=self.config.redial_initial_s, max_s=self.config.redial_max_s
            ),
            is_graylisted=lambda p: self.pipeline.is_graylisted(p.to_bytes(), time.monotonic()),
            mesh=self._mesh,
            busy=lambda: set(self._syncing),
        )
        self.connmgr.listen.add(host_config.listen_addr.tcp_multiaddr)
        self.connmgr.install_gate()
        await trio.to_thread.run_sync(self.connmgr.load)
        listen = [multiaddr.Multiaddr(host_config.listen_addr.tcp_multiaddr)]
        async with self.host.run(listen), self.gossip.running(), trio.open_nursery() as nursery:
            self.topic = await self.gossip.join(self.space_id)
            self._token = trio.lowlevel.current_trio_token()
            repaired = await trio.to_thread.run_sync(
                self.library.repair_pending, limiter=self._ingest_limiter
            )
            self._submit(repaired)
            nursery.start_soon(self.connmgr.run)
            nursery.start_soon(self._sync_loop)
            nursery.start_soon(self._sweep_loop)
            log.info("p2p listening on %s", ", ".join(listen_multiaddrs(self.host)))
            task_status.started()
            try:
                await trio.sleep_forever()
            finally:
                self._token = None
                with trio.move_on_after(self.config.drain_timeout_s) as scope:
                    scope.shield = True
                    await self.gossip.drain(self.config.drain_timeout_s)
                nursery.cancel_scope.cancel()

    # -- publishing

    def _submit(self, raws: list[bytes]) -> None:
        """On the event loop: queue encoded items for gossip."""
        if self.gossip is None or self.topic is None:
            return
        for raw in raws:
            self.pipeline.remember(raw)
            self.gossip.submit(self.topic, raw)

    def publish_local(self, raws: list[bytes]) -> None:
        """From a worker thread (the socket's add_experience): publish these items."""
        token = self._token
        if token is None:
            log.warning("network not running; %d items not published", len(raws))
            return
        try:
            trio.from_thread.run_sync(self._submit, list(raws), trio_token=token)
        except trio.RunFinishedError:
            return
        with self._lock:
            self.counters["published_local"] += len(raws)

    # -- receiving

    def _prevalidate(self, origin: ID, data: bytes) -> tuple[bool, BatchOutcome | None]:
        """In libp2p's validator, before the message is forwarded: only a message with no
        fault and something new in it goes on (a replay of seen items is not forwarded)."""
        out = self.pipeline.process(
            origin.to_bytes(), data, now_ms=wire.now_ms(), now_s=time.monotonic()
        )
        if out.graylisted_now and self.gossip is not None:
            log.warning("graylisting %s (%s)", origin, dict(out.rejected))
            self.gossip.graylist(origin)
        fresh = bool(out.accepted) or out.rejected.get("stored", 0) > 0
        # Duplicates cost a little (replays) but are no fault of the new items beside them.
        faulty = any(PENALTY.get(r, 10.0) > 0 for r in out.rejected if r != "duplicate")
        forward = not out.dropped_graylisted and not faulty and fresh
        # A faulty batch is not forwarded, but the items in it that passed are ingested here
        # (they are in the pipeline's seen set now: dropping them would lose them for good).
        return forward, (out if forward or out.accepted else None)

    async def _handle(
        self, topic: str, origin: ID, data: bytes, verdict: BatchOutcome | None = None
    ) -> bool:
        if verdict is not None:  # validated by _prevalidate already
            out = verdict
        else:
            out = self.pipeline.process(
                origin.to_bytes(), data, now_ms=wire.now_ms(), now_s=time.monotonic()
            )
        if out.graylisted_now and self.gossip is not None:
            log.warning("graylisting %s (%s)", origin, dict(out.rejected))
            self.gossip.graylist(origin)
        if out.accepted:
            outbound = await trio.to_thread.run_sync(
                self.library.accept_items, out.accepted, limiter=self._ingest_limiter
            )
            self._submit(outbound)
        return not out.dropped_graylisted and out.penalty == 0

    # -- catch-up (/dso/sync/1.0.0)

    async def _sweep_loop(self) -> None:
        """The store's lifecycle: expire unvouched items past their TTL, evict above the cap
        (in a worker thread, under the ingest limiter like every library write)."""
        while True:
            await trio.sleep(self.config.sweep_interval_s)
            try:
                done = await trio.to_thread.run_sync(
                    self.library.sweep, limiter=self._ingest_limiter
                )
            except DsoError as exc:  # a store error is logged; the node goes on
                log.warning("store sweep failed: %s", exc)
                continue
            if any(done.values()):
                log.info("store sweep: %s", done)

    async def _sync_loop(self, poll_s: float = 0.5) -> None:
        """Pull from each peer when its connection appears, then every sync_interval_s
        (jittered by +-20%), one exchange per peer, at most sync_concurrency at once.

        The first pull waits (at most sync_mesh_wait_s) until the peer is in our topic's
        mesh: the submissions we make for what the pull brings are published by gossip, and
        GossipSub sends only to mesh peers, so publishing earlier would skip that very peer.
        It also waits for identify (at most sync_identify_wait_s): a peer that speaks
        GossipSub but not /dso/sync/1.0.0 (another implementation, a light client) is never
        dialled for sync, rather than refused every interval.
        """
        cfg = self.config
        host = self.host
        assert host is not None, "run() starts the host first"
        due: dict[ID, float] = {}
        connected_at: dict[ID, float] = {}
        async with trio.open_nursery() as nursery:
            while True:
                now = time.monotonic()
                peers = set(connected_peers(host))
                for gone in set(connected_at) - peers:  # a reconnection syncs again at once
                    connected_at.pop(gone, None)
                    due.pop(gone, None)
                    self._no_sync.discard(gone)
                mesh = self._mesh()
                for peer in peers:
                    first = connected_at.setdefault(peer, now)
                    if peer in due or peer in self._no_sync:
                        continue
                    if peer not in mesh and now - first < cfg.sync_mesh_wait_s:
                        continue
                    speaks = speaks_sync(host, peer)
                    if speaks is None and now - first < cfg.sync_identify_wait_s:
                        continue  # identify has not answered yet: look again next poll
                    if speaks is False:
                        self._no_sync.add(peer)
                        log.info("%s does not speak %s: no catch-up with it", peer, SYNC_PROTOCOL)
                        continue
                    # jittered, so both ends of a new connection do not start together
                    due[peer] = now + random.uniform(0.0, 0.5)
                for peer, when in sorted(due.items(), key=lambda kv: kv[1]):
                    if peer in self._no_sync:  # refused the protocol in its last exchange
                        due.pop(peer)
                        continue
                    if len(self._syncing) >= cfg.sync_concurrency:
                        break
                    if when > now or peer in self._syncing:
                        continue
                    if self.pipeline.is_graylisted(peer.to_bytes(), now):
                        due[peer] = now + cfg.sync_interval_s
                        continue
                    due[peer] = now + cfg.sync_interval_s * random.uniform(0.8, 1.2)
                    self._syncing.add(peer)
                    nursery.start_soon(self._sync_one, peer)
                await trio.sleep(poll_s)

    def _mesh(self) -> set[ID]:
        if self.gossip is None or self.topic is None:
            return set()
        try:
            return set(self.gossip.mesh_peers(self.topic))
        except Exception:  # the router's tables are libp2p internals: never fatal here
            return set()

    def _space_peers(self, connected: list[ID]) -> set[ID]:
        """The connected peers that subscribed to our space's topic."""
        if self.gossip is None or self.topic is None:
            return set()
        try:  # the pubsub's tables are libp2p internals: never fatal in stats
            subscribed = set(self.gossip.pubsub.peer_topics.get(self.topic, ()))
        except Exception:
            return set()
        return subscribed & set(connected)

    def _known_peers(self) -> int:
        """Peers in the libp2p peerstore, ourselves excluded."""
        if self.host is None:
            return 0
        own = self.host.get_id()
        try:
            return sum(1 for p in self.host.get_peerstore().peer_ids() if p != own)
        except Exception:  # libp2p internals: never fatal in stats
            return 0

    def _mesh_sizes(self) -> dict[str, int]:
        """GossipSub mesh peers per joined topic (the mesh degree)."""
        if self.gossip is None:
            return {}
        try:
            return {t: len(p) for t, p in self.gossip.router.mesh.items()}
        except Exception:  # libp2p internals: never fatal in stats
            return {}

    def _sync_accept(self, raws: list[bytes]) -> tuple[int, int, Counter]:
        """Worker thread (under the ingest limiter): verify like gossip, then the library."""
        accepted: list[tuple[bytes, wire.Item]] = []
        rejected: Counter = Counter()
        now = wire.now_ms()
        for raw in raws:
            try:
                accepted.append((raw, wire.decode_item(raw, now)))
            except WireError as exc:
                rejected[reason_of(exc)] += 1
        report: dict[str, int] = {}
        # catch-up: history, not live traffic (no rate quota; Library.accept_items)
        outbound = self.library.accept_items(accepted, report, live=False) if accepted else []
        if outbound:
            trio.from_thread.run_sync(self._submit, outbound)
        stored = report.get("stored", 0)
        return stored, len(accepted) - stored, rejected

    async def sync_peer(self, peer: ID) -> SyncReport:
        """One catch-up exchange with `peer` (raises like `sync_with`)."""
        assert self.host is not None, "run() starts the host first"
        return await sync_with(
            self.host,
            peer,
            self.store,
            self.space_id,
            config=self.config.sync,
            accept=self._sync_accept,
            limiter=self._ingest_limiter,
        )

    async def _sync_one(self, peer: ID) -> None:
        st = self.sync_stats
        st["runs"] += 1
        try:
            report = await self.sync_peer(peer)
        except SyncTimeoutError as exc:
            st["timeouts"] += 1
            st["errors"][type(exc).__name__] += 1
            log.info("sync with %s timed out: %s", peer, exc)
        except SyncTransportError as exc:  # a broken stream is not proof of misbehaviour
            st["failures"] += 1
            if refused_protocol(exc):  # identify did not tell us in time; now we know
                st["errors"]["ProtocolRefused"] += 1
                self._no_sync.add(peer)
                log.info("%s refused %s: no catch-up with it", peer, SYNC_PROTOCOL)
            else:
                st["errors"][type(exc).__name__] += 1
                log.info("sync with %s failed: %s", peer, exc)
        except WireError as exc:
            st["failures"] += 1
            st["errors"][type(exc).__name__] += 1
            reason = "sync_protocol" if type(exc).__name__ == "SyncError" else reason_of(exc)
            log.warning("sync with %s: peer misbehaved (%s: %s)", peer, reason, exc)
            self._penalise(peer, reason, 1)
        except DsoError as exc:
            st["failures"] += 1
            st["errors"][type(exc).__name__] += 1
            log.warning("sync with %s failed: %r", peer, exc)
        else:
            st["ok"] += 1
            st["items_received"] += report.received
            st["items_stored"] += report.stored
            bad = sum(report.rejected.values())
            st["items_rejected"] += bad
            for reason, count in report.rejected.items():
                self._penalise(peer, reason, count)
            if report.stored:
                log.info("sync with %s: %d new items", peer, report.stored)
        finally:
            self._syncing.discard(peer)

    def _penalise(self, peer: ID, reason: str, count: int) -> None:
        if count <= 0:
            return
        self.sync_stats["penalised"] += count
        out = self.pipeline.penalise(peer.to_bytes(), reason, time.monotonic(), count)
        if out.graylisted_now and self.gossip is not None:
            log.warning("graylisting %s after sync (%s)", peer, dict(out.rejected))
            self.gossip.graylist(peer)

    def _penalise_gossip(self, peer: ID, reason: str) -> None:
        """A fault the gossip layer caught before the handler (see Gossip.on_invalid)."""
        out = self.pipeline.penalise(peer.to_bytes(), reason, time.monotonic())
        if out.graylisted_now and self.gossip is not None:
            log.warning("graylisting %s (%s)", peer, dict(out.rejected))
            self.gossip.graylist(peer)

    # -- introspection (for the socket's `stats`)

    def _snapshot(self) -> dict[str, Any]:
        """On the event loop: the network state, JSON-ready."""
        now_s = time.monotonic()
        peers = {}
        for origin, stats in self.pipeline.peer_stats(now_s).items():
            try:
                name = ID(origin).to_base58()
            except Exception:  # an origin we cannot name is shown in hex
                name = origin.hex()
            peers[name] = stats
        gossip = self.gossip
        sync = {k: (dict(v) if isinstance(v, Counter) else v) for k, v in self.sync_stats.items()}
        sync["active"] = len(self._syncing)
        sync["peers_without_sync"] = len(self._no_sync)
        if self.sync_server is not None:
            srv = self.sync_server.stats
            sync["served"] = {
                "streams": srv.streams,
                "refused": srv.refused,
                "requests": srv.requests,
                "items_sent": srv.items_sent,
                "errors": dict(srv.errors),
            }
        connected = connected_peers(self.host) if self.host else []
        in_space = self._space_peers(connected)
        return {
            "peer_id": self.host.get_id().to_base58() if self.host else None,
            "listen": listen_multiaddrs(self.host) if self.host else [],
            "connected": [p.to_base58() for p in connected],
            # connected peers subscribed to our space's topic (the others: other spaces,
            # other software), and every peer the libp2p peerstore knows (ever met or told of)
            "space_peers": len(in_space),
            "peerstore_peers": self._known_peers(),
            "mesh_peers": len(gossip.mesh_peers(self.topic)) if gossip and self.topic else 0,
            "mesh": self._mesh_sizes(),
            **(self.connmgr.snapshot() if self.connmgr is not None else {}),
            "byzantine_attack": self.library.attack,
            "consensus": {
                "method": self.library.rules.method,
                "quorum": self.library.rules.quorum,
                "committee": self.library.rules.committee,
                # what the network looks like from here (see Library.network_size) ...
                "network_size": self.library.network_size(connected=len(in_space)),
                # ... and the n of the committee draw: submitting authors only
                "committee_n": self.library.network_size(),
                "weighted_peers": len(self.library.rules.weights),
            },
            "pipeline": {
                "accepted": self.pipeline.accepted_items,
                "rejected": dict(self.pipeline.rejected),
                "dropped_graylisted": self.pipeline.dropped_graylisted,
                "graylisted": [ID(p).to_base58() for p in self.pipeline.graylisted(now_s)],
            },
            "peers": peers,
            "gossip": gossip.stats.as_dict() if gossip else {},
            "sync": sync,
        }

    # -- the operator's peer commands (from a worker thread: the socket)

    def _on_loop(self, fn: Any, *args: Any) -> Any:
        token = self._token
        if token is None or self.connmgr is None:
            raise DaemonError("the network is not running")
        try:
            return trio.from_thread.run_sync(fn, *args, trio_token=token)
        except trio.RunFinishedError:
            raise DaemonError("the network is not running") from None

    def add_peer(self, multiaddr_text: str) -> dict[str, Any]:
        """Remember a peer (source "operator"); it is dialled as soon as the node needs one.

        Raises PeerAddrError for an address this node refuses (not loopback without
        net.allow_non_loopback, our own id or listen address) and DaemonError when the
        network is not running."""
        peer = self._on_loop(self._connmgr().add, multiaddr_text)
        return {"peer_id": peer.peer_id, "addrs": list(peer.addrs), "source": peer.source}

    def forget_peer(self, peer_id: str) -> dict[str, Any]:
        """Forget a known peer (its record goes from the store at the next flush): it is no
        longer dialled from the book; an open connection stays (see ConnectionManager.forget)."""

        def forget() -> dict[str, Any]:
            known = self._connmgr().forget(peer_id)
            connected = {p.to_base58() for p in connected_peers(self.host)} if self.host else set()
            return {"peer_id": peer_id, "forgotten": known, "connected": peer_id in connected}

        result: dict[str, Any] = self._on_loop(forget)
        return result

    def _connmgr(self) -> ConnectionManager:
        if self.connmgr is None:
            raise DaemonError("the network is not running")
        return self.connmgr

    def stats(self) -> dict[str, Any]:
        """From a worker thread: network state plus reputation by author."""
        token = self._token
        snap: dict[str, Any] = {"running": token is not None}
        if token is not None:
            try:
                snap.update(trio.from_thread.run_sync(self._snapshot, trio_token=token))
            except trio.RunFinishedError:
                snap["running"] = False
        with self._lock:
            snap["counters"] = {**self.library.counters(), **self.counters}
        # When each recent experience was first stored here (unix ms): arrival times for
        # `dsonode bench network` (Library.arrivals, bounded).
        snap["arrivals"] = self.library.arrivals()
        snap["reputation"] = {
            author.hex(): {**record, "peer_id": _peer_name(author)}
            for author, record in self.store.iter_reputation()
        }
        return snap


def speaks_sync(host: IHost, peer: ID) -> bool | None:
    """Whether `peer` lists /dso/sync/1.0.0 among the protocols identify reported; None
    while identify has not answered (py-libp2p fills the peerstore's protocols only from
    identify, and every libp2p host lists at least identify itself there)."""
    try:
        protocols = host.get_peerstore().get_protocols(peer)
    except PeerStoreError:  # not in the peerstore yet
        return None
    if not protocols:
        return None
    return str(SYNC_PROTOCOL) in protocols


def refused_protocol(exc: BaseException) -> bool:
    """Whether a failed sync dial was the peer answering "na" to the protocol (multistream
    negotiation), as opposed to a broken or slow stream."""
    seen = 0
    cause: BaseException | None = exc
    while cause is not None and seen < 8:  # the chain is short; bounded anyway
        if isinstance(cause, MultiselectClientError) and "not supported" in str(cause):
            return True
        cause = cause.__cause__ or cause.__context__
        seen += 1
    return False


#: py-libp2p's ERROR records that are normal conditions for a node, by logger: a stream
#: the peer refused or lost (multi-line, once per sync interval before identify was checked)
#: and a TCP dial to a peer that is not up (yet, or any more; once per redial). The caller
#: (the sync loop, the dialer) logs its own line, so these become DEBUG.
_NORMAL_LIBP2P_ERRORS = {
    "libp2p.host.basic_host": "Failed to open stream",
    "libp2p.transport.tcp.tcp": "Failed to open TCP stream",
}


class _DemoteNormalErrors(logging.Filter):
    def __init__(self, prefix: str) -> None:
        super().__init__()
        self.prefix = prefix

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno >= logging.ERROR and str(record.msg).startswith(self.prefix):
            lines = record.getMessage().splitlines()
            record.msg = " ".join(line.strip() for line in lines[:2])  # peer and error
            record.args = ()
            record.levelno, record.levelname = logging.DEBUG, "DEBUG"
            return logging.getLogger(record.name).isEnabledFor(logging.DEBUG)
        return True


def quiet_normal_libp2p_errors() -> None:
    """Install the demotion on py-libp2p's loggers (once per logger)."""
    for name, prefix in _NORMAL_LIBP2P_ERRORS.items():
        logger = logging.getLogger(name)
        if not any(isinstance(f, _DemoteNormalErrors) for f in logger.filters):
            logger.addFilter(_DemoteNormalErrors(prefix))


def _peer_name(author: bytes) -> str | None:
    try:
        return peer_id_from_public_key(author)
    except Exception:  # a malformed key has no peer id
        return None
