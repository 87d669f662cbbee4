"""Catch-up through /dso/sync/1.0.0 in the real daemon: real `dsonode run` processes on
127.0.0.N, talking over their sockets.

- A node started late finds, by `search` over its socket and with a consensus of two
  submissions, the experiences published before it started (it pulls them on connecting,
  embeds them, submits its own code, and the consensus is recomputed on both sides).
- A node killed with SIGKILL and restarted on the same data directory keeps what it had,
  receives by sync what was published while it was down, and new gossip afterwards.

Both nodes are started through the one harness (a two-node `Testnet`, each node started and
stopped on its own as a `NodeHandle`). The late node runs from a TOML file (`dsonode run
--config`: bootstrap peer, quorum 2, committee "all"). Every wait is bounded; every process
is stopped when `_pair` exits.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from netutil import free_port, wait_until

from dsonode.testnet.plan import NodePlan, TestnetPlan
from dsonode.testnet.supervisor import NodeHandle, Testnet

LESSONS = [
    ("coding", "Before you refactor a parser, pin its behaviour with golden-file tests."),
    ("math", "Check the base case of an induction before trusting the inductive step."),
    ("ops", "Roll a config change out to one canary host before the whole fleet."),
]
WHILE_DOWN = ("coding", "When a test is flaky, record the seed before retrying it.")
AFTER = ("ops", "Alert on the symptom users feel, not on every internal cause.")
#: GossipSub keeps a message for gossip_history (5) heartbeats of 1 s and announces it to new
#: mesh peers meanwhile (IHAVE): a node that (re)starts later than this can only get it by sync.
#: A node starts in under a second (the lean embedder), so the tests wait this out.
GOSSIP_FORGETS_S = 6.5


def _config(path: Path, listen: str, peer: str) -> Path:
    path.write_text(
        f"""
[net]
listen = "{listen}"
bootstrap = ["{peer}"]
redial_initial_s = 0.2
redial_max_s = 2.0
sync_interval_s = 600  # only the on-connect pull may bring the backlog here

[consensus]
quorum = 2
committee = "all"
"""
    )
    return path


def _hit(node: NodeHandle, text: str, confirmed: bool = True):
    """The top search hit for `text` if it is that experience with a consensus of two
    submissions (confirmed: node b runs with quorum 2, node a with the default 3)."""
    with node.client(timeout=60) as c:
        hits = c.search(text, k=3)
    top = hits[0] if hits else None
    ok = top and top["text"] == text and top["confirmed"] == confirmed
    return top if ok and top["submissions"] >= 2 else None


def _network(node: NodeHandle) -> dict:
    with node.client(timeout=60) as c:
        return c.stats()["network"]


@contextlib.contextmanager
def _pair(tmp_path: Path, ips: tuple[str, str]) -> Iterator[tuple[NodeHandle, NodeHandle]]:
    """Nodes a and b, not started: a dials b (`--peer`); b dials a through the bootstrap of
    its TOML file. Both stopped (SIGTERM, SIGKILL after 15 s) on exit."""
    plan = TestnetPlan(
        (
            NodePlan(index=0, name="a", ip=ips[0], port=free_port(ips[0]), dials=(1,)),
            NodePlan(index=1, name="b", ip=ips[1], port=free_port(ips[1])),
        )
    )
    cfg = tmp_path / "b.toml"
    net = Testnet(
        plan,
        tmp_path,
        start_timeout=180,
        grace=15.0,
        node_args=lambda node: ["--config", str(cfg)] if node.name == "b" else [],
    )
    try:
        a, b = net.prepare()  # keys first: b's file names a's peer id
        _config(cfg, b.listen, f"{a.listen}/p2p/{a.peer_id}")
        yield a, b
    finally:
        net.stop()


@pytest.mark.slow
def test_late_node_catches_up_through_sync(tmp_path):
    with _pair(tmp_path, ("127.0.0.41", "127.0.0.42")) as (a, b):
        a.start()
        with a.client() as c:
            ids = [c.add_experience(text, domain)["id"] for domain, text in LESSONS]
        time.sleep(GOSSIP_FORGETS_S)
        b.start()  # after everything was published: gossip cannot bring it any more
        for (_, text), exp_id in zip(LESSONS, ids, strict=True):
            top = wait_until(
                f"{text[:30]!r} at the late node", lambda t=text: _hit(b, t), 90, [a, b]
            )
            assert top["id"] == exp_id and top["submissions"] == 2
        net = _network(b)
        assert net["sync"]["ok"] >= 1 and net["sync"]["items_stored"] >= 2 * len(LESSONS)
        assert net["sync"]["penalised"] == 0  # an honest peer is never penalised
        assert net["counters"]["own_submissions"] == len(LESSONS)
        cons = net["consensus"]
        assert (cons["method"], cons["quorum"], cons["committee"]) == ("median", 2, None)
        # The late node's own submissions reached the first node too: both have 2 votes.
        for _, text in LESSONS:
            wait_until(f"two submissions at the first node for {text[:30]!r}",
                       lambda t=text: _hit(a, t, confirmed=False), 60, [a, b])  # fmt: skip
        assert _network(a)["sync"]["served"]["items_sent"] >= 2 * len(LESSONS)


@pytest.mark.slow
def test_sigkilled_node_keeps_its_data_and_rejoins(tmp_path):
    with _pair(tmp_path, ("127.0.0.43", "127.0.0.44")) as (a, b):
        a.start()
        b.start()
        domain, text = LESSONS[0]
        with a.client() as c:
            c.add_experience(text, domain)
        wait_until("the first lesson at node b", lambda: _hit(b, text), 90, [a, b])

        b.kill()  # SIGKILL: no shutdown code runs in the node
        assert b.proc is not None and b.proc.returncode == -9
        with a.client() as c:
            down_id = c.add_experience(WHILE_DOWN[1], WHILE_DOWN[0])["id"]
        time.sleep(GOSSIP_FORGETS_S)  # only sync can bring it now

        b.start()  # same data directory, same key, same port
        with b.client() as c:
            counts = c.stats()["store"]
        assert counts["experiences"] >= 1  # kept across the SIGKILL
        assert _hit(b, text) is not None  # searchable at once: the index was rebuilt
        top = wait_until("the lesson published while b was down", lambda: _hit(b, WHILE_DOWN[1]),
                         90, [a, b])  # fmt: skip
        assert top["id"] == down_id
        assert _network(b)["sync"]["items_stored"] >= 1

        # New gossip after the rejoin arrives too (counted by the gossip pipeline).
        before = _network(b)["pipeline"]["accepted"]
        with a.client() as c:
            c.add_experience(AFTER[1], AFTER[0])
        wait_until("new gossip at the rejoined node", lambda: _hit(b, AFTER[1]), 90, [a, b])
        assert _network(b)["pipeline"]["accepted"] > before
