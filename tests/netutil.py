"""Helpers shared by the multi-process network tests (test_net, test_sync_net, test_daemon*).

- `JsonProcess`: a child process printing one JSON object per line on stdout (the probes in
  qa/), read by a thread; `wait_for` is bounded, `stop` always reaps.
- `free_port` (the testnet harness's, re-exported), `wait_until`: a bounded poll that retries
  only transient errors (a socket not up yet, an item not arrived yet).
- `node_identity`: the key and peer id of a `dsonode run` data directory (created before
  the node starts).
- `node_mesh`: N real `dsonode run` processes, all peered, started and meshed, then stopped
  (a thin fixture over `dsonode.testnet.Testnet`, the one multi-process harness).

Every wait here is bounded in time; every process started is stopped by its `stop`.
"""

from __future__ import annotations

import contextlib
import json
import queue
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

from dsonode.api.client import ClientError
from dsonode.api.jsonrpc import NOT_FOUND, SERVER_BUSY, RpcError
from dsonode.testnet.plan import NodePlan, TestnetPlan
from dsonode.testnet.supervisor import Testnet, free_port
from qa import REPO_ROOT, qa_env

REPO = REPO_ROOT
__all__ = ["REPO", "JsonProcess", "free_port", "node_identity", "node_mesh"]


class JsonProcess:
    """`python -m <module> <args>`: JSON lines on stdout (a thread reads them), stderr to a
    file in `tmp`."""

    def __init__(self, tmp: Path, name: str, module: str, *args: str) -> None:
        self.args = args
        self.err_path = tmp / f"{name}.{time.monotonic_ns()}.err"
        self._err = open(self.err_path, "w")  # noqa: SIM115 (closed in stop)
        self.proc = subprocess.Popen(
            [sys.executable, "-m", module, *args],
            stdout=subprocess.PIPE,
            stderr=self._err,
            text=True,
            cwd=REPO,
            env=qa_env({"PYTHONUNBUFFERED": "1"}),  # `python -m qa.x`: qa is not installed
        )
        self.events: list[dict] = []
        self._q: queue.Queue[dict | None] = queue.Queue()
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            try:
                self._q.put(json.loads(line))
            except ValueError:
                self._q.put({"event": "unparsable", "line": line[:200]})
        self._q.put(None)

    def wait_for(self, pred: str | Callable[[dict], bool], timeout: float) -> dict:
        """The first not yet taken event matching `pred` (an event name or a predicate);
        AssertionError after `timeout` seconds or when the process has ended."""
        match = (lambda ev: ev.get("event") == pred) if isinstance(pred, str) else pred
        for ev in self.events:
            if match(ev) and not ev.get("_taken"):
                ev["_taken"] = True
                return ev
        deadline = time.monotonic() + timeout
        while (left := deadline - time.monotonic()) > 0:
            try:
                ev = self._q.get(timeout=min(left, 0.5))
            except queue.Empty:
                continue
            if ev is None:
                self._q.put(None)
                break
            self.events.append(ev)
            if match(ev):
                ev["_taken"] = True
                return ev
        raise AssertionError(
            f"{self.args} gave no matching event in {timeout} s; exit={self.proc.poll()}; "
            f"stderr tail: {self.err_path.read_text()[-1500:]}"
        )

    def last(self, kind: str) -> dict | None:
        found = [e for e in self.events if e.get("event") == kind]
        return found[-1] if found else None

    def stop(self, sig: int = signal.SIGTERM) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
        self._thread.join(timeout=5)
        while True:  # keep what was printed before exit (e.g. a final stats line)
            try:
                ev = self._q.get_nowait()
            except queue.Empty:
                break
            if ev is not None:
                self.events.append(ev)
        self._err.close()


def _transient(exc: BaseException) -> bool:
    """Errors a poll may retry: the node's socket not up or busy (OSError, ClientError), an
    item not arrived yet (NotFound) or the server momentarily busy."""
    if isinstance(exc, RpcError):
        return exc.code in (NOT_FOUND, SERVER_BUSY)
    return isinstance(exc, OSError | ClientError)


def wait_until(what: str, fn: Callable[[], Any], timeout: float, nodes: Iterable = ()) -> Any:
    """Poll `fn()` every 0.5 s until it returns something truthy; AssertionError naming
    `what`, with the last value or transient exception and the log tails of `nodes`
    (anything with `log_tail(n)`, labelled by its `name` if it has one), after `timeout` s.
    Only transient errors (`_transient`) are retried: anything else (a broken predicate, a
    KeyError in a reply) propagates at once instead of showing up as a timeout."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        try:
            last = fn()
        except Exception as exc:
            if not _transient(exc):
                raise
            last = exc
        else:
            if last:
                return last
        time.sleep(0.5)
    logs = "\n".join(
        f"--- {getattr(n, 'name', None) or f'node {i + 1}'}\n{n.log_tail(15)}"
        for i, n in enumerate(nodes)
    )
    raise AssertionError(f"timed out waiting for {what}; last: {last!r}\n{logs}")


def node_identity(data_dir: Path) -> tuple[bytes, str]:
    """(author public key, base58 peer id) of the node that will run on `data_dir` (the key
    is created now, mode 0600, exactly as `dsonode run` would)."""
    from dsonode.core.peerinfo import peer_id_from_public_key
    from dsonode.identity import load_or_create_key, public_key_bytes

    data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    author = public_key_bytes(load_or_create_key(data_dir / "node.key"))
    return author, peer_id_from_public_key(author)


@contextlib.contextmanager
def node_mesh(
    root: Path,
    ips: Sequence[str],
    extra_args: Sequence[Sequence[str]] = (),
    *,
    start_timeout: float = 180,
    mesh_timeout: float = 90,
) -> Iterator[list[Any]]:
    """Real `dsonode run` processes on `ips` (a `Testnet` of a full-mesh plan), data
    directories root/n1, root/n2, ...: each listens on a free port of its address, has every
    other node as `--peer`, `--threads 1`, then `extra_args[i]` (if given). Started in
    parallel; yields the `NodeHandle`s (`client()`, `data_dir`, `log_tail()`) once every
    node has all the others connected and in its gossip mesh (AssertionError after
    `mesh_timeout` s); always stopped on exit (SIGTERM, SIGKILL after 15 s)."""
    n = len(ips)
    plan = TestnetPlan(
        tuple(
            NodePlan(
                index=i,
                name=f"n{i + 1}",
                ip=ip,
                port=free_port(ip),
                dials=tuple(j for j in range(n) if j != i),
            )
            for i, ip in enumerate(ips)
        )
    )
    net = Testnet(
        plan,
        root,
        start_timeout=start_timeout,
        mesh_timeout=mesh_timeout,
        grace=15.0,
        node_args=lambda node: list(extra_args[node.index]) if node.index < len(extra_args) else [],
    )
    with net:  # healthy, connected to every planned neighbour, with gossip mesh peers
        nodes = net.nodes
        others = n - 1

        def meshed() -> bool:  # node_mesh's stronger promise: every other node in the mesh
            for node in nodes:
                with node.client(timeout=30) as c:
                    network = c.stats()["network"]
                if len(network["connected"]) < others or network["mesh_peers"] < others:
                    return False
            return True

        wait_until(f"a full gossip mesh of {n}", meshed, mesh_timeout, nodes)
        yield nodes
