"""The node's configuration: TOML file + `DSONODE_<SECTION>_<KEY>` environment overrides.

One table, `SPEC`, describes every setting once (section, key, kind, default, bounds, doc). The
loader, the environment overrides, `dsonode config check` and the commented template that
`dsonode init` writes are all driven by it, so they cannot drift apart.

Rules, all enforced before the node opens anything:
* every error names its key (`net.listen: not a multiaddr: ...`), or the environment
  variable it came from; unknown sections and keys are errors with a did-you-mean;
* numbers are bounded; multiaddrs are validated by `dsonode.core.peerinfo` (loopback only
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
import re
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any

from dsonode.config.listen import MetricsError, parse_metrics_listen
from dsonode.config.paths import SOCKET_NAME, default_data_dir
from dsonode.config.settings import (
    ENV_NAMES,
    ENV_PREFIX,
    SECTION_DOCS,
    SETTINGS,
    WEIGHTED_METHODS,
    Setting,
    default,
    setting,
)
from dsonode.core.errors import DsoError
from dsonode.core.peerinfo import PeerAddr, PeerAddrError, parse_multiaddr, public_key_from_peer_id
from dsonode.gateway.config import GatewayConfig, GatewayError

MAX_CONFIG_BYTES = 256 * 1024
MAX_BOOTSTRAP_PEERS = 64
#: net.allow_peers: an allow-list, not a peer list to dial, so it may be longer.
MAX_ALLOWED_PEERS = 1024
MAX_WEIGHTED_PEERS = 10_000
MAX_STR_CHARS = 4096
#: sun_path is 108 bytes on Linux, including the terminating NUL.
MAX_SOCKET_PATH_BYTES = 107
#: A space id as the settings take it (node.space_id).
_HEX64 = re.compile(r"[0-9a-f]{64}")


class ConfigError(DsoError, ValueError):
    """A setting is wrong; `key` is its dotted name (e.g. "net.listen")."""

    def __init__(self, key: str, message: str, source: str | None = None):
        self.key = key
        self.source = source
        where = f" (from ${source})" if source else ""
        super().__init__(f"{key}{where}: {message}")


def _did_you_mean(word: str, options: list[str]) -> str:
    close = difflib.get_close_matches(word, options, n=1, cutoff=0.6)
    return f"; did you mean {close[0]!r}?" if close else f"; known: {', '.join(sorted(options))}"


# ----------------------------------------------------------------------------------------
# Typed, frozen model


@dataclass(frozen=True)
class NodeSection:
    data_dir: Path
    log_format: str
    log_level: str
    encoder: Path | None
    head: Path | None
    device: str
    threads: int | None
    cpu_threads: int
    query_runtime: str
    embed_runtime: str
    role: str
    space_id: str  # "" = the default space (light nodes only)


@dataclass(frozen=True)
class NetSection:
    enabled: bool
    listen: str
    bootstrap: tuple[str, ...]
    allow_non_loopback: bool
    max_connections: int
    max_connections_per_peer: int
    dial_timeout_s: float
    redial_initial_s: float
    redial_max_s: float
    low_water: int
    high_water: int
    max_inbound: int
    max_inbound_per_ip: int
    allow_peers: tuple[str, ...]
    discovery: bool
    mdns: bool
    known_peers_max: int
    peers_flush_s: float
    gossip_degree: int
    gossip_degree_low: int
    gossip_degree_high: int
    gossip_heartbeat_s: int
    batch_max_items: int
    batch_max_bytes: int
    batch_linger_s: float
    max_publish_per_s: float
    publish_burst: int
    outbox_max_items: int
    sync_interval_s: float


@dataclass(frozen=True)
class ConsensusSection:
    method: str
    quorum: int
    committee: int | None
    weights: Mapping[str, float]


@dataclass(frozen=True)
class ApiSection:
    socket: Path
    max_connections: int
    idle_timeout_s: float
    feedback_weight: float


@dataclass(frozen=True)
class TrustSection:
    mode: str
    allow: tuple[str, ...]
    min_accepted: int
    min_agreement: float
    min_age_s: float
    endorse_min: float
    stamp_bits: int
    quota_items_per_hour: int
    quota_bytes: int
    standing_quota_factor: float
    unvouched_ttl_s: float
    max_experiences: int
    sweep_interval_s: float


@dataclass(frozen=True)
class GatewaySection:
    enabled: bool
    listen: str
    token: str | None
    max_body_bytes: int
    request_timeout_s: float
    max_batch_texts: int
    max_wait_ms: float
    max_pending_texts: int


@dataclass(frozen=True)
class MetricsSection:
    enabled: bool
    host: str
    port: int
    allow_non_loopback: bool


@dataclass(frozen=True)
class TestnetSection:
    __test__ = False  # not a pytest test class despite the name
    enabled: bool
    attack: str
    attack_scale: float


@dataclass(frozen=True)
class ExtractSection:
    backend: str = default("extract.backend")
    endpoint: str = default("extract.endpoint")
    model: str = default("extract.model")
    timeout_s: float = default("extract.timeout_s")
    max_retries: int = default("extract.max_retries")
    concurrency: int = default("extract.concurrency")
    max_tokens: int = default("extract.max_tokens")
    retrieve_k: int = default("extract.retrieve_k")
    per_group: int = default("extract.per_group")


@dataclass(frozen=True)
class Config:
    node: NodeSection
    net: NetSection
    consensus: ConsensusSection
    api: ApiSection
    gateway: GatewaySection
    metrics: MetricsSection
    testnet: TestnetSection
    trust: TrustSection
    #: The file it came from (None: defaults and environment only).
    source: Path | None = None
    #: Environment variables that overrode a setting, e.g. ("DSONODE_NET_LISTEN",).
    env_overrides: tuple[str, ...] = ()
    extract: ExtractSection = field(default_factory=ExtractSection)

    # -- adapters to the classes that consume the settings (imported lazily: heavy) --

    def bootstrap_addrs(self) -> list[PeerAddr]:
        """The bootstrap peers as `dsonode.core.peerinfo.PeerAddr` (what the dialer takes)."""
        return [
            parse_multiaddr(a, allow_non_loopback=self.net.allow_non_loopback, require_peer_id=True)
            for a in self.net.bootstrap
        ]

    def gateway_config(self) -> GatewayConfig:
        return GatewayConfig.from_mapping(_gateway_mapping(self.gateway))

    @property
    def byzantine_attack(self) -> str | None:
        """The attack this node runs: only on a testnet (the loader refuses it otherwise)."""
        if not self.testnet.enabled or self.testnet.attack == "none":
            return None
        return self.testnet.attack

    def to_toml_dict(self) -> dict[str, dict[str, Any]]:
        """The effective settings as plain TOML values (paths absolute, secrets masked)."""
        out: dict[str, dict[str, Any]] = {}
        for section, settings in SETTINGS.items():
            obj = getattr(self, section)
            table: dict[str, Any] = {}
            for key in settings:
                if section == "metrics" and key == "listen":
                    value: Any = join_hostport(obj.host, obj.port)
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


def join_hostport(host: str, port: int) -> str:
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
    if kind == "peer_ids":
        if not isinstance(raw, list) or not all(isinstance(a, str) for a in raw):
            raise ConfigError(s.name, f"must be a list of peer id strings, got {raw!r}")
        if len(raw) > MAX_ALLOWED_PEERS:
            raise ConfigError(s.name, f"at most {MAX_ALLOWED_PEERS} peer ids, got {len(raw)}")
        for i, pid in enumerate(raw):
            try:
                public_key_from_peer_id(pid)
            except (PeerAddrError, ValueError) as exc:
                raise ConfigError(f"{s.name}[{i}]", f"not an Ed25519 peer id: {exc}") from None
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
    if s.kind in ("peers", "peer_ids"):  # comma-separated; empty = none
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
    overrides: Mapping[str, Any] | None = None,
) -> Config:
    """Load `path` (None: defaults only), apply `env` (default: os.environ), then
    `overrides` (dotted name -> value, e.g. the `dsonode run` flags), validate."""
    source = Path(path).expanduser().resolve() if path is not None else None
    data = read_toml(source) if source is not None else {}
    return config_from_mapping(
        data, source=source, env=os.environ if env is None else env, overrides=overrides
    )


def config_from_mapping(
    data: Mapping[str, Any],
    *,
    source: Path | None = None,
    env: Mapping[str, str] | None = None,
    overrides: Mapping[str, Any] | None = None,
) -> Config:
    """Validate a parsed TOML document, then environment overrides, then `overrides`
    (dotted name -> TOML-typed value; command-line flags), into a `Config`."""
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
            prefix = next((sec for sec in SETTINGS if rest.startswith(sec + "_")), None)
            if prefix is None:
                continue  # e.g. DSONODE_DATA_DIR: not a setting override
            section = prefix
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
    for name, raw in (overrides or {}).items():
        try:
            s = setting(name)
        except KeyError:
            raise ConfigError(name, "unknown setting") from None
        values[s.section][s.key] = _parse_value(s, raw)
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
        query_runtime=n["query_runtime"],
        embed_runtime=n["embed_runtime"],
        role=n["role"],
        space_id=n["space_id"],
    )
    if node.space_id and not _HEX64.fullmatch(node.space_id):
        raise fail("node.space_id", f"must be 64 lowercase hex characters, got {node.space_id!r}")
    if node.space_id and node.role != "light":
        raise fail("node.space_id", "is for light nodes (a full node's space is its model's)")
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
    if not t["low_water"] <= t["high_water"] <= t["max_connections"]:
        raise fail("net.high_water", "need net.low_water <= net.high_water <= net.max_connections")
    if t["gossip_degree_high"] > t["high_water"]:
        raise fail("net.gossip_degree_high", "must not exceed net.high_water")
    lists = ("bootstrap", "allow_peers")
    net_values: dict[str, Any] = {k: tuple(x) if k in lists else x for k, x in t.items()}
    net = NetSection(**net_values)

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

    ex = v["extract"]
    if ex["endpoint"] and not re.match(r"https?://[^\s/?#@]+", ex["endpoint"]):
        raise fail("extract.endpoint", "must be http(s)://host[:port][/path] (e.g. .../v1)")
    extract = ExtractSection(**ex)
    tr = v["trust"]
    trust = TrustSection(**{**tr, "allow": tuple(tr["allow"])})
    return Config(
        node,
        net,
        consensus,
        api,
        gateway,
        metrics,
        testnet,
        trust,
        source,
        overridden,
        extract=extract,
    )


def _parse_metrics_listen(
    text: str, allow_non_loopback: bool, fail: Callable[[str, str], ConfigError]
) -> tuple[str, int]:
    try:
        return parse_metrics_listen(text, allow_non_loopback=allow_non_loopback)
    except MetricsError as exc:
        raise fail("metrics.listen", str(exc)) from None


def _check_gateway(g: GatewaySection, fail: Callable[[str, str], ConfigError]) -> None:
    """Run GatewayConfig's own validation, blaming the key each check is about."""
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
