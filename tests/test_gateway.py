"""The HTTP gateway, served for real (hypercorn on trio, 127.0.0.1, free ports) over the real
encoder, and called with the official `openai` client and httpx.

One background thread runs trio with three gateways sharing one loaded Embedder:
  - `auth`:  bearer token required (the openai-client tests),
  - `open`:  no token (loopback), for raw HTTP tests,
  - `gated`: its encoder calls wait on a gate the test opens, with a short timeout and a tiny
             queue, so timeouts and overload are provoked deterministically (no timing races).
"""

from __future__ import annotations

import base64
import concurrent.futures
import os
import signal
import subprocess
import sys
import threading
import time
from functools import partial

import httpx
import numpy as np
import pytest
import trio
import trio.testing

from dsonode.core import bitdelta
from dsonode.core.constants import CODE_BYTES, DIM
from dsonode.gateway import GatewayConfig, GatewayError, parse_listen
from dsonode.gateway.app import serve_gateway
from dsonode.gateway.batcher import MicroBatcher, Overloaded
from dsonode.gateway.schema import Limits

openai = pytest.importorskip("openai")

TOKEN = "test-token-0123456789abcdef"
TEXTS = [
    "The cat sat on the mat.",
    "Quantum field theory unifies special relativity and quantum mechanics.",
    "Bake the bread at 220 degrees for thirty minutes.",
]


class GatedEmbedder:
    """The real embedder, but every embed() first waits until the test opens the gate."""

    def __init__(self, real) -> None:
        self.real = real
        self.model_name = real.model_name
        self.space_id = real.space_id
        self.dim = real.dim
        self.reference = getattr(real, "reference", None)
        self.gate = threading.Event()
        self.entered = threading.Event()

    def embed(self, texts, dim=None, batch_size=64, progress=None):
        self.entered.set()
        if not self.gate.wait(timeout=60):
            raise RuntimeError("gate never opened")
        return self.real.embed(texts, dim=dim, batch_size=batch_size, progress=progress)

    def count_tokens(self, texts):
        return self.real.count_tokens(texts)


class ServerThread:
    """Runs serve_gateway for each (embedder, config) in one trio loop on a daemon thread."""

    def __init__(self, specs) -> None:
        self.specs = specs
        self.urls: list[str] = []
        self.ready = threading.Event()
        self.error: BaseException | None = None
        self._scope: trio.CancelScope | None = None
        self._token = None
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        try:
            trio.run(self._main)
        except BaseException as exc:
            self.error = exc
            self.ready.set()

    async def _main(self) -> None:
        self._token = trio.lowlevel.current_trio_token()
        async with trio.open_nursery() as nursery:
            self._scope = nursery.cancel_scope
            for embedder, config in self.specs:
                self.urls.append(await nursery.start(partial(serve_gateway, embedder, config)))
            self.ready.set()

    def start(self) -> list[str]:
        self._thread.start()
        assert self.ready.wait(timeout=120), "gateway did not start"
        if self.error is not None:
            raise self.error
        return self.urls

    def stop(self) -> None:
        if self._scope is not None:
            trio.from_thread.run_sync(self._scope.cancel, trio_token=self._token)
        self._thread.join(timeout=30)
        assert not self._thread.is_alive(), "gateway thread did not stop"


@pytest.fixture(scope="module")
def embedder():
    from dsonode.embed import get_embedder

    return get_embedder()


@pytest.fixture(scope="module")
def servers(embedder):
    gated = GatedEmbedder(embedder)
    specs = [
        (embedder, GatewayConfig(port=0, token=TOKEN)),
        (embedder, GatewayConfig(port=0, limits=Limits(max_inputs=16, max_input_chars=2000))),
        (
            gated,
            GatewayConfig(
                port=0, request_timeout_s=0.5, max_batch_texts=1, max_pending_texts=1, max_wait_ms=0
            ),
        ),
    ]
    st = ServerThread(specs)
    auth_url, open_url, gated_url = st.start()
    try:
        yield {"auth": auth_url, "open": open_url, "gated": gated_url, "gate": gated}
    finally:
        gated.gate.set()
        st.stop()


@pytest.fixture(scope="module")
def client(servers):
    return openai.OpenAI(base_url=servers["auth"] + "/v1", api_key=TOKEN, max_retries=0)


@pytest.fixture(scope="module")
def http(servers):
    with httpx.Client(base_url=servers["open"], timeout=60) as c:
        yield c


def _norms(vectors: np.ndarray) -> np.ndarray:
    return np.linalg.norm(vectors, axis=1)


# --------------------------------------------------------------------------- embeddings


def test_embeddings_list_default_encoding_matches_direct(client, embedder):
    # No encoding_format: the openai client asks for base64 and decodes it itself.
    resp = client.embeddings.create(model=embedder.model_name, input=TEXTS)
    got = np.array([d.embedding for d in resp.data], dtype=np.float32)
    assert got.shape == (len(TEXTS), DIM)
    assert [d.index for d in resp.data] == [0, 1, 2]
    np.testing.assert_allclose(_norms(got), 1.0, atol=1e-5)
    np.testing.assert_allclose(got, embedder.embed(TEXTS), atol=1e-5)
    assert resp.model == embedder.model_name
    expected_tokens = sum(embedder.count_tokens(TEXTS))
    assert resp.usage.prompt_tokens == expected_tokens
    assert resp.usage.total_tokens == expected_tokens


def test_float_and_base64_encodings_agree_exactly(client, embedder):
    floats = client.embeddings.create(
        model=embedder.model_name, input=TEXTS, encoding_format="float"
    )
    b64 = client.embeddings.create(model=embedder.model_name, input=TEXTS, encoding_format="base64")
    as_float = np.array([d.embedding for d in floats.data], dtype=np.float32)
    # Explicit base64 comes back undecoded: little-endian float32 bytes.
    as_b64 = np.stack([np.frombuffer(base64.b64decode(d.embedding), dtype="<f4") for d in b64.data])
    assert as_float.shape == as_b64.shape == (len(TEXTS), DIM)
    # orjson writes float32 shortest round-trip text: both encodings carry identical values.
    np.testing.assert_array_equal(as_float, as_b64)


@pytest.mark.parametrize("dim", [1024, 2048, 4096, 7680])
@pytest.mark.parametrize("encoding", ["float", None])
def test_dimensions_prefixes(client, embedder, dim, encoding):
    kwargs = {"encoding_format": encoding} if encoding else {}
    resp = client.embeddings.create(
        model=embedder.model_name, input=TEXTS[:2], dimensions=dim, **kwargs
    )
    got = np.array([d.embedding for d in resp.data], dtype=np.float32)
    assert got.shape == (2, dim)
    np.testing.assert_allclose(_norms(got), 1.0, atol=1e-5)
    np.testing.assert_allclose(got, embedder.embed(TEXTS[:2], dim=dim), atol=1e-5)


def test_single_string_input(client, embedder):
    resp = client.embeddings.create(model=embedder.model_name, input="hello world")
    assert len(resp.data) == 1 and len(resp.data[0].embedding) == DIM


def test_bitdelta_extension_returns_964_byte_codes(client, embedder):
    resp = client.embeddings.create(
        model=embedder.model_name, input=TEXTS, encoding_format="bitdelta"
    )
    codes = np.stack(
        [np.frombuffer(base64.b64decode(d.embedding), dtype=np.uint8) for d in resp.data]
    )
    assert codes.shape == (len(TEXTS), CODE_BYTES)
    assert resp.model_extra["x_dso_space_id"] == embedder.space_id
    direct = np.asarray(bitdelta.encode(embedder.embed(TEXTS)))
    # Same scale (float32) and (nearly) the same sign bits; a coordinate within float noise of
    # zero may flip between batch compositions, so compare bits by agreement.
    np.testing.assert_allclose(
        codes[:, :4].copy().view("<f4"), direct[:, :4].copy().view("<f4"), rtol=1e-4
    )
    bits_got = np.unpackbits(codes[:, 4:], axis=1)
    bits_direct = np.unpackbits(direct[:, 4:], axis=1)
    assert (bits_got == bits_direct).mean() > 0.999
    decoded = bitdelta.decode(codes)
    cos = np.sum(decoded * embedder.embed(TEXTS), axis=1) / _norms(decoded)
    assert (cos > 0.7).all()  # a 1-bit code keeps the direction


# --------------------------------------------------------------------------- errors via openai


def test_unknown_model_is_not_found(client):
    with pytest.raises(openai.NotFoundError) as info:
        client.embeddings.create(model="text-embedding-3-small", input="hi")
    assert info.value.code == "model_not_found"


@pytest.mark.parametrize(
    ("kwargs", "param"),
    [
        ({"dimensions": 512}, "dimensions"),
        ({"dimensions": 7681}, "dimensions"),
        ({"encoding_format": "bitdelta", "dimensions": 1024}, "dimensions"),
        ({"encoding_format": "int8"}, "encoding_format"),
        ({"input": []}, "input"),
        ({"input": ""}, "input"),
        ({"input": [1, 2, 3]}, "input"),
        ({"input": [[1, 2], [3]]}, "input"),
        ({"input": ["ok", 5]}, "input"),
        ({"input": ["x"] * 2049}, "input"),
        ({"input": "y" * 40_000}, "input"),
    ],
)
def test_bad_requests_raise_bad_request_error(client, embedder, kwargs, param):
    args = {"model": embedder.model_name, "input": "hello", **kwargs}
    with pytest.raises(openai.BadRequestError) as info:
        client.embeddings.create(**args)
    assert info.value.status_code == 400
    assert info.value.param == param
    assert info.value.type == "invalid_request_error"


def test_token_arrays_are_rejected_with_a_clear_message(client, embedder):
    with pytest.raises(openai.BadRequestError, match="token-array"):
        client.embeddings.create(model=embedder.model_name, input=[[101, 2023]])


def test_wrong_or_missing_token_is_authentication_error(servers, embedder):
    bad = openai.OpenAI(base_url=servers["auth"] + "/v1", api_key="wrong", max_retries=0)
    with pytest.raises(openai.AuthenticationError):
        bad.embeddings.create(model=embedder.model_name, input="hi")
    r = httpx.post(servers["auth"] + "/v1/embeddings", json={"model": embedder.model_name})
    assert r.status_code == 401
    assert r.json()["error"]["code"] == "invalid_api_key"
    assert r.headers["www-authenticate"] == "Bearer"
    # /health stays open for probes.
    assert httpx.get(servers["auth"] + "/health").status_code == 200


def test_models_list_and_retrieve(client, embedder):
    ids = [m.id for m in client.models.list()]
    assert ids == [embedder.model_name]
    assert client.models.retrieve(embedder.model_name).id == embedder.model_name
    with pytest.raises(openai.NotFoundError):
        client.models.retrieve("gpt-4o")


# --------------------------------------------------------------------------- rerank

RERANK_DOCS = [
    "The stock market fell sharply on Tuesday after the earnings reports.",
    "Knead the dough, let it rise for an hour, then bake the loaf at 220 C.",
    "Emperor penguins breed on the sea ice around Antarctica.",
    "The new phone has a larger battery and a brighter screen.",
]


@pytest.mark.parametrize(
    ("query", "relevant"),
    [
        ("How do I bake bread at home?", 1),
        ("Which birds live in Antarctica?", 2),
        ("Why did share prices drop?", 0),
    ],
)
def test_rerank_puts_relevant_document_first(http, embedder, query, relevant):
    r = http.post(
        "/v1/rerank", json={"model": embedder.model_name, "query": query, "documents": RERANK_DOCS}
    )
    assert r.status_code == 200, r.text
    body = r.json()
    results = body["results"]
    assert results[0]["index"] == relevant
    assert sorted(x["index"] for x in results) == [0, 1, 2, 3]
    scores = [x["relevance_score"] for x in results]
    assert scores == sorted(scores, reverse=True)
    assert "document" not in results[0]
    assert body["model"] == embedder.model_name
    tokens = sum(embedder.count_tokens([query, *RERANK_DOCS]))
    assert body["usage"]["total_tokens"] == tokens


def test_rerank_top_n_objects_and_return_documents(http):
    docs = [{"text": d} for d in RERANK_DOCS]
    r = http.post(
        "/v2/rerank",
        json={
            "query": "bread baking",
            "documents": docs,
            "top_n": 2,
            "return_documents": True,
        },
    )
    assert r.status_code == 200, r.text
    results = r.json()["results"]
    assert len(results) == 2
    assert results[0]["index"] == 1
    assert results[0]["document"] == {"text": RERANK_DOCS[1]}


@pytest.mark.parametrize(
    ("body", "status"),
    [
        ({"documents": ["a"]}, 400),
        ({"query": "q", "documents": []}, 400),
        ({"query": "q", "documents": [{"title": "no text"}]}, 400),
        ({"query": "q", "documents": ["a"], "top_n": 0}, 400),
        ({"query": "q", "documents": ["a"], "return_documents": "yes"}, 400),
        ({"query": "q", "documents": ["a"], "model": "rerank-english-v3.0"}, 404),
    ],
)
def test_rerank_bad_requests(http, body, status):
    r = http.post("/v1/rerank", json=body)
    assert r.status_code == status
    err = r.json()["error"]
    assert set(err) == {"message", "type", "param", "code"}


# --------------------------------------------------------------------------- raw HTTP


def _assert_error(r: httpx.Response, status: int, code: str) -> None:
    assert r.status_code == status, r.text
    assert r.headers["content-type"] == "application/json"
    assert r.json()["error"]["code"] == code


def test_malformed_bodies_oversize_and_unknown_routes(http, embedder):
    model = embedder.model_name
    _assert_error(http.post("/v1/embeddings", content=b'{"model": "x", "inp'), 400, "invalid_json")
    _assert_error(http.post("/v1/embeddings", content=b"\xff\xfe\x00"), 400, "invalid_json")
    _assert_error(http.post("/v1/embeddings", content=b""), 400, "invalid_body")
    _assert_error(http.post("/v1/embeddings", json=["not", "an", "object"]), 400, "invalid_body")
    _assert_error(http.post("/v1/embeddings", content=b"[" * 5000), 400, "invalid_json")
    # Limits of the `open` server: 16 inputs, 2000 chars each.
    r = http.post("/v1/embeddings", json={"model": model, "input": ["a"] * 17})
    _assert_error(r, 400, "too_many_inputs")
    r = http.post("/v1/embeddings", json={"model": model, "input": "z" * 2001})
    _assert_error(r, 400, "input_too_long")
    # Oversize bodies: declared (Content-Length) and streamed (chunked, no length).
    big = b'{"input": "' + b"a" * (2 * 1024 * 1024) + b'"}'
    _assert_error(http.post("/v1/embeddings", content=big), 413, "request_too_large")

    def chunks():
        for _ in range(40):
            yield b"a" * 65536

    _assert_error(http.post("/v1/embeddings", content=chunks()), 413, "request_too_large")

    def huge():
        for _ in range(200):  # 12.5 MiB: beyond what the server drains, so it cuts us off
            yield b"a" * 65536

    with httpx.Client(base_url=http.base_url, timeout=60) as fresh:
        try:
            r = fresh.post("/v1/embeddings", content=huge())
            _assert_error(r, 413, "request_too_large")
        except (httpx.RemoteProtocolError, httpx.WriteError, httpx.ReadError):
            pass  # the connection was closed under the upload: also a refusal
    _assert_error(http.get("/v1/nothing-here"), 404, "unknown_url")
    _assert_error(http.post("/v1/chat/completions", json={}), 404, "unknown_url")
    _assert_error(http.get("/v1/embeddings"), 405, "method_not_allowed")
    # ... and the server keeps serving.
    assert http.get("/health").json()["status"] == "ok"
    r = http.post("/v1/embeddings", json={"model": model, "input": "still alive"})
    assert r.status_code == 200
    assert len(r.json()["data"][0]["embedding"]) == DIM


def test_concurrent_requests_are_micro_batched(http, servers, embedder):
    texts = [f"sentence number {i} about topic {i % 5}" for i in range(24)]
    before = http.get("/health").json()["batches"]

    def one(text: str) -> np.ndarray:
        with httpx.Client(base_url=servers["open"], timeout=60) as c:
            r = c.post(
                "/v1/embeddings",
                json={"model": embedder.model_name, "input": text, "encoding_format": "base64"},
            )
            assert r.status_code == 200, r.text
            return np.frombuffer(base64.b64decode(r.json()["data"][0]["embedding"]), dtype="<f4")

    with concurrent.futures.ThreadPoolExecutor(max_workers=8) as pool:
        got = np.stack(list(pool.map(one, texts)))
    np.testing.assert_allclose(got, embedder.embed(texts), atol=1e-5)
    after = http.get("/health").json()["batches"]
    assert after["texts"] - before["texts"] == len(texts)
    # 24 requests from 8 concurrent clients took fewer encoder calls than requests.
    assert after["count"] - before["count"] < len(texts)
    assert after["max_size"] >= 2


def test_timeout_and_overload_then_recovery(servers, embedder):
    """The gated server: encoder blocked until the gate opens; timeout 0.5 s; queue of 1 text."""
    url, gated = servers["gated"], servers["gate"]
    body = {"model": embedder.model_name, "input": "blocked"}
    with concurrent.futures.ThreadPoolExecutor(max_workers=2) as pool:
        # A: enters the encoder and blocks there; its request times out (504).
        fut_a = pool.submit(httpx.post, url + "/v1/embeddings", json=body, timeout=30)
        assert gated.entered.wait(timeout=30)
        # B: queued behind A (1 pending text = the queue's bound) ...
        fut_b = pool.submit(httpx.post, url + "/v1/embeddings", json=body, timeout=30)
        deadline = time.monotonic() + 10
        while httpx.get(url + "/health").json()["pending_texts"] < 1:
            assert time.monotonic() < deadline, "request B never queued"
            time.sleep(0.01)
        # ... so C is refused at once with 503, which the openai client maps to its 5xx error.
        c = httpx.post(url + "/v1/embeddings", json=body, timeout=30)
        assert c.status_code == 503
        assert c.json()["error"]["code"] == "overloaded"
        assert c.headers["retry-after"] == "1"
        ra, rb = fut_a.result(timeout=30), fut_b.result(timeout=30)
    _assert_error(ra, 504, "timeout")
    _assert_error(rb, 504, "timeout")
    gated.gate.set()
    # Abandoned B is skipped; the server answers the next request normally.
    deadline = time.monotonic() + 30
    while True:
        r = httpx.post(url + "/v1/embeddings", json=body, timeout=30)
        if r.status_code == 200 or time.monotonic() > deadline:
            break
        time.sleep(0.05)  # A's abandoned batch may still hold the single queue slot briefly
    assert r.status_code == 200, r.text


# --------------------------------------------------------------------------- batcher alone


def _fake_compute(texts):
    """Deterministic stand-in for the encoder (the batching logic is what is tested here)."""
    return np.array([[len(t)] for t in texts], dtype=np.float32), [len(t) for t in texts]


def test_batcher_groups_carries_over_and_survives_errors():
    calls: list[list[str]] = []

    def compute(texts):
        calls.append(list(texts))
        if "boom" in texts:
            raise ValueError("bad batch")
        return _fake_compute(texts)

    async def main():
        b = MicroBatcher(compute, max_batch_texts=4, max_wait_s=1.0, max_pending_texts=8)
        results = {}

        async def go(name, texts):
            try:
                results[name] = await b.submit(texts)
            except Exception as exc:
                results[name] = exc

        async with trio.open_nursery() as n:
            await n.start(b.run)
            # a and b fit in one batch of 4; c would overfill it and is carried to the next.
            for name, texts in [("a", ["x", "yy"]), ("b", ["zzz"]), ("c", ["1", "22"])]:
                n.start_soon(go, name, texts)
                await trio.testing.wait_all_tasks_blocked()
            with trio.fail_after(20):
                while len(results) < 3:
                    await trio.sleep(0.01)
            # d fails inside a batch it shares with d2: d2 is retried alone and succeeds.
            async with trio.open_nursery() as inner:
                inner.start_soon(go, "d", ["boom"])
                await trio.testing.wait_all_tasks_blocked()
                inner.start_soon(go, "d2", ["fine"])
            # The worker survived the failing batch.
            results["e"] = await b.submit(["after"])
            n.cancel_scope.cancel()
        return results

    results = trio.run(main)
    assert results["a"][0][:, 0].tolist() == [1, 2] and results["a"][1] == [1, 2]
    assert results["b"][0][:, 0].tolist() == [3]
    assert results["c"][0][:, 0].tolist() == [1, 2]
    assert isinstance(results["d"], ValueError)
    assert results["d2"][1] == [4]
    assert results["e"][1] == [5]
    assert calls[0] == ["x", "yy", "zzz"]
    assert ["1", "22"] in calls
    assert calls[-4:] == [["boom", "fine"], ["boom"], ["fine"], ["after"]]
    assert all(len(c) <= 4 for c in calls)


def test_batcher_splits_large_requests_into_bounded_batches():
    calls: list[list[str]] = []

    def compute(texts):
        calls.append(list(texts))
        return _fake_compute(texts)

    async def main():
        b = MicroBatcher(compute, max_batch_texts=3, max_wait_s=0, max_pending_texts=3)
        async with trio.open_nursery() as n:
            await n.start(b.run)
            # 7 texts > the queue bound of 3: admitted because the queue is empty.
            vectors, counts = await b.submit(["a", "bb", "ccc", "d", "ee", "fff", "g"])
            n.cancel_scope.cancel()
        return vectors, counts

    vectors, counts = trio.run(main)
    assert vectors[:, 0].tolist() == [1, 2, 3, 1, 2, 3, 1]
    assert counts == [1, 2, 3, 1, 2, 3, 1]
    assert calls == [["a", "bb", "ccc"], ["d", "ee", "fff"], ["g"]]


def test_batcher_bounds_its_queue_and_skips_abandoned_jobs():
    release = threading.Event()

    def compute(texts):
        assert release.wait(timeout=20)
        return _fake_compute(texts)

    async def main():
        b = MicroBatcher(compute, max_batch_texts=2, max_wait_s=0, max_pending_texts=4)
        async with trio.open_nursery() as n:
            await n.start(b.run)
            n.start_soon(b.submit, ["a", "b"])  # the worker takes it and blocks in compute
            await trio.testing.wait_all_tasks_blocked()
            n.start_soon(b.submit, ["c", "d"])
            await trio.testing.wait_all_tasks_blocked()
            with trio.move_on_after(0.05):  # gives up while queued: must be skipped later
                await b.submit(["e", "f"])
            assert b.pending_texts == 4
            with pytest.raises(Overloaded):
                await b.submit(["g"])
            release.set()
            with trio.fail_after(20):
                while b.pending_texts:  # c+d run, abandoned e+f are dropped
                    await trio.sleep(0.01)
                vectors, counts = await b.submit(["hhh"])
            assert counts == [3] and vectors.shape == (1, 1)
            assert b.stats.skipped_abandoned == 1
            n.cancel_scope.cancel()

    trio.run(main)


# --------------------------------------------------------------------------- config and CLI


def test_parse_listen():
    assert parse_listen("127.0.0.1:8080") == ("127.0.0.1", 8080)
    assert parse_listen("[::1]:0") == ("::1", 0)
    assert parse_listen("localhost:9") == ("localhost", 9)
    for bad in ["", "8080", "127.0.0.1", "127.0.0.1:http", "::1:80", "h:70000", "[::1]80"]:
        with pytest.raises(GatewayError):
            parse_listen(bad)


def test_token_required_beyond_loopback():
    GatewayConfig(host="127.0.0.1").validate()
    GatewayConfig(host="::1").validate()
    for host in ["0.0.0.0", "192.168.1.5", "example.org", "::"]:
        with pytest.raises(GatewayError, match="without a token"):
            GatewayConfig(host=host).validate()
        GatewayConfig(host=host, token=TOKEN).validate()
    with pytest.raises(GatewayError, match="characters"):
        GatewayConfig(token="short").validate()
    with pytest.raises(GatewayError, match="printable"):
        GatewayConfig(token="has a space in it 0123").validate()


def test_config_from_mapping(monkeypatch):
    monkeypatch.delenv("DSONODE_GATEWAY_TOKEN", raising=False)
    cfg = GatewayConfig.from_mapping(
        {"listen": "127.0.0.1:9000", "max_wait_ms": 5, "max_documents": 10}
    )
    assert (cfg.host, cfg.port, cfg.token) == ("127.0.0.1", 9000, None)
    assert cfg.max_wait_ms == 5 and cfg.limits.max_documents == 10
    with pytest.raises(GatewayError, match="without a token"):
        GatewayConfig.from_mapping({"listen": "0.0.0.0:9000"})
    monkeypatch.setenv("DSONODE_GATEWAY_TOKEN", TOKEN)
    assert GatewayConfig.from_mapping({"listen": "0.0.0.0:9000"}).token == TOKEN
    for bad in [{"listen": 5}, {"max_batch_texts": "64"}, {"max_wait_ms": True}, {"port": 1}]:
        with pytest.raises(GatewayError):
            GatewayConfig.from_mapping(bad)
    with pytest.raises(GatewayError):
        GatewayConfig.from_mapping({"max_batch_texts": 0})


def test_cli_refuses_public_listen_without_token(monkeypatch, capsys):
    from dsonode.cli import main

    monkeypatch.delenv("DSONODE_GATEWAY_TOKEN", raising=False)
    t0 = time.monotonic()
    assert main(["gateway", "--listen", "0.0.0.0:8080"]) == 2
    assert "without a token" in capsys.readouterr().err
    assert time.monotonic() - t0 < 30  # refused before loading any model (generous bound)


@pytest.mark.slow
def test_cli_serves_with_token_file_and_stops_on_sigterm(tmp_path, embedder):
    token_file = tmp_path / "token"
    token_file.write_text(TOKEN + "\n")
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "dsonode", "gateway", "--listen", "127.0.0.1:0",
         "--token-file", str(token_file)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=env,
        text=True,
    )  # fmt: skip
    try:
        line = proc.stdout.readline()  # blocks until listening (or the process dies)
        assert "listening on http://127.0.0.1:" in line, proc.stderr.read()
        url = line.split("listening on ")[1].split()[0]
        assert "auth=on" in line
        headers = {"Authorization": f"Bearer {TOKEN}"}
        r = httpx.post(
            url + "/v1/embeddings",
            json={"model": embedder.model_name, "input": ["a", "b"], "dimensions": 1024},
            headers=headers,
            timeout=60,
        )
        assert r.status_code == 200, r.text
        assert len(r.json()["data"][1]["embedding"]) == 1024
        assert httpx.post(url + "/v1/embeddings", json={}).status_code == 401
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=10)
