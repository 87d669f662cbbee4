"""Child process of `dsonode bench node`'s ingest part: the lean embedder's exact path in a
process without torch, as a node runs it.

Measured in the benchmark's own process, the lean path shared the two cores with torch's
OpenMP workers, which keep spinning after each torch call: its rounds took 7x longer than
alone (BENCHMARKS.md "lean node"). Protocol: one JSON list of texts per stdin line; one JSON
line back per round, {"s": seconds, "codes": [hex, ...]}; an empty line ends.
"""

from __future__ import annotations

import json
import sys
import time


def main() -> int:
    from dsonode.core import bitdelta
    from dsonode.embed import lean

    emb = lean.load_or_compile()
    print(json.dumps({"ready": "torch" not in sys.modules}), flush=True)
    for line in sys.stdin:
        if not line.strip():
            break
        texts = json.loads(line)
        t0 = time.perf_counter()
        codes = [bitdelta.encode(emb.embed_query(t), ref=emb.reference) for t in texts]
        took = time.perf_counter() - t0
        print(json.dumps({"s": took, "codes": [bytes(c).hex() for c in codes]}), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
