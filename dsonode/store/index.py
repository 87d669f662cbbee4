"""In-memory search index over the consensus codes of the node's space.

Layout (one row per experience; arrays grow geometrically, x1.5):

- ``prefix``: (capacity, 128) uint8, the sign bits of the 1024-d Matryoshka prefix of every
  code, in one contiguous array that faiss's SIMD Hamming kernel scans in place (no copy);
- ``rest``: (capacity, 832) uint8, the remaining 6656 sign bits; ``scales``: (capacity,)
  float32, the BitDelta scale ``a``. A code is ``scale | prefix | rest`` (964 bytes); it is
  split so the pre-filter reads 128 contiguous bytes per row instead of striding over 964;
- ``ids``: (capacity, 32) uint8 and a dict id -> row; ``domains`` int32 (ids into a small
  table of domain names) and ``confirmed`` bool per row.

Search, for a float query ``q`` (7680,) with sign bits ``s = sign(q - ref)``:

1. pre-filter: exhaustive Hamming distance between ``s[:1024]`` and every allowed prefix
   (``faiss.knn_hamming``, one thread), keep the ``candidates`` nearest;
2. full-code Hamming (7680 bits) on those, keep the ``rescore`` nearest;
3. asymmetric rescoring: ``dot(q, decode(code))`` (``dsonode.core.bitdelta.asymmetric_scores``)
   on those, return the best ``k`` with their scores, best first.

With ``candidates`` >= the number of rows that pass the filters and ``rescore`` >=
``candidates``, step 3 sees every row and the result is exact (the tests rely on this).
The defaults were tuned by ``dsonode bench retrieval`` (see BENCHMARKS.md).

From ``ivf_min_rows`` rows on (2,000,000 by default), step 1 scans only the rows of the
``nprobe`` inverted lists nearest the query (``dsonode.store.ivf``; ARCHITECTURE.md, "The
code index"), scanning each list's own contiguous copy of its prefixes: approximate,
recall@10 0.967 at 2M and 0.978 at 10M on codes around real sentences at the defaults, p50
6.3 and 20.9 ms (BENCHMARKS.md, "10M items"). Below that the flat scan is exact and fast
enough (8.3 ms at 1M), and the lists' 128 bytes per row are not spent. An earlier
inverted file was dropped on the benchmark's diffuse synthetic clusters (recall 0.76 while
scanning 24% of the rows); the codes around real sentences measured now are less diffuse.

The index can be saved beside the store and loaded at start (``state``/``from_state``,
``dsonode.store.snapshot``).

Not thread-safe: one owner (the node's event loop) adds and searches.
"""

from __future__ import annotations

import contextlib
import math
import sys
from collections.abc import Iterable, Iterator, Sequence
from typing import TYPE_CHECKING, Any, TypeAlias

import numpy as np
import numpy.typing as npt

from dsonode.core import bitdelta
from dsonode.core.constants import BITS_BYTES, CODE_BYTES, DIM, SCALE_BYTES
from dsonode.core.errors import CodecError, DsoError
from dsonode.store.ivf import PrefixLists

if TYPE_CHECKING:
    from dsonode.store.lmdb_store import ConsensusRecord, Store

#: Codes as add() takes them: a uint8 (m, 964) array or m 964-byte strings (checked at run time).
Codes: TypeAlias = "np.ndarray | Iterable[bytes | bytearray | memoryview]"
#: A per-row argument: one value for every row, or one per row.
Domains: TypeAlias = "str | Sequence[str] | None"
Confirmed: TypeAlias = "bool | Sequence[bool] | np.ndarray"

PREFIX_BITS = 1024
_PREFIX_BYTES = PREFIX_BITS // 8
_ID_LEN = 32
MAX_K = 100
_NO_DOMAIN = ""
#: Rows from which the index adds its inverted lists (below it every search scans all
#: prefixes, exactly); lists and probes per search (tuned by `dsonode bench retrieval`).
IVF_MIN_ROWS = 2_000_000
IVF_NLIST = 1024
IVF_NPROBE = 48
#: Training sample per centroid (k-means on +-1 floats; faiss asks for at least 39).
_IVF_SAMPLE_PER_LIST = 40


class IndexInputError(DsoError, ValueError):
    """Bad input to the index (shape, length, unknown id, k out of range)."""


def asymmetric_scores(
    query: np.ndarray, scales: np.ndarray, bits: np.ndarray, ref: np.ndarray | None = None
) -> np.ndarray:
    """dot(query, decode(code)) for (scales, 960-byte sign bits) rows, via the codec."""
    codes = np.empty((len(bits), CODE_BYTES), dtype=np.uint8)
    codes[:, :SCALE_BYTES] = scales.astype("<f4").view(np.uint8).reshape(-1, SCALE_BYTES)
    codes[:, SCALE_BYTES:] = bits
    return np.asarray(bitdelta.asymmetric_scores(query, codes, ref=ref), dtype=np.float32)


def _as_code_matrix(codes: Codes) -> np.ndarray:
    if isinstance(codes, np.ndarray):
        arr = codes
    else:
        codes = list(codes)
        for c in codes:
            if not isinstance(c, bytes | bytearray | memoryview) or len(c) != CODE_BYTES:
                raise CodecError(f"each code must be {CODE_BYTES} bytes")
        arr = np.frombuffer(b"".join(bytes(c) for c in codes), dtype=np.uint8)
        arr = arr.reshape(len(codes), CODE_BYTES)
    if arr.dtype != np.uint8 or arr.ndim != 2 or arr.shape[1] != CODE_BYTES:
        raise CodecError(f"codes must be uint8 (n, {CODE_BYTES}), got {arr.dtype} {arr.shape}")
    scales = arr[:, :SCALE_BYTES].copy().view("<f4").ravel()
    if not np.all(np.isfinite(scales)) or np.any(scales < 0):
        raise CodecError("code scale must be finite and >= 0")
    return arr


class CodeIndex:
    """Top-k search over 964-byte BitDelta codes (see the module docstring).

    Parameters: ``ref`` is the space's reference vector (None = zero); ``capacity`` the
    initial number of rows; ``candidates`` rows kept after the prefix stage; ``rescore`` rows
    kept after the full-code stage (and scored asymmetrically). From ``ivf_min_rows`` rows on,
    a first level of ``nlist`` inverted lists (`dsonode.store.ivf`) limits the prefix scan to
    the ``nprobe`` lists nearest the query; ``centroids`` reuses trained ones (from a saved
    index, so that a rebuild holds the same lists as the index that grew incrementally).
    """

    def __init__(
        self,
        capacity: int = 1024,
        ref: np.ndarray | None = None,
        *,
        candidates: int = 4_000,
        rescore: int = 400,
        ivf_min_rows: int = IVF_MIN_ROWS,
        nlist: int = IVF_NLIST,
        nprobe: int = IVF_NPROBE,
        centroids: np.ndarray | None = None,
    ) -> None:
        if capacity < 1:
            raise IndexInputError("capacity must be >= 1")
        if not 1 <= rescore <= candidates:
            raise IndexInputError("need 1 <= rescore <= candidates")
        if centroids is not None:
            nlist = len(centroids)
        if not 1 <= nprobe <= nlist or ivf_min_rows < nlist * 2:
            raise IndexInputError("need 1 <= nprobe <= nlist and ivf_min_rows >= 2 * nlist")
        self.ivf_min_rows = ivf_min_rows
        self.nlist = nlist
        self.nprobe = nprobe
        self._centroids = centroids
        self._lists: PrefixLists | None = None
        self._defer_lists = False
        #: False makes every search scan all prefixes even with lists (for benchmarks).
        self.use_lists = True
        self.ref = None if ref is None else self._check_vector(ref, "ref")
        self.candidates = candidates
        self.rescore = rescore
        self._n = 0
        self._alloc(capacity)
        self._row_map: dict[bytes, int] | None = {}  # None: built on first use
        self._domain_names: list[str] = [_NO_DOMAIN]
        self._domain_of: dict[str, int] = {_NO_DOMAIN: 0}
        self._domain_counts: list[int] = [0]
        self._n_confirmed = 0

    # ------------------------------------------------------------------------ storage

    _FIELDS = ("_prefix", "_rest", "_scales", "_ids", "_domains", "_confirmed")

    def _alloc(self, capacity: int) -> None:
        self._prefix = np.zeros((capacity, _PREFIX_BYTES), dtype=np.uint8)
        self._rest = np.zeros((capacity, BITS_BYTES - _PREFIX_BYTES), dtype=np.uint8)
        self._scales = np.zeros(capacity, dtype=np.float32)
        self._ids = np.zeros((capacity, _ID_LEN), dtype=np.uint8)
        self._domains = np.zeros(capacity, dtype=np.int32)
        self._confirmed = np.zeros(capacity, dtype=bool)

    def reserve(self, capacity: int) -> None:
        """Make room for ``capacity`` rows in total (a rebuild reserves its exact count)."""
        if capacity <= len(self._scales):
            return
        old = [getattr(self, f) for f in self._FIELDS]
        self._alloc(capacity)
        for name, prev in zip(self._FIELDS, old, strict=True):
            getattr(self, name)[: self._n] = prev[: self._n]
        if self._lists is not None:
            self._lists.reserve(capacity)

    @property
    def _row_of(self) -> dict[bytes, int]:
        """id -> row. A loaded index builds it on first use (about 0.6 s per million rows):
        a search reads ids from the id array and does not wait for it."""
        if self._row_map is None:
            raw = self._ids[: self._n].tobytes()
            keys = [raw[r : r + _ID_LEN] for r in range(0, len(raw), _ID_LEN)]
            self._row_map = dict(zip(keys, range(self._n), strict=True))
        return self._row_map

    @property
    def capacity(self) -> int:
        return len(self._scales)

    def __len__(self) -> int:
        return self._n

    def __contains__(self, exp_id: object) -> bool:
        return isinstance(exp_id, bytes) and exp_id in self._row_of

    def _codes_of(self, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(scales, 960-byte sign bits) of some rows."""
        return self._scales[rows], np.hstack([self._prefix[rows], self._rest[rows]])

    def get(self, exp_id: bytes) -> tuple[bytes, str, bool] | None:
        """(code, domain, confirmed) of an indexed experience, or None."""
        row = self._row_of.get(exp_id)
        if row is None:
            return None
        code = (
            self._scales[row : row + 1].astype("<f4").tobytes()
            + self._prefix[row].tobytes()
            + self._rest[row].tobytes()
        )
        return code, self._domain_names[self._domains[row]], bool(self._confirmed[row])

    def domains(self) -> dict[str, int]:
        """Number of indexed rows per domain ("" = no domain)."""
        return {
            name: c
            for name, c in zip(self._domain_names, self._domain_counts, strict=True)
            if c > 0
        }

    def confirmed_count(self) -> int:
        return self._n_confirmed

    # ------------------------------------------------------------------------ add / update

    def add(
        self,
        ids: Sequence[bytes],
        codes: Codes,
        domains: Domains = None,
        confirmed: Confirmed = False,
    ) -> int:
        """Insert or replace rows (an id already indexed has its code and metadata replaced in
        place). ``codes``: uint8 (m, 964) or a sequence of 964-byte strings; ``domains`` one
        string for all, one per id, or None (no domain); ``confirmed`` likewise.
        Returns the number of new ids."""
        ids = [bytes(i) for i in ids]
        for i in ids:
            if len(i) != _ID_LEN:
                raise IndexInputError(f"ids must be {_ID_LEN} bytes")
        arr = _as_code_matrix(codes)
        m = len(ids)
        if len(arr) != m:
            raise IndexInputError(f"{m} ids but {len(arr)} codes")
        if len(set(ids)) != m:
            # The last occurrence wins, as if the rows were added one after another.
            last = {i: k for k, i in enumerate(ids)}
            keep = sorted(last.values())
            return self.add(
                [ids[k] for k in keep],
                arr[keep],
                _pick(domains, keep, m),
                _pick(confirmed, keep, m),
            )
        if m == 0:
            return 0
        dom_names = [domains] * m if domains is None or isinstance(domains, str) else domains
        if len(dom_names) != m:
            raise IndexInputError("domains must match ids")
        dom_ids = np.array([self._domain_id(d) for d in dom_names], dtype=np.int32)
        conf = np.broadcast_to(np.asarray(confirmed, dtype=bool), (m,))

        rows = np.empty(m, dtype=np.int64)
        new_mask = np.zeros(m, dtype=bool)
        fresh = 0
        for k, i in enumerate(ids):
            row = self._row_of.get(i)
            if row is None:
                row = self._n + fresh
                fresh += 1
                new_mask[k] = True
            rows[k] = row
        if self._n + fresh > self.capacity:
            self.reserve(max(self._n + fresh, int(self.capacity * 1.5) + 1))
        old_rows = rows[~new_mask]
        for d in self._domains[old_rows]:
            self._domain_counts[d] -= 1
        for d in dom_ids:
            self._domain_counts[d] += 1
        self._n_confirmed += int(conf.sum()) - int(self._confirmed[old_rows].sum())
        bits = arr[:, SCALE_BYTES:]
        self._prefix[rows] = bits[:, :_PREFIX_BYTES]
        self._rest[rows] = bits[:, _PREFIX_BYTES:]
        self._scales[rows] = arr[:, :SCALE_BYTES].copy().view("<f4").ravel()
        self._domains[rows] = dom_ids
        self._confirmed[rows] = conf
        new_ids = [i for i, nm in zip(ids, new_mask, strict=True) if nm]
        if new_ids:
            self._ids[rows[new_mask]] = np.frombuffer(b"".join(new_ids), np.uint8).reshape(
                -1, _ID_LEN
            )
        for i, row in zip(new_ids, rows[new_mask].tolist(), strict=True):
            self._row_of[i] = row
        self._n += fresh
        if self._lists is not None:
            self._lists.place(rows, self._prefix[rows])
        else:
            self._maybe_start_lists()
        return fresh

    # ------------------------------------------------------------------------ inverted lists

    @property
    def centroids(self) -> np.ndarray | None:
        """The inverted lists' centroids (uint8 (nlist, 128)), None while the scan is flat."""
        return None if self._lists is None else self._lists.centroids

    @contextlib.contextmanager
    def bulk_load(self) -> Iterator[CodeIndex]:
        """Add many rows, then train the lists once on all of them (not at the threshold)."""
        self._defer_lists = True
        try:
            yield self
        finally:
            self._defer_lists = False
        self._maybe_start_lists()

    def inverted_lists(self) -> list[frozenset[bytes]] | None:
        """The ids in each inverted list (None while the scan is flat), for checks."""
        if self._lists is None:
            return None
        return [
            frozenset(self._ids[r].tobytes() for r in self._lists.members(lst).tolist())
            for lst in range(self._lists.nlist)
        ]

    def _maybe_start_lists(self) -> None:
        """Add the inverted lists once the index holds ivf_min_rows rows (trained on a fixed
        pseudo-random sample of the rows, or the centroids given)."""
        if self._lists is not None or self._defer_lists or self._n < self.ivf_min_rows:
            return
        centroids = self._centroids
        if centroids is None:
            n_sample = min(self._n, self.nlist * _IVF_SAMPLE_PER_LIST)
            pick = np.sort(np.random.default_rng(0).choice(self._n, n_sample, replace=False))
            centroids = PrefixLists.train(self._prefix[pick], self.nlist)
        self._lists = PrefixLists.build(centroids, self._prefix[: self._n], self.capacity)

    def update(
        self,
        ids: Sequence[bytes],
        codes: Codes,
        domains: Domains = None,
        confirmed: Confirmed = False,
    ) -> None:
        """Replace the codes (and metadata) of ids that are already indexed."""
        missing = [i for i in ids if bytes(i) not in self._row_of]
        if missing:
            raise IndexInputError(f"{len(missing)} ids are not in the index")
        self.add(ids, codes, domains, confirmed)

    def _domain_id(self, name: str | None) -> int:
        name = _NO_DOMAIN if name is None else name
        if not isinstance(name, str):
            raise IndexInputError("domain must be a string")
        did = self._domain_of.get(name)
        if did is None:
            did = len(self._domain_names)
            self._domain_of[name] = did
            self._domain_names.append(name)
            self._domain_counts.append(0)
        return did

    # ------------------------------------------------------------------------ search

    @staticmethod
    def _check_vector(vec: npt.ArrayLike, what: str) -> np.ndarray:
        arr = np.asarray(vec, dtype=np.float32)
        if arr.shape != (DIM,):
            raise CodecError(f"{what} must have shape ({DIM},), got {arr.shape}")
        if not np.all(np.isfinite(arr)):
            raise CodecError(f"{what} must be finite")
        return arr

    def search(
        self,
        query: npt.ArrayLike,
        k: int = 10,
        domain: str | None = None,
        confirmed_only: bool = False,
        min_score: float | None = None,
    ) -> list[tuple[bytes, float]]:
        """Top-k (id, score) by asymmetric score, best first (see the module docstring).

        ``domain`` keeps only rows of that domain, ``confirmed_only`` only confirmed
        consensus codes, ``min_score`` drops results scoring below it. 1 <= k <= 100.
        """
        if isinstance(k, bool) or not isinstance(k, int | np.integer) or not 1 <= k <= MAX_K:
            raise IndexInputError(f"k must be an integer in [1, {MAX_K}]")
        if min_score is not None and (
            not isinstance(min_score, int | float) or not math.isfinite(min_score)
        ):
            raise IndexInputError("min_score must be a finite number")
        q = self._check_vector(query, "query")
        if self._n == 0:
            return []
        centred = q if self.ref is None else q - self.ref
        qbits = np.packbits(centred >= 0, bitorder="little")

        # 1. prefix Hamming over every allowed row
        candidates = max(self.candidates, k)
        rescore = max(self.rescore, k)
        scan, dist = self._prefilter(qbits[:_PREFIX_BYTES], domain, confirmed_only, candidates)
        if len(scan) == 0:
            return []
        # 2. full-code Hamming = prefix distance + distance over the rest
        if len(scan) > rescore:
            rest_q = qbits[_PREFIX_BYTES:].view(np.uint64)
            rest = self._rest[scan].view(np.uint64)
            dist = dist + np.bitwise_count(rest ^ rest_q).sum(axis=1, dtype=np.int32)
            scan = scan[np.argpartition(dist, rescore - 1)[:rescore]]
        # 3. asymmetric rescoring
        scales, bits = self._codes_of(scan)
        scores = asymmetric_scores(q, scales, bits, self.ref)
        top = np.argsort(-scores, kind="stable")[:k]
        out = []
        for t in top:
            s = float(scores[t])
            if min_score is not None and s < min_score:
                break
            out.append((self._ids[scan[t]].tobytes(), s))
        return out

    def _prefilter(
        self, qprefix: np.ndarray, domain: str | None, confirmed_only: bool, candidates: int
    ) -> tuple[np.ndarray, np.ndarray]:
        """(rows, prefix distances) of the ``candidates`` allowed rows nearest to the query
        prefix (all allowed rows when there are fewer)."""
        n = self._n
        mask = None
        n_allowed = n
        if domain is not None:
            did = self._domain_of.get(domain)
            if did is None or self._domain_counts[did] == 0:
                return _EMPTY_ROWS, _EMPTY_DIST
            mask = self._domains[:n] == did
            n_allowed = self._domain_counts[did]
        if confirmed_only:
            mask = self._confirmed[:n] if mask is None else mask & self._confirmed[:n]
            n_allowed = min(n_allowed, self._n_confirmed)
        if n_allowed == 0:
            return _EMPTY_ROWS, _EMPTY_DIST
        if self._lists is not None and self.use_lists and n_allowed >= self.ivf_min_rows // 2:
            # Probe the lists nearest the query; more of them under a filter, so that about as
            # many allowed rows are scanned as without one.
            nprobe = min(self.nlist, math.ceil(self.nprobe * n / n_allowed))
            rows, dist = self._lists.probe(qprefix, nprobe)
            if mask is not None:
                keep = mask[rows]
                rows, dist = rows[keep], dist[keep]
            if len(rows) > candidates:
                nearest = np.argpartition(dist, candidates - 1)[:candidates]
                rows, dist = rows[nearest], dist[nearest]
            return rows, dist
        if mask is None:
            rows, dist = _knn_hamming(qprefix, self._prefix, n, candidates)
            return rows, dist
        if n_allowed >= n // 4:
            # A broad filter: the nearest candidates/f rows hold about `candidates` allowed
            # ones, and every allowed row nearer than the cut-off is among them.
            want = min(n, math.ceil(candidates * n / n_allowed))
            rows, dist = _knn_hamming(qprefix, self._prefix, n, want)
            keep = mask[rows]
            return rows[keep], dist[keep]
        allowed = np.flatnonzero(mask)  # a narrow filter: scan the allowed rows only
        sub = np.ascontiguousarray(self._prefix[allowed])
        rows, dist = _knn_hamming(qprefix, sub, len(sub), candidates)
        return allowed[rows], dist

    # ------------------------------------------------------------------------ accounting

    def memory_bytes(self) -> dict[str, int]:
        """Bytes held by the index, by part (arrays at their allocated capacity; the id dict
        counted with its keys and values)."""
        parts = {
            "codes": self._prefix.nbytes + self._rest.nbytes + self._scales.nbytes,
            "ids": self._ids.nbytes,
            "meta": self._domains.nbytes + self._confirmed.nbytes,
        }
        row_map = sys.getsizeof(self._row_of)
        row_map += sum(sys.getsizeof(key) + sys.getsizeof(v) for key, v in self._row_of.items())
        parts["id_map"] = row_map
        parts["lists"] = 0 if self._lists is None else self._lists.nbytes()
        parts["total"] = sum(parts.values())
        return parts

    # ------------------------------------------------------------------------ save / load

    def state(self) -> dict[str, Any]:
        """The index as arrays (views of the first len(self) rows) and its domain table, for
        `dsonode.store.snapshot`; `from_state` is the inverse."""
        n = self._n
        arrays = {
            "prefix": self._prefix[:n],
            "rest": self._rest[:n],
            "scales": self._scales[:n],
            "ids": self._ids[:n],
            "domains": self._domains[:n],
            "confirmed": self._confirmed[:n],
        }
        if self._lists is not None:
            arrays["centroids"] = self._lists.centroids
            arrays["list_of"] = self._lists.list_of[:n]
        return {"arrays": arrays, "domains": list(self._domain_names)}

    @classmethod
    def from_state(
        cls, arrays: dict[str, np.ndarray], domains: list[str], **kwargs: Any
    ) -> CodeIndex:
        """An index from `state()`'s arrays, which it takes over (they must not be used
        elsewhere afterwards); checked for shape, range and uniqueness (ValueError or
        KeyError when they do not fit together)."""
        ids = arrays["ids"]
        n = len(ids)
        shapes = {
            "prefix": ((n, _PREFIX_BYTES), np.uint8),
            "rest": ((n, BITS_BYTES - _PREFIX_BYTES), np.uint8),
            "scales": ((n,), np.float32),
            "ids": ((n, _ID_LEN), np.uint8),
            "domains": ((n,), np.int32),
            "confirmed": ((n,), np.bool_),
        }
        for name, (shape, dtype) in shapes.items():
            arr = arrays[name]
            if arr.shape != shape or arr.dtype != dtype:
                raise ValueError(f"{name}: {arr.dtype} {arr.shape}, want {shape}")
        scales = arrays["scales"]
        if not np.all(np.isfinite(scales)) or np.any(scales < 0):
            raise ValueError("code scale must be finite and >= 0")
        if not domains or domains[0] != _NO_DOMAIN or len(set(domains)) != len(domains):
            raise ValueError("bad domain table")
        dom = arrays["domains"]
        if n and (dom.min() < 0 or dom.max() >= len(domains)):
            raise ValueError("domain number out of range")
        centroids = arrays.get("centroids")
        if centroids is not None:
            kwargs["centroids"] = centroids
        index = cls(capacity=1, **kwargs)
        if n:  # adopted, not copied (a 1M-row index is about 1 GB)
            for field, name in zip(index._FIELDS, shapes, strict=True):
                setattr(index, field, np.require(arrays[name], requirements=["C", "W"]))
        # The id map is built on first use (see _row_of); the ids are unique because the file
        # was written from an index (add() never repeats an id) and its checksum holds.
        index._row_map = None
        index._domain_names = list(domains)
        index._domain_of = {d: i for i, d in enumerate(domains)}
        index._domain_counts = np.bincount(dom, minlength=len(domains)).tolist()
        index._n_confirmed = int(np.count_nonzero(arrays["confirmed"]))
        index._n = n
        list_of = arrays.get("list_of")
        if centroids is not None and list_of is not None:
            index._lists = PrefixLists.from_assignment(
                centroids, list_of, index._prefix[:n], index.capacity
            )
        else:
            index._maybe_start_lists()
        return index

    def sample_rows(self, count: int) -> list[tuple[bytes, bytes, str, bool]]:
        """(id, code, domain, confirmed) of the first and last rows and up to ``count`` spread
        between them, read by row (no id map needed; for spot checks)."""
        if self._n == 0:
            return []
        rows = np.unique(np.linspace(0, self._n - 1, num=min(self._n, count + 2)).astype(int))
        return [
            (
                self._ids[r].tobytes(),
                self._scales[r : r + 1].astype("<f4").tobytes()
                + self._prefix[r].tobytes()
                + self._rest[r].tobytes(),
                self._domain_names[self._domains[r]],
                bool(self._confirmed[r]),
            )
            for r in rows.tolist()
        ]

    @classmethod
    def from_records(
        cls,
        chunks: Iterable[Sequence[ConsensusRecord]],
        total: int | None = None,
        progress: bool | None = None,
        **kwargs: Any,
    ) -> CodeIndex:
        """Build an index from chunks of ConsensusRecord (as Store.iter_consensus_chunks
        yields them), reserving ``total`` rows; shows a progress bar on stderr when
        ``progress`` is True, or when None and total >= 100,000 and stderr is a terminal."""
        index = cls(capacity=max(1, total or 1024), **kwargs)
        show = (
            progress
            if progress is not None
            else bool(total and total >= 100_000 and sys.stderr.isatty())
        )
        bar = None
        if show:
            from rich.console import Console
            from rich.progress import Progress

            bar = Progress(transient=True, console=Console(stderr=True))
            bar.start()
            task = bar.add_task("rebuilding index", total=total)
        try:
            with index.bulk_load():
                for chunk in chunks:
                    if not chunk:
                        continue
                    index.add(
                        [r.experience_id for r in chunk],
                        [r.code for r in chunk],
                        [r.domain for r in chunk],
                        np.array([r.confirmed for r in chunk], dtype=bool),
                    )
                    if bar is not None:
                        bar.update(task, advance=len(chunk))
        finally:
            if bar is not None:
                bar.stop()
        return index

    @classmethod
    def from_store(
        cls, store: Store, space_id: bytes | str, progress: bool | None = None, **kwargs: Any
    ) -> CodeIndex:
        """Rebuild the index of one space from the store's consensus records."""
        total = store.count_consensus(space_id)
        return cls.from_records(
            store.iter_consensus_chunks(space_id, chunk=8192), total, progress, **kwargs
        )


_EMPTY_ROWS = np.zeros(0, dtype=np.int64)
_EMPTY_DIST = np.zeros(0, dtype=np.int32)


def _knn_hamming(
    qprefix: np.ndarray, prefixes: np.ndarray, n: int, k: int
) -> tuple[np.ndarray, np.ndarray]:
    """The k rows of prefixes[:n] nearest to qprefix (unordered) and their distances.

    faiss's SIMD popcount kernel over our own array (no copy), one OpenMP thread: on a shared
    2-core machine its spinning worker threads measured several times slower than one thread.
    """
    import faiss

    if n <= k:
        rows = np.arange(n, dtype=np.int64)
        q64 = qprefix.view(np.uint64)
        dist = np.bitwise_count(prefixes[:n].view(np.uint64) ^ q64).sum(axis=1, dtype=np.int32)
        return rows, dist
    dist = np.empty(k, dtype=np.int32)
    rows = np.empty(k, dtype=np.int64)
    q = np.ascontiguousarray(qprefix)
    threads = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(1)
    try:
        # The counting variant ("mc": one counter per distance value) measured 15-30% less
        # CPU than the heap variant at k = 2000-3000 over 1M prefixes, flat in k.
        faiss.hammings_knn_mc(
            faiss.swig_ptr(q),
            faiss.swig_ptr(prefixes),
            1,
            n,
            k,
            _PREFIX_BYTES,
            faiss.swig_ptr(dist),
            faiss.swig_ptr(rows),
        )
    finally:
        faiss.omp_set_num_threads(threads)
    return rows, dist


def _pick(value: Any, keep: list[int], m: int) -> Any:
    """Select entries `keep` of a per-row argument (scalars and None pass through)."""
    if value is None or isinstance(value, str | bool | np.bool_):
        return value
    seq = list(value)
    if len(seq) != m:
        raise IndexInputError("per-row arguments must match ids")
    return [seq[k] for k in keep]
