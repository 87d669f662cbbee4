"""Benchmark commands: `dsonode bench NAME [--json]`.

Each module dsonode/bench/<name>.py (other than the helpers `common`, `plots` and `_private`
ones) registers one subcommand through `register(subparsers)`; adding a benchmark is adding a
file. `plots` draws the benchmarks' JSON (`--plot`, `make plots`).
Benchmarks measure side by side in one run and report medians and ratios, because this
machine is shared and noisy; targets live here, never in timed tests.
"""

import importlib
import pkgutil

from dsonode.argtypes import SubParsers

HELPERS = frozenset({"common", "plots"})


def benchmark_modules() -> list[str]:
    return sorted(
        m.name
        for m in pkgutil.iter_modules(__path__)
        if m.name not in HELPERS and not m.name.startswith("_") and not m.ispkg
    )


def register(subparsers: SubParsers) -> None:
    bench = subparsers.add_parser("bench", help="run a benchmark (machine-readable with --json)")
    bench_sub = bench.add_subparsers(dest="bench_name", metavar="NAME", required=True)
    for name in benchmark_modules():
        importlib.import_module(f"dsonode.bench.{name}").register(bench_sub)
