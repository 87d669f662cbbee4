"""The LLM extractor's prompts, in one place, as plain text (Training-Free GRPO, two stages).

Stage 1 (`summary_messages`): one call per rollout. The model reads the task, the attempt, its
reward and the ground truth, and summarises the attempt step by step, saying which steps
helped and which were detours or errors.

Stage 2 (`operations_messages`): one call per group. The model compares the group's summaries
with the experiences already in the library that are most similar to the task (shown as
E1..Ek) and answers with a JSON array of operations:

    [{"op": "add", "text": "..."},
     {"op": "modify", "id": "E2", "text": "..."},
     {"op": "merge", "ids": ["E1", "E3"], "text": "..."},
     {"op": "keep", "id": "E1"}]

Nothing the model returns is trusted: `dsonode.extract.llm` repairs and validates it (ids must
be among those shown, lessons at most 32 words, not task-specific) or rejects it.

Inputs are cut to fixed sizes so that a prompt stays bounded whatever the rollouts hold.
"""

from __future__ import annotations

from collections.abc import Sequence

__all__ = [
    "MAX_ATTEMPT_CHARS",
    "MAX_SUMMARY_CHARS",
    "OPERATIONS_SYSTEM",
    "SUMMARY_SYSTEM",
    "operations_messages",
    "summary_messages",
]

MAX_TASK_CHARS = 4_000
MAX_ATTEMPT_CHARS = 12_000
MAX_GROUND_TRUTH_CHARS = 2_000
#: a summary is cut to this before it goes into the stage-2 prompt
MAX_SUMMARY_CHARS = 3_000
MAX_EXISTING_CHARS = 600


def _cut(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[:limit] + " [...]"


SUMMARY_SYSTEM = """\
You review one attempt of an AI agent at a task. You are given the task, the attempt, the
reward the attempt earned (higher is better) and, when known, the ground truth.

Summarise the attempt step by step:
1. For each step, say in one short line what the agent did.
2. Using the reward and the ground truth, mark each step as HELPFUL, NEUTRAL, DETOUR or ERROR,
   and say briefly why.
3. End with one line starting "Key point:" naming the step or habit that decided the outcome.

Be concrete and brief. Do not solve the task again."""


def summary_messages(
    *,
    task_id: str,
    task: str,
    attempt: str,
    reward: float,
    ground_truth: str | None,
    index: int,
    count: int,
) -> list[dict[str, str]]:
    """Stage 1: the messages asking to summarise attempt `index` (0-based) of `count`."""
    truth = _cut(ground_truth, MAX_GROUND_TRUTH_CHARS) if ground_truth else "(not given)"
    user = (
        f"Task id: {task_id}\n"
        f"Attempt {index + 1} of {count}\n\n"
        f"## Task\n{_cut(task, MAX_TASK_CHARS)}\n\n"
        f"## Attempt\n{_cut(attempt, MAX_ATTEMPT_CHARS)}\n\n"
        f"## Reward\n{reward:g}\n\n"
        f"## Ground truth\n{truth}\n"
    )
    return [{"role": "system", "content": SUMMARY_SYSTEM}, {"role": "user", "content": user}]


OPERATIONS_SYSTEM = """\
You maintain a library of short, general lessons ("experiences") that help an AI agent solve
tasks. You are given several attempts at ONE task, each summarised step by step with its
reward, and the existing experiences most similar to the task, labelled E1, E2, ...

Compare the better attempts with the worse ones. What did the better ones do that the worse
ones did not? Then decide how the library should change, as operations:

- {"op": "add", "text": "<new lesson>"}: a lesson the library lacks.
- {"op": "modify", "id": "E<n>", "text": "<improved lesson>"}: an existing experience is
  close but incomplete or wrong; give its better version.
- {"op": "merge", "ids": ["E<n>", "E<m>"], "text": "<one lesson>"}: two or more existing
  experiences say the same thing; give the one lesson that replaces them.
- {"op": "keep", "id": "E<n>"}: an existing experience already covers what this task teaches.

Rules for every lesson text:
- at most 32 words, one or two sentences, in the imperative ("Check ...", "Before ...");
- general: it must help on OTHER tasks of the same kind. Never mention this task's numbers,
  names, entities, answer or id;
- about method, not about the final answer.
Use only the labels shown (E1, E2, ...). At most 4 operations. If nothing new was learnt,
answer [].

Answer with the JSON array only, no prose."""


def operations_messages(
    *,
    task_id: str,
    task: str,
    domain: str,
    summaries: Sequence[tuple[float, str]],
    existing: Sequence[tuple[str, str]],
) -> list[dict[str, str]]:
    """Stage 2: `summaries` as (reward, summary); `existing` as (label, text)."""
    attempts = "\n\n".join(
        f"### Attempt {i + 1} (reward {reward:g})\n{_cut(summary, MAX_SUMMARY_CHARS)}"
        for i, (reward, summary) in enumerate(summaries)
    )
    if existing:
        library = "\n".join(
            f"{label}: {_cut(text, MAX_EXISTING_CHARS)}" for label, text in existing
        )
    else:
        library = "(none yet)"
    user = (
        f"Task id: {task_id}\n"
        f"Domain: {domain}\n\n"
        f"## Task\n{_cut(task, MAX_TASK_CHARS)}\n\n"
        f"## Attempts\n{attempts}\n\n"
        f"## Existing experiences\n{library}\n\n"
        "Answer with the JSON array of operations."
    )
    return [{"role": "system", "content": OPERATIONS_SYSTEM}, {"role": "user", "content": user}]
