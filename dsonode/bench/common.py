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


#: Where `--save` writes by default: docs/bench/ of the checkout this package runs from, read
#: back by `make plots` (`python -m dsonode.bench.plots`).
SAVE_DIR = Path(__file__).resolve().parents[2] / "docs" / "bench"


def add_output_args(
    parser: argparse.ArgumentParser, name: str, plot: bool = True, save_as: str | None = None
) -> None:
    """`--save [FILE.json]` (and `--plot FILE.png` when plots.py draws `name`) on a benchmark
    command; `report(result, args.json, args)` then honours them. `save_as`: the default file
    name when one command saves several runs, formatted with the arguments (e.g.
    "retrieval-n{n}")."""
    stem = save_as or name
    parser.add_argument(
        "--save",
        nargs="?",
        const=_DEFAULT_SAVE,
        default=None,
        type=_json_path,
        metavar="FILE.json",
        help=f"also write the JSON report to FILE (default docs/bench/{stem}.json)",
    )
    if plot:
        parser.add_argument(
            "--plot",
            type=_png_path,
            default=None,
            metavar="FILE.png",
            help="draw the result into FILE.png (needs: pip install 'dsonode[plots]')",
        )
    parser.set_defaults(output_name=name, output_save_as=stem)


_DEFAULT_SAVE = Path("<default>")


def _json_path(text: str) -> Path:
    path = Path(text)
    if path.suffix != ".json":
        raise argparse.ArgumentTypeError(f"--save wants a .json file, got {text!r}")
    return path


def _png_path(text: str) -> Path:
    """Checked when the command line is parsed, so a missing extra fails before an hour of
    benchmark rather than after it."""
    path = Path(text)
    if path.suffix.lower() != ".png":
        raise argparse.ArgumentTypeError(f"--plot wants a .png file, got {text!r}")
    from dsonode.bench import plots  # the module imports matplotlib only when it draws

    try:
        plots.require_matplotlib()
    except plots.PlotsUnavailable as exc:
        raise argparse.ArgumentTypeError(str(exc)) from exc
    return path


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


#: The percentiles a latency distribution is kept at in a report (enough to draw its CDF).
CDF_PERCENTILES = (0, 1, 5, 10, 20, 30, 40, 50, 60, 70, 80, 90, 95, 99, 100)


def cdf_points(values: list[float], digits: int = 1) -> list[list[float]]:
    """[[percentile, value], ...] at CDF_PERCENTILES: a distribution in ~15 pairs of JSON."""
    return [[q, round(percentile(values, q), digits)] for q in CDF_PERCENTILES] if values else []


def environment() -> dict[str, Any]:
    return {
        "date": _dt.datetime.now(_dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "python": platform.python_version(),
        "machine": platform.machine(),
        "cpus": os.cpu_count(),
        "command": f"{_program()} " + " ".join(sys.argv[1:]),
    }


def _program() -> str:
    """How the benchmark was started: `dsonode`, or `python -m qa.faults` for a driver run
    as a module from the checkout (whose argv[0] is the file)."""
    script = Path(sys.argv[0])
    if script.suffix != ".py" or script.name == "__main__.py":
        return "dsonode"
    try:
        module = script.resolve().relative_to(Path(__file__).resolve().parents[2])
    except ValueError:
        return f"python {script.name}"
    return "python -m " + ".".join(module.with_suffix("").parts)


def report(
    result: dict[str, Any], as_json: bool, outputs: argparse.Namespace | None = None
) -> None:
    """Print a benchmark result: one JSON object (with --json) or aligned key: value lines.

    `outputs`, the parsed arguments of a command registered with `add_output_args`: with
    `--save` the same JSON is written to a file, with `--plot` that JSON is drawn (the
    picture is made from the saved form, so it cannot disagree with the numbers)."""
    result = {**result, "env": environment()}
    wants_file = outputs is not None and (
        getattr(outputs, "save", None) is not None or getattr(outputs, "plot", None) is not None
    )
    text = (
        json.dumps(result, indent=2, sort_keys=False, default=_jsonable)
        if as_json or wants_file
        else ""
    )
    if as_json:
        print(text)
    else:
        _print_human(result)
    if outputs is None or not wants_file:
        return
    save: Path | None = getattr(outputs, "save", None)
    if save == _DEFAULT_SAVE:
        save = SAVE_DIR / (outputs.output_save_as.format(**vars(outputs)) + ".json")
    if save is not None:
        save.parent.mkdir(parents=True, exist_ok=True)
        tmp = save.with_name(save.name + ".tmp")
        tmp.write_text(text + "\n", encoding="utf-8")
        tmp.replace(save)
        print(f"saved {save}", file=sys.stderr)
    png: Path | None = getattr(outputs, "plot", None)
    if png is not None:
        from dsonode.bench import plots

        plots.plot_report(outputs.output_name, json.loads(text), png)
        print(f"plotted {png}", file=sys.stderr)


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


def search_bench_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    """The environment of a node that a search benchmark starts. The benchmark fills its
    store with codes of generated authors, which the default trust mode (vouched) would
    withhold from every answer; these benchmarks time the search path, so the node serves
    everything (`trust.mode = open`). The trust policy itself is measured by `bench sybil`."""
    from dsonode.config.settings import setting

    return {**(extra or {}), setting("trust.mode").env: "open"}
