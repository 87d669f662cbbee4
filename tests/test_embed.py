"""The embedder with the REAL packaged encoder (loaded once for the module)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from dsonode.core.constants import DIM, PREFIX_DIMS
from dsonode.embed import (
    DEFAULT_HEAD_SEED,
    Embedder,
    EmbedError,
    ModelLoadError,
    build_seeded_head,
    get_embedder,
    head_weights_sha256,
    load_head,
    save_head,
    space_id_of,
)
from dsonode.embed import encoder as enc
from dsonode.embed.fastpath import fast_head
from dsonode.embed.head import _hadamard_factors, hadamard

#: sha256 of the default seeded head's weights (384 -> 6144 -> 7680). If this changes, the
#: default space changed: every node on the old head is on a different network.
SEEDED_HEAD_SHA256 = "99b4e28d352340d6894a1ff13544a7fb4c62767e6d757cd70596058138fb4a45"

TEXTS = [
    "A cat sits on the mat.",
    "The kitten is lying on the rug.",
    "Quarterly tax filings are due at the end of the month.",
    "",
    "Neutron stars are the collapsed cores of massive stars.",
]


@pytest.fixture(scope="module")
def emb(tmp_path_factory) -> Embedder:
    # The same cached instance `dsonode embed` uses in-process (one model load per module).
    mp = pytest.MonkeyPatch()
    mp.setenv("DSONODE_CACHE_DIR", str(tmp_path_factory.mktemp("cache")))
    yield get_embedder()
    mp.undo()


def unit(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def test_shapes_dtype_and_unit_norm(emb):
    out = emb.embed(TEXTS)
    assert out.shape == (len(TEXTS), DIM) and out.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(out, axis=1), 1.0, atol=1e-5)
    assert np.isfinite(out).all()
    assert emb.dim == DIM and emb.hidden_size == 384
    base = emb.encode_base(TEXTS)
    assert base.shape == (len(TEXTS), 384) and base.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(base, axis=1), 1.0, atol=1e-5)


@pytest.mark.parametrize("dim", PREFIX_DIMS)
def test_prefixes_are_renormalised_prefixes_of_the_native_vector(emb, dim):
    full = emb.embed(TEXTS)
    pre = emb.embed(TEXTS, dim=dim)
    assert pre.shape == (len(TEXTS), dim)
    np.testing.assert_allclose(np.linalg.norm(pre, axis=1), 1.0, atol=1e-5)
    np.testing.assert_allclose(pre, unit(full[:, :dim]), atol=1e-6)
    assert emb.embed_query(TEXTS[0], dim=dim).shape == (dim,)


def test_order_restored_and_batching_does_not_change_vectors(emb):
    together = emb.embed(TEXTS, batch_size=2)
    one_by_one = np.stack([emb.embed_query(t) for t in TEXTS])
    # Padding changes float summation order a little, never the vector.
    np.testing.assert_allclose(together, one_by_one, atol=2e-5)
    reversed_ = emb.embed(TEXTS[::-1], batch_size=3)[::-1]
    np.testing.assert_allclose(together, reversed_, atol=2e-5)


def test_search_path_is_close_to_the_exact_vector(emb):
    for text in ("A cat sits on the mat.", "", "word " * 600):
        exact = emb.embed_query(text)
        fast = emb.embed_query(text, for_search=True)
        assert fast.shape == (DIM,) and fast.dtype == np.float32
        assert abs(np.linalg.norm(fast) - 1) < 1e-5
        # int8 encoder: the runtime's probe gate (dsonode/embed/runtime.py); torch: ~0.9999
        floor = 0.985 if emb.query_runtime == "onnx-int8" else 0.999
        assert float(exact @ fast) > floor, (text, emb.query_runtime)
    pre = emb.embed_query("A cat sits on the mat.", dim=1024, for_search=True)
    assert pre.shape == (1024,) and abs(np.linalg.norm(pre) - 1) < 1e-5
    # The default path is exactly the batch path (it is what becomes a code).
    assert np.array_equal(emb.embed_query(TEXTS[0]), emb.embed(TEXTS[:1], batch_size=1)[0])
    with pytest.raises(EmbedError):
        emb.embed_query(3, for_search=True)
    with pytest.raises(EmbedError):
        emb.embed_query("x", dim=100, for_search=True)


def test_deterministic(emb):
    a = emb.embed(TEXTS, batch_size=8)
    b = emb.embed(TEXTS, batch_size=8)
    assert np.array_equal(a, b)


def test_concurrent_calls_from_threads(emb):
    from concurrent.futures import ThreadPoolExecutor

    expected = emb.embed(TEXTS)
    with ThreadPoolExecutor(max_workers=4) as pool:
        futures = [pool.submit(emb.embed, TEXTS) for _ in range(8)]
        results = [f.result(timeout=120) for f in futures]
    for got in results:
        np.testing.assert_allclose(got, expected, atol=1e-6)


def test_similar_sentences_are_closer_than_unrelated_ones(emb):
    v = emb.embed(TEXTS[:3])
    assert v[0] @ v[1] > v[0] @ v[2] + 0.2
    assert v[0] @ v[1] > v[1] @ v[2] + 0.2


def test_head_keeps_the_encoder_geometry(emb):
    # The seeded head is a near-isometric random expansion: cosines move little.
    texts = [t for t in TEXTS if t] * 1
    base, native = emb.encode_base(texts), emb.embed(texts)
    np.testing.assert_allclose(native @ native.T, base @ base.T, atol=0.05)


def test_seeded_head_is_pinned_and_bit_exact():
    head = build_seeded_head(384)
    assert head_weights_sha256(head) == SEEDED_HEAD_SHA256
    w1 = head.fc1.weight.detach().numpy()
    w2 = head.fc2.weight.detach().numpy()
    # Powers of two only: exact in float32, bfloat16 and int8-times-scale.
    assert set(np.unique(w1).tolist()) == {-(2.0**-4), 2.0**-4}
    assert set(np.unique(w2).tolist()) == {-(2.0**-6), 2.0**-6}
    assert torch.equal(head.fc2.weight.to(torch.bfloat16).float(), head.fc2.weight)
    assert head_weights_sha256(build_seeded_head(384, seed=DEFAULT_HEAD_SEED + 1)) != (
        SEEDED_HEAD_SHA256
    )


@pytest.mark.parametrize("n", [4, 12, 60, 96, 960, 1024])
def test_hadamard_orders_are_exact(n):
    h = hadamard(n).astype(np.float64)  # integer sums below 2**53: exact
    assert h.shape == (n, n) and set(np.unique(h).tolist()) == {-1.0, 1.0}
    assert np.array_equal(h @ h.T, n * np.eye(n))


def test_big_orders_are_kronecker_products_of_exact_factors():
    # kron(A, B) of Hadamard matrices is Hadamard; check the factors the head uses.
    for n, paley_order in ((6144, 12), (7680, 60)):
        p, s = _hadamard_factors(n)
        assert p.shape == (paley_order, paley_order) and s.shape == (n // paley_order,) * 2
        for f in (p, s):
            f64 = f.astype(np.float64)
            assert np.array_equal(f64 @ f64.T, len(f) * np.eye(len(f)))


def test_seeded_layers_have_exactly_orthogonal_columns():
    head = build_seeded_head(384)
    cols = {"fc1": slice(None), "fc2": slice(0, 6144, 24)}  # all of fc1, 256 columns of fc2
    for name, layer in (("fc1", head.fc1), ("fc2", head.fc2)):
        s = torch.sign(layer.weight.detach())[:, cols[name]]
        gram = s.T @ s  # sums of +-1 below 2**24: exact in float32
        assert torch.equal(gram, layer.out_features * torch.eye(s.shape[1]))


def test_integer_fc2_matches_float32(emb):
    head = build_seeded_head(384)
    fast = fast_head(head)
    assert fast is not head, "the seeded head should take the integer path on this CPU"
    assert emb.info()["head_kernel"] == "hadamard-limbs"
    x = torch.nn.functional.normalize(
        torch.randn(64, 384, generator=torch.Generator().manual_seed(1)), dim=-1
    )
    with torch.inference_mode():
        got = fast(x).double()
        flt = head(x).double()
        ref = build_seeded_head(384).double()(x.double())
    # At least as close to the float64 truth as plain float32, and no sign bit differs.
    assert (got - ref).abs().max() <= max(2 * (flt - ref).abs().max().item(), 1e-7)
    # A sign can only differ where the true value is within float32 rounding of zero.
    assert int(((got >= 0) != (ref >= 0)).sum()) <= 2
    # A trained (non +-scale) head keeps the float32 path.
    with torch.no_grad():
        head.fc2.weight[0, 0] *= 1.5
    assert fast_head(head) is head


def test_hadamard_fc2_is_bit_identical_to_the_int8_gemm():
    # The structured fc2 (no matrix) must give exactly the int8 GEMM's output: codes signed
    # by a node are the same bytes whichever kernel computed them.
    head = build_seeded_head(384)
    int8, structured = fast_head(head), fast_head(head, seed=DEFAULT_HEAD_SEED)
    assert type(int8.fc2).__name__ == "IntSignLinear"
    assert type(structured.fc2).__name__ == "HadamardSignLinear"
    gen = torch.Generator().manual_seed(7)
    with torch.inference_mode():
        for n in (1, 5, 64):
            x = torch.nn.functional.normalize(torch.randn(n, 384, generator=gen), dim=-1)
            for limbs in (2, 3):
                assert torch.equal(int8(x, limbs=limbs), structured(x, limbs=limbs))
    # The wrong seed's structure is refused (the probes compare with the real weights).
    assert type(fast_head(head, seed=DEFAULT_HEAD_SEED + 1).fc2).__name__ == "IntSignLinear"


def test_embedder_drops_the_float_fc2_but_rebuilds_it_on_request(emb):
    assert emb.info()["head_kernel"] == "hadamard-limbs"
    assert emb._float_head is None  # no 189 MB float32 fc2 kept
    rebuilt = emb.head
    assert head_weights_sha256(rebuilt) == emb.head_sha256 == SEEDED_HEAD_SHA256


def test_seeded_head_for_other_widths_is_deterministic():
    # 1000 has no Hadamard construction here: i.i.d. seeded signs instead, still exact.
    a, b = build_seeded_head(100, hidden=1000), build_seeded_head(100, hidden=1000)
    assert a.fc1.weight.shape == (1000, 100)
    assert head_weights_sha256(a) == head_weights_sha256(b)
    narrow = build_seeded_head(384, hidden=256)  # 384 = 12 * 32: orthogonal columns again
    s = torch.sign(narrow.fc2.weight.detach())[:, :64]
    assert torch.equal(s.T @ s, 7680 * torch.eye(64))


def test_head_save_load_roundtrip(tmp_path):
    head = build_seeded_head(384)
    path = tmp_path / "head.safetensors"
    save_head(head, path, {"stage": 1, "note": "roundtrip"})
    loaded, meta = load_head(path)
    assert head_weights_sha256(loaded) == SEEDED_HEAD_SHA256
    assert meta["stage"] == "1" and meta["note"] == "roundtrip" and meta["out_dim"] == str(DIM)
    x = torch.nn.functional.normalize(
        torch.randn(3, 384, generator=torch.Generator().manual_seed(0)), dim=-1
    )
    with torch.inference_mode():
        assert torch.equal(head(x), loaded(x))


def test_load_head_rejects_bad_files(tmp_path):
    with pytest.raises(ModelLoadError, match="not found"):
        load_head(tmp_path / "missing.safetensors")
    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(b"\x00" * 100)
    with pytest.raises(ModelLoadError):
        load_head(junk)
    from safetensors.torch import save_file

    partial = tmp_path / "partial.safetensors"
    save_file({"fc1.weight": torch.zeros(6144, 384)}, str(partial))
    with pytest.raises(ModelLoadError, match="missing tensors"):
        load_head(partial)
    head = build_seeded_head(384)
    state = {k: v.clone() for k, v in head.state_dict().items()}
    state["fc2.weight"][0, 0] = float("nan")
    nan_file = tmp_path / "nan.safetensors"
    save_file(state, str(nan_file))
    with pytest.raises(ModelLoadError, match="NaN"):
        load_head(nan_file)


def test_space_id_changes_with_each_component(emb):
    args = dict(
        encoder_name=emb.encoder_name,
        encoder_sha256=emb.encoder_sha256,
        max_length=emb.max_length,
        head_sha256=emb.head_sha256,
        dim=emb.dim,
        reference=None,
    )
    base = space_id_of(**args)
    assert base == emb.space_id and len(base) == 64 and bytes.fromhex(base)
    ref = np.zeros(DIM, dtype=np.float32)
    assert space_id_of(**{**args, "reference": ref}) == base  # zero is the default reference
    ref[0] = 1e-3
    variants = [
        {"encoder_name": "other"},
        {"encoder_sha256": "0" * 64},
        {"max_length": 128},
        {"head_sha256": "1" * 64},
        {"dim": 4096},
        {"reference": ref},
    ]
    ids = {space_id_of(**{**args, **v}) for v in variants}
    assert base not in ids and len(ids) == len(variants)


@pytest.mark.slow
def test_a_trained_head_gives_a_new_space_and_seeded_file_the_same(emb, tmp_path):
    head = build_seeded_head(384)
    with torch.no_grad():
        head.fc2.weight[0, 0] += 2.0**-6  # one weight changed
    path = tmp_path / "tuned.safetensors"
    save_head(head, path, {"stage": 1})
    other = Embedder(head=path, device="cpu")
    assert other.space_id != emb.space_id
    assert other.model_name != emb.model_name
    # The same encoder weights: only the head differs.
    assert other.encoder_sha256 == emb.encoder_sha256
    np.testing.assert_allclose(other.encode_base(TEXTS[:2]), emb.encode_base(TEXTS[:2]), atol=1e-6)


def test_space_id_is_stable_across_processes(emb, tmp_path):
    code = (
        "import json\n"
        "from dsonode.embed import encoder as enc, space_id_of, build_seeded_head, "
        "head_weights_sha256\n"
        "folder, name = enc.resolve_encoder(None)\n"
        "from transformers import AutoTokenizer\n"
        "tok = AutoTokenizer.from_pretrained(str(folder), local_files_only=True)\n"
        "print(json.dumps(space_id_of(name, enc.encoder_sha256(folder), "
        "enc.max_seq_length(folder, tok), head_weights_sha256(build_seeded_head(384)), "
        "7680, None)))\n"
    )
    # A fresh cache dir: the child hashes the weight file itself, not from our cache.
    env = {**os.environ, "DSONODE_CACHE_DIR": str(tmp_path), "HF_HUB_OFFLINE": "1"}
    out = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout.strip().splitlines()[-1]) == emb.space_id


def test_file_hash_cache_notices_a_changed_file(tmp_path, monkeypatch):
    monkeypatch.setenv("DSONODE_CACHE_DIR", str(tmp_path / "cache"))
    f = tmp_path / "w.safetensors"
    f.write_bytes(b"a" * 1000)
    first = enc.file_sha256(f)
    assert enc.file_sha256(f) == first  # served from the cache
    st = f.stat()
    f.write_bytes(b"b" * 1000)  # same size
    os.utime(f, ns=(st.st_atime_ns, st.st_mtime_ns))  # even with the old mtime
    assert enc.file_sha256(f) != first
    assert enc.file_sha256(f, use_cache=False) == enc.file_sha256(f)


def test_bad_input_raises_typed_errors(emb):
    with pytest.raises(EmbedError, match="single str"):
        emb.embed("not a list")
    with pytest.raises(EmbedError, match=r"texts\[1\] must be str, got int"):
        emb.embed(["ok", 3])
    with pytest.raises(EmbedError, match=r"texts\[0\] must be str, got bytes"):
        emb.embed([b"bytes"])
    with pytest.raises(EmbedError, match="Unicode"):
        emb.embed(["lone \ud800 surrogate"])
    with pytest.raises(EmbedError, match="dim"):
        emb.embed(["x"], dim=512)
    with pytest.raises(EmbedError, match="dim"):
        emb.embed(["x"], dim=True)
    with pytest.raises(EmbedError, match="batch_size"):
        emb.embed(["x"], batch_size=0)
    with pytest.raises(EmbedError, match="sequence"):
        emb.embed(None)
    with pytest.raises(EmbedError, match="must be str"):
        emb.embed_query(None)
    with pytest.raises(EmbedError, match="device"):
        Embedder(device="tpu")
    with pytest.raises(ModelLoadError, match="not found"):
        Embedder(encoder="/nonexistent/encoder", device="cpu")


def test_empty_inputs_and_overlong_texts(emb):
    assert emb.embed([]).shape == (0, DIM)
    assert emb.embed([], dim=1024).shape == (0, 1024)
    empty = emb.embed_query("")
    assert np.isfinite(empty).all() and abs(np.linalg.norm(empty) - 1) < 1e-5
    long_text = "word " * 5000
    assert emb.count_tokens([long_text, "hello"]) == [emb.max_length, 3]
    # Truncation: everything after max_length tokens is ignored.
    longer = long_text + " completely different ending " * 100
    np.testing.assert_allclose(emb.embed_query(long_text), emb.embed_query(longer), atol=1e-6)


def test_progress_bar_path_runs(emb, capsys):
    out = emb.embed(TEXTS, progress=True)
    np.testing.assert_allclose(out, emb.embed(TEXTS, progress=False), atol=1e-6)


def test_cli_embed(emb, capsys):
    from dsonode.cli import main

    assert main(["embed", "a cat on a mat", "--dim", "1024", "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["space_id"] == emb.space_id and doc["dim"] == 1024
    vec = np.asarray(doc["vector"], dtype=np.float32)
    np.testing.assert_allclose(vec, emb.embed_query("a cat on a mat", dim=1024), atol=1e-6)
    assert main(["embed", "a cat on a mat"]) == 0
    text = capsys.readouterr().out
    assert emb.space_id in text and "dim:      7680" in text and "norm:     1.000000" in text


def test_project_matches_embed(emb):
    base = emb.encode_base(TEXTS)
    np.testing.assert_allclose(emb.project(base), emb.embed(TEXTS), atol=1e-5)
    with pytest.raises(EmbedError):
        emb.project(np.zeros((2, 100), dtype=np.float32))


def test_default_encoder_path_is_the_packaged_model():
    folder, name = enc.resolve_encoder(None)
    assert (folder / "config.json").is_file() and name.endswith("all-MiniLM-L6-v2")
    assert Path(folder) == enc.default_encoder_path()


# ----------------------------------------------------------------------------- the benchmark

DOCS_TREC = """<DOC>
<DOCNO>1</DOCNO>
compact memories have flexible capacities  a digital data storage
system
</DOC>
<DOC><DOCNO> 2 </DOCNO>an electronic analogue computer</DOC>
"""
TOPICS_TREC = """<top>
<num>1</num><title>
MEASUREMENT OF DIELECTRIC CONSTANT
</title>
</top>
<top><num> Number: 7 </num><title>analogue computers</title></top>
"""


def test_trec_parsers():
    from dsonode.bench.embed import parse_qrels, parse_trec_docs, parse_trec_topics

    ids, texts = parse_trec_docs(DOCS_TREC)
    assert ids == ["1", "2"]
    assert texts == [
        "compact memories have flexible capacities a digital data storage system",
        "an electronic analogue computer",
    ]
    assert parse_trec_topics(TOPICS_TREC) == (
        ["1", "7"],
        ["MEASUREMENT OF DIELECTRIC CONSTANT", "analogue computers"],
    )
    assert parse_qrels("1 0 2 1\n\n7 0 1 2\n7 0 2 0\n") == {"1": {"2": 1}, "7": {"1": 2}}


def test_trec_parsers_reject_malformed_input():
    from dsonode.bench.embed import BenchDataError, parse_qrels, parse_trec_docs

    with pytest.raises(BenchDataError, match="DOCNO"):
        parse_trec_docs("<DOC>no number here</DOC>")
    with pytest.raises(BenchDataError, match="duplicate"):
        parse_trec_docs("<DOC><DOCNO>1</DOCNO>a</DOC><DOC><DOCNO>1</DOCNO>b</DOC>")
    with pytest.raises(BenchDataError, match="line 2"):
        parse_qrels("1 0 2 1\n1 0 2\n")
    with pytest.raises(BenchDataError, match="relevance"):
        parse_qrels("1 0 2 x\n")


def test_ndcg_recall_and_bootstrap():
    from dsonode.bench.embed import ndcg_recall_at_k, paired_bootstrap

    qrels = {"q1": {"a": 1, "b": 1}, "q2": {"c": 2}}
    ndcg, recall = ndcg_recall_at_k([["a", "b", "x"], ["x", "c"]], ["q1", "q2"], qrels)
    assert ndcg[0] == pytest.approx(1.0)
    assert ndcg[1] == pytest.approx(1 / np.log2(3))  # the one relevant doc at rank 2
    assert recall.tolist() == [1.0, 1.0]
    ndcg, recall = ndcg_recall_at_k([["x"], ["y"], []], ["q1", "q2", "unjudged"], qrels)
    assert ndcg.tolist() == [0.0, 0.0] and recall.tolist() == [0.0, 0.0]
    lo, hi = paired_bootstrap(np.array([0.5, 0.7, 0.2]), np.array([0.5, 0.7, 0.2]))
    assert lo == hi == 0.0
    lo, hi = paired_bootstrap(np.array([1.0, 1.0, 1.0, 0.0]), np.zeros(4))
    assert 0.0 <= lo < 0.75 < hi <= 1.0


@pytest.mark.slow
def test_bench_embed_end_to_end_on_a_tiny_collection(emb, tmp_path):
    from dsonode.bench.embed import run

    topics = ["neutron stars", "tax filings", "cats on mats"]
    docs = [f"document {i} about {topics[i % 3]} and item {i}" for i in range(120)]
    (tmp_path / "doc-text.trec").write_text(
        "".join(f"<DOC>\n<DOCNO>{i}</DOCNO>\n{d}\n</DOC>\n" for i, d in enumerate(docs))
    )
    (tmp_path / "query-text.trec").write_text(
        "".join(
            f"<top>\n<num>{i}</num><title>\n{t}\n</title>\n</top>\n" for i, t in enumerate(topics)
        )
    )
    (tmp_path / "qrels").write_text("".join(f"{i % 3} 0 {i} 1\n" for i in range(120)))
    result = run(tmp_path, None, None, repeats=1)
    assert result["docs"] == 120 and result["queries"] == 3 and result["judged_queries"] == 3
    assert result["space_id"] == emb.space_id
    for name in (
        "encoder",
        "native",
        "prefix_1024",
        "native_search_path",
        "code_1bit",
        "code_rescored",
    ):
        q = result["quality"][name]
        assert 0.0 <= q["ndcg10"] <= 1.0 and 0.0 <= q["recall10"] <= 1.0
        lo, hi = q["ndcg10_diff_vs_encoder_ci95"]
        assert lo <= hi
    # Easy topical queries: every representation ranks the topic's documents first.
    assert result["quality"]["native"]["ndcg10"] > 0.9
    assert result["quality"]["code_rescored"]["ndcg10"] > 0.9
    assert result["encoder_texts_per_s"] > 0 and result["native_texts_per_s"] > 0
    kernels = result["head_kernels"]
    assert kernels["int8_limbs"]["sign_flip_rate_vs_float32"] <= 1e-5  # float32 rounding only
    assert kernels["bfloat16"]["min_cosine_vs_float32"] > 0.999
