"""The task_specific rule and the offline rewrite of a step into a general lesson (pure)."""

from __future__ import annotations

import pytest

from dsonode.extract import llm
from dsonode.extract.general import MAX_LESSON_WORDS, facts_of, generalise, task_specific
from dsonode.extract.rollouts import Group, Rollout


def _group(prompt: str, truth: str | None = None, task_id: str = "t/kind/0", domain="math"):
    rollouts = tuple(
        Rollout(task_id, prompt, "x", reward, domain=domain, ground_truth=truth)
        for reward in (1.0, 0.0)
    )
    return Group(task_id, domain, prompt, rollouts)


EQUATION = _group("Solve for x: (x^2 - 81) / (x - 9) = 12. Give all real solutions.", "x = 3")
CODE = _group(
    "Write a Python function find_index(xs, target) that returns the index of target in xs.",
    "tests: empty list, single element",
    domain="coding",
)
CITY = _group("Will I need an umbrella in Oslo tomorrow?", domain="agents")


@pytest.mark.parametrize(
    ("text", "group", "why"),
    [
        ("Check t/kind/0 again.", EQUATION, "task id"),
        ("Remember that tests: empty list, single element matter.", CODE, "answer"),
        ("Write a python function find index that returns", CODE, "copies 6 words"),
        ("Resolve 'tomorrow' to a date first.", CITY, "quoted literal"),
        ('Look for "rain" in the summary.', CITY, "quoted literal"),
        ("Check that x = 3 is not excluded.", EQUATION, "number"),
        ("Note that 9.0 makes the denominator vanish.", EQUATION, "number"),
        ("Substitute back into the equation for x.", EQUATION, "identifier"),
        ("Keep xs sorted before searching.", CODE, "identifier"),
        ("Call find_index on both halves.", CODE, "identifier"),
        ("Check the forecast for Oslo first.", CITY, "entity"),
    ],
)
def test_the_rule_names_what_makes_a_lesson_task_specific(text, group, why):
    reason = task_specific(text, group)
    assert reason is not None and why in reason, reason


@pytest.mark.parametrize(
    ("text", "group"),
    [
        # 1 and 2 are general constants; 4 is not a number of this task
        ("Use the complement: 1 - P(none), and halve by 2 at most 4 times.", EQUATION),
        ("Before cancelling a factor, record which values make the denominator zero.", EQUATION),
        ("When writing a function, test an empty input and a single element.", CODE),
        ("Read the precipitation probability field, not the summary.", CITY),
        ("Don't trust the first result; it's often an aggregator.", CITY),  # apostrophes
        ("Convert km/h to m/s by dividing by 3.6.", _group("A car moves at 36 km/h.")),
        ("A control group is needed when testing a treatment.", CITY),  # "A" starts it
        ("Query the API until the next page is empty.", _group("Count issues via the API.")),
    ],
)
def test_general_lessons_pass_the_rule(text, group):
    assert task_specific(text, group) is None


def test_the_llm_path_uses_the_same_rule():
    assert llm.task_specific is task_specific


def test_a_capital_letter_is_an_entity_only_where_an_article_cannot_be():
    group = _group("Design an experiment to test whether fertiliser A affects yield.")
    assert "entity" in (task_specific("Compare fertiliser A with a placebo.", group) or "")
    assert task_specific("A placebo group is the baseline.", group) is None


@pytest.mark.parametrize(
    ("step", "group", "expected"),
    [
        # the step's own condition is kept; the task's values go with their clause
        (
            "Check the candidate against the restriction: x = 3 is not 9, so it is valid.",
            EQUATION,
            "When asked to give all real solutions, check the candidate against the restriction.",
        ),
        # a statement before the instruction becomes its condition
        (
            "The response is paginated: follow the next link until it is empty.",
            CITY,
            "When the response is paginated, follow the next link until it is empty.",
        ),
        (
            "Sources disagree, so compare at least three independent ones.",
            CITY,
            "When sources disagree, compare at least three independent ones.",
        ),
        # a quoted literal after a noun goes alone; an aside in parentheses goes
        (
            "Convert the relative day 'tomorrow' into a date (use the calendar tool).",
            CITY,
            "When working on an agent task, convert the relative day into a date.",
        ),
        # a name after a preposition goes with it; the task's kind gives the condition
        (
            "Search every file in find_index for references before editing.",
            CODE,
            "When asked to write a function, search every file for references before editing.",
        ),
        (
            "After renaming, run the tests to catch any remaining reference.",
            CODE,
            "After renaming, run the tests to catch any remaining reference.",
        ),
    ],
)
def test_generalise_rewrites_a_step_into_one_conditioned_instruction(step, group, expected):
    out = generalise(step, group)
    assert out.text == expected, out
    assert task_specific(out.text, group) is None
    assert len(out.text.split()) <= MAX_LESSON_WORDS


@pytest.mark.parametrize(
    ("step", "group", "why"),
    [
        ("Hence x = 3.", EQUATION, "no imperative clause"),  # a result, not a method
        ("Multiply 81 by 12 first.", EQUATION, "number"),  # the value is the instruction
        ("First resolve 'tomorrow' to a concrete date.", CITY, "quoted literal"),
        ("Let me re-read the question to make sure I have it right.", CITY, "first person"),
        ("The numerator is a difference of squares.", EQUATION, "no imperative clause"),
    ],
)
def test_generalise_drops_what_cannot_be_made_general_and_says_why(step, group, why):
    out = generalise(step, group)
    assert out.text is None and out.dropped is not None and why in out.dropped, out


def test_generalise_never_exceeds_the_word_limit():
    long = "Check " + " ".join(["the value"] * 40) + "."
    out = generalise(long, CITY)
    assert out.text is None and "longer than" in (out.dropped or "")


def test_facts_are_computed_once_and_reused():
    facts = facts_of(CODE)
    assert "find_index" in facts.identifiers and "xs" in facts.identifiers
    assert task_specific("Keep xs sorted.", facts) == task_specific("Keep xs sorted.", CODE)


def test_the_benchmark_counts_specific_and_leaking_lessons_by_their_sources():
    """bench extract: task_specific_fraction by the rule, param_leak_fraction by the generator's
    meta.params (which sees what the rule cannot, e.g. a computed value); precision by
    meta.good_steps."""
    from dsonode.bench.extract import score_lessons
    from dsonode.extract.offline import Lesson, Source

    meta = [{"good_steps": [1], "params": ["820", "Lyon"]}, {"good_steps": [], "params": []}]
    rollouts = tuple(
        Rollout("t/0", "What was the population of Lyon?", "a\nb\nc", reward, meta=m)
        for reward, m in zip((1.0, 0.0), meta, strict=True)
    )
    group = Group("t/0", "general", rollouts[0].prompt, rollouts)
    lessons = [
        Lesson("When citing, prefer the statistics office.", "general", 1.0, [Source("t/0", 0, 1)]),
        Lesson("Check the figure for Lyon.", "general", 1.0, [Source("t/0", 0, 0)]),
        Lesson("When summing, expect about 820 in total.", "general", 1.0, [Source("t/0", 0, 1)]),
    ]
    out = score_lessons([group], lessons)
    assert out["task_specific_fraction"] == pytest.approx(1 / 3)  # "Lyon": an entity
    assert out["param_leak_fraction"] == pytest.approx(2 / 3)  # "Lyon" and the computed 820
    assert out["precision"] == pytest.approx(2 / 3) and out["recall"] == 1.0
