"""`dsonode bench embed`: throughput, query latency and retrieval quality of the native space.

On the Vaswani collection (11,429 abstracts, 93 queries) it embeds the corpus once with the
encoder alone and once with encoder + head, interleaving the two chunk by chunk so the
throughput ratio is measured side by side, then scores nDCG@10 and recall@10 for the
encoder's 384-d vectors, the native 7680-d vectors, the 1024-d prefix, Hamming search over
964-byte BitDelta codes, and Hamming top-100 rescored against the decoded codes. Every
system gets a paired-bootstrap 95% interval of its difference to the encoder.
"""

from __future__ import annotations

import argparse
import math
import re
import statistics
import time
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from dsonode.argtypes import SubParsers
from dsonode.bench.common import (
    add_common_args,
    add_output_args,
    default_vaswani_dir,
    median_time,
    percentile,
    report,
)
from dsonode.core.errors import DsoError

if TYPE_CHECKING:  # types only: the CLI imports this module at start (ARCHITECTURE.md)
    from dsonode.embed.embedder import Embedder

#: Candidates kept by the Hamming pre-filter before rescoring.
RESCORE_DEPTH = 100
#: Documents per interleaved timing chunk.
_CHUNK = 512
_BOOTSTRAP_SAMPLES = 2000
#: Input bounds: a collection file larger than this is not the benchmark's.
_MAX_FILE_BYTES = 256 * 1024 * 1024

_DOC_RE = re.compile(r"<DOC>(.*?)</DOC>", re.S | re.I)
_DOCNO_RE = re.compile(r"<DOCNO>\s*(.*?)\s*</DOCNO>", re.S | re.I)
_TOP_RE = re.compile(r"<top>(.*?)</top>", re.S | re.I)
_NUM_RE = re.compile(r"<num>\s*(?:Number:)?\s*(.*?)\s*(?:</num>|\n|<)", re.S | re.I)
_TITLE_RE = re.compile(r"<title>\s*(.*?)\s*(?:</title>|<desc>|<narr>|$)", re.S | re.I)


class BenchDataError(DsoError, ValueError):
    """The benchmark collection is missing or malformed."""


# ----------------------------------------------------------------------------- data


def _read(path: Path) -> str:
    if not path.is_file():
        raise BenchDataError(f"missing collection file: {path}")
    if path.stat().st_size > _MAX_FILE_BYTES:
        raise BenchDataError(f"{path} is larger than {_MAX_FILE_BYTES} bytes")
    return path.read_text(encoding="utf-8", errors="replace")


def _clean(text: str) -> str:
    return " ".join(re.sub(r"<[^>]*>", " ", text).split())


def parse_trec_docs(text: str) -> tuple[list[str], list[str]]:
    """(doc ids, texts) from `<DOC><DOCNO>id</DOCNO> text </DOC>` records."""
    ids, texts = [], []
    for body in _DOC_RE.findall(text):
        m = _DOCNO_RE.search(body)
        if not m or not m.group(1).strip():
            raise BenchDataError("a <DOC> record has no <DOCNO>")
        ids.append(m.group(1).strip())
        texts.append(_clean(body[: m.start()] + " " + body[m.end() :]))
    if len(set(ids)) != len(ids):
        raise BenchDataError("duplicate DOCNO in the collection")
    return ids, texts


def parse_trec_topics(text: str) -> tuple[list[str], list[str]]:
    """(query ids, texts) from `<top><num>id</num><title>text</title></top>` records."""
    ids, texts = [], []
    for body in _TOP_RE.findall(text):
        num, title = _NUM_RE.search(body), _TITLE_RE.search(body)
        if not num or not title or not num.group(1).strip():
            raise BenchDataError("a <top> record lacks <num> or <title>")
        ids.append(num.group(1).strip())
        texts.append(_clean(title.group(1)))
    return ids, texts


def parse_qrels(text: str) -> dict[str, dict[str, int]]:
    """TREC qrels `query iter doc rel` -> {query: {doc: rel}} (rel > 0 only)."""
    qrels: dict[str, dict[str, int]] = {}
    for lineno, line in enumerate(text.splitlines(), 1):
        parts = line.split()
        if not parts:
            continue
        if len(parts) != 4:
            raise BenchDataError(f"qrels line {lineno}: expected 4 fields, got {len(parts)}")
        try:
            rel = int(parts[3])
        except ValueError as exc:
            raise BenchDataError(f"qrels line {lineno}: relevance {parts[3]!r}") from exc
        if rel > 0:
            qrels.setdefault(parts[0], {})[parts[2]] = rel
    return qrels


def load_vaswani(
    folder: Path,
) -> tuple[list[str], list[str], list[str], list[str], dict[str, dict[str, int]]]:
    """(doc ids, docs, query ids, queries, qrels) of the TREC collection under `folder`."""
    doc_ids, docs = parse_trec_docs(_read(folder / "doc-text.trec"))
    q_ids, queries = parse_trec_topics(_read(folder / "query-text.trec"))
    qrels = parse_qrels(_read(folder / "qrels"))
    if not docs or not queries:
        raise BenchDataError(f"no documents or no queries under {folder}")
    return doc_ids, docs, q_ids, queries, qrels


# ----------------------------------------------------------------------------- metrics


def ndcg_recall_at_k(
    ranked: list[list[str]], q_ids: list[str], qrels: dict[str, dict[str, int]], k: int = 10
) -> tuple[np.ndarray, np.ndarray]:
    """Per-query nDCG@k (graded gains, log2 discount) and recall@k, for judged queries."""
    ndcg, recall = [], []
    for qid, docs in zip(q_ids, ranked, strict=True):
        rels = qrels.get(qid)
        if not rels:
            continue
        dcg = sum(rels.get(d, 0) / math.log2(i + 2) for i, d in enumerate(docs[:k]))
        ideal = sorted(rels.values(), reverse=True)[:k]
        idcg = sum(g / math.log2(i + 2) for i, g in enumerate(ideal))
        ndcg.append(dcg / idcg)
        recall.append(sum(1 for d in docs[:k] if d in rels) / len(rels))
    return np.asarray(ndcg), np.asarray(recall)


def paired_bootstrap(
    a: np.ndarray, b: np.ndarray, samples: int = _BOOTSTRAP_SAMPLES, seed: int = 0
) -> tuple[float, float]:
    """95% interval of mean(a - b) over queries resampled with replacement."""
    diff = np.asarray(a, dtype=np.float64) - np.asarray(b, dtype=np.float64)
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, len(diff), size=(samples, len(diff)))
    means = diff[idx].mean(axis=1)
    return float(np.percentile(means, 2.5)), float(np.percentile(means, 97.5))


def top_k_dense(queries: np.ndarray, docs: np.ndarray, k: int) -> np.ndarray:
    scores = queries @ docs.T
    part = np.argpartition(-scores, k - 1, axis=1)[:, :k]
    order = np.argsort(-np.take_along_axis(scores, part, axis=1), axis=1, kind="stable")
    return np.take_along_axis(part, order, axis=1)


# ----------------------------------------------------------------------------- head kernels


def head_kernels(emb: Embedder, texts: list[str], repeats: int) -> dict[str, dict[str, float]]:
    """The head alone in float32, bfloat16 and the exact int8-limb kernel, side by side.

    Times are medians per call at batch 1 (a query) and per text at batch 64; agreement is
    measured against the float32 head on the same encoder vectors (sign flips = bits of the
    964-byte code that would differ).
    """
    import copy

    import torch

    from dsonode.embed.fastpath import fast_head

    base = torch.from_numpy(emb.encode_base(texts[:64]))
    head = emb.head  # float32 (rebuilt when the embedder keeps only the fast form)
    kernels: dict[str, tuple[torch.nn.Module, torch.dtype]] = {"float32": (head, torch.float32)}
    bf16 = copy.deepcopy(head).to(torch.bfloat16)
    kernels["bfloat16"] = (bf16, torch.bfloat16)
    int8 = fast_head(head)  # the int8 GEMM form, side by side with the structured one
    if int8 is not head:
        kernels["int8_limbs"] = (int8, torch.float32)
    if emb.info()["head_kernel"] == "hadamard-limbs":
        kernels["hadamard_limbs"] = (emb.head_runner, torch.float32)
    out: dict[str, dict[str, float]] = {}
    with torch.inference_mode():
        ref = head(base)
        for name, (fn, dtype) in kernels.items():
            x1, x64 = base[:1].to(dtype), base.to(dtype)
            got = fn(x64).float()
            out[name] = {
                "batch1_ms": median_time(partial(fn, x1), repeats * 4) * 1000,
                "batch64_ms_per_text": median_time(partial(fn, x64), repeats) * 1000 / 64,
                "sign_flip_rate_vs_float32": float(((got >= 0) != (ref >= 0)).float().mean()),
                "min_cosine_vs_float32": float(
                    torch.nn.functional.cosine_similarity(got, ref, dim=1).min()
                ),
            }
    del bf16
    return out


# ----------------------------------------------------------------------------- run


def run(
    data: Path, limit_docs: int | None, threads: int | None, repeats: int = 5
) -> dict[str, Any]:
    from dsonode.core import bitdelta
    from dsonode.embed.embedder import get_embedder

    doc_ids, docs, q_ids, queries, qrels = load_vaswani(data)
    if limit_docs is not None:
        doc_ids, docs = doc_ids[:limit_docs], docs[:limit_docs]
    t0 = time.perf_counter()
    emb = get_embedder(threads=threads)
    load_s = time.perf_counter() - t0

    # Interleave encoder-only and encoder+head chunk by chunk: the two rates see the same
    # machine load, so their ratio is fair on a shared, noisy box.
    base = np.empty((len(docs), emb.hidden_size), dtype=np.float32)
    native = np.empty((len(docs), emb.dim), dtype=np.float32)
    t_base = t_native = 0.0
    emb.embed(docs[:64])  # warm-up
    for start in range(0, len(docs), _CHUNK):
        chunk = docs[start : start + _CHUNK]
        t = time.perf_counter()
        base[start : start + len(chunk)] = emb.encode_base(chunk)
        t_base += time.perf_counter() - t
        t = time.perf_counter()
        native[start : start + len(chunk)] = emb.embed(chunk)
        t_native += time.perf_counter() - t

    # Query latency: one short text at a time, as the socket server sees it.
    for q in queries[:5]:
        emb.embed_query(q)
    # Both paths, interleaved query by query: exact (what becomes a code) and for_search.
    for q in queries[:5]:
        emb.embed_query(q, for_search=True)
    lat, lat_search, q_search = [], [], []
    for q in queries:
        t = time.perf_counter()
        emb.embed_query(q)
        lat.append((time.perf_counter() - t) * 1000)
        t = time.perf_counter()
        q_search.append(emb.embed_query(q, for_search=True))
        lat_search.append((time.perf_counter() - t) * 1000)

    q_base = emb.encode_base(queries)
    q_native = emb.embed(queries)
    k = 10
    ids = np.asarray(doc_ids)

    def ranked(idx: np.ndarray) -> list[list[str]]:
        return [list(ids[row]) for row in idx]

    systems: dict[str, list[list[str]]] = {}
    systems["encoder"] = ranked(top_k_dense(q_base, base, k))
    systems["native"] = ranked(top_k_dense(q_native, native, k))
    p_docs = native[:, :1024] / np.linalg.norm(native[:, :1024], axis=1, keepdims=True)
    p_q = q_native[:, :1024] / np.linalg.norm(q_native[:, :1024], axis=1, keepdims=True)
    systems["prefix_1024"] = ranked(top_k_dense(p_q, p_docs, k))
    systems["native_search_path"] = ranked(top_k_dense(np.stack(q_search), native, k))

    codes = bitdelta.encode(native)
    depth = min(RESCORE_DEPTH, len(docs))
    hamming_top, rescored_top = [], []
    for qv in q_native:
        dist = np.asarray(bitdelta.hamming(bitdelta.sign_bits(qv), codes))
        cand = np.argsort(dist, kind="stable")[:depth]
        hamming_top.append(cand[:k])
        scores = np.asarray(bitdelta.asymmetric_scores(qv, codes[cand]))
        rescored_top.append(cand[np.argsort(-scores, kind="stable")[:k]])
    systems["code_1bit"] = ranked(np.asarray(hamming_top))
    systems["code_rescored"] = ranked(np.asarray(rescored_top))

    per_query = {name: ndcg_recall_at_k(r, q_ids, qrels, k) for name, r in systems.items()}
    enc_ndcg, enc_recall = per_query["encoder"]
    quality: dict[str, dict[str, Any]] = {}
    for name, (nd, rc) in per_query.items():
        lo, hi = paired_bootstrap(nd, enc_ndcg)
        rlo, rhi = paired_bootstrap(rc, enc_recall)
        quality[name] = {
            "ndcg10": float(nd.mean()),
            "recall10": float(rc.mean()),
            "ndcg10_diff_vs_encoder_ci95": [lo, hi],
            "recall10_diff_vs_encoder_ci95": [rlo, rhi],
        }

    kernels = head_kernels(emb, docs, repeats)
    enc_rate = len(docs) / t_base
    nat_rate = len(docs) / t_native
    n_native = quality["native"]["ndcg10"]
    targets = {
        "native_ge_encoder_minus_0.01": n_native >= quality["encoder"]["ndcg10"] - 0.01,
        "code_rescored_ge_native_minus_0.005": quality["code_rescored"]["ndcg10"]
        >= n_native - 0.005,
        "code_1bit_ge_0.95_native": quality["code_1bit"]["ndcg10"] >= 0.95 * n_native,
        "ratio_ge_0.8": nat_rate / enc_rate >= 0.8,
    }
    return {
        "benchmark": "embed",
        "space_id": emb.space_id,
        "model": emb.model_name,
        "threads": emb.info()["threads"],
        "docs": len(docs),
        "queries": len(queries),
        "judged_queries": len(per_query["encoder"][0]),
        "load_s": load_s,
        "encoder_texts_per_s": enc_rate,
        "native_texts_per_s": nat_rate,
        "ratio": nat_rate / enc_rate,
        "query_p50_ms": statistics.median(lat),
        "query_p90_ms": percentile(lat, 90),
        "query_search_path_p50_ms": statistics.median(lat_search),
        "query_search_path_p90_ms": percentile(lat_search, 90),
        "query_search_path_min_cosine_vs_exact": float(
            (np.stack(q_search) * q_native).sum(axis=1).min()
        ),
        "query_search_path_mean_cosine_vs_exact": float(
            (np.stack(q_search) * q_native).sum(axis=1).mean()
        ),
        "query_runtime": emb.query_runtime,
        "head_kernels": kernels,
        "quality": quality,
        "targets_met": targets,
    }


def register(bench_subparsers: SubParsers) -> None:
    p = bench_subparsers.add_parser(
        "embed", help="encoder vs native throughput, query latency, retrieval quality (Vaswani)"
    )
    add_common_args(p)
    p.add_argument("--data", type=Path, default=None, help="Vaswani folder (TREC files)")
    p.add_argument("--limit-docs", type=int, default=None, help="use only the first N documents")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: all CPUs)")
    add_output_args(p, "embed")
    p.set_defaults(func=_main)


def _main(args: argparse.Namespace) -> int:
    if args.limit_docs is not None and args.limit_docs < RESCORE_DEPTH:
        raise BenchDataError(f"--limit-docs must be >= {RESCORE_DEPTH}")
    data = args.data or default_vaswani_dir()
    if args.repeats < 1:
        raise BenchDataError("--repeats must be >= 1")
    report(run(Path(data), args.limit_docs, args.threads, args.repeats), args.json, args)
    return 0
