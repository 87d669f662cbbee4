"""A TCP relay on loopback that a test can cut and heal: partitions between real processes.

One `LinkRelay` per *directed* link (node i dials node j): it listens on its own loopback
port and forwards every accepted connection, byte for byte, to node j's real listen address.
Node i is told to dial the relay's address with node j's real peer id (`/p2p/<id>`), so
Noise still authenticates j end to end: the relay sees only ciphertext and cannot pose as
anyone.

* `cut()` closes every live connection through the link (both sockets, so both nodes see a
  reset/EOF at once) and refuses new ones (accepted and reset at once) until `heal()`.
* Bounded: one thread per direction of each connection moves at most `CHUNK` bytes at a time
  (blocking `recv` then `sendall`), so nothing is buffered beyond one chunk and the kernel
  socket buffers; at most `max_connections` live connections per link.
* Loopback only: both the listen address and the target must be 127.0.0.0/8 (or ::1);
  anything else raises `RelayError` before a socket is opened.

`RelaySet` holds the relays of a whole plan and cuts or heals the links between two groups.
Threads, not trio: the test and the bench drive testnets from plain synchronous code.
"""

from __future__ import annotations

import contextlib
import ipaddress
import socket
import struct
import threading
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from dsonode.core.errors import DsoError

CHUNK = 64 * 1024
ACCEPT_POLL_S = 0.2


class RelayError(DsoError, ValueError):
    """A relay was asked for something it must not do (a non-loopback address, a bad port)."""


def _loopback(ip: str, what: str) -> str:
    try:
        addr = ipaddress.ip_address(ip)
    except ValueError:
        raise RelayError(f"{what}: {ip!r} is not an IP address") from None
    if not addr.is_loopback:
        raise RelayError(f"{what}: {ip} is not a loopback address (the relay is loopback-only)")
    return str(addr)


def _reset(sock: socket.socket) -> None:
    """Close with an RST (linger 0): the peer sees the connection die at once, as in a cut.

    shutdown() first: on Linux a bare close() does not wake a thread blocked in recv()."""
    with contextlib.suppress(OSError):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    with contextlib.suppress(OSError):
        sock.shutdown(socket.SHUT_RDWR)
    with contextlib.suppress(OSError):
        sock.close()


@dataclass
class LinkStats:
    accepted: int = 0  # connections forwarded
    refused: int = 0  # connections reset because the link was cut (or full)
    cut_connections: int = 0  # live connections closed by cut()
    bytes_forwarded: int = 0


class LinkRelay:
    """Forward connections accepted on (listen_ip, port) to (target_ip, target_port)."""

    def __init__(
        self,
        listen_ip: str,
        target_ip: str,
        target_port: int,
        *,
        port: int = 0,
        max_connections: int = 8,
        connect_timeout_s: float = 5.0,
        name: str = "",
    ) -> None:
        self.listen_ip = _loopback(listen_ip, "relay listen address")
        self.target = (_loopback(target_ip, "relay target"), target_port)
        if not 1 <= target_port <= 65535 or not 0 <= port <= 65535:
            raise RelayError("relay ports must be in 1..65535 (listen port 0: any)")
        if not 1 <= max_connections <= 1024:
            raise RelayError("max_connections must be 1..1024")
        self.name = name or f"{listen_ip}->{target_ip}:{target_port}"
        self.max_connections = max_connections
        self.connect_timeout_s = connect_timeout_s
        self.stats = LinkStats()
        self._lock = threading.Lock()
        self._open = True  # False while cut
        self._closed = False
        self._conns: set[tuple[socket.socket, socket.socket]] = set()
        self._ended: dict[tuple[socket.socket, socket.socket], int] = {}  # directions at EOF
        family = socket.AF_INET6 if ":" in self.listen_ip else socket.AF_INET
        self._listener = socket.socket(family, socket.SOCK_STREAM)
        self._listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._listener.bind((self.listen_ip, port))
        self._listener.listen(16)
        self._listener.settimeout(ACCEPT_POLL_S)
        self.port: int = self._listener.getsockname()[1]
        self._thread = threading.Thread(target=self._accept_loop, name=f"relay {self.name}")
        self._thread.daemon = True
        self._thread.start()

    @property
    def multiaddr(self) -> str:
        family = "ip6" if ":" in self.listen_ip else "ip4"
        return f"/{family}/{self.listen_ip}/tcp/{self.port}"

    @property
    def is_cut(self) -> bool:
        return not self._open

    def live(self) -> int:
        with self._lock:
            return len(self._conns)

    def cut(self) -> int:
        """Refuse new connections and reset every live one; how many were reset."""
        with self._lock:
            self._open = False
            conns = list(self._conns)
            self._conns.clear()
            self.stats.cut_connections += len(conns)
        for a, b in conns:
            _reset(a)
            _reset(b)
        return len(conns)

    def heal(self) -> None:
        with self._lock:
            self._open = True

    def close(self) -> None:
        """Stop accepting, reset everything, join the accept thread (bounded)."""
        self._closed = True
        self.cut()
        self._thread.join(timeout=5 * ACCEPT_POLL_S + 1)
        with contextlib.suppress(OSError):
            self._listener.close()

    def _accept_loop(self) -> None:
        while not self._closed:
            try:
                client, _addr = self._listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return  # listener closed
            with self._lock:
                admit = self._open and len(self._conns) < self.max_connections
                if not admit:
                    self.stats.refused += 1
            if not admit:
                _reset(client)
                continue
            # The dial to the target runs in its own thread: a slow target never blocks accept.
            threading.Thread(target=self._connect, args=(client,), daemon=True).start()

    def _connect(self, client: socket.socket) -> None:
        client.settimeout(None)
        try:
            upstream = socket.create_connection(self.target, timeout=self.connect_timeout_s)
        except OSError:
            _reset(client)
            return
        upstream.settimeout(None)
        pair = (client, upstream)
        with self._lock:
            if not self._open or self._closed:  # cut while we were dialling
                admit = False
                self.stats.refused += 1
            else:
                admit = True
                self._conns.add(pair)
                self.stats.accepted += 1
        if not admit:
            _reset(client)
            _reset(upstream)
            return
        for src, dst in ((client, upstream), (upstream, client)):
            threading.Thread(target=self._pump, args=(src, dst, pair), daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket, pair) -> None:
        """Copy src -> dst one bounded chunk at a time; on EOF half-close, on error reset both."""
        try:
            while True:
                data = src.recv(CHUNK)
                if not data:
                    with contextlib.suppress(OSError):
                        dst.shutdown(socket.SHUT_WR)
                    with self._lock:  # both directions ended: the connection is over
                        self._ended[pair] = self._ended.get(pair, 0) + 1
                        done = self._ended[pair] >= 2
                        if done:
                            self._ended.pop(pair, None)
                            self._conns.discard(pair)
                    if done:
                        src.close()
                        dst.close()
                    return
                dst.sendall(data)
                with self._lock:
                    self.stats.bytes_forwarded += len(data)
        except OSError:
            with self._lock:
                self._conns.discard(pair)
                self._ended.pop(pair, None)
            _reset(src)
            _reset(dst)


class RelaySet:
    """The relays of a testnet: `links[(i, j)]` carries node i's dials to node j."""

    def __init__(self, links: dict[tuple[int, int], LinkRelay]) -> None:
        self.links = links

    @classmethod
    def for_nodes(
        cls,
        addrs: Sequence[tuple[str, int]],
        pairs: Iterable[tuple[int, int]],
        avoid_ports: Iterable[int] = (),
    ) -> RelaySet:
        """One relay per directed pair (i, j), listening on node j's IP at a fresh port.

        `addrs[j]` = (ip, port) of node j's real listener; `avoid_ports` are ports planned for
        nodes that are not bound yet (a relay must not take one of them).
        """
        avoid = set(avoid_ports)
        links: dict[tuple[int, int], LinkRelay] = {}
        try:
            for i, j in pairs:
                ip, port = addrs[j]
                for _attempt in range(20):
                    relay = LinkRelay(ip, ip, port, name=f"{i}->{j}")
                    if relay.port not in avoid:
                        break
                    relay.close()
                else:
                    raise RelayError("no free relay port outside the planned node ports")
                avoid.add(relay.port)
                links[(i, j)] = relay
        except BaseException:
            for relay in links.values():
                relay.close()
            raise
        return cls(links)

    def addresses(self) -> dict[tuple[int, int], str]:
        return {pair: relay.multiaddr for pair, relay in self.links.items()}

    def between(self, a: Iterable[int], b: Iterable[int]) -> list[LinkRelay]:
        """The relays of every link from a group to the other, both directions."""
        sa, sb = set(a), set(b)
        return [
            r for (i, j), r in self.links.items() if (i in sa and j in sb) or (i in sb and j in sa)
        ]

    def cut(self, a: Iterable[int], b: Iterable[int]) -> int:
        return sum(r.cut() for r in self.between(a, b))

    def heal(self, a: Iterable[int], b: Iterable[int]) -> None:
        for r in self.between(a, b):
            r.heal()

    def stats(self) -> dict[str, dict[str, int]]:
        return {r.name: vars(r.stats).copy() for r in self.links.values()}

    def close(self) -> None:
        for relay in self.links.values():
            relay.close()

    def __enter__(self) -> RelaySet:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
