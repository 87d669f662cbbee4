"""Prometheus metrics of a running node, served over HTTP on loopback.

Nothing on the hot paths counts for us: a custom collector reads the node's own state at
scrape time (the same figures the socket's `stats` method returns, plus the gossip queue
depths, which live on the event loop) and turns them into metric families. The one live
metric is the socket's request latency, a histogram the RPC server feeds through its
`observe` hook (`dsonode.api.server.RpcServer.observe`).

The HTTP responder is deliberately tiny and bounded: `GET /metrics` (and `HEAD`) only, one
request per connection, a request head of at most `max_request_bytes`, `read_timeout_s` to
send it, `send_timeout_s` to read the reply, at most `max_connections` at once. Scrapes are
rendered in a worker thread one at a time, so a scrape never blocks the event loop.

Every metric is documented in README.md ("Operations: metrics, logs, status, peers").
"""

from __future__ import annotations

import contextlib
import errno
import logging
import socket as _socket
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from dsonode.config.listen import DEFAULT_LISTEN, MetricsError, parse_metrics_listen

if TYPE_CHECKING:  # types only: `dsonode status` must not import libp2p to start
    from dsonode.api.service import RetrievalService
    from dsonode.net.daemon import NetDaemon

__all__ = ["DEFAULT_LISTEN", "MetricsError", "NodeMetrics", "bind_tcp", "parse_metrics_listen"]

log = logging.getLogger("dsonode.ops.metrics")

#: Socket request latency buckets (seconds): health answers in well under a millisecond,
#: a search in ~20 ms, an add (embedding + two LMDB commits) in tens of ms, a busy node slower.
LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)


def bind_tcp(host: str, port: int, backlog: int = 16) -> _socket.socket:
    """A listening, non-blocking TCP socket (bound before the model loads: fail fast)."""
    family = _socket.AF_INET6 if ":" in host else _socket.AF_INET
    sock = _socket.socket(family, _socket.SOCK_STREAM)
    try:
        sock.setsockopt(_socket.SOL_SOCKET, _socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        sock.listen(backlog)
        sock.setblocking(False)
    except OSError as exc:
        sock.close()
        why = "address already in use" if exc.errno == errno.EADDRINUSE else exc.strerror
        raise MetricsError(f"cannot serve metrics on {_hostport(host, port)}: {why}") from None
    return sock


def _hostport(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


# ----------------------------------------------------------------------------------------
# From the node's state to metric families (pure: a stats dict in, families out)


def _num(value: Any) -> float | None:
    if isinstance(value, bool):
        return float(value)
    if isinstance(value, int | float):
        return float(value)
    return None


def _snake(name: str) -> str:
    out = "".join(c if c.isalnum() else "_" for c in str(name).lower()).strip("_")
    return out.replace("msgs", "messages") or "unnamed"


def metric_families(snap: Mapping[str, Any]) -> Iterator[Any]:
    """Metric families for one snapshot: the socket's `stats` result, with, under
    `network.queues`, the gossip queue depths read on the event loop. A name is emitted once
    (a daemon counter named like one of ours must not make the exposition invalid)."""
    seen: set[str] = set()
    for fam in _families(snap):
        if fam.name not in seen:
            seen.add(fam.name)
            yield fam


def _families(snap: Mapping[str, Any]) -> Iterator[Any]:
    from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

    def gauge(name: str, doc: str, value: Any, labels: Mapping[str, str] | None = None) -> Any:
        fam = GaugeMetricFamily(name, doc, labels=list(labels or {}))
        v = _num(value)
        if v is not None:
            fam.add_metric(list((labels or {}).values()), v)
        return fam

    def counter(name: str, doc: str, value: Any) -> Any:
        fam = CounterMetricFamily(name, doc)
        v = _num(value)
        if v is not None:
            fam.add_metric([], v)
        return fam

    info = GaugeMetricFamily(
        "dsonode_info",
        "Always 1; the labels describe the node",
        labels=["version", "space_id", "model", "author"],
    )
    info.add_metric([str(snap.get(k, "")) for k in ("version", "space_id", "model", "author")], 1.0)
    yield info
    yield gauge("dsonode_uptime_seconds", "Seconds since the node started", snap.get("uptime_s"))

    store = GaugeMetricFamily(
        "dsonode_store_entries", "Entries per LMDB database of the store", labels=["db"]
    )
    for db, count in sorted((snap.get("store") or {}).items()):
        if _num(count) is not None:
            store.add_metric([str(db)], float(count))
    yield store
    yield gauge("dsonode_index_items", "Experiences in the search index", snap.get("indexed"))
    consensus = snap.get("consensus") or {}
    if "confirmed" in consensus and "total" in consensus:
        fam = GaugeMetricFamily(
            "dsonode_consensus_items",
            "Consensus codes of this node's space, by state",
            labels=["state"],
        )
        fam.add_metric(["confirmed"], float(consensus["confirmed"]))
        fam.add_metric(["unconfirmed"], float(consensus["total"]) - float(consensus["confirmed"]))
        yield fam

    trust = snap.get("trust") or {}
    yield gauge("dsonode_trust_allowed_authors", "Authors on the allow list", trust.get("allowed"))
    yield gauge("dsonode_trust_blocked_authors", "Authors on the block list", trust.get("blocked"))
    yield gauge(
        "dsonode_trust_tombstones", "Forgotten or retracted experiences", trust.get("tombstones")
    )

    conns = snap.get("connections") or {}
    yield gauge(
        "dsonode_socket_connections_open", "Open retrieval socket connections", conns.get("open")
    )
    yield counter(
        "dsonode_socket_connections", "Retrieval socket connections accepted", conns.get("served")
    )
    yield counter("dsonode_socket_requests", "JSON-RPC requests received", conns.get("requests"))
    yield counter("dsonode_socket_errors", "JSON-RPC error replies sent", conns.get("errors"))

    net = snap.get("network")
    if not isinstance(net, Mapping):
        return
    yield from _network_families(net, gauge, counter)


def _network_families(net: Mapping[str, Any], gauge: Callable, counter: Callable) -> Iterator[Any]:
    from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

    yield gauge("dsonode_network_running", "1 while the libp2p host runs", net.get("running"))
    yield gauge(
        "dsonode_peers_connected", "Connected libp2p peers", len(net.get("connected") or [])
    )
    yield gauge(
        "dsonode_mesh_peers", "GossipSub mesh peers on the space topic", net.get("mesh_peers")
    )
    yield gauge(
        "dsonode_peers_in_space",
        "Connected peers subscribed to this node's space topic",
        net.get("space_peers"),
    )
    known = net.get("known_peers")
    yield gauge(
        "dsonode_peers_known",
        "Peers in the node's persisted peer book (configured, discovered, added)",
        len(known) if isinstance(known, list) else None,
    )
    yield gauge(
        "dsonode_peers_in_peerstore",
        "Peers in the libp2p peerstore (met or told of)",
        net.get("peerstore_peers"),
    )
    mesh = net.get("mesh")
    if isinstance(mesh, Mapping):
        mesh_fam = GaugeMetricFamily(
            "dsonode_gossip_mesh_degree", "GossipSub mesh peers, by topic", labels=["topic"]
        )
        for topic, size in sorted(mesh.items()):
            if _num(size) is not None:
                mesh_fam.add_metric([str(topic)], float(size))
        yield mesh_fam

    pipe = net.get("pipeline") or {}
    rejected = {str(k): v for k, v in (pipe.get("rejected") or {}).items() if _num(v) is not None}
    accepted = _num(pipe.get("accepted"))
    if accepted is not None:
        yield counter(
            "dsonode_items_received",
            "Gossiped items validated (accepted + rejected; oversize and bad_batch count a "
            "whole message as one)",
            accepted + sum(float(v) for v in rejected.values()),
        )
        yield counter(
            "dsonode_items_accepted", "Gossiped items that passed the validation pipeline", accepted
        )
    fam = CounterMetricFamily(
        "dsonode_items_rejected", "Gossiped items rejected, by reason", labels=["reason"]
    )
    for reason, count in sorted(rejected.items()):
        fam.add_metric([reason], float(count))
    yield fam
    yield counter(
        "dsonode_messages_dropped_graylisted",
        "Gossip messages from graylisted peers, dropped unread",
        pipe.get("dropped_graylisted"),
    )
    yield gauge(
        "dsonode_peers_graylisted", "Peers graylisted now", len(pipe.get("graylisted") or [])
    )

    # The daemon's own counters (experiences_stored, own_submissions, consensus_updates, ...).
    for name, value in sorted((net.get("counters") or {}).items()):
        if _num(value) is not None:
            yield counter(f"dsonode_{_snake(name)}", f"Daemon counter {name}", value)

    # GossipStats: every integer field is a running count.
    for name, value in sorted((net.get("gossip") or {}).items()):
        if _num(value) is not None:
            yield counter(f"dsonode_gossip_{_snake(name)}", f"Gossip counter {name}", value)

    queues = net.get("queues") or {}
    yield gauge(
        "dsonode_gossip_outbox_pending",
        "Items queued to publish, batches in flight and messages parked by the router",
        queues.get("outbox"),
    )
    yield gauge(
        "dsonode_gossip_peer_queue_max",
        "Longest libp2p per-peer outbound queue (libp2p drops beyond 32)",
        queues.get("peer_queue_max"),
    )

    # Catch-up sync (dsonode.net.daemon `sync_stats`): running counts, `active` sessions,
    # `errors` by exception name, and `served` (the same for the requests we answered).
    sync = net.get("sync")
    if isinstance(sync, Mapping):
        yield from _sync_families("dsonode_sync", sync, gauge, counter)
        served = sync.get("served")
        if isinstance(served, Mapping):
            yield from _sync_families("dsonode_sync_served", served, gauge, counter)

    cons = net.get("consensus") or {}
    yield gauge("dsonode_consensus_quorum", "Accepted submissions that confirm", cons.get("quorum"))
    yield gauge(
        "dsonode_network_size_estimate",
        "Nodes this node believes the space has: the larger of the submitting authors seen "
        "in the last week (with itself) and its connected space peers + 1",
        cons.get("network_size"),
    )
    yield gauge(
        "dsonode_committee_n",
        "The committee draw's n: submitting authors seen in the last week, with itself",
        cons.get("committee_n"),
    )

    reps = net.get("reputation") or {}
    rep_fam = GaugeMetricFamily(
        "dsonode_reputation_submissions",
        "Submissions judged by consensus, summed over all authors, by verdict",
        labels=["verdict"],
    )
    for verdict in ("accepted", "rejected"):
        rep_fam.add_metric(
            [verdict],
            sum(float(_num(r.get(verdict)) or 0) for r in reps.values() if isinstance(r, Mapping)),
        )
    yield rep_fam
    yield gauge("dsonode_reputation_authors", "Authors with a reputation record", len(reps))


#: Sync figures that are states, not running counts.
_SYNC_GAUGES = {
    "active": "Catch-up sessions running now",
    "peers_without_sync": "Connected peers that do not speak /dso/sync/1.0.0 (not pulled from)",
}


def _sync_families(
    prefix: str, sync: Mapping[str, Any], gauge: Callable, counter: Callable
) -> Iterator[Any]:
    from prometheus_client.core import CounterMetricFamily

    for name, value in sorted(sync.items()):
        if name in _SYNC_GAUGES:
            yield gauge(f"{prefix}_{_snake(name)}", _SYNC_GAUGES[name], value)
        elif _num(value) is not None:
            yield counter(f"{prefix}_{_snake(name)}", f"Catch-up sync: {name}", value)
        elif name == "errors" and isinstance(value, Mapping):
            fam = CounterMetricFamily(
                f"{prefix}_errors", "Catch-up sync failures, by error", labels=["error"]
            )
            for error, count in sorted(value.items()):
                if _num(count) is not None:
                    fam.add_metric([str(error)[:100]], float(count))
            yield fam


# ----------------------------------------------------------------------------------------
# The node's registry


class NodeMetrics:
    """One registry per node: the scrape-time collector, the latency histogram, process figures.

    `service` is the node's RetrievalService (its `stats()` is the source of truth), `daemon`
    the NetDaemon or None. `bind_loop()` must be called on the event loop before scrapes, so
    the collector (which runs in a worker thread) can read the gossip queues on the loop.
    """

    def __init__(self, service: RetrievalService, daemon: NetDaemon | None = None) -> None:
        from prometheus_client import (
            CollectorRegistry,
            Counter,
            GCCollector,
            Histogram,
            PlatformCollector,
            ProcessCollector,
        )

        self.service = service
        self.daemon = daemon
        self.registry = CollectorRegistry()
        self.latency = Histogram(
            "dsonode_rpc_request_duration_seconds",
            "Time to answer one JSON-RPC request on the retrieval socket, by method",
            ["method"],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.failures = Counter(
            "dsonode_rpc_request_errors",
            "JSON-RPC requests answered with an error, by method",
            ["method"],
            registry=self.registry,
        )
        ProcessCollector(registry=self.registry)
        PlatformCollector(registry=self.registry)
        GCCollector(registry=self.registry)
        self.registry.register(_SnapshotCollector(self.snapshot))
        self._token: Any = None
        self._render_lock = threading.Lock()
        self.scrapes = 0

    def observe_request(self, method: str, seconds: float, ok: bool) -> None:
        """The RPC server's hook (event loop): one answered request."""
        self.latency.labels(method).observe(seconds)
        if not ok:
            self.failures.labels(method).inc()

    def bind_loop(self) -> None:
        import trio

        self._token = trio.lowlevel.current_trio_token()

    def _queues(self) -> dict[str, int]:
        """On the event loop: gossip queue depths (the gossip layer is not thread-safe)."""
        gossip = self.daemon.gossip if self.daemon is not None else None
        if gossip is None:
            return {}
        return {"outbox": gossip.pending(), "peer_queue_max": gossip.max_peer_queue()}

    def snapshot(self) -> dict[str, Any]:
        """From a worker thread: the socket's stats plus the gossip queue depths."""
        snap = dict(self.service.stats())
        net = snap.get("network")
        if isinstance(net, dict) and self._token is not None and net.get("running"):
            import trio

            with contextlib.suppress(trio.RunFinishedError):
                net["queues"] = trio.from_thread.run_sync(self._queues, trio_token=self._token)
        return snap

    def render(self) -> bytes:
        """The Prometheus text exposition (from a worker thread)."""
        from prometheus_client import generate_latest

        with self._render_lock:
            self.scrapes += 1
            return generate_latest(self.registry)


class _SnapshotCollector:
    """A prometheus_client collector that reads the node's state at scrape time."""

    def __init__(self, read: Callable[[], Mapping[str, Any]]) -> None:
        self._read = read

    def collect(self) -> Iterator[Any]:
        try:
            snap = self._read()
        except Exception:
            # A scrape must never take the node down; the process metrics still answer.
            log.exception("cannot read the node's state for metrics")
            return
        yield from metric_families(snap)

    def describe(self) -> list[Any]:
        return []  # dynamic families: nothing to check for duplicates at registration


# ----------------------------------------------------------------------------------------
# The HTTP responder (trio)


@dataclass(frozen=True)
class HttpLimits:
    max_connections: int = 8
    max_request_bytes: int = 8192
    read_timeout_s: float = 5.0
    send_timeout_s: float = 10.0


@dataclass(frozen=True)
class Route:
    status: int
    reason: str
    body: bytes = b""
    metrics: bool = False  # the body is a fresh scrape


def route(head: bytes) -> Route:
    """What to answer to one request head (request line + headers, without the blank line)."""
    line = head.split(b"\r\n", 1)[0]
    parts = line.split(b" ")
    if len(parts) != 3 or not parts[2].startswith(b"HTTP/1."):
        return Route(400, "Bad Request", b"bad request line\n")
    method, target = parts[0], parts[1]
    if method not in (b"GET", b"HEAD"):
        return Route(405, "Method Not Allowed", b"only GET and HEAD\n")
    path = target.split(b"?", 1)[0]
    if path == b"/metrics":
        return Route(200, "OK", metrics=True)
    if path == b"/":
        return Route(200, "OK", b"dsonode metrics: GET /metrics\n")
    return Route(404, "Not Found", b"not found; try /metrics\n")


class MetricsServer:
    """Serves `metrics.render()` on an already bound TCP socket until cancelled."""

    def __init__(
        self, metrics: NodeMetrics, sock: _socket.socket, limits: HttpLimits | None = None
    ):
        self.metrics = metrics
        self.sock = sock
        self.limits = limits or HttpLimits()
        self.address = _hostport(*sock.getsockname()[:2])
        self.open_connections = 0

    async def serve(self, *, task_status: Any = None) -> None:
        import trio

        self.metrics.bind_loop()
        listener = trio.SocketListener(trio.socket.from_stdlib_socket(self.sock))
        self._limiter = trio.CapacityLimiter(1)  # one scrape rendered at a time
        log.info("serving metrics on http://%s/metrics", self.address)
        try:
            async with trio.open_nursery() as nursery:
                await nursery.start(trio.serve_listeners, self._serve_stream, [listener])
                if task_status is not None:
                    task_status.started(self.address)
        finally:
            with contextlib.suppress(OSError):
                await listener.aclose()

    async def _serve_stream(self, stream: Any) -> None:
        import trio

        async with stream:
            if self.open_connections >= self.limits.max_connections:
                with trio.move_on_after(1.0), contextlib.suppress(trio.BrokenResourceError):
                    await stream.send_all(_response(Route(503, "Service Unavailable", b"busy\n")))
                return
            self.open_connections += 1
            try:
                await self._converse(stream)
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                pass
            except Exception:
                log.exception("metrics connection failed")
            finally:
                self.open_connections -= 1

    async def _converse(self, stream: Any) -> None:
        import trio

        head = await self._read_head(stream)
        if head is None:
            return
        if isinstance(head, Route):
            answer = head
        else:
            answer = route(head)
            if answer.metrics:
                body = await trio.to_thread.run_sync(self.metrics.render, limiter=self._limiter)
                answer = Route(200, "OK", body, metrics=True)
        data = _response(answer)
        if isinstance(head, bytes) and head.startswith(b"HEAD "):
            data = data[: data.index(b"\r\n\r\n") + 4]  # the headers alone
        with trio.move_on_after(self.limits.send_timeout_s):
            await stream.send_all(data)

    async def _read_head(self, stream: Any) -> bytes | Route | None:
        """The request head, an error Route (too large), or None (timeout / closed early)."""
        import trio

        buf = bytearray()
        with trio.move_on_after(self.limits.read_timeout_s):
            while True:
                end = buf.find(b"\r\n\r\n")
                if end >= 0:
                    return bytes(buf[:end])
                if len(buf) > self.limits.max_request_bytes:
                    return Route(431, "Request Header Fields Too Large", b"request too large\n")
                chunk = await stream.receive_some(4096)
                if not chunk:
                    return None
                buf += chunk
        return None


def _response(r: Route) -> bytes:
    from prometheus_client import CONTENT_TYPE_LATEST

    ctype = CONTENT_TYPE_LATEST if r.metrics else "text/plain; charset=utf-8"
    head = (
        f"HTTP/1.1 {r.status} {r.reason}\r\n"
        f"Content-Type: {ctype}\r\n"
        f"Content-Length: {len(r.body)}\r\n"
        f"Date: {time.strftime('%a, %d %b %Y %H:%M:%S GMT', time.gmtime())}\r\n"
        "Cache-Control: no-store\r\n"
        "Connection: close\r\n\r\n"
    )
    return head.encode("ascii") + r.body
