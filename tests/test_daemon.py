"""The networked node (dsonode.net.daemon): settings, and a real 4-process testnet.

The testnet test starts four `dsonode run` processes on 127.0.0.2-5 through the one harness
(`netutil.node_mesh`, a `Testnet`): three honest, one Byzantine that submits random
directions, each dialling the three others. An experience
added over the socket at node 1 must be found by a search at node 3 with a confirmed
consensus of >= 3 submissions, and the Byzantine node's submission must be rejected, its
reputation falling, at the honest nodes. Every wait is bounded; every process is stopped.
"""

from __future__ import annotations

import logging
import subprocess
import sys

import numpy as np
import pytest
from netutil import node_mesh, wait_until

from dsonode.core.attacks import AttackError, attack_direction, poison
from dsonode.core.constants import DIM
from dsonode.net.daemon import DaemonConfig, DaemonError

PEER = "/ip4/127.0.0.3/tcp/4001/p2p/12D3KooWD3eckifWpRn9wQpMG9R9hX3sD158z7EqHWmweQAJU5SA"


def test_config_validation_names_the_setting():
    DaemonConfig(listen="/ip4/127.0.0.2/tcp/4001", peers=(PEER,))
    with pytest.raises(DaemonError, match="--listen"):
        DaemonConfig(listen="/ip4/8.8.8.8/tcp/4001")  # loopback only
    with pytest.raises(DaemonError, match="--peer"):
        DaemonConfig(listen="/ip4/127.0.0.2/tcp/4001", peers=("/ip4/127.0.0.3/tcp/4001",))


def test_poison_attacks():
    rng = np.random.default_rng(0)
    v = rng.normal(size=DIM).astype(np.float32)
    v /= np.linalg.norm(v)
    assert np.allclose(poison(v, "sign_flip", rng), -v)
    g = poison(v, "gaussian", rng)  # scale 1: noise as strong as the signal
    assert g.shape == (DIM,) and 0.6 < float(g @ v) < 0.8 and np.isclose(np.linalg.norm(g), 1)
    far = poison(v, "gaussian", rng, scale=100.0)  # a nearly random direction
    assert abs(float(far @ v)) < 0.1
    d = attack_direction(b"k" * 32)
    a1, a2 = poison(v, "alie", rng, 1.0, d), poison(v, "alie", rng, 1.0, d)
    assert np.array_equal(a1, a2)  # deterministic: the same bias for every submission
    assert 0.94 < float(a1 @ v) < 0.97  # small enough to pass the robust cut-off
    assert float(a1 @ d) > 0.2  # and pulled towards the attacker's direction
    assert np.allclose(poison(v, "alie", rng, 0.0, d), v)  # scale 0: honest
    with pytest.raises(AttackError):
        poison(v, "nice", rng)


def test_run_refuses_a_bad_listen_address_before_loading_the_model(tmp_path):
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "dsonode",
            "run",
            "--data-dir",
            str(tmp_path / "d"),
            "--listen",
            "/ip4/10.0.0.1/tcp/4001",
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2
    assert "--listen" in proc.stderr


@pytest.mark.slow
def test_testnet_consensus_outvotes_a_byzantine_node(tmp_path):
    n_nodes, byzantine = 4, 3  # node index 3 (the 4th) lies
    ips = [f"127.0.0.{i + 2}" for i in range(n_nodes)]
    args = [["--byzantine-attack", "gaussian"] if i == byzantine else [] for i in range(n_nodes)]
    # node_mesh: every node dials the others, --threads 1; yields once the gossip mesh is full
    with node_mesh(tmp_path, ips, args, start_timeout=180, mesh_timeout=90) as nodes:
        authors = [n.author for n in nodes]  # hex public keys, the keys of reputation records
        text = "Before you refactor a parser, pin its behaviour with golden-file tests."
        with nodes[0].client() as c:
            added = c.add_experience(text, "coding", ["testing"])
        exp_id = added["id"]

        def found_confirmed_at_node3():
            with nodes[2].client() as c:
                hits = c.search(text, k=3)
            top = hits[0] if hits else None
            ok = top and top["id"] == exp_id and top["confirmed"] and top["submissions"] >= 3
            return top if ok else None

        top = wait_until("a confirmed consensus at node 3", found_confirmed_at_node3, 90, nodes)
        assert top["text"] == text and top["domain"] == "coding"
        assert top["submissions"] == 3  # the three honest nodes; the liar is rejected

        liar = authors[byzantine]

        def liar_rejected(node):
            with node.client() as c:
                rep = c.stats()["network"]["reputation"]
            return rep if rep.get(liar, {}).get("rejected", 0) >= 1 else None

        for i in range(n_nodes):
            if i == byzantine:
                continue
            rep = wait_until(
                f"the liar's rejection at node {i + 1}",
                lambda i=i: liar_rejected(nodes[i]),
                60,
                nodes,
            )
            assert rep[liar]["score"] < 0.5 and rep[liar]["accepted"] == 0
            for j in range(n_nodes):
                if j != byzantine:
                    honest = rep[authors[j]]
                    assert honest["rejected"] == 0 and honest["accepted"] >= 1
                    assert honest["score"] > 0.5
        # Honest consensus is unharmed everywhere: every honest node finds it confirmed.
        for i in (0, 1):
            with nodes[i].client() as c:
                hit = c.search(text, k=1)[0]
            assert hit["id"] == exp_id and hit["confirmed"] and hit["submissions"] == 3
        # Nothing honest was penalised by the pipeline.
        with nodes[2].client() as c:
            net = c.stats()["network"]
        assert net["pipeline"]["graylisted"] == []
        assert all(r in ("duplicate", "stored") for r in net["pipeline"]["rejected"])


def test_pipeline_penalise_uses_gossip_weights_and_graylists():
    from dsonode.net.pipeline import PENALTY, Pipeline, PipelineConfig

    p = Pipeline(PipelineConfig(graylist_threshold=50.0))
    peer = b"\x01" * 38
    out = p.penalise(peer, "signature", now_s=0.0)
    assert out.penalty == PENALTY["signature"] and not out.graylisted_now
    assert p.score(peer, 0.0) == PENALTY["signature"]
    assert p.penalise(peer, "sync_protocol", now_s=0.0).penalty == 10.0  # unknown reason: 10
    assert p.penalise(peer, "malformed", now_s=0.0, count=2).graylisted_now  # 25+10+20 >= 50
    assert p.is_graylisted(peer, 1.0)
    assert p.penalise(b"\x02" * 38, "clock_skew", now_s=0.0, count=0).penalty == 0


def test_normal_libp2p_errors_become_one_debug_line(caplog):
    from dsonode.net.daemon import quiet_normal_libp2p_errors

    quiet_normal_libp2p_errors()
    quiet_normal_libp2p_errors()  # idempotent: one filter per logger
    host_log = logging.getLogger("libp2p.host.basic_host")
    assert len(host_log.filters) == 1
    with caplog.at_level(logging.INFO):
        host_log.error("Failed to open stream to peer X:\n  Error: protocols not supported\n  more")
        logging.getLogger("libp2p.transport.tcp.tcp").error("Failed to open TCP stream: %s", "no")
        host_log.error("something else")  # not a normal condition: stays an ERROR
    assert [(r.levelname, r.getMessage()) for r in caplog.records] == [("ERROR", "something else")]
    # kept at DEBUG when that logger logs DEBUG (py-libp2p sets its loggers' own levels)
    with caplog.at_level(logging.DEBUG, logger="libp2p.host.basic_host"):
        host_log.error("Failed to open stream to peer X:\n  Error: refused\n  Protocols: [...]")
    assert caplog.records[-1].levelname == "DEBUG"
    assert caplog.records[-1].getMessage() == "Failed to open stream to peer X: Error: refused"
