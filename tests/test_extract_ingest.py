"""Pure parts of ingestion: submit_rollouts params, chunking whole groups, provenance bounds."""

from __future__ import annotations

from pathlib import Path

import pytest

from dsonode.api.ingest import chunk_groups, load_rollouts, rollout_object
from dsonode.api.jsonrpc import MAX_SUBMIT_ROLLOUTS, InvalidParams, validate_params
from dsonode.core import wire
from dsonode.extract.offline import Lesson, Source, provenance_of
from dsonode.extract.rollouts import RolloutError, group_rollouts, parse_object

SAMPLE = Path(__file__).resolve().parents[1] / "examples" / "rollouts"


def test_submit_rollouts_params_are_bounded():
    p = validate_params("submit_rollouts", {"rollouts": [{"a": 1}, "x"]})
    assert p.rollouts == ({"a": 1}, "x") and p.dry_run is False and p.llm_base_url is None
    p = validate_params(
        "submit_rollouts",
        {"rollouts": [{}], "dry_run": True, "llm": {"base_url": "http://h/v1", "model": "m"}},
    )
    assert p.dry_run and (p.llm_base_url, p.llm_model) == ("http://h/v1", "m")
    for params, name in [
        ({}, "rollouts"),
        ({"rollouts": []}, "rollouts"),
        ({"rollouts": {}}, "rollouts"),
        ({"rollouts": [{}] * (MAX_SUBMIT_ROLLOUTS + 1)}, "rollouts"),
        ({"rollouts": [{}], "dry_run": "yes"}, "dry_run"),
        ({"rollouts": [{}], "llm": {"base_url": "http://h"}}, "model"),
        ({"rollouts": [{}], "llm": {"base_url": "u", "model": "m", "api_key": "k"}}, "llm"),
        ({"rollouts": [{}], "extra": 1}, "extra"),
    ]:
        with pytest.raises(InvalidParams) as exc:
            validate_params("submit_rollouts", params)
        assert exc.value.param == name


def test_rollout_objects_round_trip_and_chunks_keep_groups_whole():
    groups, _ = group_rollouts(load_rollouts(SAMPLE / "agents.jsonl").rollouts)
    for g in groups:
        for r in g.rollouts:
            back = parse_object(rollout_object(r), r.line)
            assert back == r
    chunks, too_big = chunk_groups(groups, max_bytes=30_000, max_rollouts=12)
    assert not too_big and len(chunks) > 1
    assert [g for chunk in chunks for g in chunk] == groups  # every group once, in order
    for chunk in chunks:
        assert sum(len(g.rollouts) for g in chunk) <= 12
    chunks, too_big = chunk_groups(groups, max_bytes=1_000)
    assert chunks == [] and too_big == groups
    with pytest.raises(RolloutError, match="JSON object"):
        parse_object(["not", "an", "object"])


def test_provenance_fits_the_wire_bounds():
    lesson = Lesson(
        text="Check the units.",
        domain="science",
        score=1.0,
        sources=[Source("t\x00" + "é" * 300, 2, -1)] * 3,
        tags=("extracted", "llm"),
        op="merge",
        supersedes=tuple(f"{i:064x}" for i in range(6)),
    )
    pairs = provenance_of(lesson)
    assert len(pairs) <= wire.MAX_PROVENANCE
    assert dict(pairs)["op"] == "merge" and dict(pairs)["sources"] == "3"
    assert sum(k.startswith("supersedes") for k, _ in pairs) == 4
    # signs, validates and encodes as a real item (control characters removed, bytes bounded)
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    exp = wire.make_experience(
        Ed25519PrivateKey.generate(), "science", lesson.text, provenance=pairs
    )
    assert wire.decode_item(wire.encode_item(exp)).provenance == exp.provenance


def test_a_large_group_shows_the_model_its_best_and_worst_rollouts():
    from dsonode.extract.llm import MAX_GROUP_ROLLOUTS, considered
    from dsonode.extract.rollouts import Group, Rollout

    rewards = [0.5, 0.1, 0.9, 0.3] * 5  # 20 rollouts
    rollouts = tuple(Rollout("t", "p", "r", w) for w in rewards)
    shown = considered(Group("t", "general", "p", rollouts))
    assert len(shown) == MAX_GROUP_ROLLOUTS and shown == sorted(shown)
    left_out = sorted(rewards[i] for i in set(range(20)) - set(shown))
    assert left_out == [0.3, 0.3, 0.5, 0.5]  # the middle of the ranking, never the extremes
    assert considered(Group("t", "general", "p", rollouts[:5])) == [0, 1, 2, 3, 4]


def test_socket_objects_with_deep_meta_are_reported_not_fatal():
    deep: dict = {}
    node = deep
    for _ in range(5000):
        node["x"] = {}
        node = node["x"]
    row = {"task_id": "t", "prompt": "p", "response": "r", "reward": 1, "meta": deep}
    with pytest.raises(RolloutError, match="meta"):
        parse_object(row)


def test_the_extract_section_chooses_the_backend_and_its_limits(monkeypatch):
    """[extract] decides what `submit_rollouts` runs: the request's server first, then the
    section's (backend llm), then the environment's; the key only ever from the environment."""
    from dsonode.api.rollouts import _llm_config
    from dsonode.extract.config import ExtractConfig

    for name in ("DSONODE_LLM_BASE_URL", "DSONODE_LLM_MODEL", "DSONODE_LLM_API_KEY"):
        monkeypatch.delenv(name, raising=False)
    plain = validate_params("submit_rollouts", {"rollouts": [{}]})
    assert _llm_config(plain, ExtractConfig()) is None  # offline by default
    llm = ExtractConfig(
        backend="llm", endpoint="http://127.0.0.1:9/v1", model="m", timeout_s=7, max_retries=1
    )
    config = _llm_config(plain, llm)
    assert config is not None and (config.base_url, config.model) == ("http://127.0.0.1:9/v1", "m")
    assert (config.timeout_s, config.max_retries, config.api_key) == (7, 1, None)
    monkeypatch.setenv("DSONODE_LLM_API_KEY", "sk-from-env")
    assert _llm_config(plain, llm).api_key == "sk-from-env"
    asked = validate_params(
        "submit_rollouts",
        {"rollouts": [{}], "llm": {"base_url": "http://127.0.0.2:9/v1", "model": "other"}},
    )
    assert _llm_config(asked, llm).model == "other"  # the request's server wins
    with pytest.raises(InvalidParams, match="backend is llm"):
        _llm_config(plain, ExtractConfig(backend="llm"))
    with pytest.raises(ValueError, match=r"extract\.per_group"):
        ExtractConfig(per_group=0)
