"""Reliability tooling: fuzzers, socket abuse, SIGKILL loops (see RELIABILITY.md).

Shipped with the package (as trio ships its test helpers) so that the CI tests and
`dsonode bench faults` run exactly the same code, only with different input counts.

- `mutate`: pure byte and msgpack mutators over the protocol's test vectors;
- `fuzz`: the decoder fuzz runner (typed errors only, per-input time bound, RSS bound);
- `socket_abuse`: malformed JSON-RPC traffic against a real node's Unix socket;
- `kill9`: SIGKILL-during-ingest cycles with full store and index verification;
- `relay`: loopback TCP relays a test can cut and heal; `partition`: 5 nodes split 2 + 3.
"""
