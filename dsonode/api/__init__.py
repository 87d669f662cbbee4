"""The retrieval socket (JSON-RPC 2.0 over a Unix socket), its Python client and CLI.

Importing this package stays light (no trio, no torch): agents only need `Client`.
"""

from dsonode.api.client import Client, ClientError, ClientTimeout, NodeNotRunning, ProtocolError
from dsonode.api.jsonrpc import RpcError

__all__ = ["Client", "ClientError", "ClientTimeout", "NodeNotRunning", "ProtocolError", "RpcError"]
