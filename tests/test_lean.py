"""The lean embedder (dsonode/embed/lean.py): a full node's model without torch, compiled once
per machine (dsonode/embed/compile.py). The compiled folder lives in the user cache, which the
node tests share: the first user compiles it (~12 s), the rest load it."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from dsonode.core import bitdelta
from dsonode.core.constants import DIM
from dsonode.embed import lean
from dsonode.embed.numpy_head import HadamardProducts, HeadPost, limb_split

pytestmark = pytest.mark.skipif(not lean.available(), reason="the onnx extra is not installed")

TEXTS = [
    "retry a request after a network timeout with exponential backoff",
    "measurement of dielectric constant of liquids by the use of microwave techniques",
    "ok",
    "Überprüfe die Einheiten, bevor du Zahlen einsetzt",
    "the proof needs the base case n = 0 checked first " * 30,  # past the max length
]


@pytest.fixture(scope="module")
def compiled():
    """(folder, manifest) of the default configuration, compiled in a child process if needed
    (the same call a node makes)."""
    emb = lean.load_or_compile()
    return emb.folder, emb.compiled


@pytest.fixture(scope="module")
def torch_emb():
    from dsonode.embed.embedder import get_embedder

    return get_embedder(threads=1)


def _codes(emb, texts):
    return [bitdelta.encode(emb.embed_query(t)) for t in texts]


def test_codes_are_byte_identical_across_runs_and_thread_counts(compiled):
    one = lean.load(threads=1)
    two = lean.load(threads=2)
    first = _codes(one, TEXTS)
    assert first == _codes(one, TEXTS)  # the same process, again
    assert first == _codes(two, TEXTS)  # another thread count


def test_lean_vectors_match_the_torch_path_up_to_a_few_bits(compiled, torch_emb):
    emb = lean.load(threads=1)
    assert (emb.space_id, emb.model_name, emb.dim) == (
        torch_emb.space_id,
        torch_emb.model_name,
        torch_emb.dim,
    )
    assert emb.token_ids(TEXTS, "query") == torch_emb.token_ids(TEXTS, "query")
    sign_bits = DIM
    for text in TEXTS:
        want, got = torch_emb.embed_query(text), emb.embed_query(text)
        assert float(want @ got) > 0.9999, text
        a, b = bitdelta.encode(want), bitdelta.encode(got)
        differ = int(
            np.unpackbits(np.frombuffer(a[:-4], np.uint8) ^ np.frombuffer(b[:-4], np.uint8)).sum()
        )
        assert differ <= sign_bits // 200, (text, differ)  # under 0.5 % of the bits
    base_t = torch_emb.encode_base(TEXTS)
    base_l = emb.encode_base(TEXTS)
    assert np.all((base_t * base_l).sum(axis=1) > 0.9999)
    batch = emb.embed(TEXTS, dim=1024, batch_size=2)
    assert batch.shape == (len(TEXTS), 1024)
    assert np.allclose(np.linalg.norm(batch, axis=1), 1.0, atol=1e-5)
    # A batch pads; its vectors stay within float rounding of the one-at-a-time ones.
    singles = np.stack([emb.embed_query(t, dim=1024) for t in TEXTS])
    assert np.all((batch * singles).sum(axis=1) > 0.99999)


def test_search_vectors_use_the_int8_encoder_within_the_gate(compiled):
    emb = lean.load(threads=1)
    assert emb.prepare_query_runtime() == "onnx-int8"
    for text in TEXTS:
        fast = emb.embed_query(text, for_search=True)
        exact = emb.embed_query(text, kind="query")
        assert float(fast @ exact) >= 0.985, text
    assert emb.prepare_query_runtime("torch") == "onnx-fp32"  # exact queries
    text = TEXTS[0]
    assert (
        float(emb.embed_query(text, for_search=True) @ emb.embed_query(text, kind="query"))
        > 0.99999
    )


def test_numpy_fc2_is_bit_identical_to_the_torch_kernel(torch_emb):
    import torch

    from dsonode.embed.fastpath import HadamardSignLinear

    fc2 = torch_emb.head_runner.fc2
    assert isinstance(fc2, HadamardSignLinear)
    products = HadamardProducts(
        fc2.p.numpy(),
        fc2.s.numpy(),
        fc2.rows.numpy(),
        fc2.cols.numpy(),
        fc2.rsign.numpy(),
        fc2.csign.numpy(),
    )
    zeros = np.zeros(fc2.out_features, np.float32)
    post = HeadPost(products, fc2.scale, zeros, np.ones_like(zeros), zeros)
    x = np.random.default_rng(7).standard_normal((5, fc2.in_features)).astype(np.float32)
    x[1] = 0.0  # an all-zero row takes the step-1 branch
    for limbs in (2, 3):
        with torch.inference_mode():
            want = fc2(torch.from_numpy(x), limbs).numpy()
        assert np.array_equal(post.fc2_out(x, limbs), want), limbs
    _, parts = limb_split(x, 3)
    assert all(np.array_equal(p, np.round(p)) and np.abs(p).max() <= 127 for p in parts)


def _copy(folder: Path, dest: Path) -> Path:
    shutil.copytree(folder, dest)
    return dest


def test_a_damaged_or_foreign_folder_is_refused(compiled, tmp_path):
    folder, manifest = compiled
    key = manifest["key"]
    copy = _copy(folder, tmp_path / "copy")
    assert lean.read_manifest(copy, key)["space_id"] == manifest["space_id"]
    with pytest.raises(lean.LeanUnavailable, match="another configuration"):
        lean.read_manifest(copy, {**key, "head": "seeded:1"})
    post = copy / "head-post.npz"
    data = bytearray(post.read_bytes())
    data[len(data) // 2] ^= 0xFF
    post.write_bytes(bytes(data))
    with pytest.raises(lean.LeanUnavailable, match="checksum"):
        lean.read_manifest(copy, key)
    (copy / lean.MANIFEST).write_text("{not json")
    with pytest.raises(lean.LeanUnavailable, match="cannot read"):
        lean.read_manifest(copy, key)
    (copy / lean.MANIFEST).unlink()
    with pytest.raises(lean.LeanUnavailable, match="not compiled"):
        lean.read_manifest(copy, key)


def test_load_from_an_empty_cache_says_it_is_not_compiled(tmp_path):
    with pytest.raises(lean.LeanUnavailable, match="not compiled"):
        lean.load(cache_dir=tmp_path)


def test_unsupported_configurations_are_named():
    from dsonode.embed.options import EncoderOptions

    assert lean.unsupported_reason(EncoderOptions(), "auto") is None
    assert "cuda" in str(lean.unsupported_reason(EncoderOptions(), "cuda"))
    assert "bfloat16" in str(lean.unsupported_reason(EncoderOptions(dtype="bfloat16"), "cpu"))


def test_a_process_with_the_lean_embedder_never_imports_torch(compiled):
    code = (
        "import json, sys\n"
        "from dsonode.embed import lean\n"
        "e = lean.load()\n"
        "v = e.embed_query('a lesson about retries')\n"
        "q = e.embed_query('what should a client do after a network timeout', for_search=True)\n"
        "print(json.dumps([float(v @ v), e.query_runtime, 'torch' in sys.modules,\n"
        "                  'transformers' in sys.modules]))\n"
    )
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120
    )
    assert out.returncode == 0, out.stderr[-2000:]
    norm, runtime, torch_loaded, transformers_loaded = json.loads(out.stdout)
    assert abs(norm - 1.0) < 1e-5 and runtime == "onnx-int8"
    assert (torch_loaded, transformers_loaded) == (False, False)


def test_the_manifest_records_the_fidelity_measured_at_compile_time(compiled):
    _, manifest = compiled
    fid = manifest["fidelity"]
    assert fid["min_cosine"] >= 0.9999
    assert 0 <= fid["code_bits_differ_mean"] <= fid["code_bits_differ_max"] <= 7680 // 200
    assert manifest["built_with"]["torch"]  # compiled by a process that had torch


def test_a_large_batch_does_not_leave_its_buffers_resident(compiled):
    """64 texts of 256 tokens need ~1.4 GB of encoder buffers; glibc kept them (measured:
    RssAnon 165 -> 1,543 MB) until the embedder trimmed the heap after large batches."""
    code = (
        "from dsonode.embed import lean\n"
        "def anon():\n"
        "    for line in open('/proc/self/status'):\n"
        "        if line.startswith('RssAnon'):\n"
        "            return int(line.split()[1]) // 1024\n"
        "e = lean.load(threads=1)\n"
        "e.embed_query('warm up')\n"
        "before = anon()\n"
        "e.embed(['word ' * 300] * 64)\n"
        "print(before, anon())\n"
    )
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300
    )
    assert out.returncode == 0, out.stderr[-2000:]
    before, after = (int(x) for x in out.stdout.split())
    assert after - before < 200, (before, after)


def test_bench_ingest_worker_runs_the_lean_path_without_torch(compiled):
    from dsonode.bench.node import _LeanWorker

    worker = _LeanWorker()  # refuses to start if torch got imported in the child
    try:
        took, codes = worker.round(TEXTS[:2])
    finally:
        worker.close()
    assert took > 0 and worker.proc.returncode == 0
    assert codes == _codes(lean.load(threads=1), TEXTS[:2])  # same bytes as in this process


def test_a_manifest_that_disagrees_with_the_encoder_folder_is_refused(compiled):
    from dsonode.embed.options import read_options
    from dsonode.embed.space import space_id_of

    folder, manifest = compiled
    emb = lean.load(threads=1)
    # Edited consistently (its own space id recomputed), so only the folder can tell.
    forged = {**manifest, "max_length": 128}
    forged["space_id"] = space_id_of(
        emb.encoder_name, emb.encoder_sha256, 128, emb.head_sha256, emb.dim, None, emb.options
    )
    with pytest.raises(lean.LeanUnavailable, match="max_length"):
        lean.LeanEmbedder(folder, forged, emb.encoder_path, read_options(emb.encoder_path))
