"""The retrieval socket end to end: a real `dsonode run` subprocess (real encoder, real LMDB,
real Unix socket), the Python client, raw-socket abuse, the CLI, and the node's identity key.

One node serves the whole module (loading the model costs ~8 s).
"""

from __future__ import annotations

import contextlib
import json
import socket
import stat
import threading
from pathlib import Path

import pytest
import trio

from dsonode.api import Client, NodeNotRunning, RpcError
from dsonode.api import jsonrpc as j
from dsonode.api.server import RpcServer, SocketInUse, SocketPathError, prepare_socket_path
from dsonode.core.constants import DIM
from dsonode.identity import IdentityError, load_key, load_or_create_key, public_key_bytes
from dsonode.testnet.process import NodeProcess

pytestmark = pytest.mark.slow

LESSONS = [
    ("math", "When proving a statement for all natural numbers, check the base case first.", []),
    ("math", "Factor the quadratic before applying the quadratic formula.", ["algebra"]),
    ("code", "Write a failing unit test before fixing a bug in the parser.", ["testing", "tdd"]),
    ("code", "Close file handles in a finally block or use a context manager.", ["python"]),
    ("cooking", "Rest the steak for five minutes after searing so the juices settle.", []),
]


@pytest.fixture(scope="module")
def node(tmp_path_factory):
    data_dir = tmp_path_factory.mktemp("node")
    proc = NodeProcess(data_dir, "--idle-timeout", "2", "--max-connections", "48")
    try:
        proc.start()
        with proc.client() as c:
            added = [c.add_experience(text, domain, tags) for domain, text, tags in LESSONS]
        proc.added = added
        yield proc
    finally:
        proc.stop()


def raw_exchange(path: Path, payload: bytes, *, shutdown: bool = True) -> list[bytes]:
    """Send bytes on a fresh connection, half-close it, read every reply line until EOF."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(60)
        s.connect(str(path))
        s.sendall(payload)
        if shutdown:
            s.shutdown(socket.SHUT_WR)
        data = bytearray()
        while len(data) < 64 * 1024 * 1024:
            chunk = s.recv(65536)
            if not chunk:
                break
            data += chunk
    return bytes(data).splitlines()


def req(id_, method, params=None) -> bytes:
    obj = {"jsonrpc": "2.0", "id": id_, "method": method}
    if params is not None:
        obj["params"] = params
    return json.dumps(obj).encode() + b"\n"


# ---- methods ----------------------------------------------------------------------------------


def test_socket_file_is_private(node):
    st = node.socket_path.lstat()
    assert stat.S_ISSOCK(st.st_mode)
    assert stat.S_IMODE(st.st_mode) == 0o600
    key = node.data_dir / "node.key"
    assert stat.S_IMODE(key.stat().st_mode) == 0o600


def test_health(node):
    with node.client() as c:
        h = c.health()
    assert h["status"] == "ok"
    assert len(h["space_id"]) == 64
    assert h["indexed"] >= len(LESSONS)


def test_add_experience_result_shape(node):
    for (domain, text, tags), item in zip(LESSONS, node.added, strict=True):
        assert set(item) >= {
            "id",
            "text",
            "score",
            "domain",
            "tags",
            "created",
            "author",
            "submissions",
            "confirmed",
        }
        assert item["new"] is True
        assert item["text"] == text and item["domain"] == domain
        assert item["tags"] == sorted(tags)
        assert item["submissions"] == 1 and item["confirmed"] is False  # no quorum alone
        assert len(item["id"]) == 64 and len(item["author"]) == 64
        assert item["created"].endswith("Z")
    assert len({i["author"] for i in node.added}) == 1  # all signed by the node's key


def test_add_same_experience_is_idempotent(node):
    domain, text, tags = LESSONS[0]
    with node.client() as c:
        before = c.stats()["store"]
        again = c.add_experience("  " + text.replace(" ", "   ") + " ", domain, tags)
        after = c.stats()["store"]
    assert again["id"] == node.added[0]["id"]  # normalised text: same experience
    assert again["new"] is False
    assert before == after


def test_search_finds_the_relevant_lesson(node):
    with node.client() as c:
        hits = c.search("how do I prove something by induction on n?", k=3)
        code_hits = c.search("debugging a parser with tests", k=2, domain="code")
    assert 1 <= len(hits) <= 3
    assert hits[0]["id"] == node.added[0]["id"]
    assert hits[0]["score"] >= hits[-1]["score"]
    assert [h["domain"] for h in code_hits] == ["code", "code"]
    assert code_hits[0]["id"] == node.added[2]["id"]


def test_search_filters(node):
    with node.client() as c:
        everything = c.search("kitchen", k=100)
        assert len(everything) >= len(LESSONS)
        assert c.search("kitchen", k=100, confirmed_only=True) == []  # nothing has a quorum
        cut = everything[1]["score"]
        kept = c.search("kitchen", k=100, min_score=cut)
        assert kept and all(h["score"] >= cut for h in kept)
        assert len(kept) < len(everything)
        assert c.search("kitchen", domain="no-such-domain") == []
        assert len(c.search("kitchen", k=1)) == 1


def test_search_by_vector(node):
    import numpy as np

    rng = np.random.default_rng(7)
    with node.client() as c:
        full = c.search(vector=rng.standard_normal(DIM).tolist(), k=4)
        prefix = c.search(vector=rng.standard_normal(1024).tolist(), k=2)
        assert len(full) == 4 and len(prefix) == 2
        for hit in full + prefix:
            assert isinstance(hit["score"], float)
            assert c.get(hit["id"])["text"] == hit["text"]
        assert full[0]["score"] >= full[-1]["score"]


def test_get(node):
    with node.client() as c:
        item = c.get(node.added[1]["id"])
        with pytest.raises(RpcError) as info:
            c.get("00" * 32)
    assert item["text"] == LESSONS[1][1] and item["tags"] == ["algebra"]
    assert item["score"] is None and item["submissions"] == 1
    assert info.value.code == j.NOT_FOUND


def test_stats(node):
    with node.client() as c:
        s = c.stats()
    assert s["store"]["experiences"] >= len(LESSONS)
    assert s["indexed"] == s["store"]["experiences"]
    assert s["dim"] == DIM and len(s["author"]) == 64
    assert s["connections"]["requests"] > 0


# ---- errors -----------------------------------------------------------------------------------


def test_every_error_code_and_the_connection_survives(node):
    lines = raw_exchange(
        node.socket_path,
        b"this is not json\n"
        + b'"just a string"\n'
        + req(1, "no_such_method")
        + req(2, "search", {"query": "x", "k": 500})
        + req(3, "add_experience", {"text": "t", "domain": "Not A Domain!"})
        + req(4, "get", {"id": "00" * 32})
        + req(5, "health"),
    )
    replies = [json.loads(line) for line in lines]
    assert [r.get("id") for r in replies] == [None, None, 1, 2, 3, 4, 5]
    codes = [r["error"]["code"] if "error" in r else None for r in replies]
    assert codes == [
        j.PARSE_ERROR,
        j.INVALID_REQUEST,
        j.METHOD_NOT_FOUND,
        j.INVALID_PARAMS,
        j.INVALID_PARAMS,
        j.NOT_FOUND,
        None,
    ]
    assert "'k'" in replies[3]["error"]["message"]
    assert replies[4]["error"]["data"] == {"param": "domain"}
    assert replies[6]["result"]["status"] == "ok"


def test_client_raises_typed_errors(node):
    with node.client() as c:
        with pytest.raises(RpcError) as info:
            c.call("search", {"query": "x", "bogus": 1})
        assert info.value.code == j.INVALID_PARAMS and "bogus" in info.value.message
        with pytest.raises(RpcError) as info:
            c.add_experience("x" * 2000, "math")
        assert info.value.code == j.INVALID_PARAMS and info.value.data == {"param": "text"}
        assert c.health()["status"] == "ok"  # same connection still fine


def test_odd_but_valid_json_gets_proper_errors(node):
    lines = raw_exchange(
        node.socket_path,
        b'{"jsonrpc":"2.0","id":1,"method":"stats","params":{"\\ud800":1}}\n'
        + b'{"jsonrpc":"2.0","id":2,"method":"search","params":{"query":"\\u00e9t\\u00e9"}}\n'
        + b"[" * 50_000
        + b"\n"
        + req(3, "health"),
    )
    replies = [json.loads(x) for x in lines]
    assert replies[0]["error"]["code"] == j.PARSE_ERROR  # a lone surrogate is not UTF-8
    assert "results" in replies[1]["result"]
    assert replies[2]["error"]["code"] == j.PARSE_ERROR
    assert replies[3]["result"]["status"] == "ok"


def test_health_answers_while_searches_run(node):
    """Searches run in worker threads: `health` is answered before a long batch finishes."""
    batch = [
        {"jsonrpc": "2.0", "id": i, "method": "search", "params": {"query": f"q {i}", "k": 100}}
        for i in range(64)
    ]
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as busy:
        busy.connect(str(node.socket_path))
        busy.sendall(json.dumps(batch).encode() + b"\n")
        with node.client() as c:
            assert c.health()["status"] == "ok"
        busy.setblocking(False)
        with contextlib.suppress(BlockingIOError):
            assert busy.recv(1) == b"", "the batch finished before health was answered"
        busy.settimeout(240)
        data = bytearray()
        while not data.endswith(b"\n") and len(data) < 64 * 1024 * 1024:
            chunk = busy.recv(1 << 20)
            assert chunk, "connection closed before the batch reply"
            data += chunk
    assert [r["id"] for r in json.loads(data)] == list(range(64))


def test_huge_line_is_skipped_and_the_connection_goes_on(node):
    huge = b'{"jsonrpc":"2.0","id":1,"method":"search","params":{"query":"' + b"a" * (
        2 * 1024 * 1024
    )
    lines = raw_exchange(node.socket_path, huge + b'"}}\n' + req(2, "health"))
    first, second = (json.loads(x) for x in lines)
    assert first["error"]["code"] == j.INVALID_REQUEST and "exceeds" in first["error"]["message"]
    assert second["id"] == 2 and second["result"]["status"] == "ok"


def test_half_closed_connection_gets_its_reply(node):
    # no trailing newline, then EOF on the write side: the last request still counts
    lines = raw_exchange(node.socket_path, req(9, "health").rstrip(b"\n"))
    assert len(lines) == 1 and json.loads(lines[0])["id"] == 9


def test_client_disconnecting_mid_request_does_not_hurt(node):
    for _ in range(3):
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            s.connect(str(node.socket_path))
            s.sendall(req(1, "search", {"query": "abandoned query", "k": 100}) + b'{"jsonr')
    with node.client() as c:
        assert c.health()["status"] == "ok"


def test_notifications_get_no_reply_and_batches_work(node):
    notification = b'{"jsonrpc":"2.0","method":"health"}\n'
    batch = json.dumps(
        [
            {"jsonrpc": "2.0", "id": "a", "method": "health"},
            {"jsonrpc": "2.0", "method": "stats"},
            {"jsonrpc": "2.0", "id": "b", "method": "nope"},
            7,
        ]
    ).encode()
    lines = raw_exchange(node.socket_path, notification + batch + b"\n" + req("z", "health"))
    assert len(lines) == 2
    batch_reply = json.loads(lines[0])
    assert [r["id"] for r in batch_reply] == ["a", "b", None]
    assert batch_reply[0]["result"]["status"] == "ok"
    assert batch_reply[1]["error"]["code"] == j.METHOD_NOT_FOUND
    assert batch_reply[2]["error"]["code"] == j.INVALID_REQUEST
    assert json.loads(lines[1])["id"] == "z"


def test_bad_notifications_get_no_reply_on_a_live_connection(node):
    """Notifications with bad params are never answered; the next request's reply comes first."""
    silent = (
        b'{"jsonrpc":"2.0","method":"health","params":[1]}\n'
        + b'[{"jsonrpc":"2.0","method":"search","params":{"query":"bread","k":2}},'
        + b'{"jsonrpc":"2.0","method":"search","params":[2]}]\n'
    )
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(60)
        s.connect(str(node.socket_path))
        s.sendall(silent + req("after", "health"))
        data = bytearray()
        while not data.endswith(b"\n") and len(data) < 1024 * 1024:  # bounded in bytes and time
            chunk = s.recv(65536)
            assert chunk, "connection closed before the reply"
            data += chunk
        # replies come in request order: any answer to the notifications would be read first
        lines = bytes(data).splitlines()
        assert len(lines) == 1, lines
        reply = json.loads(lines[0])
        assert reply["id"] == "after" and reply["result"]["status"] == "ok"
        s.settimeout(1.0)  # nothing else may follow
        with pytest.raises(TimeoutError):
            stray = s.recv(65536)
            pytest.fail(f"stray reply: {stray!r}")


def test_idle_connection_is_closed_and_the_client_reconnects(node):
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(60)  # the node runs with --idle-timeout 2
        s.connect(str(node.socket_path))
        assert s.recv(100) == b""  # closed by the node, without a word
    with node.client() as c:
        c.health()
        c._sock.settimeout(60)
        assert c._sock.recv(100) == b""  # wait for the node to drop the idle connection
        c._sock.settimeout(c.timeout)
        assert c.health()["status"] == "ok"  # the client resends on a new connection


def test_many_clients_at_once(node):
    queries = ["induction", "unit tests", "steak", "quadratic", "file handles", "recipes"]
    errors: list[BaseException] = []
    results: dict[int, list[str]] = {}

    def worker(n: int) -> None:
        try:
            with node.client() as c:
                ids = []
                for i in range(4):
                    ids.append(c.search(queries[(n + i) % len(queries)], k=3)[0]["id"])
                    assert c.health()["status"] == "ok"
                results[n] = ids
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(24)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=240)
    assert not any(t.is_alive() for t in threads)
    assert errors == []
    assert len(results) == 24
    # same query, same answer, whichever connection asked
    by_query: dict[str, set[str]] = {}
    for n, ids in results.items():
        for i, hit in enumerate(ids):
            by_query.setdefault(queries[(n + i) % len(queries)], set()).add(hit)
    assert all(len(v) == 1 for v in by_query.values())


def test_too_many_connections_get_a_busy_error(node):
    """The node runs with --max-connections 48: connection 49 gets -32000 and is closed."""
    socks = []
    busy_at = None
    try:
        for i in range(60):
            s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            socks.append(s)
            s.settimeout(60)
            s.connect(str(node.socket_path))
            s.sendall(req(i, "health"))
            reply = json.loads(s.recv(65536))
            if "error" in reply:
                assert reply["error"]["code"] == j.SERVER_BUSY
                # closed by the node (a reset, as our request was left unread)
                with contextlib.suppress(ConnectionResetError):
                    assert s.recv(100) == b""
                busy_at = i
                break
            assert reply["id"] == i
    finally:
        for s in socks:
            s.close()
    # a connection still finishing an earlier test's work may hold a slot
    assert busy_at is not None and 44 <= busy_at <= 48
    with node.client() as c:  # the slots free up again
        assert c.health()["status"] == "ok"


# ---- the command line -------------------------------------------------------------------------


def dsonode(capsys, *args: str) -> tuple[int, str, str]:
    """Run the real command line in this process (a subprocess would reload torch each time)."""
    from dsonode.cli import main

    capsys.readouterr()
    code = main(list(args))
    out, err = capsys.readouterr()
    return code, out, err


def test_cli_add_search_stats(node, capsys):
    d = ["--data-dir", str(node.data_dir)]
    code, out, err = dsonode(
        capsys,
        "add",
        "Taste the sauce before adding more salt.",
        "--domain",
        "cooking",
        "--tags",
        "salt, sauce",
        "--json",
        *d,
    )
    assert code == 0, err
    item = json.loads(out)
    assert item["tags"] == ["salt", "sauce"]
    code, out, err = dsonode(
        capsys, "search", "too much salt in the sauce", "-k", "2", "--json", *d
    )
    assert code == 0, err
    assert json.loads(out)["results"][0]["id"] == item["id"]
    code, out, _ = dsonode(capsys, "search", "too much salt in the sauce", "-k", "1", *d)
    assert code == 0 and "Taste the sauce" in out
    code, out, _ = dsonode(capsys, "stats", "--socket", str(node.socket_path))
    assert code == 0 and "indexed" in out


def test_cli_errors_are_clear(node, tmp_path, capsys):
    code, _, err = dsonode(capsys, "stats", "--data-dir", str(tmp_path))
    assert code == 2
    assert "no node is running" in err and "Traceback" not in err
    code, _, err = dsonode(
        capsys, "add", "x", "--domain", "BAD DOMAIN", "--data-dir", str(node.data_dir)
    )
    assert code == 2 and "domain" in err and "Traceback" not in err
    # a second node on the same data directory refuses at once (the socket answers)
    code, _, err = dsonode(capsys, "run", "--data-dir", str(node.data_dir))
    assert code == 2 and "already serving" in err


PEER = "12D3KooW9pNAk8aiBuGVQtWRdbkLmo5qVL3e2h5UxbN2Nz9ttwiw"  # of the all-zero key


def test_peer_methods_on_a_node_without_network(node, capsys):
    """This node runs without --listen: the peer methods say so (-32003); bad params are
    still -32602 first, naming the param."""
    with node.client() as c:
        for call in (
            lambda: c.add_peer(f"/ip4/127.0.0.3/tcp/4001/p2p/{PEER}"),
            lambda: c.forget_peer(PEER),
        ):
            with pytest.raises(RpcError) as err:
                call()
            assert err.value.code == j.NO_NETWORK
            assert "networking is off" in err.value.message and "--listen" in err.value.message
        with pytest.raises(RpcError) as err:
            c.add_peer("/ip4/127.0.0.3/tcp/4001")
        assert err.value.code == j.INVALID_PARAMS and err.value.data == {"param": "multiaddr"}
        assert "/p2p/" in err.value.message
        with pytest.raises(RpcError) as err:
            c.forget_peer("not a peer id")
        assert err.value.code == j.INVALID_PARAMS and err.value.data == {"param": "peer_id"}
        assert c.health()["status"] == "ok"  # the connection goes on
    d = ["--data-dir", str(node.data_dir)]
    code, out, err_text = dsonode(capsys, "peers", "forget", PEER, *d)
    assert code == 1 and "networking is off" in err_text and "Traceback" not in err_text
    code, out, _ = dsonode(capsys, "peers", *d)
    assert code == 0 and "networking is off" in out


def test_client_without_node(tmp_path):
    with pytest.raises(NodeNotRunning):
        Client(tmp_path / "dsonode.sock").health()
    stale = tmp_path / "stale.sock"
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.bind(str(stale))
    s.close()  # leaves a socket file nobody listens on
    with pytest.raises(NodeNotRunning):
        Client(stale).health()


# ---- the socket file --------------------------------------------------------------------------


def test_prepare_socket_path(tmp_path):
    stale = tmp_path / "a.sock"
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.bind(str(stale))
    s.close()
    prepare_socket_path(stale)
    assert not stale.exists()  # a stale socket is removed

    live = tmp_path / "b.sock"
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as srv:
        srv.bind(str(live))
        srv.listen(1)
        with pytest.raises(SocketInUse):
            prepare_socket_path(live)
    regular = tmp_path / "c.sock"
    regular.write_text("not a socket")
    with pytest.raises(SocketPathError):
        prepare_socket_path(regular)
    assert regular.exists()
    with pytest.raises(SocketPathError):
        prepare_socket_path(tmp_path / ("x" * 120) / "d.sock")


def test_internal_error_does_not_leak_and_connection_survives(tmp_path):
    """A handler that fails for real (a bug): -32603, no traceback, the connection goes on."""

    async def broken(params):
        return {}["missing-key"]

    async def health(params):
        return {"status": "ok"}

    handlers = {name: broken for name in j.METHODS} | {"health": health}
    server = RpcServer(handlers)
    path = tmp_path / "s.sock"

    async def main():
        async with trio.open_nursery() as nursery:
            await nursery.start(server.serve_unix, path)
            lines = await trio.to_thread.run_sync(
                raw_exchange, path, req(1, "stats") + req(2, "health")
            )
            nursery.cancel_scope.cancel()
        return lines

    lines = trio.run(main)
    first, second = (json.loads(x) for x in lines)
    assert first["error"]["code"] == j.INTERNAL_ERROR
    assert "missing-key" not in first["error"]["message"]
    assert "Traceback" not in lines[0].decode()
    assert second["result"] == {"status": "ok"}
    assert not path.exists()  # removed on shutdown


# ---- the identity key -------------------------------------------------------------------------


def test_identity_key_created_private_and_stable(tmp_path):
    path = tmp_path / "node.key"
    key = load_or_create_key(path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert public_key_bytes(load_or_create_key(path)) == public_key_bytes(key)
    assert len(public_key_bytes(key)) == 32


def test_identity_refuses_unsafe_or_bad_key_files(tmp_path):
    path = tmp_path / "node.key"
    load_or_create_key(path)
    path.chmod(0o644)
    with pytest.raises(IdentityError, match="chmod 600"):
        load_key(path)
    path.chmod(0o600)
    path.write_bytes(b"-----BEGIN PRIVATE KEY-----\ngarbage\n-----END PRIVATE KEY-----\n")
    with pytest.raises(IdentityError):
        load_key(path)
    path.write_bytes(b"x" * 10_000)
    with pytest.raises(IdentityError, match="too large"):
        load_key(path)
