"""`dsonode testnet` as a command: it leaves no node process behind, however it ends.

The supervisor is stopped while its nodes are still loading their model (cheap: no need to
wait for a whole testnet): by SIGTERM (it must stop every node and exit), and by SIGKILL (it
cannot clean up; the kernel's parent-death signal must still stop every node). Bounded waits.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time

import pytest


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # a zombie is dead for our purpose (its parent, now gone or reaped, was the supervisor)
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(")")[-1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def _start_and_wait_for_nodes(tmp_path, n: int) -> tuple[subprocess.Popen, list[int]]:
    out_path = tmp_path / "out.txt"
    out = open(out_path, "wb")  # noqa: SIM115 - closed below, the child keeps its copy
    cmd = [sys.executable, "-m", "dsonode", "testnet", "--nodes", str(n), "--no-samples"]
    cmd += ["--data-dir", str(tmp_path / "tn"), "--duration", "0"]
    proc = subprocess.Popen(
        cmd,
        stdout=out,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    out.close()
    deadline = time.monotonic() + 60
    pids: list[int] = []
    while time.monotonic() < deadline and len(pids) < n:
        pids = [int(p) for p in re.findall(r"started node\d+ \(pid (\d+)\)", out_path.read_text())]
        time.sleep(0.1)
    assert len(pids) == n, out_path.read_text()
    assert all(_alive(p) for p in pids)
    return proc, pids


def _wait_gone(pids: list[int], timeout: float) -> list[int]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        alive = [p for p in pids if _alive(p)]
        if not alive:
            return []
        time.sleep(0.1)
    return [p for p in pids if _alive(p)]


@pytest.mark.slow
def test_sigterm_stops_every_node(tmp_path):
    proc, pids = _start_and_wait_for_nodes(tmp_path, 2)
    try:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=60) == 130  # interrupted, cleanly
        assert _wait_gone(pids, 10) == []
        assert (tmp_path / "tn" / "node1" / "node.log").exists()  # --data-dir is kept
    finally:
        for p in [proc.pid, *pids]:
            if _alive(p):
                os.killpg(p, signal.SIGKILL)


@pytest.mark.slow
def test_a_killed_supervisor_leaves_no_orphan(tmp_path):
    proc, pids = _start_and_wait_for_nodes(tmp_path, 2)
    try:
        proc.kill()  # no clean-up code runs in the supervisor
        proc.wait(timeout=30)
        assert _wait_gone(pids, 30) == []  # PR_SET_PDEATHSIG: the kernel stopped them
    finally:
        for p in pids:
            if _alive(p):
                os.killpg(p, signal.SIGKILL)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--nodes", "3", "--byzantine", "1"], "quorum 3"),
        (["--nodes", "4", "--byzantine", "3"], "at most 2"),
        (["--nodes", "3", "--seed-file", "/nonexistent/seed.jsonl"], "--seed-file"),
    ],
)
def test_bad_requests_fail_before_any_process_starts(args, message, tmp_path):
    out = subprocess.run(
        [sys.executable, "-m", "dsonode", "testnet", "--data-dir", str(tmp_path / "tn"), *args],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 2 and message in out.stderr, out.stderr
    assert not (tmp_path / "tn").exists()  # nothing was created
