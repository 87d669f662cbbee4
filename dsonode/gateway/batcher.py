"""Micro-batching: concurrent requests share one encoder call (trio).

Each request submits its texts as a `_Job`. One worker task takes the first waiting job, then
gathers whatever else arrives within `max_wait_s` (up to `max_batch_texts` texts), and runs
`compute` on the whole batch in a worker thread, so the event loop keeps accepting and
answering requests while the CPU encodes. While one batch computes, the next one queues up,
so under load batches fill by themselves and the wait rarely matters.

Bounded: at most `max_pending_texts` texts wait at once; beyond that `submit` raises
`Overloaded` at once (the HTTP layer answers 503) instead of queueing without end. A request
that gives up (timeout, client gone) marks its job abandoned and the worker skips it.
Only the worker thread ever calls `compute`, so the model is never used from two threads.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
import trio

log = logging.getLogger(__name__)

#: compute(texts) -> ((n, d) float32 vectors, n token counts)
ComputeFn = Callable[[list[str]], tuple[np.ndarray, list[int]]]


class Overloaded(Exception):
    """Too many texts are already waiting; the caller should retry later."""


class BatcherClosed(Exception):
    """The batcher's worker is not running (not started yet, or shut down)."""


@dataclass(eq=False)
class _Job:
    texts: list[str]
    done: trio.Event = field(default_factory=trio.Event)
    vectors: np.ndarray | None = None
    token_counts: list[int] | None = None
    error: BaseException | None = None
    abandoned: bool = False


@dataclass
class BatcherStats:
    batches: int = 0
    texts: int = 0
    max_batch_seen: int = 0
    skipped_abandoned: int = 0


class MicroBatcher:
    def __init__(
        self,
        compute: ComputeFn,
        *,
        max_batch_texts: int = 64,
        max_wait_s: float = 0.002,
        max_pending_texts: int = 8192,
    ) -> None:
        if max_batch_texts < 1:
            raise ValueError("max_batch_texts must be >= 1")
        if not (0.0 <= max_wait_s <= 1.0) or math.isnan(max_wait_s):
            raise ValueError("max_wait_s must be within [0, 1] seconds")
        if max_pending_texts < max_batch_texts:
            raise ValueError("max_pending_texts must be >= max_batch_texts")
        self._compute = compute
        self.max_batch_texts = max_batch_texts
        self.max_wait_s = max_wait_s
        self.max_pending_texts = max_pending_texts
        # The channel's own bound is generous; the real bound is on pending texts (below).
        self._send, self._receive = trio.open_memory_channel[_Job](max_pending_texts)
        self._pending_texts = 0
        self._running = False
        self.stats = BatcherStats()

    @property
    def pending_texts(self) -> int:
        return self._pending_texts

    async def submit(self, texts: Sequence[str]) -> tuple[np.ndarray, list[int]]:
        """Embed `texts` as part of a shared batch; returns (vectors, token counts).

        Raises Overloaded when the queue is full, BatcherClosed when not running, and
        re-raises whatever `compute` raised on these texts (a batch that fails is retried
        request by request, so only the request at fault sees the error).
        """
        if not self._running:
            raise BatcherClosed("the micro-batcher is not running")
        n = len(texts)
        if n == 0:
            raise ValueError("nothing to embed")
        # A request bigger than the whole queue bound is still admitted when the queue is
        # empty (the HTTP layer bounds request size separately), so it cannot starve.
        if self._pending_texts and self._pending_texts + n > self.max_pending_texts:
            raise Overloaded(f"{self._pending_texts} texts already waiting")
        # A large request is queued as several batch-sized jobs: batches stay bounded, and if
        # the request gives up, the jobs not yet started are skipped instead of computed.
        step = self.max_batch_texts
        jobs = [_Job(texts=list(texts[i : i + step])) for i in range(0, n, step)]
        try:
            for job in jobs:
                self._send.send_nowait(job)
                self._pending_texts += len(job.texts)
        except trio.WouldBlock:
            for job in jobs:
                job.abandoned = True
            raise Overloaded("the request queue is full") from None
        except (trio.ClosedResourceError, trio.BrokenResourceError):
            raise BatcherClosed("the micro-batcher is shut down") from None
        try:
            for job in jobs:
                await job.done.wait()
        except BaseException:
            # Cancelled (timeout, client gone): let the worker skip what has not started.
            for job in jobs:
                job.abandoned = True
            raise
        for job in jobs:
            if job.error is not None:
                raise job.error
        vectors = [job.vectors for job in jobs if job.vectors is not None]
        counts = [c for job in jobs for c in job.token_counts or ()]
        assert len(vectors) == len(jobs) and len(counts) == n
        out = vectors[0] if len(vectors) == 1 else np.concatenate(vectors)
        return out, counts

    async def run(
        self,
        *,
        # See api/server.py serve_unix: libp2p's trio-typing stubs shadow trio's TaskStatus.
        task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,  # type: ignore[name-defined]
    ) -> None:
        """The worker loop; run it in a nursery (`await nursery.start(batcher.run)`)."""
        self._running = True
        task_status.started()
        carry: _Job | None = None
        try:
            while True:
                first = carry if carry is not None else await self._receive.receive()
                carry = None
                batch = [first]
                size = len(first.texts)
                deadline = trio.current_time() + self.max_wait_s
                while size < self.max_batch_texts:
                    job: _Job | None
                    try:
                        job = self._receive.receive_nowait()
                    except trio.WouldBlock:
                        job = None
                        with trio.move_on_at(deadline):
                            job = await self._receive.receive()
                        if job is None:
                            break
                    if size + len(job.texts) > self.max_batch_texts:
                        carry = job  # keep it for the next batch rather than overfill this one
                        break
                    batch.append(job)
                    size += len(job.texts)
                await self._run_batch(batch)
        finally:
            self._running = False
            self._send.close()
            # Wake every request still waiting so none hangs past shutdown.
            leftovers = [carry] if carry is not None else []
            while True:
                try:
                    leftovers.append(self._receive.receive_nowait())
                except (trio.WouldBlock, trio.EndOfChannel, trio.ClosedResourceError):
                    break
            for job in leftovers:
                job.error = BatcherClosed("the gateway is shutting down")
                job.done.set()

    async def _run_batch(self, batch: list[_Job]) -> None:
        live = []
        for job in batch:
            self._pending_texts -= len(job.texts)
            if job.abandoned:
                self.stats.skipped_abandoned += 1
            else:
                live.append(job)
        if live:
            await self._compute_jobs(live)

    async def _compute_jobs(self, live: list[_Job]) -> None:
        texts = [t for job in live for t in job.texts]
        try:
            vectors, counts = await trio.to_thread.run_sync(self._compute, texts)
            if len(vectors) != len(texts) or len(counts) != len(texts):
                raise RuntimeError("compute returned the wrong number of rows")
        except Exception as exc:  # one failing batch must not stop the worker
            if len(live) > 1:
                # Isolate the culprit: one bad request must not fail its batch-mates.
                for job in live:
                    await self._compute_jobs([job])
                return
            log.exception("embedding %d texts failed", len(texts))
            live[0].error = exc
            live[0].done.set()
            return
        except BaseException:  # cancelled (shutdown): wake the requests of this batch too
            for job in live:
                job.error = BatcherClosed("the gateway is shutting down")
                job.done.set()
            raise
        self.stats.batches += 1
        self.stats.texts += len(texts)
        self.stats.max_batch_seen = max(self.stats.max_batch_seen, len(texts))
        start = 0
        for job in live:
            end = start + len(job.texts)
            job.vectors = vectors[start:end]
            job.token_counts = list(counts[start:end])
            job.done.set()
            start = end
