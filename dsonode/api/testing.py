"""Run a real `dsonode run` in a subprocess, for tests and benchmarks (shipped, as trio does).

    with NodeProcess(data_dir) as node:          # waits until `health` answers
        node.client().add_experience("...", "math")
    # stopped with SIGTERM (SIGKILL after a grace period), always

Every wait is bounded; the process is stopped in `__exit__` whatever happened, and its
stdout/stderr go to files in the data directory (no pipe can fill up and block it).
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from dsonode.api.client import Client, ClientError
from dsonode.core.errors import DsoError

#: Loading the model takes ~8 s alone; a shared 2-core machine can be several times slower.
DEFAULT_START_TIMEOUT = 240.0


class NodeProcessError(DsoError):
    """The node subprocess exited or did not become ready in time."""


class NodeProcess:
    def __init__(
        self,
        data_dir: str | os.PathLike[str],
        *extra_args: str,
        start_timeout: float = DEFAULT_START_TIMEOUT,
        env: dict[str, str] | None = None,
    ):
        self.data_dir = Path(data_dir)
        self.socket_path = self.data_dir / "dsonode.sock"
        self.extra_args = list(extra_args)
        self.start_timeout = start_timeout
        self.env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", **(env or {})}
        self.proc: subprocess.Popen[bytes] | None = None
        self.log_path = self.data_dir / "node-test.log"

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def command(self) -> list[str]:
        return [
            sys.executable,
            "-m",
            "dsonode",
            "run",
            "--data-dir",
            str(self.data_dir),
            *self.extra_args,
        ]

    def start(self) -> NodeProcess:
        self.data_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        log = open(self.log_path, "ab")  # noqa: SIM115 - handed to the child, closed below
        try:
            self.proc = subprocess.Popen(
                self.command(), stdout=log, stderr=subprocess.STDOUT, env=self.env
            )
        finally:
            log.close()
        try:
            self.wait_ready()
        except BaseException:
            self.kill()
            raise
        return self

    def wait_ready(self) -> None:
        deadline = time.monotonic() + self.start_timeout
        while time.monotonic() < deadline:
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise NodeProcessError(
                    f"node exited with code {self.proc.returncode}:\n{self.log_tail()}"
                )
            if self.socket_path.exists():
                with contextlib.suppress(ClientError, OSError), self.client(timeout=5) as c:
                    if c.health().get("status") == "ok":
                        return
            time.sleep(0.1)
        raise NodeProcessError(f"node not ready after {self.start_timeout} s:\n{self.log_tail()}")

    def client(self, timeout: float = 60.0) -> Client:
        return Client(self.socket_path, timeout=timeout)

    def log_tail(self, lines: int = 30) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return "(no log)"
        return "\n".join(text.splitlines()[-lines:])

    def stop(self, grace: float = 30.0) -> int | None:
        """SIGTERM, wait up to `grace` seconds, then SIGKILL. Returns the exit code."""
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=grace)
            except subprocess.TimeoutExpired:
                self.kill()
        return self.proc.returncode

    def kill(self) -> None:
        """SIGKILL (no clean-up at all in the node), then reap."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(timeout=30)

    def __enter__(self) -> NodeProcess:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
