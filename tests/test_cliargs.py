"""dsonode.api.cliargs: the --data-dir/--socket/--timeout arguments every socket client command
shares, and how they resolve to a socket path (no node needed: pure argument handling)."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest

from dsonode.api.cliargs import add_node_args, node_client, node_socket
from dsonode.cli import build_parser


def _parser(**kw) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="t", exit_on_error=False)
    add_node_args(p, **kw)
    return p


def test_socket_resolution_order(tmp_path, monkeypatch):
    monkeypatch.setenv("DSONODE_DATA_DIR", str(tmp_path / "env"))
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    p = _parser(timeout=5.0)
    assert node_socket(p.parse_args([])) == tmp_path / "env" / "dsonode.sock"
    args = p.parse_args(["--data-dir", str(tmp_path / "d")])
    assert node_socket(args) == tmp_path / "d" / "dsonode.sock"
    args = p.parse_args(["--data-dir", str(tmp_path / "d"), "--socket", "~/x.sock"])
    assert node_socket(args) == tmp_path / "home" / "x.sock"  # --socket wins, ~ expanded
    client = node_client(args)
    assert client.socket_path == tmp_path / "home" / "x.sock" and client.timeout == 5.0


def test_timeout_bounds_and_default_in_help():
    p = _parser(timeout=120.0, timeout_max=3600, timeout_help="seconds per call")
    assert p.parse_args([]).timeout == 120.0
    assert p.parse_args(["--timeout", "3600"]).timeout == 3600.0
    for bad in ("0", "-1", "3601", "nan", "inf", "soon"):
        with pytest.raises(argparse.ArgumentError, match="--timeout"):
            p.parse_args(["--timeout", bad])
    assert "seconds per call (default 120)" in " ".join(p.format_help().split())
    assert isinstance(p.parse_args(["--socket", "s"]).socket, Path)


@pytest.mark.parametrize(
    ("command", "timeout"),
    [("search q", 60.0), ("stats", 60.0), ("status", 30.0), ("mcp", 120.0), ("ingest f", 600.0)],
)
def test_every_client_command_uses_the_shared_arguments(command, timeout, tmp_path):
    args = build_parser().parse_args([*command.split(), "--data-dir", str(tmp_path)])
    assert args.timeout == timeout
    assert node_socket(args) == tmp_path / "dsonode.sock"
