"""Helpers shared by the benchmark commands: timing medians and one JSON report format."""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import numpy as np


def code_rows(out: bytes | np.ndarray) -> np.ndarray:
    """bitdelta.encode / sign_bits of a matrix: the uint8 (n, k) array (bytes come back only
    for a single vector, which the benchmarks never pass where they want rows)."""
    import numpy as np  # lazily: the CLI imports this module to register commands

    if not isinstance(out, np.ndarray):
        raise TypeError(f"expected a matrix of codes, got {type(out).__name__}")
    return out


def add_common_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", action="store_true", help="print one JSON object on stdout")
    parser.add_argument(
        "--repeats", type=int, default=5, help="timed repetitions (median reported)"
    )


def median_time(fn: Callable[[], Any], repeats: int = 5, warmup: int = 1) -> float:
    """Median wall time of fn() in seconds over `repeats` runs after `warmup` untimed runs."""
    if repeats < 1:
        raise ValueError("repeats must be >= 1")
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def percentile(values: list[float], q: float) -> float:
    """The q-th percentile (0..100) by linear interpolation; values need not be sorted."""
    if not values:
        raise ValueError("no values")
    xs = sorted(values)
    pos = (len(xs) - 1) * q / 100.0
    lo = int(pos)
    hi = min(lo + 1, len(xs) - 1)
    return xs[lo] + (xs[hi] - xs[lo]) * (pos - lo)


def environment() -> dict[str, Any]:
    return {
        "date": _dt.datetime.now(_dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "python": platform.python_version(),
        "machine": platform.machine(),
        "cpus": os.cpu_count(),
        "command": "dsonode " + " ".join(sys.argv[1:]),
    }


def report(result: dict[str, Any], as_json: bool) -> None:
    """Print a benchmark result: one JSON object (with --json) or aligned key: value lines."""
    result = {**result, "env": environment()}
    if as_json:
        print(json.dumps(result, indent=2, sort_keys=False, default=_jsonable))
        return
    _print_human(result)


def _print_human(obj: dict[str, Any], indent: int = 0) -> None:
    pad = " " * indent
    for key, value in obj.items():
        if isinstance(value, dict):
            print(f"{pad}{key}:")
            _print_human(value, indent + 2)
        elif isinstance(value, float):
            print(f"{pad}{key}: {value:.6g}")
        else:
            print(f"{pad}{key}: {value}")


def _jsonable(value: Any) -> Any:
    try:
        import numpy as np

        if isinstance(value, np.generic):
            return value.item()
        if isinstance(value, np.ndarray):
            return value.tolist()
    except ImportError:  # pragma: no cover
        pass
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


def default_vaswani_dir() -> Path:
    """The public Vaswani collection: $DSONODE_VASWANI, else ../shared/data/vaswani from the repo."""
    env = os.environ.get("DSONODE_VASWANI")
    if env:
        return Path(env)
    repo_root = Path(__file__).resolve().parents[2]
    return repo_root.parent / "shared" / "data" / "vaswani"
