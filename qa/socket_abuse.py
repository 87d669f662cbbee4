"""Malformed and hostile traffic against a real node's retrieval socket.

`run_abuse(socket_path, pid, requests, rng)` sends at least `requests` malformed request lines
over many connections and checks the contract of dsonode.api.server: every reply line is a
JSON-RPC 2.0 response (an error object for malformed input, never -32603 "internal error",
which would mean an unhandled exception), every connection ends with a clean close, and the
node keeps serving: each connection ends with a `health` sentinel that must be answered, and
between rounds a real `search` must return results. The node's RSS is sampled (psutil)
after every round.

Kinds of input (`LINE_KINDS`): bad JSON, invalid UTF-8, wrong types, huge numbers, deep
nesting, missing or extra fields, junk batches, oversize lines (> 1 MiB). Kinds of connection:
pipelined lines then a half-close, a request without its newline then a half-close, slow
clients (byte at a time), clients that vanish mid-request, more connections than the limit,
and an idle client (closed by the node's idle timeout).
"""

from __future__ import annotations

import contextlib
import random
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

from dsonode.api import jsonrpc

READ_TIMEOUT_S = 120.0
MAX_REPLY_BYTES = 64 * 1024 * 1024
LINES_PER_CONNECTION = 10

_METHODS = (
    "search",
    "get",
    "add_experience",
    "stats",
    "health",
    "submit_rollouts",
    "give_feedback",
)
_HEX = "ab" * 32


def _templates() -> list[dict[str, Any]]:
    """Valid requests of every method (mutated below into invalid ones)."""
    return [
        {"jsonrpc": "2.0", "id": 1, "method": "search", "params": {"query": "unit tests", "k": 3}},
        {
            "jsonrpc": "2.0",
            "id": "q",
            "method": "search",
            "params": {"query": "x", "domain": "math", "min_score": 0.1, "confirmed_only": False},
        },
        {"jsonrpc": "2.0", "id": 2, "method": "get", "params": {"id": _HEX}},
        {
            "jsonrpc": "2.0",
            "id": 3,
            "method": "add_experience",
            "params": {"text": "t", "domain": "d", "tags": ["a"]},
        },
        {"jsonrpc": "2.0", "id": 4, "method": "stats"},
        {"jsonrpc": "2.0", "id": 5, "method": "health", "params": {}},
        {
            "jsonrpc": "2.0",
            "id": 6,
            "method": "give_feedback",
            "params": {"id": _HEX, "helpful": True},
        },
        {
            "jsonrpc": "2.0",
            "id": 7,
            "method": "submit_rollouts",
            "params": {"rollouts": [], "dry_run": True},
        },
    ]


def _json_junk(rng: random.Random, depth: int = 0) -> Any:
    """A JSON value of a random type (containers nest at most 3 deep)."""
    if depth < 3 and rng.random() < 0.25:
        if rng.random() < 0.5:
            return [_json_junk(rng, depth + 1) for _ in range(rng.randrange(5))]
        return {f"k{i}": _json_junk(rng, depth + 1) for i in range(rng.randrange(5))}
    return rng.choice(
        (None, True, False, 0, -1, 2**63 - 1, -(2**63), 1.5e300, -0.0, "", "x" * rng.randrange(1, 300),
         "\u0000\u2028\U0001f600", rng.randrange(-(2**62), 2**62), _HEX, [], {})
    )  # fmt: skip


def _dump(obj: Any) -> bytes:
    return orjson.dumps(obj)


# --- malformed lines, by kind --------------------------------------------------------------------


def bad_json(rng: random.Random) -> bytes:
    line = _dump(rng.choice(_templates()))
    return rng.choice(
        (
            line[: rng.randrange(1, len(line))],  # truncated
            line + b"}",
            line.replace(b'"', b"'"),
            line[:-1] + b",}",
            b"{" + line,
            b'{"jsonrpc": "2.0", "id": 1, "method": "health", "params": {"k": NaN}}',
            b'{"jsonrpc": "2.0", "id": Infinity, "method": "health"}',
            b"// comment\n" + line,
            bytes(rng.randrange(32, 127) for _ in range(rng.randrange(1, 200))),
            b"\x00" * rng.randrange(1, 50),
            b"[" + line + b",]",
            b'{"jsonrpc": "2.0" "id": 1}',
        )
    )


def bad_utf8(rng: random.Random) -> bytes:
    line = bytearray(_dump(rng.choice(_templates())))
    bad = rng.choice(
        (b"\xff", b"\xc0\x80", b"\xed\xa0\x80", b"\x80", b"\xf4\x90\x80\x80", b"\xe2\x82")
    )
    if rng.random() < 0.5:
        i = rng.randrange(len(line) + 1)
        line[i:i] = bad
        return bytes(line)
    # A lone surrogate as a JSON escape inside a string (valid JSON syntax, invalid Unicode).
    return (
        b'{"jsonrpc": "2.0", "id": "\\ud800", "method": "search", "params": {"query": "a\\udfff"}}'
        if rng.random() < 0.5
        else b'{"jsonrpc": "2.0", "id": 1, "method": "add_experience", '
        b'"params": {"text": "lone \\ud83d here", "domain": "d"}}'
    )


def _mutate_field(rng: random.Random, value_fn: Callable[[random.Random], Any]) -> bytes:
    req = rng.choice(_templates())
    params = req.get("params")
    if isinstance(params, dict) and params and rng.random() < 0.7:
        key = rng.choice(list(params))
        params[key] = value_fn(rng)
    else:
        req[rng.choice(("jsonrpc", "id", "method", "params"))] = value_fn(rng)
    return _dump(req)


def wrong_types(rng: random.Random) -> bytes:
    return _mutate_field(rng, _json_junk)


_HUGE = (
    b"1e400", b"-1e400", b"1e-400", b"9" * 400, b"-" + b"9" * 5000, b"18446744073709551616",
    b"-9223372036854775809", b"1.7976931348623157e309", b"123456789012345678901234567890.5",
)  # fmt: skip


def huge_numbers(rng: random.Random) -> bytes:
    number = rng.choice(_HUGE)
    where = rng.choice(
        (
            b'{"jsonrpc": "2.0", "id": %s, "method": "health"}',
            b'{"jsonrpc": "2.0", "id": 1, "method": "search", "params": {"query": "q", "k": %s}}',
            b'{"jsonrpc": "2.0", "id": 1, "method": "search", "params": {"query": "q", "min_score": %s}}',
            b'{"jsonrpc": "2.0", "id": 1, "method": "give_feedback", "params": {"id": "'
            + _HEX.encode()
            + b'", "reward_delta": %s}}',
        )
    )
    if rng.random() < 0.15:  # a full-size vector of huge or denormal numbers
        vec = b",".join([rng.choice((b"1e39", b"-3.5e38", b"1e-45", b"0"))] * 7680)
        return (
            b'{"jsonrpc": "2.0", "id": 1, "method": "search", "params": {"vector": [' + vec + b"]}}"
        )
    return where % number


def deep_nesting(rng: random.Random) -> bytes:
    depth = rng.choice((64, 1000, 1024, 1025, 5000, 100_000))
    opener, closer = rng.choice(((b"[", b"]"), (b'{"a":', b"}")))
    nested = opener * depth + b"1" + closer * depth
    if rng.random() < 0.5:
        return nested
    return b'{"jsonrpc": "2.0", "id": 1, "method": "search", "params": {"query": ' + nested + b"}}"


def missing_extra(rng: random.Random) -> bytes:
    req = rng.choice(_templates())
    roll = rng.randrange(5)
    if roll == 0:
        del req[rng.choice(list(req))]
    elif roll == 1 and isinstance(req.get("params"), dict) and req["params"]:
        del req["params"][rng.choice(list(req["params"]))]
    elif roll == 2:
        req.setdefault("params", {})[f"extra{rng.randrange(100)}"] = _json_junk(rng)
    elif roll == 3:
        req[f"x-{rng.randrange(100)}"] = _json_junk(rng)
    else:
        req["method"] = rng.choice(("", "nope", "search ", "SEARCH", "m" * 70_000, "rpc.discover"))
    return _dump(req)


def junk_batch(rng: random.Random) -> bytes:
    n = rng.choice((0, 1, 2, 10, 64, 65, 200))
    entries = []
    for _ in range(n):
        if rng.random() < 0.3:
            entries.append({"jsonrpc": "2.0", "id": rng.randrange(1000), "method": "health"})
        else:
            entries.append(_json_junk(rng))
    return _dump(entries)


def oversize(rng: random.Random) -> bytes:
    pad = jsonrpc.MAX_LINE_BYTES + rng.choice((1, 100, 70_000))
    return (
        b'{"jsonrpc": "2.0", "id": 1, "method": "search", "params": {"query": "'
        + b"a" * pad
        + b'"}}'
    )


LINE_KINDS: dict[str, Callable[[random.Random], bytes]] = {
    "bad_json": bad_json,
    "bad_utf8": bad_utf8,
    "wrong_types": wrong_types,
    "huge_numbers": huge_numbers,
    "deep_nesting": deep_nesting,
    "missing_extra": missing_extra,
    "junk_batch": junk_batch,
}


def malformed_line(rng: random.Random) -> tuple[str, bytes]:
    """One malformed request line (without its newline) and its kind; 1 in 400 oversize."""
    if rng.random() < 1 / 400:
        return "oversize", oversize(rng)
    kind = rng.choice(tuple(LINE_KINDS))
    return kind, LINE_KINDS[kind](rng).replace(b"\n", b" ")


# --- checking replies ----------------------------------------------------------------------------


@dataclass
class AbuseResult:
    requests: int = 0
    connections: int = 0
    replies: int = 0
    error_replies: int = 0
    result_replies: int = 0
    clean_closes: int = 0
    busy_rejections: int = 0
    by_kind: dict[str, int] = field(default_factory=dict)
    error_codes: dict[str, int] = field(default_factory=dict)
    violations: list[str] = field(default_factory=list)
    search_checks: int = 0
    rss_mb: list[float] = field(default_factory=list)
    elapsed_s: float = 0.0

    def summary(self) -> dict[str, Any]:
        rss = self.rss_mb or [0.0]
        return {
            "requests": self.requests,
            "connections": self.connections,
            "replies": self.replies,
            "error_replies": self.error_replies,
            "result_replies": self.result_replies,
            "clean_closes": self.clean_closes,
            "busy_rejections": self.busy_rejections,
            "by_kind": dict(sorted(self.by_kind.items())),
            "error_codes": dict(sorted(self.error_codes.items())),
            "violations": len(self.violations),
            "first_violations": self.violations[:5],
            "search_checks": self.search_checks,
            "rss_start_mb": round(rss[0], 1),
            "rss_peak_mb": round(max(rss), 1),
            "rss_end_mb": round(rss[-1], 1),
            "rss_growth_mb": round(max(rss) - rss[0], 1),
            "elapsed_s": round(self.elapsed_s, 1),
        }


def _check_response(obj: Any, result: AbuseResult, context: str) -> None:
    if not isinstance(obj, dict) or obj.get("jsonrpc") != "2.0" or "id" not in obj:
        result.violations.append(f"{context}: not a JSON-RPC response: {str(obj)[:200]}")
        return
    if ("result" in obj) == ("error" in obj):
        result.violations.append(f"{context}: needs exactly one of result/error: {str(obj)[:200]}")
        return
    if "result" in obj:
        result.result_replies += 1
        return
    err = obj["error"]
    code = err.get("code") if isinstance(err, dict) else None
    if type(code) is not int or not isinstance(err.get("message"), str):
        result.violations.append(f"{context}: bad error object: {str(err)[:200]}")
        return
    result.error_replies += 1
    result.error_codes[str(code)] = result.error_codes.get(str(code), 0) + 1
    if code == jsonrpc.INTERNAL_ERROR:
        result.violations.append(f"{context}: internal error (an unhandled exception)")


def check_reply_lines(data: bytes, result: AbuseResult, context: str) -> list[Any]:
    """Validate every reply line; returns the parsed ones."""
    parsed = []
    lines = data.split(b"\n")
    if lines and lines[-1] == b"":
        lines.pop()
    elif lines:
        result.violations.append(f"{context}: last reply line not terminated")
    for line in lines:
        result.replies += 1
        try:
            obj = orjson.loads(line)
        except orjson.JSONDecodeError:
            result.violations.append(f"{context}: reply is not JSON: {line[:200]!r}")
            continue
        for entry in obj if isinstance(obj, list) else [obj]:
            _check_response(entry, result, context)
        parsed.append(obj)
    return parsed


def _connect(path: Path, timeout: float = READ_TIMEOUT_S) -> socket.socket:
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(timeout)
    s.connect(str(path))
    return s


def _read_to_eof(s: socket.socket) -> tuple[bytes, bool]:
    """(everything received, True if the node closed the connection cleanly)."""
    data = bytearray()
    try:
        while len(data) < MAX_REPLY_BYTES:
            chunk = s.recv(1 << 16)
            if not chunk:
                return bytes(data), True
            data += chunk
    except (TimeoutError, OSError):
        return bytes(data), False
    return bytes(data), False


def _sentinel(n: int) -> tuple[bytes, str]:
    sid = f"sentinel-{n}"
    return _dump({"jsonrpc": "2.0", "id": sid, "method": "health"}), sid


def _finish(s: socket.socket, result: AbuseResult, context: str, sentinel_id: str | None) -> None:
    data, clean = _read_to_eof(s)
    if clean:
        result.clean_closes += 1
    else:
        result.violations.append(f"{context}: no clean close (timeout or reset)")
    parsed = check_reply_lines(data, result, context)
    if sentinel_id is not None:
        last = parsed[-1] if parsed else None
        if not (isinstance(last, dict) and last.get("id") == sentinel_id and "result" in last):
            result.violations.append(f"{context}: the health sentinel was not answered last")


# --- kinds of connection -------------------------------------------------------------------------


def pipelined(path: Path, rng: random.Random, result: AbuseResult, n_lines: int, tag: int) -> None:
    """n malformed lines, then the sentinel, then a half-close; read every reply to EOF."""
    lines = []
    for _ in range(n_lines):
        kind, line = malformed_line(rng)
        result.by_kind[kind] = result.by_kind.get(kind, 0) + 1
        lines.append(line)
    sentinel, sid = _sentinel(tag)
    with _connect(path) as s:
        result.connections += 1
        s.sendall(b"\n".join(lines) + b"\n" + sentinel + b"\n")
        s.shutdown(socket.SHUT_WR)
        _finish(s, result, f"pipelined #{tag}", sid)
    result.requests += n_lines


def no_newline(path: Path, rng: random.Random, result: AbuseResult, tag: int) -> None:
    """A malformed request without its newline, then a half-close: answered, then closed."""
    kind, line = malformed_line(rng)
    result.by_kind[kind] = result.by_kind.get(kind, 0) + 1
    with _connect(path) as s:
        result.connections += 1
        s.sendall(line)
        s.shutdown(socket.SHUT_WR)
        _finish(s, result, f"no-newline #{tag}", None)
    result.requests += 1


def slow_client(path: Path, rng: random.Random, result: AbuseResult, tag: int) -> None:
    """A short malformed line and the sentinel, sent one byte at a time."""
    kind, line = malformed_line(rng)
    while len(line) > 300:  # keep it short: one byte per millisecond
        kind, line = malformed_line(rng)
    result.by_kind[kind] = result.by_kind.get(kind, 0) + 1
    sentinel, sid = _sentinel(tag)
    with _connect(path) as s:
        result.connections += 1
        for b in line + b"\n" + sentinel + b"\n":
            s.sendall(bytes([b]))
            time.sleep(0.001)
        s.shutdown(socket.SHUT_WR)
        _finish(s, result, f"slow #{tag}", sid)
    result.requests += 1


def vanishing(path: Path, rng: random.Random, result: AbuseResult) -> None:
    """Send half a request (or several whole ones) and close without reading anything."""
    kind, line = malformed_line(rng)
    result.by_kind[kind] = result.by_kind.get(kind, 0) + 1
    with _connect(path) as s:
        result.connections += 1
        s.sendall(line[: rng.randrange(1, len(line) + 1)] if rng.random() < 0.5 else line + b"\n")
        s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
    result.requests += 1  # closed with a reset: nothing to check but the node's survival


def over_the_limit(path: Path, max_connections: int, extra: int, result: AbuseResult) -> None:
    """Hold max_connections live connections; each extra one gets a busy error and a close."""
    held: list[socket.socket] = []
    try:
        for i in range(max_connections):
            s = _connect(path, timeout=60)
            held.append(s)
            result.connections += 1
            # a served request proves the node counts this connection as open
            sentinel, _sid = _sentinel(100_000 + i)
            s.sendall(sentinel + b"\n")
            reply = b""
            while not reply.endswith(b"\n"):
                chunk = s.recv(4096)
                if not chunk:
                    break
                reply += chunk
            check_reply_lines(reply, result, f"held #{i}")
        for i in range(extra):
            with _connect(path, timeout=60) as s:
                result.connections += 1
                result.requests += 1
                s.sendall(_sentinel(200_000 + i)[0] + b"\n")
                data, clean = _read_to_eof(s)
                parsed = check_reply_lines(data, result, f"extra #{i}")
                if clean:
                    result.clean_closes += 1
                busy = (
                    clean
                    and len(parsed) == 1
                    and isinstance(parsed[0], dict)
                    and parsed[0].get("error", {}).get("code") == jsonrpc.SERVER_BUSY
                )
                if busy:
                    result.busy_rejections += 1
                else:
                    result.violations.append(f"extra #{i}: expected a busy error and a close")
    finally:
        for s in held:
            s.close()


def idle_client(path: Path, idle_timeout: float, result: AbuseResult) -> None:
    """Half a line, then silence: the node closes the connection after its idle timeout."""
    with _connect(path, timeout=idle_timeout + 30) as s:
        result.connections += 1
        result.requests += 1
        s.sendall(b'{"jsonrpc": "2.0", "id": 1, "meth')
        data, clean = _read_to_eof(s)
        if clean:
            result.clean_closes += 1
        else:
            result.violations.append("idle client: not closed by the node's idle timeout")
        check_reply_lines(data, result, "idle client")


# --- the run -------------------------------------------------------------------------------------


def _rss_mb(pid: int) -> float:
    import psutil

    return psutil.Process(pid).memory_info().rss / 2**20


def search_works(path: Path) -> bool:
    """A real search over a fresh connection returns at least one result."""
    from dsonode.api.client import Client

    with Client(path, timeout=READ_TIMEOUT_S) as c:
        return len(c.search("how to write unit tests", k=3)) > 0


def run_abuse(
    socket_path: str | Path,
    pid: int,
    requests: int,
    rng: random.Random,
    *,
    max_connections: int | None = None,
    idle_timeout: float | None = None,
    rounds: int = 10,
    progress: Callable[[AbuseResult], None] | None = None,
) -> AbuseResult:
    """At least `requests` malformed requests in `rounds` rounds; a search check after each.

    max_connections / idle_timeout: the node's settings, to test the limit and the timeout
    (skipped when None). The caller asserts on the result (violations must be empty).
    """
    path = Path(socket_path)
    result = AbuseResult()
    t0 = time.perf_counter()
    # Warm up first: the first search loads the fast-path model copy (a one-off allocation).
    if not search_works(path):
        result.violations.append("before the run: search returned nothing (load some items)")
    result.rss_mb.append(_rss_mb(pid))
    per_round = max(1, -(-requests // rounds))
    idle = None
    if idle_timeout is not None:  # runs alongside the rounds (it mostly waits)
        idle = threading.Thread(target=idle_client, args=(path, idle_timeout, result))
        idle.start()
    tag = 0
    try:
        for r in range(rounds):
            target = min(requests, per_round * (r + 1))
            # A few slow clients at once, in threads, while the pipelined ones go on.
            slow = [
                threading.Thread(target=slow_client, args=(path, random.Random(rng.random()), result, tag + i))
                for i in range(2)
            ]  # fmt: skip
            for t in slow:
                t.start()
            tag += len(slow)
            while result.requests < target:
                roll = rng.random()
                if roll < 0.05:
                    no_newline(path, rng, result, tag)
                elif roll < 0.08:
                    vanishing(path, rng, result)
                else:
                    pipelined(path, rng, result, rng.randint(1, 2 * LINES_PER_CONNECTION), tag)
                tag += 1
            for t in slow:
                t.join(timeout=READ_TIMEOUT_S)
            if r == rounds // 2 and max_connections is not None:
                over_the_limit(path, max_connections, 4, result)
            result.search_checks += 1
            if not search_works(path):
                result.violations.append(f"round {r}: search returned nothing")
            result.rss_mb.append(_rss_mb(pid))
            if progress is not None:
                progress(result)
    finally:
        if idle is not None:
            idle.join(timeout=(idle_timeout or 0) + 60)
        result.elapsed_s = time.perf_counter() - t0
    with contextlib.suppress(Exception):
        result.rss_mb.append(_rss_mb(pid))
    return result
