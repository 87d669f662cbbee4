"""SIGKILL during ingest, over and over, on one data directory; nothing acknowledged is lost.

One cycle (`kill9_cycle`): start a real node on the data directory, check it against what the
previous cycle left (see below), ingest with `add_experience` from two clients at once, and
SIGKILL the node at a random moment. Then, with the node dead, `check_store_offline` opens
the store (it must open clean), verifies every stored item's signature, checks that every
acknowledged item is there with its consensus code (the node's own submitted code as the
aggregation re-encodes it),
rebuilds the index from LMDB and records its answers to random query vectors. The next
start must reproduce them exactly: the node's index after a crash is a fresh rebuild from
LMDB, with the same ids and codes (checked through `search` by vector, k = 100, which is
exact below 4,000 rows, and through `stats.indexed`).

`add_experience` replies only after its commit (LMDB syncs on commit), so a reply is a
promise. The experience, the node's signed submission and its consensus are one LMDB write
transaction (`Store.put_items(..., consensus_if_absent=...)`), so after any kill every stored
experience has its consensus: the offline check requires it of every experience, acknowledged
or not (an add in flight at the kill is either wholly there or wholly absent).
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
from dsonode.core.constants import DIM
from dsonode.core.errors import DsoError
from dsonode.testnet.process import NodeProcess

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
    node: Any,  # anything with client(timeout): a NodeProcess or a testnet NodeHandle
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
    from dsonode.core.aggregate import aggregate_codes
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
            # a lone node's consensus is its one submission as the aggregation re-encodes it
            # (same sign bits, the unit median's scale: Library.add_experience)
            if not own or aggregate_codes([own[0].code]).code != cons.code:
                raise Kill9Failure(
                    f"consensus of {cons.experience_id.hex()} is not the node's submitted code"
                )
            wire.decode_item(own[0].raw)
            n_cons += 1
        for rec in store.iter_experiences_by_time(0, None):  # one transaction per add
            if store.get_consensus(space, rec.id) is None:
                raise Kill9Failure(f"experience {rec.id.hex()} is stored without its consensus")
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
            # Every stored row, vouched or not: this compares the index, not the trust policy.
            hits = c.search(vector=q, k=100, include_unvouched=True)
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


# ------------------------------------------------------------------ consensus updates and sync
#
# Two real nodes on loopback: the victim V and its peer P. Phase "consensus": P ingests with
# `add_experience` and gossips each experience with its submission; V embeds it, stores its own
# submission and recomputes the consensus from both. Phase "sync": P's store is filled first
# with `items` generated experiences, each with a submission of V's space by a third author
# (qa.sync_probe.make_items), and V pulls them over /dso/sync/1.0.0, embedding,
# submitting and recomputing as they come. Either way V is SIGKILLed at random moments, and
# with V dead `check_consensus_offline` requires: the store opens, every stored item verifies,
# and every consensus record not marked pending (see dsonode/store/lmdb_store.py, Guarantees)
# equals a fresh computation from the stored submissions (records of a local add: the node's
# own code as the only submission). Pending records are recomputed by the daemon when it
# starts. A last start must finish the work (V holds all P's experiences, nothing pending, its
# own submission on each) and its index must answer exactly as a rebuild from its LMDB.

NET_IPS = ("127.0.0.61", "127.0.0.62")


@dataclass
class ConsensusCheck:
    experiences: int = 0
    submissions: int = 0
    consensus: int = 0
    pending: int = 0
    recomputed_equal: int = 0
    local_single: int = 0


def check_consensus_offline(
    data_dir: Path, quorum: int = 3, method: str = "median", committee_size: int | None = 7
) -> ConsensusCheck:
    """With the node dead: the store opens clean, items verify, consensus is consistent."""
    from dsonode.core import committee, wire
    from dsonode.core.aggregate import aggregate_codes
    from dsonode.core.consensus import compute_consensus
    from dsonode.identity import load_key, public_key_bytes
    from dsonode.store import Store

    author = public_key_bytes(load_key(Path(data_dir) / "node.key"))
    out = ConsensusCheck()
    with Store(Path(data_dir) / "store") as store:
        spaces = store.known_spaces()
        if len(spaces) != 1:
            raise Kill9Failure(f"expected one embedding space in the store, found {len(spaces)}")
        space = spaces[0]
        pending = set(store.pending_ids())
        out.pending = len(pending)
        for rec in store.iter_experiences_by_time(0, None):
            wire.decode_item(rec.raw)
            out.experiences += 1
        for sub in store.iter_submissions_by_time(0, None):
            wire.decode_item(sub.raw)
            out.submissions += 1
        # The daemon's committee draw for a network of this size (small networks: everyone).
        size = len({a for a, _ in store.iter_reputation()} | {author})
        limit = committee.verify_threshold(committee_size, size)
        for cons in store.iter_consensus(space):
            out.consensus += 1
            exp_id = cons.experience_id
            if exp_id in pending:
                continue
            exp = store.get_experience(exp_id)
            if exp is None:
                raise Kill9Failure(f"consensus of {exp_id.hex()} without its experience")
            subs = [
                s
                for s in store.get_submissions(exp_id, space)
                if committee.in_committee(exp_id, s.author, exp.author, limit)
            ]
            if "method" not in (cons.stats or {}):  # a local add's single-code record
                if (
                    len(subs) != 1
                    or subs[0].author != author
                    or aggregate_codes([subs[0].code]).code != cons.code
                ):
                    raise Kill9Failure(
                        f"consensus of {exp_id.hex()} is a single code but {len(subs)} "
                        "submissions are stored and it is not marked pending"
                    )
                out.local_single += 1
                continue
            fresh = compute_consensus(
                subs,
                experience_id=exp_id,
                space_id=space,
                domain=exp.domain,
                now_ms=0,
                quorum=quorum,
                method=method,
            )
            got = (cons.code, cons.count, cons.confirmed)
            if (
                fresh is None
                or (fresh.record.code, fresh.record.count, fresh.record.confirmed) != got
            ):
                raise Kill9Failure(
                    f"consensus of {exp_id.hex()} differs from a recomputation of its "
                    f"{len(subs)} stored submissions and is not marked pending"
                )
            out.recomputed_equal += 1
    return out


def index_answers(data_dir: Path, queries: list[np.ndarray]) -> tuple[int, list]:
    """(rows, answers) of an index rebuilt from the store (node dead)."""
    from dsonode.api.service import _full_query
    from dsonode.store import CodeIndex, Store

    with Store(Path(data_dir) / "store") as store:
        index = CodeIndex.from_store(store, store.known_spaces()[0])
    answers = [
        [(i.hex(), round(float(s), 6)) for i, s in index.search(_full_query(q), k=100)]
        for q in queries
    ]
    return len(index), answers


def exact_scores(data_dir: Path, query: np.ndarray, ids_hex: list[str]) -> dict[str, float]:
    """Exact search scores of these ids' stored consensus codes (node dead); a missing
    consensus scores NaN (so it never equals a live score)."""
    from dsonode.api.service import _full_query
    from dsonode.store import CodeIndex, Store

    if not ids_hex:
        return {}
    with Store(Path(data_dir) / "store") as store:
        space = store.known_spaces()[0]
        recs = [store.get_consensus(space, bytes.fromhex(i)) for i in ids_hex]
    found = [r for r in recs if r is not None]
    n = max(1, len(found))
    index = CodeIndex(capacity=n, candidates=n, rescore=n)  # exhaustive: exact
    if found:
        index.add(
            [r.experience_id for r in found],
            [r.code for r in found],
            domains=[r.domain for r in found],
            confirmed=[r.confirmed for r in found],
        )
    out = {i.hex(): round(float(sc), 6) for i, sc in index.search(_full_query(query), k=n)}
    return {i: out.get(i, float("nan")) for i in ids_hex}


def _stats(node: Any) -> dict[str, Any]:  # a NodeProcess or a testnet NodeHandle
    with node.client(timeout=30) as c:
        return c.stats()


def _counters(node: Any) -> dict[str, Any]:
    return _stats(node)["network"].get("counters", {})


def _wait(what: str, fn: Any, timeout: float) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            value = fn()
        except (ClientError, RpcError, OSError):
            value = None
        if value:
            return value
        time.sleep(0.3)
    raise Kill9Failure(f"timed out after {timeout:.0f} s waiting for {what}")


@dataclass
class NetKill9Result:
    phase: str
    runs: int = 0
    failures: list[str] = field(default_factory=list)
    kill_delays_s: list[float] = field(default_factory=list)
    #: V's experiences and pending marks found offline after each kill.
    experiences_at_kill: list[int] = field(default_factory=list)
    pending_at_kill: list[int] = field(default_factory=list)
    recomputed_equal: int = 0
    peer_experiences: int = 0
    final_experiences: int = 0
    repaired_at_start: list[int] = field(default_factory=list)
    #: Kills that came while V still lacked some of P's items (sync phase: mid-pull).
    kills_before_complete: int = 0
    #: The final live answers equal the rebuild's ids and order (see run_kill9_net).
    rebuild_order_identical: bool | None = None
    elapsed_s: float = 0.0

    def summary(self) -> dict[str, Any]:
        return {
            "phase": self.phase,
            "runs": self.runs,
            "kills_before_complete": self.kills_before_complete,
            "rebuild_order_identical": self.rebuild_order_identical,
            "failures": self.failures[:5],
            "kill_delays_s": [round(d, 2) for d in self.kill_delays_s],
            "experiences_at_kill": self.experiences_at_kill,
            "pending_at_kill": self.pending_at_kill,
            "repaired_at_start": self.repaired_at_start,
            "consensus_records_checked": self.recomputed_equal,
            "peer_experiences": self.peer_experiences,
            "final_experiences": self.final_experiences,
            "elapsed_s": round(self.elapsed_s, 1),
        }


def run_kill9_net(
    root: Path,
    phase: str,
    runs: int,
    rng: random.Random,
    items: int = 2000,
    max_delay_s: float = 6.0,
    progress: Any = None,
) -> NetKill9Result:
    """`runs` SIGKILLs of the victim during consensus updates ("consensus") or a sync pull
    ("sync"), each followed by the offline check; then a last start that must finish the work.
    Failures are collected, not raised; every process started here is stopped here."""
    if phase not in ("consensus", "sync"):
        raise ValueError(phase)
    from dsonode.testnet import Testnet, free_port
    from dsonode.testnet.plan import NodePlan, TestnetPlan

    root = Path(root)
    result = NetKill9Result(phase)
    t0 = time.perf_counter()
    # Two nodes of the testnet harness, each dialling the other; started, killed and
    # restarted one at a time (not `Testnet.start`, which starts all and waits for a mesh).
    plan = TestnetPlan(
        tuple(
            NodePlan(index=k, name=name, ip=ip, port=free_port(ip), dials=(1 - k,))
            for k, (name, ip) in enumerate(zip(("victim", "peer"), NET_IPS, strict=True))
        )
    )
    net = Testnet(plan, root, grace=30.0, node_args=lambda _n: ["--sync-interval", "2"])
    victim, peer = net.prepare()
    v_dir, p_dir = victim.data_dir, peer.data_dir

    def start(k: int) -> None:
        net.start_node(k)
        net.wait_healthy(net.start_timeout, [k])

    queries = random_queries(rng)
    stop = threading.Event()
    threads: list[threading.Thread] = []
    acked: list[tuple[str, str, str]] = []
    errors: list[BaseException] = []
    try:
        start(0)
        space = _stats(victim)["space_id"]
        if phase == "sync":
            from dsonode.store import Store
            from qa.sync_probe import make_items

            with Store(p_dir / "store", space_id=space) as store:
                make_items(store, bytes.fromhex(space), items)
                store.clear_pending(store.pending_ids())  # P is only the source here
        start(1)
        for run in range(runs + 1):
            if not victim.running():
                start(0)  # stale socket, locks and pending marks: must come up
            _wait("the victim to connect", lambda: _stats(victim)["network"]["connected"], 60)
            if run > 0:  # what the start recomputed (the counter is set before any sync)
                counters = _wait(
                    "the start-up repair",
                    lambda: "repaired_at_start" in _counters(victim) and _counters(victim),
                    120,
                )
                repaired = int(counters["repaired_at_start"])
                result.repaired_at_start.append(repaired)
                if repaired != result.pending_at_kill[-1]:  # the start redid exactly those
                    raise Kill9Failure(
                        f"the start recomputed {repaired} records, the kill left "
                        f"{result.pending_at_kill[-1]} pending"
                    )
            if run == runs:
                break
            before = _stats(victim)["store"]["experiences"]
            if phase == "consensus":
                stop.clear()
                threads = [
                    threading.Thread(target=ingest, args=(peer, 0, acked, stop, errors, run))
                ]
                threads[0].start()
            # Items reach V (gossip, or the pull), then a random moment.
            _wait(
                "items to reach the victim",
                lambda b=before: (
                    _stats(victim)["store"]["experiences"] > b
                    or _stats(victim)["store"]["experiences"] >= items
                ),
                90,
            )
            delay = rng.uniform(0.0, max_delay_s)
            time.sleep(delay)
            net.kill_node(0)
            stop.set()
            for t in threads:
                t.join(timeout=60)
            if errors:
                raise Kill9Failure(f"ingest on the peer failed: {errors[0]!r}")
            result.runs += 1
            result.kill_delays_s.append(delay)
            check = check_consensus_offline(v_dir)
            result.experiences_at_kill.append(check.experiences)
            if phase == "consensus" or check.experiences < items:
                result.kills_before_complete += 1
            result.pending_at_kill.append(check.pending)
            result.recomputed_equal += check.recomputed_equal
            if progress is not None:
                progress(result)
        # The last start: V must finish (catch-up by sync), settle, and match a rebuild.
        result.peer_experiences = _stats(peer)["store"]["experiences"]

        def settled() -> bool:
            s = _stats(victim)
            return (
                s["store"]["experiences"] >= result.peer_experiences
                and s["indexed"] == s["store"]["experiences"]
            )

        _wait("the victim to catch up with its peer", settled, 600)
        last = None
        while True:  # no consensus update for 2 s: quiescent (bounded by the wait above)
            updates = _counters(victim).get("consensus_updates")
            if updates == last:
                break
            last = updates
            time.sleep(2.0)
        with victim.client(timeout=120) as c:
            # Every stored row, vouched or not: this compares the index, not the trust policy.
            live = [
                [(h["id"], h["score"]) for h in c.search(vector=q, k=100, include_unvouched=True)]
                for q in queries
            ]
            final_stats = c.stats()
            result.final_experiences = final_stats["store"]["experiences"]
            indexed = final_stats["indexed"]
        if net.stop_node(0) != 0:
            result.failures.append("the final SIGTERM stop did not exit 0")
        final = check_consensus_offline(v_dir)
        if final.pending:
            result.failures.append(f"{final.pending} consensus records still pending at the end")
        if final.experiences < result.peer_experiences:
            result.failures.append("the victim did not finish the sync")
        rows, rebuilt = index_answers(v_dir, queries)
        if rows != indexed:
            result.failures.append(f"the node indexed {indexed} rows, a rebuild {rows}")
        # The live index was filled in arrival order, the rebuild in id order: above the
        # index's `rescore` (400) rows, equal full-code Hamming distances are broken by row
        # order, so the two may legitimately return different (equally near) rows. What must
        # hold is that every row the node returns carries exactly LMDB's consensus code:
        # its score equals the exact score of the stored code. Identical order is reported.
        result.rebuild_order_identical = rebuilt == live
        if rows <= 400 and rebuilt != live:
            result.failures.append("the live index differs from a rebuild from LMDB")
        for q, hits in zip(queries, live, strict=True):
            if exact_scores(v_dir, q, [h for h, _ in hits]) != dict(hits):
                result.failures.append("a live search score differs from LMDB's code")
                break
        own = _count_own(v_dir)
        if own < final.experiences:
            result.failures.append(f"{final.experiences - own} experiences lack our submission")
    except (Kill9Failure, DsoError) as exc:
        result.failures.append(f"{phase} run {result.runs}: {exc}")
    finally:
        stop.set()
        for t in threads:
            t.join(timeout=60)
        net.kill_node(0)
        net.stop()  # the peer: SIGTERM, SIGKILL after the grace period
    result.elapsed_s = time.perf_counter() - t0
    return result


def _count_own(data_dir: Path) -> int:
    from dsonode.identity import load_key, public_key_bytes
    from dsonode.store import Store

    author = public_key_bytes(load_key(Path(data_dir) / "node.key"))
    with Store(Path(data_dir) / "store") as store:
        return sum(s.author == author for s in store.iter_submissions_by_time(0, None))
