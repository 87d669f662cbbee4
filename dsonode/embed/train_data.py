"""Training data of `dsonode head train`: JSONL parsing, validation and the pair index.

One JSON object per line (UTF-8; blank lines are ignored):
    {"text": "..."}                                               stage 1 only
    {"query": "...", "positive": "...", "negatives": ["...", ...]}  all stages ("negatives"
                                                                  optional; other keys ignored)
Stage 1 trains on every distinct text of the file (a pair contributes its query, positive and
negatives). Stages 2 and 3 need pair records; a `{"text"}` record is a bad line there.

Bad lines (not UTF-8, not JSON, not an object, missing/empty/oversized fields, a negative equal
to the positive) are reported with their line number and SKIPPED, so one stray line does not
waste a long run; `strict=True` (`--strict`) makes the first bad line fatal instead. A file
with no usable record is always an error. Sizes are bounded (constants below) so a hostile or
mistaken file cannot exhaust memory.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from dsonode.core.errors import DsoError

#: Longest accepted line, in bytes (longer lines are bad lines; they are never held whole).
MAX_LINE_BYTES = 256 * 1024
#: Longest accepted text, in characters (the encoder truncates far below this anyway).
MAX_TEXT_CHARS = 8192
#: Most explicit negatives per record.
MAX_NEGATIVES = 64
#: Most pair records, and most distinct texts, in one file (the encoder features of every
#: text are precomputed and held in memory: 500,000 x 384 float32 = 768 MB).
MAX_RECORDS = 200_000
MAX_TEXTS = 500_000
#: Most lines read (good, bad or blank) before the file is rejected.
MAX_LINES = 1_000_000
#: Bad lines described one by one; beyond this only the count is kept.
MAX_REPORTED = 20


class TrainDataError(DsoError, ValueError):
    """The training data file is unusable (missing, too big, no valid record, strict failure)."""


@dataclass(frozen=True)
class BadLine:
    line: int
    reason: str


@dataclass(frozen=True)
class PairRecord:
    query: str
    positive: str
    negatives: tuple[str, ...] = ()


@dataclass(frozen=True)
class TrainingData:
    texts: tuple[str, ...]  # every distinct text, first-seen order (stage 1 trains on these)
    pairs: tuple[PairRecord, ...]  # pair records in file order (stages 2-3)
    bad_lines: tuple[BadLine, ...]  # the first MAX_REPORTED bad lines
    bad_count: int
    lines: int
    sha256: str  # of the file's bytes

    def describe_bad(self) -> list[str]:
        out = [f"line {b.line}: {b.reason}" for b in self.bad_lines]
        if self.bad_count > len(self.bad_lines):
            out.append(f"... and {self.bad_count - len(self.bad_lines)} more bad lines")
        return out


def _text_field(obj: dict[str, Any], key: str) -> str:  # obj: one decoded JSON object
    value = obj.get(key)
    if not isinstance(value, str):
        raise ValueError(f'"{key}" must be a string, got {type(value).__name__}')
    value = value.strip()
    if not value:
        raise ValueError(f'"{key}" is empty')
    if len(value) > MAX_TEXT_CHARS:
        raise ValueError(f'"{key}" has {len(value)} characters (max {MAX_TEXT_CHARS})')
    return value


def parse_record(obj: object, stage: int) -> str | PairRecord:
    """Validate one decoded JSON value; ValueError says what is wrong."""
    if not isinstance(obj, dict):
        raise ValueError(f"expected a JSON object, got {type(obj).__name__}")
    if "query" in obj or "positive" in obj:
        query = _text_field(obj, "query")
        positive = _text_field(obj, "positive")
        raw = obj.get("negatives", [])
        if not isinstance(raw, list):
            raise ValueError('"negatives" must be a list of strings')
        if len(raw) > MAX_NEGATIVES:
            raise ValueError(f'"negatives" has {len(raw)} entries (max {MAX_NEGATIVES})')
        negatives = []
        for i, neg in enumerate(raw):
            if not isinstance(neg, str) or not neg.strip():
                raise ValueError(f'"negatives"[{i}] must be a non-empty string')
            neg = neg.strip()
            if len(neg) > MAX_TEXT_CHARS:
                raise ValueError(f'"negatives"[{i}] is longer than {MAX_TEXT_CHARS} characters')
            if neg == positive:
                raise ValueError(f'"negatives"[{i}] is the positive itself')
            if neg not in negatives:
                negatives.append(neg)
        return PairRecord(query, positive, tuple(negatives))
    if "text" in obj:
        if stage != 1:
            raise ValueError(
                f'a {{"text"}} record is usable in stage 1 only; stage {stage} needs '
                '{"query", "positive", "negatives"}'
            )
        return _text_field(obj, "text")
    raise ValueError('expected "text" (stage 1) or "query" and "positive"')


def load_training_data(path: str | Path, stage: int, strict: bool = False) -> TrainingData:
    """Read and validate a JSONL file for `stage` (1, 2 or 3). See the module docstring."""
    if stage not in (1, 2, 3):
        raise TrainDataError(f"stage must be 1, 2 or 3, got {stage!r}")
    path = Path(path)
    if not path.is_file():
        raise TrainDataError(f"training data not found: {path}")
    digest = hashlib.sha256()
    texts: dict[str, None] = {}  # ordered set
    pairs: list[PairRecord] = []
    bad: list[BadLine] = []
    bad_count = 0
    lineno = 0

    def reject(reason: str) -> None:
        nonlocal bad_count
        if strict:
            raise TrainDataError(f"{path}: line {lineno}: {reason}")
        bad_count += 1
        if len(bad) < MAX_REPORTED:
            bad.append(BadLine(lineno, reason))

    try:
        f = path.open("rb")
    except OSError as exc:
        raise TrainDataError(f"cannot read training data {path}: {exc}") from exc
    with f:
        while True:
            raw = f.readline(MAX_LINE_BYTES + 1)
            if not raw:
                break
            digest.update(raw)
            lineno += 1
            if lineno > MAX_LINES:
                raise TrainDataError(f"{path}: more than {MAX_LINES} lines")
            if len(raw) > MAX_LINE_BYTES and not raw.endswith(b"\n"):
                # Skip the rest of the oversized line without holding it.
                while raw and not raw.endswith(b"\n"):
                    raw = f.readline(MAX_LINE_BYTES)
                    digest.update(raw)
                reject(f"line longer than {MAX_LINE_BYTES} bytes")
                continue
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as exc:
                reject(f"not UTF-8 ({exc.reason} at byte {exc.start})")
                continue
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except (json.JSONDecodeError, RecursionError) as exc:
                reason = exc.msg if isinstance(exc, json.JSONDecodeError) else "nested too deeply"
                reject(f"not JSON ({reason})")
                continue
            try:
                record = parse_record(obj, stage)
            except ValueError as exc:
                reject(str(exc))
                continue
            if isinstance(record, PairRecord):
                pairs.append(record)
                for t in (record.query, record.positive, *record.negatives):
                    texts.setdefault(t)
            else:
                texts.setdefault(record)
            if len(pairs) > MAX_RECORDS:
                raise TrainDataError(f"{path}: more than {MAX_RECORDS} pair records")
            if len(texts) > MAX_TEXTS:
                raise TrainDataError(f"{path}: more than {MAX_TEXTS} distinct texts")
    usable = len(texts) if stage == 1 else len(pairs)
    if usable == 0:
        detail = (
            f" ({bad_count} bad lines; first: line {bad[0].line}: {bad[0].reason})" if bad else ""
        )
        raise TrainDataError(f"{path}: no usable record for stage {stage}{detail}")
    return TrainingData(
        texts=tuple(texts),
        pairs=tuple(pairs),
        bad_lines=tuple(bad),
        bad_count=bad_count,
        lines=lineno,
        sha256=digest.hexdigest(),
    )


@dataclass(frozen=True)
class PairIndex:
    """Pairs as integer ids into one table of distinct texts (queries and documents share it)."""

    texts: tuple[str, ...]
    query_ids: np.ndarray  # (N,) text id of each pair's query
    pos_ids: np.ndarray  # (N,) text id of each pair's positive
    neg_ids: tuple[np.ndarray, ...]  # explicit negatives of each pair
    corpus_ids: np.ndarray  # sorted text ids of every document (positives and negatives)
    unique_queries: np.ndarray  # sorted distinct query text ids
    positives_of: dict[int, frozenset[int]]  # query text id -> all of its positives

    @classmethod
    def build(cls, pairs: tuple[PairRecord, ...] | list[PairRecord]) -> PairIndex:
        table: dict[str, int] = {}

        def tid(text: str) -> int:
            return table.setdefault(text, len(table))

        query_ids, pos_ids, neg_ids = [], [], []
        positives: dict[int, set[int]] = {}
        for rec in pairs:
            q, p = tid(rec.query), tid(rec.positive)
            query_ids.append(q)
            pos_ids.append(p)
            positives.setdefault(q, set()).add(p)
            neg_ids.append([tid(n) for n in rec.negatives])
        # A text given as a negative for a query in one line and as its positive in another is
        # a positive: drop it from that query's negatives.
        negs = tuple(
            np.array([n for n in ns if n not in positives[q]], dtype=np.int64)
            for q, ns in zip(query_ids, neg_ids, strict=True)
        )
        docs = set(pos_ids)
        for ns in neg_ids:
            docs.update(ns)
        return cls(
            texts=tuple(table),
            query_ids=np.array(query_ids, dtype=np.int64),
            pos_ids=np.array(pos_ids, dtype=np.int64),
            neg_ids=negs,
            corpus_ids=np.array(sorted(docs), dtype=np.int64),
            unique_queries=np.array(sorted(set(query_ids)), dtype=np.int64),
            positives_of={q: frozenset(ps) for q, ps in positives.items()},
        )
