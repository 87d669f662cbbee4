"""The benchmark pictures (dsonode/bench/plots.py): every figure renders from saved JSON, and
`--save` / `--plot` work on a real (tiny) benchmark run. No pixel comparisons: a PNG is
checked for its signature, its IHDR dimensions and a plausible size.

The fixtures in tests/fixtures/bench/ are real outputs of the benchmarks (tiny settings where
the run is cheap: byzantine, retrieval, simulate; copies of the docs/bench/ runs where it is
not: network, embed, faults); their `env.command` says which.
"""

from __future__ import annotations

import builtins
import json
import struct
import sys
from pathlib import Path
from typing import Any

import pytest

from dsonode.bench import plots

FIXTURES = Path(__file__).parent / "fixtures" / "bench"
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def png_size(path: Path) -> tuple[int, int]:
    """(width, height) from the IHDR chunk, after checking the PNG signature."""
    data = path.read_bytes()
    assert data[:8] == PNG_SIGNATURE, f"{path.name}: not a PNG"
    length, kind = struct.unpack(">I4s", data[8:16])
    assert kind == b"IHDR" and length == 13, f"{path.name}: no IHDR first"
    width, height = struct.unpack(">II", data[16:24])
    return width, height


def assert_sensible_png(path: Path) -> None:
    width, height = png_size(path)
    assert 600 <= width <= 4000, (path.name, width)
    assert 300 <= height <= 3000, (path.name, height)
    size = path.stat().st_size
    assert 20_000 <= size <= 3_000_000, (path.name, size)  # a drawn chart, not a blank canvas


def test_every_figure_renders_from_the_fixtures(tmp_path: Path) -> None:
    written = plots.render_all(FIXTURES, tmp_path)
    assert sorted(p.name for p in written) == sorted(spec.png for spec in plots.FIGURES)
    for path in written:
        assert_sensible_png(path)


def test_every_figure_has_a_fixture() -> None:
    for spec in plots.FIGURES:
        assert plots.load_reports(FIXTURES, spec.sources), f"no fixture for {spec.png}"


def test_network_chart_without_simulation_and_simulation_alone(tmp_path: Path) -> None:
    network = json.loads((FIXTURES / "network.json").read_text())
    simulate = json.loads((FIXTURES / "simulate.json").read_text())
    assert_sensible_png(plots.plot_network(network, [], tmp_path / "real.png"))
    assert_sensible_png(plots.plot_simulate(simulate, tmp_path / "sim.png"))


def test_representations_chart_is_general(tmp_path: Path) -> None:
    """The embed chart's core takes plain rows, as a `bench head` report would give."""
    rows = [
        plots.Representation("encoder", 0.43),
        plots.Representation("seeded head", 0.435, (-0.002, 0.008)),
        plots.Representation("trained head", 0.46, (0.01, 0.04)),
    ]
    out = plots.plot_representations(rows, "encoder", "head", tmp_path / "head.png", [])
    assert_sensible_png(out)


def test_single_fraction_byzantine_report(tmp_path: Path) -> None:
    """A run with one --fraction keeps its figures at the top level."""
    report = json.loads((FIXTURES / "byzantine.json").read_text())
    single = {k: v for k, v in report.items() if k not in ("by_fraction", "fractions")}
    single.update(report["by_fraction"]["0.2"])
    assert_sensible_png(plots.plot_byzantine(single, tmp_path / "one.png"))


def test_missing_fields_are_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(plots.PlotDataError, match="by_fraction"):
        plots.plot_byzantine({"clean": 0.9}, tmp_path / "x.png")
    with pytest.raises(plots.PlotDataError, match="flood"):
        plots.plot_faults({"flood": None}, tmp_path / "x.png")
    bad = tmp_path / "src"
    bad.mkdir()
    (bad / "embed.json").write_text("[1, 2]")
    with pytest.raises(plots.PlotDataError, match="not a JSON object"):
        plots.render_all(bad, tmp_path)


def test_save_and_plot_flags_on_a_real_run(tmp_path: Path, capsys: Any) -> None:
    """`bench simulate --json --save F --plot P`: the file holds exactly what was printed."""
    from dsonode.cli import main

    saved, png = tmp_path / "sim.json", tmp_path / "sim.png"
    argv = ["bench", "simulate", "--nodes", "8", "--experiences", "3", "--json"]
    assert main([*argv, "--save", str(saved), "--plot", str(png)]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert json.loads(saved.read_text()) == printed
    assert printed["by_nodes"]["8"]["delivery_cdf_ms"], "no latency distribution saved"
    assert_sensible_png(png)


def test_plot_without_matplotlib_names_the_extra(
    monkeypatch: pytest.MonkeyPatch, capsys: Any
) -> None:
    """With matplotlib not importable, --plot is refused when the command line is parsed
    (before any benchmark runs), naming the extra."""
    real_import = builtins.__import__

    def no_matplotlib(name: str, *args: Any, **kwargs: Any) -> Any:
        if name == "matplotlib" or name.startswith("matplotlib."):
            raise ImportError(f"No module named {name!r}")
        return real_import(name, *args, **kwargs)

    for mod in [m for m in sys.modules if m == "matplotlib" or m.startswith("matplotlib.")]:
        monkeypatch.delitem(sys.modules, mod)
    monkeypatch.setattr(builtins, "__import__", no_matplotlib)
    with pytest.raises(plots.PlotsUnavailable, match=r"dsonode\[plots\]"):
        plots.require_matplotlib()

    from dsonode.cli import main

    with pytest.raises(SystemExit) as exc:
        main(["bench", "simulate", "--nodes", "8", "--plot", "x.png"])
    assert exc.value.code == 2
    assert "pip install 'dsonode[plots]'" in capsys.readouterr().err


def test_plot_and_save_want_the_right_suffix(capsys: Any) -> None:
    from dsonode.cli import main

    for flag, name in (("--plot", "x.jpg"), ("--save", "x.txt")):
        with pytest.raises(SystemExit):
            main(["bench", "simulate", flag, name])
        assert "wants a" in capsys.readouterr().err
