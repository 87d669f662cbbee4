"""The networked node service: gossip in, stored items and median consensus out.

`NetDaemon` runs inside the node's trio nursery (`dsonode run --listen ... --peer ...`):

- one libp2p host (Noise, yamux), the `Gossip` layer on the node's space topic, and a
  `Dialer` for the configured peers (see dsonode/net/README.md for the traps handled there);
- every received batch goes through `Pipeline` (size, envelope, duplicates, per-peer rate,
  schema, signature, clock skew; penalties and graylist) on the event loop, then the
  accepted items are stored in one worker thread (`_ingest`):
  * a new `experience` is stored; if this node has no submission for it yet, it embeds the
    text itself on the exact path (`embed_query(text)`, never the search path), signs its
    own `submission`, stores it and publishes it (that is where the median gets its votes);
  * every new `submission` of our space triggers a recomputation of that experience's
    consensus (`dsonode.consensus.compute_consensus`): the record is stored, the index is
    updated, and the authors' reputation moves by the verdicts that changed;
- `publish_local(raws)` is the hook the socket's `add_experience` calls (from its worker
  thread) to publish the experience and our submission.

Testnet only: `byzantine_attack` poisons this node's own submissions ("gaussian": a random
direction; "sign_flip": the negated embedding), so tests can show the median outvotes it.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass, field
from typing import Any

import multiaddr
import numpy as np
import trio
from libp2p.peer.id import ID

from dsonode.consensus import (
    apply_reputation,
    compute_consensus,
    previous_verdicts,
    reputation_deltas,
)
from dsonode.core import bitdelta, wire
from dsonode.core.constants import DIM
from dsonode.core.errors import DsoError
from dsonode.net.dialer import BackoffPolicy, Dialer
from dsonode.net.gossip import Gossip, GossipConfig
from dsonode.net.host import HostConfig, build_host, connected_peers, listen_multiaddrs
from dsonode.net.peerinfo import parse_multiaddr, peer_id_from_public_key
from dsonode.net.pipeline import Pipeline, PipelineConfig

log = logging.getLogger("dsonode.net.daemon")

ATTACKS = ("gaussian", "sign_flip")
#: Peers a node may be configured to dial.
MAX_PEERS = 256


class DaemonError(DsoError):
    """The network settings are invalid (the message names the setting)."""


@dataclass(frozen=True)
class DaemonConfig:
    listen: str
    peers: tuple[str, ...] = ()
    quorum: int = 3
    byzantine_attack: str | None = None
    gossip: GossipConfig = field(default_factory=GossipConfig)
    pipeline: PipelineConfig = field(default_factory=PipelineConfig)
    drain_timeout_s: float = 5.0

    def __post_init__(self) -> None:
        try:
            HostConfig(listen=self.listen)
        except DsoError as exc:
            raise DaemonError(f"--listen: {exc}") from None
        if len(self.peers) > MAX_PEERS:
            raise DaemonError(f"--peer: at most {MAX_PEERS} peers")
        for peer in self.peers:
            try:
                parse_multiaddr(peer, require_peer_id=True)
            except DsoError as exc:
                raise DaemonError(f"--peer {peer[:80]!r}: {exc}") from None
        if self.byzantine_attack is not None and self.byzantine_attack not in ATTACKS:
            raise DaemonError(f"--byzantine-attack must be one of {', '.join(ATTACKS)}")
        if not 1 <= self.quorum <= 1000:
            raise DaemonError("quorum must be 1..1000")


def poison(vector: np.ndarray, attack: str, rng: np.random.Generator) -> np.ndarray:
    """What a Byzantine node submits instead of `vector` (testnet only)."""
    if attack == "sign_flip":
        return (-vector).astype(np.float32)
    noise = rng.normal(size=DIM)
    return (noise / np.linalg.norm(noise)).astype(np.float32)


class NetDaemon:
    def __init__(
        self,
        config: DaemonConfig,
        *,
        store: Any,
        index: Any,
        service: Any,
        embedder: Any,
        key: Any,
    ) -> None:
        self.config = config
        self.store = store
        self.index = index
        self.service = service
        self.embedder = embedder
        self.key = key
        self.space_id = bytes.fromhex(embedder.space_id)
        self.author = service.author
        self.pipeline = Pipeline(config.pipeline, is_stored=self._is_stored)
        self.host: Any = None
        self.gossip: Gossip | None = None
        self.dialer: Dialer | None = None
        self.topic: str | None = None
        self._token: trio.lowlevel.TrioToken | None = None
        self._ingest_limiter = trio.CapacityLimiter(1)
        self._rng = np.random.default_rng()
        self._lock = threading.Lock()  # counters below, written from worker threads
        self.counters = {
            "experiences_stored": 0,
            "submissions_stored": 0,
            "own_submissions": 0,
            "consensus_updates": 0,
            "published_local": 0,
        }

    # -- lifecycle

    async def run(self, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        """Start host, gossip and dialer; `task_status.started()` once joined to the topic."""
        host_config = HostConfig(listen=self.config.listen)
        self.host = build_host(self.key, host_config)
        self.gossip = Gossip(self.host, self.config.gossip, wire.encode_batch, self._handle)
        self.dialer = Dialer(
            self.host,
            [parse_multiaddr(p, require_peer_id=True) for p in self.config.peers],
            BackoffPolicy(initial_s=0.2, max_s=5.0),
            check_interval_s=0.2,
            dial_timeout_s=5.0,
        )
        listen = [multiaddr.Multiaddr(host_config.listen_addr.tcp_multiaddr)]
        async with self.host.run(listen), self.gossip.running(), trio.open_nursery() as nursery:
            self.topic = await self.gossip.join(self.space_id)
            self._token = trio.lowlevel.current_trio_token()
            nursery.start_soon(self.dialer.run)
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

    def _is_stored(self, item: wire.Item) -> bool:
        if isinstance(item, wire.Experience):
            return self.store.has_experience(item.id)
        return any(
            s.author == item.author
            for s in self.store.get_submissions(item.experience_id, item.space_id)
        )

    async def _handle(self, topic: str, origin: ID, data: bytes) -> bool:
        out = self.pipeline.process(
            origin.to_bytes(), data, now_ms=wire.now_ms(), now_s=time.monotonic()
        )
        if out.graylisted_now and self.gossip is not None:
            log.warning("graylisting %s (%s)", origin, dict(out.rejected))
            self.gossip.graylist(origin)
        if out.accepted:
            outbound = await trio.to_thread.run_sync(
                self._ingest, out.accepted, limiter=self._ingest_limiter
            )
            self._submit(outbound)
        return not out.dropped_graylisted and out.penalty == 0

    def _ingest(self, accepted: list[tuple[bytes, wire.Item]]) -> list[bytes]:
        """Worker thread: store, submit our own codes, recompute consensus. Returns what to
        publish."""
        raws = [r for r, _ in accepted]
        items = [i for _, i in accepted]
        new = self.store.put_items(raws, decoded=items)
        outbound: list[bytes] = []
        touched: dict[bytes, None] = {}
        for item, is_new in zip(items, new, strict=True):
            if not is_new:
                continue
            if isinstance(item, wire.Experience):
                with self._lock:
                    self.counters["experiences_stored"] += 1
                own = self._own_submission(item)
                if own is not None:
                    outbound.append(own)
                touched[item.id] = None
            else:
                with self._lock:
                    self.counters["submissions_stored"] += 1
                if item.space_id == self.space_id:
                    touched[item.experience_id] = None
        for exp_id in touched:
            self.recompute(exp_id)
        return outbound

    def _own_submission(self, experience: wire.Experience) -> bytes | None:
        """Embed (exact path), sign and store our submission unless we have one."""
        if self.service._own_code(experience.id) is not None:
            return None
        vector = self.service._embed_one(experience.text)  # exact path, never for_search
        if self.config.byzantine_attack is not None:
            vector = poison(vector, self.config.byzantine_attack, self._rng)
        code = bitdelta.encode(vector, ref=self.embedder.reference)
        submission = wire.make_submission(self.key, experience.id, self.space_id, code)
        raw = wire.encode_item(submission)
        with self.service._add_lock:
            if self.service._own_code(experience.id) is not None:
                return None
            self.store.put_items([raw], decoded=[submission])
        with self._lock:
            self.counters["own_submissions"] += 1
        return raw

    def recompute(self, exp_id: bytes) -> None:
        """Recompute and store one experience's consensus; update index and reputation."""
        with self.service._add_lock:
            exp = self.store.get_experience(exp_id)
            if exp is None:  # submissions before their experience: wait for it
                return
            now = wire.now_ms()
            old = self.store.get_consensus(self.space_id, exp_id)
            outcome = compute_consensus(
                self.store.get_submissions(exp_id, self.space_id),
                experience_id=exp_id,
                space_id=self.space_id,
                domain=exp.domain,
                now_ms=now,
                ref=self.embedder.reference,
                quorum=self.config.quorum,
            )
            if outcome is None:
                return
            record = outcome.record
            self.store.put_consensus([record])
            with self.service._index_lock:
                self.index.add(
                    [exp_id], [record.code], domains=[exp.domain], confirmed=[record.confirmed]
                )
            for author, delta in reputation_deltas(
                previous_verdicts(old), outcome.verdicts
            ).items():
                self.store.update_reputation(author, lambda r, d=delta: apply_reputation(r, d, now))
        with self._lock:
            self.counters["consensus_updates"] += 1

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
        return {
            "peer_id": self.host.get_id().to_base58() if self.host else None,
            "listen": listen_multiaddrs(self.host) if self.host else [],
            "connected": [p.to_base58() for p in connected_peers(self.host)] if self.host else [],
            "mesh_peers": len(gossip.mesh_peers(self.topic)) if gossip and self.topic else 0,
            "byzantine_attack": self.config.byzantine_attack,
            "pipeline": {
                "accepted": self.pipeline.accepted_items,
                "rejected": dict(self.pipeline.rejected),
                "dropped_graylisted": self.pipeline.dropped_graylisted,
                "graylisted": [ID(p).to_base58() for p in self.pipeline.graylisted(now_s)],
            },
            "peers": peers,
            "gossip": gossip.stats.as_dict() if gossip else {},
        }

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
            snap["counters"] = dict(self.counters)
        snap["reputation"] = {
            author.hex(): {**record, "peer_id": _peer_name(author)}
            for author, record in self.store.iter_reputation()
        }
        return snap


def _peer_name(author: bytes) -> str | None:
    try:
        return peer_id_from_public_key(author)
    except Exception:  # a malformed key has no peer id
        return None
