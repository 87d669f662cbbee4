"""Every setting of a node, declared once: section, key, kind, default, bounds, help, flag.

This table is the single source. The TOML loader and the environment overrides
(dsonode.config.loader), the `dsonode run` flags (dsonode.node.cli), the commented file that
`dsonode init` writes, and the defaults of the runtime objects (`NodeConfig`, `DaemonConfig`,
`HostConfig`, `GossipConfig`, `GatewayConfig`: each takes `default("section.key")`) are all
derived from it; no default is written anywhere else. To add a setting, add a row here and
read it where it is used (ARCHITECTURE.md "Adding a setting").

Pure: imports only the core (lists of methods and attacks) and the gateway's configuration
class, whose field defaults are the `[gateway]` ones (the gateway also runs on its own, as
`dsonode gateway`, and validates the same values).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from dsonode.core.aggregate import DEFAULT_QUORUM, METHODS
from dsonode.core.aggregate import WEIGHTED_METHODS as _WEIGHTED
from dsonode.core.attacks import ATTACKS as NODE_ATTACKS
from dsonode.core.constants import MAX_BATCH_BYTES
from dsonode.core.feedback import DEFAULT_WEIGHT as FEEDBACK_WEIGHT
from dsonode.core.quota import QuotaRules
from dsonode.core.stamp import MAX_BITS as STAMP_MAX_BITS
from dsonode.core.trust import TRUST_MODES, StandingRules
from dsonode.embed.defaults import DEFAULT_DEVICE
from dsonode.extract.config import BACKENDS as EXTRACT_BACKENDS
from dsonode.extract.config import ExtractConfig as _EX  # its defaults are the [extract] ones
from dsonode.gateway.config import GatewayConfig as _GW  # its defaults are the [gateway] ones

ENV_PREFIX = "DSONODE_"

LOG_FORMATS = ("text", "json")
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")
#: A light node loads no encoder: it never embeds text or submits codes (ARCHITECTURE.md).
NODE_ROLES = ("full", "light")
#: Encoder runtimes of search queries (dsonode/embed/runtime.py; codes always use the exact one).
QUERY_RUNTIMES = ("onnx-int8", "torch")
#: What runs a full node's model (dsonode/embed/lean.py): "onnx" = the lean embedder, compiled
#: once per machine, without torch in the node (falls back to torch when it cannot be had);
#: "torch" = the torch embedder.
EMBED_RUNTIMES = ("onnx", "torch")
#: dsonode.core.aggregate.METHODS minus "mean" (not robust: never a network's rule).
CONSENSUS_METHODS = tuple(m for m in METHODS if m != "mean")
WEIGHTED_METHODS = tuple(m for m in _WEIGHTED if m in CONSENSUS_METHODS)
#: "none" plus every attack of dsonode.core.attacks (what each does is described there).
ATTACKS = ("none", *NODE_ATTACKS)


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
    #: The `dsonode run` flag that overrides it ("" = none); `enables` names a bool setting
    #: that giving the flag turns on (e.g. --listen turns on net.enabled).
    flag: str = ""
    enables: str = ""

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
    "trust": "What the node serves to agents and whose votes count (ARCHITECTURE.md Trust).",
    "metrics": "Prometheus metrics over HTTP.",
    "extract": "Rollouts -> lessons (`submit_rollouts`, `dsonode ingest`). The LLM's API key is "
    "never a setting: only $DSONODE_LLM_API_KEY.",
    "testnet": "Test networks only. A Byzantine node is an ordinary node with an attack set here.",
}

SPEC: tuple[Setting, ...] = (
    # [node]
    _s("node", "data_dir", "path", "", 'data directory; "" = the directory of this file'),
    _s(
        "node",
        "log_format",
        "choice",
        "text",
        "log lines as text or JSON",
        choices=LOG_FORMATS,
        flag="--log-format",
    ),
    _s(
        "node",
        "log_level",
        "choice",
        "INFO",
        "least severe level logged",
        choices=LOG_LEVELS,
        flag="--log-level",
    ),
    _s(
        "node",
        "encoder",
        "path",
        "",
        'local Hugging Face encoder folder; "" = packaged MiniLM',
        flag="--encoder",
    ),
    _s(
        "node",
        "head",
        "path",
        "",
        'trained head (.safetensors); "" = the seeded default',
        flag="--head",
    ),
    _s("node", "device", "str", DEFAULT_DEVICE, "auto, cpu or cuda[:N]", flag="--device"),
    _s(
        "node",
        "threads",
        "int",
        0,
        "torch CPU threads; 0 = torch's default",
        lo=0,
        hi=256,
        flag="--threads",
    ),
    _s("node", "cpu_threads", "int", 2, "worker threads for embedding/search/commits", lo=1, hi=64),
    _s(
        "node",
        "query_runtime",
        "choice",
        "onnx-int8",
        "encoder of search queries: onnx-int8 (the onnx extra; else torch) or torch (exact)",
        choices=QUERY_RUNTIMES,
        flag="--query-runtime",
    ),
    _s(
        "node",
        "embed_runtime",
        "choice",
        "onnx",
        "full node's model: onnx (torch-free, CPU, compiled once per machine; falls back to "
        "torch) or torch",
        choices=EMBED_RUNTIMES,
        flag="--embed-runtime",
    ),
    _s(
        "node",
        "role",
        "choice",
        "full",
        "full: embeds and submits codes; light: no encoder (stores, relays, serves vectors)",
        choices=NODE_ROLES,
        flag="--role",
    ),
    _s(
        "node",
        "space_id",
        "str",
        "",
        'light node: the space it serves (64 hex); "" = the default space',
    ),
    # [net]
    _s("net", "enabled", "bool", True, "join the network (false: serve the local socket only)"),
    _s(
        "net",
        "listen",
        "multiaddr",
        "/ip4/127.0.0.1/tcp/4001",
        "libp2p listen multiaddr",
        flag="--listen",
        enables="net.enabled",
    ),
    _s(
        "net",
        "bootstrap",
        "peers",
        [],
        "peers to keep connected: /ip4/.../tcp/N/p2p/<peer id>",
        flag="--peer",
    ),
    _s("net", "allow_non_loopback", "bool", False, "allow addresses beyond 127.0.0.0/8 and ::1"),
    _s("net", "max_connections", "int", 64, "open libp2p connections", lo=1, hi=10_000),
    _s("net", "max_connections_per_peer", "int", 2, "connections per peer", lo=1, hi=8),
    _s("net", "dial_timeout_s", "float", 5.0, "seconds per dial attempt", lo=0.1, hi=120),
    _s("net", "redial_initial_s", "float", 0.2, "first redial backoff", lo=0.01, hi=3600),
    _s("net", "redial_max_s", "float", 5.0, "longest redial backoff", lo=0.01, hi=3600),
    _s("net", "low_water", "int", 8, "dial known peers while fewer are connected", lo=1, hi=1000),
    _s("net", "high_water", "int", 16, "prune connected peers above this", lo=1, hi=10_000),
    _s("net", "max_inbound", "int", 32, "inbound connections in total", lo=1, hi=10_000),
    _s("net", "max_inbound_per_ip", "int", 4, "inbound connections per remote IP", lo=1, hi=1000),
    _s(
        "net",
        "allow_peers",
        "peer_ids",
        [],
        "peer ids allowed to connect in; empty = anyone",
    ),
    _s("net", "discovery", "bool", True, "find peers beyond net.bootstrap (Kademlia DHT)"),
    _s("net", "mdns", "bool", False, "find peers on the local network by mDNS (LAN only)"),
    _s("net", "known_peers_max", "int", 1000, "peers remembered in the store", lo=8, hi=100_000),
    _s(
        "net",
        "peers_flush_s",
        "float",
        5.0,
        "write known peers at most this often",
        lo=0.5,
        hi=3600,
    ),
    _s("net", "gossip_degree", "int", 4, "GossipSub mesh degree D", lo=1, hi=64),
    _s("net", "gossip_degree_low", "int", 2, "GossipSub D_low", lo=1, hi=64),
    _s("net", "gossip_degree_high", "int", 8, "GossipSub D_high", lo=1, hi=64),
    _s("net", "gossip_heartbeat_s", "int", 1, "GossipSub heartbeat (whole seconds)", lo=1, hi=60),
    _s("net", "batch_max_items", "int", 128, "items per gossip message", lo=1, hi=256),
    _s(
        "net",
        "batch_max_bytes",
        "int",
        MAX_BATCH_BYTES - 2048,
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
        flag="--sync-interval",
    ),
    # [consensus]
    _s("consensus", "method", "choice", "median", "robust estimator", choices=CONSENSUS_METHODS),
    _s(
        "consensus",
        "quorum",
        "int",
        DEFAULT_QUORUM,
        "accepted submissions to confirm",
        lo=1,
        hi=1000,
    ),
    _s(
        "consensus",
        "committee",
        "committee",
        7,
        'expected submitters per experience (1..1000), or "all" (small networks)',
        lo=1,
        hi=1000,
        flag="--committee",
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
    _s(
        "api",
        "max_connections",
        "int",
        64,
        "open socket connections",
        lo=1,
        hi=4096,
        flag="--max-connections",
    ),
    _s(
        "api",
        "idle_timeout_s",
        "float",
        300.0,
        "close idle connections",
        lo=0.1,
        hi=86_400,
        flag="--idle-timeout",
    ),
    _s(
        "api",
        "feedback_weight",
        "float",
        FEEDBACK_WEIGHT,
        "feedback weight in ranking; 0 = off",
        lo=0,
        hi=1,
    ),
    # [trust] (dsonode.core.trust; the defaults of StandingRules are these)
    _s(
        "trust",
        "mode",
        "choice",
        "vouched",
        "serve: open (all but blocked), vouched (default), allowlist (operator's trust only)",
        choices=TRUST_MODES,
        flag="--trust",
    ),
    _s(
        "trust",
        "allow",
        "peer_ids",
        [],
        "authors (peer ids) whose experiences and votes this node trusts as its own",
    ),
    _s(
        "trust",
        "min_accepted",
        "int",
        StandingRules.min_accepted,
        "standing: submissions accepted into consensus",
        lo=1,
        hi=1_000_000,
    ),
    _s(
        "trust",
        "min_agreement",
        "float",
        StandingRules.min_agreement,
        "standing: accepted / judged submissions",
        lo=0,
        hi=1,
    ),
    _s(
        "trust",
        "min_age_s",
        "float",
        StandingRules.min_age_ms / 1000,
        "standing: seconds since the author's first judged submission",
        lo=0,
        hi=10 * 365 * 86_400,
    ),
    _s(
        "trust",
        "endorse_min",
        "float",
        StandingRules.endorse_min,
        "vouched: standing of the authors whose helpful votes vouch for it",
        lo=0.001,
        hi=1000,
    ),
    _s(
        "trust",
        "stamp_bits",
        "int",
        0,
        "network difficulty (set alike on every node): proof-of-work bits an experience of an "
        "author without standing must carry (PROTOCOL.md 18); 0 = off (older nodes never stamp)",
        lo=0,
        hi=STAMP_MAX_BITS,
    ),
    _s(
        "trust",
        "quota_items_per_hour",
        "int",
        QuotaRules.items_per_hour,
        "new experiences and votes admitted per author and hour (x factor with standing)",
        lo=1,
        hi=10_000_000,
    ),
    _s(
        "trust",
        "quota_bytes",
        "int",
        QuotaRules.max_bytes,
        "bytes of experiences stored per author (x factor with standing)",
        lo=4096,
        hi=2**40,
    ),
    _s(
        "trust",
        "standing_quota_factor",
        "float",
        QuotaRules.standing_factor,
        "quota multiplier for authors with standing",
        lo=1,
        hi=1000,
    ),
    _s(
        "trust",
        "unvouched_ttl_s",
        "float",
        30 * 86_400.0,
        "unvouched experiences older than this are deleted; 0 = never",
        lo=0,
        hi=100 * 365 * 86_400,
    ),
    _s(
        "trust",
        "max_experiences",
        "int",
        1_000_000,
        "storage cap: above it the store evicts, unvouched (over-quota authors, oldest) first",
        lo=1,
        hi=1_000_000_000,
    ),
    _s(
        "trust",
        "sweep_interval_s",
        "float",
        600.0,
        "expire and evict this often (a networked node)",
        lo=1,
        hi=86_400,
    ),
    # [gateway] (validated once more by dsonode.gateway.config.GatewayConfig)
    _s("gateway", "enabled", "bool", False, "serve the gateway alongside the node"),
    _s(
        "gateway",
        "listen",
        "str",
        f"{_GW.host}:{_GW.port}",
        "HOST:PORT ([IPv6]:PORT)",
        flag="--gateway-listen",
        enables="gateway.enabled",
    ),
    _s("gateway", "token", "str", "", 'bearer token; "" = $DSONODE_GATEWAY_TOKEN or none'),
    _s("gateway", "max_body_bytes", "int", _GW.max_body_bytes, "request body", lo=1024, hi=2**26),
    _s(
        "gateway",
        "request_timeout_s",
        "float",
        _GW.request_timeout_s,
        "per request",
        lo=0.1,
        hi=3600,
    ),
    _s(
        "gateway",
        "max_batch_texts",
        "int",
        _GW.max_batch_texts,
        "texts per encoder batch",
        lo=1,
        hi=4096,
    ),
    _s("gateway", "max_wait_ms", "float", _GW.max_wait_ms, "wait to fill a batch", lo=0, hi=1000),
    _s(
        "gateway",
        "max_pending_texts",
        "int",
        _GW.max_pending_texts,
        "queued texts",
        lo=1,
        hi=1_000_000,
    ),
    # [metrics]
    _s("metrics", "enabled", "bool", False, "serve Prometheus metrics"),
    _s(
        "metrics",
        "listen",
        "str",
        "127.0.0.1:9464",
        "HOST:PORT; loopback unless allowed below",
        flag="--metrics-listen",
        enables="metrics.enabled",
    ),
    _s(
        "metrics",
        "allow_non_loopback",
        "bool",
        False,
        "let metrics.listen be a non-loopback IP",
        flag="--metrics-allow-non-loopback",
    ),
    # [extract]
    _s(
        "extract",
        "backend",
        "choice",
        _EX.backend,
        "offline (the node's encoder only) or llm (an OpenAI-compatible server)",
        choices=EXTRACT_BACKENDS,
    ),
    _s(
        "extract",
        "endpoint",
        "str",
        _EX.endpoint,
        'LLM base URL .../v1; "" = $DSONODE_LLM_BASE_URL',
    ),
    _s("extract", "model", "str", _EX.model, 'LLM model name; "" = $DSONODE_LLM_MODEL'),
    _s("extract", "timeout_s", "float", _EX.timeout_s, "per LLM request", lo=0.1, hi=3600),
    _s("extract", "max_retries", "int", _EX.max_retries, "LLM retries on 429/5xx", lo=0, hi=10),
    _s("extract", "concurrency", "int", _EX.concurrency, "LLM requests in flight", lo=1, hi=64),
    _s("extract", "max_tokens", "int", _EX.max_tokens, "per LLM completion", lo=1, hi=32768),
    _s("extract", "retrieve_k", "int", _EX.retrieve_k, "experiences shown to the LLM", lo=0, hi=20),
    _s("extract", "per_group", "int", _EX.per_group, "offline: lessons per task", lo=1, hi=16),
    # [testnet]
    _s("testnet", "enabled", "bool", False, "this node is part of a test network"),
    _s(
        "testnet",
        "attack",
        "choice",
        "none",
        "TESTNET ONLY: poison own submissions",
        choices=ATTACKS,
        flag="--byzantine-attack",
        enables="testnet.enabled",
    ),
    _s(
        "testnet",
        "attack_scale",
        "float",
        1.0,
        "TESTNET ONLY: strength of the attack",
        lo=0,
        hi=100,
        flag="--attack-scale",
    ),
)

SETTINGS: dict[str, dict[str, Setting]] = {}
for _setting in SPEC:
    SETTINGS.setdefault(_setting.section, {})[_setting.key] = _setting
ENV_NAMES = {s.env: s for s in SPEC}


def setting(name: str) -> Setting:
    """The declaration of a setting by dotted name ("net.dial_timeout_s")."""
    section, _, key = name.partition(".")
    try:
        return SETTINGS[section][key]
    except KeyError:
        raise KeyError(f"no setting {name!r}") from None


def default(name: str) -> Any:
    """A setting's default, in the form the runtime objects take (a list becomes a tuple,
    a table a dict, "" for an optional path None)."""
    s = setting(name)
    if isinstance(s.default, list):
        return tuple(s.default)
    if isinstance(s.default, dict):
        return dict(s.default)
    if s.kind == "path" and s.default == "":
        return None
    return s.default
