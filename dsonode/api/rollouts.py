"""The socket method `submit_rollouts`: rollouts in, signed experiences stored and published.

`submit_rollouts(service, params)` runs in one of the socket server's worker threads. It checks
every rollout (a bad one is reported by its index, never fatal), groups them by task, runs the
extractor (as `[extract]` says: the offline one with the node's encoder by default; the LLM
one when the request names a server, or when `extract.backend = "llm"`, or when the node's
environment names one: $DSONODE_LLM_BASE_URL and $DSONODE_LLM_MODEL)
and hands each lesson, signed with its provenance, to the same code path as `add_experience`
(`RetrievalService.add_signed`, then `Library.add_experience`: embed, sign the submission,
store, index, publish).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from dsonode.api.jsonrpc import MAX_QUERY_BYTES, InvalidParams, SearchParams, SubmitRolloutsParams
from dsonode.core import wire
from dsonode.core.errors import WireError
from dsonode.extract.config import ExtractConfig
from dsonode.extract.llm import ChatClient, Existing, LLMConfig, LLMError, LLMExtractor
from dsonode.extract.offline import Lesson, OfflineExtractor, provenance_of
from dsonode.extract.rollouts import RolloutError, group_rollouts, parse_object

if TYPE_CHECKING:  # the service imports this module
    from dsonode.api.service import RetrievalService

#: sources listed per lesson in a reply (their count is always given)
MAX_REPLY_SOURCES = 16
#: steps of one request (the offline extractor embeds each one and compares it with all the
#: others): bounds the CPU one call can take; `dsonode ingest` chunks well below it
MAX_SUBMIT_STEPS = 20_000


def _retriever(service: RetrievalService) -> Callable[[str, int], list[Existing]]:
    def retrieve(task_text: str, k: int) -> list[Existing]:
        query = task_text.encode("utf-8", "replace")[:MAX_QUERY_BYTES].decode("utf-8", "ignore")
        if not query.strip():
            return []
        found = service.search(SearchParams(query=query, k=k))["results"]
        return [Existing(r["id"], r["text"], r["domain"]) for r in found]

    return retrieve


def _llm_config(params: SubmitRolloutsParams, extract: ExtractConfig) -> LLMConfig | None:
    """The request's server, else [extract]'s (backend "llm"), else the environment's."""
    base_url, model = params.llm_base_url, params.llm_model
    if base_url is None and model is None and extract.backend == "llm":
        base_url, model = extract.endpoint or None, extract.model or None
    try:
        config = LLMConfig.from_env(None, base_url=base_url, model=model, **extract.llm_settings)
    except LLMError as exc:
        raise InvalidParams("llm", f"is rejected: {exc}") from None
    if config is None and extract.backend == "llm":
        raise InvalidParams(
            "llm", "is needed: extract.backend is llm but no endpoint and model are configured"
        )
    return config


def lesson_row(lesson: Lesson, exp_id: bytes) -> dict[str, Any]:
    return {
        "id": exp_id.hex(),
        "text": lesson.text,
        "domain": lesson.domain,
        "op": lesson.op,
        "supersedes": list(lesson.supersedes),
        "score": round(float(lesson.score), 4),
        "merged": lesson.merged,
        "source_count": len(lesson.sources),
        "sources": [
            {"task_id": s.task_id, "rollout": s.rollout, "step": s.step}
            for s in lesson.sources[:MAX_REPLY_SOURCES]
        ],
    }


def submit_rollouts(service: RetrievalService, params: SubmitRolloutsParams) -> dict[str, Any]:
    rollouts = []
    bad = []
    for i, obj in enumerate(params.rollouts):
        try:
            rollouts.append(parse_object(obj, i))
        except RolloutError as exc:
            bad.append({"index": i, "error": str(exc)})
    groups, skipped = group_rollouts(rollouts)
    steps = sum(len(r.steps()) for g in groups for r in g.rollouts)
    if steps > MAX_SUBMIT_STEPS:
        raise InvalidParams(
            "rollouts", f"hold {steps} steps, the limit is {MAX_SUBMIT_STEPS}: send fewer a call"
        )
    extract = service.extract
    llm = _llm_config(params, extract)
    embed = service.library.embed_base
    if llm is None:
        result = OfflineExtractor(embed, per_group=extract.per_group).extract(groups)
    else:
        with ChatClient(llm) as chat:
            retrieve = _retriever(service)
            result = LLMExtractor(chat, embed, retrieve, k=extract.retrieve_k).extract(groups)

    added: list[dict[str, Any]] = []
    rejected: list[dict[str, Any]] = []
    existing = 0
    for lesson in result.lessons:
        try:
            experience = wire.make_experience(
                service.library.key,
                lesson.domain,
                lesson.text,
                tags=lesson.tags,
                provenance=service.library.stamp_provenance(
                    lesson.domain, lesson.text, provenance_of(lesson)
                ),
            )
        except WireError as exc:  # should not happen (lessons are bounded); never fatal
            rejected.append({"text": lesson.text[:200], "error": str(exc)})
            continue
        if params.dry_run:
            new = service.store.get_experience(experience.id) is None
        else:
            new = bool(service.add_signed(experience)["new"])
        if new:
            added.append(lesson_row(lesson, experience.id))
        else:
            existing += 1
    return {
        "extractor": "offline" if llm is None else "llm",
        "dry_run": params.dry_run,
        "rollouts": len(rollouts),
        "groups": len(groups),
        "skipped_groups": len(skipped),
        "skipped": [{"task_id": s.task_id, "reason": s.reason} for s in skipped],
        "bad_rollouts": bad,
        "failed_groups": [{"task_id": f.task_id, "error": f.error} for f in result.failed],
        "added": added,
        "merged": result.merged,
        "merged_into_existing": result.merged_into_existing,
        "dropped_operations": [{"task_id": t, "reason": why} for t, why in result.dropped],
        "existing": existing,
        "rejected": rejected,
    }
