"""Build the py-libp2p host of a node from its Ed25519 identity.

TCP only, Noise only, yamux only. `libp2p.new_host()` left to its defaults would also offer
TLS, secio and *plaintext* security and the mplex muxer (see README.md in this folder), so both
option maps are passed explicitly. The swarm's own auto-connector is replaced by one that
never dials (`_NoAutoConnector`): reconnecting is the job of `dsonode.net.dialer`, which
knows to clear libp2p's 60 s failed-dial cache first.
"""

from __future__ import annotations

import ipaddress
import logging
import socket
from dataclasses import dataclass
from typing import Any, cast

import multiaddr
import trio
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from libp2p import new_host
from libp2p.abc import IHost, IRawConnection
from libp2p.crypto.ed25519 import Ed25519PrivateKey as P2PEd25519PrivateKey
from libp2p.crypto.keys import KeyPair
from libp2p.crypto.x25519 import create_new_key_pair as create_new_x25519_key_pair
from libp2p.custom_types import TProtocol
from libp2p.io.trio import TrioTCPStream
from libp2p.network.auto_connector import AutoConnector
from libp2p.network.config import ConnectionConfig
from libp2p.network.connection.raw_connection import RawConnection
from libp2p.network.swarm import Swarm
from libp2p.peer.id import ID
from libp2p.security.noise.transport import PROTOCOL_ID as NOISE_PROTOCOL_ID
from libp2p.security.noise.transport import Transport as NoiseTransport
from libp2p.stream_muxer.yamux.yamux import PROTOCOL_ID as YAMUX_PROTOCOL_ID
from libp2p.stream_muxer.yamux.yamux import Yamux
from libp2p.transport.exceptions import OpenConnectionError
from libp2p.transport.tcp.tcp import TCP

from dsonode.config.settings import default
from dsonode.core.peerinfo import (
    PeerAddr,
    PeerAddrError,
    parse_multiaddr,
    peer_id_bytes_from_public_key,
    public_key_from_peer_id_bytes,
)
from dsonode.identity import private_key_bytes, public_key_bytes

#: The only protocols this host offers; tests check the negotiated ones against these.
SECURITY_PROTOCOLS = (str(NOISE_PROTOCOL_ID),)
MUXER_PROTOCOLS = (str(YAMUX_PROTOCOL_ID),)

MAX_CONNECTIONS_LIMIT = 10_000


@dataclass(frozen=True)
class HostConfig:
    """What the host listens on and how many connections it tolerates."""

    listen: str = "/ip4/127.0.0.1/tcp/0"  # any free port (tests); nodes pass net.listen
    max_connections: int = default("net.max_connections")
    max_connections_per_peer: int = default("net.max_connections_per_peer")
    dial_timeout_s: float = default("net.dial_timeout_s")
    upgrade_timeout_s: float = 10.0
    allow_non_loopback: bool = default("net.allow_non_loopback")
    mdns: bool = default("net.mdns")

    def __post_init__(self) -> None:
        parse_multiaddr(
            self.listen, allow_non_loopback=self.allow_non_loopback, allow_port_zero=True
        )
        if not 1 <= self.max_connections <= MAX_CONNECTIONS_LIMIT:
            raise PeerAddrError(
                f"max_connections must be 1..{MAX_CONNECTIONS_LIMIT}, got {self.max_connections}"
            )
        if not 1 <= self.max_connections_per_peer <= 8:
            raise PeerAddrError(
                f"max_connections_per_peer must be 1..8, got {self.max_connections_per_peer}"
            )
        for name in ("dial_timeout_s", "upgrade_timeout_s"):
            value = getattr(self, name)
            if not 0.1 <= value <= 120:
                raise PeerAddrError(f"{name} must be 0.1..120 seconds, got {value}")

    @property
    def listen_addr(self) -> PeerAddr:
        return parse_multiaddr(
            self.listen, allow_non_loopback=self.allow_non_loopback, allow_port_zero=True
        )


def libp2p_keypair(private_key: Ed25519PrivateKey) -> KeyPair:
    """Our cryptography Ed25519 key as a libp2p KeyPair (same seed, same public key)."""
    sk = P2PEd25519PrivateKey.new(private_key_bytes(private_key))
    return KeyPair(sk, sk.get_public_key())


def peer_id_of(private_key: Ed25519PrivateKey) -> ID:
    """The libp2p peer id of our identity key (computed without libp2p's help, then wrapped)."""
    return ID(peer_id_bytes_from_public_key(public_key_bytes(private_key)))


def public_key_of_peer(peer_id: ID) -> bytes:
    """The raw 32-byte Ed25519 key of a connected peer (our `author` field format)."""
    return public_key_from_peer_id_bytes(peer_id.to_bytes())


class _NoAutoConnector(AutoConnector):
    """An auto-connector that never dials.

    py-libp2p 0.8.1 dials peerstore peers whenever the connection count is below
    (low_watermark + high_watermark) / 2, so low_watermark = min_connections = 0 does NOT turn
    it off (target 32 with our high watermark of 64), and it dials the addresses identify
    taught it, not the configured ones. Found by the partition test: it reconnected the two
    sides straight to the nodes' listen ports, around the test's relays, within seconds.
    """

    async def maybe_connect(self) -> None:
        return None


def build_host(private_key: Ed25519PrivateKey, config: HostConfig) -> IHost:
    """A host ready for `host.run([listen multiaddr])`: TCP, Noise only, yamux only."""
    key_pair = libp2p_keypair(private_key)
    noise_key = create_new_x25519_key_pair()
    sec_opt = {
        TProtocol(NOISE_PROTOCOL_ID): NoiseTransport(key_pair, noise_privkey=noise_key.private_key)
    }
    muxer_opt = {TProtocol(YAMUX_PROTOCOL_ID): Yamux}
    conn_config = ConnectionConfig(
        max_connections=config.max_connections,
        high_watermark=config.max_connections,
        low_watermark=0,
        min_connections=0,
        max_connections_per_peer=config.max_connections_per_peer,
        dial_timeout=config.dial_timeout_s,
        inbound_upgrade_timeout=config.upgrade_timeout_s,
        outbound_upgrade_timeout=config.upgrade_timeout_s,
    )
    host = new_host(
        key_pair=key_pair,
        sec_opt=sec_opt,
        muxer_opt=muxer_opt,
        listen_addrs=[multiaddr.Multiaddr(config.listen_addr.tcp_multiaddr)],
        connection_config=conn_config,
        enable_mDNS=config.mdns,  # off unless net.mdns (a LAN); its dials pass our gate too
        enable_upnp=False,
    )
    network = host.get_network()
    if not isinstance(network, Swarm):  # new_host builds a Swarm; the replacement needs one
        raise RuntimeError(f"libp2p host has a {type(network).__name__}, not a Swarm")
    network.auto_connector = _NoAutoConnector(
        swarm=network, auto_connect_interval=conn_config.auto_connect_interval
    )
    _bind_loopback_dials(network, config.listen_addr.ip)
    quiet_refused_dials()
    if host.get_id() != peer_id_of(private_key):  # our derivation and libp2p's must agree
        raise RuntimeError("libp2p derived a different peer id from our Ed25519 key")
    return host


# py-libp2p 0.8.1's TCP transport logs every failed dial at ERROR, then raises. Our callers
# (the dialer's bounded redial, the connection manager) catch that error and log it at DEBUG:
# a peer that does not listen yet (a testnet whose nodes start together) is expected.
_TCP_LOGGER = "libp2p.transport.tcp.tcp"
_DIAL_FAILED = ("Failed to open TCP stream", "Unexpected error opening TCP stream")


class _DialFailureFilter(logging.Filter):
    """Drops the transport's own record of a failed dial; everything else passes."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not (isinstance(record.msg, str) and record.msg.startswith(_DIAL_FAILED))


def quiet_refused_dials() -> None:
    """Install the filter on libp2p's TCP logger once (idempotent)."""
    logger = logging.getLogger(_TCP_LOGGER)
    if not any(isinstance(f, _DialFailureFilter) for f in logger.filters):
        logger.addFilter(_DialFailureFilter())


def _bind_loopback_dials(network: Swarm, listen_ip: str) -> None:
    """Dial loopback peers from our own loopback listen address (127.0.0.N).

    Left alone, the kernel sends every loopback dial from 127.0.0.1, so on a testnet of nodes
    on 127.0.0.2.. all of them look like one IP to the inbound caps and more than
    net.max_inbound_per_ip of them cannot connect to the same node (the bootstrap, first).
    Only loopback to loopback: elsewhere the routing table picks the source, as it should.
    The TCP transport of py-libp2p 0.8.1 takes no source address (its `dial_with_source`
    binds with SO_REUSEPORT and logs a refused dial at ERROR), so the socket is opened here.
    """
    ip = ipaddress.ip_address(listen_ip)
    if not ip.is_loopback:
        return
    family = socket.AF_INET6 if ip.version == 6 else socket.AF_INET
    for transport in network.transport_manager.get_transports():
        if not isinstance(transport, TCP):
            continue
        plain_dial = transport.dial

        async def dial(maddr: multiaddr.Multiaddr, plain: Any = plain_dial) -> IRawConnection:
            try:
                addr = parse_multiaddr(str(maddr))
            except PeerAddrError:  # not a loopback /ip4|ip6/.../tcp/N: not ours to bind
                return cast(IRawConnection, await plain(maddr))
            if ipaddress.ip_address(addr.ip).version != ip.version:
                return cast(IRawConnection, await plain(maddr))
            sock = trio.socket.socket(family, socket.SOCK_STREAM)
            try:
                await sock.bind((listen_ip, 0))
                await sock.connect((addr.ip, addr.port))
            except OSError as exc:
                sock.close()
                raise OpenConnectionError(f"Failed to open TCP stream to {maddr}: {exc}") from exc
            except BaseException:  # cancelled (dial timeout)
                sock.close()
                raise
            return RawConnection(TrioTCPStream(trio.SocketStream(sock)), True)

        transport.dial = dial  # type: ignore[method-assign]  # no source hook in 0.8.1


def listen_multiaddrs(host: IHost) -> list[str]:
    """The host's listen addresses with its peer id, as text (after host.run has started)."""
    pid = host.get_id().to_base58()
    out = []
    for addr in host.get_addrs():
        text = str(addr)
        out.append(text if "/p2p/" in text else f"{text}/p2p/{pid}")
    return out


def negotiated_protocols(host: IHost, peer_id: ID) -> list[tuple[str | None, str | None]]:
    """(security, muxer) protocol ids of each open connection to `peer_id`."""
    out = []
    for conn in host.get_network().get_connections(peer_id):
        sec = getattr(conn, "get_negotiated_security_protocol", lambda: None)()
        mux = getattr(conn, "get_negotiated_muxer_protocol", lambda: None)()
        out.append((sec, mux))
    return out


def connected_peers(host: IHost) -> list[ID]:
    return [pid for pid, conns in host.get_network().get_connections_map().items() if conns]
