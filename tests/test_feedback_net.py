"""Feedback end to end: real `dsonode run` processes on 127.0.0.2-3, connected over libp2p.

One pair of nodes serves both tests (module fixture; each node loads the model once):
- at node 1, `give_feedback` reorders two near-equal search results in the documented
  direction (score = similarity + 0.1 * median * votes / (votes + 3)), similarity unchanged;
- feedback given at node 1 reaches node 2's aggregate by gossip, and node 2's own vote and
  its later change of mind reach node 1 (one vote per author: the newer replaces the older).
Every wait is bounded; both processes are stopped by the fixture.
"""

from __future__ import annotations

import pytest
from netutil import node_mesh, wait_until

from dsonode.api.jsonrpc import RpcError
from dsonode.core.feedback import DAMPING, DEFAULT_WEIGHT

pytestmark = pytest.mark.slow

IPS = ("127.0.0.2", "127.0.0.3")


@pytest.fixture(scope="module")
def nodes(tmp_path_factory):
    with node_mesh(tmp_path_factory.mktemp("feedback-net"), IPS, mesh_timeout=90) as procs:
        yield procs


def _boost(median: float, votes: int) -> float:
    return DEFAULT_WEIGHT * median * votes / (votes + DAMPING)


def test_feedback_reorders_near_equal_results(nodes):
    query = "pin the versions of your dependencies in a lock file"
    texts = [  # two wordings of one lesson: different experiences, near-equal relevance
        "Pin dependency versions in a lock file so builds are reproducible.",
        "Pin dependency versions in a lock file, so builds are reproducible!",
    ]
    with nodes[0].client() as c:
        ids = [c.add_experience(t, "ops")["id"] for t in texts]

    def settled() -> bool:  # both nodes' codes in node 1's consensus: scores are final
        with nodes[0].client() as c:
            return all(c.get(i)["submissions"] == 2 for i in ids)

    wait_until("node 2's submissions at node 1", settled, 60, nodes)
    with nodes[0].client() as c:
        before = [h for h in c.search(query, k=5) if h["id"] in ids]
        assert [h["feedback"] for h in before] == [None, None]
        assert all(h["score"] == h["similarity"] for h in before)
        top, second = before
        gap = top["similarity"] - second["similarity"]
        # Precondition of the test (not of the feature): the two are near-equal, closer than
        # the swing of one helpful and one unhelpful vote.
        assert 0 <= gap < 2 * _boost(1.0, 1), f"results not near-equal: gap {gap}"

        up = c.give_feedback(second["id"], helpful=True)
        down = c.give_feedback(top["id"], helpful=False)
        assert up == {"id": second["id"], "value": 1.0, "feedback": {"votes": 1, "median": 1.0}}
        assert down["feedback"] == {"votes": 1, "median": -1.0}

        after = [h for h in c.search(query, k=5) if h["id"] in ids]
        assert [h["id"] for h in after] == [second["id"], top["id"]]  # the order flipped
        by_id = {h["id"]: h for h in after}
        for h, median in ((second, 1.0), (top, -1.0)):
            got = by_id[h["id"]]
            assert got["similarity"] == h["similarity"]  # relevance itself is untouched
            assert got["feedback"] == {"votes": 1, "median": median}
            assert got["score"] == pytest.approx(h["similarity"] + _boost(median, 1), abs=2e-6)

        # Voting again replaces this node's vote instead of adding one.
        again = c.give_feedback(top["id"], reward_delta=0.5)
        assert again["feedback"] == {"votes": 1, "median": 0.5}
        assert c.get(top["id"])["feedback"] == {"votes": 1, "median": 0.5}

        with pytest.raises(RpcError) as info:  # unknown experience: a clear error
            c.give_feedback("ab" * 32, helpful=True)
        assert info.value.code == -32001
        with pytest.raises(RpcError) as info:
            c.give_feedback(top["id"], reward_delta=2.0)
        assert info.value.code == -32602 and info.value.data == {"param": "reward_delta"}


def test_feedback_given_at_node_1_reaches_node_2(nodes):
    n1, n2 = nodes
    text = "Read the error message twice before changing any code."
    with n1.client() as c:
        exp_id = c.add_experience(text, "debugging")["id"]
        assert c.give_feedback(exp_id, helpful=True)["feedback"] == {"votes": 1, "median": 1.0}

    def at(node, want):
        def check():
            with node.client() as c:
                got = c.get(exp_id)["feedback"]
            return got if got == want else None

        return check

    wait_until("node 1's vote at node 2", at(n2, {"votes": 1, "median": 1.0}), 60, nodes)

    # Node 2 votes too: both nodes see two voters; then node 2 changes its mind.
    with n2.client() as c:
        assert c.give_feedback(exp_id, reward_delta=-0.5)["feedback"] == {
            "votes": 2,
            "median": 0.25,
        }
    wait_until("node 2's vote at node 1", at(n1, {"votes": 2, "median": 0.25}), 60, nodes)
    with n2.client() as c:
        assert c.give_feedback(exp_id, helpful=True)["feedback"] == {"votes": 2, "median": 1.0}
    wait_until("node 2's new vote at node 1", at(n1, {"votes": 2, "median": 1.0}), 60, nodes)

    with n1.client() as c:
        hit = next(h for h in c.search(text, k=3) if h["id"] == exp_id)
        assert hit["feedback"] == {"votes": 2, "median": 1.0}
        assert hit["score"] == pytest.approx(hit["similarity"] + _boost(1.0, 2), abs=2e-6)
        counters = c.stats()["network"]["counters"]
    assert counters.get("feedback_stored", 0) >= 2  # node 2's two votes came in by gossip
