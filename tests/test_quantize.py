"""The query model's quantisation recipe (dsonode/embed/quantize.py) on a tiny ONNX graph built
here: smoothing keeps the float function, the recipe's model runs and stays close to float, the
kept-float down-projection stays float, and bad calibration or input is refused."""

from __future__ import annotations

import collections
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

from onnx import TensorProto, helper, numpy_helper  # noqa: E402

from dsonode.embed import quantize as q  # noqa: E402

VOCAB, HIDDEN, INNER = 64, 32, 128


def _tiny_encoder(path: Path, extra_input: str | None = None) -> None:
    """Embedding -> per-channel gain -> up-projection -> GELU -> down-projection -> output
    layer. The gain makes two outlier channels whose weight rows are small, as a BERT layer's
    LayerNorm does: the other channels carry the signal, and a per-tensor int8 scale leaves
    them few levels."""
    rng = np.random.default_rng(0)
    table = rng.normal(size=(VOCAB, HIDDEN)).astype(np.float32)
    w_up = (rng.normal(size=(HIDDEN, INNER)) / 6).astype(np.float32)
    gain = np.ones(HIDDEN, dtype=np.float32)
    for channel, factor in ((3, 40.0), (17, 20.0)):
        gain[channel] = factor
        w_up[channel] /= factor
    inits = [
        numpy_helper.from_array(table, "table"),
        numpy_helper.from_array(gain, "gain"),
        numpy_helper.from_array(w_up, "w_up"),
        numpy_helper.from_array((rng.normal(size=(INNER, HIDDEN)) / 11).astype(np.float32), "w_dn"),
        numpy_helper.from_array(
            (rng.normal(size=(HIDDEN, HIDDEN)) / 6).astype(np.float32), "w_out"
        ),
        numpy_helper.from_array(np.asarray(np.sqrt(0.5), np.float32), "half_sqrt2"),
        numpy_helper.from_array(np.asarray(1.0, np.float32), "one"),
        numpy_helper.from_array(np.asarray(0.5, np.float32), "half"),
    ]
    nodes = [
        helper.make_node("Gather", ["table", "input_ids"], ["e"], name="embed"),
        helper.make_node("Mul", ["e", "gain"], ["x"]),
        helper.make_node("MatMul", ["x", "w_up"], ["u"], name="up"),
        # GELU(u) = 0.5 u (1 + erf(u / sqrt 2)), written out as the torch export does
        helper.make_node("Mul", ["u", "half_sqrt2"], ["u1"]),
        helper.make_node("Erf", ["u1"], ["u2"]),
        helper.make_node("Add", ["u2", "one"], ["u3"]),
        helper.make_node("Mul", ["u", "u3"], ["u4"]),
        helper.make_node("Mul", ["u4", "half"], ["g"]),
        helper.make_node("MatMul", ["g", "w_dn"], ["d"], name="down"),
        helper.make_node("MatMul", ["d", "w_out"], ["hidden"], name="out"),
    ]
    graph = helper.make_graph(
        nodes,
        "tiny",
        [
            helper.make_tensor_value_info("input_ids", TensorProto.INT64, ["batch", "tokens"]),
            helper.make_tensor_value_info("attention_mask", TensorProto.INT64, ["batch", "tokens"]),
        ]
        + (
            [helper.make_tensor_value_info(extra_input, TensorProto.INT64, ["batch", "tokens"])]
            if extra_input
            else []
        ),
        [helper.make_tensor_value_info("hidden", TensorProto.FLOAT, ["batch", "tokens", HIDDEN])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, str(path))


def _ids(n: int, seed: int) -> list[list[int]]:
    rng = np.random.default_rng(seed)
    return [rng.integers(0, VOCAB, size=int(rng.integers(8, 30))).tolist() for _ in range(n)]


def _pooled(path: Path, ids: list[list[int]]) -> np.ndarray:
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    rows = []
    for seq in ids:
        x = np.asarray([seq], dtype=np.int64)
        hidden = session.run(None, {"input_ids": x, "attention_mask": np.ones_like(x)})[0]
        v = hidden[0].mean(axis=0)
        rows.append(v / np.linalg.norm(v))
    return np.stack(rows)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    folder = tmp_path_factory.mktemp("quantize")
    _tiny_encoder(folder / "fp32.onnx")
    return folder


def test_smoothing_keeps_the_float_function(tiny):
    model = onnx.load(str(tiny / "fp32.onnx"))
    calibration = [np.asarray([s], dtype=np.int64) for s in _ids(32, 1)]
    q.smooth(model, q.activation_amax(model, calibration), q.SMOOTH_ALPHA)
    smooth_muls = [n for n in model.graph.node if n.name.endswith("/smooth")]
    assert len(smooth_muls) == 3  # one per distinct MatMul input: x, g, d
    onnx.save(model, str(tiny / "smoothed.onnx"))
    held = _ids(16, 2)
    cos = (_pooled(tiny / "smoothed.onnx", held) * _pooled(tiny / "fp32.onnx", held)).sum(axis=1)
    assert cos.min() > 0.99999


def test_recipe_runs_close_to_float_and_beats_plain_dynamic_int8(tiny):
    cal, held = _ids(40, 3), _ids(24, 4)  # tuned on one set, scored on another
    exact = _pooled(tiny / "fp32.onnx", held)
    q.quantize_query_model(tiny / "fp32.onnx", tiny / "recipe.onnx", cal, float_down_projections=0)
    q.quantize_query_model(
        tiny / "fp32.onnx", tiny / "plain.onnx", cal, alpha=0.0, float_down_projections=0
    )
    err_recipe = 1 - (_pooled(tiny / "recipe.onnx", held) * exact).sum(axis=1)
    err_plain = 1 - (_pooled(tiny / "plain.onnx", held) * exact).sum(axis=1)
    assert err_recipe.max() < 0.001
    # Smoothing is what the recipe adds (measured here: 0.0027 -> 0.00004 mean error).
    assert err_recipe.mean() < 0.2 * err_plain.mean()
    ops = collections.Counter(n.op_type for n in onnx.load(str(tiny / "recipe.onnx")).graph.node)
    assert ops["MatMulInteger"] == 3 and ops["MatMul"] == 0


def test_the_first_down_projections_stay_float(tiny):
    model = onnx.load(str(tiny / "fp32.onnx"))
    assert q.down_projections(model) == ["down"]  # K 128 > N 32; up and out are not
    q.quantize_query_model(tiny / "fp32.onnx", tiny / "default.onnx", _ids(40, 5))
    nodes = onnx.load(str(tiny / "default.onnx")).graph.node
    assert [n.name for n in nodes if n.op_type == "MatMul"] == ["down"]
    assert sum(n.op_type == "MatMulInteger" for n in nodes) == 2


def test_bad_calibration_and_bad_models_are_refused(tiny):
    with pytest.raises(q.QuantizeError, match="calibration needs"):
        q.quantize_query_model(tiny / "fp32.onnx", tiny / "x.onnx", _ids(q.MIN_CALIBRATION - 1, 6))
    bad = _ids(40, 7)
    bad[5] = [1, -2, 3]
    with pytest.raises(q.QuantizeError, match="non-negative"):
        q.quantize_query_model(tiny / "fp32.onnx", tiny / "x.onnx", bad)
    with pytest.raises(q.QuantizeError, match="alpha"):
        q.quantize_query_model(tiny / "fp32.onnx", tiny / "x.onnx", _ids(40, 8), alpha=1.5)
    _tiny_encoder(tiny / "other.onnx", extra_input="pixel_values")
    with pytest.raises(q.QuantizeError, match="not an encoder's"):
        q.quantize_query_model(tiny / "other.onnx", tiny / "x.onnx", _ids(40, 9))
    (tiny / "junk.onnx").write_bytes(b"not a model")
    with pytest.raises(q.QuantizeError, match="cannot read"):
        q.quantize_query_model(tiny / "junk.onnx", tiny / "x.onnx", _ids(40, 9))
    assert not (tiny / "x.onnx").exists()


def test_calibration_texts_are_enough_and_in_bounds():
    assert q.MIN_CALIBRATION <= len(q.CALIBRATION_TEXTS) <= q.MAX_CALIBRATION
    assert len(set(q.CALIBRATION_TEXTS)) == len(q.CALIBRATION_TEXTS)


def test_quantizing_imports_no_torch(tiny, tmp_path):
    """The module is for the torch-free node: building the model must not load torch."""
    code = (
        "import sys, json\n"
        "from pathlib import Path\n"
        "from dsonode.embed import quantize as q\n"
        "ids = json.loads(sys.argv[3])\n"
        "q.quantize_query_model(Path(sys.argv[1]), Path(sys.argv[2]), ids)\n"
        "assert 'torch' not in sys.modules, 'torch was imported'\n"
    )
    dest = tmp_path / "int8.onnx"
    out = subprocess.run(
        [sys.executable, "-c", code, str(tiny / "fp32.onnx"), str(dest), json.dumps(_ids(40, 10))],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, out.stderr[-2000:]
    assert dest.stat().st_size > 0


def test_bench_reads_rollout_sentences_and_refuses_other_files(tmp_path):
    from dsonode.bench.embed import BenchDataError
    from dsonode.bench.quantize import rollout_sentences

    rows = [
        {"prompt": "Sort the list.", "response": "Use sorted().\n\nCheck  the keys."},
        {"prompt": "Sort the list.", "response": [{"role": "user", "content": "Weather?"}]},
    ]
    (tmp_path / "a.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    assert rollout_sentences(tmp_path) == [
        "Sort the list.",
        "Use sorted().",
        "Check the keys.",
        "Weather?",
    ]
    (tmp_path / "b.jsonl").write_text('{"prompt": "no response"}\n')
    with pytest.raises(BenchDataError, match=r"b\.jsonl:1"):
        rollout_sentences(tmp_path)


def test_the_recipe_on_the_real_encoder_beats_v1_on_unseen_sentences(tmp_path):
    """The packaged encoder, exported and quantised as the query path does, against the exact
    pooled vector on held-out rollout sentences (not calibration texts). Measured 2026-12-06
    on 254 of them: mean error 0.00145 (v2) vs 0.00699 (v1), BENCHMARKS.md "query path"."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    from dsonode.bench.quantize import (
        ROLLOUTS,
        QuerySession,
        export_fp32,
        query_ids,
        rollout_sentences,
    )
    from dsonode.embed.embedder import Embedder

    emb = Embedder(threads=1)
    texts = [t for t in rollout_sentences(ROLLOUTS / "heldout") if t not in q.CALIBRATION_TEXTS]
    picked = [(t, i) for t, i in zip(texts, query_ids(emb, texts), strict=True) if len(i) >= 8]
    assert len(picked) >= 40
    ids = [i for _, i in picked[:40]]
    exact = emb.encode_base([t for t, _ in picked[:40]], kind="query")  # the torch encoder
    export_fp32(emb, tmp_path / "fp32.onnx")
    q.quantize_query_model(
        tmp_path / "fp32.onnx",
        tmp_path / "v2.onnx",
        query_ids(emb, list(q.CALIBRATION_TEXTS)),
    )
    quantize_dynamic(
        str(tmp_path / "fp32.onnx"),
        str(tmp_path / "v1.onnx"),
        per_channel=True,
        weight_type=QuantType.QInt8,
    )
    err = {}
    for name in ("v1", "v2"):
        session = QuerySession(tmp_path / f"{name}.onnx")
        err[name] = 1 - (np.stack([session.pooled(i) for i in ids]) * exact).sum(axis=1)
    assert err["v2"].max() < 0.01, err["v2"].max()
    assert err["v2"].mean() < 0.5 * err["v1"].mean(), (err["v2"].mean(), err["v1"].mean())
