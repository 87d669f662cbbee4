"""The LLM extractor: Training-Free GRPO against any OpenAI-compatible chat-completions server.

For operators who run a model server (vLLM, llama.cpp, Ollama, a hosted API). Per group of
rollouts of one task (see `dsonode.extract.prompts` for the exact prompts):

1. summarise each rollout step by step against its reward and the ground truth (one call each);
2. retrieve the existing experiences most similar to the task (`retrieve(task_text, k)`, in a
   node: its own search) and ask for operations `add` / `modify` / `merge` / `keep` as JSON;
3. apply them (`LLMExtractor._apply`): the JSON is repaired (code fences, trailing commas, prose
   around the first array/object) and validated, never trusted: ids must be among the
   experiences shown, lessons at most 32 words, not task-specific (the rule of
   `dsonode.extract.general.task_specific`, the same that guards the offline path); a bad
   operation is dropped with its reason, an answer without any usable JSON fails the group.

Experiences are immutable signed items identified by (domain, text), so nothing is edited in
place. `modify` of E yields a new experience whose provenance names E (`supersedes.0`, op
"modify"); `merge` of E1..En yields one new experience naming all of them (`supersedes.i`, op
"merge"); the old ones stay in every store and index, the provenance tells readers which lesson
revises which. `keep` changes nothing. A new lesson whose embedding (the node's encoder) has
cosine > `dup_threshold` (0.9) to an existing experience shown to the model, or to a lesson
already taken in this run, is merged into it (counted, not added).

A group whose calls fail (after retries on 429, 5xx, connection errors and timeouts, with
exponential backoff and jitter) is reported in `Extraction.failed`; the other groups go on.
The API key comes from the environment ($DSONODE_LLM_API_KEY) and is never logged or shown.
"""

from __future__ import annotations

import json
import logging
import os
import random
import re
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

import numpy as np

from dsonode.core.errors import DsoError
from dsonode.core.wire import MAX_TEXT_BYTES, normalize_text
from dsonode.extract import prompts
from dsonode.extract.general import task_specific
from dsonode.extract.offline import (
    EXTRACTOR_TAG,
    MAX_LESSON_WORDS,
    MAX_SUPERSEDES,
    EmbedFn,
    Extraction,
    GroupFailure,
    Lesson,
    Source,
)
from dsonode.extract.rollouts import Group, Rollout

__all__ = [
    "API_KEY_ENV",
    "BASE_URL_ENV",
    "MODEL_ENV",
    "ChatClient",
    "Existing",
    "LLMConfig",
    "LLMError",
    "LLMExtractor",
    "Operation",
    "extract_json",
    "validate_operations",
]

log = logging.getLogger("dsonode.extract.llm")

BASE_URL_ENV = "DSONODE_LLM_BASE_URL"
MODEL_ENV = "DSONODE_LLM_MODEL"
API_KEY_ENV = "DSONODE_LLM_API_KEY"
LLM_TAG = "llm"

MAX_URL_CHARS = 2048
MAX_MODEL_CHARS = 256
#: the most characters of a completion that the JSON repair looks at
MAX_JSON_CHARS = 64 * 1024
MAX_OPERATIONS = 8


class LLMError(DsoError):
    """The model server could not give a usable completion (after retries where it helps)."""


# ------------------------------------------------------------------------------- configuration


def _check_base_url(url: str) -> str:
    if not isinstance(url, str) or not url or len(url) > MAX_URL_CHARS:
        raise LLMError(f"LLM base URL must be 1-{MAX_URL_CHARS} characters")
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise LLMError(f"LLM base URL must be http(s)://host[:port][/path], got {url[:100]!r}")
    if parts.username or parts.password or parts.query or parts.fragment:
        raise LLMError("LLM base URL must not hold credentials, a query or a fragment")
    return url.rstrip("/")


@dataclass(frozen=True)
class LLMConfig:
    base_url: str  # e.g. http://127.0.0.1:8000/v1 (".../chat/completions" is appended)
    model: str
    api_key: str | None = field(default=None, repr=False)  # never printed
    timeout_s: float = 60.0  # per request, whole response
    max_retries: int = 3  # after the first attempt, on 429/5xx/timeouts/connection errors
    backoff_s: float = 0.5  # first backoff; doubles each retry, plus up to 50% jitter
    backoff_max_s: float = 10.0
    concurrency: int = 4  # requests in flight at once
    max_response_bytes: int = 256 * 1024
    max_tokens: int = 1024
    temperature: float = 0.2

    def __post_init__(self) -> None:
        object.__setattr__(self, "base_url", _check_base_url(self.base_url))
        if not isinstance(self.model, str) or not 0 < len(self.model) <= MAX_MODEL_CHARS:
            raise LLMError(f"LLM model must be 1-{MAX_MODEL_CHARS} characters")
        if self.api_key is not None and (not self.api_key or "\n" in self.api_key):
            raise LLMError(f"${API_KEY_ENV} must be a non-empty single line")
        checks = [
            ("timeout_s", 0 < self.timeout_s <= 3600),
            ("max_retries", 0 <= self.max_retries <= 10),
            ("backoff_s", 0 <= self.backoff_s <= 60),
            ("backoff_max_s", 0 <= self.backoff_max_s <= 600),
            ("concurrency", 1 <= self.concurrency <= 64),
            ("max_response_bytes", 1024 <= self.max_response_bytes <= 16 * 1024 * 1024),
            ("max_tokens", 1 <= self.max_tokens <= 32768),
            ("temperature", 0 <= self.temperature <= 2),
        ]
        for name, ok in checks:
            if not ok:
                raise LLMError(f"LLM setting {name} is out of range: {getattr(self, name)!r}")

    @classmethod
    def from_env(
        cls,
        env: Mapping[str, str] | None = None,
        *,
        base_url: str | None = None,
        model: str | None = None,
        **settings: Any,
    ) -> LLMConfig | None:
        """The configuration from arguments, else $DSONODE_LLM_BASE_URL / $DSONODE_LLM_MODEL.

        None when no base URL and model are given (the offline extractor is used then). The
        key ($DSONODE_LLM_API_KEY) is sent only to the environment's base URL, or to any URL
        when the environment names none: a caller-chosen URL never receives the key meant
        for another server.
        """
        env = os.environ if env is None else env
        env_url = env.get(BASE_URL_ENV) or None
        url = base_url or env_url
        name = model or env.get(MODEL_ENV) or None
        if url is None and name is None:
            return None
        if url is None or name is None:
            raise LLMError(
                f"the LLM extractor needs both a base URL and a model (--llm-base-url and "
                f"--llm-model, or ${BASE_URL_ENV} and ${MODEL_ENV})"
            )
        key = env.get(API_KEY_ENV) or None
        if (
            key is not None
            and env_url is not None
            and _check_base_url(url) != _check_base_url(env_url)
        ):
            key = None  # the key belongs to the environment's server, not to this one
        return cls(base_url=url, model=name, api_key=key, **settings)


# ------------------------------------------------------------------------------- HTTP client


class _Retryable(Exception):
    def __init__(self, reason: str, retry_after: float | None = None):
        super().__init__(reason)
        self.retry_after = retry_after


class ChatClient:
    """A synchronous, thread-safe chat-completions client (one httpx connection pool)."""

    def __init__(
        self,
        config: LLMConfig,
        *,
        sleep: Callable[[float], None] = time.sleep,
        rng: Callable[[], float] = random.random,
    ) -> None:
        import httpx

        self.config = config
        self._sleep = sleep
        self._rng = rng
        headers = {
            "Content-Type": "application/json",
            "Accept": "application/json",
            # no compression: the response bound counts bytes as they arrive, and a small
            # compressed body must not expand into a large one in one step
            "Accept-Encoding": "identity",
        }
        if config.api_key:
            headers["Authorization"] = f"Bearer {config.api_key}"
        self._http = httpx.Client(
            timeout=httpx.Timeout(config.timeout_s),
            headers=headers,
            limits=httpx.Limits(max_connections=config.concurrency),
            follow_redirects=False,
            trust_env=False,  # no proxy from the environment: the URL is the URL
        )
        self._slots = threading.BoundedSemaphore(config.concurrency)
        self.requests = 0  # HTTP requests sent (retries included)

    @property
    def url(self) -> str:
        return self.config.base_url + "/chat/completions"

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> ChatClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def complete(self, messages: Sequence[Mapping[str, str]]) -> str:
        """The assistant's text for `messages`; LLMError when the server cannot give one."""
        payload = {
            "model": self.config.model,
            "messages": list(messages),
            "temperature": self.config.temperature,
            "max_tokens": self.config.max_tokens,
            "stream": False,
        }
        attempts = self.config.max_retries + 1
        last = ""
        for attempt in range(attempts):
            try:
                with self._slots:
                    return self._post(payload)
            except _Retryable as exc:
                last = str(exc)
                if attempt + 1 == attempts:
                    break
                delay = min(self.config.backoff_max_s, self.config.backoff_s * 2**attempt)
                delay *= 1 + 0.5 * self._rng()  # jitter: retries of many workers spread out
                if exc.retry_after is not None:
                    delay = max(delay, min(exc.retry_after, self.config.backoff_max_s))
                log.info("LLM request failed (%s); retry %d in %.2f s", last, attempt + 1, delay)
                self._sleep(delay)
        raise LLMError(f"LLM server gave no usable answer after {attempts} attempts: {last}")

    def _post(self, payload: dict[str, Any]) -> str:
        import httpx

        self.requests += 1
        deadline = time.monotonic() + self.config.timeout_s
        limit = self.config.max_response_bytes
        try:
            with self._http.stream("POST", self.url, json=payload) as response:
                body = bytearray()
                for chunk in response.iter_bytes():
                    body += chunk
                    if len(body) > limit:
                        raise LLMError(f"LLM response is over {limit} bytes")
                    if time.monotonic() > deadline:  # a server trickling bytes
                        raise _Retryable(f"timed out after {self.config.timeout_s:g} s")
                status = response.status_code
                retry_after = response.headers.get("retry-after")
        except httpx.TimeoutException:
            raise _Retryable(f"timed out after {self.config.timeout_s:g} s") from None
        except httpx.TransportError as exc:
            raise _Retryable(f"connection failed: {type(exc).__name__}") from None
        if status == 429 or 500 <= status <= 599:
            raise _Retryable(f"HTTP {status}", _parse_retry_after(retry_after))
        if status != 200:
            raise LLMError(f"LLM server answered HTTP {status}: {_snippet(body)}")
        return _completion_text(bytes(body))


def _parse_retry_after(value: str | None) -> float | None:
    if value is None:
        return None
    try:
        seconds = float(value)
    except ValueError:
        return None  # an HTTP date: our own backoff is good enough
    return seconds if 0 <= seconds <= 3600 else None


def _snippet(body: bytes | bytearray, n: int = 200) -> str:
    return bytes(body[:n]).decode("utf-8", "replace").replace("\n", " ")


def _completion_text(body: bytes) -> str:
    """choices[0].message.content of a chat-completions response, checked."""
    try:
        obj = json.loads(body)
    except (ValueError, RecursionError):
        raise LLMError(f"LLM response is not JSON: {_snippet(body)}") from None
    try:
        content = obj["choices"][0]["message"]["content"]
    except (KeyError, IndexError, TypeError):
        raise LLMError("LLM response has no choices[0].message.content") from None
    if not isinstance(content, str):
        raise LLMError("LLM response content is not a string")
    return content


# ------------------------------------------------------------------------------- JSON repair

_FENCE = re.compile(r"```[a-zA-Z0-9_-]*")
_TRAILING_COMMA = re.compile(r",(\s*[\]}])")


def _balanced_end(text: str, start: int) -> int | None:
    """Index of the bracket closing the one at `start` (strings respected), or None."""
    stack = []
    in_string = escaped = False
    for i in range(start, len(text)):
        ch = text[i]
        if in_string:
            if escaped:
                escaped = False
            elif ch == "\\":
                escaped = True
            elif ch == '"':
                in_string = False
        elif ch == '"':
            in_string = True
        elif ch in "[{":
            stack.append("]" if ch == "[" else "}")
        elif ch in "]}":
            if not stack or stack.pop() != ch:
                return None
            if not stack:
                return i
    return None


def extract_json(text: str, max_chars: int = MAX_JSON_CHARS) -> Any:
    """The first JSON array or object in a model's answer, repaired; LLMError if none.

    Repairs: code fences removed, prose before and after ignored, trailing commas dropped.
    Anything else (single quotes, comments, a cut-off answer) is rejected, not guessed at.
    """
    if not isinstance(text, str):
        raise LLMError("the answer is not text")
    if len(text) > max_chars:
        raise LLMError(f"the answer is {len(text)} characters, the limit is {max_chars}")
    text = _FENCE.sub("", text)
    starts = [i for i in (text.find("["), text.find("{")) if i >= 0]
    if not starts:
        raise LLMError("no JSON array or object in the answer")
    start = min(starts)
    end = _balanced_end(text, start)
    if end is None:
        raise LLMError("the JSON in the answer is not closed (cut off?)")
    candidate = text[start : end + 1]
    for attempt in (candidate, _TRAILING_COMMA.sub(r"\1", candidate)):
        try:
            return json.loads(attempt)
        except (ValueError, RecursionError):
            continue
    raise LLMError("the JSON in the answer is malformed beyond repair")


# ------------------------------------------------------------------------------- operations


@dataclass(frozen=True)
class Existing:
    """An experience already in the library (as `retrieve` returns it)."""

    id: str  # 64 hex digits
    text: str
    domain: str = ""


@dataclass(frozen=True)
class Operation:
    op: str  # add | modify | merge | keep
    text: str | None = None
    ids: tuple[str, ...] = ()  # hex ids of existing experiences (modify: 1, merge: >= 2)


_OP_SYNONYMS = {"none": "keep", "update": "modify", "edit": "modify"}
_WORD = re.compile(r"[a-z0-9]+")


def _lesson(raw: Any) -> str:
    if not isinstance(raw, str):
        raise ValueError("text must be a string")
    text = normalize_text(raw)
    if not text:
        raise ValueError("text is empty")
    words = len(text.split(" "))
    if words > MAX_LESSON_WORDS:
        raise ValueError(f"lesson has {words} words, the limit is {MAX_LESSON_WORDS}")
    if len(text.encode("utf-8", "surrogatepass")) > MAX_TEXT_BYTES:
        raise ValueError(f"lesson is over {MAX_TEXT_BYTES} bytes")
    if any(not ch.isprintable() for ch in text):
        raise ValueError("lesson contains control characters")
    return text


def _resolve(raw: Any, labels: Mapping[str, str]) -> str:
    """A label ("E2") or full hex id shown to the model -> the hex id; else ValueError."""
    if not isinstance(raw, str) or len(raw) > 80:
        raise ValueError("id must be a label like 'E1'")
    key = raw.strip()
    if key.upper() in labels:
        return labels[key.upper()]
    if key.lower() in labels.values():
        return key.lower()
    raise ValueError(f"id {key[:20]!r} is not among the experiences shown")


def validate_operations(obj: Any, labels: Mapping[str, str]) -> tuple[list[Operation], list[str]]:
    """Typed operations from the model's JSON, and the reasons for the ones dropped.

    `labels` maps "E1".. to the hex ids shown in the prompt. A list of operations, an object
    with an "operations" list, or one operation object is accepted.
    """
    if isinstance(obj, dict):
        obj = obj.get("operations", [obj]) if "op" not in obj else [obj]
    if not isinstance(obj, list):
        raise LLMError("the operations are not a JSON array")
    ops: list[Operation] = []
    dropped: list[str] = []
    for i, raw in enumerate(obj[: MAX_OPERATIONS * 4]):
        try:
            if len(ops) >= MAX_OPERATIONS:
                raise ValueError(f"more than {MAX_OPERATIONS} operations")
            if not isinstance(raw, dict):
                raise ValueError("not an object")
            kind = raw.get("op", raw.get("operation"))
            kind = _OP_SYNONYMS.get(kind, kind) if isinstance(kind, str) else kind
            if kind == "add":
                ops.append(Operation("add", _lesson(raw.get("text"))))
            elif kind == "modify":
                ops.append(
                    Operation(
                        "modify", _lesson(raw.get("text")), (_resolve(raw.get("id"), labels),)
                    )
                )
            elif kind == "merge":
                ids = raw.get("ids")
                if not isinstance(ids, list) or not 2 <= len(ids) <= MAX_SUPERSEDES:
                    raise ValueError(f"merge needs 'ids', 2 to {MAX_SUPERSEDES} of them")
                resolved = tuple(dict.fromkeys(_resolve(x, labels) for x in ids))
                if len(resolved) < 2:
                    raise ValueError("merge needs two different ids")
                ops.append(Operation("merge", _lesson(raw.get("text")), resolved))
            elif kind == "keep":
                ident = raw.get("id")
                ops.append(Operation("keep", None, (_resolve(ident, labels),) if ident else ()))
            else:
                raise ValueError(f"unknown op {str(kind)[:20]!r}")
        except ValueError as exc:
            dropped.append(f"operation {i}: {exc}")
    if len(obj) > MAX_OPERATIONS * 4:
        dropped.append(f"operations after the first {MAX_OPERATIONS * 4} ignored")
    return ops, dropped


# ------------------------------------------------------------------------------- extractor

#: task text, k -> the most similar existing experiences
RetrieveFn = Callable[[str, int], Sequence[Existing]]


def attempt_text(rollout: Rollout) -> str:
    if isinstance(rollout.response, str):
        return rollout.response
    return "\n".join(f"[{m['role']}] {m['content']}" for m in rollout.response if m["content"])


#: rollouts of one group shown to the model (the best and the worst half of them when more)
MAX_GROUP_ROLLOUTS = 16


def considered(group: Group) -> list[int]:
    """Indices of the rollouts the model sees, in file order: all, or the 8 best and 8 worst."""
    n = len(group.rollouts)
    if n <= MAX_GROUP_ROLLOUTS:
        return list(range(n))
    by_reward = sorted(range(n), key=lambda i: (-group.rollouts[i].reward, i))
    half = MAX_GROUP_ROLLOUTS // 2
    return sorted(by_reward[:half] + by_reward[-half:])


@dataclass
class _GroupResult:
    group: Group
    shown: list[int] = field(default_factory=list)  # rollout indices the model saw
    existing: list[Existing] = field(default_factory=list)
    ops: list[Operation] = field(default_factory=list)
    dropped: list[str] = field(default_factory=list)
    error: str | None = None


class LLMExtractor:
    def __init__(
        self,
        chat: ChatClient,
        embed: EmbedFn,
        retrieve: RetrieveFn | None = None,
        *,
        k: int = 5,
        dup_threshold: float = 0.9,
    ) -> None:
        if not 0 <= k <= 20:
            raise ValueError("k must be 0..20")
        self.chat = chat
        self.embed = embed
        self.retrieve = retrieve
        self.k = k
        self.dup_threshold = dup_threshold
        #: per task id: operations dropped by validation, with reasons (for reports and tests)
        self.dropped: dict[str, list[str]] = {}

    def extract(self, groups: Sequence[Group]) -> Extraction:
        self.dropped = {}
        workers = max(1, min(self.chat.config.concurrency, len(groups)))
        with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="llm-extract") as pool:
            results = list(pool.map(self._ask, groups))  # in group order: deterministic apply
        return self._apply(results)

    # -- stages 1 and 2: talk to the model (one worker thread per group) --

    def _ask(self, group: Group) -> _GroupResult:
        out = _GroupResult(group, shown=considered(group))
        try:
            summaries = []
            for n, i in enumerate(out.shown):
                r = group.rollouts[i]
                messages = prompts.summary_messages(
                    task_id=group.task_id,
                    task=group.prompt,
                    attempt=attempt_text(r),
                    reward=r.reward,
                    ground_truth=r.ground_truth,
                    index=n,
                    count=len(out.shown),
                )
                summaries.append((r.reward, self.chat.complete(messages)))
            if self.retrieve is not None and self.k:
                try:
                    out.existing = list(self.retrieve(group.prompt, self.k))[: self.k]
                except Exception as exc:  # a failed search fails this group, not the batch
                    raise LLMError(f"retrieving similar experiences failed: {exc}") from None
            labels = [(f"E{i + 1}", e.text) for i, e in enumerate(out.existing)]
            answer = self.chat.complete(
                prompts.operations_messages(
                    task_id=group.task_id,
                    task=group.prompt,
                    domain=group.domain,
                    summaries=summaries,
                    existing=labels,
                )
            )
            ids = {f"E{i + 1}": e.id for i, e in enumerate(out.existing)}
            out.ops, out.dropped = validate_operations(extract_json(answer), ids)
        except LLMError as exc:
            out.error = str(exc)
        return out

    # -- stage 3: apply (in this thread, in group order) --

    def _apply(self, results: list[_GroupResult]) -> Extraction:
        failed: list[GroupFailure] = []
        texts: list[str] = []
        for res in results:
            if res.error is None:
                texts.extend(e.text for e in res.existing)
                texts.extend(op.text for op in res.ops if op.text is not None)
        vecs = self._embed(texts)
        row = 0
        taken: list[tuple[Lesson, np.ndarray]] = []
        merged = 0
        into_existing: list[str] = []
        for res in results:
            group = res.group
            if res.error is not None:
                failed.append(GroupFailure(group.task_id, res.error))
                continue
            dropped = list(res.dropped)
            existing = [(e, vecs[row + i]) for i, e in enumerate(res.existing)]
            row += len(res.existing)
            # provenance: the rollouts the model saw that did better than the group's mean
            labels = group.labels()
            winners = [Source(group.task_id, i, -1) for i in res.shown if labels[i] > 0]
            for op in res.ops:
                if op.text is None:  # keep
                    continue
                v = vecs[row]
                row += 1
                why = task_specific(op.text, group)
                if why is not None:
                    dropped.append(f"{op.op} {op.text[:40]!r}: task-specific ({why})")
                    continue
                if op.op == "add":
                    dup = next((e for e, w in existing if float(v @ w) > self.dup_threshold), None)
                    if dup is not None:  # the library has it already: nothing to add
                        merged += 1
                        into_existing.append(dup.id)
                        continue
                twin = next(
                    (
                        lesson
                        for lesson, w in taken
                        if lesson.domain == group.domain and float(v @ w) > self.dup_threshold
                    ),
                    None,
                )
                if twin is not None:
                    twin.sources.extend(winners)
                    twin.merged += 1
                    twin.supersedes = tuple(dict.fromkeys(twin.supersedes + op.ids))[
                        :MAX_SUPERSEDES
                    ]
                    merged += 1
                    continue
                lesson = Lesson(
                    text=op.text,
                    domain=group.domain,
                    score=1.0,
                    sources=list(winners),
                    tags=(EXTRACTOR_TAG, LLM_TAG),
                    op=op.op,
                    supersedes=op.ids,
                )
                taken.append((lesson, v))
            if dropped:
                self.dropped[group.task_id] = dropped
        return Extraction(
            lessons=[lesson for lesson, _ in taken],
            groups=len(results),
            merged=merged,
            failed=failed,
            merged_into_existing=into_existing,
            dropped=[(task, why) for task, reasons in self.dropped.items() for why in reasons],
        )

    def _embed(self, texts: list[str]) -> np.ndarray:
        if not texts:
            return np.zeros((0, 1), dtype=np.float32)
        vecs = np.asarray(self.embed(texts), dtype=np.float32)
        if vecs.ndim != 2 or vecs.shape[0] != len(texts):
            raise ValueError(f"embed returned shape {vecs.shape} for {len(texts)} texts")
        return vecs / np.maximum(np.linalg.norm(vecs, axis=1, keepdims=True), 1e-12)
