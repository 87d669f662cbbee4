"""The decoder fuzz runner: every decoder of untrusted bytes, fed mutated test vectors.

Targets (each one the path bytes from a peer really take):

- ``item``: `wire.decode_item` with the receiver's clock (every kind, `feedback` included once
  it is specified: its vectors become seeds by themselves);
- ``batch``: `wire.decode_batch`, then `decode_item` on every entry (the gossip pipeline);
- ``sync``: `sync.decode_message`, then the requester's `SyncSession.on_response` for a
  response (checked against a request it could answer);
- ``frame``: `sync.FrameReader` fed in random chunks, each whole frame to `decode_message`.

The contract checked: a target returns or raises a `WireError` subclass (SyncError and
FrameError are ones); anything else is a crash. Each input runs under a wall-clock bound
(SIGALRM, main thread only): running past it is a hang. Peak RSS growth over the run is
reported, so unbounded allocation from a declared length shows up.
"""

from __future__ import annotations

import contextlib
import random
import resource
import signal
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from dsonode.core import sync, wire
from dsonode.core.errors import WireError
from qa.mutate import Seeds, load_seeds, mutate

#: Per-input wall-clock bound. Decoding <= 64 KiB takes milliseconds; a second is a hang.
DEFAULT_INPUT_TIMEOUT_S = 2.0
_SPACE = bytes(range(32))
_WINDOW = (0, 2**53)


class InputTimeout(BaseException):
    """Raised by the alarm in the fuzzed call (a BaseException: `except Exception` in the
    decoders must not swallow it)."""


@dataclass
class Crash:
    target: str
    index: int
    error: str
    input_hex: str


@dataclass
class TargetResult:
    inputs: int = 0
    accepted: int = 0
    errors: Counter = field(default_factory=Counter)
    max_input_ms: float = 0.0


@dataclass
class FuzzResult:
    seed: int
    targets: dict[str, TargetResult]
    crashes: list[Crash]
    hangs: list[Crash]
    elapsed_s: float
    rss_growth_mb: float

    @property
    def inputs(self) -> int:
        return sum(t.inputs for t in self.targets.values())

    def summary(self) -> dict[str, Any]:
        return {
            "seed": self.seed,
            "inputs": self.inputs,
            "crashes": len(self.crashes),
            "hangs": len(self.hangs),
            "elapsed_s": round(self.elapsed_s, 2),
            "rss_growth_mb": round(self.rss_growth_mb, 1),
            "per_target": {
                name: {
                    "inputs": t.inputs,
                    "accepted": t.accepted,
                    "max_input_ms": round(t.max_input_ms, 2),
                    "errors": dict(t.errors.most_common()),
                }
                for name, t in self.targets.items()
            },
            "first_crashes": [c.__dict__ for c in self.crashes[:5]],
            "first_hangs": [c.__dict__ for c in self.hangs[:5]],
        }


# --- the targets ---------------------------------------------------------------------------------


def fuzz_item(data: bytes) -> bool:
    wire.decode_item(data, now_ms=wire.now_ms())
    return True


def fuzz_batch(data: bytes) -> bool:
    entries = wire.decode_batch(data)
    for entry in entries:
        with contextlib.suppress(WireError):  # one bad entry does not sink the batch
            wire.decode_item(entry, now_ms=wire.now_ms())
    return True


def _session() -> sync.SyncSession:
    return sync.SyncSession(
        _SPACE, *_WINDOW, local_inventory=lambda req: sync.Inventory(()), local_hashes=_no_hashes
    )


def _no_hashes(space: bytes, start: int, end: int) -> set[bytes]:
    return set()


def fuzz_sync(data: bytes) -> bool:
    msg = sync.decode_message(data)
    session = _session()
    first = session.next_request()
    if isinstance(msg, sync.Inventory):
        session.on_response(msg)  # answers the first request (or SyncError)
        with contextlib.suppress(WireError):
            while session.next_request() is not None:  # and the requests it leads to are valid
                session._pending = None  # (drop them unanswered: we only check they build)
        return True
    if isinstance(msg, sync.Hashes | sync.Items):
        # Pretend the request this response could answer was the one outstanding.
        if isinstance(msg, sync.Hashes):
            session._pending = sync.HashesRequest(_SPACE, first.since_ms, first.until_ms)
        else:
            hashes = sorted({wire.item_hash(raw) for raw in msg.items}) or [bytes(32)]
            session._pending = sync.ItemsRequest(tuple(hashes[: sync.MAX_ITEMS]))
        session.on_response(msg)
    return True


def fuzz_frame(data: bytes, rng: random.Random | None = None) -> bool:
    rng = rng or random.Random(len(data))
    reader = sync.FrameReader()
    pos = 0
    while pos < len(data):
        n = min(reader.wanted(), rng.choice((1, 3, 64, 70_000)), len(data) - pos)
        reader.feed(data[pos : pos + n])
        pos += n
        while (payload := reader.next_frame()) is not None:
            sync.decode_message(payload)
    return True


TARGETS: dict[str, Callable[[bytes], bool]] = {
    "item": fuzz_item,
    "batch": fuzz_batch,
    "sync": fuzz_sync,
    "frame": fuzz_frame,
}


def seeds_for(target: str, seeds: Seeds) -> tuple[tuple[bytes, ...], tuple[bytes, ...]]:
    """(own seeds, other seeds to splice in) of a target."""
    own = {
        "item": seeds.items,
        "batch": seeds.batches + tuple(wire.pack_batches(seeds.items[:3])),
        "sync": seeds.sync_messages,
        "frame": seeds.sync_frames + tuple(sync.encode_frame(m) for m in seeds.sync_messages),
    }.get(target, seeds.all())
    return own, tuple(s for s in seeds.all() if s not in own)


# --- the runner ----------------------------------------------------------------------------------


@contextlib.contextmanager
def time_bound(seconds: float) -> Iterator[None]:
    """Raise InputTimeout in the block after `seconds` (only in the main thread; elsewhere the
    caller's measured time is the only check)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def on_alarm(signum: int, frame: Any) -> None:
        raise InputTimeout

    previous = signal.signal(signal.SIGALRM, on_alarm)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def run_one(target: str, data: bytes, timeout_s: float = DEFAULT_INPUT_TIMEOUT_S) -> str:
    """'ok', the WireError class name, 'hang', or 'crash:<type>: <message>'."""
    fn = TARGETS[target]
    try:
        with time_bound(timeout_s):
            fn(data)
        return "ok"
    except InputTimeout:
        return "hang"
    except WireError as exc:
        return type(exc).__name__
    except Exception as exc:
        return f"crash:{type(exc).__name__}: {str(exc)[:200]}"


def _maxrss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def run_fuzz(
    inputs_per_target: int,
    seed: int = 0,
    targets: tuple[str, ...] = tuple(TARGETS),
    timeout_s: float = DEFAULT_INPUT_TIMEOUT_S,
    seeds: Seeds | None = None,
    progress: Callable[[str, int], None] | None = None,
) -> FuzzResult:
    """Feed `inputs_per_target` mutated inputs to each target; reproducible from `seed`."""
    seeds = seeds or load_seeds()
    results: dict[str, TargetResult] = {}
    crashes: list[Crash] = []
    hangs: list[Crash] = []
    rss0 = _maxrss_mb()
    t_start = time.perf_counter()
    for target in targets:
        own, others = seeds_for(target, seeds)
        rng = random.Random(f"{seed}:{target}")
        res = results[target] = TargetResult()
        for i in range(inputs_per_target):
            data = mutate(rng, own, others)
            t0 = time.perf_counter()
            outcome = run_one(target, data, timeout_s)
            elapsed = time.perf_counter() - t0
            if outcome.startswith("crash:"):
                crashes.append(Crash(target, i, outcome[6:], data[:512].hex()))
            if outcome == "hang" or elapsed > timeout_s:
                hangs.append(Crash(target, i, f"took {elapsed:.2f} s", data[:512].hex()))
            res.inputs += 1
            res.max_input_ms = max(res.max_input_ms, elapsed * 1000)
            if outcome == "ok":
                res.accepted += 1
            else:
                res.errors[outcome.split(":")[0]] += 1
            if progress is not None and (i + 1) % 10_000 == 0:
                progress(target, i + 1)
    return FuzzResult(
        seed=seed,
        targets=results,
        crashes=crashes,
        hangs=hangs,
        elapsed_s=time.perf_counter() - t_start,
        rss_growth_mb=_maxrss_mb() - rss0,
    )
