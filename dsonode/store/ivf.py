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

Each list holds its own contiguous copy of its rows' prefixes beside their row numbers, so a
probe scans memory in order with faiss's SIMD popcount instead of gathering rows from the
index's big prefix array: at 10M rows a gather of 470k random rows measured ~290 ms (page and
TLB misses), the same rows scanned in their lists ~4 ms. The copies are derived from the rows
(a saved index stores only the list numbers; they are rebuilt at load).

Memory: per row 4 bytes for its list number, 4 for its place in a list and 128 for the prefix
copy; a bulk build (`build`, `from_assignment`) sizes every list exactly, rows added later grow
a list by x1.25, and nlist x 128 bytes of centroids.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import numpy as np

PREFIX_BYTES = 128
_GROWTH = 1.25


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
        self._codes = [np.zeros((0, PREFIX_BYTES), dtype=np.uint8) for _ in range(nlist)]
        self.sizes = np.zeros(nlist, dtype=np.int64)
        self._quantizer: Any = None

    @classmethod
    def from_assignment(
        cls, centroids: np.ndarray, list_of: np.ndarray, prefixes: np.ndarray, capacity: int
    ) -> PrefixLists:
        """Lists from centroids, each row's list number and the rows' (n, 128) prefixes, every
        list sized exactly (ValueError if a list number is out of range or shapes differ)."""
        lists = cls(centroids, max(capacity, len(list_of)))
        if list_of.dtype != np.int32 or list_of.ndim != 1:
            raise ValueError("list numbers must be int32 (n,)")
        if prefixes.shape != (len(list_of), PREFIX_BYTES) or prefixes.dtype != np.uint8:
            raise ValueError(f"prefixes must be uint8 ({len(list_of)}, {PREFIX_BYTES})")
        if len(list_of) and (list_of.min() < 0 or list_of.max() >= lists.nlist):
            raise ValueError("list number out of range")
        lists.list_of[: len(list_of)] = list_of
        order = np.argsort(list_of, kind="stable").astype(np.int32)
        counts = np.bincount(list_of, minlength=lists.nlist)
        ends = np.cumsum(counts)
        for lst, (a, b) in enumerate(zip((ends - counts).tolist(), ends.tolist(), strict=True)):
            rows = order[a:b].copy()
            lists._members[lst] = rows
            lists._codes[lst] = prefixes[rows]  # one list at a time: no second full copy
        lists.sizes[:] = counts
        return lists

    @classmethod
    def build(cls, centroids: np.ndarray, prefixes: np.ndarray, capacity: int) -> PrefixLists:
        """Lists of all rows of ``prefixes`` (row r = prefixes[r]), assigned in steps and sized
        exactly."""
        lister = cls(centroids, 1)
        list_of = np.empty(len(prefixes), dtype=np.int32)
        step = 262_144
        for s in range(0, len(prefixes), step):
            list_of[s : s + step] = lister.assign(prefixes[s : s + step])
        return cls.from_assignment(centroids, list_of, prefixes, capacity)

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
        prefixes = np.asarray(prefixes, dtype=np.uint8)
        target = self.assign(prefixes)
        old = self.list_of[rows]
        moved = old != target
        for k in np.flatnonzero(~moved).tolist():  # same list, new code: refresh its copy
            lst = int(old[k])
            self._codes[lst][self._position(lst, int(rows[k]))] = prefixes[k]
        for row, lst in zip(
            rows[moved & (old >= 0)].tolist(), old[moved & (old >= 0)].tolist(), strict=True
        ):
            self._remove(lst, row)
        rows, target, prefixes = rows[moved], target[moved], prefixes[moved]
        if len(rows) == 0:
            return
        self.list_of[rows] = target
        order = np.argsort(target, kind="stable")
        rows, target, prefixes = rows[order], target[order], prefixes[order]
        lists, starts = np.unique(target, return_index=True)
        ends = np.append(starts[1:], len(target))
        for lst, a, b in zip(lists.tolist(), starts.tolist(), ends.tolist(), strict=True):
            self._append(lst, rows[a:b], prefixes[a:b])

    def _append(self, lst: int, rows: np.ndarray, prefixes: np.ndarray) -> None:
        size = int(self.sizes[lst])
        arr, codes = self._members[lst], self._codes[lst]
        if size + len(rows) > len(arr):
            cap = max(size + len(rows), int(len(arr) * _GROWTH) + 16)
            grown = np.empty(cap, dtype=np.int32)
            grown[:size] = arr[:size]
            grown_codes = np.empty((cap, PREFIX_BYTES), dtype=np.uint8)
            grown_codes[:size] = codes[:size]
            self._members[lst], self._codes[lst] = arr, codes = grown, grown_codes
        arr[size : size + len(rows)] = rows
        codes[size : size + len(rows)] = prefixes
        self.sizes[lst] = size + len(rows)

    def _position(self, lst: int, row: int) -> int:
        where = np.flatnonzero(self._members[lst][: self.sizes[lst]] == row)
        if len(where) == 0:
            raise AssertionError(f"row {row} missing from list {lst}")
        return int(where[0])

    def _remove(self, lst: int, row: int) -> None:
        """Take a row out of its list (the list's last row fills its place)."""
        size = int(self.sizes[lst])
        at = self._position(lst, row)
        self._members[lst][at] = self._members[lst][size - 1]
        self._codes[lst][at] = self._codes[lst][size - 1]
        self.sizes[lst] = size - 1

    # ------------------------------------------------------------------------ search

    def probe(self, qprefix: np.ndarray, nprobe: int) -> tuple[np.ndarray, np.ndarray]:
        """(rows, prefix Hamming distances) of every row in the nprobe lists whose centroids are
        nearest the query, list by list (rows int32, distances int32; not sorted: row order
        carries no meaning across rebuilds, and a sort costs CPU)."""
        dist = np.bitwise_count(self._words ^ qprefix.view(np.uint64)).sum(axis=1)
        nprobe = min(nprobe, self.nlist)
        if nprobe < self.nlist:
            nearest = np.argpartition(dist, nprobe - 1)[:nprobe].tolist()
        else:
            nearest = list(range(self.nlist))
        sizes = [int(self.sizes[i]) for i in nearest]
        total = sum(sizes)
        rows = np.empty(total, dtype=np.int32)
        out = np.empty(total, dtype=np.int32)
        q = np.ascontiguousarray(qprefix)
        at = 0
        with _one_thread() as faiss:
            for lst, size in zip(nearest, sizes, strict=True):
                if size == 0:
                    continue
                rows[at : at + size] = self._members[lst][:size]
                # faiss's SIMD popcount over the list's contiguous copy of its prefixes
                faiss.hammings(
                    faiss.swig_ptr(q),
                    faiss.swig_ptr(self._codes[lst]),
                    1,
                    size,
                    PREFIX_BYTES,
                    faiss.swig_ptr(out[at : at + size]),
                )
                at += size
        return rows, out

    def members(self, lst: int) -> np.ndarray:
        """The rows of one list (a copy, in no particular order)."""
        return self._members[lst][: self.sizes[lst]].copy()

    def nbytes(self) -> int:
        return (
            self.centroids.nbytes
            + self.list_of.nbytes
            + self.sizes.nbytes
            + sum(a.nbytes for a in self._members)
            + sum(c.nbytes for c in self._codes)
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
