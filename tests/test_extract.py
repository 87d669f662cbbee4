"""The offline extractor on the sample rollouts (real encoder), and `dsonode ingest`."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from dsonode.api.ingest import load_rollouts
from dsonode.core.wire import MAX_TEXT_BYTES
from dsonode.extract.offline import MAX_LESSON_WORDS, OfflineExtractor
from dsonode.extract.rollouts import group_rollouts

SAMPLE = Path(__file__).resolve().parents[1] / "examples" / "rollouts"


@pytest.fixture(scope="module")
def math_groups():
    return group_rollouts(load_rollouts(SAMPLE / "math.jsonl").rollouts)[0]


@pytest.fixture(scope="module")
def extractor():
    from dsonode.embed import get_embedder

    return OfflineExtractor(get_embedder().encode_base)


def test_lessons_come_from_successful_rollouts(math_groups, extractor):
    result = extractor.extract(math_groups)
    assert result.lessons
    by_task = {g.task_id: g for g in math_groups}
    for lesson in result.lessons:
        assert len(lesson.text.split()) <= MAX_LESSON_WORDS
        assert len(lesson.text.encode()) <= MAX_TEXT_BYTES
        for src in lesson.sources:
            group = by_task[src.task_id]
            mean = sum(group.rewards) / len(group.rewards)
            rollout = group.rollouts[src.rollout]
            assert rollout.reward > mean, "lesson taken from a failed rollout"
        step = by_task[lesson.source.task_id].rollouts[lesson.source.rollout].steps()
        assert lesson.text.split(": ", 1)[1].split(" ...")[0] in step[lesson.source.step]
    again = extractor.extract(math_groups)
    assert [(x.text, x.sources) for x in again.lessons] == [
        (x.text, x.sources) for x in result.lessons
    ]


def test_ingest_dry_run(capsys):
    from dsonode.cli import main

    assert main(["ingest", str(SAMPLE / "science.jsonl"), "--dry-run", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["rollouts"] == 59 and out["lessons"] and out["dry_run"]
    assert any("equal" in s["reason"] for s in out["skipped_groups"])
