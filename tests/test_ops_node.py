"""Operations on real nodes: a 2-node network on 127.0.0.N, node 1 with Prometheus metrics
and JSON logs at DEBUG. Real scrapes (httpx), the real `dsonode status`/`dsonode peers`
commands, the node's real log output. Every wait is bounded; both processes are stopped.

The tests share the two nodes (starting them is most of the cost) and run in file order;
the last one stops node 1 itself to check its shutdown and its complete log.
"""

from __future__ import annotations

import base64
import json
import signal
import subprocess
import sys

import httpx
import pytest
from netutil import free_port, node_identity, node_mesh, wait_until
from prometheus_client.parser import text_string_to_metric_families

from dsonode.identity import load_key, private_key_bytes

pytestmark = pytest.mark.slow

IPS = ("127.0.0.21", "127.0.0.22")


class Net:
    def __init__(self, nodes, peer_ids, keys, metrics_url):
        self.nodes, self.peer_ids, self.keys, self.metrics_url = nodes, peer_ids, keys, metrics_url


@pytest.fixture(scope="module")
def net(tmp_path_factory):
    metrics_port = free_port(IPS[0])
    node1_args = ["--metrics-listen", f"{IPS[0]}:{metrics_port}"]
    node1_args += ["--log-format", "json", "--log-level", "DEBUG"]
    tmp = tmp_path_factory.mktemp("ops")
    with node_mesh(tmp, IPS, [node1_args], mesh_timeout=60) as nodes:
        keys = [load_key(n.data_dir / "node.key") for n in nodes]  # made by node_mesh
        peer_ids = [node_identity(n.data_dir)[1] for n in nodes]
        yield Net(nodes, peer_ids, keys, f"http://{IPS[0]}:{metrics_port}/metrics")


def _scrape(url: str) -> dict[tuple[str, tuple], float]:
    r = httpx.get(url, timeout=30)
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("text/plain; version=")
    out = {}
    for fam in text_string_to_metric_families(r.text):  # raises on invalid exposition text
        for s in fam.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def _value(samples, name, **labels) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def test_metrics_move_after_an_add_and_a_search(net):
    n1 = net.nodes[0]
    before = _scrape(net.metrics_url)
    assert _value(before, "dsonode_peers_connected") == 1
    assert _value(before, "dsonode_network_running") == 1
    text = "When a flaky test appears, record its seed before rerunning it."
    with n1.client() as c:
        added = c.add_experience(text, "coding", ["testing"])
        assert added["new"]
        assert c.search("flaky test seed", k=3)[0]["id"] == added["id"]
    after = _scrape(net.metrics_url)
    for method in ("add_experience", "search"):
        key = "dsonode_rpc_request_duration_seconds_count"
        assert _value(after, key, method=method) == _value(before, key, method=method) + 1
        assert _value(after, "dsonode_rpc_request_duration_seconds_sum", method=method) > 0
    assert _value(after, "dsonode_store_entries", db="experiences") == (
        _value(before, "dsonode_store_entries", db="experiences") + 1
    )
    assert _value(after, "dsonode_socket_requests_total") > _value(
        before, "dsonode_socket_requests_total"
    )
    assert _value(after, "dsonode_gossip_published_items_total") >= _value(
        before, "dsonode_gossip_published_items_total"
    )

    # Node 2 receives the experience, submits its own code, and node 1 accepts it.
    def accepted_from_peer():
        s = _scrape(net.metrics_url)
        moved = _value(s, "dsonode_items_accepted_total") > _value(
            before, "dsonode_items_accepted_total"
        )
        return s if moved and _value(s, "dsonode_consensus_updates_total") > 0 else None

    s = wait_until("node 2's submission at node 1", accepted_from_peer, 60, net.nodes)
    assert _value(s, "dsonode_items_received_total") >= _value(s, "dsonode_items_accepted_total")
    assert _value(s, "dsonode_consensus_items", state="unconfirmed") + _value(
        s, "dsonode_consensus_items", state="confirmed"
    ) == _value(s, "dsonode_index_items")


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "dsonode", *args], capture_output=True, text=True, timeout=60
    )


def test_status_and_peers_show_the_other_peer(net):
    n1 = net.nodes[0]
    proc = _cli("status", "--data-dir", str(n1.data_dir))
    assert proc.returncode == 0, proc.stderr
    assert net.peer_ids[0] in proc.stdout and "1 connected" in proc.stdout
    assert "consensus" in proc.stdout and "confirmed /" in proc.stdout

    proc = _cli("status", "--socket", str(n1.socket_path), "--json")
    status = json.loads(proc.stdout)
    assert status["network"]["peer_id"] == net.peer_ids[0]
    assert status["network"]["connected"] == 1
    assert any(a.startswith(f"/ip4/{IPS[0]}/") for a in status["network"]["listen"])

    proc = _cli("peers", "--data-dir", str(n1.data_dir))
    assert proc.returncode == 0, proc.stderr
    row = next(line for line in proc.stdout.splitlines() if net.peer_ids[1] in line)
    assert row.split()[1] == "yes"  # connected

    rows = json.loads(_cli("peers", "--data-dir", str(n1.data_dir), "--json").stdout)
    other = next(r for r in rows if r["peer_id"] == net.peer_ids[1])
    assert other["connected"] and not other["graylisted"] and not other["self"]


def test_shutdown_and_json_logs_without_key_material(net):
    n1 = net.nodes[0]
    with n1.client() as c:  # one more request, so the log has DEBUG-level traffic in it
        c.stats()
    n1.proc.send_signal(signal.SIGINT)  # Ctrl-C: the same clean path as SIGTERM
    assert n1.proc.wait(timeout=30) == 0
    with pytest.raises(httpx.ConnectError):  # the metrics listener is gone with the node
        httpx.get(net.metrics_url, timeout=5)
    raw = n1.log_path.read_bytes()
    records = []
    for line in raw.decode().splitlines():
        if line.startswith("dsonode: serving retrieval on "):  # the ready line, on stdout
            continue
        try:
            obj = json.loads(line)  # every other line is one JSON object
        except ValueError:
            raise AssertionError(f"not a JSON line: {line!r}") from None
        assert {"ts", "level", "logger", "msg"} <= obj.keys(), line
        records.append(obj)
    msgs = [r["msg"] for r in records]
    assert any("metrics on http://" in m for m in msgs)
    assert any(r["level"] == "DEBUG" for r in records)
    assert msgs[-1] == "stopped"
    # No private key material, in any encoding the node could have printed.
    seed = private_key_bytes(net.keys[0])
    pem_lines = (n1.data_dir / "node.key").read_text().splitlines()
    secrets = [
        seed,
        seed.hex().encode(),
        seed.hex().upper().encode(),
        base64.b64encode(seed),
        base64.b64encode(seed).rstrip(b"="),
        base64.urlsafe_b64encode(seed).rstrip(b"="),
        *(line.encode() for line in pem_lines if not line.startswith("-----")),
    ]
    for secret in secrets:
        assert secret not in raw
