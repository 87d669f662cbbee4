"""`dsonode bench node`'s start part on a small store: real node processes, real socket.

The store is filled offline with codes of a generated author, as the benchmark does at 1M
items; the benchmark's nodes serve them (`search_bench_env`: trust.mode = open), so the first
search must return results, from a rebuilt index and then from the saved one."""

from __future__ import annotations

from pathlib import Path

from dsonode.bench.common import search_bench_env
from dsonode.bench.node import measure_start
from dsonode.config.settings import setting


def test_search_bench_nodes_serve_every_author() -> None:
    env = search_bench_env({"X": "1"})
    assert env == {"X": "1", setting("trust.mode").env: "open"}


def test_start_part_answers_from_a_rebuild_then_from_the_saved_index(tmp_path: Path) -> None:
    out = measure_start(tmp_path, 300)
    assert out["start_indexed"] == 300
    assert out["start_first_results"] == 10
    assert out["start_to_first_search_s"] > 0 and out["start_rebuild_to_first_search_s"] > 0
    saved = list((tmp_path / "node-300").rglob("index-*.bin"))
    assert len(saved) == 1, saved
