"""The node's library: the one owner of every write to its experiences, codes and consensus.

The socket service, the network daemon and extraction all change the library through the
public methods here; nothing else takes its locks or writes its store and index
(ARCHITECTURE.md "One owner per operation"). Every method blocks (embedding, LMDB commits), so
callers run them in worker threads.

Locks, always taken in this order when nested:
- `_write_lock` makes each write operation's check-then-write atomic (is there a submission
  of ours yet? a consensus?), and serialises consensus recomputations;
- `_index_lock` guards the code index (not thread-safe) for reads and writes;
- `_embed_lock` guards the embedder (one torch model and tokenizer); it is never held while
  waiting for another lock.
LMDB serialises its own transactions (see dsonode.store).

Publishing: what a local write produces (our experience, our submission, our vote) goes to
`publisher`, a thread-safe callable the network daemon attaches (`attach_publisher`); without
a network nothing is published. Items accepted from peers return what to publish instead,
because the daemon that called publishes them on its own event loop.

Our own vectors pass through `policy` before they become codes: honest (the identity) on
every real node; a Byzantine strategy (dsonode.library.byzantine) only on a testnet node,
injected by the composition root.

A light node's embedder is a `LightEmbedder` (dsonode.library.light): it stores, relays and
recomputes consensus like any node, but never embeds, so it never submits a code
(`own_submission` returns None and counts `light_skipped`) and refuses `add_experience`.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter, OrderedDict
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Protocol

import numpy as np
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from dsonode.core import bitdelta, committee, wire
from dsonode.core.aggregate import METHODS, WEIGHTED_METHODS, aggregate_codes
from dsonode.core.consensus import (
    ConsensusRecord,
    apply_reputation,
    compute_consensus,
    previous_verdicts,
    reputation_deltas,
)
from dsonode.core.errors import DsoError
from dsonode.core.peerinfo import public_key_from_peer_id
from dsonode.core.quota import Bucket, take
from dsonode.core.stamp import STAMP_KEY, mint, stamp_bits, stamp_of
from dsonode.core.trust import EvictionCandidate, Verdict, eviction_order, expired, serves
from dsonode.identity import public_key_bytes
from dsonode.library.light import LightEmbedder, LightNodeError
from dsonode.library.trust import TrustPolicy, TrustSettings, TrustView
from dsonode.store import CodeIndex, ExperienceRecord, Store
from dsonode.store.index import MAX_K as INDEX_MAX_K

log = logging.getLogger("dsonode.library")
#: Experiences whose first-store time `arrivals()` keeps (the most recent ones): enough for a
#: benchmark batch (`dsonode bench network` reads them after each batch), small in `stats`.
ARRIVALS_KEPT = 512

#: The estimate of the network size (committee threshold) is recounted at least this often,
#: and at once when a new author appears in the reputation table.
NETWORK_SIZE_REFRESH_S = 30.0
#: An author counts towards the estimate while its last judged submission is this recent: a
#: node that left stops inflating n (and shrinking every draw) after a week.
NETWORK_SIZE_WINDOW_S = 7 * 24 * 3600.0
#: Texts embedded per encoder call in `embed_base`: the embed lock is taken per chunk, so a
#: search waits for at most one chunk, not for a whole extraction.
EMBED_CHUNK = 64
#: A served search looks this many times deeper than k at first, then four times deeper per
#: round while too few results are served (unvouched items crowding the neighbourhood), up to
#: SERVED_SEARCH_MAX candidates: the index's largest k. More unvouched near-copies than that
#: nearer to a query than its vouched answers hide them (README "Limits").
SERVED_SEARCH_DEPTH = 3
#: Authors whose rate bucket is kept in memory (least recently seen dropped first: a dropped
#: author starts with a full bucket again, so this only bounds memory, never admits more
#: than one bucket's worth per key, which a fresh key gets anyway).
QUOTA_AUTHORS_KEPT = 100_000
SERVED_SEARCH_MAX = INDEX_MAX_K

Publisher = Callable[[list[bytes]], None]


class Embedder(Protocol):
    """What the library needs of dsonode.embed.Embedder."""

    space_id: str
    reference: np.ndarray | None
    model_name: str
    dim: int

    def embed_query(self, text: str, *, for_search: bool = False) -> np.ndarray: ...

    def encode_base(self, texts: list[str]) -> np.ndarray: ...


class VectorPolicy(Protocol):
    """What this node submits for its own exact embedding `vector` of `experience`."""

    #: The testnet attack it runs (None: honest).
    attack: str | None

    def vector(self, vector: np.ndarray, experience: wire.Experience | None) -> np.ndarray: ...


class HonestPolicy:
    """Every real node: submit the embedding itself."""

    attack: str | None = None

    def vector(self, vector: np.ndarray, experience: wire.Experience | None) -> np.ndarray:
        return vector


@dataclass(frozen=True)
class ConsensusRules:
    """How submissions become a consensus ([consensus] settings, validated by dsonode.config)."""

    quorum: int
    method: str
    committee: int | None  # expected submitters per experience; None = everyone
    #: author public key -> weight (absent authors weigh 1); empty = unweighted.
    weights: Mapping[bytes, float] = field(default_factory=lambda: MappingProxyType({}))

    def __post_init__(self) -> None:
        if not 1 <= self.quorum <= 1000:
            raise LibraryError("quorum must be 1..1000")
        if self.method not in METHODS or self.method == "mean":
            raise LibraryError("consensus method must be median, trimmed_mean or geometric_median")
        if self.weights and self.method not in WEIGHTED_METHODS:
            raise LibraryError("consensus weights need method median or geometric_median")
        for author, weight in self.weights.items():
            if len(author) != 32 or not 0 < float(weight) <= 1e6:
                raise LibraryError(f"consensus weight of {author.hex()}: must be in (0, 1e6]")
        if self.committee is not None and not 1 <= self.committee <= 1000:
            raise LibraryError('consensus committee must be 1..1000 or None ("all")')

    @classmethod
    def from_peer_weights(
        cls, *, quorum: int, method: str, committee: int | None, weights: Mapping[str, float]
    ) -> ConsensusRules:
        """Rules whose weights are keyed by base58 peer id (as the configuration has them)."""
        by_author: dict[bytes, float] = {}
        for peer, weight in weights.items():
            try:
                by_author[public_key_from_peer_id(peer)] = float(weight)
            except DsoError as exc:
                raise LibraryError(f"consensus.weights.{peer[:60]}: {exc}") from None
        return cls(quorum, method, committee, MappingProxyType(by_author))


class LibraryError(DsoError):
    """The library's settings are invalid (the message names the setting)."""


class ForgottenError(DsoError):
    """The operator forgot this experience (or its author retracted it): it is never stored
    again at this node."""


@dataclass(frozen=True)
class ServedHit:
    """One search result the node's trust policy serves, and why."""

    id: bytes
    similarity: float
    experience: ExperienceRecord
    verdict: Verdict


@dataclass(frozen=True)
class AddOutcome:
    """The result of adding one of our experiences."""

    experience: ExperienceRecord
    consensus: ConsensusRecord | None
    new: bool


class Library:
    def __init__(
        self,
        *,
        store: Store,
        index: CodeIndex,
        embedder: Embedder,
        key: Ed25519PrivateKey,
        rules: ConsensusRules,
        policy: VectorPolicy | None = None,
        trust: TrustSettings | None = None,
    ) -> None:
        self.store = store
        self.index = index
        self.embedder = embedder
        self.key = key
        self.rules = rules
        self.policy: VectorPolicy = policy if policy is not None else HonestPolicy()
        self.author = public_key_bytes(key)
        #: What is served and whose votes count (ARCHITECTURE.md "Trust").
        self.trust = TrustPolicy(
            store, self.author, trust if trust is not None else TrustSettings()
        )
        self.space_id = bytes.fromhex(embedder.space_id)
        #: No encoder: never embeds, never submits (see the module docstring).
        self.light = isinstance(embedder, LightEmbedder)
        self.publisher: Publisher | None = None
        self._write_lock = threading.RLock()
        self._index_lock = threading.Lock()
        self._embed_lock = threading.Lock()
        self._counter_lock = threading.Lock()
        self._counters: Counter[str] = Counter()
        self._arrivals: OrderedDict[bytes, int] = OrderedDict()  # exp id -> unix ms (bounded)
        self._buckets: OrderedDict[bytes, Bucket] = OrderedDict()  # author -> rate quota
        self._network_size = 1
        self._network_size_at = -float("inf")
        #: The in-memory index has no remove: once an experience is deleted here (forget,
        #: retraction, TTL, eviction) its row stays until a rebuild, so the index must not be
        #: saved for the next start (ARCHITECTURE.md "The code index"); the stale file then
        #: makes that start rebuild from LMDB, without the deleted rows.
        self.index_holds_deleted = False
        self._network_size_rows = -1  # reputation rows at the last count

    # ---- wiring ------------------------------------------------------------------------------

    @property
    def attack(self) -> str | None:
        """The testnet attack this node runs, or None (shown by `stats`)."""
        return self.policy.attack

    def attach_publisher(self, publisher: Publisher | None) -> None:
        """Where our new local items go (the network daemon's thread-safe publish)."""
        self.publisher = publisher

    def _publish(self, raws: list[bytes]) -> None:
        if self.publisher is not None and raws:
            self.publisher(raws)

    def count(self, name: str, n: int = 1) -> None:
        """Add to one of the counters `stats` shows."""
        with self._counter_lock:
            self._counters[name] += n

    def counters(self) -> dict[str, int]:
        """What the library did since start (for `stats` and metrics)."""
        with self._counter_lock:
            return dict(self._counters)

    def _note_arrival(self, exp_id: bytes) -> None:
        """Remember when this node first stored an experience (its commit returned)."""
        now_ms = time.time_ns() // 1_000_000  # wall clock: comparable across local processes
        with self._counter_lock:
            self._arrivals.setdefault(exp_id, now_ms)
            while len(self._arrivals) > ARRIVALS_KEPT:
                self._arrivals.popitem(last=False)

    def arrivals(self) -> dict[str, int]:
        """Hex experience id -> unix ms of its first store here, for the last ARRIVALS_KEPT
        experiences stored since start (ours at `add_experience`, peers' at `accept_items`):
        the per-node arrival time `dsonode bench network` measures latency with."""
        with self._counter_lock:
            return {k.hex(): v for k, v in self._arrivals.items()}

    # ---- reads -------------------------------------------------------------------------------

    def embed(self, text: str, *, for_search: bool = False) -> np.ndarray:
        """One text's 7680-d unit vector. `for_search` takes the embedder's low-latency path,
        whose vector stays on this node; anything that becomes a code takes the exact one."""
        with self._embed_lock:
            return self.embedder.embed_query(text, for_search=for_search)

    def embed_base(self, texts: Sequence[str]) -> np.ndarray:
        """The encoder's own vectors (before the head) of many texts, in chunks."""
        parts = []
        for start in range(0, len(texts), EMBED_CHUNK):
            with self._embed_lock:
                parts.append(self.embedder.encode_base(list(texts[start : start + EMBED_CHUNK])))
        return np.concatenate(parts, axis=0) if parts else np.zeros((0, 1), dtype=np.float32)

    def search(
        self,
        vector: np.ndarray,
        k: int,
        *,
        domain: str | None = None,
        confirmed_only: bool = False,
        min_score: float | None = None,
    ) -> list[tuple[bytes, float]]:
        """(experience id, similarity) of the k nearest consensus codes in our space."""
        with self._index_lock:
            hits = self.index.search(
                vector, k, domain=domain, confirmed_only=confirmed_only, min_score=min_score
            )
        return [(bytes(i), float(s)) for i, s in hits]

    def search_served(
        self,
        vector: np.ndarray,
        k: int,
        *,
        include_unvouched: bool = False,
        domain: str | None = None,
        confirmed_only: bool = False,
        min_score: float | None = None,
        now_ms: int | None = None,
    ) -> tuple[list[ServedHit], TrustView]:
        """The k nearest experiences this node serves under its trust mode (and the call's
        `include_unvouched`), nearest first, each with its verdict; and the trust view they
        were judged with (for weighing their votes). Forgotten experiences, whose codes the
        in-memory index keeps until the next start, are skipped."""
        view = self.trust.view(wire.now_ms() if now_ms is None else now_ms)
        mode = self.trust.mode
        judged: dict[bytes, ServedHit | None] = {}
        fetch = min(SERVED_SEARCH_MAX, max(k, k * SERVED_SEARCH_DEPTH))
        while True:
            hits = self.search(
                vector, fetch, domain=domain, confirmed_only=confirmed_only, min_score=min_score
            )
            fresh = [(i, s) for i, s in hits if i not in judged]
            records = self.store.get_experiences([i for i, _ in fresh]) if fresh else []
            for (exp_id, sim), exp in zip(fresh, records, strict=True):
                if exp is None:
                    judged[exp_id] = None
                    continue
                verdict = view.verdict(exp)
                ok = serves(mode, verdict, include_unvouched=include_unvouched)
                judged[exp_id] = ServedHit(exp_id, sim, exp, verdict) if ok else None
            served = [h for h in judged.values() if h is not None]
            if len(served) >= k or len(hits) < fetch or fetch >= SERVED_SEARCH_MAX:
                break
            fetch = min(SERVED_SEARCH_MAX, fetch * 4)
        served.sort(key=lambda h: (-h.similarity, h.id))
        self.count("search_withheld", sum(1 for h in judged.values() if h is None))
        return served[:k], view

    def verdict(self, exp: ExperienceRecord) -> Verdict:
        """Why (or whether) this node trusts one experience now."""
        return self.trust.view(wire.now_ms()).verdict(exp)

    def indexed(self) -> int:
        return len(self.index)

    def confirmed(self) -> int:
        return self.index.confirmed_count()

    def own_code(self, exp_id: bytes) -> bytes | None:
        """The code this node submitted for an experience in its space, if any.

        Read from the store, so it is always the stored one: the store keeps one submission
        per author, the smallest `(created, item hash)` (PROTOCOL.md 7.2). Only another
        submission signed with our key could replace ours, and an honest node never signs two
        for one experience (we sign only when `own_code` is None, under the write lock). A key
        reused on a wiped data directory may see its older submission come back by sync; it
        then replaces ours like any smaller one.
        """
        for sub in self.store.get_submissions(exp_id, self.space_id):
            if sub.author == self.author:
                return sub.code
        return None

    def holds(self, item: wire.Item) -> bool:
        """Whether this item, or the one of its author the store keeps instead, is stored
        already: for a submission one with a smaller or equal `(created, item hash)`
        (PROTOCOL.md 7.2), for a vote a newer one (7.5)."""
        if isinstance(item, wire.Experience):
            return self.store.has_experience(item.id)
        if isinstance(item, wire.Submission):
            return self.store.holds_submission(
                item.experience_id, item.space_id, item.author, item.created, wire.item_hash(item)
            )
        if isinstance(item, wire.Feedback):
            return self.store.holds_feedback(
                item.experience_id, item.author, item.created, wire.item_hash(item)
            )
        if isinstance(item, wire.Retraction):
            return self.store.has_retraction(item.experience_id, item.author)
        return False

    def network_size(self, connected: int | None = None) -> int:
        """Estimated nodes in the space.

        Without `connected` (None): the committee draw's n (PROTOCOL.md section 16), the distinct
        submission authors we aggregated (reputation rows) whose last judged submission is
        within NETWORK_SIZE_WINDOW_S, plus us. Only authors who submit count, not peers:
        light nodes and other implementations connect without submitting, and the draw is
        about submitters. Recounted when a new author row appears, else at most every
        NETWORK_SIZE_REFRESH_S (before, a count taken on an empty table at start stayed 1
        for 30 s, and a connected network without traffic stayed at 1 for good).

        With `connected` (peers connected now in our space, for `stats`): the larger of that
        count and `connected + 1`, so the figure follows a network that has not exchanged
        submissions yet. Light nodes never author a submission, so they are never in the
        reputation table, and a light node does not count itself. Like the author count it is no defence against Sybils (PROTOCOL.md
        section 16): minting keys inflates both, the connection count only up to
        net.max_connections.
        """
        now = time.monotonic()
        # one database's entry count, not `counts()` of all: this runs for every submission
        # received (the committee filter) and every recomputation
        rows = self.store.count("reputation")
        if rows != self._network_size_rows or now - self._network_size_at >= (
            NETWORK_SIZE_REFRESH_S
        ):
            since = wire.now_ms() - int(NETWORK_SIZE_WINDOW_S * 1000)
            authors = {
                a
                for a, rec in self.store.iter_reputation()
                # a record without a time (hand-made, older stores) counts: it cannot be aged
                if not isinstance(rec.get("updated"), int) or rec["updated"] >= since
            }
            if not self.light:  # a light node never submits: it is no committee member
                authors.add(self.author)
            self._network_size = len(authors)
            self._network_size_at = now
            self._network_size_rows = rows
        if connected is None:  # the draw's n (0 on a light node that has heard no author)
            return self._network_size
        return max(self._network_size, int(connected) + 1)

    def seen_codes(self, exp_id: bytes, limit: int) -> list[bytes]:
        """Codes of the others' submissions for an experience held so far (at most `limit`)."""
        return [
            s.code
            for s in self.store.get_submissions(exp_id, self.space_id)
            if s.author != self.author
        ][:limit]

    def nearest_other(self, exp_id: bytes, vector: np.ndarray) -> ExperienceRecord | None:
        """The stored experience nearest to `vector` other than `exp_id`, if any."""
        for other_id, _score in self.search(np.asarray(vector, dtype=np.float32), 3):
            if other_id == exp_id:
                continue
            other = self.store.get_experience(other_id)
            if other is not None:
                return other
        return None

    # ---- committee sampling (dsonode.core.committee) ------------------------------------------

    def in_own_committee(self, experience: wire.Experience) -> bool:
        limit = committee.threshold(self.rules.committee, self.network_size())
        return committee.in_committee(experience.id, self.author, experience.author, limit)

    def eligible(self, exp_id: bytes, exp_author: bytes | None) -> Callable[[bytes], bool]:
        """author -> whether its submission for this experience counts (verifier's slack)."""
        limit = committee.verify_threshold(self.rules.committee, self.network_size())
        return lambda author: committee.in_committee(exp_id, author, exp_author, limit)

    def outside_committee(self, item: wire.Submission, batch: Mapping[bytes, bytes]) -> bool:
        """A submission of our space whose author is outside its committee draw (`batch`
        maps experience ids arriving alongside to their authors)."""
        if item.space_id != self.space_id or item.author == self.author:
            return False
        exp_author = batch.get(item.experience_id)
        if exp_author is None:
            exp = self.store.get_experience(item.experience_id)
            exp_author = exp.author if exp is not None else None
        return not self.eligible(item.experience_id, exp_author)(item.author)

    # ---- writes: our own items -----------------------------------------------------------------

    def _own_code_of(self, experience: wire.Experience) -> bytes:
        vector = self.policy.vector(self.embed(experience.text), experience)
        code = bitdelta.encode(vector, ref=self.embedder.reference)
        assert isinstance(code, bytes)  # one vector in, one code out
        return code

    def add_experience(self, experience: wire.Experience) -> AddOutcome:
        """Store one of our signed experiences with our submission of its code, index it and
        publish both.

        Idempotent: the same experience again duplicates nothing. The consensus (our code,
        unconfirmed until a quorum) is written in the same transaction as the items, and only
        if there is none yet: a crash never leaves an acknowledged add without its consensus,
        and an existing consensus (from peers) stays (the store marks the experience pending
        and the daemon recomputes it). Returns once everything is committed (LMDB syncs on
        commit), so a reply means the item survives a crash.
        """
        if self.light:  # fail before anything is stored: an add is our submission too
            raise LightNodeError("add_experience")
        if self.store.is_tombstoned(experience.id):
            raise ForgottenError(f"experience {experience.id.hex()} was forgotten at this node")
        code = None
        if self.own_code(experience.id) is None:  # else known already: skip the embedding
            code = self._own_code_of(experience)
        publish: list[bytes] = []
        with self._write_lock:
            mine = self.own_code(experience.id)
            if mine is not None or code is None:
                code = mine  # the stored submission stays ours (see own_code)
            assert code is not None  # submissions are never deleted
            had_consensus = self.store.get_consensus(self.space_id, experience.id) is not None
            fresh = ConsensusRecord(
                space_id=self.space_id,
                experience_id=experience.id,
                # Our code as the aggregation re-encodes it: the same sign bits, the scale of a
                # unit median. Every node that recomputes this consensus gets exactly these
                # bytes; our raw code's scale differs (by ~sqrt(2/pi)) and would rank our own
                # experiences differently from everyone else's at this node.
                code=self._single_consensus_code(code),
                count=1,
                confirmed=self.rules.quorum <= 1,
                domain=experience.domain,
                updated=wire.now_ms(),
            )
            raws = [wire.encode_item(experience)]
            decoded: list[wire.Item] = [experience]
            if mine is None:
                submission = wire.make_submission(self.key, experience.id, self.space_id, code)
                raws.append(wire.encode_item(submission))
                decoded.append(submission)
            new = self.store.put_items(raws, decoded=decoded, consensus_if_absent=[fresh])
            if new[0]:
                self._note_arrival(experience.id)
            if mine is None and not new[-1]:
                # A smaller submission of our key was stored by accept_items (which does not
                # take the write lock) since own_code: `fresh` may not be the stored code's
                # consensus, so recompute it, and publish nothing we did not store.
                publish = raws[:1] if new[0] else []
                self.recompute(experience.id)
                had_consensus = True  # recompute indexed the stored consensus
            elif mine is None and any(new):
                publish = raws
            consensus = self.store.get_consensus(self.space_id, experience.id)
            if not had_consensus and consensus is not None:
                self._index([experience.id], [consensus])
        self._publish(publish)
        stored = self.store.get_experience(experience.id)
        assert stored is not None  # committed above; experiences are never deleted
        return AddOutcome(stored, consensus, bool(new[0]))

    def _single_consensus_code(self, code: bytes) -> bytes:
        """The consensus code of one submission, as `compute_consensus` would compute it."""
        result = aggregate_codes(
            [code],
            ref=self.embedder.reference,
            method=self.rules.method,
            quorum=self.rules.quorum,
        )
        assert result.code is not None  # one valid code never cancels out
        return result.code

    def record_feedback(self, exp_id: bytes, value: float) -> tuple[wire.Feedback, bool]:
        """Sign this node's vote on a stored experience, store it, publish it.

        A second vote replaces the first (one vote per author, PROTOCOL.md 7.5): its
        `created` is made later than the stored one's even within the same millisecond.
        Returns the vote and whether it was new.
        """
        with self._write_lock:
            created = wire.now_ms()
            for vote in self.store.get_feedback(exp_id):
                if vote.author == self.author:
                    created = max(created, vote.created + 1)
            item = wire.make_feedback(self.key, exp_id, value, created=created)
            raw = wire.encode_item(item)
            new = bool(self.store.put_items([raw], decoded=[item])[0])
        if new:
            self._publish([raw])
        return item, new

    def own_submission(self, experience: wire.Experience) -> bytes | None:
        """Embed (exact path), sign and store our submission for a peer's experience unless
        we have one or are outside its committee (or are a light node, which has no encoder
        and so never submits). Returns it encoded, to publish."""
        if self.light:
            self.count("light_skipped")
            return None
        if self.own_code(experience.id) is not None:
            return None
        if not self.in_own_committee(experience):
            self.count("not_in_committee")
            return None
        code = self._own_code_of(experience)
        submission = wire.make_submission(self.key, experience.id, self.space_id, code)
        raw = wire.encode_item(submission)
        with self._write_lock:
            if self.own_code(experience.id) is not None:
                return None
            if not self.store.put_items([raw], decoded=[submission])[0]:
                return None  # a smaller one of our key came meanwhile (see own_code)
        self.count("own_submissions")
        return raw

    # ---- admission (ARCHITECTURE.md "Trust"; dsonode.core.stamp, dsonode.core.quota) ---------

    def stamp_provenance(
        self, domain: str, text: str, provenance: Sequence[tuple[str, str]] = ()
    ) -> list[tuple[str, str]]:
        """`provenance` plus a stamp of the network's difficulty for our experience of
        (domain, text), so peers where we have no standing admit it (PROTOCOL.md 18). Left
        unstamped when the difficulty is 0 or the provenance has no room for another pair."""
        bits = self.trust.settings.stamp_bits
        pairs = [(k, v) for k, v in provenance if k != STAMP_KEY]
        if bits == 0 or len(pairs) >= wire.MAX_PROVENANCE:
            return pairs
        nonce = mint(wire.experience_id(domain, text), self.author, bits)
        self.count("stamps_minted")
        return [*pairs, (STAMP_KEY, nonce)]

    def _admission(
        self,
        raw: bytes,
        item: wire.Item,
        view: TrustView,
        pending: dict[bytes, int],
        *,
        live: bool = True,
    ) -> str | None:
        """Why a peer's item is refused before it costs storage or embedding (None: it is
        admitted): a new experience of an author without standing needs a stamp of the
        network's difficulty; new experiences and votes take one token of their author's
        rate quota; experiences count against its stored bytes. `pending` holds the bytes of
        this batch admitted so far per author."""
        if isinstance(item, wire.Submission):
            return None  # one per author and experience, drawn by the committee
        if isinstance(item, wire.Retraction):
            # honoured only for an experience held with that author: a key withdraws its own
            # copy, and retractions of anything else cost no storage
            if self.holds(item):
                return None
            exp = self.store.get_experience(item.experience_id)
            return None if exp is not None and exp.author == item.author else "retraction_unheld"
        if self.holds(item) or self.store.is_tombstoned(
            item.id if isinstance(item, wire.Experience) else item.experience_id
        ):
            return None  # costs nothing new (the store keeps what it has)
        standing = view.standing(item.author).value
        settings = self.trust.settings
        if (
            isinstance(item, wire.Experience)
            and standing <= 0
            and self.store.count("experiences") >= settings.max_experiences
        ):
            return "store_full"  # a full store takes no more unvouched items (Library.sweep)
        if isinstance(item, wire.Experience) and standing <= 0 and settings.stamp_bits:
            bits = stamp_bits(item.id, item.author, item.provenance)
            if bits < settings.stamp_bits:
                return "stamp_missing" if stamp_of(item.provenance) is None else "stamp_too_cheap"
        if live:
            with self._counter_lock:
                ok, bucket = take(
                    self._buckets.pop(item.author, None),
                    view.now_ms,
                    settings.quota.items(standing),
                )
                self._buckets[item.author] = bucket
                while len(self._buckets) > QUOTA_AUTHORS_KEPT:
                    self._buckets.popitem(last=False)
            if not ok:
                return "over_quota_rate"
        if isinstance(item, wire.Experience):
            used = self.store.author_bytes(item.author) + pending.get(item.author, 0)
            if used + len(raw) > settings.quota.bytes(standing):
                return "over_quota_bytes"
            pending[item.author] = pending.get(item.author, 0) + len(raw)
        return None

    # ---- writes: the operator's control --------------------------------------------------------

    def set_listed(self, list_name: str, author: bytes, on: bool) -> bool:
        """Put an author on or off the operator's block or allow list (kept in the store, so
        it survives a restart). A blocked author's items are refused from then on and its
        stored experiences are no longer served. Returns whether anything changed."""
        with self._write_lock:
            changed = self.store.set_listed(list_name, author, on, wire.now_ms())
            self.trust.invalidate()
        if changed:
            self.count(f"{list_name}_{'added' if on else 'removed'}")
        return changed

    def forget(self, exp_ids: Sequence[bytes], why: str = "operator") -> list[bool]:
        """Delete experiences with their codes and votes and tombstone them: never stored
        again, whoever sends them (gossip, sync), also after a restart. The in-memory index
        keeps their codes until a rebuild from LMDB (the next start: the index is then not
        saved at close); searches skip them. Returns, per id, whether
        anything was stored under it."""
        with self._write_lock:
            found = self.store.forget(exp_ids, why, wire.now_ms())
            if any(found):
                self.index_holds_deleted = True
        self.count("forgotten", len(exp_ids))
        return found

    def retract(self, exp_id: bytes) -> wire.Retraction:
        """Withdraw one of our experiences network-wide: sign a retraction, store it (which
        forgets the experience here) and publish it; every node that holds our copy deletes
        it and never stores it again (PROTOCOL.md 7.6). ForgottenError if the experience is
        not ours or not held."""
        with self._write_lock:
            exp = self.store.get_experience(exp_id)
            if exp is None or exp.author != self.author:
                raise ForgottenError(
                    f"experience {exp_id.hex()} is not held here as one of this node's own"
                )
            item = wire.make_retraction(self.key, exp_id)
            raw = wire.encode_item(item)
            self.store.put_items([raw], decoded=[item])
            self.index_holds_deleted = True
        self.count("retracted")
        self._publish([raw])
        return item

    def sweep(self, now_ms: int | None = None) -> dict[str, int]:
        """The store's lifecycle (ARCHITECTURE.md "Trust"): delete unvouched experiences older
        than the TTL, then, above the storage cap, evict in `core.trust.eviction_order`
        (unvouched first, over-quota authors first, oldest first; vouched ones only when no
        unvouched one is left). Both tombstone what they delete ("expired", "evicted"), so
        sync does not bring it back. Returns how many of each."""
        now = wire.now_ms() if now_ms is None else now_ms
        settings = self.trust.settings
        view = self.trust.view(now)
        ttl_ms = int(settings.unvouched_ttl_s * 1000)
        old: list[bytes] = []
        if ttl_ms > 0:
            for rec in self.store.iter_experiences_by_time(0, max(0, now - ttl_ms)):
                if rec.author != self.author and expired(
                    rec.created, now, ttl_ms, view.verdict(rec).vouched
                ):
                    old.append(rec.id)
        if old:
            self.forget(old, "expired")
        over = self.store.count("experiences") - settings.max_experiences
        evicted: list[bytes] = []
        if over > 0:
            candidates = []
            for rec in self.store.iter_experiences_by_time(0):
                if rec.author == self.author:
                    continue  # never evict our own lessons
                standing = view.standing(rec.author).value
                heavy = self.store.author_bytes(rec.author) > settings.quota.bytes(standing)
                vouched = view.verdict(rec).vouched
                candidates.append(EvictionCandidate(rec.id, vouched, heavy, rec.created))
            evicted = eviction_order(candidates)[:over]
            self.forget(evicted, "evicted")
        self.count("expired", len(old))
        self.count("evicted", len(evicted))
        return {"expired": len(old), "evicted": len(evicted)}

    # ---- writes: peers' items ------------------------------------------------------------------

    def accept_items(
        self,
        accepted: Sequence[tuple[bytes, wire.Item]],
        report: dict[str, int] | None = None,
        *,
        live: bool = True,
    ) -> list[bytes]:
        """Store verified items from peers (gossip or sync), submit our own codes for new
        experiences, recompute the touched consensus. Returns what to publish; `report`
        (if given) receives the number of items newly stored.

        Admission first (`_admission`): items of blocked authors, unstamped experiences of
        authors without standing and over-quota items are dropped before anything is stored
        or embedded. `live` (gossip) items also take a token of their author's rate quota;
        catch-up sync (`live=False`) brings history, bounded by the stored-bytes quota only
        (a node that joins late must be able to fetch a prolific author's backlog)."""
        batch_authors = {i.id: i.author for _, i in accepted if isinstance(i, wire.Experience)}
        kept: list[tuple[bytes, wire.Item]] = []
        _allowed, blocked = self.trust.lists()
        view = self.trust.view(wire.now_ms())
        pending: dict[bytes, int] = {}
        for raw, item in accepted:
            if item.author in blocked:  # the operator blocked it: nothing of it is stored
                self.count("blocked_dropped")
                continue
            refused = self._admission(raw, item, view, pending, live=live)
            if refused is not None:
                self.count(refused)
                continue
            if isinstance(item, wire.Submission) and self.outside_committee(item, batch_authors):
                self.count("committee_ignored")
                continue
            kept.append((raw, item))
        items = [i for _, i in kept]
        new = self.store.put_items([r for r, _ in kept], decoded=items) if kept else []
        if report is not None:
            report["stored"] = report.get("stored", 0) + sum(bool(n) for n in new)
        for item, is_new in zip(items, new, strict=True):  # before any embedding below
            if is_new and isinstance(item, wire.Experience):
                self._note_arrival(item.id)
        outbound: list[bytes] = []
        touched: dict[bytes, None] = {}
        for item, is_new in zip(items, new, strict=True):
            if not is_new:
                continue
            if isinstance(item, wire.Experience):
                self.count("experiences_stored")
                own = self.own_submission(item)
                if own is not None:
                    outbound.append(own)
                touched[item.id] = None
            elif isinstance(item, wire.Submission):
                self.count("submissions_stored")
                if item.space_id == self.space_id:
                    touched[item.experience_id] = None
            elif isinstance(item, wire.Feedback):  # put_items updated its aggregate already
                self.count("feedback_stored")
            elif isinstance(item, wire.Retraction):  # put_items forgot the experience
                self.index_holds_deleted = True
                self.count("retractions_honoured")
        for exp_id in touched:
            self.recompute(exp_id)
        return outbound

    def repair_pending(self) -> list[bytes]:
        """At start: finish what a crash interrupted in `accept_items`. Every experience the
        store marks pending (a new item committed, its consensus not yet) gets our submission
        if it lacks one and we are in its committee, then its consensus recomputed. Returns
        our new submissions, to publish."""
        outbound: list[bytes] = []
        pending = self.store.pending_ids()
        for exp_id in pending:
            rec = self.store.get_experience(exp_id)
            if rec is not None:
                item = wire.decode_item(rec.raw)
                assert isinstance(item, wire.Experience)
                own = self.own_submission(item)
                if own is not None:
                    outbound.append(own)
            self.recompute(exp_id)
        self.count("repaired_at_start", len(pending))
        if pending:
            log.info("recomputed %d pending consensus records at start", len(pending))
        return outbound

    def recompute(self, exp_id: bytes) -> None:
        """Recompute and store one experience's consensus; update index and reputation."""
        with self._write_lock:
            exp = self.store.get_experience(exp_id)
            if exp is None:  # submissions before their experience: wait for it (it marks
                self.store.clear_pending([exp_id])  # the experience pending again)
                return
            now = wire.now_ms()
            old = self.store.get_consensus(self.space_id, exp_id)
            outcome = compute_consensus(
                self.store.get_submissions(exp_id, self.space_id),
                experience_id=exp_id,
                space_id=self.space_id,
                domain=exp.domain,
                now_ms=now,
                ref=self.embedder.reference,
                quorum=self.rules.quorum,
                method=self.rules.method,
                weights=self.rules.weights or None,
                eligible=self.eligible(exp_id, exp.author),
            )
            if outcome is None:
                self.store.clear_pending([exp_id])
                return
            self.store.put_consensus([outcome.record])
            self._index([exp_id], [outcome.record])
            for author, delta in reputation_deltas(
                previous_verdicts(old), outcome.verdicts
            ).items():
                self.store.update_reputation(author, _reputation_update(delta, now))
        self.count("consensus_updates")

    def _index(self, ids: Iterable[bytes], records: Sequence[ConsensusRecord]) -> None:
        with self._index_lock:
            self.index.add(
                list(ids),
                [r.code for r in records],
                domains=[r.domain for r in records],
                confirmed=[r.confirmed for r in records],
            )


def _reputation_update(
    delta: tuple[int, int], now_ms: int
) -> Callable[[Mapping[str, Any] | None], dict[str, Any]]:
    """The update of one author's reputation record by one delta (for Store.update_reputation)."""
    return lambda record: apply_reputation(record, delta, now_ms)
