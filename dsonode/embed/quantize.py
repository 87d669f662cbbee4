"""The int8 query encoder's quantisation recipe: smoothed dynamic int8, one layer kept float.

ONNX Runtime's dynamic quantisation gives every MatMul int8 weights (one scale per output
channel) and quantises its input at run time with ONE scale for the whole tensor. A BERT-style
encoder's activations have a few channels ~10x larger than the rest (after the LayerNorms and
the GELU of the feed-forward block), so that one scale leaves the other channels few levels:
that, not the weights, was the int8 encoder's error (BENCHMARKS.md, "query path": int8
weights in blocks of 32 computed in float lost 50x less than the per-channel int8 MatMuls).

The recipe (RECIPE; every figure from BENCHMARKS.md "query path", "Quantisation recipe"):

1. **Smoothing** (the SmoothQuant idea): for every MatMul with a constant weight W (K x N)
   and input X, a per-input-channel factor s = amax(X)^alpha / amax(W row)^(1 - alpha) moves
   range from the activation into the weight: X W = (X / s)(s W). A Mul by 1/s is inserted
   before the MatMul (one element-wise pass) and W's rows are scaled by s: the float32 graph
   computes the same function to float rounding, while X / s has no outlier channel left for
   the per-tensor scale. amax(X) is the per-channel max |X| over CALIBRATION_TEXTS, raised to
   at least AMAX_FLOOR x the median channel's; alpha = SMOOTH_ALPHA.
2. **One MatMul stays float32**: the first feed-forward down-projection (K > N), the most
   sensitive node left after smoothing (per-node sensitivity: 14%, 14% and 11% of the
   remaining error for the first three down-projections, every other MatMul < 7%).
3. The rest as before: `quantize_dynamic`, weights QInt8 per channel, activations QUInt8
   (dynamic quantisation's only activation type), full 8-bit range, embedding tables int8.

Mean error (1 - cosine to the exact pooled vector) on example-rollout sentences: 0.0072 for
the previous recipe (v1), 0.0015 for this one; on Vaswani's 93 queries (measured once, never
tuned on) min cosine 0.9973 vs 0.9898 and nDCG@10 +0.0010 vs -0.0050 against the exact path,
for ~1.1x v1's CPU time per query.

Rejected, measured side by side: reduce_range (worse), QUInt8 weights (same error, slower),
MatMulNBits 8-bit with int8 compute (error 0.00035 but ~1.4-1.8x slower), 4-bit MatMulNBits
(error 0.033), ONNX Runtime's transformer fusions (no faster), smoothing calibrated on random
token ids (no better than none: outlier channels follow real text), fewer than ~32
calibration sentences without the floor (unseen channels get amplified: error 0.02).

No torch here (the optional `[onnx]` extra only): the caller exports the float32 graph and
tokenises CALIBRATION_TEXTS (as queries) with the encoder's tokenizer.
"""

from __future__ import annotations

import os
import tempfile
from collections import Counter
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

#: Version of this recipe: part of the query model's cache key (a change rebuilds it).
RECIPE = "dso/query-onnx-int8/v2-smooth0.8-floor0.5-fp32down1"
#: Migration strength of the smoothing (1: all range moves to the weights; 0 turns smoothing
#: off); swept on rollout sentences (before the floor): 0.5 -> 0.0021, 0.8 -> 0.0019,
#: 0.9 -> 0.0021, 1.0 -> 0.0028 mean error.
SMOOTH_ALPHA = 0.8
#: Feed-forward down-projections kept in float32, counted from the input side.
FLOAT_DOWN_PROJECTIONS = 1
#: A channel's calibrated amax(|X|) is raised to at least this fraction of the median
#: channel's: a channel that happened to stay small on the calibration sentences must not be
#: amplified by 1/s into a new outlier on other text (mean error 0.0025 -> 0.0018 measured).
AMAX_FLOOR = 0.5
#: Bounds of the smoothing factor (a dead channel must not blow up its weight row).
_MIN_FACTOR, _MAX_FACTOR = 1e-3, 1e3
#: Floor of amax(|X|) and amax(|W|) (avoids 0 ** alpha).
_EPS = 1e-5
#: Calibration input bounds: enough sequences to see every channel's range, not a data set.
MIN_CALIBRATION = 32
MAX_CALIBRATION = 1024
MAX_CALIBRATION_TOKENS = 512

#: Sentences whose token ids calibrate the smoothing (written for this purpose; not from any
#: benchmark's data). Varied domains and lengths (8-40 tokens), like search queries.
CALIBRATION_TEXTS = (
    "how do I prove a statement by induction on the length of a list",
    "the parser crashes on empty input when the file has no trailing newline",
    "why does my sourdough bread not rise in a cold kitchen",
    "retry a request after a network timeout with exponential backoff",
    "check the units before substituting numbers into a formula",
    "a slow query over a large table needs an index on the join column",
    "memory keeps growing in a long running worker process",
    "choosing a solid chess opening as black against e4",
    "deducting home office costs on a self-employed tax return",
    "improve heavy clay soil before planting vegetables in spring",
    "sort a list of records by two keys, the second one descending",
    "read the whole error message before changing any code",
    "What is the derivative of x squared times the sine of x?",
    "Solve for x: 3x + 7 = 22, then check the answer by substitution.",
    "The integral of 1/x from 1 to e equals one.",
    "Write a Python function that merges two sorted lists in linear time.",
    "Use a context manager so the file is closed even when an exception is raised.",
    "git rebase rewrote the history and now the push is rejected",
    "How many ways can five people sit around a round table?",
    "The probability of two dice summing to seven is one sixth.",
    "Photosynthesis converts light energy into chemical energy stored in glucose.",
    "The boiling point of water drops at high altitude because air pressure is lower.",
    "Newton's second law relates force, mass and acceleration.",
    "An enzyme lowers the activation energy of a reaction without being consumed.",
    "Measure the voltage across the resistor before replacing the capacitor.",
    "The amplifier oscillates when the feedback loop has too little phase margin.",
    "Search for the population of Lyon in 2021 and cite the source.",
    "Compare the prices of three laptops with at least 16 GB of memory.",
    "Find the opening hours of the city library on public holidays.",
    "The agent called the weather tool before answering the user.",
    "Summarise the key findings of the paper in three sentences.",
    "Translate the following paragraph from French into English.",
    "I'll work through this step by step and verify each intermediate result.",
    "Cancel the common factor only after checking that it is not zero.",
    "The binary search loop must shrink the interval on every iteration.",
    "Handle the empty list and the single-element list as separate test cases.",
    "A deadlock happens when two threads wait for locks held by each other.",
    "The container cannot reach the database because the port is not published.",
    "Rotate the logs daily and keep at most seven compressed files.",
    "Set a timeout on every outgoing HTTP call so a stuck server cannot block the queue.",
    "Whisk the eggs with sugar until pale, then fold in the sifted flour.",
    "Simmer the tomato sauce for forty minutes and season at the end.",
    "Water the seedlings in the morning so the leaves dry before night.",
    "Prune the apple tree in late winter while it is dormant.",
    "The marathon training plan increases the weekly distance by ten percent.",
    "Stretch the hamstrings gently after a long run to reduce stiffness.",
    "The central bank raised interest rates to slow down inflation.",
    "Diversify the portfolio across bonds, equities and cash.",
    "The treaty ended the war and redrew the borders of several countries.",
    "The novel follows a family over three generations in a small fishing town.",
    "Tune the guitar to drop D before playing the riff.",
    "The symphony's second movement is slow and written in a minor key.",
    "The satellite's orbit decays slowly because of atmospheric drag.",
    "Electrons in a magnetic field move along circular paths.",
    "The spectrum of hydrogen shows discrete lines predicted by the Bohr model.",
    "Heat flows from the hotter body to the colder one until both reach equilibrium.",
    "Vaccines train the immune system to recognise a pathogen without causing disease.",
    "Take the medicine with food, twice a day, for one week.",
    "The API returns HTTP 429 when the client sends too many requests.",
    "Normalise the vectors before computing cosine similarity.",
    "Gradient descent diverges when the learning rate is too large.",
    "Split the data into training, validation and test sets before tuning.",
    "ok, the build passes now on both Linux and macOS",
    "Is it safe to delete the cache directory while the service is running?",
    # Longer ones (25-45 tokens): the positions and ranges of a long query are calibrated too.
    "After upgrading the database driver the nightly export job fails with a connection reset, "
    "but only when the result set is larger than a few hundred megabytes",
    "When a geometry problem gives lengths on a circle, check the power of a point relation "
    "before setting up coordinates, and draw the figure to scale",
    "The test passes on my laptop but fails in continuous integration, where the time zone is "
    "UTC and the locale uses a comma as the decimal separator",
    "Before reporting a final answer, substitute it back into the original equation, because "
    "squaring both sides can introduce extraneous roots",
    "The agent searched three sources, found two conflicting figures for the same year, and "
    "reported the one from the official statistics office with a link",
    "To reduce the latency of the service we moved the model to a separate process, batched "
    "requests from several callers and cached the tokenizer output",
    "Measurements of the thermal conductivity of thin films at low temperatures disagree with "
    "the bulk values by up to an order of magnitude",
    "A recipe for bread with whole wheat flour needs more water, a longer rest and a warmer "
    "place to rise than one made with white flour",
    "The committee reviewed the budget line by line, postponed the new building and approved "
    "the repairs to the roof of the old library before winter",
    "If the loop condition uses less than instead of less than or equal, the last candidate "
    "is never examined and the search misses a target at the end",
    "Compare the two proposals on cost, risk and time to deliver, then write a short summary "
    "for the team with a recommendation and the open questions",
    "Signal processing with a low pass filter removes the high frequency noise but also "
    "smooths the sharp edges of the pulse and delays it slightly",
    "The patient reported a mild headache and fatigue for two weeks after the infection, and "
    "the doctor recommended rest, fluids and a follow-up visit",
    "Our garden gets full sun in the afternoon only, so tomatoes and peppers go along the "
    "south fence and lettuce grows in the shade of the beans",
    "The proof fails for n equal to one because the induction step silently assumes that "
    "the set has at least two distinct elements to compare",
    "Rewrite the function so that it reads the file in chunks of one megabyte instead of "
    "loading the whole thing into memory at once",
)


class QuantizeError(RuntimeError):
    """The query model could not be quantised (bad input graph or calibration)."""


#: The encoder graph's inputs for one unpadded sequence of token ids.
_FEEDS: dict[str, Callable[[np.ndarray], np.ndarray]] = {
    "input_ids": lambda ids: ids,
    "attention_mask": np.ones_like,
    "token_type_ids": np.zeros_like,
}


def _validate_calibration(calibration_ids: Sequence[Sequence[int]]) -> list[np.ndarray]:
    n = len(calibration_ids)
    if not MIN_CALIBRATION <= n <= MAX_CALIBRATION:
        raise QuantizeError(
            f"calibration needs {MIN_CALIBRATION}..{MAX_CALIBRATION} token sequences, got {n}"
        )
    out = []
    for ids in calibration_ids:
        arr = np.asarray(ids)
        if (
            arr.ndim != 1
            or not 1 <= arr.size <= MAX_CALIBRATION_TOKENS
            or arr.dtype.kind not in "iu"
            or (arr < 0).any()
        ):
            raise QuantizeError(
                f"a calibration sequence must be 1..{MAX_CALIBRATION_TOKENS} non-negative ints"
            )
        out.append(arr.astype(np.int64)[None, :])
    return out


def _weight_matmuls(model: Any) -> list[Any]:
    """MatMul nodes with a constant 2-D weight (second input an initializer), in graph order."""
    shapes = {i.name: tuple(i.dims) for i in model.graph.initializer}
    return [
        n
        for n in model.graph.node
        if n.op_type == "MatMul" and len(shapes.get(n.input[1], ())) == 2
    ]


def down_projections(model: Any) -> list[str]:
    """Names of the weight MatMuls that narrow (K > N: a feed-forward block's output layer)."""
    shapes = {i.name: tuple(i.dims) for i in model.graph.initializer}
    return [n.name for n in _weight_matmuls(model) if shapes[n.input[1]][0] > shapes[n.input[1]][1]]


def activation_amax(model: Any, calibration: list[np.ndarray]) -> dict[str, np.ndarray]:
    """Per-channel max |x| of every weight MatMul's input over the calibration sequences."""
    import onnx
    import onnxruntime as ort

    probe = onnx.ModelProto()
    probe.CopyFrom(model)
    inputs = sorted({n.input[0] for n in _weight_matmuls(model)})
    known = {o.name for o in probe.graph.output}
    for name in inputs:
        if name not in known:
            probe.graph.output.append(
                onnx.helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, None)
            )
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.log_severity_level = 3
    # No graph fusion: the tensors asked for must survive as they are in the float graph.
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    session = ort.InferenceSession(
        probe.SerializeToString(), options, providers=["CPUExecutionProvider"]
    )
    names = [o.name for o in session.get_outputs()]
    feeds = [i.name for i in session.get_inputs()]
    unknown = set(feeds) - set(_FEEDS)
    if "input_ids" not in feeds or unknown:
        raise QuantizeError(f"the graph's inputs {feeds} are not an encoder's ({sorted(_FEEDS)})")
    amax: dict[str, np.ndarray] = {}
    for ids in calibration:
        outs = dict(zip(names, session.run(None, {k: _FEEDS[k](ids) for k in feeds}), strict=True))
        for name in inputs:
            x = np.abs(np.asarray(outs[name], dtype=np.float32))
            m = x.reshape(-1, x.shape[-1]).max(axis=0)
            amax[name] = m if name not in amax else np.maximum(amax[name], m)
    return amax


def smooth(model: Any, amax: dict[str, np.ndarray], alpha: float) -> None:
    """In place: X W -> (X * (1/s)) (s W) for every weight MatMul input X (see the module doc).
    MatMuls sharing an input share its factor (from the largest of their weight rows)."""
    from onnx import helper, numpy_helper

    inits = {i.name: i for i in model.graph.initializer}
    uses = Counter(name for node in model.graph.node for name in node.input)
    groups: dict[str, list[Any]] = {}
    for node in _weight_matmuls(model):
        groups.setdefault(node.input[0], []).append(node)
    inserted: dict[str, Any] = {}
    for x, nodes in groups.items():
        if any(uses[n.input[1]] != 1 for n in nodes):
            continue  # a weight shared with another node cannot be rescaled for this input
        weights = [numpy_helper.to_array(inits[n.input[1]]).astype(np.float32) for n in nodes]
        if any(w.shape[0] != amax[x].shape[0] for w in weights):
            raise QuantizeError(f"the weights fed by {x} do not match its channels")
        w_amax = np.max([np.abs(w).max(axis=1) for w in weights], axis=0)
        x_amax = np.maximum(amax[x], AMAX_FLOOR * float(np.median(amax[x])))
        factor = np.maximum(x_amax, _EPS) ** alpha / np.maximum(w_amax, _EPS) ** (1.0 - alpha)
        factor = np.clip(factor, _MIN_FACTOR, _MAX_FACTOR).astype(np.float32)
        inverse = f"{x}/smooth_inverse"
        model.graph.initializer.append(numpy_helper.from_array(1.0 / factor, inverse))
        smoothed = f"{x}/smoothed"
        inserted[x] = helper.make_node("Mul", [x, inverse], [smoothed], name=f"{x}/smooth")
        for node, w in zip(nodes, weights, strict=True):
            scaled = numpy_helper.from_array(w * factor[:, None], node.input[1])
            inits[node.input[1]].CopyFrom(scaled)
            node.input[0] = smoothed
    # Each Mul right after the node that produces its input keeps the graph in order.
    ordered: list[Any] = [inserted.pop(i.name) for i in model.graph.input if i.name in inserted]
    for node in model.graph.node:
        ordered.append(node)
        ordered.extend(inserted.pop(o) for o in node.output if o in inserted)
    if inserted:
        raise QuantizeError(f"no producer for {sorted(inserted)}")
    del model.graph.node[:]
    model.graph.node.extend(ordered)


def quantize_query_model(
    fp32_onnx: Path,
    dest: Path,
    calibration_ids: Sequence[Sequence[int]],
    *,
    alpha: float = SMOOTH_ALPHA,
    float_down_projections: int = FLOAT_DOWN_PROJECTIONS,
) -> None:
    """Float32 encoder graph (inputs input_ids, attention_mask) -> the int8 query model at
    `dest` (written whole, then renamed into place). `calibration_ids`: CALIBRATION_TEXTS
    tokenised as queries. The keyword arguments exist for the benchmark's comparisons (alpha 0:
    no smoothing); the defaults are the recipe RECIPE names. Raises QuantizeError."""
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    calibration = _validate_calibration(calibration_ids)
    if not 0.0 <= alpha <= 1.0:
        raise QuantizeError(f"alpha must be in [0, 1], got {alpha!r}")
    try:
        model = onnx.load(str(fp32_onnx))
    except Exception as exc:  # onnx raises DecodeError, OSError, ...
        raise QuantizeError(f"cannot read {fp32_onnx}: {exc}") from exc
    matmuls = _weight_matmuls(model)
    if not matmuls:
        raise QuantizeError(f"{fp32_onnx} has no MatMul with a constant weight")
    for i, node in enumerate(matmuls):  # nodes_to_exclude matches by name
        node.name = node.name or f"dso_weight_matmul_{i}"
    keep_float = down_projections(model)[: max(0, float_down_projections)]
    try:
        if alpha > 0.0:
            smooth(model, activation_amax(model, calibration), alpha)
        dest.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=dest.parent) as tmp:
            smoothed, out = Path(tmp) / "smoothed.onnx", Path(tmp) / "int8.onnx"
            onnx.save(model, str(smoothed))
            quantize_dynamic(
                str(smoothed),
                str(out),
                per_channel=True,
                reduce_range=False,
                weight_type=QuantType.QInt8,
                nodes_to_exclude=keep_float,
            )
            os.replace(out, dest)
    except QuantizeError:
        raise
    except Exception as exc:  # onnxruntime and onnx raise their own exception types
        raise QuantizeError(f"cannot quantise {fp32_onnx}: {exc}") from exc
