"""SIGKILL during ingest, over and over, on one data directory; nothing acknowledged is lost.

One cycle (`kill9_cycle`): start a real node on the data directory, check it against what the
previous cycle left (see below), ingest with `add_experience` from two clients at once, and
SIGKILL the node at a random moment. Then, with the node dead, `check_store_offline` opens
the store (it must open clean), verifies every stored item's signature, checks that every
acknowledged item is there with its consensus code (equal to the node's own submitted code),
rebuilds the index from LMDB and records its answers to random query vectors. The next
start must reproduce them exactly: the node's index after a crash is a fresh rebuild from
LMDB, with the same ids and codes (checked through `search` by vector, k = 100, which is
exact below 4,000 rows, and through `stats.indexed`).

`add_experience` replies only after its commits (LMDB syncs on commit), so a reply is a
promise; an add in flight at the kill may have committed its experience but not its
consensus, which is allowed (at most one per client) and repaired by adding it again.
"""

from __future__ import annotations

import random
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from dsonode.api.client import ClientError
from dsonode.api.jsonrpc import RpcError
from dsonode.api.testing import NodeProcess
from dsonode.core.constants import DIM
from dsonode.core.errors import DsoError

TOPICS = [
    "induction proofs",
    "sorting algorithms",
    "unit tests",
    "bread baking",
    "database indexes",
    "memory leaks",
    "chess openings",
    "tax returns",
    "garden soil",
    "network timeouts",
]
MAX_ITEMS_PER_CLIENT = 1500  # bounds the ingest in count; the kill bounds it in time
INGEST_TIME_LIMIT_S = 120.0
#: Random query vectors compared between the offline rebuild and the restarted node.
QUERIES = 4


class Kill9Failure(DsoError):
    """A crash-safety property did not hold (the message says which)."""


def lesson(client_no: int, i: int, run: int = 0) -> tuple[str, str, list[str]]:
    """The i-th item client `client_no` adds (distinct texts per run)."""
    topic = TOPICS[(i * 7 + client_no) % len(TOPICS)]
    text = (
        f"Lesson {run}-{client_no}-{i}: when working on {topic}, item {i * 31 + client_no} says "
        f"to check assumption number {i % 97} before step {i % 13}."
    )
    return f"crash{client_no}", text, [f"t{i % 5}"]


def ingest(
    node: NodeProcess,
    client_no: int,
    acked: list,
    stop: threading.Event,
    errors: list,
    run: int = 0,
) -> None:
    """Add items until the node dies or `stop` is set; record those the node acknowledged."""
    deadline = time.monotonic() + INGEST_TIME_LIMIT_S
    client = node.client(timeout=30)
    try:
        for i in range(MAX_ITEMS_PER_CLIENT):
            if stop.is_set() or time.monotonic() > deadline:
                return
            domain, text, tags = lesson(client_no, i, run)
            try:
                item = client.add_experience(text, domain, tags)
            except ClientError:
                return  # the node is gone: this item was not acknowledged
            acked.append((item["id"], text, domain))
    except BaseException as exc:  # anything but the node going away is a failure
        errors.append(exc)
    finally:
        client.close()


def ingest_and_kill(
    node: NodeProcess, rng: random.Random, run: int, clients: int = 2, max_delay_s: float = 4.0
) -> tuple[list[tuple[str, str, str]], float]:
    """Ingest from `clients` threads; SIGKILL the node at a random moment once items flow.

    Returns the acknowledged (id, text, domain) and the delay of the kill."""
    acked: list[tuple[str, str, str]] = []
    errors: list[BaseException] = []
    stop = threading.Event()
    threads = [
        threading.Thread(target=ingest, args=(node, n, acked, stop, errors, run))
        for n in range(clients)
    ]
    for t in threads:
        t.start()
    try:
        deadline = time.monotonic() + 60
        while len(acked) < 5 and time.monotonic() < deadline:
            time.sleep(0.01)
        delay = rng.uniform(0.0, max_delay_s)
        time.sleep(delay)
    finally:
        node.kill()  # SIGKILL: no clean-up at all
        stop.set()
        for t in threads:
            t.join(timeout=60)
    if any(t.is_alive() for t in threads):
        raise Kill9Failure("an ingest thread did not stop after the kill")
    if errors:
        raise Kill9Failure(f"ingest failed before the kill: {errors[0]!r}")
    return acked, delay


def random_queries(rng: random.Random, n: int = QUERIES) -> list[np.ndarray]:
    gen = np.random.default_rng(rng.randrange(2**32))
    out = []
    for _ in range(n):
        v = gen.standard_normal(DIM).astype(np.float32)
        out.append(v / np.float32(np.linalg.norm(v)))
    return out


@dataclass
class OfflineCheck:
    experiences: int
    consensus: int
    index_rows: int
    expected_answers: list[list[tuple[str, float]]] = field(default_factory=list)


def check_store_offline(
    data_dir: Path, acked: list[tuple[str, str, str]], queries: list[np.ndarray]
) -> OfflineCheck:
    """With the node dead: the store opens clean and holds every acknowledged item intact."""
    from dsonode.api.service import _full_query
    from dsonode.core import wire
    from dsonode.identity import load_key, public_key_bytes
    from dsonode.store import CodeIndex, Store

    author = public_key_bytes(load_key(Path(data_dir) / "node.key"))
    with Store(Path(data_dir) / "store") as store:  # must open (locks retaken, no repair)
        spaces = store.known_spaces()
        if len(spaces) != 1:
            raise Kill9Failure(f"expected one embedding space in the store, found {len(spaces)}")
        space = spaces[0]
        n_exp = 0
        for rec in store.iter_experiences_by_time(0, None):
            item = wire.decode_item(rec.raw)  # signature and all: nothing half-written
            if (item.id, item.text, item.domain) != (rec.id, rec.text, rec.domain):
                raise Kill9Failure(f"experience {rec.id.hex()} differs from its signed bytes")
            n_exp += 1
        n_cons = 0
        for cons in store.iter_consensus(space):
            own = [
                s for s in store.get_submissions(cons.experience_id, space) if s.author == author
            ]
            if not own or own[0].code != cons.code:
                raise Kill9Failure(
                    f"consensus of {cons.experience_id.hex()} is not the node's submitted code"
                )
            wire.decode_item(own[0].raw)
            n_cons += 1
        for exp_id, text, domain in acked:
            rec = store.get_experience(bytes.fromhex(exp_id))
            if rec is None or (rec.text, rec.domain) != (text, domain):
                raise Kill9Failure(f"acknowledged experience {exp_id} lost or changed")
            if store.get_consensus(space, bytes.fromhex(exp_id)) is None:
                raise Kill9Failure(f"acknowledged experience {exp_id} lost its consensus code")
        index = CodeIndex.from_store(store, space)
    answers = [
        [(i.hex(), round(float(s), 6)) for i, s in index.search(_full_query(q), k=100)]
        for q in queries
    ]
    return OfflineCheck(n_exp, n_cons, len(index), answers)


def check_restarted_node(node: NodeProcess, offline: OfflineCheck, queries: list[np.ndarray]):
    """The restarted node's index is exactly the offline rebuild (ids, order and scores)."""
    with node.client(timeout=120) as c:
        stats = c.stats()
        if stats["indexed"] != offline.index_rows:
            raise Kill9Failure(
                f"node indexed {stats['indexed']} rows, the rebuild from LMDB has "
                f"{offline.index_rows}"
            )
        if stats["store"]["experiences"] != offline.experiences:
            raise Kill9Failure("the node sees another number of experiences than LMDB holds")
        for q, expected in zip(queries, offline.expected_answers, strict=True):
            hits = c.search(vector=q, k=100)
            got = [(h["id"], h["score"]) for h in hits]
            if got != expected:
                raise Kill9Failure("search by vector differs between the node and the rebuild")


@dataclass
class Kill9Result:
    runs: int = 0
    acknowledged: int = 0
    items_lost: int = 0
    failures: list[str] = field(default_factory=list)
    kill_delays_s: list[float] = field(default_factory=list)
    acked_per_run: list[int] = field(default_factory=list)
    experiences_final: int = 0
    elapsed_s: float = 0.0

    def summary(self) -> dict[str, Any]:
        return {
            "runs": self.runs,
            "acknowledged": self.acknowledged,
            "items_lost": self.items_lost,
            "failures": self.failures[:5],
            "acked_per_run": self.acked_per_run,
            "kill_delays_s": [round(d, 2) for d in self.kill_delays_s],
            "experiences_final": self.experiences_final,
            "elapsed_s": round(self.elapsed_s, 1),
        }


def run_kill9(
    data_dir: Path,
    runs: int,
    rng: random.Random,
    max_delay_s: float = 4.0,
    progress: Any = None,
    node_args: tuple[str, ...] = (),
    on_start: Any = None,
) -> Kill9Result:
    """`runs` cycles of start, verify, ingest, SIGKILL, offline check; then a last start that
    verifies the last cycle and a clean SIGTERM stop. Failures are collected, not raised.

    on_start(node): called after every start (tests check the running process there)."""
    data_dir = Path(data_dir)
    result = Kill9Result()
    t0 = time.perf_counter()
    all_acked: list[tuple[str, str, str]] = []
    offline: OfflineCheck | None = None
    queries = random_queries(rng)
    for run in range(runs + 1):
        node = NodeProcess(data_dir, *node_args)
        try:
            node.start()  # stale socket, stale locks: must come up
            if on_start is not None:
                on_start(node)
            if offline is not None:
                check_restarted_node(node, offline, queries)
            if run == runs:
                with node.client(timeout=120) as c:
                    missing = [a for a in all_acked if _lost(c, a)]
                    result.items_lost = len(missing)
                    if missing:
                        result.failures.append(f"{len(missing)} acknowledged items lost")
                    result.experiences_final = c.stats()["store"]["experiences"]
                if node.stop() != 0:
                    result.failures.append("the final SIGTERM stop did not exit 0")
                break
            acked, delay = ingest_and_kill(node, rng, run, max_delay_s=max_delay_s)
            result.runs += 1
            result.kill_delays_s.append(delay)
            result.acked_per_run.append(len(acked))
            all_acked += acked
            result.acknowledged = len(all_acked)
            offline = check_store_offline(data_dir, all_acked, queries)
        except (Kill9Failure, DsoError) as exc:
            result.failures.append(f"run {run}: {exc}")
            break
        finally:
            node.kill()
        if progress is not None:
            progress(result)
    result.elapsed_s = time.perf_counter() - t0
    return result


def _lost(client: Any, acked: tuple[str, str, str]) -> bool:
    exp_id, text, domain = acked
    try:
        item = client.get(exp_id)
    except (ClientError, RpcError):  # NotFound is an RpcError
        return True
    return (item["text"], item["domain"]) != (text, domain) or item["submissions"] < 1
