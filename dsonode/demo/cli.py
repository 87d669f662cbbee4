"""`dsonode demo`: start a real node, feed it the packaged sample experiences, vote, query.

Until the network layer lands (issue 5), peers are simulated in this process: each has its own
Ed25519 key and signs its own submissions, which go through the strict wire decoder and the
median aggregation exactly as gossiped ones will. The node itself is a real `dsonode run`
subprocess answering over its Unix socket.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from importlib import resources
from pathlib import Path
from typing import Any

DEFAULT_QUERY = "How do I make sure the answer to an equation is right?"
#: Bounded wait for the node to load its model and open the socket.
START_TIMEOUT_S = 180.0


def register(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "demo",
        help="run the main job on the embedded defaults (node + sample experiences + query)",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--data-dir", type=Path, default=None, help="keep the node's data here")
    p.add_argument("--query", default=DEFAULT_QUERY, help="the question to ask at the end")
    p.add_argument("--peers", type=int, default=4, help="simulated honest peers (>= 2)")
    p.add_argument("--byzantine", type=int, default=1, help="simulated Byzantine peers")
    p.set_defaults(func=cmd_demo)


def load_samples() -> list[dict[str, Any]]:
    """The packaged sample experiences (dsonode/data/sample_experiences.jsonl)."""
    text = resources.files("dsonode.data").joinpath("sample_experiences.jsonl").read_text("utf-8")
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def cmd_demo(args: argparse.Namespace) -> int:
    from dsonode.api.client import Client

    if args.peers < 2 or args.byzantine < 0 or args.byzantine >= args.peers:
        print("dsonode demo: need --peers >= 2 and 0 <= --byzantine < --peers", file=sys.stderr)
        return 2
    samples = load_samples()
    owned_tmp = args.data_dir is None
    data_dir = Path(tempfile.mkdtemp(prefix="dsonode-demo-")) if owned_tmp else args.data_dir
    data_dir.mkdir(parents=True, exist_ok=True)
    socket_path = data_dir / "dsonode.sock"
    print(f"[1/4] starting a node in {data_dir} (loading the encoder takes a few seconds)")
    node = subprocess.Popen(
        [sys.executable, "-m", "dsonode", "run", "--data-dir", str(data_dir)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        _wait_for_socket(node, socket_path)
        with Client(socket_path, timeout=120.0) as client:
            print(f"[2/4] adding {len(samples)} sample experiences over {socket_path}")
            for sample in samples:
                client.add_experience(sample["text"], sample["domain"], sample.get("tags", ()))
            stats = client.stats()
            print(
                f"      the node holds {stats['store']['experiences']} experiences, "
                f"{stats['indexed']} indexed, in space {stats['space_id'][:16]}..."
            )
            print(
                f"[3/4] {args.peers} simulated peers vote on each experience's code "
                f"({args.byzantine} of them Byzantine); median consensus:"
            )
            _simulate_votes(samples, args.peers, args.byzantine)
            print(f"[4/4] query: {args.query!r}")
            for rank, hit in enumerate(client.search(args.query, k=3), start=1):
                print(f"      {rank}. [{hit['score']:.3f}] ({hit['domain']}) {hit['text']}")
    finally:
        _stop(node)
        if owned_tmp:
            shutil.rmtree(data_dir, ignore_errors=True)
    return 0


def _wait_for_socket(node: subprocess.Popen, socket_path: Path) -> None:
    from dsonode.api.client import Client, ClientError

    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        if node.poll() is not None:
            err = node.stderr.read() if node.stderr else ""
            raise SystemExit(f"dsonode demo: the node exited early:\n{err[-2000:]}")
        if socket_path.exists():
            try:
                with Client(socket_path, timeout=5.0) as client:
                    client.health()
                return
            except ClientError:
                pass
        time.sleep(0.2)
    raise SystemExit(f"dsonode demo: the node did not answer within {START_TIMEOUT_S:.0f} s")


def _stop(node: subprocess.Popen) -> None:
    if node.poll() is None:
        node.send_signal(signal.SIGTERM)
        try:
            node.wait(timeout=30)
        except subprocess.TimeoutExpired:
            node.kill()
            node.wait(timeout=10)


def _simulate_votes(samples: list[dict[str, Any]], peers: int, byzantine: int) -> None:
    """Each peer signs a submission of its code per experience; the median decides."""
    import numpy as np
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    from dsonode.core import aggregate, bitdelta, wire
    from dsonode.embed import get_embedder

    embedder = get_embedder()
    space = bytes.fromhex(embedder.space_id)
    vectors = embedder.embed([s["text"] for s in samples])
    keys = [Ed25519PrivateKey.generate() for _ in range(peers)]
    rng = np.random.default_rng(int.from_bytes(os.urandom(4), "little"))
    rejected_honest = rejected_byzantine = confirmed = 0
    for sample, vector in zip(samples, vectors, strict=True):
        author = keys[0]
        exp = wire.make_experience(author, sample["domain"], sample["text"], sample.get("tags", ()))
        codes = []
        for i, key in enumerate(keys):
            v = vector
            if i >= peers - byzantine:  # a Byzantine peer submits a poisoned vector
                v = vector + rng.normal(0.0, 10.0 / np.sqrt(v.size), v.size).astype(np.float32)
                v = v / np.linalg.norm(v)
            sub = wire.make_submission(key, exp.id, space, bitdelta.encode(v))
            # what a receiving node does: strict decode (schema, signature, clock) first
            checked = wire.decode_item(wire.encode_item(sub), now_ms=wire.now_ms())
            codes.append(checked.code)
        result = aggregate.aggregate_codes(codes)
        is_byz = np.arange(peers) >= peers - byzantine
        rejected_byzantine += int(np.count_nonzero(~result.accepted & is_byz))
        rejected_honest += int(np.count_nonzero(~result.accepted & ~is_byz))
        confirmed += int(result.confirmed)
    n = len(samples)
    print(
        f"      {confirmed}/{n} consensus codes confirmed; Byzantine submissions rejected: "
        f"{rejected_byzantine}/{n * byzantine}; honest ones rejected: {rejected_honest}/"
        f"{n * (peers - byzantine)}"
    )
