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
import os
import signal
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dsonode.core.errors import DsoError

log = logging.getLogger("dsonode.node")

SOCKET_NAME = "dsonode.sock"
STORE_DIR_NAME = "store"
KEY_FILE_NAME = "node.key"
LOCK_FILE_NAME = "node.lock"


class NodeError(DsoError):
    """The node cannot start (see the message)."""


def default_data_dir() -> Path:
    """$DSONODE_DATA_DIR, else ~/.dsonode."""
    env = os.environ.get("DSONODE_DATA_DIR")
    return Path(env).expanduser() if env else Path.home() / ".dsonode"


def socket_path(data_dir: str | os.PathLike[str]) -> Path:
    return Path(data_dir).expanduser() / SOCKET_NAME


@dataclass(frozen=True)
class NodeConfig:
    data_dir: Path
    encoder: str | None = None  # local Hugging Face folder; None = the packaged MiniLM
    head: str | None = None  # trained head (.safetensors); None = the seeded default
    device: str = "auto"
    threads: int | None = None
    max_connections: int = 64
    idle_timeout: float = 300.0
    quorum: int = 3
    cpu_threads: int = 2  # worker threads for embedding/search/commits
    feedback_weight: float = 0.1  # [api] feedback_weight: feedback's weight in search ranking
    # Networking (dsonode.net.daemon): off unless `listen` is set.
    listen: str | None = None
    peers: tuple[str, ...] = ()
    byzantine_attack: str | None = None  # testnet only: poison our own submissions
    attack_scale: float = 1.0  # testnet only: strength of the attack
    # Network details (dsonode.config: [net] and [consensus]); defaults = dsonode.net.daemon's.
    allow_non_loopback: bool = False
    p2p_max_connections: int = 64
    p2p_max_connections_per_peer: int = 2
    dial_timeout_s: float = 5.0
    redial_initial_s: float = 0.2
    redial_max_s: float = 5.0
    gossip: Any = None  # a dsonode.net.gossip.GossipConfig; None = its defaults
    consensus_method: str = "median"
    consensus_weights: Any = None  # {base58 peer id: weight}; None = all weigh 1
    committee: int | None = 7  # expected submitters per experience; None = everyone
    sync_interval_s: float = 60.0
    socket: Path | None = None  # the retrieval socket; None = <data_dir>/dsonode.sock
    # Operations (dsonode.ops): Prometheus metrics over HTTP when `metrics_listen` is set.
    metrics_listen: str | None = None  # HOST:PORT, loopback unless explicitly allowed
    metrics_allow_non_loopback: bool = False
    log_format: str = "text"  # text | json (dsonode.ops.logs)
    log_level: str = "INFO"
    # The HTTP gateway (dsonode.gateway) over the node's own model: a GatewayConfig, None = off.
    gateway: Any = None


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
        self.store: Any = None
        self.index: Any = None
        self.embedder: Any = None
        self.key: Any = None
        self.service: Any = None
        self.server: Any = None
        self.daemon: Any = None
        self.metrics: Any = None  # dsonode.ops.metrics.MetricsServer when metrics are on
        self._metrics_sock: Any = None
        self._lock_fd: int | None = None

    def open(self, say: Callable[[str], None] = lambda s: None) -> None:
        from dsonode.api.server import RpcServer, ServerLimits, prepare_socket_path
        from dsonode.identity import load_or_create_key

        self.data_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        try:
            # Cheap checks first: a live node on this socket, then the store's directory lock.
            prepare_socket_path(self.socket_path)
            self._take_lock()
            if self.config.metrics_listen is not None:  # a bad or busy address fails fast
                self._metrics_sock = _bind_metrics(self.config)
            if self.config.gateway is not None:  # a bad setting fails before the model loads
                self.config.gateway.validate()
            self.key = load_or_create_key(self.data_dir / KEY_FILE_NAME)
            from dsonode.embed import get_embedder
            from dsonode.store import Store

            say("loading the embedding model")
            self.embedder = get_embedder(
                self.config.encoder, self.config.head, self.config.device, self.config.threads
            )
            self.store = Store(self.data_dir / STORE_DIR_NAME, space_id=self.embedder.space_id)
            prev = getattr(self.store, "previous_space_id", None)
            if prev is not None and prev.hex() != self.embedder.space_id:
                log.warning(
                    "the store was last used with space %s; now serving space %s (the other "
                    "space's data is kept apart)",
                    prev.hex(),
                    self.embedder.space_id,
                )
            say("building the index from the store")
            self.index = _build_index(self.store, self.embedder)
            from dsonode.api.service import RetrievalService

            self.service = RetrievalService(
                store=self.store,
                index=self.index,
                embedder=self.embedder,
                key=self.key,
                quorum=self.config.quorum,
            )
            self.server = RpcServer(
                self.service.handlers(self.config.cpu_threads),
                ServerLimits(
                    max_connections=self.config.max_connections,
                    idle_timeout=self.config.idle_timeout,
                ),
            )
            self.service.server = self.server
            self.service.feedback_weight = self.config.feedback_weight
            if self.config.listen is not None:
                from dsonode.net.daemon import NetDaemon

                self.daemon = NetDaemon(
                    daemon_config(self.config),
                    store=self.store,
                    index=self.index,
                    service=self.service,
                    embedder=self.embedder,
                    key=self.key,
                )
                self.service.network = self.daemon
            if self._metrics_sock is not None:
                from dsonode.ops.metrics import MetricsServer, NodeMetrics

                node_metrics = NodeMetrics(self.service, self.daemon)
                self.server.observe = node_metrics.observe_request
                self.metrics = MetricsServer(node_metrics, self._metrics_sock)
        except BaseException:
            self.close()
            raise

    def _take_lock(self) -> None:
        """One node per data directory, for its whole life (the kernel drops it on SIGKILL)."""
        from dsonode.dirlock import take_lock

        self._lock_fd = take_lock(
            self.data_dir / LOCK_FILE_NAME,
            lambda: NodeError(f"another node is running on {self.data_dir}"),
        )

    def close(self) -> None:
        if self._metrics_sock is not None:
            self._metrics_sock.close()
            self._metrics_sock = None
        if self.store is not None:
            self.store.close()
            self.store = None
        from dsonode.dirlock import release_lock

        release_lock(self._lock_fd)
        self._lock_fd = None

    async def serve(self, ready: Callable[[Path], None] | None = None) -> None:
        """Serve until SIGTERM/SIGINT (or cancellation); `ready(socket_path)` once listening."""
        import trio

        async with trio.open_nursery() as nursery:
            nursery.start_soon(_cancel_on_signals, nursery.cancel_scope)
            if self.daemon is not None:
                await nursery.start(self.daemon.run)
            if self.metrics is not None:
                await nursery.start(self.metrics.serve)
            if self.config.gateway is not None:  # same model, same process: no second load
                from dsonode.gateway.app import serve_gateway

                url = await nursery.start(serve_gateway, self.embedder, self.config.gateway)
                log.info(
                    "gateway on %s (auth %s)", url, "on" if self.config.gateway.token else "off"
                )
            await nursery.start(self.server.serve_unix, self.socket_path)
            if ready is not None:
                ready(self.socket_path)


async def _cancel_on_signals(scope: Any) -> None:
    import trio

    with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
        async for signum in signals:
            log.info("received %s; shutting down", signal.Signals(signum).name)
            scope.cancel()
            return


def _bind_metrics(config: NodeConfig) -> Any:
    from dsonode.ops.metrics import bind_tcp, parse_metrics_listen

    assert config.metrics_listen is not None
    host, port = parse_metrics_listen(
        config.metrics_listen, allow_non_loopback=config.metrics_allow_non_loopback
    )
    return bind_tcp(host, port)


def daemon_config(config: NodeConfig) -> Any:
    """The `dsonode.net.daemon.DaemonConfig` of a node with `listen` set (validates it)."""
    from types import MappingProxyType

    from dsonode.net.daemon import DaemonConfig
    from dsonode.net.gossip import GossipConfig

    assert config.listen is not None
    return DaemonConfig(
        listen=config.listen,
        peers=tuple(config.peers),
        quorum=config.quorum,
        byzantine_attack=config.byzantine_attack,
        attack_scale=config.attack_scale,
        allow_non_loopback=config.allow_non_loopback,
        max_connections=config.p2p_max_connections,
        max_connections_per_peer=config.p2p_max_connections_per_peer,
        dial_timeout_s=config.dial_timeout_s,
        redial_initial_s=config.redial_initial_s,
        redial_max_s=config.redial_max_s,
        gossip=config.gossip if config.gossip is not None else GossipConfig(),
        method=config.consensus_method,
        weights=MappingProxyType(dict(config.consensus_weights or {})),
        committee=config.committee,
        sync_interval_s=config.sync_interval_s,
    )


def _build_index(store: Any, embedder: Any) -> Any:
    from dsonode.store import CodeIndex

    return CodeIndex.from_store(store, embedder.space_id, ref=embedder.reference)


def run_node(config: NodeConfig, out: Any = None) -> int:
    """Open, serve until a signal, close. Prints the socket path once it accepts requests."""
    import trio

    from dsonode.ops.logs import setup_logging

    out = out or sys.stdout
    setup_logging(config.log_format, config.log_level)

    def say(msg: str) -> None:
        if config.log_format == "json":  # stderr carries JSON lines only
            log.info(msg)
        else:
            print(f"dsonode: {msg}", file=sys.stderr, flush=True)

    def ready(path: Path) -> None:
        print(f"dsonode: serving retrieval on {path}", file=out, flush=True)

    node = Node(config)
    node.open(say)
    try:
        say(
            f"space {node.embedder.space_id[:16]}..., {len(node.index)} items indexed, "
            f"author {node.service.author.hex()[:16]}..."
        )
        if node.metrics is not None:
            say(f"metrics on http://{node.metrics.address}/metrics")
        trio.run(node.serve, ready)
    finally:
        node.close()
    say("stopped")
    return 0
