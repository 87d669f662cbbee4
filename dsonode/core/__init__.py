"""The pure core of dsonode: bytes and numpy arrays in, bytes and numpy arrays out.

Nothing under this package may import trio, libp2p, lmdb or torch (a test enforces it).
"""
