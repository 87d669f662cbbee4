"""The networked node service: gossip and sync in, stored items and consensus out.

`NetDaemon` runs inside the node's trio nursery (`dsonode run --config F` or `--listen ...`):

- one libp2p host (Noise, yamux), the `Gossip` layer on the node's space topic, a `Dialer`
  for the configured peers (see dsonode/net/README.md for the traps handled there), and the
  `/dso/sync/1.0.0` server (registered before the host runs);
- every received batch goes through `Pipeline` (size, envelope, duplicates, per-peer rate,
  schema, signature, clock skew; penalties and graylist) on the event loop, then the
  accepted items are stored in one worker thread (`_ingest`):
  * a submission outside its author's committee draw (dsonode.core.committee) is ignored;
  * a new `experience` is stored; if this node is in the experience's committee and has no
    submission for it yet, it embeds the text itself on the exact path (`embed_query(text)`,
    never the search path), signs its own `submission`, stores it and publishes it;
  * every new `submission` of our space triggers a recomputation of that experience's
    consensus (`dsonode.consensus.compute_consensus`, with the configured method, weights
    and committee filter): the record is stored, the index is updated, and the authors'
    reputation moves by the verdicts that changed;
- catch-up: `_sync_loop` pulls from every connected peer (dialled or inbound) as soon as the
  connection appears and then every `sync_interval_s` (jittered), one exchange per peer at a
  time and at most `sync_concurrency` at once; what arrives goes through `_ingest` exactly
  like gossip. A peer whose exchange fails with a WireError (bad frame, wrong answer,
  invalid items) is penalised in the pipeline like invalid gossip; timeouts and broken
  streams are not;
- `publish_local(raws)` is the hook the socket's `add_experience` calls (from its worker
  thread) to publish the experience and our submission; `own_vector` is applied to the
  vector of that submission (so a Byzantine node poisons it too).

Testnet only: `byzantine_attack` poisons this node's own submissions (see `poison` and
dsonode/core/attacks.py for every attack; `ipm` reads the others' submissions it holds for
the experience, `mimic` the nearest other experience in its index, `alie_collude` the id).
"""

from __future__ import annotations

import logging
import random
import threading
import time
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
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
from dsonode.core import attacks, bitdelta, committee, wire
from dsonode.core.aggregate import METHODS, WEIGHTED_METHODS
from dsonode.core.errors import DsoError, SyncTimeoutError, WireError
from dsonode.net.dialer import BackoffPolicy, Dialer
from dsonode.net.gossip import Gossip, GossipConfig
from dsonode.net.host import HostConfig, build_host, connected_peers, listen_multiaddrs
from dsonode.net.peerinfo import parse_multiaddr, peer_id_from_public_key, public_key_from_peer_id
from dsonode.net.pipeline import PENALTY, Pipeline, PipelineConfig, reason_of
from dsonode.net.sync import SyncConfig, SyncServer, SyncTransportError, sync_with

log = logging.getLogger("dsonode.net.daemon")

#: Every attack of `dsonode bench byzantine` (and the colluding ALIE); see dsonode.core.attacks.
ATTACKS = attacks.ATTACKS
#: Peers a node may be configured to dial.
MAX_PEERS = 256
ALIE_STEP = attacks.ALIE_STEP
attack_direction = attacks.attack_direction
#: Submissions of others an `ipm` attacker averages into its estimate of the honest mean.
IPM_MAX_ROWS = 64
#: How often the estimate of the network size (committee threshold) is refreshed.
NETWORK_SIZE_REFRESH_S = 30.0


class DaemonError(DsoError):
    """The network settings are invalid (the message names the setting)."""


@dataclass(frozen=True)
class DaemonConfig:
    listen: str
    peers: tuple[str, ...] = ()
    quorum: int = 3
    byzantine_attack: str | None = None
    attack_scale: float = 1.0
    allow_non_loopback: bool = False
    max_connections: int = 64
    max_connections_per_peer: int = 2
    dial_timeout_s: float = 5.0
    redial_initial_s: float = 0.2
    redial_max_s: float = 5.0
    #: Consensus estimator (dsonode.core.aggregate.METHODS minus "mean") and per-peer weights
    #: (base58 peer id -> weight; absent peers weigh 1).
    method: str = "median"
    weights: Mapping[str, float] = field(default_factory=lambda: MappingProxyType({}))
    #: Expected submitters per experience (dsonode.core.committee); None = everyone.
    committee: int | None = 7
    #: Catch-up: pull from each connected peer this often (and at once on connection).
    sync_interval_s: float = 60.0
    sync_concurrency: int = 2
    #: A new connection's first pull waits this long at most for the peer to join our mesh.
    sync_mesh_wait_s: float = 10.0
    sync: SyncConfig = field(default_factory=SyncConfig)
    gossip: GossipConfig = field(default_factory=GossipConfig)
    pipeline: PipelineConfig = field(default_factory=PipelineConfig)
    drain_timeout_s: float = 5.0

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
        if self.byzantine_attack is not None and self.byzantine_attack not in ATTACKS:
            raise DaemonError(f"--byzantine-attack must be one of {', '.join(ATTACKS)}")
        if not 0 <= self.attack_scale <= 100:
            raise DaemonError("attack_scale must be 0..100")
        if not 1 <= self.quorum <= 1000:
            raise DaemonError("quorum must be 1..1000")
        if self.method not in METHODS or self.method == "mean":
            raise DaemonError("consensus method must be median, trimmed_mean or geometric_median")
        if self.weights and self.method not in WEIGHTED_METHODS:
            raise DaemonError("consensus weights need method median or geometric_median")
        for peer, weight in self.weights.items():
            try:
                public_key_from_peer_id(peer)
            except DsoError as exc:
                raise DaemonError(f"consensus.weights.{peer[:60]}: {exc}") from None
            if not 0 < float(weight) <= 1e6:
                raise DaemonError(f"consensus.weights.{peer}: weight must be in (0, 1e6]")
        if self.committee is not None and not 1 <= self.committee <= 1000:
            raise DaemonError('consensus committee must be 1..1000 or None ("all")')
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

    def host_config(self) -> HostConfig:
        return HostConfig(
            listen=self.listen,
            max_connections=self.max_connections,
            max_connections_per_peer=self.max_connections_per_peer,
            dial_timeout_s=self.dial_timeout_s,
            allow_non_loopback=self.allow_non_loopback,
        )

    def author_weights(self) -> dict[bytes, float]:
        """The weights keyed by author public key (the form submissions carry)."""
        return {public_key_from_peer_id(p): float(w) for p, w in self.weights.items()}


def poison(
    vector: np.ndarray,
    attack: str,
    rng: np.random.Generator,
    scale: float = 1.0,
    direction: np.ndarray | None = None,
    **context: Any,
) -> np.ndarray:
    """What a Byzantine node submits instead of the unit vector `vector` (testnet only).

    `dsonode.core.attacks.poison` (every attack and what it does is described there), with
    its errors raised as DaemonError; `context` carries experience_id / honest / sibling.
    """
    try:
        return attacks.poison(vector, attack, rng, scale, direction, **context)
    except attacks.AttackError as exc:
        raise DaemonError(str(exc)) from None


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
        self.sync_server: SyncServer | None = None
        self.topic: str | None = None
        self._token: trio.lowlevel.TrioToken | None = None
        self._ingest_limiter = trio.CapacityLimiter(1)
        self._rng = np.random.default_rng()
        self._attack_direction = attack_direction(self.author)
        self._weights = config.author_weights()
        self._network_size = 1
        self._network_size_at = -float("inf")
        self._lock = threading.Lock()  # counters below, written from worker threads
        self.counters = {
            "experiences_stored": 0,
            "submissions_stored": 0,
            "own_submissions": 0,
            "not_in_committee": 0,
            "committee_ignored": 0,
            "consensus_updates": 0,
            "published_local": 0,
        }
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

    # -- lifecycle

    async def run(self, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        """Start host, sync server, gossip, dialer and the sync loop; `task_status.started()`
        once joined to the topic."""
        host_config = self.config.host_config()
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
        self.dialer = Dialer(
            self.host,
            [
                parse_multiaddr(
                    p, allow_non_loopback=self.config.allow_non_loopback, require_peer_id=True
                )
                for p in self.config.peers
            ],
            BackoffPolicy(initial_s=self.config.redial_initial_s, max_s=self.config.redial_max_s),
            check_interval_s=0.2,
            dial_timeout_s=self.config.dial_timeout_s,
        )
        listen = [multiaddr.Multiaddr(host_config.listen_addr.tcp_multiaddr)]
        async with self.host.run(listen), self.gossip.running(), trio.open_nursery() as nursery:
            self.topic = await self.gossip.join(self.space_id)
            self._token = trio.lowlevel.current_trio_token()
            repaired = await trio.to_thread.run_sync(
                self.repair_pending, limiter=self._ingest_limiter
            )
            self._submit(repaired)
            nursery.start_soon(self.dialer.run)
            nursery.start_soon(self._sync_loop)
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

    def own_vector(self, vector: np.ndarray, experience: Any = None) -> np.ndarray:
        """The vector this node submits for its own embedding `vector`: poisoned on a
        Byzantine testnet node (for gossiped and locally added experiences alike).

        `experience` (a wire.Experience or store record with `id`, `text`, `domain`) gives
        the attacks that need it their context; without it (or before any other submission
        or sibling is known) `alie_collude` cannot run and `ipm` / `mimic` use only `vector`.
        """
        attack = self.config.byzantine_attack
        if attack is None:
            return vector
        context: dict[str, Any] = {}
        if experience is not None:
            context["experience_id"] = experience.id
            if attack in attacks.NEEDS_HONEST:
                context["honest"] = self._seen_vectors(experience.id)
            if attack in attacks.NEEDS_SIBLING:
                context["sibling"] = self._sibling_vector(experience, vector)
        elif attack == "alie_collude":
            attack = "alie"  # no experience id to collude on: the key's own direction
        return poison(
            vector, attack, self._rng, self.config.attack_scale, self._attack_direction, **context
        )

    def _seen_vectors(self, experience_id: bytes) -> np.ndarray | None:
        """Decoded codes of the others' submissions for an experience held so far (ipm)."""
        codes = [
            s.code
            for s in self.store.get_submissions(experience_id, self.space_id)
            if s.author != self.author
        ][:IPM_MAX_ROWS]
        if not codes:
            return None
        packed = np.frombuffer(b"".join(codes), dtype=np.uint8).reshape(len(codes), -1)
        rows = bitdelta.decode(packed, ref=self.embedder.reference).astype(np.float64)
        return rows / np.linalg.norm(rows, axis=1, keepdims=True)

    def _sibling_vector(self, experience: Any, vector: np.ndarray) -> np.ndarray | None:
        """The exact embedding of the nearest other experience this node holds (mimic)."""
        with self.service._index_lock:
            hits = self.index.search(np.asarray(vector, dtype=np.float32), k=3)
        for exp_id, _score in hits:
            if exp_id == experience.id:
                continue
            other = self.store.get_experience(exp_id)
            if other is not None:
                with self._lock:
                    self.counters["mimic_targets"] = self.counters.get("mimic_targets", 0) + 1
                return self.service._embed_one(other.text)  # exact path, as honest nodes do
        return None

    # -- committee sampling (dsonode.core.committee)

    def network_size(self) -> int:
        """Estimated nodes in the space: distinct submission authors known, plus us (worker
        thread; refreshed at most every NETWORK_SIZE_REFRESH_S)."""
        now = time.monotonic()
        if now - self._network_size_at >= NETWORK_SIZE_REFRESH_S:
            authors = {a for a, _ in self.store.iter_reputation()}
            authors.add(self.author)
            self._network_size = len(authors)
            self._network_size_at = now
        return self._network_size

    def _in_own_committee(self, experience: wire.Experience) -> bool:
        limit = committee.threshold(self.config.committee, self.network_size())
        return committee.in_committee(experience.id, self.author, experience.author, limit)

    def _eligible(self, experience_id: bytes, experience_author: bytes | None):
        """author -> whether its submission for this experience counts (verifier's slack)."""
        limit = committee.verify_threshold(self.config.committee, self.network_size())
        return lambda author: committee.in_committee(
            experience_id, author, experience_author, limit
        )

    # -- receiving

    def _is_stored(self, item: wire.Item) -> bool:
        if isinstance(item, wire.Experience):
            return self.store.has_experience(item.id)
        if isinstance(item, wire.Submission):
            return any(
                s.author == item.author
                for s in self.store.get_submissions(item.experience_id, item.space_id)
            )
        if isinstance(item, wire.Feedback):  # this vote or a newer one of its author
            return self.store.holds_feedback(
                item.experience_id, item.author, item.created, wire.item_hash(item)
            )
        return False

    def _prevalidate(self, origin: ID, data: bytes) -> tuple[bool, Any]:
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

    async def _handle(self, topic: str, origin: ID, data: bytes, verdict: Any = None) -> bool:
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
                self._ingest, out.accepted, limiter=self._ingest_limiter
            )
            self._submit(outbound)
        return not out.dropped_graylisted and out.penalty == 0

    def _outside_committee(self, item: wire.Submission, batch: dict[bytes, bytes]) -> bool:
        """A submission of our space whose author is outside its committee draw."""
        if item.space_id != self.space_id or item.author == self.author:
            return False
        exp_author = batch.get(item.experience_id)
        if exp_author is None:
            exp = self.store.get_experience(item.experience_id)
            exp_author = exp.author if exp is not None else None
        return not self._eligible(item.experience_id, exp_author)(item.author)

    def _ingest(
        self, accepted: list[tuple[bytes, wire.Item]], report: dict[str, int] | None = None
    ) -> list[bytes]:
        """Worker thread: store, submit our own codes, recompute consensus. Returns what to
        publish. Gossip and sync both come here (serialised by `_ingest_limiter`); `report`
        (if given) receives the number of items newly stored."""
        batch_authors = {i.id: i.author for _, i in accepted if isinstance(i, wire.Experience)}
        kept: list[tuple[bytes, wire.Item]] = []
        for raw, item in accepted:
            if isinstance(item, wire.Submission) and self._outside_committee(item, batch_authors):
                with self._lock:
                    self.counters["committee_ignored"] += 1
                continue
            kept.append((raw, item))
        raws = [r for r, _ in kept]
        items = [i for _, i in kept]
        new = self.store.put_items(raws, decoded=items) if kept else []
        if report is not None:
            report["stored"] = report.get("stored", 0) + sum(bool(n) for n in new)
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
            elif isinstance(item, wire.Submission):
                with self._lock:
                    self.counters["submissions_stored"] += 1
                if item.space_id == self.space_id:
                    touched[item.experience_id] = None
            elif isinstance(item, wire.Feedback):  # put_items updated its aggregate already
                with self._lock:
                    self.counters["feedback_stored"] = self.counters.get("feedback_stored", 0) + 1
        for exp_id in touched:
            self.recompute(exp_id)
        return outbound

    def repair_pending(self) -> list[bytes]:
        """Worker thread, at start: finish what a crash interrupted in `_ingest`. Every
        experience the store marks pending (a new item committed, its consensus not yet) gets
        our submission if it lacks one and we are in its committee, then its consensus
        recomputed. Returns our new submissions, to publish."""
        outbound: list[bytes] = []
        pending = self.store.pending_ids()
        for exp_id in pending:
            rec = self.store.get_experience(exp_id)
            if rec is not None:
                own = self._own_submission(wire.decode_item(rec.raw))
                if own is not None:
                    outbound.append(own)
            self.recompute(exp_id)
        with self._lock:
            self.counters["repaired_at_start"] = len(pending)
        if pending:
            log.info("recomputed %d pending consensus records at start", len(pending))
        return outbound

    def _own_submission(self, experience: wire.Experience) -> bytes | None:
        """Embed (exact path), sign and store our submission unless we have one or are
        outside the experience's committee."""
        if self.service._own_code(experience.id) is not None:
            return None
        if not self._in_own_committee(experience):
            with self._lock:
                self.counters["not_in_committee"] += 1
            return None
        vector = self.own_vector(self.service._embed_one(experience.text), experience)
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
            if exp is None:  # submissions before their experience: wait for it (it marks
                self.store.clear_pending([exp_id])  # the experience pending again)
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
                method=self.config.method,
                weights=self._weights or None,
                eligible=self._eligible(exp_id, exp.author),
            )
            if outcome is None:
                self.store.clear_pending([exp_id])
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

    # -- catch-up (/dso/sync/1.0.0)

    async def _sync_loop(self, poll_s: float = 0.5) -> None:
        """Pull from each peer when its connection appears, then every sync_interval_s
        (jittered by +-20%), one exchange per peer, at most sync_concurrency at once.

        The first pull waits (at most sync_mesh_wait_s) until the peer is in our topic's
        mesh: the submissions we make for what the pull brings are published by gossip, and
        GossipSub sends only to mesh peers, so publishing earlier would skip that very peer.
        """
        cfg = self.config
        due: dict[ID, float] = {}
        connected_at: dict[ID, float] = {}
        async with trio.open_nursery() as nursery:
            while True:
                now = time.monotonic()
                peers = set(connected_peers(self.host))
                for gone in set(connected_at) - peers:  # a reconnection syncs again at once
                    connected_at.pop(gone, None)
                    due.pop(gone, None)
                mesh = self._mesh()
                for peer in peers:
                    first = connected_at.setdefault(peer, now)
                    if peer not in due and (peer in mesh or now - first >= cfg.sync_mesh_wait_s):
                        # jittered, so both ends of a new connection do not start together
                        due[peer] = now + random.uniform(0.0, 0.5)
                for peer, when in sorted(due.items(), key=lambda kv: kv[1]):
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

    def _sync_accept(self, raws: list[bytes]) -> tuple[int, int, Counter]:
        """Worker thread (under the ingest limiter): verify like gossip, then `_ingest`."""
        accepted: list[tuple[bytes, wire.Item]] = []
        rejected: Counter = Counter()
        now = wire.now_ms()
        for raw in raws:
            try:
                accepted.append((raw, wire.decode_item(raw, now)))
            except WireError as exc:
                rejected[reason_of(exc)] += 1
        report: dict[str, int] = {}
        outbound = self._ingest(accepted, report) if accepted else []
        if outbound:
            trio.from_thread.run_sync(self._submit, outbound)
        stored = report.get("stored", 0)
        return stored, len(accepted) - stored, rejected

    async def sync_peer(self, peer: ID) -> Any:
        """One catch-up exchange with `peer` (raises like `sync_with`)."""
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
        if self.sync_server is not None:
            srv = self.sync_server.stats
            sync["served"] = {
                "streams": srv.streams,
                "refused": srv.refused,
                "requests": srv.requests,
                "items_sent": srv.items_sent,
                "errors": dict(srv.errors),
            }
        return {
            "peer_id": self.host.get_id().to_base58() if self.host else None,
            "listen": listen_multiaddrs(self.host) if self.host else [],
            "connected": [p.to_base58() for p in connected_peers(self.host)] if self.host else [],
            "mesh_peers": len(gossip.mesh_peers(self.topic)) if gossip and self.topic else 0,
            "byzantine_attack": self.config.byzantine_attack,
            "consensus": {
                "method": self.config.method,
                "quorum": self.config.quorum,
                "committee": self.config.committee,
                "network_size": self._network_size,
                "weighted_peers": len(self._weights),
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
