"""`dsonode bench network` at 4 real node processes (2 full, 2 light): every figure, delivery
before and after the bootstrap is SIGKILLed, and a clear error for a bad mix."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

FIELDS = (
    "discovery_s",
    "connected_min",
    "connected_max",
    "delivered_fraction",
    "p50_ms",
    "p99_ms",
    "bytes_in_per_item_per_node",
    "duplicates_per_item",
    "rss_mb_full",
    "rss_mb_light",
    "delivered_fraction_after_bootstrap_kill",
)


def _bench(*args: str, timeout: float) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "dsonode", "bench", "network", "--json", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
    )


@pytest.mark.slow
def test_bench_network_four_nodes_deliver_before_and_after_the_bootstrap_dies():
    out = _bench(
        "--nodes",
        "4",
        "--full",
        "2",
        "--items",
        "6",
        "--items-after-kill",
        "4",
        "--delivery-timeout",
        "90",
        "--discovery-timeout",
        "90",
        timeout=300,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    result = json.loads(out.stdout)
    [run] = result["runs"]
    for field in FIELDS:
        assert run[field] is not None, field
    assert (run["nodes"], run["full"], run["light"]) == (4, 2, 2)
    assert (run["items"], run["items_after_kill"]) == (6, 4)
    # Every node stored every experience (3 receivers x 6), and after node 1 (the bootstrap)
    # was SIGKILLed, the 2 survivors other than each author stored the second batch.
    assert run["delivered_fraction"] == 1.0
    assert run["delivered_fraction_after_bootstrap_kill"] == 1.0
    # Joined from one address: everyone found everyone (min(8, N - 1) = 3 peers).
    assert run["connected_min"] == run["connected_max"] == 3
    assert 0 <= run["p50_ms"] <= run["p99_ms"] < 60_000
    cdf = dict(run["latency_cdf_ms"])  # the same latencies at more percentiles (for a CDF)
    assert (cdf[50], cdf[99], cdf[100]) == (run["p50_ms"], run["p99_ms"], run["max_ms"])
    assert run["bytes_in_per_item_per_node"] > 964  # at least one code's worth per item
    # A light node loads no model: it is far smaller than a full one.
    assert 0 < run["rss_mb_light"] < run["rss_mb_full"]
    assert result["targets"]["at_nodes"] == 4


def test_bench_network_refuses_more_full_nodes_than_nodes():
    out = _bench("--nodes", "4", "--full", "5", timeout=60)
    assert out.returncode == 2
    assert "--full 5 is more than the smallest --nodes" in out.stderr


def test_bench_network_refuses_a_bad_node_list():
    out = _bench("--nodes", "2", timeout=60)
    assert out.returncode == 2 and "--nodes" in out.stderr


def test_library_arrivals_keep_the_first_store_time_of_recent_experiences(tmp_path, monkeypatch):
    """The per-node arrival times the bench reads (`stats.network.arrivals`): set once at the
    first store of an experience (a repeat changes nothing), bounded to the most recent."""
    import time

    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    from dsonode.core import wire
    from dsonode.embed.space import DEFAULT_MODEL_NAME, default_space_id
    from dsonode.library import ConsensusRules, Library, LightEmbedder
    from dsonode.library import library as library_module
    from dsonode.store import CodeIndex, Store

    monkeypatch.setattr(library_module, "ARRIVALS_KEPT", 3)
    space = default_space_id()
    author = Ed25519PrivateKey.generate()
    store = Store(tmp_path / "store", space_id=space)
    try:
        lib = Library(
            store=store,
            index=CodeIndex.from_store(store, space),
            embedder=LightEmbedder(space, DEFAULT_MODEL_NAME),
            key=Ed25519PrivateKey.generate(),
            rules=ConsensusRules(quorum=1, method="median", committee=None),
        )
        exps = [wire.make_experience(author, "ops", f"lesson {k}") for k in range(5)]
        before = time.time_ns() // 1_000_000
        lib.accept_items([(wire.encode_item(e), e) for e in exps[:2]])
        first = lib.arrivals()
        assert set(first) == {exps[0].id.hex(), exps[1].id.hex()}
        assert all(before <= t <= time.time_ns() // 1_000_000 for t in first.values())
        time.sleep(0.01)
        lib.accept_items([(wire.encode_item(exps[0]), exps[0])])  # already stored
        assert lib.arrivals() == first
        lib.accept_items([(wire.encode_item(e), e) for e in exps[2:]])
        assert list(lib.arrivals()) == [e.id.hex() for e in exps[2:]]  # the 3 most recent
    finally:
        store.close()
