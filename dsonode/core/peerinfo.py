"""Pure helpers for peer ids and multiaddrs (no libp2p import, so they are cheap to test).

A dsonode identity is one Ed25519 key. Its libp2p peer id is the identity multihash of the
protobuf-encoded public key (libp2p peer-id spec: keys of 42 bytes or less are inlined):

    0x00 0x24                  identity multihash, 36-byte digest
    0x08 0x01 0x12 0x20        protobuf PublicKey{Type: Ed25519 (1), Data: 32 bytes}
    <32 raw public key bytes>

so the raw key and the peer id convert both ways without any lookup. The text form is base58btc
("12D3KooW..."). Multiaddrs accepted here are `/ip4|ip6/<ip>/tcp/<port>[/p2p/<peer id>]`, and
only loopback addresses unless the caller allows others: a test or a misconfigured node must
never send traffic anywhere else by accident.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass

from dsonode.core.errors import DsoError

#: Prefix of the 38-byte binary peer id of an Ed25519 key.
ED25519_PEER_ID_PREFIX = bytes([0x00, 0x24, 0x08, 0x01, 0x12, 0x20])
PEER_ID_BYTES = len(ED25519_PEER_ID_PREFIX) + 32  # 38
PUBLIC_KEY_BYTES = 32
#: Longest multiaddr text we parse (an ip6 address, a port and a peer id fit easily).
MAX_MULTIADDR_CHARS = 256
#: Base58 text of a 38-byte id is 52 characters; leave room but bound the work.
MAX_PEER_ID_CHARS = 64

_B58_ALPHABET = "123456789ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz"
_B58_INDEX = {c: i for i, c in enumerate(_B58_ALPHABET)}


class PeerAddrError(DsoError, ValueError):
    """A peer id or multiaddr is malformed, or names an address this node may not use."""


def b58encode(data: bytes) -> str:
    """Base58btc (Bitcoin alphabet), leading zero bytes kept as '1'."""
    n = int.from_bytes(data, "big")
    out = []
    while n:
        n, rem = divmod(n, 58)
        out.append(_B58_ALPHABET[rem])
    pad = len(data) - len(data.lstrip(b"\0"))
    return "1" * pad + "".join(reversed(out))


def b58decode(text: str) -> bytes:
    if len(text) > MAX_PEER_ID_CHARS:
        raise PeerAddrError(f"base58 text of {len(text)} characters is too long")
    n = 0
    for ch in text:
        try:
            n = n * 58 + _B58_INDEX[ch]
        except KeyError:
            raise PeerAddrError(f"invalid base58 character {ch!r}") from None
    body = n.to_bytes((n.bit_length() + 7) // 8, "big") if n else b""
    pad = len(text) - len(text.lstrip("1"))
    return b"\0" * pad + body


def peer_id_bytes_from_public_key(public_key: bytes) -> bytes:
    """The 38-byte binary libp2p peer id of a raw 32-byte Ed25519 public key."""
    if not isinstance(public_key, bytes | bytearray) or len(public_key) != PUBLIC_KEY_BYTES:
        raise PeerAddrError("an Ed25519 public key is exactly 32 bytes")
    return ED25519_PEER_ID_PREFIX + bytes(public_key)


def public_key_from_peer_id_bytes(peer_id: bytes) -> bytes:
    """The raw 32-byte Ed25519 public key inside a binary peer id; refuses other key types."""
    if len(peer_id) != PEER_ID_BYTES or not peer_id.startswith(ED25519_PEER_ID_PREFIX):
        raise PeerAddrError(
            "not the peer id of an Ed25519 key (expected 38 bytes 0x0024080112 20...)"
        )
    return bytes(peer_id[len(ED25519_PEER_ID_PREFIX) :])


def peer_id_from_public_key(public_key: bytes) -> str:
    """The text peer id ("12D3KooW...") of a raw 32-byte Ed25519 public key."""
    return b58encode(peer_id_bytes_from_public_key(public_key))


def public_key_from_peer_id(peer_id: str) -> bytes:
    """The raw 32-byte Ed25519 public key named by a text peer id."""
    if not isinstance(peer_id, str):
        raise PeerAddrError("a peer id is a base58 string")
    return public_key_from_peer_id_bytes(b58decode(peer_id))


@dataclass(frozen=True)
class PeerAddr:
    """A validated TCP multiaddr, optionally naming the peer that listens there."""

    ip: str
    port: int
    peer_id: str | None = None

    @property
    def tcp_multiaddr(self) -> str:
        family = "ip6" if ":" in self.ip else "ip4"
        return f"/{family}/{self.ip}/tcp/{self.port}"

    @property
    def multiaddr(self) -> str:
        if self.peer_id is None:
            return self.tcp_multiaddr
        return f"{self.tcp_multiaddr}/p2p/{self.peer_id}"

    def __str__(self) -> str:
        return self.multiaddr


def parse_multiaddr(
    text: str,
    *,
    allow_non_loopback: bool = False,
    require_peer_id: bool = False,
    allow_port_zero: bool = False,
) -> PeerAddr:
    """Parse and validate `/ip4|ip6/<ip>/tcp/<port>[/p2p/<peer id>]`.

    Raises PeerAddrError naming what is wrong. Non-loopback addresses are refused unless
    `allow_non_loopback`; port 0 ("any free port") only when `allow_port_zero` (listening).
    """
    if not isinstance(text, str):
        raise PeerAddrError("a multiaddr is a string")
    if len(text) > MAX_MULTIADDR_CHARS:
        raise PeerAddrError(f"multiaddr of {len(text)} characters (limit {MAX_MULTIADDR_CHARS})")
    parts = text.split("/")
    if len(parts) not in (5, 7) or parts[0] != "":
        raise PeerAddrError(f"multiaddr {text!r} is not /ip4|ip6/<ip>/tcp/<port>[/p2p/<id>]")
    _, family, ip_text, proto, port_text, *rest = parts
    if family not in ("ip4", "ip6"):
        raise PeerAddrError(f"multiaddr {text!r}: address family must be ip4 or ip6")
    try:
        ip = ipaddress.ip_address(ip_text)
    except ValueError:
        raise PeerAddrError(f"multiaddr {text!r}: {ip_text!r} is not an IP address") from None
    if (family == "ip4") != (ip.version == 4):
        raise PeerAddrError(f"multiaddr {text!r}: {ip_text!r} is not an {family} address")
    if not allow_non_loopback and not ip.is_loopback:
        raise PeerAddrError(
            f"multiaddr {text!r}: {ip_text} is not a loopback address "
            "(set allow_non_loopback to use other networks)"
        )
    if proto != "tcp":
        raise PeerAddrError(f"multiaddr {text!r}: only tcp is supported")
    if not port_text.isascii() or not port_text.isdigit() or len(port_text) > 5:
        raise PeerAddrError(f"multiaddr {text!r}: port {port_text!r} is not a number")
    port = int(port_text)
    if port > 65535 or (port == 0 and not allow_port_zero):
        raise PeerAddrError(f"multiaddr {text!r}: port {port} out of range")
    peer_id = None
    if rest:
        if rest[0] != "p2p":
            raise PeerAddrError(f"multiaddr {text!r}: expected /p2p/<peer id> after the port")
        peer_id = rest[1]
        public_key_from_peer_id(peer_id)  # validates: an Ed25519 peer id, canonical base58
        if peer_id_from_public_key(public_key_from_peer_id(peer_id)) != peer_id:
            raise PeerAddrError(f"multiaddr {text!r}: peer id is not in canonical base58")
    elif require_peer_id:
        raise PeerAddrError(f"multiaddr {text!r}: a peer address needs /p2p/<peer id>")
    return PeerAddr(ip=ip.compressed, port=port, peer_id=peer_id)
