"""Experiences to seed a testnet with: the packaged samples, or a JSONL file of your own.

One JSON object a line: `{"domain": "math", "text": "...", "tags": ["algebra"]}` (tags
optional). Lines are validated and bounded here; the node validates them again on
`add_experience` (text <= 1,024 bytes of UTF-8 and the rest of the wire rules).
"""

from __future__ import annotations

import json
from importlib import resources
from pathlib import Path
from typing import Any

from dsonode.testnet.plan import PlanError

MAX_SEED_LINES = 10_000
MAX_SEED_FILE_BYTES = 16 * 1024 * 1024
MAX_TEXT_BYTES = 1024


def parse_seed_lines(lines: list[str], source: str) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for no, line in enumerate(lines, 1):
        if not line.strip():
            continue
        if len(out) >= MAX_SEED_LINES:
            raise PlanError(f"{source}: more than {MAX_SEED_LINES} experiences")
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as exc:
            raise PlanError(f"{source}:{no}: not JSON: {exc.msg}") from None
        if not isinstance(obj, dict):
            raise PlanError(f"{source}:{no}: not a JSON object")
        text, domain, tags = obj.get("text"), obj.get("domain"), obj.get("tags", [])
        if not isinstance(text, str) or not text.strip():
            raise PlanError(f"{source}:{no}: `text` must be a non-empty string")
        if len(text.encode("utf-8")) > MAX_TEXT_BYTES:
            raise PlanError(f"{source}:{no}: `text` is over {MAX_TEXT_BYTES} bytes")
        if not isinstance(domain, str) or not domain:
            raise PlanError(f"{source}:{no}: `domain` must be a non-empty string")
        if not isinstance(tags, list) or not all(isinstance(t, str) for t in tags):
            raise PlanError(f"{source}:{no}: `tags` must be a list of strings")
        out.append({"domain": domain, "text": text, "tags": tags})
    return out


def load_samples() -> list[dict[str, Any]]:
    """The packaged sample experiences (dsonode/data/sample_experiences.jsonl)."""
    text = resources.files("dsonode.data").joinpath("sample_experiences.jsonl").read_text("utf-8")
    return parse_seed_lines(text.splitlines(), "sample_experiences.jsonl")


def load_seed_file(path: Path) -> list[dict[str, Any]]:
    try:
        size = path.stat().st_size
        if size > MAX_SEED_FILE_BYTES:
            raise PlanError(f"--seed-file {path}: larger than {MAX_SEED_FILE_BYTES} bytes")
        text = path.read_text("utf-8")
    except OSError as exc:
        raise PlanError(f"--seed-file {path}: {exc.strerror or exc}") from None
    except UnicodeDecodeError:
        raise PlanError(f"--seed-file {path}: not UTF-8") from None
    return parse_seed_lines(text.splitlines(), str(path))


#: One `submit_rollouts` request must stay under the socket's 1 MiB line limit.
MAX_ROLLOUT_FILE_BYTES = 900 * 1024


def load_rollouts(path: Path) -> list[dict[str, Any]]:
    """A rollouts JSONL file (examples/rollouts/*.jsonl) as objects, for `submit_rollouts`
    (the node validates every field; here: size, JSON, objects)."""
    try:
        if path.stat().st_size > MAX_ROLLOUT_FILE_BYTES:
            raise PlanError(
                f"--rollouts {path}: over {MAX_ROLLOUT_FILE_BYTES} bytes (one socket request); "
                "split it by task"
            )
        text = path.read_text("utf-8")
    except OSError as exc:
        raise PlanError(f"--rollouts {path}: {exc.strerror or exc}") from None
    except UnicodeDecodeError:
        raise PlanError(f"--rollouts {path}: not UTF-8") from None
    out = []
    for no, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as exc:
            raise PlanError(f"--rollouts {path}:{no}: not JSON: {exc.msg}") from None
        if not isinstance(obj, dict):
            raise PlanError(f"--rollouts {path}:{no}: not a JSON object")
        out.append(obj)
    return out
