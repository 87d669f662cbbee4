"""The retrieval socket: JSON-RPC 2.0, one JSON object a line, on a Unix socket (trio).

The protocol itself (framing, parsing, params, error objects) is the pure `jsonrpc` module;
this file only moves bytes. Handlers are async callables `handler(params) -> result`; they run
CPU-heavy work in threads themselves (see dsonode.api.service), so the event loop stays free
and `health` answers while a search or an embedding runs.

Limits: at most `max_connections` open connections (the next one gets a -32000 error line and
is closed), an idle connection is closed after `idle_timeout` seconds without a byte, a reply
the client does not read within `send_timeout` seconds closes the connection.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import socket as _socket
import stat
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import trio

from dsonode.api import jsonrpc
from dsonode.config.settings import default
from dsonode.core.errors import DsoError

log = logging.getLogger("dsonode.api.server")

Handler = Callable[[Any], Awaitable[Any]]

#: sun_path is 108 bytes on Linux, including the terminating NUL.
MAX_SOCKET_PATH_BYTES = 107
RECEIVE_CHUNK = 64 * 1024


class SocketInUse(DsoError):
    """Another live process answers on the socket path (another node runs on this data dir)."""


class SocketPathError(DsoError):
    """The socket path cannot be used (too long, or occupied by something that is no socket)."""


@dataclass(frozen=True)
class ServerLimits:
    max_connections: int = default("api.max_connections")
    idle_timeout: float = default("api.idle_timeout_s")
    send_timeout: float = 30.0


def probe_socket(path: str | os.PathLike[str], timeout: float = 1.0) -> bool:
    """True when a process accepts connections on the Unix socket `path`."""
    s = _socket.socket(_socket.AF_UNIX, _socket.SOCK_STREAM)
    s.settimeout(timeout)
    try:
        s.connect(os.fspath(path))
        return True
    except (ConnectionRefusedError, FileNotFoundError):
        return False
    except TimeoutError:
        return True  # the backlog is full: something is listening
    except OSError as exc:
        if exc.errno in (errno.ECONNREFUSED, errno.ENOENT, errno.ENOTSOCK):
            return False
        raise
    finally:
        s.close()


def check_socket_dir(directory: Path) -> None:
    """Refuse a socket directory that another user owns or that group/others can write.

    Whoever can write the directory can replace the socket with their own (and read every
    query and answer of the agents that connect), whatever the socket file's own mode.
    """
    try:
        st = directory.stat()
    except FileNotFoundError:
        return  # binding fails with a clear error of its own
    if st.st_uid != os.getuid():
        raise SocketPathError(
            f"socket directory {directory} belongs to another user (uid {st.st_uid})"
        )
    if st.st_mode & 0o022:
        raise SocketPathError(
            f"socket directory {directory} is writable by group or others "
            f"(mode {stat.S_IMODE(st.st_mode):04o}); run `chmod go-w {directory}`"
        )


def prepare_socket_path(path: Path) -> None:
    """Remove a stale socket file at `path`; refuse when a live process answers on it, or when
    the directory is not private enough (`check_socket_dir`)."""
    if len(os.fsencode(path)) > MAX_SOCKET_PATH_BYTES:
        raise SocketPathError(
            f"socket path too long for a Unix socket ({len(os.fsencode(path))} bytes > "
            f"{MAX_SOCKET_PATH_BYTES}): {path}; use a shorter --data-dir"
        )
    check_socket_dir(path.parent)
    try:
        st = path.lstat()
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(st.st_mode):
        raise SocketPathError(f"{path} exists and is not a socket; refusing to replace it")
    if probe_socket(path):
        raise SocketInUse(f"another node is already serving on {path}")
    log.info("removing stale socket %s", path)
    path.unlink(missing_ok=True)


def bind_unix_listener(path: Path, backlog: int = 128) -> trio.SocketListener:
    """Bind a listening Unix socket with mode 0600, set before it accepts anyone."""
    prepare_socket_path(path)
    sock = _socket.socket(_socket.AF_UNIX, _socket.SOCK_STREAM)
    try:
        old_umask = os.umask(0o177)  # the socket file is created 0600, with no wider window
        try:
            sock.bind(os.fspath(path))
        finally:
            os.umask(old_umask)
        os.chmod(path, 0o600)  # whatever the umask did, before anyone can connect
        sock.listen(backlog)
        sock.setblocking(False)
    except BaseException:
        sock.close()
        raise
    return trio.SocketListener(trio.socket.from_stdlib_socket(sock))


class RpcServer:
    """Serves JSON-RPC lines on streams; one instance per node."""

    def __init__(self, handlers: Mapping[str, Handler], limits: ServerLimits | None = None):
        missing = set(jsonrpc.METHODS) - set(handlers)
        if missing:
            raise ValueError(f"no handler for methods: {sorted(missing)}")
        self.handlers = dict(handlers)
        self.limits = limits or ServerLimits()
        self.open_connections = 0
        self.served_connections = 0
        self.requests = 0
        self.errors = 0
        #: Called as observe(method, seconds, ok) after each request to a known method (the
        #: node's metrics set it: dsonode.ops.metrics.NodeMetrics.observe_request).
        self.observe: Callable[[str, float, bool], None] | None = None

    # ---- one message -----------------------------------------------------------------------

    async def handle_line(self, line: bytes) -> bytes | None:
        """The reply line for one request line (None when nothing is to be sent)."""
        message = jsonrpc.parse_message(line)
        if message is None:
            return None
        self.errors += message.dropped
        responses: list[dict[str, Any]] = []
        for item in message.items:
            if isinstance(item, dict):  # an error decided while parsing
                self.errors += 1
                responses.append(item)
                continue
            response = await self._run(item)
            if not item.is_notification:
                responses.append(response)
        return jsonrpc.encode_reply(responses, message.is_batch)

    async def _reply_to(self, line: bytes) -> bytes | None:
        try:
            return await self.handle_line(line)
        except Exception:
            self.errors += 1
            log.exception("internal error while answering a line")
            return jsonrpc.encode_reply(
                [jsonrpc.error_response(None, jsonrpc.INTERNAL_ERROR, "internal error")], False
            )

    async def _run(self, request: jsonrpc.Request) -> dict[str, Any]:
        self.requests += 1
        started = time.perf_counter()
        ok = False
        try:
            params = jsonrpc.validate_params(request.method, request.params)
            result = await self.handlers[request.method](params)
            ok = True
            return jsonrpc.result_response(request.id, result)
        except jsonrpc.RpcError as exc:
            self.errors += 1
            return jsonrpc.error_response(request.id, exc.code, exc.message, exc.data)
        except Exception:
            # Log the traceback here; the client only learns that it failed.
            self.errors += 1
            log.exception("internal error in %s", request.method)
            return jsonrpc.error_response(
                request.id, jsonrpc.INTERNAL_ERROR, "internal error (see the node's log)"
            )
        finally:
            self._observe(request.method, time.perf_counter() - started, ok)

    def _observe(self, method: str, seconds: float, ok: bool) -> None:
        # Known methods only: a label per unknown name would let clients grow the metrics.
        if self.observe is None or method not in self.handlers:
            return
        try:
            self.observe(method, seconds, ok)
        except Exception:
            log.exception("request observer failed")

    # ---- one connection --------------------------------------------------------------------

    async def serve_stream(self, stream: trio.abc.Stream) -> None:
        async with stream:
            if self.open_connections >= self.limits.max_connections:
                busy = jsonrpc.encode_reply(
                    [
                        jsonrpc.error_response(
                            None,
                            jsonrpc.SERVER_BUSY,
                            f"server busy: {self.open_connections} connections open",
                        )
                    ],
                    is_batch=False,
                )
                assert busy is not None
                with trio.move_on_after(1.0), contextlib.suppress(trio.BrokenResourceError):
                    await stream.send_all(busy)
                # Read what the client already sent: closing a socket with unread input
                # resets it, and the client would lose the busy line to ECONNRESET.
                with trio.move_on_after(0.05), contextlib.suppress(trio.BrokenResourceError):
                    await stream.receive_some(RECEIVE_CHUNK)
                return
            self.open_connections += 1
            self.served_connections += 1
            try:
                await self._converse(stream)
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                pass  # the client went away; nothing to answer
            except Exception:
                # A bug must cost one connection, never the node (the nursery would cancel
                # every other connection).
                log.exception("connection failed")
            finally:
                self.open_connections -= 1

    async def _converse(self, stream: trio.abc.Stream) -> None:
        buffer = jsonrpc.LineBuffer()
        while True:
            data = b""
            with trio.move_on_after(self.limits.idle_timeout) as idle:
                data = await stream.receive_some(RECEIVE_CHUNK)
            if idle.cancelled_caught:
                return  # idle too long
            events = buffer.feed(data) if data else buffer.eof()
            for event in events:
                if isinstance(event, jsonrpc.Oversize):
                    self.errors += 1
                    reply = jsonrpc.encode_reply([jsonrpc.oversize_response(event.limit)], False)
                else:
                    reply = await self._reply_to(event.data)
                if reply is not None and not await self._send(stream, reply):
                    return
            if not data:
                return  # the client closed its side; every complete request was answered

    async def _send(self, stream: trio.abc.Stream, reply: bytes) -> bool:
        with trio.move_on_after(self.limits.send_timeout):
            await stream.send_all(reply)
            return True
        return False  # the client does not read its replies: drop it

    # ---- the listener ----------------------------------------------------------------------

    async def serve_unix(
        self,
        path: Path,
        *,
        # libp2p depends on trio-typing, whose stale trio-stubs shadow trio's own annotations
        # for mypy and lack TaskStatus (trio >= 0.22 exports it; the code is right at run time).
        task_status: trio.TaskStatus[Path] = trio.TASK_STATUS_IGNORED,  # type: ignore[name-defined]
    ) -> None:
        """Listen on `path` until cancelled; the socket file is removed on the way out."""
        listener = bind_unix_listener(path)
        ino = path.stat().st_ino
        try:
            async with trio.open_nursery() as nursery:
                # serve_listeners retries on EMFILE and the like instead of crashing the node.
                await nursery.start(trio.serve_listeners, self.serve_stream, [listener])
                task_status.started(path)
        finally:
            try:
                if path.stat().st_ino == ino:  # never remove a successor's socket
                    path.unlink()
            except FileNotFoundError:
                pass
