"""SIGKILL during ingest, several times in a row on one data directory (CI subset).

Each cycle: start a real node, check it against the previous cycle, ingest from two clients,
SIGKILL at a random moment, then (node dead) open the store, verify every signed item, check
every acknowledged item and its consensus code, rebuild the index from LMDB and require the
next start to answer random vector searches identically. The bench runs 20+ cycles
(`dsonode bench faults`); tests/test_crash.py checks search-by-text after one kill.
"""

from __future__ import annotations

import random

import psutil
import pytest

from qa.kill9 import Kill9Failure, check_store_offline, run_kill9

pytestmark = pytest.mark.slow

CI_RUNS = 2


def no_network_listeners(node) -> None:
    """Without --listen a node opens no TCP/UDP listening socket at all (only its Unix one)."""
    inet = [
        c.laddr
        for c in psutil.Process(node.pid).net_connections(kind="inet")
        if c.status in (psutil.CONN_LISTEN, psutil.CONN_NONE)
    ]
    assert inet == [], f"an unconfigured node listens on {inet}"


def test_repeated_sigkill_loses_nothing_and_the_index_rebuilds_identically(tmp_path, seed):
    data_dir = tmp_path / "node"
    result = run_kill9(
        data_dir, CI_RUNS, random.Random(seed), max_delay_s=2.5, on_start=no_network_listeners
    )
    summary = result.summary()
    print(f"kill9: seed {seed}: {summary}")
    assert result.failures == [], (seed, summary)
    assert result.runs == CI_RUNS, (seed, summary)
    assert result.items_lost == 0, (seed, summary)
    assert all(n >= 5 for n in result.acked_per_run), (seed, summary)
    assert result.experiences_final >= result.acknowledged

    # The offline check is not vacuous: an item that was never stored is reported lost.
    with pytest.raises(Kill9Failure, match="lost"):
        check_store_offline(data_dir, [("00" * 32, "never added", "nowhere")], [])
