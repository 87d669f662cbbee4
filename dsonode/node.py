"""The composition root: one node = store + embedder + index + identity + servers, one nursery.

`run_node(config)` opens everything in order (fast checks first, so a second node on the
same data directory fails in milliseconds instead of after loading the model), serves the
retrieval socket in one trio nursery, and on SIGTERM/SIGINT cancels the nursery, waits for
in-flight work (threads are not cancellable mid-commit), removes the socket and closes the
store. A SIGKILL skips all that; LMDB commits are durable and the index is rebuilt from LMDB
at the next start, so nothing acknowledged is lost.
"""

from __future__ import annotations

import fcntl
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
    # Networking (dsonode.net.daemon): off unless `listen` is set.
    listen: str | None = None
    peers: tuple[str, ...] = ()
    byzantine_attack: str | None = None  # testnet only: poison our own submissions


class Node:
    """The node's parts, opened in `open()` and closed in `close()` (also on errors)."""

    def __init__(self, config: NodeConfig):
        self.config = config
        self.data_dir = Path(config.data_dir).expanduser().resolve()
        self.socket_path = self.data_dir / SOCKET_NAME
        self.store: Any = None
        self.index: Any = None
        self.embedder: Any = None
        self.key: Any = None
        self.service: Any = None
        self.server: Any = None
        self.daemon: Any = None
        self._lock_fd: int | None = None

    def open(self, say: Callable[[str], None] = lambda s: None) -> None:
        from dsonode.api.server import RpcServer, ServerLimits, prepare_socket_path
        from dsonode.identity import load_or_create_key

        self.data_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        try:
            # Cheap checks first: a live node on this socket, then the store's directory lock.
            prepare_socket_path(self.socket_path)
            self._take_lock()
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
            if self.config.listen is not None:
                from dsonode.net.daemon import DaemonConfig, NetDaemon

                self.daemon = NetDaemon(
                    DaemonConfig(
                        listen=self.config.listen,
                        peers=tuple(self.config.peers),
                        quorum=self.config.quorum,
                        byzantine_attack=self.config.byzantine_attack,
                    ),
                    store=self.store,
                    index=self.index,
                    service=self.service,
                    embedder=self.embedder,
                    key=self.key,
                )
                self.service.network = self.daemon
        except BaseException:
            self.close()
            raise

    def _take_lock(self) -> None:
        """One node per data directory, for its whole life (the kernel drops it on SIGKILL)."""
        fd = os.open(self.data_dir / LOCK_FILE_NAME, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            raise NodeError(f"another node is running on {self.data_dir}") from None
        self._lock_fd = fd

    def close(self) -> None:
        if self.store is not None:
            self.store.close()
            self.store = None
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None

    async def serve(self, ready: Callable[[Path], None] | None = None) -> None:
        """Serve until SIGTERM/SIGINT (or cancellation); `ready(socket_path)` once listening."""
        import trio

        async with trio.open_nursery() as nursery:
            nursery.start_soon(_cancel_on_signals, nursery.cancel_scope)
            if self.daemon is not None:
                await nursery.start(self.daemon.run)
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


def _build_index(store: Any, embedder: Any) -> Any:
    from dsonode.store import CodeIndex

    return CodeIndex.from_store(store, embedder.space_id, ref=embedder.reference)


def run_node(config: NodeConfig, out: Any = None) -> int:
    """Open, serve until a signal, close. Prints the socket path once it accepts requests."""
    import trio

    out = out or sys.stdout

    def say(msg: str) -> None:
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
        trio.run(node.serve, ready)
    finally:
        node.close()
    say("stopped")
    return 0
