"""One sync peer in one process, for tests: serve a store over /dso/sync/1.0.0, or pull.

    python -m qa.sync_probe --store DIR --listen /ip4/127.0.0.2/tcp/0 \
        [--make-items N] [--pull-from /ip4/127.0.0.3/tcp/4001/p2p/12D3KooW...] \
        [--misbehave garbage|oversize|slow|wrong-item] [--run-seconds 60]

prints one JSON object per line on stdout:

    {"event": "ready", "peer_id": ..., "addrs": [...], "items": N}
    {"event": "synced", "report": {...}, "items": N}             (with --pull-from)
    {"event": "sync_error", "error": "FrameError", "message": ...}  (with --pull-from)
    {"event": "stats", "server": {...}}                           (at exit)

--make-items N signs N experiences and one submission of each with a fresh key and stores
them first. --misbehave replaces the honest responder by one that answers every request with
garbage, an oversize frame header, nothing at all, or (wrong-item) a well-formed items answer
holding an item that was not asked for. The process stops after --run-seconds, on
SIGTERM/SIGINT, or right after a pull (--exit-after-pull).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import signal
import sys
from collections.abc import Sequence
from pathlib import Path

import multiaddr
import trio
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from libp2p.abc import INetStream
from libp2p.peer.id import ID
from libp2p.peer.peerinfo import PeerInfo

from dsonode.core import sync as core
from dsonode.core.constants import CODE_BYTES
from dsonode.core.errors import DsoError
from dsonode.core.peerinfo import parse_multiaddr
from dsonode.core.wire import encode_item, make_experience, make_submission, now_ms
from dsonode.net.host import HostConfig, build_host, listen_multiaddrs
from dsonode.net.sync import PROTOCOL, SyncConfig, SyncServer, read_message, sync_with
from dsonode.store.lmdb_store import Store

DEFAULT_SPACE = hashlib.sha256(b"dsonode sync probe space").hexdigest()


def emit(obj: dict) -> None:
    sys.stdout.write(json.dumps(obj, separators=(",", ":"), default=str) + "\n")
    sys.stdout.flush()


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m qa.sync_probe", description=__doc__)
    p.add_argument("--store", required=True, type=Path)
    p.add_argument("--listen", required=True)
    p.add_argument("--space", default=DEFAULT_SPACE)
    p.add_argument("--make-items", type=int, default=0)
    p.add_argument("--pull-from")
    p.add_argument("--misbehave", choices=("garbage", "oversize", "slow", "wrong-item"))
    p.add_argument("--frame-timeout", type=float, default=10.0)
    p.add_argument("--exit-after-pull", action="store_true")
    p.add_argument("--run-seconds", type=float, default=60.0)
    args = p.parse_args(argv)
    if not 0 <= args.make_items <= 100_000:
        p.error("--make-items must be 0..100000")
    if not 0 < args.run_seconds <= 3600 or not 0 < args.frame_timeout <= 600:
        p.error("--run-seconds must be in (0, 3600], --frame-timeout in (0, 600]")
    try:
        args.space_id = bytes.fromhex(args.space)
        if len(args.space_id) != 32:
            raise ValueError
    except ValueError:
        p.error("--space must be 64 hex characters")
    try:
        if args.pull_from:
            parse_multiaddr(args.pull_from, require_peer_id=True)
    except DsoError as exc:
        p.error(str(exc))
    return args


def make_items(store: Store, space_id: bytes, n: int) -> None:
    key = Ed25519PrivateKey.generate()
    base = now_ms() - 10 * 24 * 3600 * 1000  # spread over the last ten days
    raws = []
    for i in range(n):
        created = base + i * 1_000_003 % (10 * 24 * 3600 * 1000)
        exp = make_experience(key, "sync/probe", f"Lesson number {i} of the sync probe.",
                              tags=[f"t{i % 7}"], created=created)  # fmt: skip
        code = hashlib.sha256(exp.id).digest()[:4] + bytes(CODE_BYTES - 4)
        code = bytes([0, 0, 0x80, 0x3F]) + code[4:]  # scale 1.0: finite, positive
        sub = make_submission(key, exp.id, space_id, code, created=created + 1)
        raws += [encode_item(exp), encode_item(sub)]
    for start in range(0, len(raws), 512):
        store.put_items(raws[start : start + 512])


async def misbehaving_handler(mode: str, stream: INetStream) -> None:
    """Reads one request, then answers it wrongly (each mode one kind of fault)."""
    try:
        await read_message(stream, 10.0)
        if mode == "garbage":
            await stream.write(b"\x05\xc1\xc1\xc1\xc1\xc1")  # a frame of reserved bytes
        elif mode == "oversize":
            await stream.write(b"\xff\xff\xff\x0f" + b"\x00" * 1000)
        elif mode == "slow":
            await trio.sleep(30)
        elif mode == "wrong-item":
            # Inventory: one bucket of one item it will not serve right (fake digest).
            resp = core.Inventory(((0, 1, bytes(32)),))
            await stream.write(core.encode_frame(core.encode_message(resp)))
            await read_message(stream, 10.0)  # the hashes request
            fake = hashlib.sha256(b"fake").digest()
            await stream.write(core.encode_frame(core.encode_message(core.Hashes((fake,)))))
            await read_message(stream, 10.0)  # the items request
            resp2 = core.Items((b"\x01not the item asked for",), 1)
            await stream.write(core.encode_frame(core.encode_message(resp2)))
        await trio.sleep(5)
    except Exception as exc:  # the probe only reports; it is the other side under test
        emit({"event": "misbehave_done", "error": type(exc).__name__})


async def amain(args: argparse.Namespace) -> None:
    store = Store(args.store, space_id=args.space_id)
    try:
        if args.make_items:
            make_items(store, args.space_id, args.make_items)
        host_config = HostConfig(listen=args.listen)
        host = build_host(Ed25519PrivateKey.generate(), host_config)
        config = SyncConfig(frame_timeout_s=args.frame_timeout)
        server = SyncServer(host, store, config)
        if args.misbehave:
            mode = args.misbehave

            async def handler(stream: INetStream) -> None:
                await misbehaving_handler(mode, stream)

            host.set_stream_handler(PROTOCOL, handler)
        else:
            server.register()
        with (
            trio.move_on_after(args.run_seconds),
            trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals,
        ):
            async with host.run([multiaddr.Multiaddr(host_config.listen_addr.tcp_multiaddr)]):
                emit(
                    {
                        "event": "ready",
                        "peer_id": host.get_id().to_base58(),
                        "addrs": listen_multiaddrs(host),
                        "items": sum(store.counts()[k] for k in ("experiences", "submissions")),
                    }
                )
                async with trio.open_nursery() as nursery:

                    async def stop_on_signal() -> None:
                        async for _ in signals:
                            nursery.cancel_scope.cancel()
                            return

                    nursery.start_soon(stop_on_signal)
                    if args.pull_from:
                        await pull(host, store, args, config)
                        if args.exit_after_pull:
                            nursery.cancel_scope.cancel()
        emit({"event": "stats", "server": vars(server.stats)})
    finally:
        store.close()


async def pull(host, store: Store, args: argparse.Namespace, config: SyncConfig) -> None:
    addr = parse_multiaddr(args.pull_from, require_peer_id=True)
    peer = ID.from_base58(addr.peer_id)
    try:
        with trio.fail_after(15):
            await host.connect(PeerInfo(peer, [multiaddr.Multiaddr(addr.tcp_multiaddr)]))
        report = await sync_with(host, peer, store, args.space_id, config=config)
    except (DsoError, trio.TooSlowError, OSError) as exc:
        emit({"event": "sync_error", "error": type(exc).__name__, "message": str(exc)[:300]})
        return
    except Exception as exc:  # a libp2p dial error: report it, do not crash the probe
        emit({"event": "sync_error", "error": type(exc).__name__, "message": str(exc)[:300]})
        return
    counts = store.counts()
    emit(
        {
            "event": "synced",
            "report": report.as_dict(),
            "items": counts["experiences"] + counts["submissions"],
        }
    )


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
