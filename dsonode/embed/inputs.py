"""Checks and bounds on what callers hand an embedder, shared by the torch `Embedder` and the
torch-free `LeanEmbedder` (so the two refuse the same inputs with the same messages)."""

from __future__ import annotations

import sys
from collections.abc import Sequence

import numpy as np

from dsonode.core.constants import DIM
from dsonode.embed.defaults import VALID_DIMS
from dsonode.embed.errors import EmbedError

#: Bounds on a call (memory guards; callers batch larger work themselves).
MAX_BATCH_SIZE = 4096
#: Characters kept per text before tokenisation, per token of max length. Tokenising a
#: megabyte only to truncate it is wasted work; a token spans far fewer characters than this.
CHARS_PER_TOKEN_BOUND = 64
#: Show a progress bar by default for at least this many texts (when stderr is a terminal).
PROGRESS_MIN_TEXTS = 512


def validate_texts(texts: Sequence[str]) -> list[str]:
    if isinstance(texts, str | bytes):
        raise EmbedError("texts must be a sequence of str, not a single str (wrap it in a list)")
    if not isinstance(texts, Sequence):
        raise EmbedError(f"texts must be a sequence of str, got {type(texts).__name__}")
    out = list(texts)
    for i, text in enumerate(out):
        if not isinstance(text, str):
            raise EmbedError(f"texts[{i}] must be str, got {type(text).__name__}")
        try:
            text.encode("utf-8")
        except UnicodeEncodeError as exc:
            raise EmbedError(f"texts[{i}] is not valid Unicode text: {exc.reason}") from exc
    return out


def validate_dim(dim: int | None) -> int:
    if dim is None:
        return DIM
    if isinstance(dim, bool) or not isinstance(dim, int | np.integer) or int(dim) not in VALID_DIMS:
        raise EmbedError(f"dim must be one of {VALID_DIMS} or None, got {dim!r}")
    return int(dim)


def validate_batch_size(batch_size: int) -> int:
    if isinstance(batch_size, bool) or not isinstance(batch_size, int):
        raise EmbedError(f"batch_size must be an int, got {batch_size!r}")
    if not 1 <= batch_size <= MAX_BATCH_SIZE:
        raise EmbedError(f"batch_size must be in 1..{MAX_BATCH_SIZE}, got {batch_size}")
    return batch_size


def show_progress(progress: bool | None, count: int) -> bool:
    """progress=None: a bar on a terminal for long inputs."""
    if progress is None:
        return count >= PROGRESS_MIN_TEXTS and sys.stderr.isatty()
    return bool(progress)


def clip_for_tokenizer(texts: list[str], prefix: str, max_length: int) -> list[str]:
    """Each text with its instruction prefix, cut to a length no tokenizer needs more of."""
    cut = max_length * CHARS_PER_TOKEN_BOUND
    return [prefix + (t if len(t) <= cut else t[:cut]) for t in texts]


def length_sorted_batches(ids: list[list[int]], batch_size: int) -> list[list[int]]:
    """Indices of `ids` in batches of similar length (longest first: least padding)."""
    order = sorted(range(len(ids)), key=lambda i: len(ids[i]), reverse=True)
    return [order[start : start + batch_size] for start in range(0, len(order), batch_size)]


def padded(rows: list[list[int]], pad_id: int) -> tuple[np.ndarray, np.ndarray]:
    """(input_ids, attention_mask) int64, right-padded to the longest row."""
    width = max(len(r) for r in rows)
    input_ids = np.full((len(rows), width), pad_id, dtype=np.int64)
    mask = np.zeros((len(rows), width), dtype=np.int64)
    for j, r in enumerate(rows):
        input_ids[j, : len(r)] = r
        mask[j, : len(r)] = 1
    return input_ids, mask


class Progress:
    """A rich progress bar on stderr (falls back to nothing if rich is missing)."""

    def __init__(self, total: int) -> None:
        try:
            from rich.console import Console
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeRemainingColumn
        except ImportError:  # pragma: no cover - rich is a dependency
            self._p = None
            return
        self._p = Progress(
            "[progress.description]{task.description}",
            BarColumn(),
            MofNCompleteColumn(),
            TimeRemainingColumn(),
            console=Console(stderr=True),
            transient=True,
        )
        self._p.start()
        self._task = self._p.add_task("embedding", total=total)

    def advance(self, n: int) -> None:
        if self._p:
            self._p.advance(self._task, n)

    def close(self) -> None:
        if self._p:
            self._p.stop()
