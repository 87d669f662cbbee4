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
    InvalidParams,
    NoParams,
    NotFound,
    SearchParams,
)
from dsonode.core.constants import DIM
from dsonode.core.errors import WireError

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
        with self._index_lock:
            hits = self.index.search(
                vector,
                p.k,
                domain=p.domain,
                confirmed_only=p.confirmed_only,
                min_score=p.min_score,
            )
        t2 = time.perf_counter()
        ids = [bytes(i) for i, _ in hits]
        experiences = self.store.get_experiences(ids) if ids else []
        results = []
        for (exp_id, score), exp in zip(hits, experiences, strict=True):
            if exp is None:  # a consensus without its experience (not synced yet): skip it
                continue
            consensus = self.store.get_consensus(self.space_id, bytes(exp_id))
            results.append(self._item(exp, float(score), consensus))
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
        return item

    def add_experience(self, p: AddExperienceParams) -> dict[str, Any]:
        """Sign the experience and the node's own submission of its code, store both, index.

        Idempotent: the same (domain, text) again is the same experience id; nothing is
        duplicated, and a consensus missing after a crash between the two commits is restored.
        The result is returned only once everything is committed (LMDB syncs on commit), so a
        reply means the item survives a crash.
        """
        from dsonode.core import bitdelta, wire
        from dsonode.store import ConsensusRecord

        try:
            experience = wire.make_experience(self.key, p.domain, p.text, tags=p.tags)
        except WireError as exc:
            raise InvalidParams(_param_of_wire_error(exc), f"is rejected: {exc}") from None
        code = None
        if self._own_code(experience.id) is None:  # else known already: skip the embedding
            vector = self._embed_one(experience.text)
            code = bitdelta.encode(vector, ref=self.embedder.reference)
        with self._add_lock:
            mine = self._own_code(experience.id)
            if mine is not None or code is None:
                code = mine  # the first submission wins; keep the index consistent
                new = [False]
            else:
                submission = wire.make_submission(self.key, experience.id, self.space_id, code)
                raws = [wire.encode_item(experience), wire.encode_item(submission)]
                new = self.store.put_items(raws, decoded=[experience, submission])
                if self.network is not None and any(new):
                    self.network.publish_local(raws)
            assert code is not None  # submissions are never deleted
            consensus = self.store.get_consensus(self.space_id, experience.id)
            # An existing consensus (from peers) is left to the aggregation of later issues.
            if consensus is None:
                # One submission: the consensus is that code, unconfirmed until a quorum.
                consensus = ConsensusRecord(
                    space_id=self.space_id,
                    experience_id=experience.id,
                    code=code,
                    count=1,
                    confirmed=self.quorum <= 1,
                    domain=experience.domain,
                    updated=int(time.time() * 1000),
                )
                self.store.put_consensus([consensus])
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

        return {
            "search": in_thread(self.search),
            "get": in_thread(self.get),
            "add_experience": in_thread(self.add_experience),
            "stats": in_thread(self.stats),
            "health": health,
        }
