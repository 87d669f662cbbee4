"""`dsonode ingest ROLLOUTS.jsonl`: extract lessons from rollouts and add them to the node.

The offline extractor runs in this process (it loads the encoder, ~8 s); the lessons go to the
running node over its socket with `add_experience` (the node embeds, signs and stores them).
`--dry-run` prints the lessons and needs no node.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from dsonode.argtypes import bounded_float, bounded_int
from dsonode.core.errors import DsoError
from dsonode.extract.rollouts import (
    MAX_LINE_BYTES,
    MAX_ROLLOUTS,
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


def register(subparsers: Any) -> None:
    from dsonode.node import default_data_dir

    p = subparsers.add_parser(
        "ingest",
        help="extract lessons from rollouts (JSONL) and add them to the running node",
        description="Group rollouts by task, extract lessons with the offline contrastive "
        "extractor (extractive: each lesson is a step a successful rollout took) and add "
        "them to the node over its socket. Bad lines are reported and skipped.",
    )
    p.add_argument("rollouts", type=Path, help="JSONL file, one rollout a line")
    p.add_argument(
        "--data-dir",
        type=Path,
        default=None,
        help=f"the node's data directory (default: $DSONODE_DATA_DIR or {default_data_dir()})",
    )
    p.add_argument("--socket", type=Path, default=None, help="socket path (overrides --data-dir)")
    p.add_argument(
        "--timeout", type=bounded_float(0, open_low=True), default=60.0, help="seconds per call"
    )
    p.add_argument("--dry-run", action="store_true", help="print the lessons; no node needed")
    p.add_argument("--per-group", type=bounded_int(1, 20), default=2, help="lessons per task")
    p.add_argument(
        "--min-score", type=bounded_float(-2.0, 2.0), default=0.05, help="contrast threshold"
    )
    p.add_argument("--encoder", default=None, help="local encoder folder (default: packaged)")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(func=cmd_ingest)


def _socket_of(args: argparse.Namespace) -> Path:
    from dsonode.node import default_data_dir, socket_path

    if args.socket is not None:
        return args.socket
    return socket_path(args.data_dir or default_data_dir())


def cmd_ingest(args: argparse.Namespace) -> int:
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

    from dsonode.embed import get_embedder
    from dsonode.extract.offline import OfflineExtractor

    err = Console(stderr=True)
    parsed = load_rollouts(args.rollouts)
    groups, skipped = group_rollouts(parsed.rollouts)
    client = None
    if not args.dry_run:  # fail before loading the model when no node runs
        from dsonode.api.client import Client

        client = Client(_socket_of(args), timeout=args.timeout)
        client.connect()
    try:
        n_steps = sum(len(r.steps()) for g in groups for r in g.rollouts)
        with Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            console=err,
            disable=args.json or not err.is_terminal,
        ) as bar:
            t_embed = bar.add_task("embedding steps", total=n_steps)
            embedder = get_embedder(args.encoder)
            extractor = OfflineExtractor(
                chunked_embed(embedder.encode_base, lambda n: bar.advance(t_embed, n)),
                per_group=args.per_group,
                min_score=args.min_score,
            )
            result = extractor.extract(groups)
            results: list[dict[str, Any]] = []
            t_add = bar.add_task("adding lessons", total=len(result.lessons))
            for lesson in result.lessons:
                row: dict[str, Any] = {
                    "text": lesson.text,
                    "domain": lesson.domain,
                    "tags": list(lesson.tags),
                    "score": round(lesson.score, 4),
                    "merged": lesson.merged,
                    "sources": [
                        {"task_id": s.task_id, "rollout": s.rollout, "step": s.step}
                        for s in lesson.sources
                    ],
                }
                if client is not None:
                    reply = client.add_experience(lesson.text, lesson.domain, lesson.tags)
                    row["id"] = reply.get("id")
                    row["new"] = bool(reply.get("new"))
                results.append(row)
                bar.advance(t_add)
    finally:
        if client is not None:
            client.close()

    summary = {
        "rollouts": len(parsed.rollouts),
        "bad_lines": [{"line": e.line, "error": e.message} for e in parsed.errors],
        "groups": len(groups),
        "skipped_groups": [
            {"task_id": s.task_id, "rollouts": s.rollouts, "reason": s.reason} for s in skipped
        ],
        "lessons": results,
        "merged": result.merged,
        "added": sum(1 for r in results if r.get("new")),
        "already_known": sum(1 for r in results if "new" in r and not r["new"]),
        "dry_run": bool(args.dry_run),
    }
    if args.json:
        print(json.dumps(summary, indent=2, ensure_ascii=False))
        return 0
    _print_summary(summary)
    return 0


def _print_summary(s: dict[str, Any]) -> None:
    out = sys.stdout
    for e in s["bad_lines"]:
        print(f"skipped line {e['line']}: {e['error']}", file=out)
    for g in s["skipped_groups"]:
        print(f"skipped task {g['task_id']}: {g['reason']}", file=out)
    for r in s["lessons"]:
        state = "lesson" if s["dry_run"] else ("added" if r["new"] else "known")
        merged = f" (+{r['merged']} merged)" if r["merged"] else ""
        src = r["sources"][0]
        print(
            f"{state} [{r['score']:.2f}]{merged} {r['text']}  "
            f"<- {src['task_id']} rollout {src['rollout']} step {src['step']}",
            file=out,
        )
    known = "" if s["dry_run"] else f", {s['added']} added, {s['already_known']} already known"
    print(
        f"{s['rollouts']} rollouts ({len(s['bad_lines'])} bad lines), {s['groups']} groups "
        f"with signal ({len(s['skipped_groups'])} skipped): {len(s['lessons'])} lessons"
        f"{known}, {s['merged']} merged into others",
        file=out,
    )
