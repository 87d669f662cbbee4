"""The pure JSON-RPC layer: framing, parsing, params validation, reply shaping (no I/O)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import trio

from dsonode.api import jsonrpc as j
from dsonode.api.server import RpcServer
from dsonode.core.constants import DIM


def parse_one(line: bytes):
    msg = j.parse_message(line)
    assert msg is not None and not msg.is_batch and len(msg.items) == 1
    return msg.items[0]


def error_code(item) -> int:
    assert isinstance(item, dict), item
    return item["error"]["code"]


# ---- framing ----------------------------------------------------------------------------------


def test_line_buffer_splits_across_chunks():
    buf = j.LineBuffer(limit=100)
    assert buf.feed(b'{"a":') == []
    assert buf.feed(b"1}\n{") == [j.Line(b'{"a":1}')]
    assert buf.feed(b"}\n\n") == [j.Line(b"{}"), j.Line(b"")]
    assert buf.pending_bytes == 0


def test_line_buffer_oversize_skips_to_next_newline():
    buf = j.LineBuffer(limit=10)
    events = buf.feed(b"x" * 8)
    assert events == []
    # crossing the limit emits one Oversize, then the rest of the line is dropped
    assert buf.feed(b"x" * 8) == [j.Oversize(10)]
    assert buf.feed(b"y" * 1000) == []
    assert buf.pending_bytes == 0
    assert buf.feed(b"zz\nok\n") == [j.Line(b"ok")]


def test_line_buffer_oversize_and_next_line_in_one_chunk():
    buf = j.LineBuffer(limit=4)
    assert buf.feed(b"123456\nab\n") == [j.Oversize(4), j.Line(b"ab")]


def test_line_buffer_exact_limit_is_accepted():
    buf = j.LineBuffer(limit=4)
    assert buf.feed(b"1234\n") == [j.Line(b"1234")]


def test_line_buffer_eof_delivers_unterminated_line():
    buf = j.LineBuffer(limit=100)
    assert buf.feed(b'{"x":1}') == []
    assert buf.eof() == [j.Line(b'{"x":1}')]
    skipping = j.LineBuffer(limit=2)
    assert skipping.feed(b"12345") == [j.Oversize(2)]
    assert skipping.eof() == []


# ---- parsing ----------------------------------------------------------------------------------


def test_valid_request():
    req = parse_one(b'{"jsonrpc":"2.0","id":7,"method":"health"}\r')
    assert req == j.Request(method="health", params={}, id=7, is_notification=False)


def test_notification_has_no_id():
    req = parse_one(b'{"jsonrpc":"2.0","method":"health"}')
    assert req.is_notification and req.id is None


def test_null_id_is_a_request_not_a_notification():
    req = parse_one(b'{"jsonrpc":"2.0","id":null,"method":"health"}')
    assert not req.is_notification


def test_blank_line_is_ignored():
    assert j.parse_message(b"   ") is None
    assert j.parse_message(b"\r") is None


@pytest.mark.parametrize(
    "line",
    [
        b"{not json",
        b'{"jsonrpc":"2.0","id":1,"method":"health"',
        b"\xff\xfe",
        b'{"jsonrpc":"2.0","id":1,"method":"search","params":{"k":NaN}}',
        b"[" * 100_000 + b"]" * 100_000,
        b'{"id":' + b"9" * 5000 + b"}",
        b'{"jsonrpc":"2.0","id":"\\ud800","method":"health"}',  # a lone surrogate
    ],
)
def test_parse_errors(line):
    item = parse_one(line)
    assert error_code(item) == j.PARSE_ERROR
    assert item["id"] is None


@pytest.mark.parametrize(
    ("obj", "expected_id"),
    [
        (1, None),
        ("health", None),
        ({"id": 1, "method": "health"}, 1),  # no jsonrpc member
        ({"jsonrpc": "1.0", "id": 1, "method": "health"}, 1),
        ({"jsonrpc": "2.0", "id": 2}, 2),
        ({"jsonrpc": "2.0", "id": 3, "method": 5}, 3),
        ({"jsonrpc": "2.0", "id": 4, "method": "health", "params": "x"}, 4),
        ({"jsonrpc": "2.0", "id": True, "method": "health"}, None),
        ({"jsonrpc": "2.0", "id": 1.5, "method": "health"}, None),
        ({"jsonrpc": "2.0", "id": {"a": 1}, "method": "health"}, None),
        ({"jsonrpc": "2.0", "id": "x" * 1000, "method": "health"}, None),
    ],
)
def test_invalid_requests(obj, expected_id):
    item = parse_one(json.dumps(obj).encode())
    assert error_code(item) == j.INVALID_REQUEST
    assert item["id"] == expected_id


def test_positional_params_are_rejected_naming_params():
    item = parse_one(b'{"jsonrpc":"2.0","id":1,"method":"search","params":["q"]}')
    assert error_code(item) == j.INVALID_PARAMS
    assert item["id"] == 1
    # an empty array is the same as no params
    assert parse_one(b'{"jsonrpc":"2.0","id":1,"method":"health","params":[]}').params == {}


def test_batches():
    msg = j.parse_message(
        b'[{"jsonrpc":"2.0","id":1,"method":"health"}, 5, {"jsonrpc":"2.0","method":"stats"}]'
    )
    assert msg.is_batch and len(msg.items) == 3
    assert msg.items[0].id == 1
    assert error_code(msg.items[1]) == j.INVALID_REQUEST
    assert msg.items[2].is_notification
    assert error_code(parse_one(b"[]")) == j.INVALID_REQUEST
    too_many = json.dumps([{"jsonrpc": "2.0", "id": i, "method": "health"} for i in range(65)])
    assert error_code(parse_one(too_many.encode())) == j.INVALID_REQUEST


def test_notification_with_positional_params_is_neither_run_nor_answered():
    msg = j.parse_message(b'{"jsonrpc":"2.0","method":"health","params":[1]}')
    assert msg.items == [] and msg.dropped == 1
    assert j.encode_reply([], msg.is_batch) is None
    # the same request with an id is answered with -32602, as before
    item = parse_one(b'{"jsonrpc":"2.0","id":5,"method":"health","params":[1]}')
    assert error_code(item) == j.INVALID_PARAMS and item["id"] == 5


def test_batch_of_notifications_yields_nothing_to_answer():
    msg = j.parse_message(
        b'[{"jsonrpc":"2.0","method":"search","params":{"query":"bread","k":2}},'
        b'{"jsonrpc":"2.0","method":"search","params":[2]}]'
    )
    assert msg.is_batch and msg.dropped == 1
    assert msg.items == [
        j.Request("search", {"query": "bread", "k": 2}, id=None, is_notification=True)
    ]


@pytest.mark.parametrize(
    "obj",
    [
        {"foo": "boo"},  # JSON-RPC 2.0 section 6 example: answered -32600, id null
        {"jsonrpc": "2.0", "method": 1, "params": "bar"},  # section 7 example: same
        {"method": "health"},
        {"jsonrpc": "2.0", "method": "health", "params": "x"},
    ],
)
def test_object_that_is_no_request_is_answered_even_without_id(obj):
    item = parse_one(json.dumps(obj).encode())
    assert error_code(item) == j.INVALID_REQUEST and item["id"] is None


def test_server_never_answers_a_notification():
    """RpcServer.handle_line (no I/O): bad, unknown or failing notifications get no reply."""
    calls: list[str] = []

    async def ok(params):
        calls.append("ok")
        return {"status": "ok"}

    async def broken(params):
        calls.append("broken")
        raise RuntimeError("bug")

    server = RpcServer({name: ok for name in j.METHODS} | {"stats": broken})
    silent = [
        b'{"jsonrpc":"2.0","method":"health","params":[1]}',
        b'{"jsonrpc":"2.0","method":"no_such_method"}',
        b'{"jsonrpc":"2.0","method":"search","params":{"k":"x"}}',
        b'{"jsonrpc":"2.0","method":"stats"}',
        b'{"jsonrpc":"2.0","method":"health"}',
        b'[{"jsonrpc":"2.0","method":"search","params":{"query":"bread","k":2}},'
        b'{"jsonrpc":"2.0","method":"search","params":[2]}]',
    ]
    assert [trio.run(server.handle_line, line) for line in silent] == [None] * len(silent)
    assert calls == ["broken", "ok", "ok"]  # only the valid notifications ran
    assert server.errors == 5  # params [1] twice, unknown method, bad k, the failing handler
    # a batch mixing a request and notifications answers the request alone
    mixed = trio.run(
        server.handle_line,
        b'[{"jsonrpc":"2.0","method":"health","params":[1]},{"jsonrpc":"2.0","id":1,'
        b'"method":"health"},{"jsonrpc":"2.0","method":"nope"}]',
    )
    assert json.loads(mixed) == [{"jsonrpc": "2.0", "id": 1, "result": {"status": "ok"}}]


def test_encode_reply():
    assert j.encode_reply([], is_batch=True) is None
    one = j.encode_reply([j.result_response(1, {"ok": True})], is_batch=False)
    assert one.endswith(b"\n") and b"\n" not in one[:-1]
    assert json.loads(one) == {"jsonrpc": "2.0", "id": 1, "result": {"ok": True}}
    many = j.encode_reply([j.result_response(1, 1), j.result_response(2, 2)], is_batch=True)
    assert [r["id"] for r in json.loads(many)] == [1, 2]
    # a string id that could break the framing stays on one line
    tricky = j.encode_reply([j.result_response("a\nb", "\u2028")], is_batch=False)
    assert tricky.count(b"\n") == 1


# ---- params -----------------------------------------------------------------------------------


def invalid_param(method: str, params: dict) -> str:
    with pytest.raises(j.InvalidParams) as info:
        j.validate_params(method, params)
    assert info.value.code == j.INVALID_PARAMS
    assert info.value.param in info.value.message
    return info.value.param


def test_unknown_method():
    with pytest.raises(j.RpcError) as info:
        j.validate_params("drop_tables", {})
    assert info.value.code == j.METHOD_NOT_FOUND


def test_search_defaults_and_values():
    p = j.validate_params("search", {"query": "induction proofs"})
    assert p == j.SearchParams("induction proofs", None, 10, None, None, False)
    p = j.validate_params(
        "search",
        {
            "vector": [0.5] * 1024,
            "k": 100,
            "domain": "math",
            "min_score": 0,
            "confirmed_only": True,
        },
    )
    assert p.vector is not None and len(p.vector) == 1024 and p.k == 100
    assert p.min_score == 0.0 and p.confirmed_only and p.domain == "math"
    v = j.validate_params("search", {"vector": [1] * DIM}).vector
    assert v.shape == (DIM,) and v.dtype == np.float32 and not v.flags.writeable


@pytest.mark.parametrize(
    ("params", "param"),
    [
        ({}, "query"),
        ({"query": "a", "vector": [1.0] * 1024}, "query"),
        ({"query": ""}, "query"),
        ({"query": "   "}, "query"),
        ({"query": 5}, "query"),
        ({"query": "x" * 5000}, "query"),
        ({"query": "\ud800"}, "query"),
        ({"vector": [1.0] * 1000}, "vector"),
        ({"vector": "1,2"}, "vector"),
        ({"vector": [1.0] * 1023 + ["a"]}, "vector"),
        ({"vector": [1.0] * 1023 + [True]}, "vector"),
        ({"vector": [0.0] * 1024}, "vector"),
        ({"vector": [1e308 * 10] * 1024}, "vector"),
        ({"vector": [1e39] * 1024}, "vector"),  # finite as float64, inf as float32
        ({"query": "a", "k": 0}, "k"),
        ({"query": "a", "k": 101}, "k"),
        ({"query": "a", "k": 2.0}, "k"),
        ({"query": "a", "k": True}, "k"),
        ({"query": "a", "k": "5"}, "k"),
        ({"query": "a", "domain": 3}, "domain"),
        ({"query": "a", "min_score": "high"}, "min_score"),
        ({"query": "a", "confirmed_only": 1}, "confirmed_only"),
        ({"query": "a", "limit": 5}, "limit"),
    ],
)
def test_search_bad_params(params, param):
    assert invalid_param("search", params) == param


def test_get_params():
    hexid = "ab" * 32
    assert j.validate_params("get", {"id": hexid.upper()}).id == bytes.fromhex(hexid)
    assert invalid_param("get", {}) == "id"
    assert invalid_param("get", {"id": "ab" * 31}) == "id"
    assert invalid_param("get", {"id": "zz" * 32}) == "id"
    assert invalid_param("get", {"id": 12}) == "id"
    assert invalid_param("get", {"id": hexid, "x": 1}) == "x"


def test_add_experience_params():
    p = j.validate_params("add_experience", {"text": "Check the base case.", "domain": "math"})
    assert p == j.AddExperienceParams("Check the base case.", "math", ())
    p = j.validate_params("add_experience", {"text": "t", "domain": "d", "tags": ["a", "b"]})
    assert p.tags == ("a", "b")
    assert invalid_param("add_experience", {"domain": "math"}) == "text"
    assert invalid_param("add_experience", {"text": "t"}) == "domain"
    assert invalid_param("add_experience", {"text": "é" * 600, "domain": "d"}) == "text"
    assert invalid_param("add_experience", {"text": "t", "domain": "d", "tags": "a"}) == "tags"
    assert invalid_param("add_experience", {"text": "t", "domain": "d", "tags": [1]}) == "tags"
    assert invalid_param("add_experience", {"text": "t", "domain": "d", "tags": ["a"] * 17}) == (
        "tags"
    )


#: An Ed25519 peer id (of 32 zero bytes) and a full loopback peer address.
PEER = "12D3KooW9pNAk8aiBuGVQtWRdbkLmo5qVL3e2h5UxbN2Nz9ttwiw"


def test_peer_params():
    addr = f"/ip4/127.0.0.2/tcp/4001/p2p/{PEER}"
    assert j.validate_params("add_peer", {"multiaddr": addr}) == j.AddPeerParams(addr)
    # syntax only here: a non-loopback address passes, the node's policy decides (service)
    assert j.validate_params("add_peer", {"multiaddr": addr.replace("127.0.0.2", "10.0.0.1")})
    assert j.validate_params("forget_peer", {"peer_id": PEER}) == j.ForgetPeerParams(PEER)
    for bad in (
        {},
        {"multiaddr": None},
        {"multiaddr": 4001},
        {"multiaddr": "  "},
        {"multiaddr": "/ip4/127.0.0.2/tcp/4001"},  # no /p2p/: a peer address names the peer
        {"multiaddr": "/ip4/127.0.0.2/udp/4001/p2p/" + PEER},
        {"multiaddr": "/ip4/127.0.0.2/tcp/0/p2p/" + PEER},
        {"multiaddr": "/ip4/127.0.0.2/tcp/4001/p2p/" + PEER[:-1] + "0"},  # not base58
        {"multiaddr": "/ip4/127.0.0.2/tcp/4001/p2p/" + PEER + "a"},
        {"multiaddr": "/ip4/" + "1" * 300},
    ):
        assert invalid_param("add_peer", bad) == "multiaddr", bad
    assert invalid_param("add_peer", {"multiaddr": addr, "dial": True}) == "dial"
    for bad in ({}, {"peer_id": 12}, {"peer_id": ""}, {"peer_id": "0OIl"}, {"peer_id": "x" * 65}):
        assert invalid_param("forget_peer", bad) == "peer_id", bad
    assert invalid_param("forget_peer", {"peer_id": "1" + PEER}) == "peer_id"  # not canonical
    with pytest.raises(j.InvalidParams, match="peer_id") as err:
        j.validate_params(
            "forget_peer", {"peer_id": "QmYyQSo1c1Ym7orWxLYvCrM2EmxFTANf8wXmmE7DWjhx5N"}
        )
    assert err.value.code == j.INVALID_PARAMS  # an RSA/sha256 id: not an Ed25519 peer id


def test_no_param_methods():
    assert j.validate_params("health", {}) == j.NoParams()
    assert invalid_param("stats", {"verbose": True}) == "verbose"


# ---- results ----------------------------------------------------------------------------------


def test_shape_item():
    item = j.shape_item(
        id=b"\x01" * 32,
        text="t",
        domain="math",
        tags=("a",),
        created_ms=1_700_000_000_123,
        author=b"\x02" * 32,
        submissions=3,
        confirmed=True,
        score=0.123456789,
    )
    assert list(item) == [
        "id",
        "text",
        "score",
        "domain",
        "tags",
        "created",
        "author",
        "submissions",
        "confirmed",
    ]
    assert item["id"] == "01" * 32 and item["author"] == "02" * 32
    assert item["created"] == "2023-11-14T22:13:20.123Z"
    assert item["score"] == 0.123457
    json.dumps(item)  # plain JSON types only
