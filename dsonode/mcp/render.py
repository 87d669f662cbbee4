"""Pure parts of the MCP server: argument bounds, error wording, and the text agents read.

No I/O and no `mcp` import, so everything here is tested directly. The experience block
follows Training-Free GRPO's reference code (TencentCloudADP/youtu-agent,
training_free_grpo: `PROBLEM_WITH_EXPERIENCE_TEMPLATE` and the `"[{i}]. {e}"` lines with
ids G0, G1, ...; "None" when there is no experience).
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Any

from dsonode.api import jsonrpc
from dsonode.core.errors import DsoError

# ---- bounds (the node checks again; these give an agent the error before a round trip) -------

MIN_K = 1
MAX_K = 50
DEFAULT_K = 5
#: A search query is embedded: the socket's bound (bytes of UTF-8).
MAX_QUERY_BYTES = jsonrpc.MAX_QUERY_BYTES
#: A task for the experience block may be a whole problem statement; only its first
#: MAX_QUERY_BYTES bytes are used to retrieve (the encoder reads ~256 tokens anyway).
MAX_TASK_BYTES = 64 * 1024
#: Rollouts per submit_rollouts call; the request must also fit one socket line.
MAX_ROLLOUTS_PER_CALL = 1000
MAX_REQUEST_BYTES = jsonrpc.MAX_LINE_BYTES - 1024  # room for the JSON-RPC envelope

DOMAIN_PATTERN = r"^[a-z0-9][a-z0-9._/-]*$"
ID_PATTERN = r"^[0-9a-fA-F]{64}$"
_ID_RE = re.compile(ID_PATTERN)

# ---- Training-Free GRPO's wording ------------------------------------------------------------

EXPERIENCE_BLOCK_HEADER = (
    "When solving problems, you MUST first carefully read and understand "
    "the helpful instructions and experiences:"
)
PROBLEM_WITH_EXPERIENCE_TEMPLATE = "Please solve the problem:\n{problem}\n\n{block}"


class ArgumentError(DsoError):
    """A tool argument is out of bounds (the message names it, for the agent to fix)."""


def check_utf8(name: str, value: str, max_bytes: int) -> str:
    """`value` non-blank and at most `max_bytes` of UTF-8 (JSON schemas count characters)."""
    if not value.strip():
        raise ArgumentError(f"'{name}' must not be empty")
    size = len(value.encode("utf-8", "surrogatepass"))
    if size > max_bytes:
        raise ArgumentError(f"'{name}' is {size} bytes of UTF-8, the limit is {max_bytes}")
    return value


def check_id(value: str) -> str:
    """An experience id: 64 hex digits, returned lower-case."""
    if not _ID_RE.fullmatch(value):
        raise ArgumentError(
            "'id' must be an experience id: 64 hexadecimal characters "
            "(as returned by search_experiences or add_experience)"
        )
    return value.lower()


def head_bytes(text: str, max_bytes: int) -> str:
    """The longest prefix of `text` that is at most `max_bytes` of UTF-8 (whole characters)."""
    raw = text.encode("utf-8", "surrogatepass")
    if len(raw) <= max_bytes:
        return text
    return raw[:max_bytes].decode("utf-8", "ignore")


def feedback_choice(helpful: bool | None, reward_delta: float | None) -> dict[str, Any]:
    """The give_feedback params: exactly one of `helpful` and `reward_delta`."""
    if (helpful is None) == (reward_delta is None):
        raise ArgumentError(
            "give exactly one of 'helpful' (true/false) and 'reward_delta' (a number in [-1, 1])"
        )
    if helpful is not None:
        return {"helpful": bool(helpful)}
    assert reward_delta is not None
    if not -1.0 <= reward_delta <= 1.0:  # also false for NaN
        raise ArgumentError(f"'reward_delta' must be in [-1, 1], got {reward_delta}")
    return {"reward_delta": float(reward_delta)}


# ---- errors ----------------------------------------------------------------------------------


def describe_rpc_error(method: str, code: int, message: str) -> str:
    """What an agent should read when the node answers a call with a JSON-RPC error."""
    if code == jsonrpc.METHOD_NOT_FOUND:
        return (
            f"the dsonode node does not support '{method}' (JSON-RPC method not found): "
            "it runs an older version; upgrade the node to use this tool"
        )
    if code == jsonrpc.INVALID_PARAMS:
        return f"the node rejected the arguments: {message}"
    if code == jsonrpc.NOT_FOUND:
        return f"{message} (the node does not know this experience)"
    if code == jsonrpc.SERVER_BUSY:
        return f"the node is busy ({message}); try again shortly"
    if code == jsonrpc.NEEDS_FULL_NODE:
        return (
            f"{message}. This MCP server talks to a light node (no encoder): point it at a "
            "full node's socket (--socket) to search by text or to add experiences"
        )
    return f"the node could not complete '{method}': {message} (JSON-RPC error {code})"


# ---- results ---------------------------------------------------------------------------------

#: The fields of an experience that agents get (the node's result keys, as they are).
EXPERIENCE_FIELDS = (
    "id",
    "text",
    "domain",
    "tags",
    "score",
    "confirmed",
    "submissions",
    "feedback",
    "created",
    "author",
    "trust",
)


def experience_view(item: Mapping[str, Any]) -> dict[str, Any]:
    """One experience for an agent: the node's fields, `consensus` spelled out, `feedback`
    always present (null when the node has none or predates feedback)."""
    out = {key: item[key] for key in EXPERIENCE_FIELDS if key in item}
    out.setdefault("feedback", None)
    out["consensus"] = "confirmed" if item.get("confirmed") else "unconfirmed"
    return out


def _feedback_text(feedback: Any) -> str | None:
    if not isinstance(feedback, Mapping) or not feedback.get("votes"):
        return None
    median = feedback.get("median")
    median_text = f"{median:+.2f}" if isinstance(median, int | float) else "?"
    return f"feedback {median_text} from {feedback['votes']} vote(s)"


def _describe(item: Mapping[str, Any]) -> str:
    parts = []
    if isinstance(item.get("score"), int | float):
        parts.append(f"score {item['score']:.3f}")
    n = item.get("submissions", 0)
    parts.append(f"{'confirmed' if item.get('confirmed') else 'unconfirmed'}, {n} submission(s)")
    fb = _feedback_text(item.get("feedback"))
    if fb:
        parts.append(fb)
    trust = item.get("trust")
    if isinstance(trust, Mapping) and isinstance(trust.get("why"), list):
        why = ", ".join(str(w) for w in trust["why"][:6])
        parts.append(f"{'vouched' if trust.get('vouched') else 'UNVOUCHED'} ({why})")
    return "; ".join(parts)


def format_experience(item: Mapping[str, Any]) -> str:
    tags = item.get("tags") or []
    lines = [
        f"[{item.get('domain', '?')}] {item.get('text', '')}",
        f"  id: {item.get('id', '?')}",
        f"  {_describe(item)}" + (f"; tags: {', '.join(map(str, tags))}" if tags else ""),
    ]
    return "\n".join(lines)


def format_search(query: str, items: Sequence[Mapping[str, Any]]) -> str:
    if not items:
        return f"No experiences found for: {query}"
    head = f"{len(items)} experience(s) for: {query}"
    body = [f"{i}. {format_experience(item)}" for i, item in enumerate(items, 1)]
    return "\n".join([head, *body])


def experience_lines(texts: Sequence[str]) -> list[str]:
    """'[G0]. text', '[G1]. text', ... (experience texts are single lines: the wire collapses
    whitespace)."""
    return [f"[G{i}]. {' '.join(text.split())}" for i, text in enumerate(texts)]


def render_experience_block(texts: Sequence[str]) -> str:
    """The Training-Free GRPO experience block; "None" below the header when there is none."""
    lines = experience_lines(texts)
    return EXPERIENCE_BLOCK_HEADER + "\n" + ("\n".join(lines) if lines else "None")


def render_problem_prompt(task: str, texts: Sequence[str]) -> str:
    """The paper's prompt: the problem, then the experience block."""
    return PROBLEM_WITH_EXPERIENCE_TEMPLATE.format(
        problem=task, block=render_experience_block(texts)
    )


def format_rollouts_result(result: Mapping[str, Any]) -> str:
    added = result.get("added") or []
    bad = result.get("bad_rollouts") or []
    lines = [
        f"groups: {result.get('groups', 0)}, skipped groups (rewards all equal): "
        f"{result.get('skipped_groups', 0)}, added: {len(added)}, merged: "
        f"{result.get('merged', 0)}, already known: {result.get('existing', 0)}, "
        f"bad rollouts: {len(bad)}"
    ]
    for exp in added[:50]:
        if isinstance(exp, Mapping):
            lines.append(f"+ {exp.get('id', '?')}: {exp.get('text', '')}")
    for b in bad[:50]:
        if isinstance(b, Mapping):
            lines.append(f"! rollout {b.get('index', '?')}: {b.get('error', '')}")
    return "\n".join(lines)


def format_feedback_result(exp_id: str, result: Mapping[str, Any]) -> str:
    fb = _feedback_text(result.get("feedback"))
    return f"Feedback recorded for {result.get('id', exp_id)}" + (f": now {fb}." if fb else ".")
