"""The attacker of `dsonode bench sybil`: one libp2p host (a real process) that mints many keys
and publishes their signed spam through the peers it is given.

    python -m dsonode.bench._sybil_attacker --listen /ip4/127.0.0.N/tcp/P --peer MADDR ...
        --space HEX --recipe FILE --keys 1000 --votes 10000 --stamp-bits B

The recipe (JSON, written by the benchmark) lists the spam: `{"spam": [{"text", "code"
(base64 of a 964-byte code to submit, e.g. copied from the honest gossip)}], "targets": [hex
ids of honest lessons to vote down]}`. The attacker does its own work, and reports its CPU time
for it: keys, stamps of the network's difficulty (PROTOCOL.md 18), signatures. It joins the
space's topic through dsonode.net.gossip like any node and publishes batches under the
pipeline's per-peer rate (so what is measured is admission and trust, not rate limiting).
Output: JSON lines (`ready`, `connected`, `signed` with cpu_s, `done` with totals).
"""

from __future__ import annotations

import argparse
import base64
import json
import random
import signal
import sys
import time
from collections.abc import Sequence

import multiaddr
import trio
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from libp2p.peer.id import ID

from dsonode.core import stamp, wire
from dsonode.core.peerinfo import parse_multiaddr
from dsonode.identity import public_key_bytes
from dsonode.net.dialer import BackoffPolicy, Dialer
from dsonode.net.gossip import Gossip, GossipConfig
from dsonode.net.host import HostConfig, build_host, connected_peers

#: Gossip messages a second: 128-item batches, under the pipeline's 500 items/s per origin.
MSGS_PER_S = 3.0


def emit(obj: dict[str, object]) -> None:
    print(json.dumps(obj), flush=True)


def sign_all(args: argparse.Namespace, recipe: dict) -> list[bytes]:
    """Every spam item, signed (and stamped) by the attacker's keys."""
    rng = random.Random(args.seed)
    keys = [Ed25519PrivateKey.generate() for _ in range(args.keys)]
    space = bytes.fromhex(args.space)
    raws: list[bytes] = []
    spam_ids: list[bytes] = []
    for i, entry in enumerate(recipe["spam"]):
        key = keys[i % len(keys)]
        author = public_key_bytes(key)
        prov = []
        if args.stamp_bits:
            eid = wire.experience_id("ops", entry["text"])
            prov = [(stamp.STAMP_KEY, stamp.mint(eid, author, args.stamp_bits))]
        exp = wire.make_experience(key, "ops", entry["text"], provenance=prov)
        code = base64.b64decode(entry["code"])
        sub = wire.make_submission(key, exp.id, space, code)
        raws += [wire.encode_item(exp), wire.encode_item(sub)]
        spam_ids.append(exp.id)
    targets = [bytes.fromhex(t) for t in recipe["targets"]]
    for v in range(args.votes):
        key = keys[v % len(keys)]
        if v % 2 and targets:  # bury an honest lesson
            raws.append(wire.encode_item(wire.make_feedback(key, rng.choice(targets), -1.0)))
        else:  # praise spam
            raws.append(wire.encode_item(wire.make_feedback(key, rng.choice(spam_ids), 1.0)))
    return raws


async def amain(args: argparse.Namespace) -> None:
    with open(args.recipe, encoding="utf-8") as f:
        recipe = json.load(f)
    cpu0, t0 = time.process_time(), time.monotonic()
    raws = sign_all(args, recipe)
    batches = wire.pack_batches(raws)
    emit(
        {
            "event": "signed",
            "items": len(raws),
            "batches": len(batches),
            "cpu_s": round(time.process_time() - cpu0, 3),
            "wall_s": round(time.monotonic() - t0, 3),
        }
    )
    key = Ed25519PrivateKey.generate()  # the transport identity (one more free key)
    host = build_host(key, HostConfig(listen=args.listen))
    peers = [parse_multiaddr(m, require_peer_id=True) for m in args.peer]
    targets = {ID.from_base58(p.peer_id) for p in peers if p.peer_id is not None}

    async def handler(topic: str, origin: ID, data: bytes) -> bool:
        return True  # the attacker relays nothing of interest; it only publishes

    gossip = Gossip(host, GossipConfig(), wire.encode_batch, handler)
    dialer = Dialer(host, peers, BackoffPolicy(initial_s=0.2, max_s=2.0), check_interval_s=0.2)
    async with (
        host.run([multiaddr.Multiaddr(args.listen)]),
        gossip.running(),
        trio.open_nursery() as nursery,
    ):
        topic = await gossip.join(args.space)
        emit({"event": "ready", "peer_id": host.get_id().to_base58()})
        nursery.start_soon(dialer.run)
        with trio.move_on_after(args.connect_timeout):
            while not targets <= set(gossip.pubsub.peers) & set(connected_peers(host)):
                await trio.sleep(0.1)
        await trio.sleep(2.0)  # let the mesh form around us
        emit({"event": "connected", "peers": len(set(gossip.pubsub.peers) & targets)})
        t1 = time.monotonic()
        with gossip.publish_rate(MSGS_PER_S, 2):
            for data in batches:
                await gossip.publish_raw(topic, data)
        await trio.sleep(2.0)  # let the last messages leave
        emit(
            {
                "event": "done",
                "published_items": len(raws),
                "published_msgs": len(batches),
                "publish_s": round(time.monotonic() - t1, 2),
                "cpu_s_total": round(time.process_time() - cpu0, 3),
            }
        )
        nursery.cancel_scope.cancel()


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--listen", required=True)
    p.add_argument("--peer", action="append", default=[])
    p.add_argument("--space", required=True)
    p.add_argument("--recipe", required=True)
    p.add_argument("--keys", type=int, default=1000)
    p.add_argument("--votes", type=int, default=10000)
    p.add_argument("--stamp-bits", type=int, default=0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--connect-timeout", type=float, default=60.0)
    args = p.parse_args(argv)
    if not 1 <= args.keys <= 100_000 or not 0 <= args.votes <= 1_000_000:
        p.error("--keys 1..100000, --votes 0..1000000")
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    trio.run(amain, args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
