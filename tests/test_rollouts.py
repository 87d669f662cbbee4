"""The rollouts format: parsing, bad lines with their numbers, grouping, no-signal groups."""

from __future__ import annotations

import json
import warnings

import pytest

from dsonode.extract.rollouts import (
    REWARD_EPS,
    group_rollouts,
    parse_lines,
    reward_labels,
    split_steps,
)


def _line(**kw):
    row = {"task_id": "t1", "prompt": "p", "response": "a\nb", "reward": 1.0, **kw}
    return json.dumps(row)


def test_parse_good_and_bad_lines_reports_line_numbers():
    lines = [
        _line(),
        "not json",
        "",
        _line(reward="high"),
        _line(reward=float("inf")).replace("Infinity", "1e999"),
        _line(domain="Bad Domain"),
        _line(response=[{"role": "user", "content": "x"}]),
        _line(task_id="t1", reward=0.0, domain="math"),
    ]
    res = parse_lines(lines)
    assert [r.line for r in res.rollouts] == [1, 8]
    assert [e.line for e in res.errors] == [2, 4, 5, 6, 7]
    assert "reward" in res.errors[1].message
    assert "domain" in res.errors[3].message
    assert "assistant" in res.errors[4].message


def test_grouping_and_no_signal_groups():
    lines = [
        _line(task_id="a", reward=1.0),
        _line(task_id="b", reward=0.5),
        _line(task_id="a", reward=0.0),
        _line(task_id="b", reward=0.5),
        _line(task_id="c", reward=1.0),
    ]
    groups, skipped = group_rollouts(parse_lines(lines).rollouts)
    assert [g.task_id for g in groups] == ["a"]
    assert groups[0].rewards == [1.0, 0.0]
    reasons = {s.task_id: s.reason for s in skipped}
    assert "equal" in reasons["b"] and "one rollout" in reasons["c"]


def test_split_steps_text_and_chat():
    assert split_steps("1. First do X.\n\n- Then Y.\nStep 3: Z.") == [
        "First do X.",
        "Then Y.",
        "Z.",
    ]
    assert split_steps("One sentence. Another one.") == ["One sentence.", "Another one."]
    chat = (
        {"role": "user", "content": "q"},
        {"role": "assistant", "content": "plan"},
        {"role": "tool", "content": "ok"},
        {"role": "assistant", "content": ""},
        {"role": "assistant", "content": "answer"},
    )
    assert split_steps(chat) == ["plan", "answer"]


def test_oversized_fields_are_rejected():
    res = parse_lines([_line(prompt="x" * 40_000), _line(meta=[1])])
    assert [e.line for e in res.errors] == [1, 2]


@pytest.mark.parametrize(
    ("rewards", "labels"),
    [
        ([1.0, 0.0, 1.0, 1.0, 0.0], [1, -1, 1, 1, -1]),
        ([1.7e308, 1.7e308, 0.0], [1, 1, -1]),  # the float sum is inf
        ([-1.7e308, -1.7e308, 0.0], [-1, -1, 1]),
        ([1.7e308, -1.7e308, 1.7e308], [1, -1, 1]),  # max - min is inf
        ([0.1, 0.2, 0.3], [-1, 0, 1]),  # the float mean 0.20000000000000004 is not "at"
        ([5e-324, 0.0], [0, 0]),  # within REWARD_EPS of the mean: neither side
        ([1.0, 1.0 + 2 * REWARD_EPS, 1.0 - 2 * REWARD_EPS], [0, 1, -1]),
    ],
)
def test_reward_labels_are_exact_and_never_overflow(rewards, labels):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert reward_labels(rewards) == labels


def test_huge_rewards_label_like_the_same_rewards_scaled_down():
    """A group's labels do not depend on the scale of its rewards (2**-1000 is exact)."""
    huge = [1.7e308, 1.6e308, 1.7e308, -2e307, 3e307, -1.7e308]
    small = [r * 2.0**-1000 for r in huge]
    assert [s * 2.0**1000 for s in small] == huge
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert reward_labels(huge) == reward_labels(small) == [1, 1, 1, -1, -1, -1]


def test_huge_rewards_are_parsed_and_grouped():
    lines = [_line(task_id="h", reward=r) for r in (1.7e308, 1.7e308, -1.7e308)]
    groups, skipped = group_rollouts(parse_lines(lines).rollouts)
    assert not skipped and groups[0].labels() == [1, 1, -1]
