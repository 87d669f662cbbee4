"""One `dsonode run` subprocess: start, readiness, log, stop. The process core of the harness.

    with NodeProcess(data_dir) as node:          # waits (bounded) until `health` answers
        node.client().add_experience("...", "math")
    # stopped: SIGTERM to its process group, SIGKILL after the grace period, always

`Testnet` (supervisor.py) runs each of its nodes as a `NodeHandle`, a `NodeProcess` with a
name, a key and a listen address, so a lone node (tests, benchmarks, `qa` kill9 without
`--listen`) and a testnet start and stop their processes through the same code
(ARCHITECTURE.md, "Packages and layers": the one multi-process harness).

No orphans: each node runs in its own process group (`start_new_session`) and, on Linux,
asks the kernel to SIGTERM it when the thread that started it dies (`PR_SET_PDEATHSIG`), so
even a SIGKILLed test runner leaves nothing running; `stop()`, `kill()`, `__exit__` and an
interpreter exit (`atexit`) end the whole group. Start nodes from a thread that outlives them
(the main thread, in the CLI and in tests). stdout and stderr go to `node.log` in the data
directory (a file: no pipe can fill up and block the node); every wait is bounded.
"""

from __future__ import annotations

import atexit
import contextlib
import ctypes
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from dsonode.config.paths import SOCKET_NAME
from dsonode.core.errors import DsoError

if TYPE_CHECKING:
    from dsonode.api.client import Client

LOG_NAME = "node.log"
#: Loading the model takes ~8 s alone; several nodes loading at once on 2 cores take longer.
DEFAULT_START_TIMEOUT_S = 240.0
DEFAULT_STOP_GRACE_S = 30.0
READY_POLL_S = 0.1
_PR_SET_PDEATHSIG = 1


class NodeProcessError(DsoError):
    """The node subprocess exited or did not become ready in time (with its log tail)."""


def node_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    """The environment of a node: ours, offline model hub (the model is local), then `extra`."""
    return {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", **(extra or {})}


def _die_with_parent() -> None:  # runs in the child between fork and exec
    with contextlib.suppress(Exception):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)


# Every process started here and not yet ended, ended at interpreter exit whatever happened.
_LIVE: set[subprocess.Popen[bytes]] = set()
_LIVE_LOCK = threading.Lock()


def end_groups(procs: Iterable[subprocess.Popen[bytes]], sig: int, grace: float) -> None:
    """`sig` to the process group of every proc at once, up to `grace` s (in all) for them to
    exit, then SIGKILL to every group (nothing of them may survive, even if the leader is
    gone), and reap."""
    with _LIVE_LOCK:  # a group already ended here is not signalled again (its pid may be reused)
        procs = [p for p in procs if p in _LIVE]
    for proc in procs:
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(proc.pid, sig)
    deadline = time.monotonic() + grace
    for proc in procs:
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=max(0.0, deadline - time.monotonic()))
    for proc in procs:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=10.0)
        with _LIVE_LOCK:
            _LIVE.discard(proc)


@atexit.register
def _end_all_at_exit() -> None:
    with _LIVE_LOCK:
        procs = list(_LIVE)
    with contextlib.suppress(Exception):
        end_groups(procs, signal.SIGTERM, 5.0)


class NodeProcess:
    """`python -m dsonode run --data-dir <data_dir> <extra_args>` (see the module docstring).

    `start()` starts it and waits until it answers `health`; `spawn()` only starts it (a
    testnet starts all its nodes, then waits for all). It may be started again on the same
    data directory once it has ended."""

    __test__ = False

    def __init__(
        self,
        data_dir: str | os.PathLike[str],
        *extra_args: str,
        start_timeout: float = DEFAULT_START_TIMEOUT_S,
        env: dict[str, str] | None = None,
    ) -> None:
        self.data_dir = Path(data_dir)
        self.extra_args = list(extra_args)
        self.start_timeout = start_timeout
        self.env = node_env(env)
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def socket_path(self) -> Path:
        return self.data_dir / SOCKET_NAME

    @property
    def log_path(self) -> Path:
        return self.data_dir / LOG_NAME

    @property
    def pid(self) -> int:
        if self.proc is None:
            raise NodeProcessError(f"the node on {self.data_dir} was never started")
        return self.proc.pid

    def command(self) -> list[str]:
        cmd = [sys.executable, "-m", "dsonode", "run", "--data-dir", str(self.data_dir)]
        return cmd + self.extra_args

    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    # -- lifecycle

    def spawn(self, command: Sequence[str] | None = None) -> subprocess.Popen[bytes]:
        """Start the process (`command`, default `self.command()`) without waiting for it."""
        if self.running():
            raise NodeProcessError(
                f"the node on {self.data_dir} is already running (pid {self.pid})"
            )
        self.data_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        cmd = list(self.command() if command is None else command)
        with open(self.log_path, "ab") as log_file:  # the child holds its own descriptor
            proc = subprocess.Popen(
                cmd,
                stdin=subprocess.DEVNULL,
                stdout=log_file,
                stderr=subprocess.STDOUT,
                env=self.env,
                start_new_session=True,
                preexec_fn=_die_with_parent,  # only prctl: safe between fork and exec
            )
        with _LIVE_LOCK:
            _LIVE.add(proc)
        self.proc = proc
        return proc

    def start(self) -> NodeProcess:
        """Start the node and wait until it answers `health` (killed if it does not)."""
        self.spawn()
        try:
            self.wait_ready()
        except BaseException:
            self.kill()
            raise
        return self

    def ready(self) -> bool:
        """One probe: does the node answer `health` with status ok on its socket now?"""
        from dsonode.api.client import Client, ClientError

        if not self.socket_path.exists():
            return False
        with contextlib.suppress(ClientError, OSError), Client(self.socket_path, timeout=5.0) as c:
            return bool(c.health().get("status") == "ok")
        return False

    def check_alive(self) -> None:
        """NodeProcessError with the log tail if the process has exited."""
        if self.proc is not None and self.proc.poll() is not None:
            raise NodeProcessError(
                f"the node on {self.data_dir} exited with code {self.proc.returncode}; "
                f"last lines of {self.log_path}:\n{self.log_tail()}"
            )

    def wait_ready(self, timeout: float | None = None) -> None:
        """Until the node answers `health` (bounded by `timeout`, default `start_timeout`)."""
        timeout = self.start_timeout if timeout is None else timeout
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self.check_alive()
            if self.ready():
                return
            time.sleep(READY_POLL_S)
        raise NodeProcessError(
            f"the node on {self.data_dir} was not ready after {timeout} s:\n{self.log_tail()}"
        )

    def stop(self, grace: float = DEFAULT_STOP_GRACE_S) -> int | None:
        """SIGTERM to the process group, up to `grace` s, then SIGKILL; the exit code (None
        if it was never started)."""
        if self.proc is None:
            return None
        end_groups([self.proc], signal.SIGTERM, grace)
        return self.proc.returncode

    def kill(self) -> int | None:
        """SIGKILL to the process group at once (no clean-up at all in the node), then reap;
        the exit code (None if it was never started)."""
        if self.proc is None:
            return None
        end_groups([self.proc], signal.SIGKILL, 0.0)
        return self.proc.returncode

    def __enter__(self) -> NodeProcess:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- talking to the node

    def client(self, timeout: float = 60.0) -> Client:
        from dsonode.api.client import Client

        return Client(self.socket_path, timeout=timeout)

    def log_tail(self, lines: int = 30) -> str:
        """The last `lines` lines of the node's log (read from its last 64 KiB)."""
        try:
            with open(self.log_path, "rb") as f:
                f.seek(0, os.SEEK_END)
                f.seek(max(0, f.tell() - 64 * 1024))
                text = f.read().decode("utf-8", errors="replace")
        except FileNotFoundError:
            return "(no log)"
        return "\n".join(text.splitlines()[-lines:])
