"""`dsonode mcp`: the node's experiences as MCP tools and a prompt, for LLM agents.

An MCP server over stdio (the `mcp` package) that forwards every call to a running node's
retrieval socket. `render` is pure (text and bounds, no I/O); `server` builds the MCP server
and imports `mcp` (heavy: ~1 s), so the command imports it only when it runs.
"""
