"""`dsonode ingest ROLLOUTS.jsonl`: extract lessons from rollouts and add them to the node.

The file is read and checked here (bad lines reported with their numbers), grouped by task,
and the groups with signal go to the running node over its socket with `submit_rollouts`, in
chunks of whole groups (a group is never split: its rollouts are compared with each other).
The node extracts (offline by default, or with the LLM server named by --llm-base-url and
--llm-model, or by its own environment), signs, stores and publishes the lessons.
`--dry-run` runs the extractor in this process instead (it loads the encoder, ~8 s) and needs
no node.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from dsonode.api.cliargs import add_node_args, node_client
from dsonode.argtypes import SubParsers, bounded_float, bounded_int
from dsonode.core.errors import DsoError
from dsonode.extract.rollouts import (
    MAX_LINE_BYTES,
    MAX_ROLLOUTS,
    Group,
    LineError,
    ParseResult,
    Rollout,
    RolloutError,
    group_rollouts,
    parse_line,
)

#: steps embedded per encoder call (the progress bar advances per chunk)
EMBED_CHUNK = 256


class IngestError(DsoError):
    """The rollouts file cannot be read."""


def load_rollouts(path: str | os.PathLike[str]) -> ParseResult:
    """Read a JSONL file line by line, never holding more than one bounded line in memory."""
    rollouts: list[Rollout] = []
    errors: list[LineError] = []
    try:
        f = open(path, "rb")  # noqa: SIM115 - closed below
    except OSError as exc:
        raise IngestError(f"cannot read {path}: {exc.strerror or exc}") from None
    with f:
        line_no = 0
        while True:
            line = f.readline(MAX_LINE_BYTES + 1)
            if not line:
                break
            line_no += 1
            if len(line) > MAX_LINE_BYTES and not line.endswith(b"\n"):
                while (rest := f.readline(1 << 20)) and not rest.endswith(b"\n"):
                    pass  # drain the over-long line without keeping it
                errors.append(LineError(line_no, f"line is longer than {MAX_LINE_BYTES} bytes"))
                continue
            if not line.strip():
                continue
            if len(rollouts) >= MAX_ROLLOUTS:
                errors.append(LineError(line_no, f"more than {MAX_ROLLOUTS} rollouts in a file"))
                continue
            try:
                rollouts.append(parse_line(line.strip(), line_no))
            except RolloutError as exc:
                errors.append(LineError(line_no, str(exc)))
    return ParseResult(rollouts, errors)


def chunked_embed(
    encode: Callable[[Sequence[str]], np.ndarray], on_chunk: Callable[[int], None] | None = None
) -> Callable[[Sequence[str]], np.ndarray]:
    """An EmbedFn that calls `encode` in chunks (for a progress bar), same result."""

    def embed(texts: Sequence[str]) -> np.ndarray:
        parts = []
        for start in range(0, len(texts), EMBED_CHUNK):
            chunk = list(texts[start : start + EMBED_CHUNK])
            parts.append(encode(chunk))
            if on_chunk is not None:
                on_chunk(len(chunk))
        return np.concatenate(parts, axis=0)

    return embed


#: a submit_rollouts request stays under the socket's 1 MiB line with room for the envelope
CHUNK_BYTES = 900 * 1024
CHUNK_ROLLOUTS = 200
CHUNK_STEPS = 5_000  # the node takes up to dsonode.api.rollouts.MAX_SUBMIT_STEPS


def rollout_object(r: Rollout) -> dict[str, Any]:
    """A parsed rollout back as the JSON object of the JSONL format (what the socket takes)."""
    obj: dict[str, Any] = {
        "task_id": r.task_id,
        "prompt": r.prompt,
        "response": r.response if isinstance(r.response, str) else [dict(m) for m in r.response],
        "reward": r.reward,
        "domain": r.domain,
    }
    if r.ground_truth is not None:
        obj["ground_truth"] = r.ground_truth
    if r.meta:
        obj["meta"] = dict(r.meta)
    return obj


def chunk_groups(
    groups: Sequence[Group],
    max_bytes: int = CHUNK_BYTES,
    max_rollouts: int = CHUNK_ROLLOUTS,
    max_steps: int = CHUNK_STEPS,
) -> tuple[list[list[Group]], list[Group]]:
    """Whole groups packed into requests under all bounds; groups too big for one request."""
    chunks: list[list[Group]] = []
    too_big: list[Group] = []
    current: list[Group] = []
    size = count = steps = 0
    for g in groups:
        g_size = sum(len(json.dumps(rollout_object(r)).encode()) + 1 for r in g.rollouts)
        g_steps = sum(len(r.steps()) for r in g.rollouts)
        if g_size > max_bytes or len(g.rollouts) > max_rollouts or g_steps > max_steps:
            too_big.append(g)
            continue
        if current and (
            size + g_size > max_bytes
            or count + len(g.rollouts) > max_rollouts
            or steps + g_steps > max_steps
        ):
            chunks.append(current)
            current, size, count, steps = [], 0, 0, 0
        current.append(g)
        size += g_size
        count += len(g.rollouts)
        steps += g_steps
    if current:
        chunks.append(current)
    return chunks, too_big


def register(subparsers: SubParsers) -> None:
    p = subparsers.add_parser(
        "ingest",
        help="extract lessons from rollouts (JSONL) and add them to the running node",
        description="Group rollouts by task and have the running node extract lessons from "
        "them (`submit_rollouts`): the offline contrastive extractor by default (each lesson "
        "is a step a successful rollout took), or Training-Free GRPO with an OpenAI-compatible "
        "LLM server (--llm-base-url, --llm-model; key from $DSONODE_LLM_API_KEY of the node). "
        "Bad lines are reported and skipped.",
    )
    p.add_argument("rollouts", type=Path, help="JSONL file, one rollout a line")
    add_node_args(
        p, timeout=600.0, timeout_max=86400, timeout_help="seconds per request, one chunk of groups"
    )
    p.add_argument(
        "--dry-run", action="store_true", help="extract here and print the lessons; no node"
    )
    p.add_argument("--per-group", type=bounded_int(1, 20), default=2, help="lessons per task")
    p.add_argument(
        "--min-score", type=bounded_float(-2.0, 2.0), default=0.05, help="contrast threshold"
    )
    p.add_argument("--encoder", default=None, help="local encoder folder (default: packaged)")
    p.add_argument("--llm-base-url", default=None, help="OpenAI-compatible server, e.g. .../v1")
    p.add_argument("--llm-model", default=None, help="model name for the LLM server")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(func=cmd_ingest)


def _progress(err: Any, quiet: bool) -> Any:
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

    return Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        console=err,
        disable=quiet or not err.is_terminal,
    )


def cmd_ingest(args: argparse.Namespace) -> int:
    from rich.console import Console

    from dsonode.extract.llm import LLMConfig, LLMError

    err = Console(stderr=True)
    logging.getLogger("httpx").setLevel(logging.WARNING)  # one INFO line per request: noise
    try:
        # Checked before anything slow: a bad URL fails at once.
        llm = LLMConfig.from_env(base_url=args.llm_base_url, model=args.llm_model)
    except LLMError as exc:
        raise IngestError(str(exc)) from None
    parsed = load_rollouts(args.rollouts)
    groups, skipped = group_rollouts(parsed.rollouts)
    summary: dict[str, Any] = {
        "rollouts": len(parsed.rollouts),
        "bad_lines": [{"line": e.line, "error": e.message} for e in parsed.errors],
        "groups": len(groups),
        "skipped_groups": [
            {"task_id": s.task_id, "rollouts": s.rollouts, "reason": s.reason} for s in skipped
        ],
        "failed_groups": [],
        "dropped_operations": [],
        "lessons": [],
        "added": 0,
        "merged": 0,
        "existing": 0,
        "extractor": "offline" if llm is None else "llm",
        "dry_run": bool(args.dry_run),
    }
    if args.dry_run:
        _extract_here(args, groups, llm, summary, err)
    else:
        _submit(args, groups, summary, err)
    if args.json:
        print(json.dumps(summary, indent=2, ensure_ascii=False))
    else:
        _print_summary(summary)
    return 0


def _submit(
    args: argparse.Namespace, groups: list[Group], summary: dict[str, Any], err: Any
) -> None:
    """Send the groups with signal to the node in chunks; fold the replies into `summary`."""
    chunks, too_big = chunk_groups(groups, CHUNK_BYTES, CHUNK_ROLLOUTS, CHUNK_STEPS)
    for g in too_big:
        summary["skipped_groups"].append(
            {
                "task_id": g.task_id,
                "rollouts": len(g.rollouts),
                "reason": f"too large for one request (over {CHUNK_BYTES} bytes, "
                f"{CHUNK_ROLLOUTS} rollouts or {CHUNK_STEPS} steps)",
            }
        )
    summary["groups"] -= len(too_big)
    llm_args = {}
    if args.llm_base_url is not None or args.llm_model is not None:
        llm_args = {"llm_base_url": args.llm_base_url, "llm_model": args.llm_model}
    with node_client(args) as client, _progress(err, args.json) as bar:
        total = sum(len(g.rollouts) for chunk in chunks for g in chunk)
        task = bar.add_task("extracting in the node", total=total)
        for chunk in chunks:
            rollouts = [r for g in chunk for r in g.rollouts]
            reply = client.submit_rollouts([rollout_object(r) for r in rollouts], **llm_args)
            summary["extractor"] = reply.get("extractor", summary["extractor"])
            for bad in reply.get("bad_rollouts", []):  # the node re-checks what we checked
                line = rollouts[bad["index"]].line if 0 <= bad["index"] < len(rollouts) else 0
                summary["bad_lines"].append({"line": line, "error": bad["error"]})
            summary["failed_groups"].extend(reply.get("failed_groups", []))
            summary["dropped_operations"].extend(reply.get("dropped_operations", []))
            summary["lessons"].extend(reply.get("added", []))
            summary["added"] += len(reply.get("added", []))
            summary["merged"] += int(reply.get("merged", 0))
            summary["existing"] += int(reply.get("existing", 0))
            bar.advance(task, len(rollouts))


def _extract_here(
    args: argparse.Namespace, groups: list[Group], llm: Any, summary: dict[str, Any], err: Any
) -> None:
    """--dry-run: the extractor in this process, nothing stored anywhere."""
    from dsonode.api.rollouts import lesson_row
    from dsonode.core import wire
    from dsonode.embed import get_embedder

    with _progress(err, args.json) as bar:
        n_steps = sum(len(r.steps()) for g in groups for r in g.rollouts)
        t_embed = bar.add_task("embedding", total=n_steps if llm is None else None)
        embedder = get_embedder(args.encoder)
        embed = chunked_embed(embedder.encode_base, lambda n: bar.advance(t_embed, n))
        if llm is None:
            from dsonode.extract.offline import OfflineExtractor

            extractor: Any = OfflineExtractor(
                embed, per_group=args.per_group, min_score=args.min_score
            )
            result = extractor.extract(groups)
        else:
            from dsonode.extract.llm import ChatClient, LLMExtractor

            with ChatClient(llm) as chat:
                result = LLMExtractor(chat, embed).extract(groups)
    summary["lessons"] = [
        lesson_row(lesson, wire.experience_id(lesson.domain, lesson.text))
        for lesson in result.lessons
    ]
    summary["failed_groups"] = [{"task_id": f.task_id, "error": f.error} for f in result.failed]
    summary["dropped_operations"] = [{"task_id": t, "reason": why} for t, why in result.dropped]
    summary["merged"] = result.merged


def _print_summary(s: dict[str, Any]) -> None:
    out = sys.stdout
    for e in s["bad_lines"]:
        print(f"skipped line {e['line']}: {e['error']}", file=out)
    for g in s["skipped_groups"]:
        print(f"skipped task {g['task_id']}: {g['reason']}", file=out)
    for g in s["failed_groups"]:
        print(f"failed task {g['task_id']}: {g['error']}", file=out)
    for d in s["dropped_operations"]:
        # offline: a step that could not be made a general lesson; LLM: an invalid operation
        print(f"dropped for {d['task_id']}: {d['reason']}", file=out)
    for r in s["lessons"]:
        state = "lesson" if s["dry_run"] else "added"
        if r.get("op", "add") != "add":
            state += f" ({r['op']} of {', '.join(i[:12] for i in r['supersedes'])})"
        merged = f" (+{r['merged']} merged)" if r["merged"] else ""
        src = r["sources"][0] if r["sources"] else None
        where = f"  <- {src['task_id']} rollout {src['rollout']}" if src else ""
        if src and src["step"] >= 0:
            where += f" step {src['step']}"
        print(f"{state} [{r['score']:.2f}]{merged} {r['text']}{where}", file=out)
    stored = "" if s["dry_run"] else f", {s['added']} added, {s['existing']} already known"
    print(
        f"{s['rollouts']} rollouts ({len(s['bad_lines'])} bad lines), {s['groups']} groups "
        f"with signal ({len(s['skipped_groups'])} skipped, {len(s['failed_groups'])} failed), "
        f"{s['extractor']} extractor: {len(s['lessons'])} lessons{stored}, "
        f"{s['merged']} merged into others, {len(s['dropped_operations'])} dropped",
        file=out,
    )
