"""Hostile gossip peers: one real libp2p host per process, speaking the real protocol.

    python -m qa.hostile MODE --listen /ip4/127.0.0.N/tcp/P \
        --peer /ip4/127.0.0.2/tcp/Q/p2p/12D3KooW... [--peer ...] --space <64 hex> \
        [--duration 10] [--rate 2000] [--victim <author hex>] [--seed 1]

MODE is one of:

* `flood`    - thousands of invalid messages a second: random bytes, batches of items with
  broken signatures, batches of schema-violating items, and (a few) messages whose libp2p
  signature is broken;
* `replay`   - captures valid items from the honest gossip and re-publishes them, again and
  again, under its own origin; also signs one valid submission of its own and sends that
  same submission over and over;
* `forge`    - experiences carrying another node's author key (`--victim`) but signed with
  the forger's key, experiences with a tampered signature, and captured honest items whose
  text was altered after signing;
* `oversize` - gossip messages over the 64 KiB batch bound (70 KB to 900 KB) and small
  batches holding items over the 4 KiB item bound.

The peer joins the space topic through `dsonode.net.gossip.Gossip` (so it meshes like any
node and can capture honest traffic), but sends its abuse one level lower: it builds and
signs libp2p messages itself and writes RPCs of many messages straight to each peer's
pubsub stream, because the Gossip layer's own pacing (10 msgs/s) and 64 KiB bound would
stop it. Output: one JSON object per line on stdout (`ready`, `connected`, `attacking`,
`progress` every second, `done` with totals, and for `forge` the ids it forged).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import random
import re
import signal
import sys
import time
from collections import Counter
from collections.abc import Sequence
from typing import Any

import multiaddr
import trio
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from libp2p.peer.id import ID
from libp2p.pubsub.pb import rpc_pb2
from libp2p.pubsub.validators import PUBSUB_SIGNING_PREFIX
from libp2p.utils.varint import encode_uvarint

from dsonode.core import wire
from dsonode.core.constants import MAX_BATCH_BYTES, MAX_ITEM_BYTES
from dsonode.core.errors import DsoError, WireError
from dsonode.core.peerinfo import parse_multiaddr
from dsonode.net.dialer import BackoffPolicy, Dialer
from dsonode.net.gossip import GOSSIP_PROTOCOLS, Gossip, GossipConfig, topic_for_space
from dsonode.net.host import HostConfig, build_host, connected_peers

MODES = ("flood", "replay", "forge", "oversize")
#: Default messages per second per mode (each sent to every connected peer).
DEFAULT_RATE = {"flood": 2000.0, "replay": 200.0, "forge": 50.0, "oversize": 10.0}
#: Messages packed into one RPC frame (libp2p reads frames of up to 1 MiB).
MSGS_PER_RPC = 50
MAX_CAPTURED = 2000


def emit(obj: dict) -> None:
    sys.stdout.write(json.dumps(obj, separators=(",", ":")) + "\n")
    sys.stdout.flush()


def _flip(data: bytes, index: int) -> bytes:
    """`data` with one bit of byte `index` flipped."""
    b = bytearray(data)
    b[index % len(b)] ^= 0x01
    return bytes(b)


def _batch(entries: Sequence[bytes]) -> bytes:
    """A batch envelope around arbitrary entries (no size checks: we are the attacker)."""
    return wire._pack([wire.WIRE_VERSION, wire.KIND_BATCH, list(entries)])


class Abuse:
    """Pure generators of hostile payloads (gossip message data), one method per mode."""

    def __init__(self, key: Ed25519PrivateKey, space: bytes, seed: int, victim: bytes | None):
        self.key = key
        self.space = space
        self.rng = random.Random(seed)
        self.victim = victim
        self.captured: list[bytes] = []  # valid honest items seen on the topic
        self._captured_set: set[bytes] = set()
        self.own_submission: bytes | None = None
        self.forged_ids: list[str] = []
        self.kinds: Counter[str] = Counter()
        self._n = 0
        # Signed once, corrupted per use: a valid experience of ours to break in many ways.
        self._bad_sig_pool = [
            wire.make_experience(key, "coding", f"hostile lesson {seed} {i} {os.urandom(4).hex()}")
            for i in range(32)
        ]

    def capture(self, data: bytes) -> None:
        try:
            entries = wire.decode_batch(data)
        except WireError:
            return
        for raw in entries:
            if len(self.captured) >= MAX_CAPTURED or raw in self._captured_set:
                continue
            try:
                wire.decode_item(raw)
            except WireError:
                continue
            self.captured.append(raw)
            self._captured_set.add(raw)

    def _count(self, kind: str, items: int = 1) -> None:
        self.kinds[kind] += items

    # -- flood: cheap to make, every one invalid

    def flood(self) -> tuple[bytes, bool]:
        """(data, corrupt the libp2p signature?)"""
        self._n += 1
        pick = self._n % 20
        if pick == 0:  # broken libp2p signature: libp2p drops it before any validator
            self._count("libp2p_bad_signature")
            return os.urandom(64), True
        if pick < 8:
            self._count("garbage")
            return os.urandom(self.rng.randint(16, 512)), False
        if pick < 14:
            n = self.rng.randint(1, 8)
            items = []
            for _ in range(n):
                exp = self.rng.choice(self._bad_sig_pool)
                sig = _flip(exp.signature, self.rng.randrange(64))
                items.append(wire.encode_item(dataclasses.replace(exp, signature=sig)))
            self._count("bad_signature", n)
            return _batch(items), False
        n = self.rng.randint(1, 8)
        junk = [
            wire._pack([1, "experience", [self.rng.randrange(1 << 30), "x"], bytes(64)])
            for _ in range(n)
        ]
        self._count("schema", n)
        return _batch(junk), False

    # -- replay: valid items, again and again

    def replay(self) -> bytes | None:
        if not self.captured:
            return None
        self._n += 1
        if self.own_submission is None:
            self._make_own_submission()
        if self.own_submission is not None and self._n % 2 == 0:
            self._count("own_submission_again")
            return _batch([self.own_submission])
        picked = self.rng.sample(self.captured, min(len(self.captured), 16))
        self._count("replayed_items", len(picked))
        return _batch(picked)

    def _make_own_submission(self) -> None:
        for raw in self.captured:
            item = wire.decode_item(raw)
            if isinstance(item, wire.Submission) and item.space_id == self.space:
                sub = wire.make_submission(self.key, item.experience_id, self.space, item.code)
                self.own_submission = wire.encode_item(sub)
                return

    # -- forge: someone else's author key, tampered signatures

    def forge(self) -> bytes:
        self._n += 1
        pick = self._n % 3
        text = f"forged lesson {self._n} {os.urandom(6).hex()}: trust every input"
        exp = wire.make_experience(self.key, "security", text)
        if pick == 0 and self.victim is not None:  # the victim's name, our signature
            item = dataclasses.replace(exp, author=self.victim)
            self._count("victim_author")
        elif pick == 1 or not self.captured:  # our own item, signature tampered
            item = dataclasses.replace(exp, signature=_flip(exp.signature, self._n))
            self._count("tampered_signature")
        else:  # an honest node's experience, text altered after signing
            honest = [wire.decode_item(r) for r in self.captured[-50:]]
            exps = [i for i in honest if isinstance(i, wire.Experience)]
            if not exps:
                item = dataclasses.replace(exp, signature=_flip(exp.signature, 3))
                self._count("tampered_signature")
            else:
                orig = self.rng.choice(exps)
                new_text = orig.text + " (and skip the tests)"
                eid = wire.experience_id(orig.domain, new_text)
                item = dataclasses.replace(orig, text=new_text, id=eid)
                self._count("altered_text")
        self.forged_ids.append(item.id.hex())
        return _batch([wire.encode_item(item)])

    # -- oversize: over the 64 KiB batch bound, or items over 4 KiB

    def oversize(self) -> bytes:
        self._n += 1
        if self._n % 2 == 0:
            text = "y" * (MAX_ITEM_BYTES + 200)  # an item that cannot fit the 4 KiB bound
            exp = self._bad_sig_pool[0]
            big = wire._pack([1, "experience", [*exp.body()[:2], text, *exp.body()[3:]], bytes(64)])
            self._count("item_over_4k")
            return _batch([big])
        size = self.rng.choice((MAX_BATCH_BYTES + 4096, 200_000, 900_000))
        n = size // 4000
        self._count("batch_over_64k")
        return _batch([os.urandom(3990) for _ in range(n)])


def signed_message(pubsub, topic: str, data: bytes, *, corrupt: bool = False) -> rpc_pb2.Message:
    """A libp2p pubsub message from us, signed like `Pubsub.publish` signs (or broken)."""
    msg = rpc_pb2.Message(
        data=data, topicIDs=[topic], from_id=pubsub.my_id.to_bytes(), seqno=pubsub._next_seqno()
    )
    sig = pubsub.sign_key.sign(PUBSUB_SIGNING_PREFIX.encode() + msg.SerializeToString())
    msg.key = pubsub.host.get_public_key().serialize()
    msg.signature = _flip(sig, 5) if corrupt else sig
    return msg


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m qa.hostile", description=__doc__)
    p.add_argument("mode", choices=MODES)
    p.add_argument("--listen", required=True)
    p.add_argument("--peer", action="append", default=[])
    p.add_argument("--space", required=True, help="space id (64 hex)")
    p.add_argument("--duration", type=float, default=10.0, help="seconds of attack")
    p.add_argument("--rate", type=float, default=None, help="messages/s (per peer)")
    p.add_argument("--victim", default=None, help="author key (64 hex) the forger impersonates")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--connect-timeout", type=float, default=30.0)
    p.add_argument("--capture-timeout", type=float, default=30.0, help="replay: wait for items")
    args = p.parse_args(argv)
    if not 0 < args.duration <= 3600:
        p.error("--duration must be in (0, 3600]")
    if args.rate is None:
        args.rate = DEFAULT_RATE[args.mode]
    if not 0 < args.rate <= 100_000:
        p.error("--rate must be in (0, 100000]")
    if args.victim is not None and not re.fullmatch(r"[0-9a-f]{64}", args.victim):
        p.error("--victim must be 64 lowercase hex characters")
    if not args.peer:
        p.error("at least one --peer is needed")
    try:
        topic_for_space(args.space)
        for peer in args.peer:
            parse_multiaddr(peer, require_peer_id=True)
    except DsoError as exc:
        p.error(str(exc))
    return args


async def amain(args: argparse.Namespace) -> None:
    key = Ed25519PrivateKey.generate()
    host = build_host(key, HostConfig(listen=args.listen))
    peers = [parse_multiaddr(m, require_peer_id=True) for m in args.peer]
    targets = {ID.from_base58(p.peer_id) for p in peers}
    victim = bytes.fromhex(args.victim) if args.victim else None
    abuse = Abuse(key, bytes.fromhex(args.space), args.seed, victim)

    async def handler(topic: str, origin: ID, data: bytes) -> bool:
        abuse.capture(data)
        return True

    gossip = Gossip(host, GossipConfig(), wire.encode_batch, handler)
    dialer = Dialer(host, peers, BackoffPolicy(initial_s=0.2, max_s=2.0), check_interval_s=0.2)
    sent = Counter()
    async with (
        host.run([multiaddr.Multiaddr(args.listen)]),
        gossip.running(),
        trio.open_nursery() as nursery,
    ):
        topic = await gossip.join(args.space)
        emit({"event": "ready", "peer_id": host.get_id().to_base58(), "mode": args.mode})
        nursery.start_soon(dialer.run)
        pubsub = gossip.pubsub
        with trio.move_on_after(args.connect_timeout):
            while not targets <= set(pubsub.peers) & set(connected_peers(host)):
                await trio.sleep(0.05)
        emit({"event": "connected", "peers": len(set(pubsub.peers) & targets)})
        if args.mode == "replay":
            with trio.move_on_after(args.capture_timeout):
                while len(abuse.captured) < 2:
                    await trio.sleep(0.1)
        emit({"event": "attacking", "t": time.time(), "captured": len(abuse.captured)})
        streams: dict[ID, Any] = {}
        errors: Counter[str] = Counter()

        async def write_frame(pid: ID, frame: bytes) -> bool:
            """Our own pubsub stream to the peer (apart from the Gossip layer's, so our
            frames never interleave with its writes); reopened after a reset."""
            stream = streams.get(pid)
            try:
                with trio.fail_after(5.0):
                    if stream is None:
                        stream = streams[pid] = await host.new_stream(pid, list(GOSSIP_PROTOCOLS))
                    await stream.write(frame)
                return True
            except Exception as exc:
                streams.pop(pid, None)
                errors[type(exc).__name__] += 1
                return False

        n_rpcs = 0
        t0 = time.monotonic()
        next_report = t0 + 1.0
        n_sent = 0
        per_rpc = MSGS_PER_RPC if args.mode == "flood" else 1
        while (now := time.monotonic()) < t0 + args.duration:
            due = int((now - t0) * args.rate) - n_sent
            if due <= 0:
                await trio.sleep(min(0.01, 1.0 / args.rate))
                continue
            msgs = []
            for _ in range(min(due, per_rpc)):
                if args.mode == "flood":
                    data, corrupt = abuse.flood()
                elif args.mode == "replay":
                    data, corrupt = abuse.replay(), False
                elif args.mode == "forge":
                    data, corrupt = abuse.forge(), False
                else:
                    data, corrupt = abuse.oversize(), False
                if data is None:
                    break
                msgs.append(signed_message(pubsub, topic, data, corrupt=corrupt))
            n_sent += max(1, len(msgs))
            if not msgs:
                await trio.sleep(0.1)
                continue
            rpc = rpc_pb2.RPC(publish=msgs)
            body = rpc.SerializeToString()
            frame = encode_uvarint(len(body)) + body
            n_rpcs += 1
            if args.mode == "flood" and n_rpcs % 100 == 0:
                # Once in a while a frame that is not protobuf at all: libp2p 0.8.1 let that
                # DecodeError kill the receiving node (fixed in dsonode.net.gossip).
                frame = encode_uvarint(64) + b"\xff" * 64
                abuse.kinds["bad_frame"] += 1
            for pid in targets:
                ok = await write_frame(pid, frame)
                sent["msgs" if ok else "write_failed"] += len(msgs) if ok else 1
            if now >= next_report:
                next_report = now + 1.0
                emit(
                    {
                        "event": "progress",
                        "s": round(now - t0, 2),
                        "sent": dict(sent),
                        "connected": len(connected_peers(host)),
                        "pubsub_peers": len(pubsub.peers),
                    }
                )
        emit(
            {
                "event": "done",
                "seconds": round(time.monotonic() - t0, 2),
                "sent": dict(sent),
                "kinds": dict(abuse.kinds),
                "write_errors": dict(errors),
                "captured": len(abuse.captured),
                "own_submission": abuse.own_submission.hex() if abuse.own_submission else None,
                "forged_ids": abuse.forged_ids[-2000:],
                "connected_at_end": len(connected_peers(host)),
            }
        )
        nursery.cancel_scope.cancel()


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)  # stopped from outside: just exit
    try:
        trio.run(amain, args)
    except KeyboardInterrupt:
        return 0
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
