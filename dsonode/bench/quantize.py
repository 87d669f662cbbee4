"""`dsonode bench quantize`: quantisation recipes of the int8 query encoder, side by side.

The encoder is exported once to a float32 ONNX graph (as the query path does), then each
candidate recipe is built from it: `float32` (no quantisation), `v1` (dynamic int8 per
output channel on every MatMul: the recipe before dsonode/embed/quantize.py), `v2_smooth_only`
(smoothing, no MatMul kept float), `v2` (the recipe, `quantize.RECIPE`) and `v2_float_down2`
(one more down-projection kept float). Every candidate is scored by the cosine of its pooled
vector to the exact torch vector on sentences of the repository's example rollouts
(examples/rollouts, main and heldout sets, texts of at least the query path's int8 threshold
in tokens) and, as the `short` set, the shorter ones with SHORT_QUERIES (today these take the
exact encoder); none of them a calibration sentence or a Vaswani text.

Latency: ms per text at batch 1, one intra-op thread, the candidates interleaved text by
text, medians of wall time and of the thread's CPU time (steadier than wall time on a shared
machine: a descheduled run does not count). With `--data DIR` the Vaswani collection is
embedded on the exact path and each candidate's search-path nDCG@10 is compared with the
exact path's.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from dsonode.argtypes import SubParsers, bounded_int
from dsonode.bench.common import add_common_args, add_output_args, report
from dsonode.bench.embed import (
    BenchDataError,
    load_vaswani,
    ndcg_recall_at_k,
    paired_bootstrap,
    top_k_dense,
)

if TYPE_CHECKING:  # types only: the CLI imports this module at start (ARCHITECTURE.md)
    from dsonode.embed.embedder import Embedder

#: The example rollouts whose sentences score the candidates (never tuned on: the recipe's
#: constants were chosen on them, its calibration uses quantize.CALIBRATION_TEXTS).
ROLLOUTS = Path(__file__).resolve().parents[2] / "examples" / "rollouts"
#: Sentences scored per set (a seeded sample when there are more).
MAX_TEXTS = 400
#: Short queries (written for this benchmark) scored with the rollouts' short lines in the
#: `short` set: texts under the query path's int8 threshold, which today take the exact encoder.
SHORT_QUERIES = (
    "ok",
    "I love it",
    "error",
    "segfault",
    "why",
    "bread",
    "tax return",
    "chess opening",
    "slow query",
    "memory leak",
    "retry",
    "induction proof",
    "clay soil",
    "unit test",
    "docker",
    "timeout",
)
_MAX_FILE_BYTES = 32 * 1024 * 1024
_OPSET = 17


def rollout_sentences(folder: Path) -> list[str]:
    """Unique prompts and response lines of the *.jsonl rollouts directly in `folder`."""
    seen: dict[str, None] = {}
    for path in sorted(folder.glob("*.jsonl")):
        if path.stat().st_size > _MAX_FILE_BYTES:
            raise BenchDataError(f"{path} is larger than {_MAX_FILE_BYTES} bytes")
        for lineno, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
                response = row["response"]
                parts = [str(row["prompt"])]
            except (ValueError, KeyError, TypeError) as exc:
                raise BenchDataError(f"{path}:{lineno}: not a rollout ({exc})") from exc
            if isinstance(response, list):  # a chat transcript: its messages' contents
                response = "\n".join(
                    str(m.get("content") or "") for m in response if isinstance(m, dict)
                )
            parts += str(response).split("\n")
            for part in parts:
                text = " ".join(part.split())
                if text:
                    seen.setdefault(text, None)
    return list(seen)


def export_fp32(emb: Embedder, dest: Path) -> None:
    """The encoder's last hidden state as a float32 ONNX graph (inputs input_ids,
    attention_mask), as the query path exports it."""
    import torch

    class _Hidden(torch.nn.Module):
        def __init__(self, model: Any) -> None:
            super().__init__()
            self.model = model

        def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
            hidden: torch.Tensor = self.model(
                input_ids=input_ids, attention_mask=attention_mask
            ).last_hidden_state
            return hidden

    pad = emb.tokenizer.pad_token_id or 0
    ids = torch.full((1, 8), pad, dtype=torch.int64)
    axes = {0: "batch", 1: "tokens"}
    with torch.inference_mode(False), torch.no_grad():
        torch.onnx.export(
            _Hidden(emb.model).eval(),
            (ids, torch.ones_like(ids)),
            str(dest),
            input_names=["input_ids", "attention_mask"],
            output_names=["hidden"],
            dynamic_axes={"input_ids": axes, "attention_mask": axes, "hidden": axes},
            opset_version=_OPSET,
            dynamo=False,
        )


def query_ids(emb: Embedder, texts: list[str]) -> list[list[int]]:
    prefix = emb.options.prefix("query")
    enc = emb.tokenizer(
        [prefix + t for t in texts], truncation=True, max_length=emb.max_length, padding=False
    )
    return [list(map(int, ids)) for ids in enc["input_ids"]]


class QuerySession:
    """One candidate model as the query path runs it: 1 intra-op thread, no spinning, full
    graph optimisation, mean pooling in numpy."""

    def __init__(self, path: Path) -> None:
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads = 1
        options.inter_op_num_threads = 1
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.log_severity_level = 3
        self.session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])

    def pooled(self, ids: list[int]) -> np.ndarray:
        x = np.asarray([ids], dtype=np.int64)
        hidden = self.session.run(None, {"input_ids": x, "attention_mask": np.ones_like(x)})[0]
        v = np.asarray(hidden[0], dtype=np.float32).mean(axis=0)
        return v / max(float(np.linalg.norm(v)), 1e-12)


def build_candidates(fp32: Path, folder: Path, calibration: list[list[int]]) -> dict[str, Any]:
    """{name: (path, build seconds)} of every candidate recipe, built from `fp32`."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    from dsonode.embed import quantize as q

    def v1(dest: Path) -> None:
        quantize_dynamic(str(fp32), str(dest), per_channel=True, weight_type=QuantType.QInt8)

    recipes = {
        "v1": v1,
        "v2_smooth_only": lambda d: q.quantize_query_model(
            fp32, d, calibration, float_down_projections=0
        ),
        "v2": lambda d: q.quantize_query_model(fp32, d, calibration),
        "v2_float_down2": lambda d: q.quantize_query_model(
            fp32, d, calibration, float_down_projections=2
        ),
    }
    out: dict[str, Any] = {"float32": (fp32, 0.0)}
    for name, build in recipes.items():
        dest = folder / f"{name}.onnx"
        t = time.perf_counter()
        build(dest)
        out[name] = (dest, time.perf_counter() - t)
    return out


def _cosines(got: np.ndarray, exact: np.ndarray) -> dict[str, float]:
    cos = (got * exact).sum(axis=1)
    return {
        "min": float(cos.min()),
        "p5": float(np.percentile(cos, 5)),
        "mean": float(cos.mean()),
        "mean_error": float((1.0 - cos).mean()),
    }


def _vaswani(
    emb: Embedder, sessions: dict[str, QuerySession], data: Path, min_tokens: int
) -> dict[str, Any]:
    """nDCG@10 of each candidate's search path (int8 pooled vector -> the head) against the
    exact path (emb.embed), over the full collection."""
    doc_ids, docs, q_ids, queries, qrels = load_vaswani(data)
    native = emb.embed(docs)
    q_native = emb.embed(queries)
    exact_pooled = emb.encode_base(queries, kind="query")
    ids = query_ids(emb, queries)
    names = np.asarray(doc_ids)
    exact_top = top_k_dense(q_native, native, 10)
    nd_exact, _ = ndcg_recall_at_k([list(names[r]) for r in exact_top], q_ids, qrels)
    out: dict[str, Any] = {"docs": len(docs), "queries": len(queries)}
    out["exact"] = {"ndcg10": float(nd_exact.mean())}
    for name, session in sessions.items():
        pooled = np.stack(
            [
                session.pooled(i) if len(i) >= min_tokens else exact_pooled[j]
                for j, i in enumerate(ids)
            ]
        )
        vec = emb.project(pooled)
        top = top_k_dense(vec, native, 10)
        nd, rc = ndcg_recall_at_k([list(names[r]) for r in top], q_ids, qrels)
        lo, hi = paired_bootstrap(nd, nd_exact)
        overlap = [len(set(a) & set(b)) / 10 for a, b in zip(top, exact_top, strict=True)]
        out[name] = {
            "ndcg10": float(nd.mean()),
            "ndcg10_diff_vs_exact": float(nd.mean() - nd_exact.mean()),
            "ndcg10_diff_ci95": [lo, hi],
            "recall10": float(rc.mean()),
            "top10_overlap_vs_exact": float(np.mean(overlap)),
            "cosine_vs_exact": _cosines(vec, q_native),
        }
    return out


def run(
    data: Path | None, latency_texts: int, repeats: int, rollouts: Path = ROLLOUTS
) -> dict[str, Any]:
    from dsonode.embed import quantize as q
    from dsonode.embed import runtime as rt
    from dsonode.embed.embedder import Embedder

    emb = Embedder(threads=1)
    sets: dict[str, list[str]] = {}
    calibration_texts = set(q.CALIBRATION_TEXTS)
    short: list[str] = list(SHORT_QUERIES)
    for name, folder in (("rollouts", rollouts), ("rollouts_heldout", rollouts / "heldout")):
        texts = [t for t in rollout_sentences(folder) if t not in calibration_texts]
        lengths = [len(i) for i in query_ids(emb, texts)]
        short += [t for t, n in zip(texts, lengths, strict=True) if n < rt.MIN_INT8_TOKENS]
        texts = [t for t, n in zip(texts, lengths, strict=True) if n >= rt.MIN_INT8_TOKENS]
        if not texts:
            raise BenchDataError(
                f"no rollout sentences of >= {rt.MIN_INT8_TOKENS} tokens in {folder}"
            )
        if len(texts) > MAX_TEXTS:
            pick = np.random.default_rng(0).choice(len(texts), MAX_TEXTS, replace=False)
            texts = [texts[i] for i in sorted(pick)]
        sets[name] = texts
    sets["short"] = list(dict.fromkeys(short))
    calibration = query_ids(emb, list(q.CALIBRATION_TEXTS))
    with tempfile.TemporaryDirectory(prefix="dso-bench-quantize-") as tmp:
        fp32 = Path(tmp) / "fp32.onnx"
        t = time.perf_counter()
        export_fp32(emb, fp32)
        export_s = time.perf_counter() - t
        built = build_candidates(fp32, Path(tmp), calibration)
        sessions = {name: QuerySession(path) for name, (path, _) in built.items()}
        result: dict[str, Any] = {
            "benchmark": "quantize",
            "recipe": q.RECIPE,
            "encoder": emb.encoder_name,
            "export_s": export_s,
            "candidates": {
                name: {"build_s": s, "model_mb": path.stat().st_size / 1e6}
                for name, (path, s) in built.items()
            },
        }
        for set_name, texts in sets.items():
            exact = emb.encode_base(texts, kind="query")
            ids = query_ids(emb, texts)
            for name, session in sessions.items():
                got = np.stack([session.pooled(i) for i in ids])
                result["candidates"][name][f"cosine_{set_name}"] = _cosines(got, exact)
            result[f"texts_{set_name}"] = len(texts)
        # Latency: the same texts through every candidate, interleaved text by text.
        ids = query_ids(emb, sets["rollouts"])
        pick = np.random.default_rng(1).choice(
            len(ids), min(latency_texts, len(ids)), replace=False
        )
        timed = [ids[i] for i in pick]
        for session in sessions.values():
            for i in timed[:10]:
                session.pooled(i)
        times: dict[str, list[float]] = {name: [] for name in sessions}
        cpu: dict[str, list[float]] = {name: [] for name in sessions}
        for _ in range(repeats):
            for i in timed:
                for name, session in sessions.items():
                    t, c = time.perf_counter(), time.thread_time()
                    session.pooled(i)
                    cpu[name].append((time.thread_time() - c) * 1000)
                    times[name].append((time.perf_counter() - t) * 1000)
        v1_ms, v1_cpu = statistics.median(times["v1"]), statistics.median(cpu["v1"])
        for name, ms in times.items():
            row = result["candidates"][name]
            row["ms_per_query"] = statistics.median(ms)
            row["ms_ratio_vs_v1"] = statistics.median(ms) / v1_ms
            row["cpu_ms_per_query"] = statistics.median(cpu[name])
            row["cpu_ratio_vs_v1"] = statistics.median(cpu[name]) / v1_cpu
        result["latency_texts"] = len(timed)
        result["latency_tokens_median"] = float(np.median([len(i) for i in timed]))
        if data is not None:
            result["vaswani"] = _vaswani(emb, sessions, data, rt.MIN_INT8_TOKENS)
    return result


def register(bench_subparsers: SubParsers) -> None:
    p = bench_subparsers.add_parser(
        "quantize", help="int8 query encoder recipes: cosine, latency, Vaswani nDCG (--data)"
    )
    add_common_args(p)
    p.add_argument(
        "--data", type=Path, default=None, help="also score nDCG@10 on this Vaswani folder"
    )
    p.add_argument(
        "--latency-texts",
        type=bounded_int(1, 1000),
        default=80,
        help="texts timed per candidate and repeat",
    )
    add_output_args(p, "quantize", plot=False)
    p.set_defaults(func=_main)


def _main(args: argparse.Namespace) -> int:
    if args.repeats < 1:
        raise BenchDataError("--repeats must be >= 1")
    report(run(args.data, args.latency_texts, args.repeats), args.json, args)
    return 0
