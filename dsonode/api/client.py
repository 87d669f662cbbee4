"""A small synchronous client for the retrieval socket (plain `socket`, no event loop).

    from dsonode.api import Client
    with Client("~/.dsonode/dsonode.sock") as c:
        for hit in c.search("how to check a proof by induction", k=5):
            print(hit["score"], hit["text"])

One connection, reused across calls, requests answered in order. A failed call raises
`RpcError` (with the JSON-RPC `code` and `message`), `NodeNotRunning` when nothing listens on
the socket, `ClientTimeout` when the node does not answer in time; after a timeout or a
broken reply the connection is dropped and the next call reconnects.
"""

from __future__ import annotations

import itertools
import os
import socket
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import orjson

from dsonode.api.jsonrpc import JSONRPC_VERSION, RpcError
from dsonode.core.errors import DsoError

#: Longest reply line the client accepts (a batch of 100 results is far below this).
MAX_REPLY_BYTES = 16 * 1024 * 1024


class ClientError(DsoError):
    """The client could not complete a call (transport, not a JSON-RPC error)."""


class NodeNotRunning(ClientError):
    """Nothing listens on the socket path."""


class ClientTimeout(ClientError, TimeoutError):
    """The node did not answer within the timeout."""


class ProtocolError(ClientError):
    """The node sent something that is not a valid reply."""


class _ConnectionLost(Exception):
    """The connection closed before any byte of the reply arrived (internal)."""


class Client:
    def __init__(self, socket_path: str | os.PathLike[str], timeout: float = 30.0):
        self.socket_path = Path(socket_path).expanduser()
        self.timeout = timeout
        self._sock: socket.socket | None = None
        self._buf = bytearray()
        self._ids = itertools.count(1)

    # ---- transport ---------------------------------------------------------------------------

    def connect(self) -> None:
        if self._sock is not None:
            return
        if not self.socket_path.exists():
            raise NodeNotRunning(
                f"no node is running: socket {self.socket_path} does not exist "
                "(start one with `dsonode run --data-dir DIR`)"
            )
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.settimeout(self.timeout)
        try:
            s.connect(os.fspath(self.socket_path))
        except (ConnectionRefusedError, FileNotFoundError):
            s.close()
            raise NodeNotRunning(
                f"no node is running: nothing listens on {self.socket_path} (stale socket?)"
            ) from None
        except PermissionError:
            s.close()
            raise ClientError(
                f"permission denied on {self.socket_path} (the socket is 0600: run as the "
                "node's user)"
            ) from None
        except TimeoutError:
            s.close()
            raise ClientTimeout(f"connecting to {self.socket_path} timed out") from None
        self._sock = s
        self._buf.clear()

    def close(self) -> None:
        if self._sock is not None:
            try:
                self._sock.close()
            finally:
                self._sock = None
                self._buf.clear()

    def __enter__(self) -> Client:
        self.connect()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _read_line(self) -> bytes:
        assert self._sock is not None
        while True:
            nl = self._buf.find(b"\n")
            if nl >= 0:
                line = bytes(self._buf[:nl])
                del self._buf[: nl + 1]
                return line
            if len(self._buf) > MAX_REPLY_BYTES:
                raise ProtocolError(f"reply longer than {MAX_REPLY_BYTES} bytes")
            chunk = self._sock.recv(65536)
            if not chunk:
                if self._buf:
                    raise ProtocolError("the node closed the connection mid-reply")
                raise _ConnectionLost()
            self._buf += chunk

    def _exchange(self, line: bytes) -> bytes:
        """Send one line and read one line back on the (possibly new) connection."""
        self.connect()
        assert self._sock is not None
        try:
            self._sock.sendall(line)
            return self._read_line()
        except TimeoutError:
            self.close()
            raise ClientTimeout(f"no reply within {self.timeout} s") from None
        except (BrokenPipeError, ConnectionResetError, _ConnectionLost):
            self.close()
            raise _ConnectionLost() from None
        except OSError as exc:
            self.close()
            raise ClientError(f"connection to the node failed: {exc}") from None
        except ClientError:
            self.close()
            raise

    def call(self, method: str, params: dict[str, Any] | None = None) -> Any:
        """Send one request and return its `result`; raise RpcError on an error reply."""
        request_id = next(self._ids)
        request: dict[str, Any] = {"jsonrpc": JSONRPC_VERSION, "id": request_id, "method": method}
        if params:
            request["params"] = params
        try:
            line = orjson.dumps(
                request, option=orjson.OPT_SERIALIZE_NUMPY | orjson.OPT_APPEND_NEWLINE
            )
        except TypeError as exc:  # orjson.JSONEncodeError: NaN is fine, odd types are not
            raise ClientError(f"params cannot be sent as JSON: {exc}") from None
        reused = self._sock is not None
        try:
            reply_line = self._exchange(line)
        except _ConnectionLost:
            if not reused:
                raise ClientError("the node closed the connection") from None
            # The node may have closed an idle connection. Every method is idempotent
            # (add_experience of the same text is the same experience), so resend once.
            try:
                reply_line = self._exchange(line)
            except _ConnectionLost:
                raise ClientError("the node closed the connection") from None
        try:
            reply = orjson.loads(reply_line)
        except orjson.JSONDecodeError:
            self.close()
            raise ProtocolError("the node sent a line that is not JSON") from None
        if not isinstance(reply, dict) or reply.get("id") not in (request_id, None):
            self.close()
            raise ProtocolError("the node sent a reply that does not match the request")
        if "error" in reply:
            if reply.get("id") is None:
                self.close()  # a connection-level error (busy, oversize): start afresh
            err = reply["error"] if isinstance(reply["error"], dict) else {}
            code = err.get("code")
            raise RpcError(
                code if isinstance(code, int) else 0,
                str(err.get("message", "unknown error")),
                err.get("data"),
            )
        if reply.get("id") != request_id or "result" not in reply:
            self.close()
            raise ProtocolError("the node sent a reply without a result")
        return reply["result"]

    # ---- methods -----------------------------------------------------------------------------

    def search(
        self,
        query: str | None = None,
        *,
        vector: Sequence[float] | None = None,
        k: int = 10,
        domain: str | None = None,
        min_score: float | None = None,
        confirmed_only: bool = False,
        include_unvouched: bool = False,
    ) -> list[dict[str, Any]]:
        params: dict[str, Any] = {"k": k}
        if query is not None:
            params["query"] = query
        if vector is not None:
            # a float32/float64 numpy array goes out as is (fast); anything else as floats
            params["vector"] = (
                vector
                if isinstance(vector, np.ndarray) and vector.dtype in (np.float32, np.float64)
                else [float(x) for x in vector]
            )
        if domain is not None:
            params["domain"] = domain
        if min_score is not None:
            params["min_score"] = min_score
        if confirmed_only:
            params["confirmed_only"] = True
        if include_unvouched:
            params["include_unvouched"] = True
        return self.call("search", params)["results"]

    def get(self, id: str | bytes) -> dict[str, Any]:
        return self.call("get", {"id": id.hex() if isinstance(id, bytes) else id})

    def add_experience(self, text: str, domain: str, tags: Sequence[str] = ()) -> dict[str, Any]:
        return self.call("add_experience", {"text": text, "domain": domain, "tags": list(tags)})

    def submit_rollouts(
        self,
        rollouts: Sequence[dict[str, Any]],
        dry_run: bool = False,
        *,
        llm_base_url: str | None = None,
        llm_model: str | None = None,
    ) -> dict[str, Any]:
        """Have the node extract lessons from rollouts (JSONL objects) and add them.

        The LLM extractor runs when `llm_base_url` and `llm_model` are given or the node's
        environment configures one; the API key is always the node's ($DSONODE_LLM_API_KEY).
        """
        params: dict[str, Any] = {"rollouts": list(rollouts), "dry_run": dry_run}
        if llm_base_url is not None or llm_model is not None:
            params["llm"] = {"base_url": llm_base_url, "model": llm_model}
        return self.call("submit_rollouts", params)

    def give_feedback(
        self, id: str | bytes, helpful: bool | None = None, reward_delta: float | None = None
    ) -> dict[str, Any]:
        """Vote on an experience: `helpful` (True/False) or a `reward_delta` in [-1, 1].

        Returns {"id", "value", "feedback": {"votes", "median"}}: the experience's aggregate
        after this node's vote (which replaces its earlier one).
        """
        params: dict[str, Any] = {"id": id.hex() if isinstance(id, bytes) else id}
        if helpful is not None:
            params["helpful"] = helpful
        if reward_delta is not None:
            params["reward_delta"] = reward_delta
        return self.call("give_feedback", params)

    def stats(self) -> dict[str, Any]:
        return self.call("stats")

    def health(self) -> dict[str, Any]:
        return self.call("health")

    def add_peer(self, multiaddr: str) -> dict[str, Any]:
        """Have the node remember a peer, /ip4/<ip>/tcp/<port>/p2p/<peer id>, and dial it
        when it wants peers. Returns {"peer_id", "addrs", "source": "operator"}."""
        return self.call("add_peer", {"multiaddr": multiaddr})

    def forget_peer(self, peer_id: str) -> dict[str, Any]:
        """Have the node forget a known peer. Returns {"peer_id", "forgotten" (it was known),
        "connected" (a connection stays open until either side closes it)}."""
        return self.call("forget_peer", {"peer_id": peer_id})

    def set_trust(self, list_name: str, author: str, on: bool = True) -> dict[str, Any]:
        """Put an author (64 hex or a peer id) on or off the node's "block" or "allow" list.
        Returns {"list", "author", "peer_id", "on", "changed"}."""
        return self.call("set_trust", {"list": list_name, "author": author, "on": on})

    def forget(self, id: str | bytes) -> dict[str, Any]:
        """Delete an experience at the node and tombstone it (never stored there again)."""
        return self.call("forget", {"id": id.hex() if isinstance(id, bytes) else id})

    def retract(self, id: str | bytes) -> dict[str, Any]:
        """Withdraw one of the node's own experiences network-wide (a signed retraction)."""
        return self.call("retract", {"id": id.hex() if isinstance(id, bytes) else id})

    def trust(self) -> dict[str, Any]:
        """The node's trust mode, its operator lists and its tombstone count."""
        return self.call("trust")
