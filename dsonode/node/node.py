"""The composition root: one node = store + embedder + index + identity + servers, one nursery.

`run_node(config)` opens everything in order (fast checks first, so a second node on the
same data directory fails in milliseconds instead of after loading the model), serves the
retrieval socket in one trio nursery, and on SIGTERM/SIGINT cancels the nursery, waits for
in-flight work (threads are not cancellable mid-commit), removes the socket and closes the
store. A SIGKILL skips all that; LMDB commits are durable and the index is rebuilt from LMDB
at the next start, so nothing acknowledged is lost.
"""

from __future__ import annotations

import logging
import signal
import socket
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import TYPE_CHECKING, TextIO

import trio
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from dsonode.api.server import RpcServer, ServerLimits, prepare_socket_path
from dsonode.api.service import RetrievalService
from dsonode.config.loader import Config, join_hostport
from dsonode.config.paths import (
    KEY_FILE_NAME,
    LOCK_FILE_NAME,
    SOCKET_NAME,
    STORE_DIR_NAME,
)
from dsonode.config.settings import default
from dsonode.core.errors import DsoError
from dsonode.dirlock import release_lock, take_lock
from dsonode.embed.lean import release_free_heap
from dsonode.embed.space import DEFAULT_MODEL_NAME, default_space_id
from dsonode.extract.config import ExtractConfig
from dsonode.gateway.app import serve_gateway
from dsonode.gateway.config import GatewayConfig
from dsonode.identity import load_or_create_key
from dsonode.library import ConsensusRules, Library, LightEmbedder, TrustSettings
from dsonode.library.byzantine import ByzantinePolicy
from dsonode.library.library import Embedder
from dsonode.net.connmgr import ConnConfig
from dsonode.net.daemon import DaemonConfig, NetDaemon
from dsonode.net.gossip import GossipConfig
from dsonode.ops.logs import setup_logging
from dsonode.ops.metrics import MetricsServer, NodeMetrics, bind_tcp, parse_metrics_listen
from dsonode.store import CodeIndex, Store
from dsonode.store.snapshot import load_index, save_index, snapshot_path, store_stamp

if TYPE_CHECKING:  # the full embedder imports torch: a light node never imports it
    from dsonode.embed.embedder import Embedder as FullEmbedder
    from dsonode.embed.lean import LeanEmbedder

log = logging.getLogger("dsonode.node")


class NodeError(DsoError):
    """The node cannot start (see the message)."""


@dataclass(frozen=True)
class NodeConfig:
    """Everything `Node` needs, flat. Built from the loaded settings by `node_config(cfg)`;
    every default is the declared one (dsonode.config.settings)."""

    data_dir: Path
    encoder: str | None = default("node.encoder")  # None = the packaged MiniLM
    head: str | None = default("node.head")  # None = the seeded default head
    device: str = default("node.device")
    threads: int | None = default("node.threads") or None
    max_connections: int = default("api.max_connections")
    idle_timeout: float = default("api.idle_timeout_s")
    quorum: int = default("consensus.quorum")
    cpu_threads: int = default("node.cpu_threads")
    query_runtime: str = default("node.query_runtime")
    embed_runtime: str = default("node.embed_runtime")
    role: str = default("node.role")  # "light": no encoder (see light_embedder)
    space_id: str = default("node.space_id")  # light nodes: "" = the default space
    feedback_weight: float = default("api.feedback_weight")
    # What is served and whose votes count (dsonode.library.trust; ARCHITECTURE.md "Trust").
    trust_mode: str = default("trust.mode")
    trust_allow: tuple[str, ...] = default("trust.allow")  # base58 peer ids
    trust_min_accepted: int = default("trust.min_accepted")
    trust_min_agreement: float = default("trust.min_agreement")
    trust_min_age_s: float = default("trust.min_age_s")
    trust_endorse_min: float = default("trust.endorse_min")
    trust_stamp_bits: int = default("trust.stamp_bits")
    trust_quota_items_per_hour: int = default("trust.quota_items_per_hour")
    trust_quota_bytes: int = default("trust.quota_bytes")
    trust_standing_quota_factor: float = default("trust.standing_quota_factor")
    trust_unvouched_ttl_s: float = default("trust.unvouched_ttl_s")
    trust_max_experiences: int = default("trust.max_experiences")
    trust_sweep_interval_s: float = default("trust.sweep_interval_s")
    # Networking (dsonode.net.daemon): off unless `listen` is set.
    listen: str | None = None
    peers: tuple[str, ...] = default("net.bootstrap")
    byzantine_attack: str | None = None  # testnet only: poison our own submissions
    attack_scale: float = default("testnet.attack_scale")
    allow_non_loopback: bool = default("net.allow_non_loopback")
    p2p_max_connections: int = default("net.max_connections")
    p2p_max_connections_per_peer: int = default("net.max_connections_per_peer")
    dial_timeout_s: float = default("net.dial_timeout_s")
    redial_initial_s: float = default("net.redial_initial_s")
    redial_max_s: float = default("net.redial_max_s")
    gossip: GossipConfig = field(default_factory=GossipConfig)
    consensus_method: str = default("consensus.method")
    #: {base58 peer id: weight}; empty = all weigh 1
    consensus_weights: Mapping[str, float] = field(
        default_factory=lambda: MappingProxyType(default("consensus.weights"))
    )
    committee: int | None = default("consensus.committee")  # None = everyone submits
    sync_interval_s: float = default("net.sync_interval_s")
    conn: ConnConfig = field(default_factory=ConnConfig)  # discovery and connection bounds
    socket: Path | None = None  # the retrieval socket; None = <data_dir>/dsonode.sock
    # Operations (dsonode.ops): Prometheus metrics over HTTP when `metrics_listen` is set.
    metrics_listen: str | None = None  # HOST:PORT, loopback unless explicitly allowed
    metrics_allow_non_loopback: bool = default("metrics.allow_non_loopback")
    log_format: str = default("node.log_format")
    log_level: str = default("node.log_level")
    # The HTTP gateway (dsonode.gateway) over the node's own model: None = off.
    gateway: GatewayConfig | None = None
    # How `submit_rollouts` extracts lessons ([extract]).
    extract: ExtractConfig = field(default_factory=ExtractConfig)


def gossip_config(cfg: Config) -> GossipConfig:
    net = cfg.net
    return GossipConfig(
        degree=net.gossip_degree,
        degree_low=net.gossip_degree_low,
        degree_high=net.gossip_degree_high,
        heartbeat_interval_s=net.gossip_heartbeat_s,
        batch_max_items=net.batch_max_items,
        batch_max_bytes=net.batch_max_bytes,
        batch_linger_s=net.batch_linger_s,
        max_publish_per_s=net.max_publish_per_s,
        publish_burst=net.publish_burst,
        outbox_max_items=net.outbox_max_items,
    )


def conn_config(cfg: Config) -> ConnConfig:
    net = cfg.net
    return ConnConfig(
        low_water=net.low_water,
        high_water=net.high_water,
        max_inbound=net.max_inbound,
        max_inbound_per_ip=net.max_inbound_per_ip,
        allow_peers=tuple(net.allow_peers),
        discovery=net.discovery,
        mdns=net.mdns,
        known_peers_max=net.known_peers_max,
        peers_flush_s=net.peers_flush_s,
    )


def extract_config(cfg: Config) -> ExtractConfig:
    ex = cfg.extract
    return ExtractConfig(
        backend=ex.backend,
        endpoint=ex.endpoint,
        model=ex.model,
        timeout_s=ex.timeout_s,
        max_retries=ex.max_retries,
        concurrency=ex.concurrency,
        max_tokens=ex.max_tokens,
        retrieve_k=ex.retrieve_k,
        per_group=ex.per_group,
    )


def node_config(cfg: Config) -> NodeConfig:
    """The `NodeConfig` of loaded settings (file, environment and flags)."""
    net_on = cfg.net.enabled
    metrics = cfg.metrics
    return NodeConfig(
        data_dir=cfg.node.data_dir,
        encoder=None if cfg.node.encoder is None else str(cfg.node.encoder),
        head=None if cfg.node.head is None else str(cfg.node.head),
        device=cfg.node.device,
        threads=cfg.node.threads,
        max_connections=cfg.api.max_connections,
        idle_timeout=cfg.api.idle_timeout_s,
        quorum=cfg.consensus.quorum,
        cpu_threads=cfg.node.cpu_threads,
        query_runtime=cfg.node.query_runtime,
        embed_runtime=cfg.node.embed_runtime,
        role=cfg.node.role,
        space_id=cfg.node.space_id,
        feedback_weight=cfg.api.feedback_weight,
        trust_mode=cfg.trust.mode,
        trust_allow=cfg.trust.allow,
        trust_min_accepted=cfg.trust.min_accepted,
        trust_min_agreement=cfg.trust.min_agreement,
        trust_min_age_s=cfg.trust.min_age_s,
        trust_endorse_min=cfg.trust.endorse_min,
        trust_stamp_bits=cfg.trust.stamp_bits,
        trust_quota_items_per_hour=cfg.trust.quota_items_per_hour,
        trust_quota_bytes=cfg.trust.quota_bytes,
        trust_standing_quota_factor=cfg.trust.standing_quota_factor,
        trust_unvouched_ttl_s=cfg.trust.unvouched_ttl_s,
        trust_max_experiences=cfg.trust.max_experiences,
        trust_sweep_interval_s=cfg.trust.sweep_interval_s,
        listen=cfg.net.listen if net_on else None,
        peers=cfg.net.bootstrap if net_on else (),
        byzantine_attack=cfg.byzantine_attack,
        attack_scale=cfg.testnet.attack_scale,
        allow_non_loopback=cfg.net.allow_non_loopback,
        p2p_max_connections=cfg.net.max_connections,
        p2p_max_connections_per_peer=cfg.net.max_connections_per_peer,
        dial_timeout_s=cfg.net.dial_timeout_s,
        redial_initial_s=cfg.net.redial_initial_s,
        redial_max_s=cfg.net.redial_max_s,
        gossip=gossip_config(cfg),
        consensus_method=cfg.consensus.method,
        consensus_weights=cfg.consensus.weights,
        committee=cfg.consensus.committee,
        sync_interval_s=cfg.net.sync_interval_s,
        conn=conn_config(cfg),
        socket=cfg.api.socket,
        metrics_listen=join_hostport(metrics.host, metrics.port) if metrics.enabled else None,
        metrics_allow_non_loopback=metrics.allow_non_loopback,
        extract=extract_config(cfg),
        log_format=cfg.node.log_format,
        log_level=cfg.node.log_level,
        gateway=cfg.gateway_config() if cfg.gateway.enabled else None,
    )


class Node:
    """The node's parts, opened in `open()` and closed in `close()` (also on errors)."""

    def __init__(self, config: NodeConfig):
        self.config = config
        self.data_dir = Path(config.data_dir).expanduser().resolve()
        self.socket_path = (
            Path(config.socket).expanduser().resolve()
            if config.socket is not None
            else self.data_dir / SOCKET_NAME
        )
        self.store: Store | None = None
        self.index: CodeIndex | None = None
        self._index_stamp: dict[str, object] | None = None  # store stamp the index matches
        self.embedder: Embedder | None = None
        #: The loaded model of a full node (the gateway serves it); None on a light node.
        self.full_embedder: LeanEmbedder | FullEmbedder | None = None
        self.key: Ed25519PrivateKey | None = None
        self.library: Library | None = None
        self.service: RetrievalService | None = None
        self.server: RpcServer | None = None
        self.daemon: NetDaemon | None = None
        self.metrics: MetricsServer | None = None
        self._metrics_sock: socket.socket | None = None
        self._lock_fd: int | None = None

    def open(self, say: Callable[[str], None] = lambda s: None) -> None:
        config = self.config
        self.data_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        try:
            # Cheap checks first: a live node on this socket, then the store's directory lock.
            prepare_socket_path(self.socket_path)
            self._lock_fd = take_lock(
                self.data_dir / LOCK_FILE_NAME,
                lambda: NodeError(f"another node is running on {self.data_dir}"),
            )
            if config.metrics_listen is not None:  # a bad or busy address fails fast
                host, port = parse_metrics_listen(
                    config.metrics_listen, allow_non_loopback=config.metrics_allow_non_loopback
                )
                self._metrics_sock = bind_tcp(host, port)
            if config.gateway is not None:  # a bad setting fails before the model loads
                config.gateway.validate()
            rules = consensus_rules(config)
            daemon_settings = daemon_config(config) if config.listen is not None else None
            self.key = load_or_create_key(self.data_dir / KEY_FILE_NAME)

            if config.role == "light":
                say("light node: no embedding model")
                self.embedder = light_embedder(config)
            else:
                self.full_embedder = full_embedder(config, say)
                self.embedder = self.full_embedder
            self.store = Store(self.data_dir / STORE_DIR_NAME, space_id=self.embedder.space_id)
            prev = self.store.previous_space_id
            if prev is not None and prev.hex() != self.embedder.space_id:
                log.warning(
                    "the store was last used with space %s; now serving space %s (the other "
                    "space's data is kept apart)",
                    prev.hex(),
                    self.embedder.space_id,
                )
            self.index, self._index_stamp = load_index(
                self.store,
                self.embedder.space_id,
                self.embedder.reference,
                snapshot_path(self.store.path, self.embedder.space_id),
                say,
            )
            # The rebuild read every record: keep those pages in the page cache, not in the
            # node's resident memory (Store.release_mapped_pages), and hand its temporary
            # buffers back to the system.
            self.store.release_mapped_pages()
            release_free_heap()
            self.library = Library(
                store=self.store,
                index=self.index,
                embedder=self.embedder,
                key=self.key,
                rules=rules,
                trust=trust_settings(config),
            )
            if config.byzantine_attack is not None:  # testnet only (the config refuses it else)
                self.library.policy = ByzantinePolicy(
                    self.library, config.byzantine_attack, config.attack_scale
                )
            self.service = RetrievalService(
                self.library, feedback_weight=config.feedback_weight, extract=config.extract
            )
            self.server = RpcServer(
                self.service.handlers(config.cpu_threads),
                ServerLimits(
                    max_connections=config.max_connections, idle_timeout=config.idle_timeout
                ),
            )
            self.service.server = self.server
            if daemon_settings is not None:
                self.daemon = NetDaemon(daemon_settings, library=self.library)
                self.service.network = self.daemon
            if self._metrics_sock is not None:
                node_metrics = NodeMetrics(self.service, self.daemon)
                self.server.observe = node_metrics.observe_request
                self.metrics = MetricsServer(node_metrics, self._metrics_sock)
        except BaseException:
            self.close()
            raise

    def close(self) -> None:
        if self._metrics_sock is not None:
            self._metrics_sock.close()
            self._metrics_sock = None
        if self.store is not None:
            self._save_index()
            self.store.close()
            self.store = None
        release_lock(self._lock_fd)
        self._lock_fd = None

    def _save_index(self) -> None:
        """Save the index beside the store (the last thing before the store closes, so the
        stamp is that of the last write); skipped when the store has not changed since the
        index was loaded. A failure is logged: the next start rebuilds from LMDB."""
        if self.store is None or self.index is None or self.embedder is None:
            return
        space = self.embedder.space_id
        if self.library is not None and self.library.index_holds_deleted:
            # Rows of deleted experiences are still in it: let the next start rebuild.
            log.info("index not saved: experiences were deleted; the next start rebuilds it")
            return
        try:
            stamp = store_stamp(self.store, space, self.embedder.reference)
            if stamp == self._index_stamp:
                return
            save_index(snapshot_path(self.store.path, space), self.index, stamp)
            self._index_stamp = stamp
        except (OSError, ValueError) as exc:
            log.warning("could not save the index (the next start rebuilds it): %s", exc)

    async def serve(self, ready: Callable[[Path], None] | None = None) -> None:
        """Serve until SIGTERM/SIGINT (or cancellation); `ready(socket_path)` once listening."""
        assert self.server is not None and self.embedder is not None, "open() first"
        async with trio.open_nursery() as nursery:
            nursery.start_soon(_cancel_on_signals, nursery.cancel_scope)
            if self.daemon is not None:
                await nursery.start(self.daemon.run)
            if self.metrics is not None:
                await nursery.start(self.metrics.serve)
            gateway = self.config.gateway
            if gateway is not None:  # same model, same process: no second load
                assert self.full_embedder is not None  # light_embedder refuses a gateway
                url = await nursery.start(serve_gateway, self.full_embedder, gateway)
                log.info("gateway on %s (auth %s)", url, "on" if gateway.token else "off")
            await nursery.start(self.server.serve_unix, self.socket_path)
            if ready is not None:
                ready(self.socket_path)


async def _cancel_on_signals(scope: trio.CancelScope) -> None:
    with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
        async for signum in signals:
            log.info("received %s; shutting down", signal.Signals(signum).name)
            scope.cancel()
            return


def trust_settings(config: NodeConfig) -> TrustSettings:
    """The library's trust settings of a node (validates them)."""
    return TrustSettings.from_config(
        mode=config.trust_mode,
        allow=config.trust_allow,
        min_accepted=config.trust_min_accepted,
        min_agreement=config.trust_min_agreement,
        min_age_s=config.trust_min_age_s,
        endorse_min=config.trust_endorse_min,
        stamp_bits=config.trust_stamp_bits,
        quota_items_per_hour=config.trust_quota_items_per_hour,
        quota_bytes=config.trust_quota_bytes,
        standing_quota_factor=config.trust_standing_quota_factor,
        unvouched_ttl_s=config.trust_unvouched_ttl_s,
        max_experiences=config.trust_max_experiences,
    )


def consensus_rules(config: NodeConfig) -> ConsensusRules:
    """The library's consensus rules of a node (validates them)."""
    return ConsensusRules.from_peer_weights(
        quorum=config.quorum,
        method=config.consensus_method,
        committee=config.committee,
        weights=config.consensus_weights,
    )


def full_embedder(
    config: NodeConfig, say: Callable[[str], None] = lambda s: None
) -> LeanEmbedder | FullEmbedder:
    """A full node's model: the lean embedder (no torch in this process; compiled once per
    machine into the user cache, checksummed) unless `embed_runtime` is "torch" or it cannot be
    had here, then the torch embedder (ARCHITECTURE.md "Lean embedder")."""
    from dsonode.embed import lean

    say(f"loading the embedding model ({config.embed_runtime})")
    emb = lean.load_model(
        config.encoder, config.head, config.device, config.threads, config.embed_runtime, say
    )
    # The search encoder: part of the lean folder, or built once per machine (~15 s) into the
    # user cache for the torch embedder (checksummed; see dsonode/embed/runtime.py).
    say("preparing the query encoder")
    emb.prepare_query_runtime(config.query_runtime)
    model: LeanEmbedder | FullEmbedder = emb
    return model


def light_embedder(config: NodeConfig) -> LightEmbedder:
    """The space of a light node (validates the settings; imports no torch).

    A light node serves the space of the full nodes it follows: `node.space_id` when set,
    else the default space (packaged encoder, seeded head), computed from the packaged files
    by dsonode.embed.space. It has no model, so no gateway and no custom encoder or head
    without an explicit space id."""
    if config.role != "light":
        raise NodeError(f"light_embedder: the role is {config.role!r}")
    if config.gateway is not None:
        raise NodeError("the gateway needs the model: a light node (node.role = light) has none")
    if config.space_id:
        return LightEmbedder(config.space_id, f"light-{config.space_id[:8]}")
    if config.encoder is not None or config.head is not None:
        raise NodeError(
            "a light node with node.encoder or node.head needs node.space_id (the space_id "
            "that a full node with that encoder and head shows in `dsonode stats`)"
        )
    return LightEmbedder(default_space_id(), DEFAULT_MODEL_NAME)


def daemon_config(config: NodeConfig) -> DaemonConfig:
    """The `DaemonConfig` of a node with `listen` set (validates it)."""
    assert config.listen is not None
    return DaemonConfig(
        listen=config.listen,
        peers=tuple(config.peers),
        allow_non_loopback=config.allow_non_loopback,
        max_connections=config.p2p_max_connections,
        max_connections_per_peer=config.p2p_max_connections_per_peer,
        dial_timeout_s=config.dial_timeout_s,
        redial_initial_s=config.redial_initial_s,
        redial_max_s=config.redial_max_s,
        gossip=config.gossip,
        sync_interval_s=config.sync_interval_s,
        sweep_interval_s=config.trust_sweep_interval_s,
        conn=config.conn,
    )


def run_node(config: NodeConfig, out: TextIO | None = None) -> int:
    """Open, serve until a signal, close. Prints the socket path once it accepts requests."""
    stream = out or sys.stdout
    setup_logging(config.log_format, config.log_level)

    def say(msg: str) -> None:
        if config.log_format == "json":  # stderr carries JSON lines only
            log.info(msg)
        else:
            print(f"dsonode: {msg}", file=sys.stderr, flush=True)

    def ready(path: Path) -> None:
        print(f"dsonode: serving retrieval on {path}", file=stream, flush=True)

    node = Node(config)
    node.open(say)
    try:
        assert node.embedder is not None and node.library is not None
        say(
            f"space {node.embedder.space_id[:16]}..., {node.library.indexed()} items indexed, "
            f"author {node.library.author.hex()[:16]}..."
        )
        if node.metrics is not None:
            say(f"metrics on http://{node.metrics.address}/metrics")
        trio.run(node.serve, ready)
    finally:
        node.close()
    say("stopped")
    return 0
