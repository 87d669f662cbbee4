"""The light node role (`[node] role = "light"`, `dsonode run --role light`).

A light node loads no encoder (torch and transformers are never imported in its process),
serves the default space's id computed without torch, stores, relays and recomputes
consensus, never submits, answers vector searches and refuses what needs the encoder.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time

import numpy as np
import psutil
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from dsonode.api.jsonrpc import NEEDS_FULL_NODE, NeedsFullNode, RpcError
from dsonode.config.loader import ConfigError, config_from_mapping
from dsonode.core import bitdelta, wire
from dsonode.core.constants import DIM
from dsonode.embed.space import DEFAULT_HEAD_SHA256, DEFAULT_MODEL_NAME, default_space_id
from dsonode.gateway.config import GatewayConfig
from dsonode.identity import public_key_bytes
from dsonode.library import ConsensusRules, Library, LightEmbedder, LightNodeError
from dsonode.node.node import NodeConfig, NodeError, light_embedder, node_config
from dsonode.store import CodeIndex, Store
from tests.netutil import REPO, node_mesh, wait_until

# ---- the space without torch -----------------------------------------------------------------


def test_default_space_id_imports_no_torch_and_the_light_node_path_neither():
    """In a fresh process: the composition root, the CLI and the default space id import
    neither torch nor transformers."""
    code = (
        "import sys, json\n"
        "import dsonode.cli, dsonode.node.node, dsonode.library\n"
        "from dsonode.embed.space import default_space_id\n"
        "sid = default_space_id()\n"
        "print(json.dumps([sid, 'torch' in sys.modules, 'transformers' in sys.modules]))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 0, out.stderr[-2000:]
    sid, torch_loaded, transformers_loaded = json.loads(out.stdout)
    assert (torch_loaded, transformers_loaded) == (False, False)
    assert sid == default_space_id()


@pytest.fixture(scope="module")
def embedder():
    from dsonode.embed.embedder import get_embedder

    return get_embedder(threads=1)


def test_the_full_embedder_computes_exactly_the_torch_free_default_space(embedder):
    assert embedder.head_sha256 == DEFAULT_HEAD_SHA256  # the constant is the real head's
    assert embedder.space_id == default_space_id()
    assert embedder.model_name == DEFAULT_MODEL_NAME
    assert embedder.reference is None  # light nodes decode against r = 0


# ---- the library in its light form (real LMDB) -----------------------------------------------


def _unit(rng: np.random.Generator) -> np.ndarray:
    v = rng.standard_normal(DIM).astype(np.float32)
    return v / np.linalg.norm(v)


def test_light_library_stores_recomputes_and_never_submits(tmp_path, rng):
    space = default_space_id()
    light_key = Ed25519PrivateKey.generate()
    full_key = Ed25519PrivateKey.generate()
    store = Store(tmp_path / "store", space_id=space)
    try:
        lib = Library(
            store=store,
            index=CodeIndex.from_store(store, space),
            embedder=LightEmbedder(space, DEFAULT_MODEL_NAME),
            key=light_key,
            rules=ConsensusRules(quorum=1, method="median", committee=None),
        )
        assert lib.light
        # No submitter known: a light node does not count itself in the network size.
        assert lib.network_size() == 0
        exp = wire.make_experience(full_key, "ops", "pin your dependency versions")
        vec = _unit(rng)
        code = bitdelta.encode(vec)
        sub = wire.make_submission(full_key, exp.id, bytes.fromhex(space), code)
        out = lib.accept_items([(wire.encode_item(exp), exp), (wire.encode_item(sub), sub)])
        assert out == []  # nothing of ours to publish
        consensus = store.get_consensus(bytes.fromhex(space), exp.id)
        assert consensus is not None and consensus.count == 1
        # The median of one code: the same sign bits (the scale after the 4-byte header may
        # be re-rounded).
        assert consensus.code[4:] == code[4:]
        assert lib.own_code(exp.id) is None
        assert lib.counters()["light_skipped"] == 1
        hits = lib.search(vec, 1)
        assert hits[0][0] == exp.id and hits[0][1] > 0.7
        # Reputation moved for the full node's accepted submission; not for us.
        authors = {a for a, _ in store.iter_reputation()}
        assert authors == {public_key_bytes(full_key)}
        lib._network_size_at = -float("inf")  # force the refresh (30 s cache)
        assert lib.network_size() == 1  # the full node only
        # What needs the encoder fails with the role in the message; a vote does not.
        mine = wire.make_experience(light_key, "ops", "mine")
        with pytest.raises(LightNodeError, match="role light"):
            lib.add_experience(mine)
        assert not store.has_experience(mine.id)
        with pytest.raises(LightNodeError, match="role light"):
            lib.embed("text")
        vote, new = lib.record_feedback(exp.id, 1.0)
        assert new and vote.author == public_key_bytes(light_key)
    finally:
        store.close()


def test_mcp_tells_the_agent_to_use_a_full_node():
    from dsonode.mcp import render

    err = NeedsFullNode("search with a text 'query'", "send a 'vector' instead")
    msg = render.describe_rpc_error("search", err.code, err.message)
    assert "role light" in msg and "full node's socket" in msg


# ---- settings ----------------------------------------------------------------------------------


def _node_cfg(**node: object) -> NodeConfig:
    return node_config(config_from_mapping({"node": node}))


def test_role_and_space_id_settings(tmp_path):
    cfg = _node_cfg(data_dir=str(tmp_path))
    assert (cfg.role, cfg.space_id) == ("full", "")
    sid = "ab" * 32
    light = _node_cfg(data_dir=str(tmp_path), role="light", space_id=sid)
    emb = light_embedder(light)
    assert (emb.space_id, emb.reference, emb.dim) == (sid, None, DIM)
    assert light_embedder(_node_cfg(data_dir=str(tmp_path), role="light")).space_id == (
        default_space_id()
    )
    with pytest.raises(ConfigError, match="role"):
        _node_cfg(role="medium")
    with pytest.raises(ConfigError, match="64 lowercase hex"):
        _node_cfg(role="light", space_id="AB" * 32)
    with pytest.raises(ConfigError, match="light nodes"):
        _node_cfg(space_id=sid)  # a full node's space is its model's
    with pytest.raises(NodeError, match="gateway"):
        light_embedder(NodeConfig(data_dir=tmp_path, role="light", gateway=GatewayConfig()))
    with pytest.raises(NodeError, match=r"node\.space_id"):
        light_embedder(NodeConfig(data_dir=tmp_path, role="light", head=str(tmp_path / "h")))


def test_run_takes_the_role_flag(tmp_path):
    import argparse

    from dsonode.node.cli import register, run_config

    parser = argparse.ArgumentParser()
    register(parser.add_subparsers())
    args = parser.parse_args(["run", "--data-dir", str(tmp_path), "--role", "light"])
    assert run_config(args).role == "light"
    assert run_config(parser.parse_args(["run", "--data-dir", str(tmp_path)])).role == "full"
    with pytest.raises(SystemExit):
        parser.parse_args(["run", "--role", "medium"])


# ---- a light node next to a full node (real processes, loopback) ------------------------------

IPS = ["127.0.0.71", "127.0.0.72"]  # full, light


def test_light_node_next_to_a_full_node(tmp_path, embedder):
    text = "Retry flaky network calls with exponential backoff and a jitter."
    with node_mesh(tmp_path, IPS, [[], ["--role", "light"]]) as (full, light):
        with full.client() as c:
            added = c.add_experience(text, "ops")
        exp_id = added["id"]

        def arrived():
            with light.client() as c:
                return c.get(exp_id)

        got = wait_until("the experience at the light node", arrived, 60, [full, light])
        assert got["text"] == text
        assert got["submissions"] == 1  # the full node's code: consensus present
        with light.client() as c:
            stats = c.stats()
            hits = c.search(vector=embedder.embed_query(text), k=3)
            with pytest.raises(RpcError) as err:
                c.search("backoff for flaky calls", k=3)
            assert err.value.code == NEEDS_FULL_NODE
            assert "role light" in err.value.message and "vector" in err.value.message
            with pytest.raises(RpcError) as err:
                c.add_experience("a lesson", "ops")
            assert err.value.code == NEEDS_FULL_NODE and "add_experience" in err.value.message
            c.give_feedback(exp_id, helpful=True)  # a vote needs no encoder
        assert hits and hits[0]["id"] == exp_id and hits[0]["similarity"] > 0.5
        cli = subprocess.run(  # `dsonode search` against the light node: a clear error
            [sys.executable, "-m", "dsonode", "search", "--socket", str(light.socket_path), "x"],
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert cli.returncode == 2, cli.stderr[-2000:]
        assert "needs a full node" in cli.stderr and "role light" in cli.stderr
        assert (stats["role"], stats["torch_loaded"]) == ("light", False)
        assert stats["space_id"] == embedder.space_id
        assert stats["network"]["counters"].get("light_skipped") == 1
        with full.client() as c:
            full_stats = c.stats()
            assert c.get(exp_id)["submissions"] == 1  # the light node never submitted
            full_hits = c.search(vector=embedder.embed_query(text), k=3)
        # Found on both. The similarities differ (full ~0.64, light ~0.80): the author keeps
        # its raw code as the first consensus, a recomputing node re-encodes the normalised
        # median (same bits, another scale), so they are not compared here.
        assert full_hits[0]["id"] == exp_id and full_hits[0]["similarity"] > 0.5
        # The full node runs the lean embedder: no torch in its process either.
        assert (full_stats["role"], full_stats["embed_runtime"]) == ("full", "onnx")
        assert full_stats["torch_loaded"] is False

        def voted():
            with full.client() as c:
                fb = c.get(exp_id)["feedback"]
            return fb is not None and fb["votes"] == 1

        wait_until("the light node's vote at the full node", voted, 60, [full, light])

        # Both idle now: resident memory of the whole process.
        time.sleep(1.0)
        rss_full = psutil.Process(full.pid).memory_info().rss
        rss_light = psutil.Process(light.pid).memory_info().rss
        print(
            f"idle RSS: full node {rss_full / 2**20:.0f} MiB, light node {rss_light / 2**20:.0f} MiB"
        )
        assert rss_light < 0.6 * rss_full
