"""dsonode: a Decentralized Semantic Optimization (DSO) peer node.

Layout (sans-IO core, one shell per kind of I/O):
    dsonode.core    pure codec, wire format, signatures, aggregation (no trio/libp2p/lmdb/torch)
    dsonode.embed   encoder + projection head (torch)
    dsonode.store   LMDB store and code index
    dsonode.api     JSON-RPC retrieval socket, client
    dsonode.bench   benchmark commands (`dsonode bench ...`)
"""

__version__ = "0.1.0"
