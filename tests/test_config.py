"""The node configuration: TOML + environment overrides, errors that name their key, `init`."""

from __future__ import annotations

import os
import stat
import tomllib
from pathlib import Path

import pytest

from dsonode.cli import main
from dsonode.config import SPEC, ConfigError, config_from_mapping, load_config, render_template
from dsonode.config.cli import peer_id_of_key, seeded_testnet_key
from dsonode.core.peerinfo import parse_multiaddr
from dsonode.identity import load_key

PEER = peer_id_of_key(seeded_testnet_key("test-peer"))
GOOD_PEER_ADDR = f"/ip4/127.0.0.2/tcp/4002/p2p/{PEER}"


def load(data: dict, tmp_path: Path, env: dict | None = None):
    return config_from_mapping(data, source=tmp_path / "dsonode.toml", env=env or {})


def error_of(data: dict, tmp_path: Path, env: dict | None = None) -> ConfigError:
    with pytest.raises(ConfigError) as exc:
        load(data, tmp_path, env)
    return exc.value


# ---------------------------------------------------------------------------------------
# Defaults and the template


def test_defaults_are_the_spec_defaults(tmp_path):
    cfg = load({}, tmp_path)
    assert cfg.node.data_dir == tmp_path  # "" = the config file's directory
    assert cfg.api.socket == tmp_path / "dsonode.sock"
    assert cfg.net.listen == "/ip4/127.0.0.1/tcp/4001" and cfg.net.bootstrap == ()
    assert cfg.net.allow_non_loopback is False
    assert (cfg.consensus.method, cfg.consensus.quorum, cfg.consensus.committee) == ("median", 3, 7)
    assert cfg.testnet.attack == "none" and cfg.testnet.enabled is False
    assert (cfg.metrics.host, cfg.metrics.port, cfg.metrics.enabled) == ("127.0.0.1", 9464, False)
    assert cfg.gateway.token is None and cfg.env_overrides == ()
    table = cfg.to_toml_dict()
    for s in SPEC:
        if s.kind not in ("path",) and s.name != "gateway.token":
            assert table[s.section][s.key] == s.default, s.name


def test_defaults_match_the_classes_that_consume_them(tmp_path):
    """The runtime classes take their defaults from the one declaration (settings.SPEC):
    the loaded defaults and a class built with no arguments agree."""
    from dsonode.core.aggregate import METHODS, WEIGHTED_METHODS
    from dsonode.gateway.config import GatewayConfig
    from dsonode.net.daemon import DaemonConfig
    from dsonode.net.gossip import GossipConfig
    from dsonode.node import NodeConfig, daemon_config
    from dsonode.node.node import gossip_config
    from dsonode.node.node import node_config as node_config_of

    cfg = load({"net": {"listen": "/ip4/127.0.0.1/tcp/0"}}, tmp_path)
    assert gossip_config(cfg) == GossipConfig()
    node_config = node_config_of(cfg)
    assert daemon_config(node_config) == DaemonConfig(listen="/ip4/127.0.0.1/tcp/0")
    plain = NodeConfig(data_dir=tmp_path)
    for name in (
        "data_dir",
        "encoder",
        "head",
        "device",
        "threads",
        "max_connections",
        "idle_timeout",
        "quorum",
        "cpu_threads",
        "query_runtime",
    ):
        assert getattr(node_config, name) == getattr(plain, name), name
    if hasattr(plain, "listen"):  # the network fields of NodeConfig, once it has them
        assert node_config.listen == cfg.net.listen and node_config.peers == ()
        assert node_config.byzantine_attack is None
        off = node_config_of(load({"net": {"enabled": False}}, tmp_path))
        assert off.listen is None and off.peers == ()
    assert cfg.gateway_config() == GatewayConfig()
    from dsonode.extract.config import ExtractConfig

    assert node_config.extract == ExtractConfig()
    from dsonode.config import settings as loader

    assert set(loader.CONSENSUS_METHODS) <= set(METHODS)
    assert set(loader.WEIGHTED_METHODS) <= set(WEIGHTED_METHODS)
    from dsonode.embed import runtime

    assert loader.QUERY_RUNTIMES == runtime.QUERY_RUNTIMES


def test_the_written_template_loads_back_to_the_defaults(tmp_path):
    path = tmp_path / "dsonode.toml"
    text = render_template()
    path.write_text(text)
    assert load_config(path, env={}) == load({}, tmp_path)
    # every setting is written and documented with its default
    for s in SPEC:
        assert f"\n{s.key} = " in text, s.name
        assert f"# {s.doc} (default: " in text, s.name


def test_template_overrides_are_written(tmp_path):
    path = tmp_path / "dsonode.toml"
    path.write_text(
        render_template(
            {"net.listen": "/ip4/127.0.0.3/tcp/4003", "net.bootstrap": [GOOD_PEER_ADDR]}
        )
    )
    cfg = load_config(path, env={})
    assert cfg.net.listen == "/ip4/127.0.0.3/tcp/4003"
    assert cfg.net.bootstrap == (GOOD_PEER_ADDR,)
    assert cfg.bootstrap_addrs()[0] == parse_multiaddr(GOOD_PEER_ADDR, require_peer_id=True)


def test_relative_paths_resolve_against_the_config_file(tmp_path, monkeypatch):
    monkeypatch.chdir("/")
    cfg = load(
        {"node": {"data_dir": "d", "head": "h/head.safetensors"}, "api": {"socket": "../s.sock"}},
        tmp_path,
    )
    assert cfg.node.data_dir == tmp_path / "d"
    assert cfg.node.head == tmp_path / "h/head.safetensors"
    assert cfg.api.socket == tmp_path.parent / "s.sock"


# ---------------------------------------------------------------------------------------
# Every error names its key


def _wrong_type(kind: str):
    return {
        "bool": "yes",
        "str": 5,
        "choice": 5,
        "path": 5,
        "multiaddr": 5,
        "int": "5",
        "float": "5",
        "committee": "some",
        "peers": "x",
        "peer_ids": "x",
        "weights": [1],
    }[kind]


@pytest.mark.parametrize("setting", SPEC, ids=lambda s: s.name)
def test_a_wrong_type_names_the_key(setting, tmp_path):
    err = error_of({setting.section: {setting.key: _wrong_type(setting.kind)}}, tmp_path)
    assert str(err).startswith(f"{setting.name}: "), str(err)
    assert err.key == setting.name


@pytest.mark.parametrize(
    "setting", [s for s in SPEC if s.hi is not None and s.kind != "weights"], ids=lambda s: s.name
)
def test_out_of_range_numbers_name_the_key(setting, tmp_path):
    too_big = int(setting.hi) + 1 if setting.kind in ("int", "committee") else setting.hi * 2 + 1
    err = error_of({setting.section: {setting.key: too_big}}, tmp_path)
    assert str(err).startswith(f"{setting.name}: ") and "within" in str(err), str(err)


@pytest.mark.parametrize(
    ("data", "key", "words"),
    [
        ({"net": {"listen": "127.0.0.1:4001"}}, "net.listen", "not a usable multiaddr"),
        ({"net": {"listen": "/ip4/10.1.2.3/tcp/4001"}}, "net.listen", "not a loopback"),
        ({"net": {"listen": "/ip4/0.0.0.0/tcp/1"}}, "net.listen", "allow_non_loopback"),
        ({"net": {"bootstrap": ["/ip4/127.0.0.1/tcp/1"]}}, "net.bootstrap[0]", "/p2p/"),
        ({"net": {"bootstrap": [GOOD_PEER_ADDR, GOOD_PEER_ADDR]}}, "net.bootstrap", "twice"),
        ({"net": {"gossip_degree": 9}}, "net.gossip_degree", "degree_high"),
        ({"net": {"redial_initial_s": 60.0}}, "net.redial_initial_s", "redial_max_s"),
        ({"net": {"batch_max_bytes": 65000}}, "net.batch_max_bytes", "envelope"),
        ({"net": {"lisen": "x"}}, "net.lisen", "did you mean 'listen'"),
        ({"nett": {}}, "nett", "did you mean 'net'"),
        ({"net": 5}, "net", "must be a table"),
        ({"node": {"log_format": "jsn"}}, "node.log_format", "did you mean 'json'"),
        ({"node": {"device": "tpu"}}, "node.device", "cuda"),
        ({"consensus": {"method": "mean"}}, "consensus.method", "one of"),
        ({"consensus": {"quorum": 9, "committee": 5}}, "consensus.quorum", "never be reached"),
        ({"consensus": {"weights": {"nobody": 1.0}}}, "consensus.weights.nobody", "peer id"),
        ({"consensus": {"weights": {PEER: 0}}}, f"consensus.weights.{PEER}", "(0, 1e6]"),
        (
            {"consensus": {"method": "trimmed_mean", "weights": {PEER: 2.0}}},
            "consensus.weights",
            "weights need",
        ),
        ({"api": {"socket": "/" + "s" * 200}}, "api.socket", "longer than 107"),
        ({"metrics": {"listen": "0.0.0.0:9464"}}, "metrics.listen", "loopback"),
        ({"metrics": {"listen": "9464"}}, "metrics.listen", "look like"),
        ({"gateway": {"listen": "0.0.0.0:8080"}}, "gateway.listen", "without a token"),
        ({"gateway": {"token": "short"}}, "gateway.token", "characters"),
        ({"testnet": {"attack": "sign_flip"}}, "testnet.attack", "testnet.enabled = true"),
        ({"extract": {"endpoint": "127.0.0.1:8000/v1"}}, "extract.endpoint", "http(s)://"),
        ({"extract": {"backend": "gpt"}}, "extract.backend", "one of"),
        ({"testnet": {"attack": "flip", "enabled": True}}, "testnet.attack", "sign_flip"),
    ],
)
def test_bad_settings_name_their_key(data, key, words, tmp_path, monkeypatch):
    monkeypatch.delenv("DSONODE_GATEWAY_TOKEN", raising=False)
    err = error_of(data, tmp_path)
    assert str(err).startswith(f"{key}: "), str(err)
    assert words in str(err), str(err)


def test_good_non_default_settings_load(tmp_path):
    cfg = load(
        {
            "net": {
                "listen": "/ip4/0.0.0.0/tcp/4001",
                "allow_non_loopback": True,
                "bootstrap": ["/ip4/172.28.0.10/tcp/4001/p2p/" + PEER],
            },
            "consensus": {"committee": "all", "weights": {PEER: 2.5}, "method": "geometric_median"},
            "testnet": {"enabled": True, "attack": "alie", "attack_scale": 2.0},
            "gateway": {"listen": "0.0.0.0:8080", "token": "t" * 20},
        },
        tmp_path,
    )
    assert cfg.consensus.committee is None and cfg.consensus.weights == {PEER: 2.5}
    assert cfg.testnet.attack == "alie" and cfg.byzantine_attack == "alie"
    assert load({"testnet": {"enabled": True}}, tmp_path).byzantine_attack is None
    assert cfg.net.allow_non_loopback is True
    assert cfg.gateway_config().host == "0.0.0.0"
    assert cfg.to_toml_dict()["gateway"]["token"] == "<set>"  # never printed


def test_extract_section_reaches_the_node_and_never_holds_the_key(tmp_path):
    from dsonode.node.node import extract_config

    data = {"extract": {"backend": "llm", "endpoint": "http://127.0.0.1:8000/v1", "model": "m"}}
    cfg = load(data, tmp_path, env={"DSONODE_EXTRACT_PER_GROUP": "3"})
    ex = extract_config(cfg)
    assert (ex.backend, ex.endpoint, ex.model, ex.per_group) == (
        "llm",
        data["extract"]["endpoint"],
        "m",
        3,
    )
    assert not any("key" in s.key for s in SPEC if s.section == "extract")
    # a key in the file is refused as an unknown setting: it comes from the environment only
    assert str(error_of({"extract": {"api_key": "x"}}, tmp_path)).startswith("extract.api_key")


def test_unreadable_and_invalid_files_are_named(tmp_path):
    with pytest.raises(ConfigError, match="cannot read"):
        load_config(tmp_path / "missing.toml", env={})
    bad = tmp_path / "bad.toml"
    bad.write_text("[net\nlisten = 1\n")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_config(bad, env={})
    big = tmp_path / "big.toml"
    big.write_text("# " + "x" * 300_000 + "\n")
    with pytest.raises(ConfigError, match="larger than"):
        load_config(big, env={})


# ---------------------------------------------------------------------------------------
# Environment overrides


def test_environment_overrides_the_file(tmp_path):
    env = {
        "DSONODE_NET_LISTEN": "/ip4/0.0.0.0/tcp/5000",
        "DSONODE_NET_ALLOW_NON_LOOPBACK": "true",
        "DSONODE_NET_BOOTSTRAP": f"{GOOD_PEER_ADDR}, /ip4/127.0.0.3/tcp/1/p2p/{PEER}",
        "DSONODE_CONSENSUS_COMMITTEE": "all",
        "DSONODE_CONSENSUS_QUORUM": "2",
        "DSONODE_NET_BATCH_LINGER_S": "0.5",
        "DSONODE_NODE_LOG_FORMAT": "json",
        "DSONODE_DATA_DIR": "/ignored",  # the client's variable, not a setting override
        "PATH": "/bin",
    }
    cfg = load(
        {"net": {"listen": "/ip4/127.0.0.1/tcp/1"}, "consensus": {"quorum": 5}}, tmp_path, env
    )
    assert cfg.net.listen == "/ip4/0.0.0.0/tcp/5000" and cfg.net.allow_non_loopback
    assert len(cfg.net.bootstrap) == 2
    assert cfg.consensus.committee is None and cfg.consensus.quorum == 2
    assert cfg.net.batch_linger_s == 0.5 and cfg.node.log_format == "json"
    assert cfg.node.data_dir == tmp_path
    assert "DSONODE_NET_LISTEN" in cfg.env_overrides and "DSONODE_DATA_DIR" not in cfg.env_overrides


@pytest.mark.parametrize(
    ("env", "words"),
    [
        ({"DSONODE_NET_LISTEN": "nope"}, "net.listen (from $DSONODE_NET_LISTEN): not a usable"),
        ({"DSONODE_NET_MAX_CONNECTIONS": "many"}, "net.max_connections (from $DSONODE_NET_MAX_"),
        ({"DSONODE_NET_MAX_CONNECTIONS": "0"}, "net.max_connections (from $DSONODE_NET_MAX_CO"),
        ({"DSONODE_METRICS_ENABLED": "maybe"}, "metrics.enabled (from $DSONODE_METRICS_ENABLED)"),
        ({"DSONODE_NET_LISTN": "x"}, "net.listn (from $DSONODE_NET_LISTN): unknown setting; did"),
        ({"DSONODE_CONSENSUS_WEIGHTS": "x"}, "consensus.weights (from $DSONODE_CONSENSUS_WEIGHTS)"),
        ({"DSONODE_TESTNET_ATTACK": "gaussian"}, "testnet.attack (from $DSONODE_TESTNET_ATTACK)"),
    ],
)
def test_bad_environment_values_name_key_and_variable(env, words, tmp_path):
    assert str(error_of({}, tmp_path, env)).startswith(words)


# ---------------------------------------------------------------------------------------
# dsonode init / dsonode config check (real files, the real command line)


def test_init_writes_a_private_key_and_config_and_refuses_to_overwrite(tmp_path, capsys):
    d = tmp_path / "node"
    assert (
        main(
            [
                "init",
                "--data-dir",
                str(d),
                "--listen",
                "/ip4/127.0.0.2/tcp/4002",
                "--peer",
                GOOD_PEER_ADDR,
            ]
        )
        == 0
    )
    out = capsys.readouterr().out
    key_path, config_path = d / "node.key", d / "dsonode.toml"
    assert stat.S_IMODE(key_path.stat().st_mode) == 0o600
    assert stat.S_IMODE(config_path.stat().st_mode) == 0o600
    key = load_key(key_path)
    assert f"peer id   {peer_id_of_key(key)}" in out
    cfg = load_config(config_path, env={})
    assert cfg.node.data_dir == d and cfg.net.listen == "/ip4/127.0.0.2/tcp/4002"
    assert cfg.net.bootstrap == (GOOD_PEER_ADDR,)

    key_bytes, config_text = key_path.read_bytes(), config_path.read_text()
    assert main(["init", "--data-dir", str(d)]) == 2
    assert "refusing to overwrite" in capsys.readouterr().err
    assert key_path.read_bytes() == key_bytes and config_path.read_text() == config_text

    assert main(["init", "--data-dir", str(d), "--force"]) == 0
    assert key_path.read_bytes() != key_bytes
    assert (d / "node.key.bak").read_bytes() == key_bytes  # the old identity is not lost
    assert stat.S_IMODE(key_path.stat().st_mode) == 0o600


def test_init_with_a_bad_address_writes_nothing(tmp_path, capsys):
    d = tmp_path / "node"
    assert main(["init", "--data-dir", str(d), "--listen", "/ip4/8.8.8.8/tcp/1"]) == 2
    assert capsys.readouterr().err.startswith("dsonode: error: net.listen: ")
    assert main(["init", "--data-dir", str(d), "--peer", "/ip4/127.0.0.1/tcp/1"]) == 2
    assert "net.bootstrap[0]: " in capsys.readouterr().err
    assert not (d / "node.key").exists() and not (d / "dsonode.toml").exists()


def test_testnet_keys_are_deterministic(tmp_path, capsys):
    for name in ("a", "b"):
        assert main(["init", "--data-dir", str(tmp_path / name), "--testnet-key-seed", "x"]) == 0
    a, b = (load_key(tmp_path / n / "node.key") for n in ("a", "b"))
    assert peer_id_of_key(a) == peer_id_of_key(b) == peer_id_of_key(seeded_testnet_key("x"))
    assert peer_id_of_key(seeded_testnet_key("y")) != peer_id_of_key(a)


def test_config_check_prints_the_effective_config(tmp_path, capsys, monkeypatch):
    path = tmp_path / "dsonode.toml"
    path.write_text(render_template())
    monkeypatch.setenv("DSONODE_NET_LISTEN", "/ip4/127.0.0.9/tcp/9")
    assert main(["config", "check", "--config", str(path)]) == 0
    out = capsys.readouterr().out
    assert "DSONODE_NET_LISTEN" in out
    effective = tomllib.loads(out)
    assert effective["net"]["listen"] == "/ip4/127.0.0.9/tcp/9"
    assert effective["node"]["data_dir"] == str(tmp_path)

    path.write_text('[net]\nlisten = "/ip4/127.0.0.1/tcp/99999"\n')
    assert main(["config", "check", "--config", str(path)]) == 2
    assert "net.listen (from $DSONODE_NET_LISTEN)" not in capsys.readouterr().err
    monkeypatch.delenv("DSONODE_NET_LISTEN")
    assert main(["config", "check", "--config", str(path)]) == 2
    assert capsys.readouterr().err.startswith("dsonode: error: net.listen: ")
    assert os.environ.get("DSONODE_NET_LISTEN") is None
