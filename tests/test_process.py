"""The process core of the harness (dsonode.testnet.process), on small real child processes
(no model): the whole process group ends, a dead node is a clear error with its log."""

from __future__ import annotations

import os
import sys
import time

import pytest

from dsonode.testnet.process import NodeProcess, NodeProcessError

# A child that starts a grandchild (in the child's process group), prints both pids, waits.
FAMILY = (
    "import os, subprocess, sys, time\n"
    "g = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(120)'])\n"
    "print('pids', os.getpid(), g.pid, flush=True)\n"
    "time.sleep(120)\n"
)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # a zombie is dead too (not reaped by its parent yet)
    with open(f"/proc/{pid}/stat") as f:
        return f.read().split(") ")[-1][0] != "Z"


def _family(node: NodeProcess) -> list[int]:
    """The child's and grandchild's pids, from the log (bounded wait)."""
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        for line in node.log_path.read_text().splitlines():
            if line.startswith("pids"):
                return [int(p) for p in line.split()[1:]]
        time.sleep(0.05)
    raise AssertionError(f"no pids line in {node.log_path}: {node.log_tail()}")


@pytest.mark.parametrize("end", ["stop", "kill"])
def test_stop_and_kill_end_the_whole_process_group(tmp_path, end):
    node = NodeProcess(tmp_path / "d")
    with pytest.raises(NodeProcessError, match="never started"):
        _ = node.pid
    assert node.stop() is None and node.kill() is None  # never started: nothing to end
    node.spawn([sys.executable, "-c", FAMILY])
    try:
        child, grandchild = _family(node)
        assert child == node.pid and _alive(grandchild)
        with pytest.raises(NodeProcessError, match="already running"):
            node.spawn()
        code = node.stop(grace=2.0) if end == "stop" else node.kill()
        assert code == (-15 if end == "stop" else -9)  # SIGTERM / SIGKILL ended it
        deadline = time.monotonic() + 10
        while _alive(grandchild) and time.monotonic() < deadline:  # reaped by init
            time.sleep(0.05)
        assert not _alive(grandchild), "the grandchild outlived its process group"
        assert not node.running()
    finally:
        node.kill()


def test_a_node_that_exits_is_an_error_with_its_log_tail(tmp_path):
    node = NodeProcess(tmp_path / "d", start_timeout=30)
    node.spawn([sys.executable, "-c", "import sys; print('boom: bad config'); sys.exit(3)"])
    try:
        with pytest.raises(NodeProcessError, match=r"exited with code 3(.|\n)*boom: bad config"):
            node.wait_ready()
    finally:
        node.kill()


def test_a_node_that_never_answers_times_out(tmp_path):
    node = NodeProcess(tmp_path / "d")
    node.spawn([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        t0 = time.monotonic()
        with pytest.raises(NodeProcessError, match=r"not ready after 1\.0 s"):
            node.wait_ready(timeout=1.0)
        assert time.monotonic() - t0 < 10
        assert node.running()  # wait_ready does not end it; start() would
    finally:
        assert node.stop(grace=2.0) == -15
