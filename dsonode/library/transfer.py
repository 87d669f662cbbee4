"""Export and import a library as signed items (`dsonode export` / `dsonode import`).

The file is JSON lines: a header `{"format": "dsonode-export", "version": 1, "items": N}`,
then one line per item `{"kind": "experience"|"submission"|"feedback"|"retraction",
"item": base64 of its signed wire bytes}`. Items carry their own signatures (PROTOCOL.md 7),
so a library can be backed up, moved or seeded into a new network, and an import verifies
every line exactly as gossip does (`wire.decode_item`, signature included): a tampered line is
rejected (reported by its line number) and never stored; the rest are.

Import writes a stopped node's store (its directory lock refuses a running node): items go in
with `Store.put_items`, which keeps one submission and one vote per author, refuses
tombstoned experiences and marks what it stores pending, so the node recomputes their
consensus (and adds its own submissions) at its next start (`Library.repair_pending`). Items of
authors on the operator's block list are skipped. Admission stamps and quotas do not apply:
the operator chose the file.
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import IO, Any

from dsonode.core import wire
from dsonode.core.errors import WireError
from dsonode.store import Store

FORMAT = "dsonode-export"
VERSION = 1
#: Longest accepted line: a 4096-byte item in base64 plus its JSON keys.
MAX_LINE_CHARS = 8192
#: Items per store transaction on import.
CHUNK = 256
#: Rejected lines listed in the report (all are counted).
MAX_LISTED = 20


@dataclass
class ImportReport:
    lines: int = 0
    stored: int = 0
    duplicates: int = 0
    blocked: int = 0
    rejected: int = 0
    rejected_lines: list[dict[str, Any]] = field(default_factory=list)

    def reject(self, line: int, error: str) -> None:
        self.rejected += 1
        if len(self.rejected_lines) < MAX_LISTED:
            self.rejected_lines.append({"line": line, "error": error[:200]})

    def as_dict(self) -> dict[str, Any]:
        return {
            "lines": self.lines,
            "stored": self.stored,
            "duplicates": self.duplicates,
            "blocked": self.blocked,
            "rejected": self.rejected,
            "rejected_lines": self.rejected_lines,
        }


def export_lines(store: Store) -> Iterator[str]:
    """The export file's lines (without newlines), header first."""
    items = list(store.iter_raw())
    yield json.dumps({"format": FORMAT, "version": VERSION, "items": len(items)})
    for kind, raw in items:
        yield json.dumps({"kind": kind, "item": base64.b64encode(raw).decode("ascii")})


def write_export(store: Store, out: IO[str]) -> int:
    """Write the export to `out`; returns the items written."""
    lines = 0
    for line in export_lines(store):
        out.write(line + "\n")
        lines += 1
    return max(0, lines - 1)  # the header is no item


def _parse_line(text: str) -> tuple[str, bytes]:
    if len(text) > MAX_LINE_CHARS:
        raise ValueError(f"line longer than {MAX_LINE_CHARS} characters")
    obj = json.loads(text)
    if not isinstance(obj, dict) or set(obj) != {"kind", "item"}:
        raise ValueError('expected {"kind": ..., "item": ...}')
    kind, item = obj["kind"], obj["item"]
    if not isinstance(kind, str) or not isinstance(item, str):
        raise ValueError("kind and item must be strings")
    return kind, base64.b64decode(item, validate=True)


def import_lines(store: Store, lines: Iterable[str], now_ms: int | None = None) -> ImportReport:
    """Verify and store the items of an export (see the module docstring)."""
    report = ImportReport()
    blocked = store.listed("block")
    batch: list[tuple[bytes, wire.Item]] = []
    clock = wire.now_ms() if now_ms is None else now_ms

    def flush() -> None:
        if batch:
            flags = store.put_items([r for r, _ in batch], decoded=[i for _, i in batch])
            report.stored += sum(flags)
            report.duplicates += len(flags) - sum(flags)
            batch.clear()

    for number, text in enumerate(lines, start=1):
        text = text.rstrip("\r\n")
        if number == 1:
            try:
                header = json.loads(text)
            except ValueError:
                header = None
            if not isinstance(header, dict) or header.get("format") != FORMAT:
                report.reject(1, f"not a {FORMAT} file (no header)")
                return report
            if header.get("version") != VERSION:
                report.reject(1, f"unsupported {FORMAT} version {header.get('version')!r}")
                return report
            continue
        if not text.strip():
            continue
        report.lines += 1
        try:
            kind, raw = _parse_line(text)
            item = wire.decode_item(raw, clock)  # the signature too: nothing unverified
        except (ValueError, binascii.Error, WireError) as exc:
            report.reject(number, f"{type(exc).__name__}: {exc}")
            continue
        if item.kind != kind:
            report.reject(number, f"line says {kind!r}, the item is a {item.kind}")
            continue
        if item.author in blocked:
            report.blocked += 1
            continue
        batch.append((raw, item))
        if len(batch) >= CHUNK:
            flush()
    flush()
    return report
