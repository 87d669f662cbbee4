"""Operations without a running model: metric families from a stats snapshot, the metrics
listen rules, the HTTP responder over a real socket, JSON log lines, status/peers summaries.

The node-level tests (a real 2-node network, real scrapes, real logs) are in test_ops_node.py.
"""

from __future__ import annotations

import json
import logging
import socket
import subprocess
import sys

import httpx
import pytest
import trio
from prometheus_client.parser import text_string_to_metric_families

from dsonode.cli import main
from dsonode.config.loader import ConfigError, config_from_mapping
from dsonode.ops.cli import format_ago, format_duration, peer_rows, status_summary
from dsonode.ops.logs import JsonFormatter, setup_logging
from dsonode.ops.metrics import (
    HttpLimits,
    MetricsError,
    MetricsServer,
    NodeMetrics,
    bind_tcp,
    metric_families,
    parse_metrics_listen,
    route,
)

PEER_A = "12D3KooWD3eckifWpRn9wQpMG9R9hX3sD158z7EqHWmweQAJU5SA"
PEER_B = "12D3KooWRBhwfeP2Y9CDkFRBAZ1pmxUadH36TNuhXMfbWEeYSTzK"

#: The shape of the socket's `stats` result of a networked node (see api/service.py and
#: net/daemon.py), with made-up figures.
STATS = {
    "version": "0.1.0",
    "uptime_s": 3723.5,
    "space_id": "ab" * 32,
    "model": "dso-minilm-l6-7680",
    "dim": 7680,
    "author": "cd" * 32,
    "indexed": 10,
    "consensus": {"confirmed": 7, "total": 10},
    "store": {"experiences": 10, "submissions": 25, "consensus": 10},
    "connections": {"open": 1, "served": 5, "requests": 42, "errors": 2},
    "network": {
        "running": True,
        "peer_id": PEER_A,
        "listen": ["/ip4/127.0.0.2/tcp/4001/p2p/" + PEER_A],
        "connected": [PEER_B],
        "space_peers": 1,
        # the persisted peer book (dsonode.net.connmgr) and the libp2p peerstore
        "known_peers": [
            {
                "peer_id": f"peer{i}" if i else PEER_B,
                "addrs": [] if i else ["/ip4/127.0.0.3/tcp/4001"],
                "last_seen_ms": 0 if i else 1_700_000_000_000,
                "score": 0.0,
                "source": "dht" if i else "config",
                "connected": i == 0,
            }
            for i in range(4)
        ],
        "peerstore_peers": 6,
        "mesh_peers": 1,
        "mesh": {"/dso/1/space/ab": 1, "/other": 3},
        "pipeline": {
            "accepted": 30,
            "rejected": {"duplicate": 4, "signature": 1},
            "dropped_graylisted": 3,
            "graylisted": [],
        },
        "peers": {
            PEER_B: {
                "accepted": 30,
                "rejected": {"duplicate": 4, "signature": 1},
                "penalty": 12.5,
                "graylisted": False,
            }
        },
        "gossip": {"published_msgs": 6, "published_items": 20, "per_topic_received": {"t": 3}},
        "counters": {"own_submissions": 8, "consensus_updates": 15, "items_accepted": 999},
        "sync": {
            "runs": 4,
            "ok": 3,
            "active": 1,
            "errors": {"TooSlow": 1},
            "served": {"streams": 2, "items_sent": 17, "errors": {}},
        },
        "consensus": {"quorum": 3, "network_size": 5, "committee_n": 2},
        "reputation": {
            "cd" * 32: {"accepted": 8, "rejected": 0, "score": 0.9, "peer_id": PEER_A},
            "ef" * 32: {"accepted": 5, "rejected": 2, "score": 0.667, "peer_id": PEER_B},
        },
    },
}


def _samples(text: str) -> dict[tuple[str, tuple], float]:
    out = {}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def _exposition(snap) -> str:
    from prometheus_client import CollectorRegistry, generate_latest

    class C:
        def collect(self):
            return metric_families(snap)

    reg = CollectorRegistry()
    reg.register(C())
    return generate_latest(reg).decode()


def test_metric_families_follow_the_node_state():
    got = _samples(_exposition(STATS))
    assert got[("dsonode_consensus_items", (("state", "confirmed"),))] == 7
    assert got[("dsonode_consensus_items", (("state", "unconfirmed"),))] == 3
    assert got[("dsonode_store_entries", (("db", "submissions"),))] == 25
    assert got[("dsonode_items_accepted_total", ())] == 30
    assert got[("dsonode_items_received_total", ())] == 35
    assert got[("dsonode_items_rejected_total", (("reason", "signature"),))] == 1
    assert got[("dsonode_messages_dropped_graylisted_total", ())] == 3
    assert got[("dsonode_peers_connected", ())] == 1
    assert got[("dsonode_mesh_peers", ())] == 1
    assert got[("dsonode_peers_in_space", ())] == 1
    assert got[("dsonode_peers_known", ())] == 4
    assert got[("dsonode_peers_in_peerstore", ())] == 6
    assert got[("dsonode_gossip_mesh_degree", (("topic", "/other"),))] == 3
    assert got[("dsonode_network_size_estimate", ())] == 5
    assert got[("dsonode_committee_n", ())] == 2
    assert got[("dsonode_own_submissions_total", ())] == 8
    assert got[("dsonode_consensus_updates_total", ())] == 15
    assert got[("dsonode_gossip_published_messages_total", ())] == 6
    assert got[("dsonode_sync_runs_total", ())] == 4
    assert got[("dsonode_sync_active", ())] == 1
    assert got[("dsonode_sync_errors_total", (("error", "TooSlow"),))] == 1
    assert got[("dsonode_sync_served_items_sent_total", ())] == 17
    assert got[("dsonode_reputation_submissions", (("verdict", "rejected"),))] == 2
    assert got[("dsonode_socket_requests_total", ())] == 42
    # The daemon counter named like our pipeline figure is not emitted twice.
    assert got[("dsonode_items_accepted_total", ())] == 30


def test_metric_families_of_a_node_without_network():
    snap = {k: v for k, v in STATS.items() if k != "network"}
    text = _exposition(snap)
    got = _samples(text)
    assert got[("dsonode_index_items", ())] == 10
    assert "dsonode_peers_connected" not in text


@pytest.mark.parametrize(
    ("text", "allow", "expected"),
    [
        ("127.0.0.1:9464", False, ("127.0.0.1", 9464)),
        ("127.0.0.9:0", False, ("127.0.0.9", 0)),
        ("localhost:9000", False, ("127.0.0.1", 9000)),
        ("[::1]:9464", False, ("::1", 9464)),
        ("0.0.0.0:9464", True, ("0.0.0.0", 9464)),
        ("192.0.2.7:9464", True, ("192.0.2.7", 9464)),
    ],
)
def test_metrics_listen_accepted(text, allow, expected):
    assert parse_metrics_listen(text, allow_non_loopback=allow) == expected


@pytest.mark.parametrize(
    ("text", "match"),
    [
        ("0.0.0.0:9464", "not a loopback address"),
        ("192.0.2.7:9464", "not a loopback address"),
        ("[2001:db8::1]:9464", "not a loopback address"),
        ("example.com:9464", "must be an IP address"),
        ("9464", "must look like"),
        ("127.0.0.1:65536", "must look like"),
        ("127.0.0.1:", "must look like"),
        ("::1:9464", "brackets"),
    ],
)
def test_metrics_listen_refused(text, match):
    with pytest.raises(MetricsError, match=match):
        parse_metrics_listen(text)


def test_config_refuses_non_loopback_metrics_unless_allowed():
    from dsonode.node.node import node_config  # the composition root: imports torch

    with pytest.raises(ConfigError, match=r"metrics\.listen.*not a loopback"):
        config_from_mapping({"metrics": {"enabled": True, "listen": "0.0.0.0:9464"}}, env={})
    cfg = config_from_mapping(
        {"metrics": {"enabled": True, "listen": "0.0.0.0:9464", "allow_non_loopback": True}},
        env={},
    )
    node = node_config(cfg)
    assert node.metrics_listen == "0.0.0.0:9464" and node.metrics_allow_non_loopback
    off = config_from_mapping({"node": {"log_format": "json", "log_level": "DEBUG"}}, env={})
    node = node_config(off)
    assert node.metrics_listen is None
    assert (node.log_format, node.log_level) == ("json", "DEBUG")


def test_run_refuses_a_non_loopback_metrics_listen_before_loading_the_model(tmp_path):
    proc = subprocess.run(
        [
            *(sys.executable, "-m", "dsonode", "run", "--data-dir", str(tmp_path / "d")),
            *("--metrics-listen", "192.0.2.7:9464"),
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 2, proc.stderr
    assert "not a loopback address" in proc.stderr
    assert "loading the embedding model" not in proc.stderr


def test_route():
    assert route(b"GET /metrics HTTP/1.1\r\nHost: x").metrics
    assert route(b"HEAD /metrics?x=1 HTTP/1.0").metrics
    assert route(b"POST /metrics HTTP/1.1").status == 405
    assert route(b"GET /nope HTTP/1.1").status == 404
    assert route(b"garbage").status == 400
    assert route(b"GET /metrics SPDY/3").status == 400


class _FakeStatsService:
    """A stand-in for RetrievalService.stats() only: the HTTP responder is what is tested
    here (the real node is scraped in test_ops_node.py)."""

    def stats(self):
        return {k: v for k, v in STATS.items() if k != "network"}


def test_http_responder_is_bounded_over_a_real_socket():
    ip = "127.0.0.7"
    sock = bind_tcp(ip, 0)
    port = sock.getsockname()[1]
    metrics = NodeMetrics(_FakeStatsService())
    metrics.observe_request("search", 0.02, True)
    server = MetricsServer(
        metrics, sock, HttpLimits(max_connections=2, max_request_bytes=1024, read_timeout_s=0.5)
    )
    results: dict[str, object] = {}

    def client_side() -> None:
        base = f"http://{ip}:{port}"
        with httpx.Client(timeout=10) as c:
            r = c.get(base + "/metrics")
            results["metrics"] = (r.status_code, r.headers["content-type"], r.text)
            results["head"] = c.head(base + "/metrics").status_code
            results["post"] = c.post(base + "/metrics").status_code
            results["404"] = c.get(base + "/x").status_code
            big = c.get(base + "/metrics", headers={"X-Big": "a" * 4000})
            results["big"] = big.status_code
        # A client that never finishes its request is dropped after read_timeout_s.
        with socket.create_connection((ip, port), timeout=10) as s:
            s.sendall(b"GET /metrics HTTP/1.1\r\n")
            results["slow"] = s.recv(100)
        # Connections beyond max_connections get 503 at once.
        held = [socket.create_connection((ip, port), timeout=10) for _ in range(2)]
        try:
            with socket.create_connection((ip, port), timeout=10) as s:
                results["busy"] = s.recv(100)
        finally:
            for s in held:
                s.close()

    async def main_() -> None:
        async with trio.open_nursery() as nursery:
            await nursery.start(server.serve)
            await trio.to_thread.run_sync(client_side)
            nursery.cancel_scope.cancel()

    trio.run(main_)
    status, ctype, text = results["metrics"]
    assert status == 200 and ctype.startswith("text/plain; version=")
    got = _samples(text)
    assert got[("dsonode_rpc_request_duration_seconds_count", (("method", "search"),))] == 1
    assert got[("dsonode_index_items", ())] == 10
    assert ("process_cpu_seconds_total", ()) in got
    assert results["head"] == 200 and results["post"] == 405 and results["404"] == 404
    assert results["big"] == 431
    assert results["slow"] == b""  # closed without an answer
    assert results["busy"].startswith(b"HTTP/1.1 503")
    with pytest.raises(OSError):  # the listener is closed once the task ends
        socket.create_connection((ip, port), timeout=2).close()


def test_binding_a_busy_port_is_a_clear_error():
    sock = bind_tcp("127.0.0.7", 0)
    try:
        with pytest.raises(MetricsError, match="already in use"):
            bind_tcp("127.0.0.7", sock.getsockname()[1])
    finally:
        sock.close()


def test_json_log_lines(capsys):
    import io

    stream = io.StringIO()
    setup_logging("json", "DEBUG", stream)
    try:
        log = logging.getLogger("dsonode.test")
        log.debug("two\nlines %s", "here", extra={"peer": PEER_B, "items": 3})
        try:
            raise ValueError("boom")
        except ValueError:
            log.exception("failed")
    finally:
        setup_logging("text", "INFO")
    lines = stream.getvalue().splitlines()
    assert len(lines) == 2
    first, second = (json.loads(line) for line in lines)
    assert first["msg"] == "two\nlines here" and first["level"] == "DEBUG"
    assert first["logger"] == "dsonode.test" and first["peer"] == PEER_B and first["items"] == 3
    assert first["ts"].endswith("Z") and "T" in first["ts"]
    assert second["level"] == "ERROR" and "ValueError: boom" in second["exc"]
    assert "Traceback" in second["exc"]


def test_json_formatter_survives_odd_extras():
    rec = logging.LogRecord("x", logging.INFO, "p", 1, "m %d", (1,), None)
    rec.blob = b"\x00\xff"  # not JSON: shown as its repr
    rec.obj = object()
    out = json.loads(JsonFormatter().format(rec))
    assert out["msg"] == "m 1" and out["blob"] == repr(b"\x00\xff")
    assert out["obj"].startswith("<object")


def test_status_and_peers_summaries():
    s = status_summary(STATS)
    assert s["consensus"] == {"confirmed": 7, "total": 10}
    assert s["network"]["connected"] == 1 and s["network"]["rejected"] == 5
    assert (s["network"]["space_peers"], s["network"]["known"], s["network"]["mesh"]) == (1, 4, 1)
    assert s["network"]["discovered"] == 3  # the book's peers found by the DHT
    assert s["network"]["mesh_by_topic"] == {"/dso/1/space/ab": 1, "/other": 3}
    assert (s["network"]["network_size"], s["network"]["committee_n"]) == (5, 2)
    rows = peer_rows(STATS)
    # connected first, then the rest of the book, self last
    assert [r["peer_id"] for r in rows] == [PEER_B, "peer1", "peer2", "peer3", PEER_A]
    b, p1, a = rows[0], rows[1], rows[-1]
    assert b["connected"] and b["accepted"] == 30 and b["rejected"] == 5 and b["penalty"] == 12.5
    assert b["reputation"] == {"score": 0.667, "accepted": 5, "rejected": 2}
    assert (b["known"], b["source"], b["last_seen_ms"]) == (True, "config", 1_700_000_000_000)
    assert b["addrs"] == ["/ip4/127.0.0.3/tcp/4001"]
    assert (p1["known"], p1["connected"], p1["source"], p1["last_seen_ms"]) == (
        True,
        False,
        "dht",
        None,  # never connected
    )
    assert p1["reputation"] is None and p1["accepted"] == 0
    assert a["self"] and not a["connected"] and not a["known"] and a["source"] is None
    assert peer_rows({k: v for k, v in STATS.items() if k != "network"}) == []
    assert format_duration(3723.5) == "1h 02m 03s" and format_duration(None) == "?"


@pytest.mark.parametrize(
    "command",
    [
        ["status"],
        ["peers"],
        ["peers", "add", f"/ip4/127.0.0.3/tcp/4001/p2p/{PEER_B}"],
        ["peers", "forget", PEER_B],
    ],
)
def test_no_node_running_is_exit_1(tmp_path, capsys, command):
    assert main([*command, "--data-dir", str(tmp_path)]) == 1
    assert "no node is running" in capsys.readouterr().err
    # the client options may also come before the subcommand (not reset by its defaults)
    assert main([command[0], "--data-dir", str(tmp_path), *command[1:]]) == 1
    assert str(tmp_path) in capsys.readouterr().err


def test_format_ago():
    assert format_ago(None, 5_000) == "-" and format_ago(0, 5_000) == "-"
    assert format_ago(4_500, 5_000) == "now"
    assert format_ago(5_000, 5_000 + 3_723_000) == "1h 02m 03s ago"


def test_status_without_a_peer_book_shows_no_discovery_figure():
    """A node without the connection manager's book (e.g. before the network runs)."""
    net = {k: v for k, v in STATS["network"].items() if k != "known_peers"}
    s = status_summary({**STATS, "network": net})
    assert s["network"]["known"] == 0 and s["network"]["discovered"] is None
