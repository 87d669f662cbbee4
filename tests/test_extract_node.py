"""Rollouts into a real running node: `dsonode ingest` and the socket's `submit_rollouts`.

A real `dsonode run` process (NodeProcess), the real encoder, the real LMDB store; the LLM path
talks over real HTTP to the recorded-completions server. After the node stops, the signed
experiences are read back from its store to check their provenance: every offline lesson names
a step of a rollout that did better than its group's mean, never one of a failed rollout.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from dsonode.api.ingest import load_rollouts
from dsonode.api.jsonrpc import RpcError
from dsonode.core import wire
from dsonode.extract.general import task_specific
from dsonode.extract.rollouts import group_rollouts
from dsonode.extract.testing import RecordedLLMServer
from dsonode.testnet.process import NodeProcess

ROOT = Path(__file__).resolve().parents[1]
SAMPLE = ROOT / "examples" / "rollouts"
FIXTURES = ROOT / "tests" / "fixtures" / "llm"


def _rows(name: str) -> list[dict]:
    return [json.loads(line) for line in (SAMPLE / name).read_text().splitlines() if line.strip()]


def _groups(*names: str) -> dict:
    rollouts = []
    for name in names:
        rollouts.extend(load_rollouts(SAMPLE / name).rollouts)
    return {g.task_id: g for g in group_rollouts(rollouts)[0]}


def _provenance(store, exp_id: str) -> dict[str, str]:
    record = store.get_experience(bytes.fromhex(exp_id))
    assert record is not None, f"experience {exp_id} not stored"
    return dict(wire.decode_item(record.raw).provenance)


@pytest.mark.slow
def test_rollouts_into_a_running_node(tmp_path, capsys, monkeypatch):
    from dsonode.api import ingest as ingest_cli
    from dsonode.cli import main

    monkeypatch.setattr(ingest_cli, "CHUNK_ROLLOUTS", 30)  # several requests, whole groups
    data = tmp_path / "node"
    with RecordedLLMServer(FIXTURES) as llm, NodeProcess(data) as node:
        # 1. the command line: read, check, group here; extract, sign, store in the node
        with node.client() as c:
            before = c.stats()["connections"]["requests"]
        assert main(["ingest", str(SAMPLE / "math.jsonl"), "--data-dir", str(data), "--json"]) == 0
        with node.client() as c:
            sent = c.stats()["connections"]["requests"] - before - 1
        math_groups = list(_groups("math.jsonl").values())
        chunks, _ = ingest_cli.chunk_groups(math_groups, max_rollouts=30)
        assert sent == len(chunks) >= 2  # one submit_rollouts per chunk of whole groups
        cli = json.loads(capsys.readouterr().out)
        assert cli["extractor"] == "offline" and not cli["dry_run"]
        assert cli["added"] == len(cli["lessons"]) > 0 and not cli["failed_groups"]
        assert any("equal" in s["reason"] for s in cli["skipped_groups"])
        assert cli["groups"] == len(math_groups)

        with node.client(timeout=600) as c:
            # 2. the socket method; a bad rollout is reported by its index, not fatal
            rows = _rows("science.jsonl")
            rows.insert(3, {"task_id": "science/x", "prompt": "p", "response": "r"})
            reply = c.submit_rollouts(rows)
            assert reply["bad_rollouts"] == [{"index": 3, "error": "missing field 'reward'"}]
            assert reply["extractor"] == "offline" and reply["added"]
            assert reply["skipped_groups"] >= 1 and reply["groups"] > 0

            # a lesson is found by search, as any experience
            lesson = reply["added"][0]
            hits = c.search(lesson["text"], k=3)
            assert hits[0]["id"] == lesson["id"] and hits[0]["text"] == lesson["text"]
            assert "extracted" in hits[0]["tags"] and "offline" in hits[0]["tags"]

            # the same rollouts again: the same experiences, nothing new
            again = c.submit_rollouts(rows)
            assert again["added"] == []
            assert again["existing"] == len(reply["added"]) + reply["existing"]
            # a dry run stores nothing
            before = c.stats()["indexed"]
            dry = c.submit_rollouts(_rows("coding.jsonl")[:10], dry_run=True)
            assert dry["dry_run"] and dry["added"] and c.stats()["indexed"] == before

            # 3. the LLM path inside the node: recorded completions over real HTTP; the
            # experiences shown to the model come from the node's own search
            picked = [
                r
                for r in _rows("agents.jsonl") + _rows("science.jsonl")
                if r["task_id"] in ("agents/weather-tool/0", "science/unit-conversion/0")
            ]
            llm_reply = c.submit_rollouts(picked, llm_base_url=llm.base_url, llm_model="recorded")
            assert llm_reply["extractor"] == "llm" and not llm_reply["failed_groups"]
            ops = sorted(row["op"] for row in llm_reply["added"])
            # the weather task's second add quotes the task's 'tomorrow': the task_specific
            # rule drops it in the node too, and says why
            assert ops == ["add", "add", "modify"]
            assert any(
                d["task_id"] == "agents/weather-tool/0" and "quoted literal" in d["reason"]
                for d in llm_reply["dropped_operations"]
            )
            modify = next(row for row in llm_reply["added"] if row["op"] == "modify")
            assert c.get(modify["supersedes"][0])["id"] == modify["supersedes"][0]
            assert c.search(modify["text"], k=1)[0]["id"] == modify["id"]

            with pytest.raises(RpcError, match="rollouts"):
                c.call("submit_rollouts", {"rollouts": []})
            many_steps = [
                {"task_id": "t", "prompt": "p", "response": "step\n" * 25, "reward": i % 2}
                for i in range(1000)
            ]
            with pytest.raises(RpcError, match="25000 steps, the limit is 20000"):
                c.submit_rollouts(many_steps)
            with pytest.raises(RpcError, match="base URL"):
                c.submit_rollouts(picked, llm_base_url="ftp://x", llm_model="m")
            assert c.health()["status"] == "ok"

    # The node is stopped: read the signed items back from its store.
    from dsonode.store import Store

    groups = _groups("math.jsonl", "science.jsonl")
    store = Store(data / "store", readonly=True)
    try:
        offline_rows = cli["lessons"] + reply["added"]
        for row in offline_rows:
            prov = _provenance(store, row["id"])
            assert prov["extractor"] == "offline"
            task, rest = prov["source"].rsplit(" rollout ", 1)
            rollout, step = (int(x) for x in rest.split(" step "))
            group = groups[task]
            mean = sum(group.rewards) / len(group.rewards)
            assert group.rollouts[rollout].reward > mean, "lesson from a failed rollout"
            assert step < len(group.rollouts[rollout].steps())
            assert task_specific(row["text"], group) is None, row["text"]
        prov = _provenance(store, modify["id"])
        assert prov["extractor"] == "llm" and prov["op"] == "modify"
        assert prov["supersedes.0"] == modify["supersedes"][0]
        assert store.get_experience(bytes.fromhex(modify["supersedes"][0])) is not None
    finally:
        store.close()
