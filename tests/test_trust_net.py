"""Trust on real nodes: two `dsonode run` processes on 127.0.0.2-3 over libp2p, node 2
without an allow list (so node 1 is a stranger to it), driven through the socket and the
`dsonode` commands (ARCHITECTURE.md "Trust").

One test walks the policy: by default node 2 does not serve node 1's lessons (unvouched) but
returns them when asked (`include_unvouched`, each result saying why); `dsonode allow` makes
them vouched ("allowed_author"); `dsonode block` refuses and hides them even when asked,
shown by `dsonode peers`/`trust`; `dsonode forget` deletes one, and after a restart in mode
open with a one-second catch-up sync from node 1, the forgotten lesson stays gone while the
other one is served; then node 1 retracts that one (`dsonode retract`) and node 2 deletes it.
Every wait is bounded; both processes are stopped.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from netutil import REPO, free_port, wait_until

from dsonode.api.jsonrpc import NOT_FOUND, RpcError
from dsonode.config.settings import setting
from dsonode.testnet.plan import NodePlan, TestnetPlan
from dsonode.testnet.supervisor import Testnet

pytestmark = pytest.mark.slow

IPS = ("127.0.0.2", "127.0.0.3")
LESSONS = (
    "Pin dependency versions in a lock file so builds are reproducible.",
    "Rotate the logs daily so the disk never fills up.",
)


def _cli(node, *args: str) -> dict:
    out = subprocess.run(
        [sys.executable, "-m", "dsonode", *args, "--data-dir", str(node.data_dir), "--json"],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=REPO,
        check=True,
    )
    return json.loads(out.stdout)


def _found(node, query: str, **kw) -> dict[str, dict]:
    with node.client() as c:
        return {h["id"]: h for h in c.search(query, k=10, **kw)}


def test_policy_operator_lists_and_tombstones_on_real_nodes(tmp_path):
    plan = TestnetPlan(
        tuple(
            NodePlan(index=i, name=f"n{i + 1}", ip=ip, port=free_port(ip), dials=(1 - i,))
            for i, ip in enumerate(IPS)
        )
    )
    args: dict[int, list[str]] = {0: [], 1: []}
    net = Testnet(
        plan,
        tmp_path,
        grace=15.0,
        mesh_timeout=90,
        env={setting("trust.allow").env: ""},  # no testnet allow list: strangers to each other
        node_args=lambda node: args[node.index],
    )
    with net:
        one, two = net.nodes
        with one.client() as c:
            ids = [c.add_experience(t, "ops")["id"] for t in LESSONS]

        def held() -> bool:
            with two.client() as c:
                return all(c.get(i)["id"] == i for i in ids)

        wait_until("node 1's lessons at node 2", held, 60, net.nodes)
        query = LESSONS[0]
        assert set(_found(one, query)) >= set(ids)  # node 1 serves its own
        assert not set(_found(two, query)) & set(ids)  # a stranger's: withheld by default
        wide = _found(two, query, include_unvouched=True)
        assert {wide[i]["trust"]["why"][0] for i in ids} == {"unvouched"}
        with two.client() as c:
            assert c.get(ids[0])["trust"] == {"vouched": False, "why": ["unvouched"]}

        assert _cli(two, "allow", one.peer_id)["changed"] is True
        served = _found(two, query)
        assert {served[i]["trust"]["why"][0] for i in ids} == {"allowed_author"}
        _cli(two, "disallow", one.peer_id)

        assert _cli(two, "block", one.peer_id)["changed"] is True
        assert not set(_found(two, query, include_unvouched=True)) & set(ids)
        trust = _cli(two, "trust")
        assert trust["blocked_authors"] == [one.author] and trust["mode"] == "vouched"
        rows = {r["peer_id"]: r for r in _cli(two, "peers")}
        assert rows[one.peer_id]["trust"] == "blocked"
        assert _cli(two, "status")["trust"]["blocked"] == 1
        _cli(two, "unblock", one.peer_id)

        assert _cli(two, "forget", ids[0]) == {"id": ids[0], "found": True, "tombstoned": True}
        with two.client() as c, pytest.raises(RpcError) as err:
            c.get(ids[0])
        assert err.value.code == NOT_FOUND

        # restart in mode open with a catch-up sync every second from node 1 (which holds both)
        net.stop_node(1)
        args[1] = ["--trust", "open", "--sync-interval", "1"]
        net.start_node(1)
        net.wait_healthy(120, [1])

        def synced_twice() -> bool:
            with two.client() as c:
                return c.stats()["network"]["sync"].get("ok", 0) >= 2

        wait_until("two catch-up syncs at node 2", synced_twice, 90, net.nodes)
        open_hits = _found(two, query)
        assert ids[1] in open_hits and open_hits[ids[1]]["trust"]["why"] == ["unvouched"]
        assert ids[0] not in _found(two, query, include_unvouched=True)
        with two.client() as c, pytest.raises(RpcError):
            c.get(ids[0])
        assert _cli(two, "trust")["tombstones"] == 1

        # node 1 withdraws its other lesson: the signed retraction reaches node 2 by gossip
        assert _cli(one, "retract", ids[1])["retracted"] is True

        def withdrawn() -> bool:
            with two.client() as c:
                try:
                    c.get(ids[1])
                except RpcError as exc:
                    return exc.code == NOT_FOUND
            return False

        wait_until("the retraction at node 2", withdrawn, 60, net.nodes)
        assert _cli(two, "trust")["tombstones"] == 2
        with one.client() as c, pytest.raises(RpcError):
            c.retract(ids[1])  # gone at its author's node too: nothing left to withdraw
