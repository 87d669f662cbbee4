"""The LLM extractor over real HTTP, against a local server of recorded completions.

The server (`dsonode.extract.testing.RecordedLLMServer`, a real HTTP server on 127.0.0.1) serves
the hand-written completions of tests/fixtures/llm/ for sample groups of examples/rollouts:
clean JSON, JSON in a code fence with trailing commas (repaired), wrong ids, an over-long and a
task-specific lesson (dropped), a near-duplicate of an existing experience (merged), a 429 then
success (retried), a 500 and a timeout (the group fails, the others go on), a cut-off answer
(rejected). Embeddings come from the real encoder.
"""

from __future__ import annotations

import dataclasses
import logging
import warnings
from pathlib import Path

import pytest

from dsonode.api.ingest import load_rollouts
from dsonode.core.wire import experience_id
from dsonode.extract.llm import (
    ChatClient,
    Existing,
    LLMConfig,
    LLMError,
    LLMExtractor,
    extract_json,
    validate_operations,
)
from dsonode.extract.offline import MAX_LESSON_WORDS, provenance_of
from dsonode.extract.rollouts import group_rollouts
from dsonode.extract.testing import RecordedLLMServer

ROOT = Path(__file__).resolve().parents[1]
SAMPLE = ROOT / "examples" / "rollouts"
FIXTURES = ROOT / "tests" / "fixtures" / "llm"
TASKS = [
    "math/rational-equation/0",
    "science/unit-conversion/0",
    "coding/binary-search/0",
    "agents/weather-tool/0",
    "web-research/population-lookup/0",
    "math/rational-equation/3",
    "science/unit-conversion/1",
]
SECRET = "sk-test-never-log-this-0123456789"


def _existing(domain: str, text: str) -> Existing:
    return Existing(experience_id(domain, text).hex(), text, domain)


LIBRARY = [
    _existing(
        "math",
        "Before cancelling a common factor, record the values that make the denominator zero "
        "and exclude them from the solutions.",
    ),
    _existing(
        "science", "Convert every quantity to SI units before multiplying, then check the units."
    ),
    _existing("coding", "Check that the loop bounds shrink on every iteration so it terminates."),
    _existing(
        "coding", "Make sure each loop iteration narrows the search interval, or it may never end."
    ),
]


def retrieve(task_text: str, k: int) -> list[Existing]:
    assert task_text and k == 5
    return LIBRARY[:k]


@pytest.fixture(scope="module")
def groups():
    rollouts = []
    for f in sorted(SAMPLE.glob("*.jsonl")):
        rollouts.extend(load_rollouts(f).rollouts)
    by_task = {g.task_id: g for g in group_rollouts(rollouts)[0]}
    return [by_task[t] for t in TASKS]


@pytest.fixture(scope="module")
def embed():
    from dsonode.embed import get_embedder

    return get_embedder().encode_base


@pytest.fixture
def server():
    with RecordedLLMServer(FIXTURES) as s:
        yield s


def _config(server: RecordedLLMServer, **kw) -> LLMConfig:
    # 2 s: far above a recorded answer's few ms even on a loaded machine, far below the 5 s
    # of the fixture that stands for a hung server
    settings = {"timeout_s": 2.0, "max_retries": 1, "backoff_s": 0.01, "concurrency": 3}
    settings.update(kw)
    return LLMConfig(base_url=server.base_url, model="recorded", api_key=SECRET, **settings)


def test_extract_over_http(groups, embed, server, caplog):
    caplog.set_level(logging.DEBUG)
    with ChatClient(_config(server)) as chat:
        extractor = LLMExtractor(chat, embed, retrieve)
        result = extractor.extract(groups)

    # The 500, the timeout and the cut-off answer fail their groups; the other four go on.
    failed = {f.task_id: f.error for f in result.failed}
    assert set(failed) == {TASKS[4], TASKS[5], TASKS[6]}
    assert "HTTP 500" in failed[TASKS[4]] and "2 attempts" in failed[TASKS[4]]
    assert "timed out" in failed[TASKS[5]]
    assert "not closed" in failed[TASKS[6]]
    assert result.groups == len(TASKS)

    # 429 then success: two operations calls; 500 and timeout: first try + one retry each.
    assert server.count("operations", TASKS[3]) == 2
    assert server.count("operations", TASKS[4]) == 2
    assert server.count("operations", TASKS[5]) == 2
    assert server.count("summary", TASKS[0]) == 5  # stage 1: one summary per rollout
    assert all(r["authorized"] and r["model"] == "recorded" for r in server.requests)

    by_text = {lesson.text: lesson for lesson in result.lessons}
    ids = {e.text: e.id for e in LIBRARY}
    # clean answer: the add is taken, the keep adds nothing
    math = [x for x in result.lessons if x.source.task_id == TASKS[0]]
    assert [x.op for x in math] == ["add"]
    assert math[0].text.startswith("After solving, substitute every candidate back")
    # fenced JSON with trailing commas was repaired: a modify of E2 and an add
    science = [x for x in result.lessons if x.source.task_id == TASKS[1]]
    assert [x.op for x in science] == ["modify", "add"]
    assert science[0].supersedes == (ids[LIBRARY[1].text],)
    # coding: the merge names both ids; the near-duplicate of E4 is merged into it, not added
    coding = [x for x in result.lessons if x.source.task_id == TASKS[2]]
    assert [x.op for x in coding] == ["merge", "add"]
    assert coding[0].supersedes == (LIBRARY[2].id, LIBRARY[3].id)
    assert coding[1].text.startswith("Test edge cases")
    assert LIBRARY[3].id in result.merged_into_existing
    assert not any("narrows the search interval" in t for t in by_text)
    dropped = " | ".join(extractor.dropped[TASKS[2]])
    assert "'E9' is not among the experiences shown" in dropped
    assert f"the limit is {MAX_LESSON_WORDS}" in dropped
    assert "task-specific" in dropped
    # the 429 was retried and its answer used; of its two adds, the one quoting the task's
    # 'tomorrow' is dropped by the task_specific rule (a quoted literal), the other is taken
    agents = [x for x in result.lessons if x.source.task_id == TASKS[3]]
    assert [x.op for x in agents] == ["add"]
    assert agents[0].text.startswith("Decide from the numeric fields")
    quoted = " | ".join(extractor.dropped[TASKS[3]])
    assert "task-specific" in quoted and "quoted literal" in quoted and "'tomorrow'" in quoted

    by_task = {g.task_id: g for g in groups}
    for lesson in result.lessons:
        assert len(lesson.text.split()) <= MAX_LESSON_WORDS
        assert lesson.tags == ("extracted", "llm")
        group = by_task[lesson.source.task_id]
        mean = sum(group.rewards) / len(group.rewards)
        assert lesson.sources and all(
            group.rollouts[s.rollout].reward > mean for s in lesson.sources
        ), "an LLM lesson must name only rollouts that did better than the group's mean"
        prov = dict(provenance_of(lesson))
        assert prov["extractor"] == "llm"
        assert [v for k, v in sorted(prov.items()) if k.startswith("supersedes")] == list(
            lesson.supersedes
        )

    # the API key is sent (Authorization) but never logged nor shown
    assert SECRET not in caplog.text
    assert SECRET not in repr(_config(server))


def test_huge_rewards_name_the_same_winners(groups, embed, server):
    """Rewards whose float mean overflows (1.7e308 at least twice) give the lessons and the
    provenance that the same rewards scaled down give, without a numpy warning."""
    group = groups[0]  # the clean answer: one add
    assert group.rewards.count(1.0) >= 2

    def extract(scale: float):
        rollouts = tuple(dataclasses.replace(r, reward=r.reward * scale) for r in group.rollouts)
        with ChatClient(_config(server)) as chat:
            return LLMExtractor(chat, embed, retrieve).extract(
                [dataclasses.replace(group, rollouts=rollouts)]
            )

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        huge, small = extract(1.7e308), extract(1.7)
    assert [x.op for x in huge.lessons] == ["add"]
    assert [s.rollout for s in huge.lessons[0].sources] == [
        i for i, r in enumerate(group.rewards) if r == 1.0
    ]
    assert huge == small


def test_response_size_is_bounded(server):
    config = _config(server, max_response_bytes=1024, max_retries=0)
    with ChatClient(config) as chat, pytest.raises(LLMError, match="over 1024 bytes"):
        # the recorded operations answer for this task is ~1.5 KB
        chat.complete([{"role": "user", "content": "Task id: coding/binary-search/0\n"}])


def test_unreachable_server_fails_cleanly():
    with RecordedLLMServer() as s:
        url = s.base_url  # the port is free again once the server has stopped
    config = LLMConfig(base_url=url, model="m", timeout_s=1, max_retries=1, backoff_s=0)
    with ChatClient(config) as chat, pytest.raises(LLMError, match="connection failed"):
        chat.complete([{"role": "user", "content": "hello"}])


def test_extract_json_repairs_or_rejects():
    assert extract_json('```json\n[{"op": "add", "text": "a",},]\n```') == [
        {"op": "add", "text": "a"}
    ]
    assert extract_json('Sure! {"operations": []} Hope this helps.') == {"operations": []}
    assert extract_json('[{"text": "a ] tricky [ string"}]') == [{"text": "a ] tricky [ string"}]
    for bad, why in [
        ("no json here", "no JSON"),
        ('[{"op": "add"', "not closed"),
        ("[{'op': 'add'}]", "beyond repair"),
        ("[" * 10 + "]" * 9 + "}", "not closed"),
        ("x" * 70_000, "limit"),
    ]:
        with pytest.raises(LLMError, match=why):
            extract_json(bad)


def test_validate_operations_never_trusts_the_model():
    labels = {"E1": "a" * 64, "E2": "b" * 64}
    ops, dropped = validate_operations(
        [
            {"op": "add", "text": "  Check   the units. "},
            {"op": "modify", "id": "e2", "text": "Better."},
            {"op": "merge", "ids": ["E1", "E1"], "text": "x"},
            {"op": "merge", "ids": ["E1", "c" * 64], "text": "x"},
            {"op": "delete", "id": "E1"},
            {"op": "add", "text": 42},
            {"op": "add", "text": "bad \x07 bell"},
            "not an object",
            {"op": "keep", "id": "E1"},
        ],
        labels,
    )
    assert [(o.op, o.text, o.ids) for o in ops] == [
        ("add", "Check the units.", ()),
        ("modify", "Better.", ("b" * 64,)),
        ("keep", None, ("a" * 64,)),
    ]
    assert len(dropped) == 6
    with pytest.raises(LLMError):
        validate_operations("a string", labels)
    ops, dropped = validate_operations([{"op": "add", "text": f"t{i}"} for i in range(50)], labels)
    assert len(ops) == 8 and dropped


def test_config_checks_and_key_scope():
    with pytest.raises(LLMError, match="base URL"):
        LLMConfig(base_url="file:///etc/passwd", model="m")
    with pytest.raises(LLMError, match="credentials"):
        LLMConfig(base_url="http://u:p@127.0.0.1/v1", model="m")
    with pytest.raises(LLMError, match="both"):
        LLMConfig.from_env({}, base_url="http://127.0.0.1:1/v1")
    assert LLMConfig.from_env({}) is None
    env = {
        "DSONODE_LLM_BASE_URL": "http://127.0.0.1:9/v1",
        "DSONODE_LLM_MODEL": "m",
        "DSONODE_LLM_API_KEY": SECRET,
    }
    assert LLMConfig.from_env(env).api_key == SECRET
    # a caller-chosen server never receives the key meant for the configured one
    assert LLMConfig.from_env(env, base_url="http://127.0.0.2:9/v1").api_key is None
