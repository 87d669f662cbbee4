"""Inverted lists over the 1024-bit code prefixes: the first level of `CodeIndex` for large
stores (ARCHITECTURE.md, the code index).

``nlist`` binary centroids split the rows into lists (each row sits in the list of its
nearest centroid by Hamming distance, ties to the lowest centroid number). A search ranks the
centroids by Hamming distance to the query's prefix and scans only the rows of the ``nprobe``
nearest lists; `CodeIndex` then runs its usual stages (prefix top candidates, full-code
Hamming, asymmetric rescoring) on those rows.

The centroids are a pure function of the training sample (k-means with a fixed seed on the
sample's sign bits as +-1 floats, binarised); once trained they never change, so the lists of
an index are a function of its rows and centroids: an index rebuilt from the store with the
same centroids holds the same lists as the one that grew incrementally.

Memory: 4 bytes per row for its list number plus 4 for its place in a list (with x1.5 growth
slack), and nlist x 128 bytes of centroids.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import numpy as np

PREFIX_BYTES = 128
_GROWTH = 1.5


@contextlib.contextmanager
def _one_thread() -> Iterator[Any]:
    """faiss with one OpenMP thread: on a shared 2-core machine its spinning workers measured
    20-100x slower (ARCHITECTURE.md, the code index)."""
    import faiss

    threads = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(1)
    try:
        yield faiss
    finally:
        faiss.omp_set_num_threads(threads)


class PrefixLists:
    """Inverted lists of row numbers, one per centroid (see the module docstring)."""

    def __init__(self, centroids: np.ndarray, capacity: int) -> None:
        if centroids.dtype != np.uint8 or centroids.ndim != 2 or centroids.shape[1] != PREFIX_BYTES:
            raise ValueError(f"centroids must be uint8 (nlist, {PREFIX_BYTES})")
        if len(centroids) < 1:
            raise ValueError("need at least one centroid")
        self.centroids = np.ascontiguousarray(centroids)
        self._words = self.centroids.view(np.uint64)
        self.list_of = np.full(max(1, capacity), -1, dtype=np.int32)
        nlist = len(centroids)
        self._members = [np.zeros(0, dtype=np.int32) for _ in range(nlist)]
        self.sizes = np.zeros(nlist, dtype=np.int64)
        self._quantizer: Any = None

    @classmethod
    def from_assignment(
        cls, centroids: np.ndarray, list_of: np.ndarray, capacity: int
    ) -> PrefixLists:
        """Lists from saved centroids and each row's list number (ValueError if out of range)."""
        lists = cls(centroids, max(capacity, len(list_of)))
        if list_of.dtype != np.int32 or list_of.ndim != 1:
            raise ValueError("list numbers must be int32 (n,)")
        if len(list_of) and (list_of.min() < 0 or list_of.max() >= lists.nlist):
            raise ValueError("list number out of range")
        lists.list_of[: len(list_of)] = list_of
        order = np.argsort(list_of, kind="stable").astype(np.int32)
        counts = np.bincount(list_of, minlength=lists.nlist)
        ends = np.cumsum(counts)
        for lst, (a, b) in enumerate(zip((ends - counts).tolist(), ends.tolist(), strict=True)):
            lists._members[lst] = order[a:b].copy()
        lists.sizes[:] = counts
        return lists

    @property
    def nlist(self) -> int:
        return len(self.centroids)

    def reserve(self, capacity: int) -> None:
        if capacity > len(self.list_of):
            grown = np.full(capacity, -1, dtype=np.int32)
            grown[: len(self.list_of)] = self.list_of
            self.list_of = grown

    # ------------------------------------------------------------------------ assignment

    def assign(self, prefixes: np.ndarray) -> np.ndarray:
        """The nearest centroid of each (m, 128) prefix (int32; a function of the prefix)."""
        out = np.empty(len(prefixes), dtype=np.int32)
        with _one_thread() as faiss:
            if self._quantizer is None:
                self._quantizer = faiss.IndexBinaryFlat(PREFIX_BYTES * 8)
                self._quantizer.add(self.centroids)
            step = 16_384
            for s in range(0, len(prefixes), step):
                part = np.ascontiguousarray(prefixes[s : s + step])
                _, lab = self._quantizer.search(part, 1)
                out[s : s + len(part)] = lab[:, 0]
        return out

    def place(self, rows: np.ndarray, prefixes: np.ndarray) -> None:
        """Put rows (new or with a changed code) into the list of their nearest centroid."""
        if len(rows) == 0:
            return
        rows = np.asarray(rows, dtype=np.int64)
        self.reserve(int(rows.max()) + 1)
        target = self.assign(prefixes)
        old = self.list_of[rows]
        moved = old != target
        for row, lst in zip(
            rows[moved & (old >= 0)].tolist(), old[moved & (old >= 0)].tolist(), strict=True
        ):
            self._remove(lst, row)
        rows, target = rows[moved], target[moved]
        if len(rows) == 0:
            return
        self.list_of[rows] = target
        order = np.argsort(target, kind="stable")
        rows, target = rows[order], target[order]
        lists, starts = np.unique(target, return_index=True)
        ends = np.append(starts[1:], len(target))
        for lst, a, b in zip(lists.tolist(), starts.tolist(), ends.tolist(), strict=True):
            self._append(lst, rows[a:b])

    def _append(self, lst: int, rows: np.ndarray) -> None:
        size = int(self.sizes[lst])
        arr = self._members[lst]
        if size + len(rows) > len(arr):
            grown = np.empty(max(size + len(rows), int(len(arr) * _GROWTH) + 16), dtype=np.int32)
            grown[:size] = arr[:size]
            self._members[lst] = arr = grown
        arr[size : size + len(rows)] = rows
        self.sizes[lst] = size + len(rows)

    def _remove(self, lst: int, row: int) -> None:
        size = int(self.sizes[lst])
        arr = self._members[lst]
        where = np.flatnonzero(arr[:size] == row)
        if len(where) == 0:
            raise AssertionError(f"row {row} missing from list {lst}")
        arr[where[0]] = arr[size - 1]
        self.sizes[lst] = size - 1

    # ------------------------------------------------------------------------ search

    def probe(self, qprefix: np.ndarray, nprobe: int) -> np.ndarray:
        """Rows (int32, list by list) of the nprobe lists whose centroids are nearest the query
        (not sorted: row order carries no meaning across rebuilds, and a sort costs CPU)."""
        dist = np.bitwise_count(self._words ^ qprefix.view(np.uint64)).sum(axis=1)
        nprobe = min(nprobe, self.nlist)
        if nprobe < self.nlist:
            nearest = np.argpartition(dist, nprobe - 1)[:nprobe]
        else:
            nearest = np.arange(self.nlist)
        parts = [self._members[i][: self.sizes[i]] for i in nearest.tolist()]
        return np.concatenate(parts) if parts else np.zeros(0, np.int32)

    def members(self, lst: int) -> np.ndarray:
        """The rows of one list (a copy, in no particular order)."""
        return self._members[lst][: self.sizes[lst]].copy()

    def nbytes(self) -> int:
        return (
            self.centroids.nbytes
            + self.list_of.nbytes
            + self.sizes.nbytes
            + sum(a.nbytes for a in self._members)
        )

    # ------------------------------------------------------------------------ training

    @staticmethod
    def train(sample: np.ndarray, nlist: int, seed: int = 0, niter: int = 10) -> np.ndarray:
        """nlist binary centroids (uint8 (nlist, 128)) from a sample of prefixes: k-means on
        the bits as +-1 floats (faiss, fixed seed), each centroid binarised by sign."""
        if len(sample) < nlist:
            raise ValueError(f"need at least {nlist} sample rows, got {len(sample)}")
        x = np.unpackbits(sample, axis=1, bitorder="little").astype(np.float32)
        x *= 2.0
        x -= 1.0
        with _one_thread() as faiss:
            km = faiss.Kmeans(PREFIX_BYTES * 8, nlist, niter=niter, seed=seed, verbose=False)
            km.train(x)
        cent = np.asarray(km.centroids, dtype=np.float32) >= 0
        return np.packbits(cent, axis=1, bitorder="little")
