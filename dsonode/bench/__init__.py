"""Benchmark commands: `dsonode bench NAME [--json]`.

Each module in BENCHMARKS registers one subcommand through `register(subparsers)`.
Benchmarks measure side by side in one run and report medians and ratios, because this
machine is shared and noisy; targets live here, never in timed tests.
"""

BENCHMARKS: list[str] = []


def register(subparsers) -> None:
    import importlib

    bench = subparsers.add_parser("bench", help="run a benchmark (machine-readable with --json)")
    bench_sub = bench.add_subparsers(dest="bench_name", metavar="NAME", required=True)
    for name in BENCHMARKS:
        importlib.import_module(f"dsonode.bench.{name}").register(bench_sub)
