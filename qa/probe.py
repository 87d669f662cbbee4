"""A standalone gossip peer for tests and measurements: one real libp2p host in one process.

    python -m qa.probe --listen /ip4/127.0.0.2/tcp/40002 \
        [--peer /ip4/127.0.0.3/tcp/40003/p2p/12D3KooW...] [--publish 300] [--wait-mesh 2]

prints one JSON object per line on stdout:

    {"event": "ready", "peer_id": ..., "addrs": [...]}
    {"event": "peer_up", "peer": ..., "security": "/noise", "muxer": "/yamux/1.0.0"}
    {"event": "peer_down", "peer": ...}
    {"event": "published", "items": N, "msgs": M, "seconds": S}
    {"event": "recv", "origin": ..., "seqs": [...], "lat_ms": [...]}
    {"event": "stats", "gossip": {...}, "dialer": {...}}      (at exit)

Each payload is `seq (u64 BE) | publish time in ns (u64 BE) | padding`; a gossip message is
a msgpack array of payloads (a stand-in for dsonode.core.wire's batch envelope). The process
stops after --run-seconds, on SIGTERM/SIGINT, or, with --exit-after-publish, once what it
published has been written out.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import re
import signal
import struct
import sys
import time
from collections.abc import Sequence

import msgpack
import multiaddr
import trio
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from libp2p.peer.id import ID

from dsonode.core.errors import DsoError
from dsonode.core.peerinfo import parse_multiaddr
from dsonode.net.dialer import BackoffPolicy, Dialer
from dsonode.net.gossip import Gossip, GossipConfig, topic_for_space
from dsonode.net.host import (
    HostConfig,
    build_host,
    connected_peers,
    listen_multiaddrs,
    negotiated_protocols,
)

HEADER = struct.Struct(">QQ")
MAX_ITEMS_PER_MSG = 256


def emit(obj: dict) -> None:
    sys.stdout.write(json.dumps(obj, separators=(",", ":")) + "\n")
    sys.stdout.flush()


def encode_batch(payloads: Sequence[bytes]) -> bytes:
    return msgpack.packb(list(payloads), use_bin_type=True)


def decode_batch(data: bytes) -> list[bytes]:
    """Bounded decode of a probe batch; ValueError on anything unexpected."""
    obj = msgpack.unpackb(
        data, raw=False, max_array_len=MAX_ITEMS_PER_MSG, max_bin_len=len(data), max_str_len=0
    )
    if not isinstance(obj, list) or not all(isinstance(x, bytes) for x in obj):
        raise ValueError("probe batch is not an array of bin")
    return obj


def make_payload(seq: int, size: int) -> bytes:
    head = HEADER.pack(seq, time.time_ns())
    return head + b"\x00" * max(0, size - len(head))


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m qa.probe", description=__doc__)
    p.add_argument("--listen", required=True)
    p.add_argument("--peer", action="append", default=[])
    p.add_argument("--seed-hex", help="32-byte Ed25519 seed as hex (a fixed identity)")
    p.add_argument("--space", default=hashlib.sha256(b"dsonode probe space").hexdigest())
    p.add_argument("--publish", type=int, default=0, help="payloads to publish")
    p.add_argument("--payload-bytes", type=int, default=200)
    p.add_argument("--unbatched", action="store_true", help="one payload per gossip message")
    p.add_argument("--publish-rate", type=float, default=None, help="max gossip msgs/s")
    p.add_argument("--batch-items", type=int, default=None)
    p.add_argument("--item-rate", type=float, default=0.0, help="payloads/s (0: all at once)")
    p.add_argument("--wait-mesh", type=int, default=0, help="mesh peers to wait for first")
    p.add_argument("--wait-mesh-timeout", type=float, default=30.0)
    p.add_argument("--start-delay", type=float, default=0.0)
    p.add_argument("--exit-after-publish", action="store_true")
    p.add_argument("--run-seconds", type=float, default=120.0)
    p.add_argument("--redial-initial-s", type=float, default=0.2)
    p.add_argument("--redial-max-s", type=float, default=2.0)
    args = p.parse_args(argv)
    if not 0 <= args.publish <= 1_000_000:
        p.error("--publish must be 0..1000000")
    if not HEADER.size <= args.payload_bytes <= 4096:
        p.error(f"--payload-bytes must be {HEADER.size}..4096")
    if not 0 < args.run_seconds <= 3600:
        p.error("--run-seconds must be in (0, 3600]")
    if args.seed_hex is not None and not re.fullmatch(r"[0-9a-f]{64}", args.seed_hex):
        p.error("--seed-hex must be 64 lowercase hex characters")
    if not 0 <= args.item_rate <= 100_000 or not 0 <= args.start_delay <= 600:
        p.error("--item-rate must be 0..100000 and --start-delay 0..600")
    try:
        topic_for_space(args.space)
        for peer in args.peer:
            parse_multiaddr(peer, require_peer_id=True)
    except DsoError as exc:
        p.error(str(exc))
    return args


async def amain(args: argparse.Namespace) -> None:
    if args.seed_hex:
        key = Ed25519PrivateKey.from_private_bytes(bytes.fromhex(args.seed_hex))
    else:
        key = Ed25519PrivateKey.generate()
    host_config = HostConfig(listen=args.listen)
    host = build_host(key, host_config)
    peers = [parse_multiaddr(m, require_peer_id=True) for m in args.peer]
    cfg_kwargs = {}
    if args.publish_rate is not None:
        cfg_kwargs["max_publish_per_s"] = args.publish_rate
    if args.batch_items is not None:
        cfg_kwargs["batch_max_items"] = args.batch_items
    config = GossipConfig(**cfg_kwargs)

    async def handler(topic: str, origin: ID, data: bytes) -> bool:
        now = time.time_ns()
        try:
            items = decode_batch(data)
        except (ValueError, msgpack.UnpackException) as exc:
            emit({"event": "bad", "origin": origin.to_base58(), "error": str(exc)[:200]})
            return False
        seqs, lats = [], []
        for item in items:
            if len(item) < HEADER.size:
                return False
            seq, t_ns = HEADER.unpack_from(item)
            seqs.append(seq)
            lats.append(round((now - t_ns) / 1e6, 3))
        emit(
            {
                "event": "recv",
                "origin": origin.to_base58(),
                "seqs": seqs,
                "lat_ms": lats,
                "t_ns": now,
            }
        )
        return True

    gossip = Gossip(host, config, encode_batch, handler)
    dialer = Dialer(
        host,
        peers,
        BackoffPolicy(initial_s=args.redial_initial_s, max_s=max(args.redial_max_s, 0.01)),
        check_interval_s=0.1,
        dial_timeout_s=5.0,
    )

    async def watch_peers() -> None:
        known: set[ID] = set()
        while True:
            now = set(connected_peers(host))
            for pid in now - known:
                protos = negotiated_protocols(host, pid)
                sec, mux = protos[0] if protos else (None, None)
                emit({"event": "peer_up", "peer": pid.to_base58(), "security": sec, "muxer": mux})
            for pid in known - now:
                emit({"event": "peer_down", "peer": pid.to_base58()})
            known = now
            await trio.sleep(0.05)

    async def publish(topic: str) -> None:
        await trio.sleep(args.start_delay)
        if args.wait_mesh:
            ok = await gossip.wait_for_mesh(topic, args.wait_mesh, args.wait_mesh_timeout)
            emit({"event": "mesh", "ok": ok, "peers": len(gossip.mesh_peers(topic))})
        t0 = time.monotonic()
        t0_ns = time.time_ns()
        for seq in range(args.publish):
            if args.item_rate > 0:  # steady offered load, for latency measurements
                await trio.sleep(max(0.0, t0 + seq / args.item_rate - time.monotonic()))
            payload = make_payload(seq, args.payload_bytes)
            if args.unbatched:
                await gossip.publish_raw(topic, encode_batch([payload]))
            else:
                while not gossip.submit(topic, payload):
                    await trio.sleep(0.01)
                if seq % 64 == 63:
                    await trio.sleep(0)  # let the publisher run while we produce
        drained = await gossip.drain(60.0)
        emit(
            {
                "event": "published",
                "items": args.publish,
                "msgs": gossip.stats.published_msgs,
                "seconds": round(time.monotonic() - t0, 4),
                "t0_ns": t0_ns,
                "drained": drained,
            }
        )

    def final_stats() -> None:
        emit(
            {
                "event": "stats",
                "gossip": gossip.stats.as_dict(),
                "dialer": {
                    k: {
                        "attempts": s.attempts,
                        "successes": s.successes,
                        "failures": s.failures,
                        "connected": s.connected,
                    }
                    for k, s in dialer.stats.peers.items()
                },
            }
        )

    with (
        trio.move_on_after(args.run_seconds),
        trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals,
    ):
        listen = multiaddr.Multiaddr(host_config.listen_addr.tcp_multiaddr)
        async with host.run([listen]), gossip.running():
            topic = await gossip.join(args.space)
            emit(
                {
                    "event": "ready",
                    "peer_id": host.get_id().to_base58(),
                    "addrs": listen_multiaddrs(host),
                    "topic": topic,
                }
            )
            try:
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(dialer.run)
                    nursery.start_soon(watch_peers)

                    async def publish_then_maybe_exit() -> None:
                        if args.publish:
                            await publish(topic)
                        if args.exit_after_publish:
                            nursery.cancel_scope.cancel()

                    nursery.start_soon(publish_then_maybe_exit)

                    async def stop_on_signal() -> None:
                        async for _ in signals:
                            nursery.cancel_scope.cancel()
                            return

                    nursery.start_soon(stop_on_signal)
            finally:
                final_stats()


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        trio.run(amain, args)
    except DsoError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
