"""The rollouts format: JSONL, one rollout a line, grouped by task (pure: lines in, values out).

    {"task_id": "math/17", "prompt": "...", "response": "..." | [chat messages], "reward": 1.0,
     "ground_truth": "...", "domain": "math", "meta": {...}}

`response` is the model's text, or an OpenAI-style list of chat messages for an agent
trajectory. A bad line never stops the parse: it is reported as a `LineError` with its line
number and skipped. Every field is bounded, so a hostile file costs bounded memory per line.
Rollouts of one task form a `Group`; as in Training-Free GRPO, a group whose rewards do not
differ carries no signal and is skipped with a reason.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from fractions import Fraction
from typing import Any

from dsonode.core.errors import DsoError
from dsonode.core.wire import MAX_DOMAIN_BYTES

__all__ = [
    "DEFAULT_DOMAIN",
    "MAX_LINE_BYTES",
    "Group",
    "LineError",
    "ParseResult",
    "Rollout",
    "RolloutError",
    "SkippedGroup",
    "group_rollouts",
    "parse_line",
    "parse_lines",
    "parse_object",
    "reward_labels",
    "split_steps",
]

DEFAULT_DOMAIN = "general"
MAX_LINE_BYTES = 256 * 1024
MAX_TASK_ID_BYTES = 256
MAX_PROMPT_BYTES = 32 * 1024
MAX_RESPONSE_BYTES = 128 * 1024  # text, or the sum of the message contents
MAX_MESSAGES = 256
MAX_GROUND_TRUTH_BYTES = 16 * 1024
MAX_META_BYTES = 16 * 1024  # as compact JSON
MAX_ROLLOUTS = 100_000  # per parse: beyond it lines are reported, not kept
MAX_STEPS = 256  # per rollout; later steps are ignored
MAX_STEP_CHARS = 2_000  # a longer "step" is cut; a lesson keeps only its first words anyway
REWARD_EPS = 1e-9  # rewards closer than this are "the same"

_DOMAIN_RE = re.compile(r"[a-z0-9][a-z0-9._/-]*")  # the wire format's domain rule
_ROLES = {"system", "user", "assistant", "tool", "function", "developer"}
_KNOWN_FIELDS = {"task_id", "prompt", "response", "reward", "ground_truth", "domain", "meta"}
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+(?=[A-Z0-9\"'(\[])")
_LIST_MARKER = re.compile(r"^\s*(?:[-*•]\s+|\d{1,3}[.)]\s+|step\s+\d{1,3}\s*[:.)-]\s*)", re.I)


class RolloutError(DsoError):
    """One rollout line is invalid (the message names the field)."""


@dataclass(frozen=True)
class Rollout:
    task_id: str
    prompt: str
    response: str | tuple[Mapping[str, Any], ...]
    reward: float
    domain: str = DEFAULT_DOMAIN
    ground_truth: str | None = None
    meta: Mapping[str, Any] = field(default_factory=dict)
    line: int = 0  # 1-based line number in its file (0 when not from a file)

    def steps(self) -> list[str]:
        return split_steps(self.response)


@dataclass(frozen=True)
class LineError:
    line: int
    message: str

    def __str__(self) -> str:
        return f"line {self.line}: {self.message}"


@dataclass(frozen=True)
class ParseResult:
    rollouts: list[Rollout]
    errors: list[LineError]


@dataclass(frozen=True)
class Group:
    """The rollouts of one task, in file order (a rollout's index is its position here)."""

    task_id: str
    domain: str
    prompt: str
    rollouts: tuple[Rollout, ...]

    @property
    def rewards(self) -> list[float]:
        return [r.reward for r in self.rollouts]

    def labels(self) -> list[int]:
        """Per rollout: +1 success, -1 failure, 0 at the mean (`reward_labels`)."""
        return reward_labels(self.rewards)


@dataclass(frozen=True)
class SkippedGroup:
    task_id: str
    rollouts: int
    reason: str


# ------------------------------------------------------------------------------- parsing


def _text(obj: Mapping[str, Any], key: str, max_bytes: int, required: bool) -> str | None:
    value = obj.get(key)
    if value is None:
        if required:
            raise RolloutError(f"missing field {key!r}")
        return None
    if not isinstance(value, str):
        raise RolloutError(f"{key} must be a string, got {type(value).__name__}")
    n = len(value.encode("utf-8", "surrogatepass"))
    if n > max_bytes:
        raise RolloutError(f"{key} is {n} bytes, the limit is {max_bytes}")
    return value


def _reward(value: Any) -> float:
    if value is None:
        raise RolloutError("missing field 'reward'")
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise RolloutError(f"reward must be a number, got {type(value).__name__}")
    reward = float(value)
    if not math.isfinite(reward):
        raise RolloutError(f"reward must be finite, got {value!r}")
    return reward


def _domain(value: Any) -> str:
    if value is None:
        return DEFAULT_DOMAIN
    if not isinstance(value, str):
        raise RolloutError(f"domain must be a string, got {type(value).__name__}")
    if len(value.encode("utf-8")) > MAX_DOMAIN_BYTES or not _DOMAIN_RE.fullmatch(value):
        raise RolloutError(
            f"domain {value[:80]!r} must be 1-{MAX_DOMAIN_BYTES} chars of [a-z0-9._/-], "
            "starting with a letter or digit"
        )
    return value


def _message_text(content: Any, i: int) -> str:
    """A message's text: a string, or OpenAI content parts (their `text` fields joined)."""
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        parts = []
        for part in content:
            if not isinstance(part, dict):
                raise RolloutError(f"response[{i}].content parts must be objects")
            text = part.get("text")
            if isinstance(text, str):
                parts.append(text)
        return "\n".join(parts)
    raise RolloutError(f"response[{i}].content must be a string, a list of parts or null")


def _response(value: Any) -> str | tuple[Mapping[str, Any], ...]:
    if value is None:
        raise RolloutError("missing field 'response'")
    if isinstance(value, str):
        n = len(value.encode("utf-8", "surrogatepass"))
        if n > MAX_RESPONSE_BYTES:
            raise RolloutError(f"response is {n} bytes, the limit is {MAX_RESPONSE_BYTES}")
        return value
    if not isinstance(value, list):
        raise RolloutError(
            f"response must be a string or a list of chat messages, got {type(value).__name__}"
        )
    if not value:
        raise RolloutError("response is an empty list of messages")
    if len(value) > MAX_MESSAGES:
        raise RolloutError(f"response has {len(value)} messages, the limit is {MAX_MESSAGES}")
    total = 0
    messages = []
    for i, msg in enumerate(value):
        if not isinstance(msg, dict):
            raise RolloutError(f"response[{i}] must be an object with 'role' and 'content'")
        role = msg.get("role")
        if role not in _ROLES:
            raise RolloutError(f"response[{i}].role must be one of {sorted(_ROLES)}, got {role!r}")
        text = _message_text(msg.get("content"), i)
        total += len(text.encode("utf-8", "surrogatepass"))
        if total > MAX_RESPONSE_BYTES:
            raise RolloutError(f"response messages exceed {MAX_RESPONSE_BYTES} bytes of content")
        messages.append({"role": role, "content": text})
    if not any(m["role"] == "assistant" for m in messages):
        raise RolloutError("response has no assistant message")
    return tuple(messages)


def _meta(value: Any) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise RolloutError(f"meta must be an object, got {type(value).__name__}")
    try:
        encoded = json.dumps(value, separators=(",", ":"), ensure_ascii=False)
    except (RecursionError, TypeError, ValueError):  # e.g. nested too deep (socket input)
        raise RolloutError("meta is nested too deeply or holds values that are not JSON") from None
    n = len(encoded.encode("utf-8", "surrogatepass"))
    if n > MAX_META_BYTES:
        raise RolloutError(f"meta is {n} bytes as JSON, the limit is {MAX_META_BYTES}")
    return value


def parse_line(line: str | bytes, line_no: int = 0) -> Rollout:
    """One JSONL line -> a Rollout, or RolloutError naming what is wrong."""
    if len(line) > MAX_LINE_BYTES:
        raise RolloutError(f"line is longer than {MAX_LINE_BYTES} bytes")
    try:
        obj = json.loads(line)
    except (ValueError, RecursionError) as exc:  # UnicodeDecodeError is a ValueError
        raise RolloutError(f"not valid JSON: {exc}") from None
    return parse_object(obj, line_no)


def parse_object(obj: Any, line_no: int = 0) -> Rollout:
    """One decoded rollout (e.g. from the socket's `submit_rollouts`) -> a Rollout."""
    if not isinstance(obj, dict):
        raise RolloutError(f"a rollout must be a JSON object, got {type(obj).__name__}")
    task_id = _text(obj, "task_id", MAX_TASK_ID_BYTES, required=True)
    assert task_id is not None
    if not task_id.strip():
        raise RolloutError("task_id must not be empty")
    prompt = _text(obj, "prompt", MAX_PROMPT_BYTES, required=True)
    assert prompt is not None
    return Rollout(
        task_id=task_id,
        prompt=prompt,
        response=_response(obj.get("response")),
        reward=_reward(obj.get("reward")),
        domain=_domain(obj.get("domain")),
        ground_truth=_text(obj, "ground_truth", MAX_GROUND_TRUTH_BYTES, required=False),
        meta=_meta(obj.get("meta")),
        line=line_no,
    )


def parse_lines(lines: Iterable[str | bytes], start: int = 1) -> ParseResult:
    """Parse JSONL lines; blank lines are ignored, bad lines reported with their number."""
    rollouts: list[Rollout] = []
    errors: list[LineError] = []
    for line_no, line in enumerate(lines, start):
        stripped = line.strip()
        if not stripped:
            continue
        if len(rollouts) >= MAX_ROLLOUTS:
            errors.append(LineError(line_no, f"more than {MAX_ROLLOUTS} rollouts in one input"))
            continue
        try:
            rollouts.append(parse_line(stripped, line_no))
        except RolloutError as exc:
            errors.append(LineError(line_no, str(exc)))
    return ParseResult(rollouts, errors)


# ------------------------------------------------------------------------------- grouping


def group_rollouts(rollouts: Iterable[Rollout]) -> tuple[list[Group], list[SkippedGroup]]:
    """Group by task_id (first-seen order); skip groups without a reward difference.

    A group takes its domain and prompt from its first rollout.
    """
    by_task: dict[str, list[Rollout]] = {}
    for r in rollouts:
        by_task.setdefault(r.task_id, []).append(r)
    groups: list[Group] = []
    skipped: list[SkippedGroup] = []
    for task_id, members in by_task.items():
        rewards = [r.reward for r in members]
        if len(members) < 2:
            skipped.append(SkippedGroup(task_id, 1, "only one rollout: nothing to compare"))
        elif max(rewards) - min(rewards) <= REWARD_EPS:
            skipped.append(
                SkippedGroup(
                    task_id, len(members), f"all {len(members)} rewards equal {rewards[0]:g}"
                )
            )
        else:
            groups.append(Group(task_id, members[0].domain, members[0].prompt, tuple(members)))
    return groups, skipped


def reward_labels(rewards: Sequence[float]) -> list[int]:
    """Per reward: +1 above the mean of `rewards` by more than REWARD_EPS, -1 below it by more,
    0 within REWARD_EPS of it (the sign of the GRPO advantage).

    Computed exactly on rationals, never with a float mean: the mean of finite rewards can
    overflow (1.7e308 and 1.7e308 sum to inf, and then no rollout is above it), and a rounded
    mean puts a reward that is at it (0.2 of 0.1, 0.2, 0.3) on one side or the other.
    """
    n = len(rewards)
    exact = [Fraction(r) for r in rewards]  # raises on inf/NaN, which parsing refuses
    total = sum(exact, Fraction(0))
    tolerance = n * Fraction(REWARD_EPS)
    # r - mean compared with +-eps, all multiplied by n: no division, no rounding
    return [(x * n - total > tolerance) - (total - x * n > tolerance) for x in exact]


# ------------------------------------------------------------------------------- steps


def _clean_step(text: str) -> str:
    text = _LIST_MARKER.sub("", text, count=1).strip()
    return text[:MAX_STEP_CHARS]


def split_steps(response: str | tuple[Mapping[str, Any], ...] | list) -> list[str]:
    """The steps of a response, in order; a step's index is its position in this list.

    Chat trajectories: one step per assistant turn with content. Text: one step per non-empty
    line; a text that is a single line is split into sentences instead. List markers
    ("1.", "- ", "Step 3:") are stripped. At most MAX_STEPS steps.
    """
    if isinstance(response, str):
        lines = [ln for ln in response.splitlines() if ln.strip()]
        if len(lines) == 1:
            lines = [s for s in _SENTENCE_END.split(lines[0]) if s.strip()]
        raw = lines
    else:
        raw = [
            m["content"]
            for m in response
            if m.get("role") == "assistant" and isinstance(m.get("content"), str)
        ]
        raw = [c for c in raw if c.strip()]
    steps = [_clean_step(s) for s in raw]
    return [s for s in steps if s][:MAX_STEPS]
