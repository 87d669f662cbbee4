"""The network shell: a py-libp2p host (TCP, Noise, yamux), GossipSub per embedding space,
and a redial loop. See README.md in this folder for the py-libp2p 0.8.1 traps handled here.

Submodules import libp2p (about 1.7 s); `dsonode.core.peerinfo` does not.
"""
