"""The offline extractor on the sample rollouts (real encoder), and `dsonode ingest`."""

from __future__ import annotations

import dataclasses
import json
import re
import warnings
from pathlib import Path

import pytest

from dsonode.api.ingest import load_rollouts
from dsonode.core.wire import MAX_TEXT_BYTES
from dsonode.extract.general import compose, task_specific
from dsonode.extract.offline import MAX_LESSON_WORDS, OfflineExtractor, provenance_of
from dsonode.extract.rollouts import Group, group_rollouts

SAMPLE = Path(__file__).resolve().parents[1] / "examples" / "rollouts"
CONDITION_WORDS = {"When", "Before", "After", "If", "On", "Once", "While", "Whenever", "For"}
WORD = re.compile(r"[a-z0-9]+")


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
            # general: nothing of any task it came from (the rule of extract/general.py)
            assert task_specific(lesson.text, group) is None, lesson.text
        # one sentence, its condition first ("When ..., do ..."), then what to do
        assert lesson.text.endswith(".") and ". " not in lesson.text[:-1], lesson.text
        assert lesson.text.split(" ")[0] in CONDITION_WORDS and ", " in lesson.text
        assert lesson.text == compose(lesson.condition, lesson.action)
        # what to do is the step's own words (the rewrite removes, it does not invent; the one
        # word it adds is "the value" for an equation of the task such as "x = 3")
        step = by_task[lesson.source.task_id].rollouts[lesson.source.rollout].steps()
        step_words = set(WORD.findall(step[lesson.source.step].lower()))
        if "equation" in lesson.abstracted:
            step_words |= {"the", "value"}
        assert set(WORD.findall(lesson.action.lower())) <= step_words, lesson.text
        if lesson.abstracted:
            assert dict(provenance_of(lesson))["abstracted"] == ",".join(lesson.abstracted)
    # the sample's math steps are full of the tasks' numbers and equations: some cannot be made
    # general, and each is reported with where it was and why
    assert result.dropped
    for task_id, why in result.dropped:
        assert task_id in by_task and re.match(r"rollout \d+ step \d+: \S", why), why
    assert any("equation" in why or "number" in why for _, why in result.dropped)
    again = extractor.extract(math_groups)
    assert [(x.text, x.sources) for x in again.lessons] == [
        (x.text, x.sources) for x in result.lessons
    ]


def _with_rewards(groups: list[Group], reward) -> list[Group]:
    return [
        dataclasses.replace(
            g, rollouts=tuple(dataclasses.replace(r, reward=reward(r.reward)) for r in g.rollouts)
        )
        for g in groups
    ]


def test_huge_rewards_yield_what_the_same_rewards_scaled_down_yield(math_groups, extractor):
    """Finite rewards whose float mean overflows (sample rewards are 0 or 1; several 1.7e308
    sum to inf) give the lessons of the same rewards scaled down, without a numpy warning."""
    groups = math_groups[:8]
    assert any(g.rewards.count(1.0) >= 2 for g in groups)  # their sum overflows below
    assert any(g.rewards.count(0.0) >= 2 for g in groups)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for shift in (0.0, -1.0):  # rewards in {0, 1.7e308}, then in {-1.7e308, 0}
            huge = extractor.extract(_with_rewards(groups, lambda r, s=shift: (r + s) * 1.7e308))
            small = extractor.extract(_with_rewards(groups, lambda r, s=shift: (r + s) * 1.7))
            assert huge.lessons, "no lessons from the huge rewards"
            assert huge == small


def test_ingest_dry_run(capsys):
    from dsonode.cli import main

    assert main(["ingest", str(SAMPLE / "science.jsonl"), "--dry-run", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["rollouts"] == 59 and out["lessons"] and out["dry_run"]
    assert any("equal" in s["reason"] for s in out["skipped_groups"])
