"""The node serves the HTTP gateway itself when configured (`[gateway] enabled = true` or
`dsonode run --gateway-listen HOST:PORT`), over the model it already loaded, and stops it
cleanly on SIGTERM."""

from __future__ import annotations

import httpx
import pytest

from dsonode.cli import build_parser
from dsonode.config.loader import ConfigError
from dsonode.core.constants import DIM
from dsonode.testnet import free_port
from dsonode.testnet.process import NodeProcess

TOKEN = "kill9-gateway-test-token-0123456789"


def _run_config(tmp_path, *argv: str):
    from dsonode.node.cli import run_config

    args = build_parser().parse_args(["run", "--data-dir", str(tmp_path / "d"), *argv])
    return run_config(args)


def test_gateway_flag_and_config_reach_the_node_config(tmp_path, monkeypatch):
    monkeypatch.delenv("DSONODE_GATEWAY_TOKEN", raising=False)
    assert _run_config(tmp_path).gateway is None  # off by default
    cfg = _run_config(tmp_path, "--gateway-listen", "127.0.0.1:0").gateway
    assert (cfg.host, cfg.port, cfg.token) == ("127.0.0.1", 0, None)
    # Beyond loopback without a token: refused before anything loads.
    with pytest.raises(ConfigError, match=r"gateway\.listen: .*without a token"):
        _run_config(tmp_path, "--gateway-listen", "0.0.0.0:8080")
    monkeypatch.setenv("DSONODE_GATEWAY_TOKEN", TOKEN)
    assert _run_config(tmp_path, "--gateway-listen", "127.0.0.1:9").gateway.token == TOKEN
    # [gateway] enabled in a config file: its listen and token, the flag's address wins.
    toml = tmp_path / "node.toml"
    toml.write_text(
        f'[node]\ndata_dir = "{tmp_path / "d"}"\n'
        '[gateway]\nenabled = true\nlisten = "127.0.0.1:8123"\nmax_batch_texts = 8\n'
    )
    cfg = _run_config(tmp_path, "--config", str(toml)).gateway
    assert (cfg.port, cfg.max_batch_texts, cfg.token) == (8123, 8, TOKEN)
    cfg = _run_config(tmp_path, "--config", str(toml), "--gateway-listen", "127.0.0.1:7").gateway
    assert (cfg.port, cfg.max_batch_texts) == (7, 8)


@pytest.mark.slow
def test_a_node_with_the_gateway_on_serves_embeddings_and_stops_on_sigterm(tmp_path):
    ip = "127.0.0.63"
    port = free_port(ip)
    toml = tmp_path / "node.toml"
    toml.write_text(
        f'[node]\ndata_dir = "{tmp_path / "node"}"\n'
        f'[gateway]\nenabled = true\nlisten = "{ip}:{port}"\n'
    )
    node = NodeProcess(
        tmp_path / "node",
        "--config",
        str(toml),
        "--threads",
        "1",
        env={"DSONODE_GATEWAY_TOKEN": TOKEN},
    )
    base = f"http://{ip}:{port}"
    try:
        node.start()
        assert httpx.get(f"{base}/health", timeout=30).status_code == 200
        with node.client() as c:
            model = c.stats()["model"]
        body = {"model": model, "input": ["bread needs time to rise", "sort before merging"]}
        denied = httpx.post(f"{base}/v1/embeddings", json=body, timeout=60)
        assert denied.status_code == 401  # the token from the environment is enforced
        r = httpx.post(
            f"{base}/v1/embeddings",
            json=body,
            headers={"Authorization": f"Bearer {TOKEN}"},
            timeout=60,
        )
        assert r.status_code == 200, r.text
        data = r.json()["data"]
        assert [d["index"] for d in data] == [0, 1]
        assert all(len(d["embedding"]) == DIM for d in data)
        # the retrieval socket still answers beside it
        with node.client() as c:
            assert c.health()["status"] == "ok"
        assert node.stop() == 0  # SIGTERM stops socket and gateway together, exit 0
        with pytest.raises(httpx.ConnectError):
            httpx.get(f"{base}/health", timeout=5)
        assert "gateway on http://" in node.log_tail(200)
    finally:
        node.kill()
