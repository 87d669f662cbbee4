"""A real 5-process testnet with one Byzantine node (`dsonode.testnet.Testnet`).

Five `dsonode run` processes on 127.0.0.2-6, a full mesh, node 4 poisoning its own
submissions ("gaussian": the honest vector plus a random unit direction). One testnet is
shared by the tests of this module (five model-loading processes are heavy); they run in
file order and the last one stops it and checks that no process is left. Every wait is
bounded.

What is checked:
* an experience added at node 1 is found by a `search` at node 5 with a confirmed consensus
  of the four honest submissions;
* every honest node rejected the Byzantine node's submissions (its reputation record there
  shows rejections, no acceptance, and a score that falls with every new experience);
* the honest consensus is unharmed: node 5's consensus code (read from its LMDB store,
  read-only, while it runs) is as close to node 5's own exact-embedding code as the median
  of the honest submissions alone is, and far from the liar's code.
"""

from __future__ import annotations

import os
import signal

import numpy as np
import pytest
from netutil import wait_until

from dsonode.core import aggregate, bitdelta
from dsonode.core.consensus import reputation_score
from dsonode.store import Store
from dsonode.testnet import Testnet, free_ports, plan_testnet
from dsonode.testnet.plan import host_ip

N_NODES = 5
TEXT_1 = "Before you refactor a parser, pin its behaviour with golden-file tests."
TEXT_2 = "When a proof by induction stalls, strengthen the hypothesis before adding cases."


@pytest.fixture(scope="module")
def net(tmp_path_factory):
    plan = plan_testnet(
        N_NODES,
        ports=free_ports([host_ip(i) for i in range(N_NODES)]),
        byzantine=1,
        attack="gaussian",
    )
    testnet = Testnet(plan, tmp_path_factory.mktemp("tn"), start_timeout=240, mesh_timeout=90)
    with testnet:
        yield testnet


@pytest.fixture(scope="module")
def first(net):
    """TEXT_1 added at node 1 and confirmed at node 5: (experience id, node 5's top hit)."""
    with net.client(0) as c:
        exp_id = c.add_experience(TEXT_1, "coding", ["testing"])["id"]

    def confirmed_at_node5():
        hits = net.query(TEXT_1, k=3, node=4)
        top = hits[0] if hits else None
        return top if top and top["id"] == exp_id and top["submissions"] >= 4 else None

    top = wait_until("a confirmed consensus at node 5", confirmed_at_node5, 120, net.nodes)
    return exp_id, top


def _liar_record(net: Testnet, i: int) -> dict | None:
    liar = net.nodes[net.plan.byzantine[0]].author
    return net.stats(i)["network"]["reputation"].get(liar)


@pytest.mark.slow
def test_plan_puts_each_node_on_its_own_loopback_address(net):
    assert [n.listen.split("/")[2] for n in net.nodes] == [f"127.0.0.{i}" for i in range(2, 7)]
    assert net.plan.byzantine == [3] and net.plan.seed_node == 0 and net.plan.query_node == 4
    for i, node in enumerate(net.nodes):
        st = net.stats(i)["network"]
        assert st["peer_id"] == node.peer_id  # the identity created ahead is the one it runs
        assert sorted(st["connected"]) == sorted(n.peer_id for n in net.nodes if n is not node)
        assert st["byzantine_attack"] == ("gaussian" if i == 3 else None)


@pytest.mark.slow
def test_experience_added_at_node1_is_found_confirmed_at_node5(net, first):
    exp_id, top = first
    assert top["id"] == exp_id
    assert top["text"] == TEXT_1 and top["domain"] == "coding" and top["confirmed"]
    assert top["submissions"] == 4  # the four honest nodes; the liar's was rejected
    assert top["author"] == net.nodes[0].author  # node 1 signed it


@pytest.mark.slow
def test_byzantine_submissions_are_rejected_everywhere_and_its_reputation_falls(net, first):
    honest = net.plan.honest
    before = {}
    for i in honest:
        rec = wait_until(
            f"the liar's rejection at {net.nodes[i].name}",
            lambda i=i: (r := _liar_record(net, i)) and r["rejected"] >= 1 and r,
            60,
            net.nodes,
        )
        assert rec["accepted"] == 0 and rec["score"] < reputation_score(0, 0)
        before[i] = rec
    # A second experience: one more rejection everywhere, the score falls further.
    with net.client(0) as c:
        id2 = c.add_experience(TEXT_2, "math", ["induction"])["id"]
    net.wait_confirmed([id2], timeout=90)  # at all five nodes (the liar's too)
    for i in honest:
        rec = wait_until(
            f"a second rejection at {net.nodes[i].name}",
            lambda i=i: (r := _liar_record(net, i)) and r["rejected"] > before[i]["rejected"] and r,
            90,
            net.nodes,
        )
        assert rec["accepted"] == 0 and rec["score"] < before[i]["score"]
        # and no honest author lost anything
        rep = net.stats(i)["network"]["reputation"]
        for j in honest:
            assert rep[net.nodes[j].author]["rejected"] == 0
    # The pipeline penalised nobody: the liar's items are well-formed, only their content lies.
    for i in honest:
        pipe = net.stats(i)["network"]["pipeline"]
        assert pipe["graylisted"] == []
        assert set(pipe["rejected"]) <= {"duplicate", "stored"}


@pytest.mark.slow
def test_honest_consensus_is_unharmed(net, first):
    exp_id = bytes.fromhex(first[0])
    node5 = net.nodes[4]
    space = bytes.fromhex(net.stats(4)["space_id"])
    liar = bytes.fromhex(net.nodes[3].author)
    # LMDB allows readers beside the running writer: open node 5's store read-only.
    with Store(node5.data_dir / "store", readonly=True) as store:
        consensus = store.get_consensus(space, exp_id)
        subs = {s.author: s.code for s in store.get_submissions(exp_id, space)}
    assert consensus is not None and consensus.confirmed and consensus.count == 4
    assert len(subs) == N_NODES  # every node's submission arrived, the liar's too
    own = bitdelta.decode(subs[bytes.fromhex(node5.author)])  # node 5's exact embedding code
    honest_only = aggregate.aggregate_codes([c for a, c in subs.items() if a != liar]).code

    def cos(code: bytes) -> float:
        v = bitdelta.decode(code)
        return float(v @ own / (np.linalg.norm(v) * np.linalg.norm(own)))

    assert cos(consensus.code) >= cos(honest_only) - 1e-6
    assert cos(consensus.code) > 0.99
    # what the liar pushed (the honest vector plus a random unit direction) is far off
    assert cos(subs[liar]) < 0.9


@pytest.mark.slow
def test_status_rows_show_what_the_table_shows(net, first):
    rows = net.status([first[0]])
    assert [r["name"] for r in rows] == [f"node{i}" for i in range(1, 6)]
    for i, row in enumerate(rows):
        assert row["running"] and row["connected"] == 4 and row["confirmed"] == 1
        assert row["experiences"] >= 1 and row["rejected"] == 0
        if i == 3:
            assert row["byzantine"] == "gaussian" and row["liar_reputation"] == {}
        else:
            liar = row["liar_reputation"]["node4"]
            assert liar["rejected"] >= 1 and liar["accepted"] == 0


@pytest.mark.slow
def test_stop_leaves_no_process(net):
    pids = [n.proc.pid for n in net.nodes]
    codes = net.stop()
    assert set(codes) == {n.name for n in net.nodes}
    assert all(code is not None for code in codes.values())
    for pid in pids:  # the process group of every node is gone as well
        with pytest.raises(ProcessLookupError):
            os.killpg(pid, signal.SIGCONT)
