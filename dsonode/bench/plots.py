"""Pictures of the benchmarks, drawn from the JSON they print (`--plot FILE.png`, `make plots`).

Every function here takes the parsed JSON report(s) of a benchmark (what `--json` prints and
`--save` writes) and writes one PNG; nothing is recomputed, so a picture cannot disagree with
its numbers. matplotlib is an optional extra (`pip install 'dsonode[plots]'`): it is imported
only when a picture is drawn, with the Agg backend (files only, no display), through
`Figure` objects rather than pyplot's global state.

`python -m dsonode.bench.plots [--src DIR] [--out DIR]` (what `make plots` runs) redraws
every picture of FIGURES from the JSON saved in docs/bench/.
"""

from __future__ import annotations

import argparse
import json
import sys
import textwrap
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from dsonode.core.errors import DsoError

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

Report = dict[str, Any]

EXTRA_HINT = "pip install 'dsonode[plots]'"
DPI = 110

#: The paper's Table 5 (30 % Byzantine submitters, Gaussian attack): retrieval accuracy of the
#: mean and the median consensus, and without attackers. Drawn as ratios to the clean figure,
#: the scale of `bench byzantine`'s curves (61.3 / 94.7 = 0.647, 92.1 / 94.7 = 0.973).
PAPER_TABLE5 = {"fraction": 0.3, "mean": 0.613, "median": 0.921, "clean": 0.947}

#: Targets drawn as lines (BENCHMARKS.md states where each comes from).
RETRIEVAL_P50_TARGET_MS = 20.0  # index search p50 at 1M items
SOCKET_P50_TARGET_MS = 21.5  # text query end to end over the socket
RECALL_TARGET = 0.99
DELIVERY_P99_TARGET_MS = 2000.0
GRAYLIST_TARGET_S = 10.0
DELIVERED_TARGET = 0.99

METHOD_STYLE = {  # method -> (colour, marker)
    "mean": ("tab:red", "o"),
    "median": ("tab:blue", "s"),
    "trimmed_mean": ("tab:green", "^"),
    "geometric_median": ("tab:purple", "D"),
}


class PlotsUnavailable(DsoError):
    """matplotlib (the `plots` extra) is not installed."""


class PlotDataError(DsoError):
    """A JSON report that lacks what its picture needs."""


def require_matplotlib() -> None:
    """Raise PlotsUnavailable, naming the extra, when matplotlib cannot be imported."""
    try:
        import matplotlib
    except ImportError as exc:
        raise PlotsUnavailable(f"drawing plots needs matplotlib: {EXTRA_HINT}") from exc
    matplotlib.use("Agg", force=True)


def _figure(width: float, height: float) -> Figure:
    require_matplotlib()
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), dpi=DPI, layout="constrained")


def _save(fig: Figure, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=DPI, format="png", metadata={"Software": "dsonode.bench.plots"})
    return path


def _caption(fig: Figure, reports: Sequence[Report]) -> None:
    """The command and date of each report, under the picture."""
    lines = []
    for r in reports:
        env = r.get("env") or {}
        if env:
            load = r.get("loadavg_before")  # where a benchmark records it: the machine's load
            at_load = f", load average {float(load[0]):.1f}" if load else ""
            line = f"{env.get('command', '?')}  ({env.get('date', '?')}{at_load})"
            lines += textwrap.wrap(line, 170, subsequent_indent="    ")
    if lines:
        fig.supxlabel("\n".join(lines), fontsize=7, color="0.35")


def _need(report: Report, *keys: str) -> Any:
    value: Any = report
    for k in keys:
        if not isinstance(value, dict) or k not in value:
            raise PlotDataError(f"the report has no {'.'.join(keys)!r}")
        value = value[k]
    return value


# ------------------------------------------------------------------------------- byzantine


def _byzantine_runs(report: Report) -> list[Report]:
    if "by_fraction" in report:
        runs = list(_need(report, "by_fraction").values())
    elif "fraction" in report:
        runs = [report]  # a single --fraction run keeps its figures at the top level
    else:
        raise PlotDataError("the report has neither 'by_fraction' nor 'fraction'")
    return sorted(runs, key=lambda r: float(r["fraction"]))


def plot_byzantine(report: Report, path: Path) -> Path:
    """Accuracy relative to clean vs attacker fraction: one panel per attack, floats on the
    top row and 964-byte codes below, one line per aggregation method; the paper's Table 5
    points in the Gaussian float panel."""
    runs = _byzantine_runs(report)
    attacks = list(runs[0]["attacks"])
    rows = (
        ("attacks", "clean_by_method", "7680-d floats"),
        ("attacks_codes", "clean_codes_by_method", "964-byte codes"),
    )
    fig = _figure(2.9 * len(attacks) + 2.6, 6.4)
    axes = fig.subplots(2, len(attacks), sharex=True, sharey=True, squeeze=False)
    fractions = [0.0] + [float(r["fraction"]) for r in runs]
    for row, (key, clean_key, row_label) in enumerate(rows):
        clean = _need(report, clean_key)
        for col, attack in enumerate(attacks):
            ax = axes[row][col]
            for method, (colour, marker) in METHOD_STYLE.items():
                if method not in clean:
                    continue
                base = float(clean[method])
                ys = [1.0] + [float(r[key][attack][method]) / base for r in runs]
                ax.plot(fractions, ys, color=colour, marker=marker, ms=4, lw=1.4, label=method)
            raw_clean = report.get("clean_raw") or {}
            if row == 0 and all("attacks_raw" in r for r in runs):
                # the node's rule switched off (rows still normalised): what rejection buys
                for method in raw_clean:
                    colour = METHOD_STYLE[method][0]
                    ys = [1.0] + [
                        float(r["attacks_raw"][attack][method]) / float(raw_clean[method])
                        for r in runs
                    ]
                    ax.plot(
                        fractions,
                        ys,
                        color=colour,
                        lw=1.0,
                        ls=(0, (4, 2)),
                        alpha=0.7,
                        label=f"{method}, rejection off",
                    )
            ax.axhline(0.95, color="0.5", lw=0.8, ls=":")
            if attack == "gaussian":
                ax.axhline(0.97, color="0.3", lw=0.8, ls="--")
            if row == 0 and attack == "gaussian":
                _paper_points(ax)
            ax.set_ylim(-0.03, 1.12)
            ax.grid(alpha=0.25)
            if row == 0:
                ax.set_title(attack.replace("_", " "))
            if row == 1:
                ax.set_xlabel("attacker fraction")
            if col == 0:
                ax.set_ylabel(f"{row_label}\naccuracy / clean accuracy")
    handles, labels = axes[0][0].get_legend_handles_labels()
    from matplotlib.lines import Line2D

    handles += [
        Line2D([], [], color="0.3", lw=0.8, ls="--"),
        Line2D([], [], color="0.5", lw=0.8, ls=":"),
        Line2D([], [], color="black", marker="*", ms=10, ls="none"),
    ]
    labels += [
        "target 0.97 (median, gaussian)",
        "target 0.95 (best method)",
        "paper Table 5 (30 %, gaussian, no rejection),\n  as a ratio to its clean 94.7 %",
    ]
    fig.legend(handles, labels, loc="outside right upper", fontsize=8)
    clean_f = float(_need(report, "clean"))
    clean_c = float(_need(report, "clean_codes"))
    fig.suptitle(
        "Consensus retrieval accuracy under Byzantine submitters, as a ratio to the same "
        "method without attackers\n"
        f"(clean accuracy of the median: floats {clean_f:.3f}, codes {clean_c:.3f}; "
        f"{report.get('experiences', '?')} experiences x {report.get('submitters', '?')} "
        "submitters; solid: the node's rule with outlier rejection)",
        fontsize=10,
    )
    _caption(fig, [report])
    return _save(fig, path)


def _paper_points(ax: Axes) -> None:
    x = PAPER_TABLE5["fraction"]
    clean = PAPER_TABLE5["clean"]
    for method, dy in (("mean", -0.09), ("median", -0.13)):
        y = PAPER_TABLE5[method] / clean
        colour = METHOD_STYLE[method][0]
        ax.plot([x], [y], marker="*", ms=12, color=colour, mec="black", mew=0.6, ls="none")
        ax.annotate(
            f"paper {method} {100 * PAPER_TABLE5[method]:.1f}%\n(clean {100 * clean:.1f}%)",
            (x, y),
            xytext=(x + 0.01, y + dy),
            fontsize=6.5,
            color=colour,
        )


# ------------------------------------------------------------------------------- retrieval


def plot_retrieval(reports: Sequence[Report], path: Path) -> Path:
    """Search latency (p50, p99) and recall@10 vs the number of items, log scale; the index
    beside faiss's exhaustive IndexBinaryFlat; the 20 ms index and 21.5 ms socket targets."""
    runs = sorted(reports, key=lambda r: int(_need(r, "n")))
    if not runs:
        raise PlotDataError("no retrieval report")
    ns = [int(r["n"]) for r in runs]
    fig = _figure(11.0, 4.6)
    ax_lat, ax_rec = fig.subplots(1, 2)

    def series(key: str) -> tuple[list[int], list[float]]:
        pts = [(int(r["n"]), float(r[key])) for r in runs if r.get(key) is not None]
        return [p[0] for p in pts], [p[1] for p in pts]

    for key, label, style in (
        ("p50_ms", "index p50", dict(color="tab:blue", marker="o", ls="-")),
        ("p99_ms", "index p99", dict(color="tab:blue", marker="o", ls="--", mfc="white")),
        (
            "cpu_ms_per_query",
            "index CPU time per query (no waiting for a core)",
            dict(color="tab:cyan", marker="x", ls=":"),
        ),
        ("faiss_p50_ms", "faiss flat p50 (full codes)", dict(color="tab:orange", marker="s")),
        (
            "faiss_prefix_p50_ms",
            "faiss flat p50 (1024-bit prefixes)",
            dict(color="tab:orange", marker="s", ls=":", mfc="white"),
        ),
    ):
        xs, ys = series(key)
        if xs:
            ax_lat.plot(xs, ys, label=label, lw=1.5, **style)
    big = runs[-1]
    if big.get("p50_ms") and big.get("faiss_p50_ms"):
        ratio = float(big["p50_ms"]) / float(big["faiss_p50_ms"])
        ax_lat.annotate(
            f"at {int(big['n']):,} items:\nindex p50 = {ratio:.2f} x faiss flat p50\n(same run)",
            (0.97, 0.40),
            xycoords="axes fraction",
            ha="right",
            fontsize=7,
            color="tab:blue",
        )
    xs, ys = series("socket_p50_ms")
    if xs:
        ax_lat.plot(
            xs, ys, ls="none", marker="P", ms=9, color="tab:red", label="socket p50 (text query)"
        )
    ax_lat.axhline(RETRIEVAL_P50_TARGET_MS, color="tab:blue", lw=0.9, ls="-.")
    ax_lat.axhline(SOCKET_P50_TARGET_MS, color="tab:red", lw=0.9, ls="-.")
    left = min(ns)
    for target, text, colour, dy in (
        (RETRIEVAL_P50_TARGET_MS, "index p50 target (at 1M)", "tab:blue", -10),
        (SOCKET_P50_TARGET_MS, "socket p50 target (text query)", "tab:red", 3),
    ):
        ax_lat.annotate(
            f"{target:g} ms: {text}",
            (left, target),
            xytext=(2, dy),
            textcoords="offset points",
            fontsize=7,
            color=colour,
        )
    ax_lat.set_xscale("log")
    ax_lat.set_yscale("log")
    ax_lat.set_xlabel("items in the index")
    ax_lat.set_ylabel("ms per query (one at a time)")
    ax_lat.set_title("Search latency")
    ax_lat.grid(alpha=0.25, which="both")
    _node_ticks(ax_lat, ns)
    ax_lat.legend(fontsize=7, loc="lower right")

    for key, label, style in (
        ("recall_at_10", "index (rescored)", dict(color="tab:blue", marker="o")),
        (
            "faiss_recall_at_10_hamming_only",
            "faiss flat (Hamming only)",
            dict(color="tab:orange", marker="s"),
        ),
    ):
        xs, ys = series(key)
        if xs:
            ax_rec.plot(xs, ys, label=label, lw=1.5, **style)
    ax_rec.axhline(RECALL_TARGET, color="tab:blue", lw=0.9, ls="-.")
    ax_rec.annotate(
        f"target {RECALL_TARGET:g}",
        (left, RECALL_TARGET),
        xytext=(0, -10),
        textcoords="offset points",
        fontsize=7,
        color="tab:blue",
    )
    ax_rec.set_xscale("log")
    _node_ticks(ax_rec, ns)
    ax_rec.set_ylim(0.0, 1.05)
    ax_rec.set_xlabel("items in the index")
    ax_rec.set_ylabel("recall@10 vs exhaustive asymmetric scoring")
    ax_rec.set_title("Recall@10")
    ax_rec.grid(alpha=0.25, which="both")
    ax_rec.legend(fontsize=7, loc="lower left")
    fig.suptitle(
        "Code index over 964-byte BitDelta codes vs faiss exhaustive scan (1 thread)", fontsize=10
    )
    _caption(fig, runs)
    return _save(fig, path)


# ------------------------------------------------------------------------- network, simulate


def _cdf(points: Any) -> tuple[list[float], list[float]]:
    """[[percentile, ms], ...] -> (ms, fraction); zero and negative times kept off a log axis."""
    xs, ys = [], []
    for q, ms in points or []:
        xs.append(max(float(ms), 0.01))
        ys.append(float(q) / 100.0)
    return xs, ys


def plot_network(network: Report | None, simulations: Sequence[Report], path: Path) -> Path:
    """Delivery latency CDF per N and gossip cost per item per node vs N: the real
    multi-process runs (`bench network`) and the simulator (`bench simulate`) on one chart."""
    if network is None and not simulations:
        raise PlotDataError("neither a network nor a simulate report")
    real_runs = sorted((network or {}).get("runs", []), key=lambda r: int(r["nodes"]))
    if real_runs:
        fig = _figure(13.0, 4.8)
        ax_cdf, ax_bytes, ax_msgs = fig.subplots(1, 3, width_ratios=[1.6, 1, 1])
    else:  # the simulator models no bytes: no bytes panel without a real run
        fig = _figure(10.0, 4.8)
        ax_cdf, ax_msgs = fig.subplots(1, 2, width_ratios=[1.6, 1])
    colours = ["tab:blue", "tab:orange", "tab:green", "tab:red", "tab:purple", "tab:brown"]
    all_n = sorted(
        {int(r["nodes"]) for r in (network or {}).get("runs", [])}
        | {int(n) for s in simulations for n in _need(s, "by_nodes")}
    )
    colour_of = {n: colours[i % len(colours)] for i, n in enumerate(all_n)}
    for r in real_runs:
        n = int(r["nodes"])
        xs, ys = _cdf(r.get("latency_cdf_ms"))
        if xs:
            ax_cdf.plot(
                xs,
                ys,
                color=colour_of[n],
                lw=2,
                label=f"real {n} nodes ({100 * float(r['delivered_fraction']):.1f}% delivered)",
            )
    for s in simulations:
        model = _need(s, "model")
        hop = float(model["hop_ms_median"])
        style = ":" if hop >= 1 else "--"
        for n_text, fig_n in sorted(_need(s, "by_nodes").items(), key=lambda kv: int(kv[0])):
            xs, ys = _cdf(fig_n.get("delivery_cdf_ms"))
            if xs:
                ax_cdf.plot(
                    xs,
                    ys,
                    color=colour_of[int(n_text)],
                    lw=1.4,
                    ls=style,
                    label=f"sim {int(n_text):,} nodes, hop {hop:g} ms",
                )
    ax_cdf.axvline(DELIVERY_P99_TARGET_MS, color="0.3", lw=0.9, ls="-.")
    ax_cdf.axhline(0.99, color="0.6", lw=0.6, ls=":")
    ax_cdf.annotate(
        "p99 target 2 s",
        (DELIVERY_P99_TARGET_MS, 0.5),
        xytext=(-4, 0),
        textcoords="offset points",
        rotation=90,
        ha="right",
        fontsize=7,
    )
    ax_cdf.set_xscale("log")
    ax_cdf.set_ylim(0, 1.01)
    ax_cdf.set_xlabel("delivery latency, ms (node's store - author's store)")
    ax_cdf.set_ylabel("fraction of (experience, node) deliveries")
    ax_cdf.set_title("Delivery latency CDF (solid: real processes; dashed/dotted: simulator)")
    ax_cdf.title.set_fontsize(9)
    ax_cdf.grid(alpha=0.25, which="both")
    ax_cdf.legend(fontsize=6.5, loc="lower right", framealpha=0.95)

    if real_runs:
        real_ns = [int(r["nodes"]) for r in real_runs]
        for key, label, marker in (
            ("bytes_in_per_item_per_node", "gossip payload (real)", "o"),
            ("tcp_bytes_in_per_item_per_node", "all TCP bytes in (real)", "s"),
        ):
            pts = [(x, r.get(key)) for x, r in zip(real_ns, real_runs, strict=True)]
            pts = [(x, float(v)) for x, v in pts if v is not None]
            if pts:
                ax_bytes.plot(*zip(*pts, strict=True), marker=marker, lw=1.5, label=label)
        ax_bytes.legend(fontsize=7)
        ax_bytes.set_xscale("log")
        ax_bytes.set_ylim(bottom=0)
        _node_ticks(ax_bytes, real_ns)
        ax_bytes.set_xlabel("nodes")
        ax_bytes.set_ylabel("bytes received per item per node")
        ax_bytes.set_title("Bytes per item per node (the simulator models no bytes)", fontsize=9)
        ax_bytes.grid(alpha=0.25, which="both")

    if real_runs:
        pts = [
            (int(r["nodes"]), float(r["msgs_in_per_item_per_node"]))
            for r in real_runs
            if r.get("msgs_in_per_item_per_node") is not None
        ]
        if pts:
            ax_msgs.plot(
                *zip(*pts, strict=True), marker="o", lw=2, color="black", label="real (all msgs)"
            )
    for s in simulations:
        hop = float(_need(s, "model", "hop_ms_median"))
        items = sorted(_need(s, "by_nodes").items(), key=lambda kv: int(kv[0]))
        xs = [int(k) for k, _ in items]
        ax_msgs.plot(
            xs,
            [float(v["msgs_per_node_per_experience"]) for _, v in items],
            marker="^",
            color="0.5" if hop >= 1 else "0.25",
            ls=":" if hop >= 1 else "--",
            label=f"sim, hop {hop:g} ms (experience msg, dups incl.)",
        )
    ax_msgs.set_xscale("log")
    _node_ticks(ax_msgs, all_n)
    ax_msgs.set_ylim(bottom=0)
    ax_msgs.set_xlabel("nodes")
    ax_msgs.set_ylabel("gossip messages per item per node")
    ax_msgs.set_title("Messages per item per node", fontsize=9)
    ax_msgs.grid(alpha=0.25, which="both")
    ax_msgs.legend(fontsize=6.5)
    fig.suptitle(
        "Gossip at scale: real `dsonode run` processes on loopback beside the simulator",
        fontsize=10,
    )
    _caption(fig, ([network] if network else []) + list(simulations))
    return _save(fig, path)


def _node_ticks(ax: Axes, ns: Sequence[int]) -> None:
    """Plain tick labels at the node counts run, on a log axis."""
    from matplotlib.ticker import NullFormatter

    ax.set_xticks(list(ns), [f"{n:,}" for n in ns])
    ax.xaxis.set_minor_formatter(NullFormatter())


def plot_simulate(report: Report, path: Path) -> Path:
    return plot_network(None, [report], path)


# ----------------------------------------------------------------------------------- embed


@dataclass(frozen=True)
class Representation:
    """One bar: nDCG@10 of a representation and, when measured, the paired bootstrap 95 %
    interval of its difference to the baseline representation."""

    name: str
    ndcg10: float
    diff_ci95: tuple[float, float] | None = None


def plot_representations(
    rows: Sequence[Representation], baseline: str, title: str, path: Path, reports: Sequence[Report]
) -> Path:
    """nDCG@10 per representation (left) and its difference to `baseline` with the 95 %
    interval as error bars (right). General on purpose: `bench embed` and `bench head`
    (encoder / seeded / trained head, prefixes, codes) both reduce to these rows."""
    if not rows:
        raise PlotDataError("no representation to draw")
    fig = _figure(11.0, 0.9 + 0.42 * len(rows) + 1.2)
    ax_abs, ax_diff = fig.subplots(1, 2, sharey=True)
    ys = list(range(len(rows)))[::-1]
    names = [r.name for r in rows]
    vals = [r.ndcg10 for r in rows]
    colours = ["0.55" if r.name == baseline else "tab:blue" for r in rows]
    ax_abs.barh(ys, vals, color=colours)
    for y, v in zip(ys, vals, strict=True):
        ax_abs.text(v, y, f" {v:.4f}", va="center", fontsize=8)
    ax_abs.set_yticks(ys, names)
    ax_abs.set_xlim(0, max(vals) * 1.18)
    ax_abs.set_xlabel("nDCG@10")
    ax_abs.set_title("nDCG@10 (grey: baseline)", fontsize=9)
    ax_abs.grid(alpha=0.25, axis="x")
    for y, r in zip(ys, rows, strict=True):
        if r.name == baseline:
            ax_diff.annotate(
                "baseline",
                (0, y),
                xytext=(4, 0),
                textcoords="offset points",
                va="center",
                fontsize=8,
                color="0.45",
            )
            continue
        base = next((b.ndcg10 for b in rows if b.name == baseline), None)
        d = r.ndcg10 - base if base is not None else None
        if r.diff_ci95 is not None and d is not None:
            lo, hi = r.diff_ci95
            significant = lo > 0 or hi < 0
            ax_diff.errorbar(
                [d],
                [y],
                xerr=[[max(d - lo, 0.0)], [max(hi - d, 0.0)]],
                fmt="o",
                color="tab:red" if significant else "tab:blue",
                capsize=4,
            )
        elif d is not None:
            ax_diff.plot([d], [y], marker="o", color="tab:blue")
    ax_diff.axvline(0, color="0.3", lw=0.8)
    ax_diff.set_xlabel("difference in nDCG@10 (95% CI, paired bootstrap)")
    ax_diff.set_title("Difference to the baseline (red: interval excludes 0)", fontsize=9)
    ax_diff.grid(alpha=0.25, axis="x")
    fig.suptitle(title, fontsize=10)
    _caption(fig, reports)
    return _save(fig, path)


EMBED_LABELS = {
    "encoder": "encoder (384-d float)",
    "native": "native (7680-d float)",
    "prefix_1024": "prefix_1024 (renormalised)",
    "native_search_path": "native, search-path queries",
    "code_1bit": "code_1bit (Hamming, 964 B)",
    "code_rescored": "code_rescored (Hamming top-100 + float)",
}


def plot_embed(report: Report, path: Path) -> Path:
    quality = _need(report, "quality")
    rows = []
    for name, q in quality.items():
        ci = q.get("ndcg10_diff_vs_encoder_ci95")
        rows.append(
            Representation(
                EMBED_LABELS.get(name, name),
                float(q["ndcg10"]),
                (float(ci[0]), float(ci[1])) if ci else None,
            )
        )
    title = (
        f"Retrieval quality per representation on Vaswani ({report.get('docs', '?')} documents, "
        f"{report.get('judged_queries', report.get('queries', '?'))} judged queries)"
    )
    return plot_representations(rows, EMBED_LABELS["encoder"], title, path, [report])


HEAD_ROWS = (  # (label, top-level key of the `bench head` report)
    ("encoder (384-d float)", "encoder_ndcg10"),
    ("seeded head (7680-d)", "seeded_ndcg10"),
    ("seeded, prefix 1024", "seeded_prefix1024_ndcg10"),
    ("seeded, code rescored", "seeded_code_rescored_ndcg10"),
    ("trained head (7680-d)", "trained_ndcg10"),
    ("trained, prefix 1024", "trained_prefix1024_ndcg10"),
    ("trained, code 1-bit", "trained_code_1bit_ndcg10"),
    ("trained, code rescored", "trained_code_rescored_ndcg10"),
)


def plot_head(report: Report, path: Path) -> Path:
    """`bench head`: nDCG@10 on the held-out queries per representation, against the seeded
    head; the trained head carries the paired bootstrap interval the benchmark measured."""
    ci = report.get("trained_minus_seeded_ci95")
    rows = [
        Representation(
            label,
            float(_need(report, key)),
            (float(ci[0]), float(ci[1])) if key == "trained_ndcg10" and ci else None,
        )
        for label, key in HEAD_ROWS
    ]
    title = (
        f"Projection head on held-out Vaswani queries ({report.get('held_out_queries', '?')} "
        f"held out, {report.get('dev_queries', '?')} for training); baseline: the seeded head"
    )
    return plot_representations(rows, HEAD_ROWS[1][0], title, path, [report])


# ---------------------------------------------------------------------------------- faults


def plot_faults(report: Report, path: Path) -> Path:
    """Hostile peers (`qa.faults` flood part): seconds until each honest node graylisted each
    kind of hostile peer, and the honest experiences delivered during the attack, per run."""
    flood = report.get("flood")
    if not flood or not flood.get("details"):
        raise PlotDataError("the report has no hostile-peer runs (flood.details)")
    runs = flood["details"]
    kinds = list(runs[0].get("modes") or runs[0]["peers"])
    fig = _figure(10.5, 4.4)
    ax_gl, ax_del = fig.subplots(1, 2, width_ratios=[1.8, 1])
    run_colours = ["tab:blue", "tab:orange", "tab:purple", "tab:brown", "tab:pink"]
    for k, kind in enumerate(kinds):
        times: list[float] = []
        never = 0
        for j, r in enumerate(runs):
            peer = r["peers"].get(kind, {})
            per_node = [float(t) for t in (peer.get("graylist_s") or {}).values()]
            times += per_node
            never += len(r.get("nodes", {})) - len(per_node)
            offset = 0.25 * (j - (len(runs) - 1) / 2) / max(1, len(runs) - 1)
            ax_gl.plot(
                [k + offset] * len(per_node),
                [max(t, 0.01) for t in per_node],
                "o",
                ms=4,
                alpha=0.75,
                color=run_colours[j % len(run_colours)],
                label=f"run {j + 1}" if k == 0 else None,
            )
        if times:
            med = sorted(times)[len(times) // 2]
            ax_gl.plot([k - 0.3, k + 0.3], [med, med], color="black", lw=2)
        sent = [((r["peers"].get(kind, {}).get("sent") or {}).get("msgs")) for r in runs]
        label = (
            f"{len(times)} graylistings"
            + (f", {never} never" if never else "")
            + "\nmsgs sent per run:\n"
            + ", ".join("?" if m is None else str(m) for m in sent)
        )
        ax_gl.annotate(
            label,
            (k, 0.012),
            ha="center",
            fontsize=7,
            color="tab:red" if never else "0.3",
        )
    ax_gl.axhline(GRAYLIST_TARGET_S, color="tab:red", lw=0.9, ls="-.")
    ax_gl.annotate(
        f"target {GRAYLIST_TARGET_S:g} s (flooder)",
        (-0.45, GRAYLIST_TARGET_S),
        xytext=(0, 3),
        textcoords="offset points",
        fontsize=7,
        color="tab:red",
    )
    ax_gl.set_xticks(range(len(kinds)), kinds)
    ax_gl.set_xlim(-0.5, len(kinds) - 0.5)
    ax_gl.set_yscale("log")
    ax_gl.set_ylim(0.008, 100)
    ax_gl.set_ylabel("s from attack start to graylisted")
    ax_gl.set_xlabel("hostile peer kind (dots: one honest node in one run; bar: median)")
    ax_gl.set_title("Time to graylist", fontsize=9)
    ax_gl.grid(alpha=0.25, axis="y", which="both")
    ax_gl.legend(fontsize=7, loc="upper right")

    fracs = [r.get("flood_honest_delivered_fraction") for r in runs]
    xs = list(range(1, len(runs) + 1))
    ax_del.bar(xs, [float(f) if f is not None else 0.0 for f in fracs], color="tab:green")
    for x, f, r in zip(xs, fracs, runs, strict=True):
        text = "n/a" if f is None else f"{float(f):.3f}\n({r.get('honest_items', '?')} items)"
        ax_del.text(x, 0.05, text, ha="center", fontsize=7, color="white" if f else "black")
    ax_del.axhline(DELIVERED_TARGET, color="tab:red", lw=0.9, ls="-.")
    ax_del.set_ylim(0, 1.08)
    ax_del.set_xticks(xs, [f"run {x}" for x in xs])
    ax_del.set_ylabel("honest experiences at every honest node")
    ax_del.set_title(f"Honest delivery under attack (target {DELIVERED_TARGET:g})", fontsize=9)
    fig.suptitle(
        f"Hostile peers: {flood.get('nodes', '?')} honest nodes, all {len(kinds)} kinds at "
        f"once for {runs[0].get('duration_s', '?')} s, {len(runs)} runs",
        fontsize=10,
    )
    _caption(fig, [report])
    return _save(fig, path)


# ------------------------------------------------------------------------ registry and CLI


@dataclass(frozen=True)
class FigureSpec:
    """One picture of docs/bench/: the JSON files it is drawn from and how."""

    png: str
    sources: tuple[str, ...]  # glob patterns in the saved-JSON folder
    draw: Callable[[list[tuple[str, Report]], Path], Path]


def _first(loaded: list[tuple[str, Report]], prefix: str) -> Report | None:
    return next((r for name, r in loaded if name.startswith(prefix)), None)


FIGURES: tuple[FigureSpec, ...] = (
    FigureSpec(
        "byzantine.png",
        ("byzantine.json",),
        lambda loaded, p: plot_byzantine(loaded[0][1], p),
    ),
    FigureSpec(
        "retrieval.png",
        ("retrieval-n*.json",),
        lambda loaded, p: plot_retrieval([r for _, r in loaded], p),
    ),
    FigureSpec(
        "network.png",
        ("network.json", "simulate*.json"),
        lambda loaded, p: plot_network(
            _first(loaded, "network"), [r for n, r in loaded if n.startswith("simulate")], p
        ),
    ),
    FigureSpec("embed.png", ("embed.json",), lambda loaded, p: plot_embed(loaded[0][1], p)),
    FigureSpec("head.png", ("head.json",), lambda loaded, p: plot_head(loaded[0][1], p)),
    FigureSpec("faults.png", ("faults.json",), lambda loaded, p: plot_faults(loaded[0][1], p)),
)


def load_reports(src: Path, patterns: Sequence[str]) -> list[tuple[str, Report]]:
    """(file name, parsed JSON) of every file matching the patterns, in name order."""
    out = []
    for pattern in patterns:
        for f in sorted(src.glob(pattern)):
            try:
                data = json.loads(f.read_text(encoding="utf-8"))
            except (OSError, ValueError) as exc:
                raise PlotDataError(f"{f}: not readable JSON ({exc})") from exc
            if not isinstance(data, dict):
                raise PlotDataError(f"{f}: not a JSON object")
            out.append((f.name, data))
    return out


def render_all(src: Path, out: Path) -> list[Path]:
    """Every picture whose JSON is present in `src`, written to `out`; skipped ones are said."""
    written = []
    for spec in FIGURES:
        loaded = load_reports(src, spec.sources)
        if not loaded:
            print(f"skip {spec.png}: no {', '.join(spec.sources)} in {src}", file=sys.stderr)
            continue
        written.append(spec.draw(loaded, out / spec.png))
    return written


def plot_report(name: str, report: Report, path: Path) -> Path:
    """`--plot` of one benchmark run. A retrieval run is drawn with the runs saved in
    docs/bench/ for other sizes (this run replaces the saved one of its own size), so the
    picture is a curve; network and simulate runs are drawn alone."""
    if name == "byzantine":
        return plot_byzantine(report, path)
    if name == "retrieval":
        from dsonode.bench.common import SAVE_DIR

        saved = [r for _, r in load_reports(SAVE_DIR, ("retrieval-n*.json",))]
        others = [r for r in saved if r.get("n") != report.get("n")]
        return plot_retrieval([*others, report], path)
    if name == "network":
        return plot_network(report, [], path)
    if name == "simulate":
        return plot_simulate(report, path)
    if name == "embed":
        return plot_embed(report, path)
    if name == "head":
        return plot_head(report, path)
    if name == "faults":
        return plot_faults(report, path)
    raise PlotDataError(f"no picture is defined for bench {name!r}")


def main(argv: Sequence[str] | None = None) -> int:
    from dsonode.bench.common import SAVE_DIR

    parser = argparse.ArgumentParser(
        prog="python -m dsonode.bench.plots",
        description="redraw every benchmark picture from the saved JSON (make plots)",
    )
    parser.add_argument("--src", type=Path, default=SAVE_DIR, help="saved JSON (docs/bench)")
    parser.add_argument("--out", type=Path, default=None, help="PNG folder (default: --src)")
    args = parser.parse_args(argv)
    try:
        for p in render_all(args.src, args.out or args.src):
            print(p)
    except DsoError as exc:
        print(f"plots: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())


__all__ = [
    "FIGURES",
    "PlotDataError",
    "PlotsUnavailable",
    "Representation",
    "plot_byzantine",
    "plot_embed",
    "plot_faults",
    "plot_network",
    "plot_report",
    "plot_representations",
    "plot_retrieval",
    "plot_simulate",
    "render_all",
    "require_matplotlib",
]
