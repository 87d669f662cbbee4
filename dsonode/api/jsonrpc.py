"""JSON-RPC 2.0 over newline-delimited JSON, as a pure (sans-IO) protocol layer.

Nothing here does I/O. The server feeds received bytes to a `LineBuffer`, hands each complete
line to `parse_message`, validates the params of each request with `validate_params`, calls
its handler, and turns the results back into one line with `encode_reply`. Every input is
bounded and every failure is a proper JSON-RPC error object, never an exception escaping to
the connection.

Decisions (documented in README, Usage > retrieval socket):
- One JSON value per line, UTF-8, terminated by "\\n" ("\\r\\n" accepted). Blank lines are
  ignored. A line longer than MAX_LINE_BYTES gets one error reply (id null, -32600) and the
  rest of that line is skipped up to the next newline; the connection stays usable.
- Batches (JSON arrays) are supported, up to MAX_BATCH entries; an empty array is an invalid
  request. A notification (a request object without an "id" member) is executed but never
  answered, not even when its method is unknown or its params are bad (JSON-RPC 2.0, section
  4.1); a batch of only notifications gets no reply at all (section 6). An object that is no
  valid request object at all (no "jsonrpc": "2.0", no method string, params neither object
  nor array, a bad "id") still gets the -32600 error with id null, as the spec's examples do.
- Params must be by name (a JSON object); unknown names are rejected naming the param.
- NaN/Infinity literals are not JSON and are rejected as parse errors.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import orjson

from dsonode.core.constants import DIM, MAX_TEXT_BYTES, PREFIX_DIMS
from dsonode.core.errors import DsoError
from dsonode.core.peerinfo import (
    MAX_MULTIADDR_CHARS,
    MAX_PEER_ID_CHARS,
    PeerAddrError,
    parse_multiaddr,
    peer_id_from_public_key,
    public_key_from_peer_id,
)
from dsonode.core.wire import MAX_DOMAIN_BYTES, MAX_TAG_BYTES, MAX_TAGS

JSONRPC_VERSION = "2.0"

#: Longest accepted request line (bytes, without the newline).
MAX_LINE_BYTES = 1024 * 1024
#: Most requests in one batch.
MAX_BATCH = 64
#: Longest search query text (UTF-8 bytes). Queries are embedded, so they are bounded too.
MAX_QUERY_BYTES = 4 * MAX_TEXT_BYTES
MAX_K = 100
DEFAULT_K = 10
# The add_experience bounds are the wire's (checked here first to name the param; the wire
# rules, applied when the experience is signed, are final).
#: Longest accepted string id (a request id is echoed back, so it is bounded).
MAX_ID_CHARS = 256

# Standard JSON-RPC 2.0 codes.
PARSE_ERROR = -32700
INVALID_REQUEST = -32600
METHOD_NOT_FOUND = -32601
INVALID_PARAMS = -32602
INTERNAL_ERROR = -32603
# Server-defined codes (the -32000..-32099 range is reserved for implementations).
SERVER_BUSY = -32000
NOT_FOUND = -32001
#: The method (or this form of it) needs the encoder and the node runs with role light.
NEEDS_FULL_NODE = -32002
#: A peer method on a node whose network is off (no --listen) or not running (yet, or any more).
NO_NETWORK = -32003

VECTOR_DIMS = (DIM, *PREFIX_DIMS)
_HEX64 = re.compile(r"[0-9a-f]{64}")


class RpcError(DsoError):
    """A JSON-RPC error: raised by validators and handlers, carried by the client.

    `message` is safe to show to a remote client (it never contains a traceback).
    """

    def __init__(self, code: int, message: str, data: Any = None):
        super().__init__(f"{message} (JSON-RPC error {code})")
        self.code = code
        self.message = message
        self.data = data


class InvalidParams(RpcError):
    def __init__(self, param: str, problem: str):
        super().__init__(INVALID_PARAMS, f"invalid params: '{param}' {problem}", {"param": param})
        self.param = param


class NotFound(RpcError):
    def __init__(self, what: str):
        super().__init__(NOT_FOUND, f"not found: {what}")


class NeedsFullNode(RpcError):
    """A light node (no encoder) was asked for something that embeds text."""

    def __init__(self, what: str, hint: str = ""):
        super().__init__(
            NEEDS_FULL_NODE,
            f"{what} needs a full node: this node runs with role light (no encoder loaded)"
            + (f"; {hint}" if hint else ""),
            {"role": "light"},
        )


class NoNetwork(RpcError):
    """A peer method was called on a node that runs without its network."""

    def __init__(self, what: str, detail: str = "networking is off on this node"):
        super().__init__(
            NO_NETWORK,
            f"{what} needs the network: {detail} (run the node with --listen to join peers)",
        )


# --------------------------------------------------------------------------------------------
# Framing


@dataclass(frozen=True)
class Line:
    """One complete line (without its terminator)."""

    data: bytes


@dataclass(frozen=True)
class Oversize:
    """A line exceeded MAX_LINE_BYTES; its bytes up to the next newline are being skipped."""

    limit: int


class LineBuffer:
    """Splits a byte stream into lines, never holding more than `limit` bytes of one line."""

    def __init__(self, limit: int = MAX_LINE_BYTES):
        self.limit = limit
        self._buf = bytearray()
        self._skipping = False

    def feed(self, data: bytes) -> list[Line | Oversize]:
        events: list[Line | Oversize] = []
        start = 0
        while start < len(data):
            nl = data.find(b"\n", start)
            end = len(data) if nl < 0 else nl
            if self._skipping:
                if nl >= 0:
                    self._skipping = False
            else:
                chunk = data[start:end]
                if len(self._buf) + len(chunk) > self.limit:
                    self._buf.clear()
                    events.append(Oversize(self.limit))
                    self._skipping = nl < 0
                else:
                    self._buf += chunk
                    if nl >= 0:
                        events.append(Line(bytes(self._buf)))
                        self._buf.clear()
            if nl < 0:
                break
            start = nl + 1
        return events

    def eof(self) -> list[Line | Oversize]:
        """The peer closed its side: an unterminated last line still counts as a request."""
        events: list[Line | Oversize] = []
        if self._buf and not self._skipping:
            events.append(Line(bytes(self._buf)))
        self._buf.clear()
        self._skipping = False
        return events

    @property
    def pending_bytes(self) -> int:
        return len(self._buf)


# --------------------------------------------------------------------------------------------
# Requests


@dataclass(frozen=True)
class Request:
    method: str
    params: dict[str, Any]
    id: str | int | None = None
    #: True when the request has no "id" member: executed, never answered.
    is_notification: bool = False


@dataclass(frozen=True)
class Message:
    """One parsed line: requests to run and errors already decided, in order."""

    items: list[Request | dict[str, Any]] = field(default_factory=list)
    is_batch: bool = False
    #: Notifications refused while parsing: neither run nor answered (the server counts them).
    dropped: int = 0


def error_response(id_: Any, code: int, message: str, data: Any = None) -> dict[str, Any]:
    err: dict[str, Any] = {"code": code, "message": message}
    if data is not None:
        err["data"] = data
    return {"jsonrpc": JSONRPC_VERSION, "id": id_, "error": err}


def result_response(id_: Any, result: Any) -> dict[str, Any]:
    return {"jsonrpc": JSONRPC_VERSION, "id": id_, "result": result}


def oversize_response(limit: int = MAX_LINE_BYTES) -> dict[str, Any]:
    return error_response(
        None, INVALID_REQUEST, f"invalid request: line exceeds {limit} bytes; skipped"
    )


def parse_message(line: bytes) -> Message | None:
    """Parse one line into requests and ready-made error responses; None for a blank line."""
    if line.endswith(b"\r"):
        line = line[:-1]
    if not line.strip():
        return None
    try:
        # orjson: strict JSON (no NaN/Infinity, UTF-8 without lone surrogates, depth <= 1024)
        # and ~10x faster than the stdlib on a 7680-float vector.
        obj = orjson.loads(line)
    except orjson.JSONDecodeError as exc:
        reason = "not UTF-8" if "UTF-8" in str(exc) else "not valid JSON"
        return Message([error_response(None, PARSE_ERROR, f"parse error: {reason}")])
    if isinstance(obj, list):
        if not obj:
            return Message([error_response(None, INVALID_REQUEST, "invalid request: empty batch")])
        if len(obj) > MAX_BATCH:
            return Message(
                [
                    error_response(
                        None, INVALID_REQUEST, f"invalid request: batch over {MAX_BATCH} entries"
                    )
                ]
            )
        parsed = [_parse_request(o) for o in obj]
        items = [p for p in parsed if p is not None]
        return Message(items, is_batch=True, dropped=len(parsed) - len(items))
    item = _parse_request(obj)
    return Message([], dropped=1) if item is None else Message([item])


def _valid_id(value: Any) -> bool:
    if value is None:
        return True
    if isinstance(value, bool):
        return False
    if isinstance(value, int):
        return -(2**63) <= value < 2**63
    if not isinstance(value, str) or len(value) > MAX_ID_CHARS:
        return False
    try:
        value.encode("utf-8")  # it is echoed back: a lone surrogate could not be
    except UnicodeEncodeError:
        return False
    return True


def _parse_request(obj: Any) -> Request | dict[str, Any] | None:
    """A request to run, an error to send, or None: a notification refused (never answered)."""
    if not isinstance(obj, dict):
        return error_response(None, INVALID_REQUEST, "invalid request: not a JSON object")
    # Decided first: whatever goes wrong below, a notification is never answered, except when
    # it is no request object at all (-32600, id null: the spec's own examples answer those).
    has_id = "id" in obj
    id_ = obj.get("id")
    if has_id and not _valid_id(id_):
        return error_response(
            None, INVALID_REQUEST, "invalid request: 'id' must be a string, an integer or null"
        )
    if obj.get("jsonrpc") != JSONRPC_VERSION:
        return error_response(id_, INVALID_REQUEST, "invalid request: 'jsonrpc' must be \"2.0\"")
    method = obj.get("method")
    if not isinstance(method, str) or not method:
        return error_response(
            id_, INVALID_REQUEST, "invalid request: 'method' must be a non-empty string"
        )
    params = obj.get("params", {})
    if not isinstance(params, dict | list):
        return error_response(
            id_, INVALID_REQUEST, "invalid request: 'params' must be an object or an array"
        )
    if isinstance(params, list):
        # Valid JSON-RPC, but every method here takes named params: answer with -32602.
        if params:
            if not has_id:
                return None  # a notification: not run, since it cannot be, and not answered
            return error_response(
                id_,
                INVALID_PARAMS,
                "invalid params: pass params by name (a JSON object)",
                {"param": "params"},
            )
        params = {}
    return Request(method=method, params=params, id=id_, is_notification=not has_id)


def encode_reply(responses: list[dict[str, Any]], is_batch: bool) -> bytes | None:
    """The line to send back for one message, or None when nothing is to be sent."""
    if not responses:
        return None
    payload: Any = responses if is_batch else responses[0]
    # Strings in replies come from valid UTF-8 (orjson rejects lone surrogates on input).
    return orjson.dumps(payload, option=orjson.OPT_APPEND_NEWLINE)


# --------------------------------------------------------------------------------------------
# Params of each method


@dataclass(frozen=True)
class SearchParams:
    query: str | None
    vector: np.ndarray | None = field(default=None, compare=False)  # float32, read-only
    k: int = DEFAULT_K
    domain: str | None = None
    min_score: float | None = None
    confirmed_only: bool = False
    #: also serve experiences the node's trust policy does not vouch for (never blocked ones)
    include_unvouched: bool = False


@dataclass(frozen=True)
class GetParams:
    id: bytes


@dataclass(frozen=True)
class AddExperienceParams:
    text: str
    domain: str
    tags: tuple[str, ...] = ()


@dataclass(frozen=True)
class NoParams:
    pass


@dataclass(frozen=True)
class GiveFeedbackParams:
    """A vote on an experience: `value` in [-1, 1] (helpful = +1, not helpful = -1)."""

    id: bytes
    value: float


#: Most rollouts in one `submit_rollouts` call (the 1 MiB line bounds the bytes).
MAX_SUBMIT_ROLLOUTS = 1000
MAX_LLM_URL_CHARS = 2048
MAX_LLM_MODEL_CHARS = 256


@dataclass(frozen=True)
class SubmitRolloutsParams:
    #: decoded JSON objects, each checked by dsonode.extract.rollouts.parse_object later (a bad
    #: one is reported by its index, not fatal)
    rollouts: tuple[Any, ...] = field(compare=False)
    dry_run: bool = False
    #: optional: extract with this OpenAI-compatible server instead of the node's default
    llm_base_url: str | None = None
    llm_model: str | None = None


@dataclass(frozen=True)
class AddPeerParams:
    """A full peer address, /ip4|ip6/<ip>/tcp/<port>/p2p/<peer id> (syntax checked here; the
    node's own policy, loopback unless net.allow_non_loopback, is applied by the daemon)."""

    multiaddr: str


@dataclass(frozen=True)
class ForgetPeerParams:
    peer_id: str  # canonical base58 of an Ed25519 peer id


def _check_names(params: dict[str, Any], allowed: set[str]) -> None:
    for name in params:
        if name not in allowed:
            raise InvalidParams(name[:64], "is not a parameter of this method")


def _string(params: dict[str, Any], name: str, *, max_bytes: int, required: bool) -> str | None:
    if name not in params or params[name] is None:
        if required:
            raise InvalidParams(name, "is required")
        return None
    value = params[name]
    if not isinstance(value, str):
        raise InvalidParams(name, "must be a string")
    if not value.strip():
        raise InvalidParams(name, "must not be empty")
    if len(value.encode("utf-8", "surrogatepass")) > max_bytes:
        raise InvalidParams(name, f"must be at most {max_bytes} bytes of UTF-8")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise InvalidParams(name, "must be valid Unicode (no lone surrogates)") from None
    return value


def _search(params: dict[str, Any]) -> SearchParams:
    _check_names(
        params,
        {"query", "vector", "k", "domain", "min_score", "confirmed_only", "include_unvouched"},
    )
    query = _string(params, "query", max_bytes=MAX_QUERY_BYTES, required=False)
    vector = None
    raw = params.get("vector")
    if raw is not None:
        if not isinstance(raw, list):
            raise InvalidParams("vector", "must be an array of numbers")
        if len(raw) not in VECTOR_DIMS:
            dims = ", ".join(str(d) for d in VECTOR_DIMS)
            raise InvalidParams("vector", f"must have length {dims} (got {len(raw)})")
        if not all(type(x) is float or type(x) is int for x in raw):  # bool is not a number
            raise InvalidParams("vector", "must contain only numbers")
        with np.errstate(over="ignore"):
            vector = np.asarray(raw, dtype=np.float64).astype(np.float32)
        if not np.isfinite(vector).all():
            raise InvalidParams("vector", "must contain only finite float32 numbers")
        if not vector.any():
            raise InvalidParams("vector", "must not be all zeros")
        vector.flags.writeable = False
    if (query is None) == (vector is None):
        raise InvalidParams("query", "or 'vector' is required (exactly one of them)")
    k = params.get("k", DEFAULT_K)
    if k is None:
        k = DEFAULT_K
    if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= MAX_K:
        raise InvalidParams("k", f"must be an integer from 1 to {MAX_K}")
    domain = _string(params, "domain", max_bytes=MAX_DOMAIN_BYTES, required=False)
    min_score = params.get("min_score")
    if min_score is not None:
        if (
            isinstance(min_score, bool)
            or not isinstance(min_score, int | float)
            or not math.isfinite(min_score)
        ):
            raise InvalidParams("min_score", "must be a finite number")
        min_score = float(min_score)
    confirmed_only = params.get("confirmed_only", False)
    if confirmed_only is None:
        confirmed_only = False
    if not isinstance(confirmed_only, bool):
        raise InvalidParams("confirmed_only", "must be true or false")
    include_unvouched = _flag(params, "include_unvouched")
    return SearchParams(query, vector, k, domain, min_score, confirmed_only, include_unvouched)


def _flag(params: dict[str, Any], name: str) -> bool:
    """An optional boolean param (absent or null: false)."""
    value = params.get(name, False)
    if value is None:
        return False
    if not isinstance(value, bool):
        raise InvalidParams(name, "must be true or false")
    return value


def parse_hex_id(value: Any, name: str = "id") -> bytes:
    if not isinstance(value, str):
        raise InvalidParams(name, "must be a string of 64 hex digits")
    v = value.lower()
    if not _HEX64.fullmatch(v):
        raise InvalidParams(name, "must be 64 hex digits (a 32-byte experience id)")
    return bytes.fromhex(v)


def _get(params: dict[str, Any]) -> GetParams:
    _check_names(params, {"id"})
    if "id" not in params:
        raise InvalidParams("id", "is required")
    return GetParams(parse_hex_id(params["id"]))


def _add_experience(params: dict[str, Any]) -> AddExperienceParams:
    _check_names(params, {"text", "domain", "tags"})
    text = _string(params, "text", max_bytes=MAX_TEXT_BYTES, required=True)
    domain = _string(params, "domain", max_bytes=MAX_DOMAIN_BYTES, required=True)
    raw_tags = params.get("tags")
    if raw_tags is None:
        raw_tags = []
    if not isinstance(raw_tags, list):
        raise InvalidParams("tags", "must be an array of strings")
    if len(raw_tags) > MAX_TAGS:
        raise InvalidParams("tags", f"must have at most {MAX_TAGS} entries")
    for t in raw_tags:
        if not isinstance(t, str) or not t.strip():
            raise InvalidParams("tags", "must contain only non-empty strings")
        if len(t.encode("utf-8", "surrogatepass")) > MAX_TAG_BYTES:
            raise InvalidParams("tags", f"entries must be at most {MAX_TAG_BYTES} bytes")
    tags = tuple(raw_tags)
    assert text is not None and domain is not None
    return AddExperienceParams(text=text, domain=domain, tags=tags)


def _submit_rollouts(params: dict[str, Any]) -> SubmitRolloutsParams:
    _check_names(params, {"rollouts", "dry_run", "llm"})
    rollouts = params.get("rollouts")
    if not isinstance(rollouts, list) or not rollouts:
        raise InvalidParams("rollouts", "must be a non-empty array of rollout objects")
    if len(rollouts) > MAX_SUBMIT_ROLLOUTS:
        raise InvalidParams("rollouts", f"must have at most {MAX_SUBMIT_ROLLOUTS} entries")
    dry_run = params.get("dry_run", False)
    if dry_run is None:
        dry_run = False
    if not isinstance(dry_run, bool):
        raise InvalidParams("dry_run", "must be true or false")
    llm = params.get("llm")
    base_url = model = None
    if llm is not None:
        if not isinstance(llm, dict) or set(llm) - {"base_url", "model"}:
            raise InvalidParams("llm", "must be an object with 'base_url' and 'model'")
        base_url = _string(llm, "base_url", max_bytes=MAX_LLM_URL_CHARS, required=True)
        model = _string(llm, "model", max_bytes=MAX_LLM_MODEL_CHARS, required=True)
    return SubmitRolloutsParams(tuple(rollouts), dry_run, base_url, model)


def _give_feedback(params: dict[str, Any]) -> GiveFeedbackParams:
    """{"id": hex64, "helpful": bool} or {"id": hex64, "reward_delta": number in [-1, 1]}."""
    _check_names(params, {"id", "helpful", "reward_delta"})
    if "id" not in params:
        raise InvalidParams("id", "is required")
    exp_id = parse_hex_id(params["id"])
    helpful = params.get("helpful")
    delta = params.get("reward_delta")
    if (helpful is None) == (delta is None):
        raise InvalidParams("helpful", "or 'reward_delta' is required (exactly one of them)")
    if helpful is not None:
        if not isinstance(helpful, bool):
            raise InvalidParams("helpful", "must be true or false")
        return GiveFeedbackParams(exp_id, 1.0 if helpful else -1.0)
    if isinstance(delta, bool) or not isinstance(delta, int | float) or not math.isfinite(delta):
        raise InvalidParams("reward_delta", "must be a finite number")
    if not -1.0 <= delta <= 1.0:
        raise InvalidParams("reward_delta", "must be in [-1, 1]")
    return GiveFeedbackParams(exp_id, float(delta))


def _add_peer(params: dict[str, Any]) -> AddPeerParams:
    _check_names(params, {"multiaddr"})
    text = _string(params, "multiaddr", max_bytes=MAX_MULTIADDR_CHARS, required=True)
    assert text is not None
    try:
        parse_multiaddr(text, allow_non_loopback=True, require_peer_id=True)
    except PeerAddrError as exc:
        raise InvalidParams("multiaddr", f"is not a peer address: {exc}") from None
    return AddPeerParams(text)


def parse_peer_id(value: Any, name: str = "peer_id") -> str:
    """A canonical base58 Ed25519 peer id ("12D3KooW..."), or InvalidParams naming `name`."""
    if not isinstance(value, str) or not 1 <= len(value) <= MAX_PEER_ID_CHARS:
        raise InvalidParams(name, f"must be a base58 peer id of at most {MAX_PEER_ID_CHARS} chars")
    try:
        canonical = peer_id_from_public_key(public_key_from_peer_id(value))
    except PeerAddrError as exc:
        raise InvalidParams(name, f"is not an Ed25519 peer id: {exc}") from None
    if canonical != value:
        raise InvalidParams(name, "is not in canonical base58")
    return value


def _forget_peer(params: dict[str, Any]) -> ForgetPeerParams:
    _check_names(params, {"peer_id"})
    if "peer_id" not in params:
        raise InvalidParams("peer_id", "is required")
    return ForgetPeerParams(parse_peer_id(params["peer_id"]))


#: The operator's lists `set_trust` changes (dsonode.store OPERATOR_LISTS).
TRUST_LISTS = ("block", "allow")


@dataclass(frozen=True)
class SetTrustParams:
    """Put an author on (or take it off) the operator's block or allow list."""

    list: str
    author: bytes
    on: bool = True


@dataclass(frozen=True)
class ForgetParams:
    id: bytes


def parse_author(value: Any, name: str = "author") -> bytes:
    """An author as 64 lowercase hex (its public key) or a base58 peer id."""
    if isinstance(value, str) and _HEX64.fullmatch(value.lower()):
        return bytes.fromhex(value.lower())
    try:
        return public_key_from_peer_id(parse_peer_id(value, name))
    except InvalidParams:
        raise InvalidParams(
            name, "must be 64 hex digits (a public key) or a base58 Ed25519 peer id"
        ) from None


def _set_trust(params: dict[str, Any]) -> SetTrustParams:
    _check_names(params, {"list", "author", "on"})
    which = params.get("list")
    if which not in TRUST_LISTS:
        raise InvalidParams("list", f"must be one of {', '.join(TRUST_LISTS)}")
    if "author" not in params:
        raise InvalidParams("author", "is required")
    author = parse_author(params["author"])
    on = params.get("on", True)
    if not isinstance(on, bool):
        raise InvalidParams("on", "must be true or false")
    return SetTrustParams(which, author, on)


def _forget(params: dict[str, Any]) -> ForgetParams:
    _check_names(params, {"id"})
    if "id" not in params:
        raise InvalidParams("id", "is required")
    return ForgetParams(parse_hex_id(params["id"]))


def _none(params: dict[str, Any]) -> NoParams:
    _check_names(params, set())
    return NoParams()


#: Method name -> params validator. The server's handler table must cover the same names.
METHODS = {
    "search": _search,
    "get": _get,
    "add_experience": _add_experience,
    "give_feedback": _give_feedback,
    "submit_rollouts": _submit_rollouts,
    "stats": _none,
    "health": _none,
    "add_peer": _add_peer,
    "forget_peer": _forget_peer,
    "set_trust": _set_trust,
    "forget": _forget,
    "retract": _forget,  # the same params: one experience id
    "trust": _none,
}


def validate_params(method: str, params: dict[str, Any]) -> Any:
    """Typed params for `method`; raises RpcError (-32601 unknown method, -32602 bad params)."""
    validator = METHODS.get(method)
    if validator is None:
        raise RpcError(METHOD_NOT_FOUND, f"method not found: {method[:64]!r}")
    return validator(params)


# --------------------------------------------------------------------------------------------
# Results


def format_created(ms: int) -> str:
    """Milliseconds since the epoch as ISO 8601 UTC ("2026-11-23T08:24:27.123Z")."""
    import datetime as _dt

    dt = _dt.datetime.fromtimestamp(ms / 1000.0, tz=_dt.UTC)
    return dt.strftime("%Y-%m-%dT%H:%M:%S.") + f"{ms % 1000:03d}Z"


def shape_item(
    *,
    id: bytes,
    text: str,
    domain: str,
    tags: tuple[str, ...] | list[str],
    created_ms: int,
    author: bytes,
    submissions: int,
    confirmed: bool,
    score: float | None = None,
) -> dict[str, Any]:
    """One result, shaped like agent-memory servers' (mem0, Letta): flat, hex ids, ISO time."""
    return {
        "id": id.hex(),
        "text": text,
        "score": None if score is None else round(float(score), 6),
        "domain": domain,
        "tags": list(tags),
        "created": format_created(created_ms),
        "author": author.hex(),
        "submissions": int(submissions),
        "confirmed": bool(confirmed),
    }
