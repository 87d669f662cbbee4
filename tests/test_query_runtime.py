"""The query path (dsonode/embed/runtime.py): the int8 ONNX encoder of search queries, its
checksummed cache, its cosine gate, and the thread choice from free cores."""

from __future__ import annotations

import hashlib
import json

import numpy as np
import pytest

from dsonode.embed import runtime as rt

pytestmark = pytest.mark.skipif(not rt.available(), reason="the onnx extra is not installed")


@pytest.fixture(scope="module")
def emb_with_query(tmp_path_factory):
    from dsonode.embed.embedder import Embedder

    emb = Embedder()
    cache = tmp_path_factory.mktemp("query-cache")
    assert emb.prepare_query_runtime("onnx-int8", cache) == "onnx-int8"
    return emb, cache


def test_search_vectors_stay_close_to_the_exact_ones_and_codes_do_not_move(emb_with_query):
    emb, _ = emb_with_query
    texts = [
        "the parser crashes on empty input when the file has no trailing newline",
        "measurement of dielectric constant of liquids by the use of microwave techniques",
        "ok",  # short: below MIN_INT8_TOKENS, the exact encoder answers
    ]
    for text in texts:
        exact = emb.embed_query(text)
        fast = emb.embed_query(text, for_search=True)
        assert fast.shape == exact.shape and abs(float(np.linalg.norm(fast)) - 1.0) < 1e-4
        assert float(fast @ exact) >= 0.985, text
    short = emb.embed_query("ok", for_search=True)
    assert float(short @ emb.embed_query("ok")) > 0.9999  # exact encoder, 2-limb head
    # The exact path (codes) is the same before and after the query runtime exists.
    assert np.array_equal(emb.embed_query(texts[0]), emb.embed_query(texts[0]))
    assert emb.info()["query_runtime"] == "onnx-int8"


def test_cache_is_reused_and_a_corrupted_model_is_rebuilt(emb_with_query):
    emb, cache = emb_with_query
    model, sidecar = rt.cache_paths(cache, emb.encoder_sha256)
    meta = json.loads(sidecar.read_text())
    assert meta["sha256"] == hashlib.sha256(model.read_bytes()).hexdigest()
    path, built = rt.build_or_load(
        emb.model, 0, emb.encoder_sha256, cache, rt.calibration_ids(emb.token_ids)
    )
    assert (path, built) == (model, False)
    with model.open("r+b") as f:  # flip one byte: the checksum no longer matches
        f.seek(1000)
        byte = f.read(1)
        f.seek(1000)
        f.write(bytes([byte[0] ^ 0xFF]))
    path, built = rt.build_or_load(
        emb.model, 0, emb.encoder_sha256, cache, rt.calibration_ids(emb.token_ids)
    )
    assert built
    assert (
        json.loads(sidecar.read_text())["sha256"] == hashlib.sha256(model.read_bytes()).hexdigest()
    )


def test_an_unknown_runtime_is_refused(emb_with_query):
    from dsonode.embed.errors import EmbedError

    emb, _ = emb_with_query
    with pytest.raises(EmbedError, match="query runtime"):
        emb.prepare_query_runtime("tensorrt")
    assert emb.query_runtime == "onnx-int8"  # the refused call changed nothing


def test_threads_follow_the_free_cores():
    # 2 cores, nobody else busy: both; a machine loaded by others: one, never zero.
    assert rt.threads_for(cpus=2, load1=0.2, own_busy=0.0, cap=2) == 2
    assert rt.threads_for(cpus=2, load1=2.1, own_busy=2.0, cap=2) == 2  # the load is ours
    assert rt.threads_for(cpus=2, load1=1.0, own_busy=0.0, cap=2) == 1
    assert rt.threads_for(cpus=2, load1=30.0, own_busy=1.0, cap=2) == 1
    assert rt.threads_for(cpus=8, load1=3.0, own_busy=0.0, cap=4) == 4
    assert rt.threads_for(cpus=8, load1=5.0, own_busy=0.0, cap=8) == 3
