"""`dsonode run --config F`: file -> NodeConfig -> DaemonConfig, flags override, bad files stop
with the key's name (exit 2) before the model loads."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from dsonode.cli import build_parser
from dsonode.config.loader import ConfigError
from dsonode.library import ConsensusRules
from dsonode.library.library import LibraryError
from dsonode.net.daemon import DaemonConfig, DaemonError
from dsonode.node import NodeConfig, consensus_rules, daemon_config

PID = "12D3KooWD3eckifWpRn9wQpMG9R9hX3sD158z7EqHWmweQAJU5SA"
PEER = f"/ip4/127.0.0.3/tcp/4001/p2p/{PID}"

FULL = f"""
[node]
data_dir = "data"
log_level = "DEBUG"
device = "cpu"
[net]
listen = "/ip4/127.0.0.9/tcp/4111"
bootstrap = ["{PEER}"]
max_connections = 17
max_connections_per_peer = 3
dial_timeout_s = 2.5
redial_initial_s = 0.3
redial_max_s = 7.0
gossip_degree = 5
gossip_degree_high = 9
max_publish_per_s = 12.0
batch_max_items = 64
sync_interval_s = 15.0
[consensus]
method = "geometric_median"
quorum = 2
committee = 5
weights = {{ "{PID}" = 3.0 }}
[api]
max_connections = 9
[testnet]
enabled = true
attack = "alie"
attack_scale = 2.0
"""


def run_config(tmp_path: Path, *argv: str):
    from dsonode.node.cli import run_config as build

    args = build_parser().parse_args(["run", *argv])
    return build(args)


def test_config_file_reaches_the_daemon(tmp_path):
    cfg_path = tmp_path / "node.toml"
    cfg_path.write_text(FULL)
    nc = run_config(tmp_path, "--config", str(cfg_path))
    assert nc.data_dir == tmp_path / "data" and nc.device == "cpu" and nc.log_level == "DEBUG"
    assert nc.max_connections == 9 and nc.quorum == 2
    assert nc.socket == tmp_path / "data" / "dsonode.sock"
    dc = daemon_config(nc)
    assert dc.listen == "/ip4/127.0.0.9/tcp/4111" and dc.peers == (PEER,)
    host = dc.host_config()
    assert (host.max_connections, host.max_connections_per_peer, host.dial_timeout_s) == (
        17,
        3,
        2.5,
    )
    assert (dc.redial_initial_s, dc.redial_max_s, dc.sync_interval_s) == (0.3, 7.0, 15.0)
    assert dc.gossip.degree == 5 and dc.gossip.degree_high == 9
    assert dc.gossip.max_publish_per_s == 12.0 and dc.gossip.batch_max_items == 64
    rules = consensus_rules(nc)
    assert rules.method == "geometric_median" and rules.committee == 5 and rules.quorum == 2
    assert dict(nc.consensus_weights) == {PID: 3.0} and len(rules.weights) == 1
    assert nc.byzantine_attack == "alie" and nc.attack_scale == 2.0


def test_flags_override_the_file(tmp_path):
    cfg_path = tmp_path / "node.toml"
    cfg_path.write_text(FULL)
    other = f"/ip4/127.0.0.4/tcp/4002/p2p/{PID}"
    nc = run_config(
        tmp_path,
        "--config", str(cfg_path),
        "--data-dir", str(tmp_path / "elsewhere"),
        "--listen", "/ip4/127.0.0.8/tcp/4222",
        "--peer", other,
        "--byzantine-attack", "sign_flip",
        "--max-connections", "5",
        "--sync-interval", "3",
        "--log-level", "WARNING",
    )  # fmt: skip
    assert nc.data_dir == tmp_path / "elsewhere"
    assert nc.socket == tmp_path / "elsewhere" / "dsonode.sock"  # follows --data-dir
    assert nc.listen == "/ip4/127.0.0.8/tcp/4222" and nc.peers == (other,)
    assert nc.byzantine_attack == "sign_flip" and nc.max_connections == 5
    assert nc.sync_interval_s == 3 and nc.log_level == "WARNING"
    assert nc.committee == 5 and nc.consensus_method == "geometric_median"  # from the file
    nc = run_config(tmp_path, "--config", str(cfg_path), "--committee", "all")
    assert nc.committee is None and consensus_rules(nc).committee is None
    assert run_config(tmp_path, "--config", str(cfg_path), "--committee", "3").committee == 3
    with pytest.raises(SystemExit):
        run_config(tmp_path, "--committee", "0")


def test_without_config_the_flags_work_as_before(tmp_path):
    nc = run_config(tmp_path, "--data-dir", str(tmp_path), "--listen", "/ip4/127.0.0.2/tcp/1")
    assert nc.listen == "/ip4/127.0.0.2/tcp/1" and nc.peers == ()
    assert (nc.device, nc.max_connections, nc.idle_timeout) == ("auto", 64, 300.0)
    assert nc.allow_non_loopback is False
    assert run_config(tmp_path, "--data-dir", str(tmp_path)).listen is None
    with pytest.raises(ConfigError, match=r"net\.listen"):  # loopback only without the setting
        run_config(tmp_path, "--data-dir", str(tmp_path), "--listen", "/ip4/10.0.0.1/tcp/1")


def test_non_loopback_only_when_configured(tmp_path):
    with pytest.raises(DaemonError, match="--listen"):
        DaemonConfig(listen="/ip4/10.1.2.3/tcp/4001")
    with pytest.raises(DaemonError, match="--peer"):
        DaemonConfig(listen="/ip4/127.0.0.2/tcp/4001", peers=(f"/ip4/10.0.0.5/tcp/1/p2p/{PID}",))
    dc = DaemonConfig(
        listen="/ip4/10.1.2.3/tcp/4001",
        peers=(f"/ip4/10.0.0.5/tcp/1/p2p/{PID}",),
        allow_non_loopback=True,
    )
    assert dc.host_config().allow_non_loopback
    cfg_path = tmp_path / "n.toml"
    cfg_path.write_text('[net]\nlisten = "/ip4/0.0.0.0/tcp/4001"\nallow_non_loopback = true\n')
    nc = run_config(tmp_path, "--config", str(cfg_path))
    assert nc.allow_non_loopback and daemon_config(nc).listen == "/ip4/0.0.0.0/tcp/4001"


def test_bad_consensus_and_daemon_settings_are_refused():
    listen = "/ip4/127.0.0.2/tcp/4001"

    def rules(**kw):
        args = {"quorum": 3, "method": "median", "committee": 7, "weights": {}, **kw}
        return ConsensusRules.from_peer_weights(**args)

    with pytest.raises(LibraryError, match="method"):
        rules(method="mean")
    with pytest.raises(LibraryError, match="weights"):
        rules(method="trimmed_mean", weights={PID: 2.0})
    with pytest.raises(LibraryError, match="weights"):
        rules(weights={"nope": 2.0})
    with pytest.raises(LibraryError, match="committee"):
        rules(committee=0)
    with pytest.raises(LibraryError, match="quorum"):
        rules(quorum=0)
    with pytest.raises(DaemonError, match="sync_interval"):
        DaemonConfig(listen=listen, sync_interval_s=0.1)
    assert rules(committee=None).committee is None
    assert NodeConfig(data_dir=Path("x")).committee == 7


def test_a_bad_config_file_stops_run_naming_the_key(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text('[net]\nlisten = "/ip4/127.0.0.2/tcp/4001"\ngossip_degre = 4\n')
    with pytest.raises(ConfigError, match=r"net\.gossip_degre"):
        run_config(tmp_path, "--config", str(bad))
    bad.write_text("[consensus]\nmethod = 'mean'\n")
    proc = subprocess.run(
        [sys.executable, "-m", "dsonode", "run", "--config", str(bad)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2
    assert "consensus.method" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_one_directory_lock_for_node_and_store(tmp_path):
    """dsonode.dirlock is the one flock helper of the node and the store."""
    from dsonode.dirlock import release_lock, take_lock
    from dsonode.node import NodeError
    from dsonode.store.lmdb_store import Store, StoreError

    fd = take_lock(tmp_path / "x.lock", lambda: NodeError("busy"))
    with pytest.raises(NodeError, match="busy"):
        take_lock(tmp_path / "x.lock", lambda: NodeError("busy"))
    release_lock(fd)
    release_lock(take_lock(tmp_path / "x.lock", lambda: NodeError("busy")))
    with Store(tmp_path / "s"), pytest.raises(StoreError, match="in use"):
        Store(tmp_path / "s")
    Store(tmp_path / "s").close()  # released on close
