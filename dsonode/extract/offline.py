"""The offline default extractor: contrastive and extractive, no language model.

It does not write anything new: every lesson is a step that a successful rollout actually took,
prefixed with the task's domain. For each group (rollouts of one task with different rewards):

1. successful rollouts are those rewarded above the group's mean, failed ones below it
   (the sign of the GRPO advantage, computed exactly by `reward_labels`: huge rewards cannot
   overflow it); each rollout is split into steps (`split_steps`);
2. every step of the batch is embedded once with the node's encoder (unit vectors);
3. a step s of a successful rollout scores
       mean over the other successes S of max_{t in S} cos(s, t)
     - mean over the failures F of max_{t in F} cos(s, t)
   (1.0 for the first term when there is no other success): high when the successes share
   the step and the failures lack it, ~0 for a step every attempt takes;
   plus `batch_weight` x the evidence of the whole batch: among the other rollouts (any task)
   holding a near-copy of the step (cosine > `holder_threshold`), (successes - failures) /
   (holders + 1). Boilerplate ("Let me think step by step.") is held by good and bad
   attempts alike and gets ~0, so a lucky in-group contrast alone does not make a lesson;
   the last step of a rollout of 3 or more steps (the final answer) is not a candidate;
4. the best steps above `min_score` are rewritten, best first, into general lessons by
   `dsonode.extract.general.generalise`: one imperative sentence of at most 32 words with
   the condition it applies to, without the task's values, names, quoted literals or
   entities (the `task_specific` rule of that module). A step that cannot be rewritten is
   dropped and the reason recorded in `Extraction.dropped` ("<task> rollout i step k: why");
   the next best step is tried, until `per_group` lessons;
5. lessons of one domain whose texts' embeddings have cosine > `merge_threshold` are merged
   (the higher-scored text stays, the provenance of both is kept).

Deterministic: same input, same encoder -> same lessons in the same order. An LLM extractor
implements the same `Extractor` protocol (`extract(groups) -> Extraction`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np

from dsonode.extract.general import (
    MAX_LESSON_WORDS,
    compose,
    domain_condition,
    facts_of,
    generalise,
    task_specific,
)
from dsonode.extract.rollouts import Group, SkippedGroup

__all__ = [
    "MAX_LESSON_WORDS",
    "Extraction",
    "Extractor",
    "GroupFailure",
    "Lesson",
    "OfflineExtractor",
    "Source",
    "provenance_of",
]

EXTRACTOR_TAG = "extracted"
OFFLINE_TAG = "offline"

#: texts -> (n, d) float32 unit vectors (e.g. `Embedder.encode_base` or `Embedder.embed`)
EmbedFn = Callable[[Sequence[str]], np.ndarray]


@dataclass(frozen=True, order=True)
class Source:
    """Where a lesson came from: rollout index within its group, step index within the rollout."""

    task_id: str
    rollout: int
    step: int


@dataclass
class Lesson:
    text: str
    domain: str
    score: float
    sources: list[Source]  # the first one is the step whose text became the lesson
    tags: tuple[str, ...] = (EXTRACTOR_TAG, OFFLINE_TAG)
    merged: int = 0  # how many other candidate lessons were merged into this one
    #: LLM path: "add", or "modify"/"merge" of existing experiences (hex ids in `supersedes`).
    #: Experiences are immutable: a modify or merge is a new experience naming what it revises.
    op: str = "add"
    supersedes: tuple[str, ...] = ()
    #: kinds of task facts the offline rewrite took out of the step ("number", "entity", ...)
    abstracted: tuple[str, ...] = ()
    #: offline path: text == general.compose(condition, action); the merge compares actions
    condition: str = ""
    action: str = ""

    @property
    def source(self) -> Source:
        return self.sources[0]


@dataclass(frozen=True)
class GroupFailure:
    """A group the extractor could not process (e.g. the LLM server failed); others go on."""

    task_id: str
    error: str


@dataclass
class Extraction:
    lessons: list[Lesson]
    groups: int  # groups that carried signal and were examined
    skipped: list[SkippedGroup] = field(default_factory=list)
    merged: int = 0  # candidates folded into another lesson (or into an existing experience)
    steps: int = 0  # steps embedded
    failed: list[GroupFailure] = field(default_factory=list)
    #: LLM path: hex ids of existing experiences that a lesson duplicated (cosine > 0.9)
    merged_into_existing: list[str] = field(default_factory=list)
    #: LLM path: operations dropped by validation, as (task_id, reason)
    dropped: list[tuple[str, str]] = field(default_factory=list)


#: Provenance values are bounded by the wire format (8 pairs, 256 bytes a value).
_PROV_TASK_BYTES = 200
MAX_SUPERSEDES = 4


def _prov_text(value: str, max_bytes: int) -> str:
    """Printable characters only (the wire refuses control characters), cut to `max_bytes`."""
    clean = "".join(ch if ch.isprintable() else " " for ch in value)
    raw = clean.encode("utf-8", "replace")[:max_bytes]
    return raw.decode("utf-8", "ignore").strip() or "?"


def provenance_of(lesson: Lesson) -> list[tuple[str, str]]:
    """The signed provenance pairs of a lesson's experience (fits the wire's bounds).

    extractor = offline | llm; source = "<task_id> rollout <i> step <k>" of its first source
    (step -1: the whole rollout); sources = how many rollouts support it; supersedes.N = the
    hex ids of the experiences a modify/merge revises (they stay in the store: immutable);
    abstracted = the kinds of task facts the offline rewrite removed from the step.
    """
    src = lesson.source
    pairs = [
        ("extractor", OFFLINE_TAG if OFFLINE_TAG in lesson.tags else "llm"),
        (
            "source",
            f"{_prov_text(src.task_id, _PROV_TASK_BYTES)} rollout {src.rollout} step {src.step}",
        ),
        ("sources", str(len(lesson.sources))),
    ]
    if lesson.op != "add":
        pairs.append(("op", lesson.op))
    for i, exp_id in enumerate(lesson.supersedes[:MAX_SUPERSEDES]):
        pairs.append((f"supersedes.{i}", exp_id))
    if lesson.abstracted:
        pairs.append(("abstracted", ",".join(lesson.abstracted)))
    return pairs


class Extractor(Protocol):
    def extract(self, groups: Sequence[Group]) -> Extraction: ...


class OfflineExtractor:
    def __init__(
        self,
        embed: EmbedFn,
        per_group: int = 2,
        min_score: float = 0.05,
        merge_threshold: float = 0.9,
        batch_weight: float = 1.0,
        holder_threshold: float = 0.85,
        max_tries: int = 12,
    ) -> None:
        if per_group < 1:
            raise ValueError("per_group must be >= 1")
        if max_tries < 1:
            raise ValueError("max_tries must be >= 1")
        if not -1.0 <= merge_threshold <= 1.0:
            raise ValueError("merge_threshold must be a cosine in [-1, 1]")
        self.embed = embed
        self.per_group = per_group
        self.min_score = min_score
        self.merge_threshold = merge_threshold
        self.batch_weight = batch_weight
        self.holder_threshold = holder_threshold
        #: steps of a group tried in turn when the best ones cannot be made general
        self.max_tries = max_tries

    def extract(self, groups: Sequence[Group]) -> Extraction:
        # One embedding call for every step of every group (batching is what makes it fast).
        plans = []
        texts: list[str] = []
        for group in groups:
            labels = np.array(group.labels(), dtype=np.int64)
            per_rollout = []
            for r in group.rollouts:
                steps = r.steps()
                per_rollout.append((len(texts), len(steps)))
                texts.extend(steps)
            plans.append((group, labels > 0, labels < 0, per_rollout))
        vecs = self._embed(texts)
        owner = np.empty(len(texts), dtype=np.int64)  # global rollout number of each step
        label: list[int] = []  # per global rollout: +1 success, -1 failure, 0 at the mean
        for _, success, failure, per_rollout in plans:
            for i, (start, n) in enumerate(per_rollout):
                owner[start : start + n] = len(label)
                label.append(1 if success[i] else -1 if failure[i] else 0)
        evidence = self._batch_evidence(vecs, owner, np.array(label, dtype=np.int64))

        picked: list[tuple[Lesson, np.ndarray]] = []
        dropped: list[tuple[str, str]] = []
        for group, success, failure, per_rollout in plans:
            got, why = self._group_candidates(group, success, failure, per_rollout, vecs, evidence)
            picked.extend(got)
            dropped.extend(why)
        # the merge compares what the lessons tell to do (one embedding call for all)
        lesson_vecs = self._embed([lesson.action or lesson.text for lesson, _ in picked])
        candidates = [(lesson, lesson_vecs[i]) for i, (lesson, _) in enumerate(picked)]
        lessons, merged = self._merge(candidates)
        return Extraction(
            lessons=lessons,
            groups=len(groups),
            merged=merged,
            steps=len(texts),
            dropped=dropped,
        )

    def _embed(self, texts: list[str]) -> np.ndarray:
        if not texts:
            return np.zeros((0, 1), dtype=np.float32)
        vecs = np.asarray(self.embed(texts), dtype=np.float32)
        if vecs.ndim != 2 or vecs.shape[0] != len(texts):
            raise ValueError(f"embed returned shape {vecs.shape} for {len(texts)} texts")
        norms = np.linalg.norm(vecs, axis=1, keepdims=True)
        return vecs / np.maximum(norms, 1e-12)

    def _batch_evidence(self, vecs: np.ndarray, owner: np.ndarray, label: np.ndarray) -> np.ndarray:
        """Per step: (successes - failures) / (holders + 1) over the other rollouts holding it."""
        out = np.zeros(len(vecs), dtype=np.float64)
        if self.batch_weight == 0 or len(vecs) == 0:
            return out
        chunk = 512  # bounds the similarity block to chunk x n_steps floats
        for start in range(0, len(vecs), chunk):
            sims = vecs[start : start + chunk] @ vecs.T
            for row, hits in enumerate(sims > self.holder_threshold):
                holders = np.unique(owner[hits])
                holders = holders[holders != owner[start + row]]
                out[start + row] = label[holders].sum() / (len(holders) + 1)
        return out

    def _group_candidates(
        self,
        group: Group,
        success: np.ndarray,
        failure: np.ndarray,
        per_rollout: list[tuple[int, int]],
        vecs: np.ndarray,
        evidence: np.ndarray,
    ) -> tuple[list[tuple[Lesson, np.ndarray]], list[tuple[str, str]]]:
        """Up to `per_group` lessons of one group: steps of successful rollouts that resemble
        the other successes more than the failures, rewritten as general lessons; and the
        steps dropped on the way, with why. `per_rollout[i]` is (first row, steps)."""

        def block(i: int) -> np.ndarray:
            start, n = per_rollout[i]
            return vecs[start : start + n]

        succ = [int(i) for i in np.flatnonzero(success) if per_rollout[i][1]]
        fail = [int(i) for i in np.flatnonzero(failure) if per_rollout[i][1]]
        if not succ or not fail:
            return [], []
        scored: list[tuple[float, int, int]] = []
        for i in succ:
            own = block(i)
            others = [j for j in succ if j != i]
            pos = (
                np.mean([(own @ block(j).T).max(axis=1) for j in others], axis=0)
                if others
                else np.ones(len(own))
            )
            neg = np.mean([(own @ block(j).T).max(axis=1) for j in fail], axis=0)
            start, n = per_rollout[i]
            score = pos - neg + self.batch_weight * evidence[start : start + n]
            last = n - 1 if n >= 3 else n  # the final answer states a result, not a method
            for k in range(min(n, last)):
                scored.append((float(score[k]), int(i), k))
        # best first; ties broken by position, so the order is deterministic
        scored.sort(key=lambda t: (-round(t[0], 6), t[1], t[2]))
        facts = facts_of(group)
        out: list[tuple[Lesson, np.ndarray]] = []
        dropped: list[tuple[str, str]] = []
        for score, i, k in scored[: self.max_tries]:
            if len(out) >= self.per_group or score < self.min_score:
                break
            v = block(i)[k]
            # within a group, a step that repeats an already chosen one adds nothing
            if any(float(v @ w) > self.merge_threshold for _, w in out):
                continue
            general = generalise(group.rollouts[i].steps()[k], group, facts)
            # the rule guards every lesson, whatever the rewrite did (never a task's fact)
            why = general.dropped if general.text is None else task_specific(general.text, facts)
            if general.text is None or why is not None:
                dropped.append((group.task_id, f"rollout {i} step {k}: {why}"))
                continue
            if any(general.text == kept.text for kept, _ in out):
                continue
            lesson = Lesson(
                text=general.text,
                domain=group.domain,
                score=score,
                sources=[Source(group.task_id, i, k)],
                abstracted=general.removed,
                condition=general.condition,
                action=general.action,
            )
            out.append((lesson, v))
        return out, dropped

    def _merge(self, candidates: list[tuple[Lesson, np.ndarray]]) -> tuple[list[Lesson], int]:
        """Greedy near-duplicate merge across groups, best score first, per domain."""
        order = sorted(
            range(len(candidates)),
            key=lambda i: (-round(candidates[i][0].score, 6), candidates[i][0].text),
        )
        kept: list[tuple[Lesson, np.ndarray]] = []
        merged = 0
        for i in order:
            lesson, v = candidates[i]
            target = next(
                (
                    kl
                    for kl, kv in kept
                    if kl.domain == lesson.domain and float(v @ kv) > self.merge_threshold
                ),
                None,
            )
            if target is None:
                kept.append((lesson, v))
            else:
                target.sources.extend(lesson.sources)
                target.merged += 1 + lesson.merged
                merged += 1
                if target.condition != lesson.condition and target.action:
                    # tasks that teach the same thing under different conditions: the
                    # condition of one of them is not the lesson's, the domain's is
                    general = compose(domain_condition(target.domain), target.action)
                    if len(general.split(" ")) <= MAX_LESSON_WORDS:
                        target.condition, target.text = domain_condition(target.domain), general
        return [lesson for lesson, _ in kept], merged
