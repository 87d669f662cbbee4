"""Crash safety: SIGKILL a real node in the middle of an ingest; every acknowledged item survives.

`add_experience` replies only after its LMDB commits (synced), so a reply is a promise. The
test ingests from two clients at once, kills the node with SIGKILL at a random moment, starts
it again on the same data directory (stale socket, stale locks, index rebuilt from LMDB) and
checks every acknowledged item: `get` returns it unchanged and `search` finds it by its text.
"""

from __future__ import annotations

import random
import threading
import time

import pytest

from dsonode.testnet.process import NodeProcess

# The ingest helpers are shared with the SIGKILL loop (tests/test_kill9.py, bench faults).
from qa.kill9 import ingest, lesson

pytestmark = pytest.mark.slow


def test_sigkill_mid_ingest_loses_nothing_acknowledged(tmp_path, seed):
    rng = random.Random(seed)
    data_dir = tmp_path / "node"
    acked: list[tuple[str, str, str]] = []
    errors: list[BaseException] = []
    node = NodeProcess(data_dir)
    try:
        node.start()
        stop = threading.Event()
        threads = [
            threading.Thread(target=ingest, args=(node, n, acked, stop, errors)) for n in range(2)
        ]
        for t in threads:
            t.start()
        # A random moment mid-ingest, once a few items are in (bounded in time either way).
        kill_after = rng.uniform(1.0, 10.0)
        deadline = time.monotonic() + 60
        while len(acked) < 10 and time.monotonic() < deadline:
            time.sleep(0.01)
        time.sleep(kill_after)
        node.kill()  # SIGKILL: no clean-up at all
        stop.set()
        for t in threads:
            t.join(timeout=60)
        assert not any(t.is_alive() for t in threads)
    finally:
        node.kill()

    assert errors == [], f"seed {seed}"
    print(f"crash test: seed {seed}, killed after {len(acked)} acknowledged items")
    assert len(acked) >= 10, f"ingest too slow to test anything (seed {seed})"
    assert node.socket_path.exists()  # SIGKILL left the socket file behind

    restarted = NodeProcess(data_dir)
    try:
        restarted.start()  # removes the stale socket, retakes the locks, rebuilds the index
        with restarted.client(timeout=120) as c:
            stats = c.stats()
            assert stats["store"]["experiences"] >= len(acked)
            assert stats["indexed"] >= len(acked)
            # An add is one transaction (experience, submission, consensus): an add in flight
            # at the kill is wholly stored or wholly absent, never without its consensus.
            assert stats["store"]["experiences"] == stats["indexed"]
            for exp_id, text, domain in acked:
                item = c.get(exp_id)
                assert (item["text"], item["domain"]) == (text, domain), f"seed {seed}"
                assert item["submissions"] == 1
            # the rebuilt index finds items by their text (a sample keeps the test fast)
            for exp_id, text, domain in rng.sample(acked, min(40, len(acked))):
                hits = c.search(text, k=5, domain=domain)
                assert exp_id in [h["id"] for h in hits], f"seed {seed}"
            # and the node keeps ingesting where it stopped
            domain, text, tags = lesson(9, 0)
            assert c.add_experience(text, domain, tags)["new"] is True
        assert restarted.stop() == 0  # a clean SIGTERM shutdown this time
        assert not restarted.socket_path.exists()
    finally:
        restarted.kill()

    # the store opens clean in another process after a clean stop
    from dsonode.store import Store

    with Store(data_dir / "store") as store:
        assert store.counts()["experiences"] == stats["store"]["experiences"] + 1
