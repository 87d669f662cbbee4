"""Reliability campaign tooling: fuzzers, socket abuse, SIGKILL loops, hostile peers,
partitions, the live Byzantine sweep and the network probes (see qa/README.md and
RELIABILITY.md).

Lives beside the package, not in it: the wheel installs only `dsonode*`, so none of this
ships to a node operator. The CI tests (run from the repository root) and `make
bench-faults` import the same code and differ only in input counts.

Every `python -m qa.<module>` subprocess must find `qa` (and the repository's `dsonode`)
whatever its working directory: start it with `env=qa_env()`.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

#: The repository root: the directory holding `qa/` and `dsonode/`.
REPO_ROOT = Path(__file__).resolve().parents[1]


def qa_env(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """os.environ plus `extra`, with REPO_ROOT first on PYTHONPATH (the wheel has no `qa`)."""
    env = {**os.environ, **(extra or {})}
    path = [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p]
    env["PYTHONPATH"] = os.pathsep.join([str(REPO_ROOT), *path])
    return env
