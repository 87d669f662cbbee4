"""Logging set-up for a node: text lines (as before) or JSON lines, to stderr.

JSON: one object a line, `{"ts": "2026-11-23T12:00:00.123Z", "level": "INFO", "logger":
"dsonode.node", "msg": "...", ...}`; any `extra={...}` fields of the record follow, an
exception is one string field `exc` (the formatted traceback), so a line never breaks.
Python warnings are routed through logging too, and so are the records of libraries that
detach their loggers (py-libp2p), so nothing else reaches stderr unformatted.

Key material is never logged by the node; `tests/test_ops_logs.py` runs a node at DEBUG and
checks its whole output for the private key in every encoding.
"""

from __future__ import annotations

import datetime as _dt
import json
import logging
import sys
from typing import Any, TextIO

LOG_FORMATS = ("text", "json")
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")
TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
#: Longest message or field kept in a JSON line (a runaway repr must not flood the log).
MAX_FIELD_CHARS = 16_384

#: Attributes every LogRecord has; anything else on a record came from `extra=`.
_STANDARD_ATTRS = frozenset(vars(logging.LogRecord("n", logging.INFO, "p", 1, "m", None, None))) | {
    "message",
    "asctime",
    "taskName",
}


def _clip(text: str) -> str:
    return text if len(text) <= MAX_FIELD_CHARS else text[:MAX_FIELD_CHARS] + "...[truncated]"


def _jsonable(value: Any) -> Any:
    if value is None or isinstance(value, bool | int | float):
        return value
    if isinstance(value, str):
        return _clip(value)
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value[:100]]
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in list(value.items())[:100]}
    return _clip(repr(value))


class JsonFormatter(logging.Formatter):
    """A LogRecord as one JSON object (no newline inside: json escapes them)."""

    def format(self, record: logging.LogRecord) -> str:
        ts = _dt.datetime.fromtimestamp(record.created, tz=_dt.UTC)
        obj: dict[str, Any] = {
            "ts": ts.isoformat(timespec="milliseconds").replace("+00:00", "Z"),
            "level": record.levelname,
            "logger": record.name,
            "msg": _clip(record.getMessage()),
        }
        for key, value in record.__dict__.items():
            if key not in _STANDARD_ATTRS and key not in obj and not key.startswith("_"):
                obj[key] = _jsonable(value)
        if record.exc_info:
            obj["exc"] = _clip(self.formatException(record.exc_info))
        elif record.exc_text:
            obj["exc"] = _clip(record.exc_text)
        if record.stack_info:
            obj["stack"] = _clip(self.formatStack(record.stack_info))
        return json.dumps(obj, ensure_ascii=False, default=repr)


def setup_logging(fmt: str = "text", level: str = "INFO", stream: TextIO | None = None) -> None:
    """Send every log record (and Python warnings) to `stream` (stderr) in `fmt`.

    Replaces the root logger's handlers, so calling it twice (a CLI default first, then the
    node's configuration) leaves one handler.
    """
    if fmt not in LOG_FORMATS:
        raise ValueError(f"log format must be one of {', '.join(LOG_FORMATS)}, got {fmt!r}")
    if level not in LOG_LEVELS:
        raise ValueError(f"log level must be one of {', '.join(LOG_LEVELS)}, got {level!r}")
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else logging.Formatter(TEXT_FORMAT))
    logging.basicConfig(level=getattr(logging, level), handlers=[handler], force=True)
    logging.captureWarnings(True)
    # py-libp2p detaches its "libp2p" logger at import (no handlers, propagate = False), so
    # its warnings and errors fall through to logging.lastResort, which prints the bare
    # message: make that our handler too, so they come out formatted (JSON stays JSON).
    logging.lastResort = handler
