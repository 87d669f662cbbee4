"""The pure testnet planner, the seed-file parser and the status table (no processes)."""

from __future__ import annotations

import io
import json

import pytest

from dsonode.testnet.plan import (
    PlanError,
    ServiceSpec,
    host_ip,
    plan_from_services,
    plan_testnet,
)
from dsonode.testnet.samples import load_samples, load_seed_file, parse_seed_lines

PID = "12D3KooWD3eckifWpRn9wQpMG9R9hX3sD158z7EqHWmweQAJU5SA"


def test_full_mesh_on_consecutive_loopback_addresses():
    plan = plan_testnet(
        5, ports=[4001 + i for i in range(5)], byzantine=1, attack="sign_flip", full_mesh=True
    )
    assert not plan.discovered and plan.wanted_peers(0, 8) == 4
    assert [n.listen for n in plan.nodes] == [
        f"/ip4/127.0.0.{i + 2}/tcp/{4001 + i}" for i in range(5)
    ]
    assert [n.name for n in plan.nodes] == ["node1", "node2", "node3", "node4", "node5"]
    # the liars sit just before the last node: node 1 seeds and node 5 answers, both honest
    assert plan.byzantine == [3] and plan.nodes[3].attack == "sign_flip"
    assert plan.seed_node == 0 and plan.query_node == 4
    for i in range(5):
        assert plan.neighbours(i) == set(range(5)) - {i}
        assert i not in plan.nodes[i].dials
    addrs = plan.peer_multiaddrs(0, [PID] * 5)
    assert addrs[0] == f"/ip4/127.0.0.3/tcp/4002/p2p/{PID}" and len(addrs) == 4


def test_default_plan_gives_every_node_the_bootstrap_only():
    plan = plan_testnet(20, ports=[4001 + i for i in range(20)])
    assert plan.discovered and plan.nodes[0].dials == ()
    assert all(n.dials == (0,) for n in plan.nodes[1:])
    assert plan.peer_multiaddrs(3, [PID] * 20) == [f"/ip4/127.0.0.2/tcp/4001/p2p/{PID}"]
    # joined = low water peers (or everyone in a small net), found beyond the dial list
    assert plan.wanted_peers(0, 8) == 8 and plan.wanted_peers(5, 8) == 8
    assert plan_testnet(3, ports=[1, 2, 3]).wanted_peers(2, 8) == 2


def test_plan_refuses_what_it_cannot_run():
    with pytest.raises(PlanError, match="--nodes"):
        plan_testnet(0, ports=[])
    with pytest.raises(PlanError, match="--nodes"):
        plan_testnet(65, ports=[1] * 65)
    with pytest.raises(PlanError, match="at most 1"):
        plan_testnet(3, ports=[1, 2, 3], byzantine=2)
    with pytest.raises(PlanError, match="--attack"):
        plan_testnet(3, ports=[1, 2, 3], byzantine=1, attack="nice")
    with pytest.raises(PlanError, match="port"):
        plan_testnet(2, ports=[1, 70000])
    with pytest.raises(PlanError, match="ports"):
        plan_testnet(2, ports=[1])
    with pytest.raises(PlanError):
        host_ip(64)
    plan = plan_testnet(2, ports=[1, 2])
    with pytest.raises(PlanError, match="peer id"):
        plan.peer_multiaddrs(0, [PID])


def test_services_keep_their_graph_and_names():
    plan = plan_from_services(
        [
            ServiceSpec("hub", ()),
            ServiceSpec("a", ("hub",), key_seed="a"),
            ServiceSpec("liar", ("hub", "a"), attack="gaussian"),
        ],
        [10, 11, 12],
    )
    assert plan.neighbours(0) == {1, 2} and plan.neighbours(1) == {0, 2}
    assert plan.byzantine == [2] and plan.query_node == 1 and plan.nodes[1].key_seed == "a"
    with pytest.raises(PlanError, match="no service"):
        plan_from_services([ServiceSpec("a", ("b",))], [1])
    with pytest.raises(PlanError, match="itself"):
        plan_from_services([ServiceSpec("a", ("a",))], [1])
    with pytest.raises(PlanError, match="unique"):
        plan_from_services([ServiceSpec("a", ()), ServiceSpec("a", ())], [1, 2])
    with pytest.raises(PlanError, match="nothing honest"):
        plan_from_services([ServiceSpec("a", (), attack="sign_flip")], [1])


def test_seed_lines_are_validated_and_bounded(tmp_path):
    good = parse_seed_lines(['{"domain": "math", "text": "x", "tags": ["a"]}', ""], "f")
    assert good == [{"domain": "math", "text": "x", "tags": ["a"]}]
    for line, what in [
        ("nope", "not JSON"),
        ("[1]", "not a JSON object"),
        ('{"domain": "m", "text": ""}', "`text`"),
        ('{"domain": "m", "text": "' + "x" * 1025 + '"}', "1024 bytes"),
        ('{"domain": 3, "text": "t"}', "`domain`"),
        ('{"domain": "m", "text": "t", "tags": "a"}', "`tags`"),
    ]:
        with pytest.raises(PlanError, match=what):
            parse_seed_lines([line], "f.jsonl")
    path = tmp_path / "seed.jsonl"
    path.write_text(json.dumps({"domain": "coding", "text": "t"}) + "\n")
    assert load_seed_file(path) == [{"domain": "coding", "text": "t", "tags": []}]
    with pytest.raises(PlanError, match="--seed-file"):
        load_seed_file(tmp_path / "missing.jsonl")
    samples = load_samples()
    assert len(samples) >= 20 and all(s["text"] and s["domain"] for s in samples)


def test_status_table_renders_every_node():
    from rich.console import Console

    from dsonode.testnet.cli import render_table

    rows = [
        {
            "name": f"node{i}",
            "listen": f"/ip4/127.0.0.{i + 1}/tcp/4001",
            "peer_id": PID,
            "byzantine": "gaussian" if i == 2 else None,
            "running": i != 3,
            "experiences": 3,
            "submissions": 9,
            "confirmed": 3,
            "connected": 2,
            "accepted": 12,
            "rejected": 0,
            "liar_reputation": {} if i == 2 else {"node2": {"score": 0.25, "rejected": 2}},
        }
        for i in (1, 2, 3)
    ]
    out = io.StringIO()
    Console(file=out, width=160).print(render_table(rows, 3, "running"))
    text = out.getvalue()
    assert "127.0.0.2:4001" in text and "node3 (down)" in text
    assert "node2 0.25 +0/-2" in text and "gaussian" in text
