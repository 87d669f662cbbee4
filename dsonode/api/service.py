"""What the retrieval socket's methods do, as plain synchronous code over the node's parts.

`RetrievalService` holds the store, the code index, the embedder and the node's key. Its
methods take the typed params from `jsonrpc.validate_params` and return JSON-ready results;
they block (embedding, search, LMDB commits), so `handlers()` wraps each in
`trio.to_thread.run_sync` behind a capacity limiter and the event loop stays free (`health`
alone runs on the loop: it must answer while the CPU is busy).

Thread safety: embedding runs under one lock (one torch model, one tokenizer), index reads and
writes under another, and `add_experience` under a third so its check-then-write of the
consensus is atomic. LMDB itself serialises its transactions (see dsonode.store).
"""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Awaitable, Callable
from typing import Any

import numpy as np

from dsonode import __version__
from dsonode.api import jsonrpc
from dsonode.api.jsonrpc import (
    AddExperienceParams,
    GetParams,
    GiveFeedbackParams,
    InvalidParams,
    NoParams,
    NotFound,
    SearchParams,
    SubmitRolloutsParams,
)
from dsonode.core.constants import DIM
from dsonode.core.errors import WireError
from dsonode.core.feedback import DEFAULT_WEIGHT as FEEDBACK_DEFAULT_WEIGHT
from dsonode.core.feedback import rerank

#: Accepted submissions that confirm a consensus (DESIGN.md: default quorum 3).
DEFAULT_QUORUM = 3


_WIRE_FIELD = re.compile(r"^(?:\d+ )?(domain|text|tags?)\b")


def _param_of_wire_error(exc: WireError) -> str:
    """Which add_experience param a wire rule rejected (wire messages start with the field)."""
    m = _WIRE_FIELD.match(str(exc))
    if m is None:
        return "text"
    return "tags" if m.group(1).startswith("tag") else m.group(1)


def _full_query(values: np.ndarray) -> np.ndarray:
    """A client's vector as a unit (DIM,) query; a Matryoshka prefix is zero-padded.

    Zero padding keeps the prefix pre-filter and the rescoring exact for the prefix (the
    padded dimensions add nothing to dot products); only the full-code Hamming stage sees
    the padding, so recall of prefix queries can be a little lower than of full ones.
    """
    vector = np.zeros(DIM, dtype=np.float32)
    vector[: len(values)] = values
    norm = float(np.linalg.norm(vector))
    if not np.isfinite(norm) or norm == 0.0:
        raise InvalidParams("vector", "must have a finite, non-zero norm")
    return vector / norm


class RetrievalService:
    def __init__(self, *, store: Any, index: Any, embedder: Any, key: Any, quorum: int = 3):
        from dsonode.identity import public_key_bytes

        self.store = store
        self.index = index
        self.embedder = embedder
        self.key = key
        self.author = public_key_bytes(key)
        self.space_id = bytes.fromhex(embedder.space_id)
        self.quorum = quorum
        self.started = time.monotonic()
        self._embed_lock = threading.Lock()
        self._index_lock = threading.Lock()
        self._add_lock = threading.Lock()
        #: Filled in by the node once the server exists (connection counters for `stats`).
        self.server: Any = None
        #: Weight of the feedback median in the search ranking (config `[api] feedback_weight`,
        #: set by the node; see dsonode.core.feedback). 0 ranks by similarity alone.
        self.feedback_weight = FEEDBACK_DEFAULT_WEIGHT
        self._feedback_lock = threading.Lock()
        #: The network daemon when the node runs with peers (`dsonode.net.daemon.NetDaemon`):
        #: new local items are handed to its `publish_local`, and `stats` shows its state.
        self.network: Any = None

    # ---- helpers -----------------------------------------------------------------------------

    def _embed_one(self, text: str, *, for_search: bool = False) -> np.ndarray:
        """Embed one text. `for_search` takes the embedder's low-latency path, whose vector
        stays on this node; anything that becomes a code or a submission takes the exact one."""
        with self._embed_lock:
            return self.embedder.embed_query(text, for_search=for_search)

    def _item(self, exp: Any, score: float | None, consensus: Any) -> dict[str, Any]:
        return jsonrpc.shape_item(
            id=exp.id,
            text=exp.text,
            domain=exp.domain,
            tags=exp.tags,
            created_ms=exp.created,
            author=exp.author,
            submissions=consensus.count if consensus is not None else 0,
            confirmed=bool(consensus.confirmed) if consensus is not None else False,
            score=score,
        )

    def _own_code(self, exp_id: bytes) -> bytes | None:
        """The code this node already submitted for an experience in its space, if any."""
        for sub in self.store.get_submissions(exp_id, self.space_id):
            if sub.author == self.author:
                return sub.code
        return None

    # ---- methods -----------------------------------------------------------------------------

    def search(self, p: SearchParams) -> dict[str, Any]:
        t0 = time.perf_counter()
        vector = (
            self._embed_one(p.query, for_search=True)
            if p.query is not None
            else _full_query(p.vector)
        )
        t1 = time.perf_counter()
        weight = self.feedback_weight
        # With feedback in the ranking, look a little deeper than k: a result just below the
        # top k by similarity may rise into it (min_score applies to the similarity).
        fetch = p.k if weight == 0 else min(jsonrpc.MAX_K, max(2 * p.k, p.k + 10))
        with self._index_lock:
            hits = self.index.search(
                vector,
                fetch,
                domain=p.domain,
                confirmed_only=p.confirmed_only,
                min_score=p.min_score,
            )
        t2 = time.perf_counter()
        ids = [bytes(i) for i, _ in hits]
        experiences = dict(zip(ids, self.store.get_experiences(ids), strict=True)) if ids else {}
        # A consensus without its experience (not synced yet) is skipped.
        present = [
            (i, float(s)) for i, (_, s) in zip(ids, hits, strict=True) if experiences[i] is not None
        ]
        votes = self.store.get_feedback_aggregates([i for i, _ in present]) if present else []
        aggregates = dict(zip([i for i, _ in present], votes, strict=True))
        results = []
        for exp_id, similarity, score in rerank(present, aggregates, weight, p.k):
            consensus = self.store.get_consensus(self.space_id, exp_id)
            item = self._item(experiences[exp_id], score, consensus)
            item["similarity"] = round(similarity, 6)
            agg = aggregates.get(exp_id)
            item["feedback"] = agg.as_dict() if agg is not None else None
            results.append(item)
        return {
            "results": results,
            "took_ms": {
                "embed": round((t1 - t0) * 1000, 3),
                "search": round((t2 - t1) * 1000, 3),
                "total": round((time.perf_counter() - t0) * 1000, 3),
            },
        }

    def get(self, p: GetParams) -> dict[str, Any]:
        exp = self.store.get_experience(p.id)
        if exp is None:
            raise NotFound(f"no experience with id {p.id.hex()}")
        consensus = self.store.get_consensus(self.space_id, p.id)
        item = self._item(exp, None, consensus)
        if consensus is None:  # known experience, no consensus code in this space yet
            item["submissions"] = len(self.store.get_submissions(p.id, self.space_id))
        agg = self.store.get_feedback_aggregate(p.id)
        item["feedback"] = agg.as_dict() if agg is not None else None
        return item

    def give_feedback(self, p: GiveFeedbackParams) -> dict[str, Any]:
        """Sign this node's vote on an experience, store it, publish it; return the aggregate.

        A second vote replaces the node's first (one vote per author, PROTOCOL.md 7.5): its
        `created` is made later than the stored one's even within the same millisecond.
        """
        from dsonode.core import wire

        if not self.store.has_experience(p.id):
            raise NotFound(f"no experience with id {p.id.hex()}")
        with self._feedback_lock:
            created = wire.now_ms()
            for vote in self.store.get_feedback(p.id):
                if vote.author == self.author:
                    created = max(created, vote.created + 1)
            item = wire.make_feedback(self.key, p.id, p.value, created=created)
            raw = wire.encode_item(item)
            new = self.store.put_items([raw], decoded=[item])
        if self.network is not None and new[0]:
            self.network.publish_local([raw])
        agg = self.store.get_feedback_aggregate(p.id)
        return {
            "id": p.id.hex(),
            "value": item.value,
            "feedback": agg.as_dict() if agg is not None else None,
        }

    def add_experience(self, p: AddExperienceParams) -> dict[str, Any]:
        """Sign the experience and the node's own submission of its code, store both, index.

        Idempotent: the same (domain, text) again is the same experience id; nothing is
        duplicated, and a consensus missing after a crash between the two commits is restored.
        The result is returned only once everything is committed (LMDB syncs on commit), so a
        reply means the item survives a crash.
        """
        from dsonode.core import wire

        try:
            experience = wire.make_experience(self.key, p.domain, p.text, tags=p.tags)
        except WireError as exc:
            raise InvalidParams(_param_of_wire_error(exc), f"is rejected: {exc}") from None
        return self._store_experience(experience)

    def _store_experience(self, experience: Any) -> dict[str, Any]:
        """add_experience after signing: embed, sign the submission, store, index, publish.

        Shared by `add_experience` and `submit_rollouts` (whose experiences carry provenance).
        """
        from dsonode.core import bitdelta, wire
        from dsonode.store import ConsensusRecord

        code = None
        if self._own_code(experience.id) is None:  # else known already: skip the embedding
            vector = self._embed_one(experience.text)
            if self.network is not None:  # a Byzantine testnet node poisons this one too
                vector = self.network.own_vector(vector)
            code = bitdelta.encode(vector, ref=self.embedder.reference)
        with self._add_lock:
            mine = self._own_code(experience.id)
            if mine is not None or code is None:
                code = mine  # the first submission wins; keep the index consistent
            assert code is not None  # submissions are never deleted
            had_consensus = self.store.get_consensus(self.space_id, experience.id) is not None
            # One submission: the consensus is that code, unconfirmed until a quorum. It is
            # written in the same transaction as the items (only if there is none yet), so a
            # crash never leaves an acknowledged add without its consensus. An existing
            # consensus (from peers) stays; the store marks the experience pending and the
            # network daemon recomputes it.
            fresh = ConsensusRecord(
                space_id=self.space_id,
                experience_id=experience.id,
                code=code,
                count=1,
                confirmed=self.quorum <= 1,
                domain=experience.domain,
                updated=int(time.time() * 1000),
            )
            if mine is None:
                submission = wire.make_submission(self.key, experience.id, self.space_id, code)
                raws = [wire.encode_item(experience), wire.encode_item(submission)]
                new = self.store.put_items(
                    raws, decoded=[experience, submission], consensus_if_absent=[fresh]
                )
                if self.network is not None and any(new):
                    self.network.publish_local(raws)
            else:
                new = self.store.put_items(
                    [wire.encode_item(experience)],
                    decoded=[experience],
                    consensus_if_absent=[fresh],
                )
            consensus = self.store.get_consensus(self.space_id, experience.id)
            if not had_consensus and consensus is not None:
                with self._index_lock:
                    self.index.add(
                        [experience.id],
                        [consensus.code],
                        domains=[experience.domain],
                        confirmed=[consensus.confirmed],
                    )
        stored = self.store.get_experience(experience.id)
        result = self._item(stored, None, consensus)
        result["new"] = bool(new[0])
        return result

    def submit_rollouts(self, p: SubmitRolloutsParams) -> dict[str, Any]:
        """Extract lessons from rollouts and add each like `add_experience` (see
        dsonode.extract.ingest; the lessons carry their provenance)."""
        from dsonode.extract.ingest import submit_rollouts

        return submit_rollouts(self, p)

    def stats(self, _p: NoParams | None = None) -> dict[str, Any]:
        counts = self.store.counts()
        server = self.server
        return {
            "version": __version__,
            "uptime_s": round(time.monotonic() - self.started, 3),
            "space_id": self.space_id.hex(),
            "model": self.embedder.model_name,
            "dim": self.embedder.dim,
            "author": self.author.hex(),
            "indexed": len(self.index),
            "consensus": {"confirmed": self.index.confirmed_count(), "total": len(self.index)},
            "store": counts,
            "connections": {
                "open": server.open_connections if server else 0,
                "served": server.served_connections if server else 0,
                "requests": server.requests if server else 0,
                "errors": server.errors if server else 0,
            },
            **({"network": self.network.stats()} if self.network is not None else {}),
        }

    def health(self, _p: NoParams | None = None) -> dict[str, Any]:
        return {
            "status": "ok",
            "version": __version__,
            "uptime_s": round(time.monotonic() - self.started, 3),
            "space_id": self.space_id.hex(),
            "indexed": len(self.index),
        }

    # ---- async handlers for the server -------------------------------------------------------

    def handlers(self, cpu_threads: int = 2) -> dict[str, Callable[[Any], Awaitable[Any]]]:
        import trio

        limiter = trio.CapacityLimiter(cpu_threads)

        def in_thread(fn: Callable[[Any], Any]) -> Callable[[Any], Awaitable[Any]]:
            async def handler(params: Any) -> Any:
                # Not cancellable: a commit in flight finishes before the node shuts down.
                return await trio.to_thread.run_sync(fn, params, limiter=limiter)

            return handler

        async def health(params: Any) -> Any:
            return self.health(params)

        # One extraction at a time, outside the CPU limiter: a long extraction (an LLM server
        # can take minutes) never holds the slots that searches need.
        extract_limiter = trio.CapacityLimiter(1)

        async def submit_rollouts(params: Any) -> Any:
            return await trio.to_thread.run_sync(
                self.submit_rollouts, params, limiter=extract_limiter
            )

        return {
            "search": in_thread(self.search),
            "get": in_thread(self.get),
            "add_experience": in_thread(self.add_experience),
            "give_feedback": in_thread(self.give_feedback),
            "submit_rollouts": submit_rollouts,
            "stats": in_thread(self.stats),
            "health": health,
        }
