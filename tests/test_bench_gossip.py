"""`dsonode bench gossip` with tiny sizes: 3 real worker processes, every field, delivery."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

FIELDS = (
    "nodes",
    "items",
    "delivered_fraction",
    "p50_ms",
    "p99_ms",
    "items_per_s",
    "wire_bytes_per_item",
    "raw_msgs_per_s",
)


@pytest.mark.slow
def test_bench_gossip_reports_every_field_and_delivers():
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "dsonode",
            "bench",
            "gossip",
            "--json",
            "--nodes",
            "3",
            "--items",
            "60",
            "--latency-items",
            "10",
            "--latency-rate",
            "50",
            "--raw-items",
            "12",
            "--phase-timeout",
            "60",
        ],
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    result = json.loads(out.stdout)
    for field in FIELDS:
        assert result[field] is not None, field
    assert result["nodes"] == 3 and result["items"] == 70
    # Every batched item was committed to the LMDB store of every one of the 3 nodes.
    assert result["delivered_fraction"] == 1.0
    assert result["phases"]["throughput"]["held"] == [70, 70, 70]
    assert result["raw_delivered_fraction"] > 0  # the unbatched phase moved items too
    assert 0 < result["p50_ms"] <= result["p99_ms"]
    assert result["wire_bytes_per_item"] > 200  # real signed items, not empty payloads
    for node in result["per_node"]:
        assert node["pipeline_rejected"].keys() <= {"duplicate", "stored"}
