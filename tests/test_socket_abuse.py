"""Abuse of a real node's retrieval socket, and the security checks of the running process.

One node serves the module (loading the model costs ~15 s here). It runs with networking on
a loopback address (so the listening-socket check has something to look at), DEBUG logging
(so the key check reads the chattiest log), a connection limit of 16 and an idle timeout of
2 s (so both limits are exercised). The CI subset sends ~1,000 malformed requests; the full
run (10,000+) is part of `dsonode bench faults`. See RELIABILITY.md.
"""

from __future__ import annotations

import base64
import os
import random
import stat

import psutil
import pytest

from dsonode.identity import load_key, private_key_bytes, public_key_bytes
from dsonode.testnet import free_port
from dsonode.testnet.process import NodeProcess
from qa.socket_abuse import run_abuse

pytestmark = pytest.mark.slow

MAX_CONNECTIONS = 16
IDLE_TIMEOUT = 2
CI_REQUESTS = 1_000
LESSONS = [
    ("code", "Write a failing unit test before fixing a bug in the parser."),
    ("code", "Close file handles in a finally block or use a context manager."),
    ("math", "When proving a statement for all natural numbers, check the base case first."),
]


def loopback_listen_address(seed: int) -> str:
    """A free TCP port on a seeded 127.0.0.N (N >= 20: other tests use the low ones)."""
    host = f"127.0.0.{random.Random(seed).randrange(20, 250)}"
    return f"/ip4/{host}/tcp/{free_port(host)}"


@pytest.fixture(scope="module")
def node(tmp_path_factory, session_seed):
    data_dir = tmp_path_factory.mktemp("abuse")
    proc = NodeProcess(
        data_dir,
        "--idle-timeout",
        str(IDLE_TIMEOUT),
        "--max-connections",
        str(MAX_CONNECTIONS),
        "--listen",
        loopback_listen_address(session_seed),
        "--log-level",
        "DEBUG",
    )
    try:
        proc.start()
        with proc.client() as c:
            for domain, text in LESSONS:
                c.add_experience(text, domain)
        yield proc
    finally:
        proc.stop()


def test_malformed_requests_get_errors_and_the_node_keeps_serving(node, seed):
    result = run_abuse(
        node.socket_path,
        node.pid,
        CI_REQUESTS,
        random.Random(seed),
        max_connections=MAX_CONNECTIONS,
        idle_timeout=IDLE_TIMEOUT,
        rounds=4,
    )
    summary = result.summary()
    assert result.violations == [], (seed, summary)
    assert result.requests >= CI_REQUESTS, (seed, summary)
    assert result.search_checks == 4, (seed, summary)  # a real search after every round
    # connections over the limit: a busy error, a close
    assert result.busy_rejections == 4, (seed, summary)
    assert result.error_replies > CI_REQUESTS // 2, (seed, summary)
    kinds = {"bad_json", "bad_utf8", "deep_nesting", "junk_batch"}
    assert set(summary["by_kind"]) >= kinds, (seed, summary)
    assert summary["rss_growth_mb"] < 300, (seed, summary)  # bounded memory (generous: 2-core CI)
    assert node.proc.poll() is None


def test_socket_file_and_directory_are_private(node):
    st = node.socket_path.lstat()
    assert stat.S_ISSOCK(st.st_mode)
    assert stat.S_IMODE(st.st_mode) == 0o600
    assert st.st_uid == os.getuid()
    dir_mode = stat.S_IMODE(node.data_dir.stat().st_mode)
    assert dir_mode & 0o022 == 0
    key_mode = stat.S_IMODE((node.data_dir / "node.key").stat().st_mode)
    assert key_mode == 0o600


def test_only_loopback_listens(node):
    listening = [
        c.laddr
        for c in psutil.Process(node.pid).net_connections(kind="inet")
        if c.status == psutil.CONN_LISTEN
    ]
    assert listening, "the node was configured to listen on loopback"
    for addr in listening:
        assert addr.ip.startswith("127."), f"listening beyond loopback: {addr}"


def test_keys_never_appear_in_the_log(node):
    with node.client() as c:  # some traffic first, so the DEBUG log has something to say
        c.search("unit tests", k=2)
        c.stats()
    key = load_key(node.data_dir / "node.key")
    seed = private_key_bytes(key)
    pem_lines = [
        line
        for line in (node.data_dir / "node.key").read_text().splitlines()
        if line and not line.startswith("-----")
    ]
    log = node.log_path.read_bytes()
    assert len(log) > 500  # the log is really there and says something
    assert public_key_bytes(key).hex()[:16].encode() in log  # its public form is fine
    secrets = [
        seed,
        seed.hex().encode(),
        seed.hex().upper().encode(),
        base64.b64encode(seed).rstrip(b"="),
        base64.urlsafe_b64encode(seed).rstrip(b"="),
        *[line.encode() for line in pem_lines],
    ]
    for secret in secrets:
        assert secret not in log
