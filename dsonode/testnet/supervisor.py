"""Run a planned testnet as separate `dsonode run` processes, and stop every one of them.

    plan = plan_testnet(5, ports=free_ports([host_ip(i) for i in range(5)]), byzantine=1)
    with Testnet(plan, Path("/tmp/tn")) as net:      # keys, processes, health, mesh (bounded)
        ids = net.seed(samples)                        # add_experience at the seed node
        net.wait_confirmed(ids, timeout=120)           # confirmed at every node (bounded)
        hits = net.query("...")                        # search at the query node
    # every process stopped: SIGTERM to its process group, SIGKILL after the grace period

Each node is a `NodeHandle`, a `process.NodeProcess` (the one process core, shared with
lone nodes) with its name, key and listen address. No orphans: each node runs in its own
process group and, on Linux, asks the kernel to SIGTERM it when the supervisor dies
(`PR_SET_PDEATHSIG`), so even a SIGKILLed supervisor leaves nothing running; a normal exit,
an exception or an interpreter exit (`atexit`) stops them. Processes are started from the
calling thread (the death signal follows the thread that forked), so create the Testnet in
a thread that outlives it (the main thread, in the CLI and in tests).

Each node keeps its data, its key and its log (`node.log`) in `<root>/<name>/`; a node that
fails shows the tail of its log in the error.
"""

from __future__ import annotations

import contextlib
import functools
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from dsonode.config.settings import default, setting
from dsonode.core.errors import DsoError
from dsonode.testnet.plan import TestnetPlan
from dsonode.testnet.process import (
    DEFAULT_START_TIMEOUT_S,
    NodeProcess,
    NodeProcessError,
    end_groups,
    node_env,
)

if TYPE_CHECKING:
    from dsonode.api.client import Client

DEFAULT_MESH_TIMEOUT_S = 120.0
DEFAULT_GRACE_S = 15.0
POLL_S = 0.25


class TestnetError(NodeProcessError):
    """A node failed to start, died, or a bounded wait ran out (with the node's log tail)."""

    __test__ = False


def free_port(ip: str) -> int:
    """A free TCP port on `ip` (bound and released: the caller binds it soon after). The one
    port picker of the testnet, the tests and the qa tooling."""
    with socket.socket() as s:
        s.bind((ip, 0))
        return s.getsockname()[1]


def free_ports(ips: Sequence[str]) -> list[int]:
    """One free TCP port per address (see `free_port`)."""
    return [free_port(ip) for ip in ips]


class NodeHandle(NodeProcess):
    """One planned node of a testnet: its identity and its process (a `NodeProcess` whose
    command, with listen address and peers, comes from the testnet). `start()`, `stop()`
    and `kill()` work on it directly as on any `NodeProcess`."""

    def __init__(
        self,
        *,
        index: int,
        name: str,
        data_dir: Path,
        peer_id: str,
        author: str,
        listen: str,
        attack: str | None,
        command: Callable[[], list[str]] | None = None,
        env: dict[str, str] | None = None,
        start_timeout: float = DEFAULT_START_TIMEOUT_S,
    ) -> None:
        super().__init__(data_dir, start_timeout=start_timeout, env=env)
        self._command = command
        self.index = index
        self.name = name
        self.peer_id = peer_id
        self.author = author  # hex of the raw Ed25519 public key (the key of reputation records)
        self.listen = listen
        self.attack = attack
        #: Ended on purpose (`stop_node`/`kill_node`): not a failure for `check_alive`.
        self.stopped = False

    def __repr__(self) -> str:
        return f"NodeHandle({self.name!r}, {self.listen!r}, pid={getattr(self.proc, 'pid', None)})"

    def command(self) -> list[str]:
        return super().command() if self._command is None else self._command()

    def spawn(self, command: Sequence[str] | None = None) -> subprocess.Popen[bytes]:
        with contextlib.suppress(FileNotFoundError):
            self.socket_path.unlink()  # a stale socket from an earlier run is not "ready"
        proc = super().spawn(command)
        self.stopped = False
        return proc

    def stop(self, grace: float = DEFAULT_GRACE_S) -> int | None:
        self.stopped = True  # on purpose: not a failure for `Testnet.check_alive`
        return super().stop(grace)

    def kill(self) -> int | None:
        self.stopped = True
        return super().kill()


def _write_seeded_key(path: Path, seed: str) -> Any:
    """The public testnet key of `seed` (as `dsonode init --testnet-key-seed`), mode 0600."""
    from cryptography.hazmat.primitives import serialization

    from dsonode.config.cli import seeded_testnet_key
    from dsonode.identity import load_key

    if path.exists():
        return load_key(path)
    key = seeded_testnet_key(seed)
    pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(pem)
    return load_key(path)


class Testnet:
    """A supervisor of one planned testnet (see the module docstring)."""

    __test__ = False

    def __init__(
        self,
        plan: TestnetPlan,
        root: Path,
        *,
        threads: int = 1,
        start_timeout: float = DEFAULT_START_TIMEOUT_S,
        mesh_timeout: float = DEFAULT_MESH_TIMEOUT_S,
        grace: float = DEFAULT_GRACE_S,
        env: dict[str, str] | None = None,
        log: Callable[[str], None] | None = None,
        node_args: Callable[[NodeHandle], Sequence[str]] | None = None,
    ) -> None:
        self.plan = plan
        #: Extra `dsonode run` arguments per node, asked at every (re)start of the node.
        self.node_args = node_args
        self.root = Path(root)
        self.threads = threads
        self.start_timeout = start_timeout
        self.mesh_timeout = mesh_timeout
        self.grace = grace
        self.env = node_env(env)
        if plan.relays:  # discovery would learn the direct addresses and go around the relays
            self.env.setdefault(setting("net.discovery").env, "false")
        self.log = log or (lambda _msg: None)
        self.nodes: list[NodeHandle] = []
        self._stop_lock = threading.Lock()

    # -- lifecycle

    def __enter__(self) -> Testnet:
        try:
            self.start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def prepare(self) -> list[NodeHandle]:
        """Create every node's directory and identity, so all peer ids are known up front."""
        from dsonode.core.peerinfo import peer_id_from_public_key
        from dsonode.identity import load_or_create_key, public_key_bytes

        self.root.mkdir(parents=True, exist_ok=True, mode=0o700)
        self.nodes = []
        for spec in self.plan.nodes:
            d = self.root / spec.name
            d.mkdir(exist_ok=True, mode=0o700)
            key_path = d / "node.key"
            if spec.key_seed is not None:
                key = _write_seeded_key(key_path, spec.key_seed)
            else:
                key = load_or_create_key(key_path)
            author = public_key_bytes(key)
            self.nodes.append(
                NodeHandle(
                    index=spec.index,
                    name=spec.name,
                    data_dir=d,
                    peer_id=peer_id_from_public_key(author),
                    author=author.hex(),
                    listen=spec.listen,
                    attack=spec.attack,
                    command=functools.partial(self.command, spec.index),
                    env=self.env,
                    start_timeout=self.start_timeout,
                )
            )
        # One operator runs every node of a testnet, so each trusts the others as its own
        # (trust.allow; ARCHITECTURE.md "Trust"): what one adds is served at every node. A
        # caller's own DSONODE_TRUST_ALLOW wins. (Each node's process copied the environment.)
        allow = setting("trust.allow").env
        if allow not in self.env:
            self.env[allow] = ",".join(n.peer_id for n in self.nodes)
            for node in self.nodes:
                node.env[allow] = self.env[allow]
        return self.nodes

    def command(self, i: int) -> list[str]:
        node = self.nodes[i]
        peers = self.plan.peer_multiaddrs(i, [n.peer_id for n in self.nodes])
        cmd = [sys.executable, "-m", "dsonode", "run", "--data-dir", str(node.data_dir)]
        cmd += ["--listen", node.listen, "--threads", str(self.threads)]
        for p in peers:
            cmd += ["--peer", p]
        if node.attack is not None:
            cmd += ["--byzantine-attack", node.attack]
        if self.node_args is not None:
            cmd += list(self.node_args(node))
        return cmd

    def start(self) -> None:
        """Start every node, then wait (bounded) until all are healthy and meshed."""
        if not self.nodes:
            self.prepare()
        for i in range(len(self.nodes)):
            self.start_node(i)
        self.wait_healthy(self.start_timeout)
        self.wait_meshed(self.mesh_timeout)

    def start_node(self, i: int) -> NodeHandle:
        """Start (or restart) node i without waiting; it must not be running."""
        if not self.nodes:
            self.prepare()
        node = self.nodes[i]
        if node.running():
            raise TestnetError(f"{node.name} is already running (pid {node.pid})")
        node.spawn()
        self.log(f"started {node.name} (pid {node.pid}) on {node.listen}")
        return node

    def stop_node(self, i: int, grace: float | None = None) -> int | None:
        """SIGTERM node i's process group, SIGKILL after `grace` s; its exit code (None if
        it was never started). The other nodes keep running."""
        return self.nodes[i].stop(self.grace if grace is None else grace)

    def kill_node(self, i: int) -> int | None:
        """SIGKILL node i's process group at once (no clean-up in the node); its exit code."""
        return self.nodes[i].kill()

    def check_alive(self) -> None:
        """Raise TestnetError (with its log tail) if a node has exited that was not ended on
        purpose by `stop_node`/`kill_node`."""
        for node in self.nodes:
            if node.proc is not None and not node.stopped and node.proc.poll() is not None:
                raise TestnetError(
                    f"{node.name} exited with code {node.proc.returncode}; "
                    f"last lines of {node.log_path}:\n{node.log_tail()}"
                )

    def fail_waiting(self, what: str, culprits: Iterable[NodeHandle], last: object = None) -> None:
        """Raise TestnetError for a bounded wait that ran out, with the culprits' log tails."""
        tails = "\n".join(
            f"--- {n.name} ({n.log_path}):\n{n.log_tail(15)}" for n in list(culprits)[:3]
        )
        raise TestnetError(f"timed out waiting for {what}; last: {last!r}\n{tails}")

    def wait_healthy(self, timeout: float, indices: Iterable[int] | None = None) -> None:
        """Until every node (or those of `indices`) answers `health` (bounded)."""
        deadline = time.monotonic() + timeout
        pending = list(self.nodes) if indices is None else [self.nodes[i] for i in indices]
        while pending and time.monotonic() < deadline:
            self.check_alive()
            for node in list(pending):
                if node.ready():
                    pending.remove(node)
                    self.log(f"{node.name} is healthy")
            time.sleep(POLL_S)
        if pending:
            self.fail_waiting("every node to answer `health`", pending)

    def wait_meshed(self, timeout: float) -> None:
        """Until every node is connected to its planned neighbours and has gossip mesh peers."""
        deadline = time.monotonic() + timeout
        last: dict[str, Any] = {}
        while time.monotonic() < deadline:
            self.check_alive()
            behind = []
            for node in self.nodes:
                want = self.plan.wanted_peers(node.index, default("net.low_water"))
                try:
                    net = self.stats(node.index, timeout=10.0).get("network", {})
                except (DsoError, OSError) as exc:
                    last[node.name] = str(exc)
                    behind.append(node)
                    continue
                connected, mesh = len(net.get("connected", [])), net.get("mesh_peers", 0)
                last[node.name] = {"connected": connected, "mesh": mesh, "want": want}
                if connected < want or mesh < min(want, 2):
                    behind.append(node)
            if not behind:
                self.log("every node is meshed")
                return
            time.sleep(POLL_S * 2)
        self.fail_waiting("the gossip mesh", behind, last)

    def stop(self, grace: float | None = None) -> dict[str, int | None]:
        """SIGTERM every node's process group, wait up to `grace` s, then SIGKILL. Idempotent."""
        grace = self.grace if grace is None else grace
        with self._stop_lock:
            procs = [(n, n.proc) for n in self.nodes if n.proc is not None]
            end_groups([p for _n, p in procs], signal.SIGTERM, grace)  # all at once
            return {n.name: p.returncode for n, p in procs}

    # -- talking to the nodes

    def client(self, i: int, timeout: float = 60.0) -> Client:
        return self.nodes[i].client(timeout=timeout)

    def stats(self, i: int, timeout: float = 60.0) -> dict[str, Any]:
        with self.client(i, timeout=timeout) as c:
            return c.stats()

    def seed(self, experiences: Sequence[dict[str, Any]], node: int | None = None) -> list[str]:
        """Add experiences at one node (default: the plan's seed node); their ids, in order."""
        i = self.plan.seed_node if node is None else node
        ids = []
        with self.client(i, timeout=120.0) as c:
            for exp in experiences:
                added = c.add_experience(exp["text"], exp["domain"], exp.get("tags", ()))
                ids.append(added["id"])
        return ids

    def confirmed_counts(self, ids: Sequence[str]) -> list[int | None]:
        """Per node: how many of `ids` it holds with a confirmed consensus (None: no answer)."""
        out: list[int | None] = []
        for node in self.nodes:
            try:
                n = 0
                with self.client(node.index, timeout=10.0) as c:
                    for exp_id in ids:
                        with contextlib.suppress(DsoError):  # not arrived yet: NotFound
                            n += bool(c.get(exp_id).get("confirmed"))
                out.append(n)
            except (DsoError, OSError):
                out.append(None)
        return out

    def wait_confirmed(
        self,
        ids: Sequence[str],
        timeout: float,
        on_poll: Callable[[], None] | None = None,
    ) -> None:
        """Until every node holds every id with a confirmed consensus (bounded)."""
        deadline = time.monotonic() + timeout
        counts: list[int | None] = []
        while time.monotonic() < deadline:
            self.check_alive()
            counts = self.confirmed_counts(ids)
            if on_poll is not None:
                on_poll()
            if all(c == len(ids) for c in counts):
                return
            time.sleep(POLL_S * 4)
        behind = [n for n, c in zip(self.nodes, counts, strict=False) if c != len(ids)]
        self.fail_waiting(f"{len(ids)} confirmed consensus codes at every node", behind, counts)

    def query(self, text: str, k: int = 3, node: int | None = None) -> list[dict[str, Any]]:
        i = self.plan.query_node if node is None else node
        with self.client(i, timeout=120.0) as c:
            return c.search(text, k=k)

    def status(self, ids: Sequence[str] = ()) -> list[dict[str, Any]]:
        """One row per node for the status table (fields None where a node does not answer)."""
        liars = {self.nodes[i].author: self.nodes[i].name for i in self.plan.byzantine}
        confirmed = self.confirmed_counts(ids) if ids else [None] * len(self.nodes)
        rows = []
        for node, conf in zip(self.nodes, confirmed, strict=True):
            row: dict[str, Any] = {
                "name": node.name,
                "listen": node.listen,
                "peer_id": node.peer_id,
                "byzantine": node.attack,
                "running": node.running(),
                "experiences": None,
                "submissions": None,
                "confirmed": conf,
                "connected": None,
                "accepted": None,
                "rejected": None,
                "liar_reputation": {},
            }
            try:
                st = self.stats(node.index, timeout=10.0)
            except (DsoError, OSError):
                rows.append(row)
                continue
            store = st.get("store", {})
            net = st.get("network", {})
            pipe = net.get("pipeline", {})
            row.update(
                experiences=store.get("experiences"),
                submissions=store.get("submissions"),
                connected=len(net.get("connected", [])),
                accepted=pipe.get("accepted"),
                # duplicates and already-stored items are normal on a mesh, not rejections
                rejected=sum(
                    v
                    for reason, v in (pipe.get("rejected") or {}).items()
                    if reason not in ("duplicate", "stored")
                ),
            )
            if node.attack is None:
                rep = net.get("reputation", {})
                row["liar_reputation"] = {
                    name: rep[author] for author, name in liars.items() if author in rep
                }
            rows.append(row)
        return rows
