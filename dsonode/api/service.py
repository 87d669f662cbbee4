"""What the retrieval socket's methods do, as plain synchronous code over the node's library.

`RetrievalService` turns the typed params of `jsonrpc.validate_params` into calls on the
node's `Library` (dsonode.library: the one owner of writes, locks and the embedder) and
shapes JSON-ready results. Its methods block (embedding, search, LMDB commits), so
`handlers()` wraps each in `trio.to_thread.run_sync` behind a capacity limiter and the event
loop stays free (`health` alone runs on the loop: it must answer while the CPU is busy).
"""

from __future__ import annotations

import re
import sys
import time
from collections.abc import Awaitable, Callable
from typing import Any, Protocol

import numpy as np

from dsonode import __version__
from dsonode.api import jsonrpc
from dsonode.api.jsonrpc import (
    AddExperienceParams,
    AddPeerParams,
    ForgetParams,
    ForgetPeerParams,
    GetParams,
    GiveFeedbackParams,
    InvalidParams,
    NeedsFullNode,
    NoNetwork,
    NoParams,
    NotFound,
    SearchParams,
    SetTrustParams,
    SubmitRolloutsParams,
)
from dsonode.api.rollouts import submit_rollouts
from dsonode.core import wire
from dsonode.core.consensus import ConsensusRecord
from dsonode.core.constants import DIM
from dsonode.core.errors import DsoError, WireError
from dsonode.core.feedback import rerank
from dsonode.core.peerinfo import PeerAddrError, peer_id_from_public_key
from dsonode.extract.config import ExtractConfig
from dsonode.library import ForgottenError, Library
from dsonode.store import ExperienceRecord

_WIRE_FIELD = re.compile(r"^(?:\d+ )?(domain|text|tags?)\b")


def _param_of_wire_error(exc: WireError) -> str:
    """Which add_experience param a wire rule rejected (wire messages start with the field)."""
    m = _WIRE_FIELD.match(str(exc))
    if m is None:
        return "text"
    return "tags" if m.group(1).startswith("tag") else m.group(1)


def _given(vector: np.ndarray | None) -> np.ndarray:
    assert vector is not None  # validate_params: exactly one of query and vector
    return vector


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


class PeerAdmin(Protocol):
    """The operator's peer commands (dsonode.net.daemon.NetDaemon, from a worker thread).
    Both raise PeerAddrError for an address the node refuses and another DsoError when the
    network is not running."""

    def add_peer(self, multiaddr_text: str) -> dict[str, Any]: ...

    def forget_peer(self, peer_id: str) -> dict[str, Any]: ...


class NetworkView(PeerAdmin, Protocol):
    """What the socket sees of the network daemon (dsonode.net.daemon.NetDaemon): its state
    for `stats`, and the peer commands."""

    def stats(self) -> dict[str, Any]: ...


class ServerView(Protocol):
    """The socket server's connection counters (dsonode.api.server.RpcServer)."""

    open_connections: int
    served_connections: int
    requests: int
    errors: int


class RetrievalService:
    def __init__(
        self,
        library: Library,
        *,
        feedback_weight: float,
        extract: ExtractConfig | None = None,
    ):
        self.library = library
        #: How `submit_rollouts` extracts lessons (`[extract]`; None = the defaults).
        self.extract = extract or ExtractConfig()
        self.store = library.store
        self.author = library.author
        self.space_id = library.space_id
        #: Weight of the feedback median in the search ranking (`[api] feedback_weight`; see
        #: dsonode.core.feedback). 0 ranks by similarity alone.
        self.feedback_weight = feedback_weight
        self.started = time.monotonic()
        #: Set by the node once they exist: the server (connection counters for `stats`) and
        #: the network daemon when the node runs with peers (its state in `stats`).
        self.server: ServerView | None = None
        self.network: NetworkView | None = None

    # ---- helpers -----------------------------------------------------------------------------

    def _item(
        self, exp: ExperienceRecord, score: float | None, consensus: ConsensusRecord | None
    ) -> dict[str, Any]:
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

    # ---- methods -----------------------------------------------------------------------------

    def _needs_encoder(self, what: str, hint: str = "") -> None:
        """A light node has no encoder: refuse what would embed text, naming the role."""
        if self.library.light:
            raise NeedsFullNode(what, hint)

    def search(self, p: SearchParams) -> dict[str, Any]:
        if p.query is not None:
            self._needs_encoder(
                "search with a text 'query'", "send a 'vector' instead, or ask a full node"
            )
        t0 = time.perf_counter()
        vector = (
            self.library.embed(p.query, for_search=True)
            if p.query is not None
            else _full_query(_given(p.vector))
        )
        t1 = time.perf_counter()
        weight = self.feedback_weight
        # With feedback in the ranking, look a little deeper than k: a result just below the
        # top k by similarity may rise into it (min_score applies to the similarity).
        fetch = p.k if weight == 0 else min(jsonrpc.MAX_K, max(2 * p.k, p.k + 10))
        hits, view = self.library.search_served(
            vector,
            fetch,
            include_unvouched=p.include_unvouched,
            domain=p.domain,
            confirmed_only=p.confirmed_only,
            min_score=p.min_score,
        )
        t2 = time.perf_counter()
        by_id = {h.id: h for h in hits}
        # votes weigh their authors' standing: fresh keys move nothing (core.feedback)
        aggregates = {h.id: view.feedback(h.id) for h in hits}
        results = []
        for exp_id, similarity, score in rerank(
            [(h.id, h.similarity) for h in hits], aggregates, weight, p.k
        ):
            consensus = self.store.get_consensus(self.space_id, exp_id)
            hit = by_id[exp_id]
            item = self._item(hit.experience, score, consensus)
            item["similarity"] = round(similarity, 6)
            agg = aggregates.get(exp_id)
            item["feedback"] = agg.as_dict() if agg is not None else None
            item["trust"] = hit.verdict.as_dict()
            results.append(item)
        return {
            "results": results,
            "trust_mode": self.library.trust.mode,
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
        view = self.library.trust.view(wire.now_ms())
        agg = view.feedback(p.id)
        item["feedback"] = agg.as_dict() if agg is not None else None
        item["trust"] = view.verdict(exp).as_dict()
        return item

    def give_feedback(self, p: GiveFeedbackParams) -> dict[str, Any]:
        """Sign this node's vote on an experience (one per author: a second replaces the
        first), store and publish it; return the aggregate. Allowed on a light node: a vote
        is signed, not embedded."""
        if not self.store.has_experience(p.id):
            raise NotFound(f"no experience with id {p.id.hex()}")
        item, _new = self.library.record_feedback(p.id, p.value)
        agg = self.library.trust.view(wire.now_ms()).feedback(p.id)
        return {
            "id": p.id.hex(),
            "value": item.value,
            "feedback": agg.as_dict() if agg is not None else None,
        }

    def add_experience(self, p: AddExperienceParams) -> dict[str, Any]:
        """Sign the experience, then the library embeds it, signs our submission of its code,
        stores, indexes and publishes both (idempotent; see `Library.add_experience`).
        A light node refuses: the add carries our submission, which needs the encoder."""
        self._needs_encoder("add_experience", "add it at a full node; this node will sync it")
        try:
            provenance = self.library.stamp_provenance(p.domain, p.text)  # PROTOCOL.md 18
            experience = wire.make_experience(
                self.library.key, p.domain, p.text, tags=p.tags, provenance=provenance
            )
        except WireError as exc:
            raise InvalidParams(_param_of_wire_error(exc), f"is rejected: {exc}") from None
        return self.add_signed(experience)

    def add_signed(self, experience: wire.Experience) -> dict[str, Any]:
        """add_experience after signing (also the path of extracted lessons with provenance)."""
        try:
            outcome = self.library.add_experience(experience)
        except ForgottenError as exc:
            raise InvalidParams("text", f"is refused: {exc}") from None
        result = self._item(outcome.experience, None, outcome.consensus)
        result["new"] = outcome.new
        return result

    def submit_rollouts(self, p: SubmitRolloutsParams) -> dict[str, Any]:
        """Extract lessons from rollouts and add each like `add_experience` (see
        dsonode.api.rollouts; the lessons carry their provenance). A light node refuses before
        extracting anything (lessons are embedded and added)."""
        self._needs_encoder("submit_rollouts", "submit them at a full node")
        return submit_rollouts(self, p)

    def _embed_runtime(self) -> str:
        info = getattr(self.library.embedder, "info", None)
        runtime = info().get("runtime", "torch") if callable(info) else "torch"
        return str(runtime)

    def stats(self, _p: NoParams | None = None) -> dict[str, Any]:
        counts = self.store.counts()
        server = self.server
        return {
            "version": __version__,
            "uptime_s": round(time.monotonic() - self.started, 3),
            "space_id": self.space_id.hex(),
            "model": self.library.embedder.model_name,
            "dim": self.library.embedder.dim,
            "author": self.author.hex(),
            # A light node never loads the encoder: torch_loaded shows it (read from the
            # process's own sys.modules, so a test can check it from outside).
            "role": "light" if self.library.light else "full",
            "torch_loaded": "torch" in sys.modules,
            # What runs the model: onnx (the lean embedder), torch, or None (a light node).
            "embed_runtime": None if self.library.light else self._embed_runtime(),
            # The encoder of search queries (onnx-int8, onnx-fp32 or torch; none when light).
            "query_runtime": getattr(self.library.embedder, "query_runtime", None),
            "indexed": self.library.indexed(),
            "consensus": {"confirmed": self.library.confirmed(), "total": self.library.indexed()},
            "store": counts,
            "trust": self.trust_summary(),
            "connections": {
                "open": server.open_connections if server else 0,
                "served": server.served_connections if server else 0,
                "requests": server.requests if server else 0,
                "errors": server.errors if server else 0,
            },
            **({"network": self.network.stats()} if self.network is not None else {}),
        }

    # ---- the operator's trust ------------------------------------------------------------------

    def set_trust(self, p: SetTrustParams) -> dict[str, Any]:
        """Block / unblock / allow / disallow an author (kept in the store)."""
        changed = self.library.set_listed(p.list, p.author, p.on)
        return {
            "list": p.list,
            "author": p.author.hex(),
            "peer_id": peer_id_from_public_key(p.author),
            "on": p.on,
            "changed": changed,
        }

    def forget(self, p: ForgetParams) -> dict[str, Any]:
        """Delete an experience with its codes and votes, and tombstone it at this node."""
        (found,) = self.library.forget([p.id])
        return {"id": p.id.hex(), "found": found, "tombstoned": True}

    def retract(self, p: ForgetParams) -> dict[str, Any]:
        """Withdraw one of this node's experiences network-wide (a signed retraction)."""
        try:
            item = self.library.retract(p.id)
        except ForgottenError as exc:
            raise NotFound(str(exc)) from None
        return {"id": p.id.hex(), "retracted": True, "created": item.created}

    def trust(self, _p: NoParams | None = None) -> dict[str, Any]:
        """The trust policy, the operator's lists and the tombstone count."""
        return self.trust_summary(full=True)

    def trust_summary(self, *, full: bool = False) -> dict[str, Any]:
        policy = self.library.trust
        allowed, blocked = policy.lists()
        out: dict[str, Any] = {
            "mode": policy.mode,
            "allowed": len(allowed),
            "blocked": len(blocked),
            "tombstones": self.store.tombstones(),
        }
        if full:
            out["allowed_authors"] = sorted(a.hex() for a in allowed)
            out["blocked_authors"] = sorted(b.hex() for b in blocked)
        else:  # for `dsonode peers` (bounded: stats is fetched often)
            out["allowed_peer_ids"] = sorted(peer_id_from_public_key(a) for a in allowed)[:1000]
            out["blocked_peer_ids"] = sorted(peer_id_from_public_key(b) for b in blocked)[:1000]
        return out

    def _peers(self, what: str) -> PeerAdmin:
        if self.network is None:
            raise NoNetwork(what)
        return self.network

    def add_peer(self, p: AddPeerParams) -> dict[str, Any]:
        """Remember a peer (source "operator") and dial it as soon as the node wants peers."""
        network = self._peers("add_peer")
        try:
            return network.add_peer(p.multiaddr)
        except PeerAddrError as exc:
            raise InvalidParams("multiaddr", f"is refused by this node: {exc}") from None
        except DsoError as exc:
            raise NoNetwork("add_peer", str(exc)) from None

    def forget_peer(self, p: ForgetPeerParams) -> dict[str, Any]:
        """Drop a peer from the node's book: it is not dialled from it any more (it may still
        dial us, and a Kademlia lookup may find it again)."""
        network = self._peers("forget_peer")
        try:
            return network.forget_peer(p.peer_id)
        except DsoError as exc:
            raise NoNetwork("forget_peer", str(exc)) from None

    def health(self, _p: NoParams | None = None) -> dict[str, Any]:
        return {
            "status": "ok",
            "version": __version__,
            "uptime_s": round(time.monotonic() - self.started, 3),
            "space_id": self.space_id.hex(),
            "indexed": self.library.indexed(),
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
            # hop to the daemon's event loop and back: quick, but not on the server's loop
            "add_peer": in_thread(self.add_peer),
            "forget_peer": in_thread(self.forget_peer),
            "set_trust": in_thread(self.set_trust),
            "forget": in_thread(self.forget),
            "retract": in_thread(self.retract),
            "trust": in_thread(self.trust),
        }
