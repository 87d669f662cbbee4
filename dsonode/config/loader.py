"""The node's configuration: TOML file + `DSONODE_<SECTION>_<KEY>` environment overrides.

One table, `SPEC`, describes every setting once (section, key, kind, default, bounds, doc). The
loader, the environment overrides, `dsonode config check` and the commented template that
`dsonode init` writes are all driven by it, so they cannot drift apart.

Rules, all enforced before the node opens anything:
* every error names its key (`net.listen: not a multiaddr: ...`), or the environment
  variable it came from; unknown sections and keys are errors with a did-you-mean;
* numbers are bounded; multiaddrs are validated by `dsonode.net.peerinfo` (loopback only
  unless `net.allow_non_loopback = true`);
* relative paths are resolved against the directory of the config file; `node.data_dir = ""`
  means that directory (without a file: $DSONODE_DATA_DIR, else ~/.dsonode);
* a Byzantine attack (`testnet.attack`) is refused unless `testnet.enabled = true`.

This module imports no libp2p, trio or torch: `to_host_config()` and friends import the
classes they build lazily, and those classes validate the values once more.
"""

from __future__ import annotations

import difflib
import math
import os
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any

from dsonode.core.attacks import ATTACKS as _NODE_ATTACKS
from dsonode.core.errors import DsoError
from dsonode.net.peerinfo import PeerAddrError, parse_multiaddr, public_key_from_peer_id
from dsonode.node import SOCKET_NAME, default_data_dir

ENV_PREFIX = "DSONODE_"
CONFIG_FILE_NAME = "dsonode.toml"
MAX_CONFIG_BYTES = 256 * 1024
MAX_BOOTSTRAP_PEERS = 64
MAX_WEIGHTED_PEERS = 10_000
MAX_STR_CHARS = 4096
#: sun_path is 108 bytes on Linux, including the terminating NUL.
MAX_SOCKET_PATH_BYTES = 107

LOG_FORMATS = ("text", "json")
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")
# Mirrors dsonode.core.aggregate.METHODS minus "mean" (not robust: never a network's rule);
# tests/test_config.py checks they stay in step.
CONSENSUS_METHODS = ("median", "trimmed_mean", "geometric_median")
WEIGHTED_METHODS = ("median", "geometric_median")
#: "none" plus every attack of dsonode.core.attacks (what each does is described there).
ATTACKS = ("none", *_NODE_ATTACKS)


class ConfigError(DsoError, ValueError):
    """A setting is wrong; `key` is its dotted name (e.g. "net.listen")."""

    def __init__(self, key: str, message: str, source: str | None = None):
        self.key = key
        self.source = source
        where = f" (from ${source})" if source else ""
        super().__init__(f"{key}{where}: {message}")


# ----------------------------------------------------------------------------------------
# The specification of every setting


@dataclass(frozen=True)
class Setting:
    section: str
    key: str
    kind: str  # str | bool | int | float | choice | path | multiaddr | peers | committee | weights
    default: Any
    doc: str
    lo: float | None = None
    hi: float | None = None
    choices: tuple[str, ...] = ()

    @property
    def name(self) -> str:
        return f"{self.section}.{self.key}"

    @property
    def env(self) -> str:
        return f"{ENV_PREFIX}{self.section.upper()}_{self.key.upper()}"


def _s(section: str, key: str, kind: str, default: Any, doc: str, **kw: Any) -> Setting:
    return Setting(section, key, kind, default, doc, **kw)


SECTION_DOCS = {
    "node": "The node itself: where it keeps its data, how it logs, which model it runs.",
    "net": "libp2p (TCP, Noise, yamux) and GossipSub. Multiaddrs: /ip4|ip6/<ip>/tcp/<port>.",
    "consensus": "How the submissions for one experience become its consensus code.",
    "api": "The local JSON-RPC retrieval socket (Unix socket, mode 0600).",
    "gateway": "The HTTP gateway (`dsonode gateway`): OpenAI embeddings, Cohere/Jina rerank.",
    "metrics": "Prometheus metrics over HTTP.",
    "testnet": "Test networks only. A Byzantine node is an ordinary node with an attack set here.",
}

SPEC: tuple[Setting, ...] = (
    # [node]
    _s("node", "data_dir", "path", "", 'data directory; "" = the directory of this file'),
    _s("node", "log_format", "choice", "text", "log lines as text or JSON", choices=LOG_FORMATS),
    _s("node", "log_level", "choice", "INFO", "least severe level logged", choices=LOG_LEVELS),
    _s("node", "encoder", "path", "", 'local Hugging Face encoder folder; "" = packaged MiniLM'),
    _s("node", "head", "path", "", 'trained head (.safetensors); "" = the seeded default'),
    _s("node", "device", "str", "auto", "auto, cpu or cuda[:N]"),
    _s("node", "threads", "int", 0, "torch CPU threads; 0 = torch's default", lo=0, hi=256),
    _s("node", "cpu_threads", "int", 2, "worker threads for embedding/search/commits", lo=1, hi=64),
    # [net]
    _s("net", "enabled", "bool", True, "join the network (false: serve the local socket only)"),
    _s("net", "listen", "multiaddr", "/ip4/127.0.0.1/tcp/4001", "libp2p listen multiaddr"),
    _s("net", "bootstrap", "peers", [], "peers to keep connected: /ip4/.../tcp/N/p2p/<peer id>"),
    _s("net", "allow_non_loopback", "bool", False, "allow addresses beyond 127.0.0.0/8 and ::1"),
    _s("net", "max_connections", "int", 64, "open libp2p connections", lo=1, hi=10_000),
    _s("net", "max_connections_per_peer", "int", 2, "connections per peer", lo=1, hi=8),
    _s("net", "dial_timeout_s", "float", 5.0, "seconds per dial attempt", lo=0.1, hi=120),
    _s("net", "redial_initial_s", "float", 0.5, "first redial backoff", lo=0.01, hi=3600),
    _s("net", "redial_max_s", "float", 30.0, "longest redial backoff", lo=0.01, hi=3600),
    _s("net", "gossip_degree", "int", 4, "GossipSub mesh degree D", lo=1, hi=64),
    _s("net", "gossip_degree_low", "int", 2, "GossipSub D_low", lo=1, hi=64),
    _s("net", "gossip_degree_high", "int", 8, "GossipSub D_high", lo=1, hi=64),
    _s("net", "gossip_heartbeat_s", "int", 1, "GossipSub heartbeat (whole seconds)", lo=1, hi=60),
    _s("net", "batch_max_items", "int", 128, "items per gossip message", lo=1, hi=256),
    _s(
        "net",
        "batch_max_bytes",
        "int",
        63488,
        "bytes per gossip batch (<= 64 KiB minus envelope)",
        lo=256,
        hi=65536,
    ),
    _s("net", "batch_linger_s", "float", 0.02, "wait for a part-full batch", lo=0, hi=5),
    _s("net", "max_publish_per_s", "float", 10.0, "gossip messages published/s", lo=0.1, hi=1000),
    _s("net", "publish_burst", "int", 5, "burst of the publish pacer", lo=1, hi=1000),
    _s("net", "outbox_max_items", "int", 20_000, "items waiting to publish", lo=1, hi=1_000_000),
    _s(
        "net",
        "sync_interval_s",
        "float",
        60.0,
        "catch-up: pull from each connected peer this often (and on connecting)",
        lo=1,
        hi=86_400,
    ),
    # [consensus]
    _s("consensus", "method", "choice", "median", "robust estimator", choices=CONSENSUS_METHODS),
    _s("consensus", "quorum", "int", 3, "accepted submissions to confirm", lo=1, hi=1000),
    _s(
        "consensus",
        "committee",
        "committee",
        7,
        'expected submitters per experience (1..1000), or "all" (small networks)',
        lo=1,
        hi=1000,
    ),
    _s(
        "consensus",
        "weights",
        "weights",
        {},
        "per-peer weights, peer id = weight in (0, 1e6]; absent peers weigh 1 (median and "
        "geometric_median only)",
        lo=0,
        hi=1e6,
    ),
    # [api]
    _s("api", "socket", "path", "", 'socket path; "" = <data_dir>/dsonode.sock'),
    _s("api", "max_connections", "int", 64, "open socket connections", lo=1, hi=4096),
    _s("api", "idle_timeout_s", "float", 300.0, "close idle connections", lo=0.1, hi=86_400),
    _s("api", "feedback_weight", "float", 0.1, "feedback weight in ranking; 0 = off", lo=0, hi=1),
    # [gateway] (validated once more by dsonode.gateway.config.GatewayConfig)
    _s("gateway", "enabled", "bool", False, "serve the gateway alongside the node"),
    _s("gateway", "listen", "str", "127.0.0.1:8080", "HOST:PORT ([IPv6]:PORT)"),
    _s("gateway", "token", "str", "", 'bearer token; "" = $DSONODE_GATEWAY_TOKEN or none'),
    _s("gateway", "max_body_bytes", "int", 2 * 1024 * 1024, "request body", lo=1024, hi=2**26),
    _s("gateway", "request_timeout_s", "float", 60.0, "per request", lo=0.1, hi=3600),
    _s("gateway", "max_batch_texts", "int", 64, "texts per encoder batch", lo=1, hi=4096),
    _s("gateway", "max_wait_ms", "float", 2.0, "wait to fill a batch", lo=0, hi=1000),
    _s("gateway", "max_pending_texts", "int", 8192, "queued texts", lo=1, hi=1_000_000),
    # [metrics]
    _s("metrics", "enabled", "bool", False, "serve Prometheus metrics"),
    _s("metrics", "listen", "str", "127.0.0.1:9464", "HOST:PORT; loopback unless allowed below"),
    _s("metrics", "allow_non_loopback", "bool", False, "let metrics.listen be a non-loopback IP"),
    # [testnet]
    _s("testnet", "enabled", "bool", False, "this node is part of a test network"),
    _s("testnet", "attack", "choice", "none", "poison own submissions", choices=ATTACKS),
    _s("testnet", "attack_scale", "float", 1.0, "strength of the attack", lo=0, hi=100),
)

SETTINGS: dict[str, dict[str, Setting]] = {}
for _setting in SPEC:
    SETTINGS.setdefault(_setting.section, {})[_setting.key] = _setting
ENV_NAMES = {s.env: s for s in SPEC}


def _did_you_mean(word: str, options: list[str]) -> str:
    close = difflib.get_close_matches(word, options, n=1, cutoff=0.6)
    return f"; did you mean {close[0]!r}?" if close else f"; known: {', '.join(sorted(options))}"


# ----------------------------------------------------------------------------------------
# Typed, frozen model


@dataclass(frozen=True)
class NodeSection:
    data_dir: Path
    log_format: str = "text"
    log_level: str = "INFO"
    encoder: Path | None = None
    head: Path | None = None
    device: str = "auto"
    threads: int | None = None
    cpu_threads: int = 2


@dataclass(frozen=True)
class NetSection:
    enabled: bool = True
    listen: str = "/ip4/127.0.0.1/tcp/4001"
    bootstrap: tuple[str, ...] = ()
    allow_non_loopback: bool = False
    max_connections: int = 64
    max_connections_per_peer: int = 2
    dial_timeout_s: float = 5.0
    redial_initial_s: float = 0.5
    redial_max_s: float = 30.0
    gossip_degree: int = 4
    gossip_degree_low: int = 2
    gossip_degree_high: int = 8
    gossip_heartbeat_s: int = 1
    batch_max_items: int = 128
    batch_max_bytes: int = 63488
    batch_linger_s: float = 0.02
    max_publish_per_s: float = 10.0
    publish_burst: int = 5
    outbox_max_items: int = 20_000
    sync_interval_s: float = 60.0


@dataclass(frozen=True)
class ConsensusSection:
    method: str = "median"
    quorum: int = 3
    committee: int | None = 7  # None = "all"
    weights: Mapping[str, float] = field(default_factory=dict)


@dataclass(frozen=True)
class ApiSection:
    socket: Path
    max_connections: int = 64
    idle_timeout_s: float = 300.0
    feedback_weight: float = 0.1  # dsonode.core.feedback: similarity + w * damped median


@dataclass(frozen=True)
class GatewaySection:
    enabled: bool = False
    listen: str = "127.0.0.1:8080"
    token: str | None = None
    max_body_bytes: int = 2 * 1024 * 1024
    request_timeout_s: float = 60.0
    max_batch_texts: int = 64
    max_wait_ms: float = 2.0
    max_pending_texts: int = 8192


@dataclass(frozen=True)
class MetricsSection:
    enabled: bool = False
    host: str = "127.0.0.1"
    port: int = 9464
    allow_non_loopback: bool = False


@dataclass(frozen=True)
class TestnetSection:
    __test__ = False  # not a pytest test class despite the name
    enabled: bool = False
    attack: str = "none"
    attack_scale: float = 1.0


@dataclass(frozen=True)
class Config:
    node: NodeSection
    net: NetSection
    consensus: ConsensusSection
    api: ApiSection
    gateway: GatewaySection
    metrics: MetricsSection
    testnet: TestnetSection
    #: The file it came from (None: defaults and environment only).
    source: Path | None = None
    #: Environment variables that overrode a setting, e.g. ("DSONODE_NET_LISTEN",).
    env_overrides: tuple[str, ...] = ()

    # -- adapters to the classes that consume the settings (imported lazily: heavy) --

    def host_config(self) -> Any:
        from dsonode.net.host import HostConfig

        return HostConfig(
            listen=self.net.listen,
            max_connections=self.net.max_connections,
            max_connections_per_peer=self.net.max_connections_per_peer,
            dial_timeout_s=self.net.dial_timeout_s,
            allow_non_loopback=self.net.allow_non_loopback,
        )

    def gossip_config(self) -> Any:
        from dsonode.net.gossip import GossipConfig

        return GossipConfig(
            degree=self.net.gossip_degree,
            degree_low=self.net.gossip_degree_low,
            degree_high=self.net.gossip_degree_high,
            heartbeat_interval_s=self.net.gossip_heartbeat_s,
            batch_max_items=self.net.batch_max_items,
            batch_max_bytes=self.net.batch_max_bytes,
            batch_linger_s=self.net.batch_linger_s,
            max_publish_per_s=self.net.max_publish_per_s,
            publish_burst=self.net.publish_burst,
            outbox_max_items=self.net.outbox_max_items,
        )

    def bootstrap_addrs(self) -> list[Any]:
        """The bootstrap peers as `dsonode.net.peerinfo.PeerAddr` (what the dialer takes)."""
        return [
            parse_multiaddr(a, allow_non_loopback=self.net.allow_non_loopback, require_peer_id=True)
            for a in self.net.bootstrap
        ]

    def gateway_config(self) -> Any:
        from dsonode.gateway.config import GatewayConfig

        return GatewayConfig.from_mapping(_gateway_mapping(self.gateway))

    @property
    def byzantine_attack(self) -> str | None:
        """The attack this node runs: only on a testnet (the loader refuses it otherwise)."""
        if not self.testnet.enabled or self.testnet.attack == "none":
            return None
        return self.testnet.attack

    def node_config(self) -> Any:
        """A `dsonode.node.NodeConfig`; its network fields are filled when that class has them."""
        import dataclasses

        from dsonode.node import NodeConfig

        network = {
            "listen": self.net.listen if self.net.enabled else None,
            "peers": self.net.bootstrap if self.net.enabled else (),
            "byzantine_attack": self.byzantine_attack,
            "attack_scale": self.testnet.attack_scale,
            "allow_non_loopback": self.net.allow_non_loopback,
            "p2p_max_connections": self.net.max_connections,
            "p2p_max_connections_per_peer": self.net.max_connections_per_peer,
            "dial_timeout_s": self.net.dial_timeout_s,
            "redial_initial_s": self.net.redial_initial_s,
            "redial_max_s": self.net.redial_max_s,
            "gossip": self.gossip_config(),
            "consensus_method": self.consensus.method,
            "consensus_weights": self.consensus.weights,
            "committee": self.consensus.committee,
            "sync_interval_s": self.net.sync_interval_s,
            "socket": self.api.socket,
            "gateway": self.gateway_config() if self.gateway.enabled else None,
        }
        names = {f.name for f in dataclasses.fields(NodeConfig)}
        return NodeConfig(
            **{k: v for k, v in network.items() if k in names},
            data_dir=self.node.data_dir,
            encoder=None if self.node.encoder is None else str(self.node.encoder),
            head=None if self.node.head is None else str(self.node.head),
            device=self.node.device,
            threads=self.node.threads,
            max_connections=self.api.max_connections,
            idle_timeout=self.api.idle_timeout_s,
            feedback_weight=self.api.feedback_weight,
            quorum=self.consensus.quorum,
            cpu_threads=self.node.cpu_threads,
            metrics_listen=(
                _join_hostport(self.metrics.host, self.metrics.port)
                if self.metrics.enabled
                else None
            ),
            metrics_allow_non_loopback=self.metrics.allow_non_loopback,
            log_format=self.node.log_format,
            log_level=self.node.log_level,
        )

    def to_toml_dict(self) -> dict[str, dict[str, Any]]:
        """The effective settings as plain TOML values (paths absolute, secrets masked)."""
        out: dict[str, dict[str, Any]] = {}
        for section, settings in SETTINGS.items():
            obj = getattr(self, section)
            table: dict[str, Any] = {}
            for key in settings:
                if section == "metrics" and key == "listen":
                    value: Any = _join_hostport(obj.host, obj.port)
                else:
                    value = getattr(obj, key)
                if section == "gateway" and key == "token" and value:
                    value = "<set>"
                elif section == "consensus" and key == "committee":
                    value = "all" if value is None else value
                elif isinstance(value, Path):
                    value = str(value)
                elif value is None:  # unset: threads = 0 (torch's default), paths/token = ""
                    value = 0 if key == "threads" else ""
                elif isinstance(value, tuple):
                    value = list(value)
                elif isinstance(value, Mapping):
                    value = dict(value)
                table[key] = value
            out[section] = table
        return out


def _join_hostport(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _gateway_mapping(g: GatewaySection) -> dict[str, Any]:
    data: dict[str, Any] = {
        "listen": g.listen,
        "max_body_bytes": g.max_body_bytes,
        "request_timeout_s": g.request_timeout_s,
        "max_batch_texts": g.max_batch_texts,
        "max_wait_ms": g.max_wait_ms,
        "max_pending_texts": g.max_pending_texts,
    }
    if g.token:
        data["token"] = g.token
    return data


# ----------------------------------------------------------------------------------------
# Parsing one value (from TOML, or from an environment string)


def _check_number(s: Setting, value: float) -> None:
    if isinstance(value, float) and not math.isfinite(value):
        raise ConfigError(s.name, f"must be a finite number, got {value}")
    if (s.lo is not None and value < s.lo) or (s.hi is not None and value > s.hi):
        raise ConfigError(s.name, f"must be within {s.lo:g}..{s.hi:g}, got {value}")


def _parse_value(s: Setting, raw: Any) -> Any:
    """A TOML value -> the typed value of setting `s` (raises ConfigError naming it)."""
    kind = s.kind
    if kind == "bool":
        if not isinstance(raw, bool):
            raise ConfigError(s.name, f"must be true or false, got {raw!r}")
        return raw
    if kind == "int":
        if isinstance(raw, bool) or not isinstance(raw, int):
            raise ConfigError(s.name, f"must be an integer, got {raw!r}")
        _check_number(s, raw)
        return raw
    if kind == "float":
        if isinstance(raw, bool) or not isinstance(raw, int | float):
            raise ConfigError(s.name, f"must be a number, got {raw!r}")
        _check_number(s, float(raw))
        return float(raw)
    if kind == "committee":
        if raw == "all":
            return None
        if isinstance(raw, bool) or not isinstance(raw, int):
            raise ConfigError(s.name, f'must be an integer or "all", got {raw!r}')
        _check_number(s, raw)
        return raw
    if kind == "weights":
        return _parse_weights(s, raw)
    if kind == "peers":
        if not isinstance(raw, list) or not all(isinstance(a, str) for a in raw):
            raise ConfigError(s.name, f"must be a list of multiaddr strings, got {raw!r}")
        if len(raw) > MAX_BOOTSTRAP_PEERS:
            raise ConfigError(s.name, f"at most {MAX_BOOTSTRAP_PEERS} peers, got {len(raw)}")
        for i, addr in enumerate(raw):  # syntax now; the loopback rule in _finish
            try:
                parse_multiaddr(addr, allow_non_loopback=True, require_peer_id=True)
            except PeerAddrError as exc:
                raise ConfigError(f"{s.name}[{i}]", f"not a usable peer multiaddr: {exc}") from None
        return tuple(raw)
    # the rest are strings
    if not isinstance(raw, str):
        raise ConfigError(s.name, f"must be a string, got {raw!r}")
    if len(raw) > MAX_STR_CHARS or "\0" in raw:
        raise ConfigError(s.name, f"must be at most {MAX_STR_CHARS} characters without NUL")
    if kind == "multiaddr":  # syntax now; the loopback rule (net.allow_non_loopback) in _finish
        try:
            parse_multiaddr(raw, allow_non_loopback=True, allow_port_zero=True)
        except PeerAddrError as exc:
            raise ConfigError(s.name, f"not a usable multiaddr: {exc}") from None
    if kind == "choice" and raw not in s.choices:
        raise ConfigError(
            s.name,
            f"must be one of {', '.join(s.choices)}, got {raw!r}{_did_you_mean(raw, list(s.choices))}",
        )
    return raw


def _parse_weights(s: Setting, raw: Any) -> dict[str, float]:
    if not isinstance(raw, Mapping):
        raise ConfigError(s.name, "must be a table of peer id = weight")
    if len(raw) > MAX_WEIGHTED_PEERS:
        raise ConfigError(s.name, f"at most {MAX_WEIGHTED_PEERS} peers")
    out: dict[str, float] = {}
    for peer, weight in raw.items():
        try:
            public_key_from_peer_id(peer)
        except PeerAddrError as exc:
            raise ConfigError(f"{s.name}.{peer[:60]}", f"not an Ed25519 peer id: {exc}") from None
        if isinstance(weight, bool) or not isinstance(weight, int | float):
            raise ConfigError(f"{s.name}.{peer}", f"weight must be a number, got {weight!r}")
        if not (0 < weight <= 1e6) or math.isnan(weight):
            raise ConfigError(f"{s.name}.{peer}", f"weight must be in (0, 1e6], got {weight}")
        out[peer] = float(weight)
    return out


def _parse_env(s: Setting, text: str) -> Any:
    """An environment string -> the TOML value it stands for (then parsed like the file's)."""
    if s.kind == "bool":
        low = text.strip().lower()
        if low in ("1", "true", "yes", "on"):
            return True
        if low in ("0", "false", "no", "off"):
            return False
        raise ConfigError(s.name, f"must be true or false, got {text!r}", s.env)
    if s.kind in ("int", "float") or (s.kind == "committee" and text.strip() != "all"):
        try:
            return int(text) if s.kind != "float" else float(text)
        except ValueError:
            raise ConfigError(s.name, f"not a number: {text!r}", s.env) from None
    if s.kind == "committee":
        return "all"
    if s.kind == "peers":  # comma-separated; empty = none
        return [a.strip() for a in text.split(",") if a.strip()]
    if s.kind == "weights":
        raise ConfigError(s.name, "cannot be set from the environment; use the file", s.env)
    return text


# ----------------------------------------------------------------------------------------
# Loading


def read_toml(path: Path) -> dict[str, Any]:
    """Read a config file (bounded in size) into a dict; errors name the file."""
    try:
        with open(path, "rb") as f:
            data = f.read(MAX_CONFIG_BYTES + 1)
    except OSError as exc:
        raise ConfigError("config", f"cannot read {path}: {exc.strerror}") from None
    if len(data) > MAX_CONFIG_BYTES:
        raise ConfigError("config", f"{path} is larger than {MAX_CONFIG_BYTES} bytes")
    try:
        return tomllib.loads(data.decode("utf-8"))
    except UnicodeDecodeError:
        raise ConfigError("config", f"{path} is not UTF-8") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError("config", f"{path} is not valid TOML: {exc}") from None


def load_config(
    path: str | os.PathLike[str] | None = None,
    env: Mapping[str, str] | None = None,
) -> Config:
    """Load `path` (None: defaults only), apply `env` (default: os.environ), validate."""
    source = Path(path).expanduser().resolve() if path is not None else None
    data = read_toml(source) if source is not None else {}
    return config_from_mapping(data, source=source, env=os.environ if env is None else env)


def config_from_mapping(
    data: Mapping[str, Any],
    *,
    source: Path | None = None,
    env: Mapping[str, str] | None = None,
) -> Config:
    """Validate a parsed TOML document (plus environment overrides) into a `Config`."""
    values: dict[str, dict[str, Any]] = {
        sec: {k: s.default for k, s in keys.items()} for sec, keys in SETTINGS.items()
    }
    for section, table in data.items():
        if section not in SETTINGS:
            raise ConfigError(section, "unknown section" + _did_you_mean(section, list(SETTINGS)))
        if not isinstance(table, Mapping):
            raise ConfigError(section, "must be a table ([section])")
        for key, raw in table.items():
            settings = SETTINGS[section]
            if key not in settings:
                raise ConfigError(
                    f"{section}.{key}", "unknown setting" + _did_you_mean(key, list(settings))
                )
            values[section][key] = _parse_value(settings[key], raw)

    overridden: list[str] = []
    for name, text in sorted((env or {}).items()):
        if not name.startswith(ENV_PREFIX):
            continue
        s = ENV_NAMES.get(name)
        if s is None:
            rest = name[len(ENV_PREFIX) :].lower()
            section = next((sec for sec in SETTINGS if rest.startswith(sec + "_")), None)
            if section is None:
                continue  # e.g. DSONODE_DATA_DIR: not a setting override
            key = rest[len(section) + 1 :]
            raise ConfigError(
                f"{section}.{key}",
                "unknown setting" + _did_you_mean(key, list(SETTINGS[section])),
                name,
            )
        if len(text) > MAX_STR_CHARS:
            raise ConfigError(s.name, f"longer than {MAX_STR_CHARS} characters", name)
        try:
            values[s.section][s.key] = _parse_value(s, _parse_env(s, text))
        except ConfigError as exc:
            if exc.source:
                raise
            raise ConfigError(exc.key, str(exc).split(": ", 1)[1], name) from None
        overridden.append(name)
    return _finish(values, source, tuple(overridden))


def _env_of(key: str, overridden: tuple[str, ...]) -> str | None:
    section, _, name = key.partition(".")
    s = SETTINGS.get(section, {}).get(name.split("[")[0].split(".")[0])
    return s.env if s is not None and s.env in overridden else None


def _finish(
    v: dict[str, dict[str, Any]], source: Path | None, overridden: tuple[str, ...]
) -> Config:
    """Cross-field checks and path resolution, on parsed values."""

    def fail(key: str, message: str) -> ConfigError:
        return ConfigError(key, message, _env_of(key, overridden))

    base = source.parent if source is not None else None

    def resolve(key: str, text: str) -> Path | None:
        if not text:
            return None
        p = Path(text).expanduser()
        if not p.is_absolute():
            p = (base or Path.cwd()) / p
        return Path(os.path.normpath(p))

    n = v["node"]
    data_dir = resolve("node.data_dir", n["data_dir"]) or base or default_data_dir()
    node = NodeSection(
        data_dir=data_dir,
        log_format=n["log_format"],
        log_level=n["log_level"],
        encoder=resolve("node.encoder", n["encoder"]),
        head=resolve("node.head", n["head"]),
        device=n["device"],
        threads=n["threads"] or None,
        cpu_threads=n["cpu_threads"],
    )
    if not (node.device in ("auto", "cpu", "cuda") or node.device.startswith("cuda:")):
        raise fail("node.device", f"must be auto, cpu or cuda[:N], got {node.device!r}")

    t = v["net"]
    allow = t["allow_non_loopback"]
    try:
        parse_multiaddr(t["listen"], allow_non_loopback=allow, allow_port_zero=True)
    except PeerAddrError as exc:
        raise fail("net.listen", f"not a usable multiaddr: {exc}") from None
    for i, addr in enumerate(t["bootstrap"]):
        try:
            parse_multiaddr(addr, allow_non_loopback=allow, require_peer_id=True)
        except PeerAddrError as exc:
            raise fail(f"net.bootstrap[{i}]", f"not a usable peer multiaddr: {exc}") from None
    if len(set(t["bootstrap"])) != len(t["bootstrap"]):
        raise fail("net.bootstrap", "lists the same peer twice")
    if not t["gossip_degree_low"] <= t["gossip_degree"] <= t["gossip_degree_high"]:
        raise fail(
            "net.gossip_degree", "need gossip_degree_low <= gossip_degree <= gossip_degree_high"
        )
    if t["redial_initial_s"] > t["redial_max_s"]:
        raise fail("net.redial_initial_s", "must not exceed net.redial_max_s")
    if t["batch_max_bytes"] > 65536 - 2048:
        raise fail(
            "net.batch_max_bytes", "must leave 2048 bytes of a 64 KiB message for the envelope"
        )
    net = NetSection(**{k: tuple(x) if k == "bootstrap" else x for k, x in t.items()})

    c = v["consensus"]
    if c["weights"] and c["method"] not in WEIGHTED_METHODS:
        raise fail("consensus.weights", f"weights need method {' or '.join(WEIGHTED_METHODS)}")
    if c["committee"] is not None and c["quorum"] > c["committee"]:
        raise fail(
            "consensus.quorum",
            f"{c['quorum']} can never be reached by a committee of {c['committee']}",
        )
    consensus = ConsensusSection(**{**c, "weights": MappingProxyType(dict(c["weights"]))})

    a = v["api"]
    sock = resolve("api.socket", a["socket"]) or data_dir / SOCKET_NAME
    if len(os.fsencode(sock)) > MAX_SOCKET_PATH_BYTES:
        raise fail(
            "api.socket",
            f"{sock} is longer than {MAX_SOCKET_PATH_BYTES} bytes (a Unix socket limit)",
        )
    api = ApiSection(
        socket=sock,
        max_connections=a["max_connections"],
        idle_timeout_s=a["idle_timeout_s"],
        feedback_weight=a["feedback_weight"],
    )

    g = dict(v["gateway"])
    g["token"] = g["token"] or None
    gateway = GatewaySection(**g)
    _check_gateway(gateway, fail)

    m = v["metrics"]
    metrics = MetricsSection(
        m["enabled"],
        *_parse_metrics_listen(m["listen"], m["allow_non_loopback"], fail),
        m["allow_non_loopback"],
    )

    tn = v["testnet"]
    if tn["attack"] != "none" and not tn["enabled"]:
        raise fail(
            "testnet.attack", "a Byzantine attack is only honoured with testnet.enabled = true"
        )
    testnet = TestnetSection(**tn)
    return Config(node, net, consensus, api, gateway, metrics, testnet, source, overridden)


def _parse_metrics_listen(
    text: str, allow_non_loopback: bool, fail: Callable[[str, str], ConfigError]
) -> tuple[str, int]:
    from dsonode.ops.metrics import MetricsError, parse_metrics_listen

    try:
        return parse_metrics_listen(text, allow_non_loopback=allow_non_loopback)
    except MetricsError as exc:
        raise fail("metrics.listen", str(exc)) from None


def _check_gateway(g: GatewaySection, fail: Callable[[str, str], ConfigError]) -> None:
    """Run GatewayConfig's own validation, blaming the key each check is about."""
    from dsonode.gateway.config import GatewayConfig, GatewayError

    try:
        GatewayConfig.from_mapping({"token": g.token} if g.token else {})
    except GatewayError as exc:
        raise fail("gateway.token", str(exc)) from None
    full = _gateway_mapping(g)
    for key in full:
        if key in ("listen", "token"):
            continue
        try:
            GatewayConfig.from_mapping({key: full[key]})
        except GatewayError as exc:
            raise fail(f"gateway.{key}", str(exc)) from None
    try:
        GatewayConfig.from_mapping(full)
    except GatewayError as exc:
        # What is left (a listen address, or listening beyond loopback without a token)
        # is about where the gateway listens.
        raise fail("gateway.listen", str(exc).replace("--listen", "listen")) from None


# ----------------------------------------------------------------------------------------
# The commented template that `dsonode init` writes


def _toml_value(value: Any) -> str:
    import tomli_w

    if isinstance(value, Mapping):  # inline table, so a section never splits in two
        if not value:
            return "{}"
        return (
            "{ "
            + ", ".join(f"{_toml_value(k)} = {_toml_value(w)}" for k, w in value.items())
            + " }"
        )
    return tomli_w.dumps({"v": value}).split("=", 1)[1].strip()


def render_template(overrides: Mapping[str, Any] | None = None) -> str:
    """A TOML config documenting every setting with its default.

    `overrides` maps dotted names to values written instead of the default (e.g.
    {"net.listen": "/ip4/127.0.0.1/tcp/4002"}); every other key is written at its default,
    so the file loads back to exactly the defaults plus the overrides.
    """
    overrides = dict(overrides or {})
    unknown = [
        k
        for k in overrides
        if k.split(".")[0] not in SETTINGS or k.split(".", 1)[-1] not in SETTINGS[k.split(".")[0]]
    ]
    if unknown:
        raise ConfigError(unknown[0], "unknown setting")
    lines = [
        "# dsonode configuration. Every setting is listed with its default.",
        "# Relative paths are relative to this file. Any setting can be overridden by an",
        "# environment variable DSONODE_<SECTION>_<KEY>, e.g. DSONODE_NET_LISTEN.",
        "# Check it with: dsonode config check --config <this file>",
    ]
    for section, settings in SETTINGS.items():
        lines += ["", f"# {SECTION_DOCS[section]}", f"[{section}]"]
        for key, s in settings.items():
            default = s.default
            value = overrides.get(s.name, default)
            lines.append(f"# {s.doc} (default: {_toml_value(default)})")
            if s.kind == "weights":
                if not value:
                    lines.append('# example: weights = { "12D3KooW...": 2.0 }')
                value = dict(value)
            lines.append(f"{key} = {_toml_value(value)}")
    return "\n".join(lines) + "\n"
