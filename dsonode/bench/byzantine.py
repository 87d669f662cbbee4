"""`dsonode bench byzantine`: retrieval accuracy of the consensus under Byzantine submitters.

A synthetic reproduction of the paper's Table 5, in the native 7680-d space:

* Experiences come in clusters of related ones (sibling cosine ~0.9), so picking the right
  one among its siblings is not trivial.
* Each experience gets `submitters` submissions: honest ones are its true vector plus Gaussian
  noise N(0, sigma^2) per coordinate (sigma = HONEST_NOISE / sqrt(d), cosine ~0.96 to the
  truth); under attack, floor(fraction * submitters) of them are replaced by attackers.
* Accuracy = share of noisy queries (QUERIES_PER_EXPERIENCE per experience, cosine ~0.12 to
  the truth) whose top-1 consensus vector, by cosine, is their own experience. `clean` is the
  accuracy when every submitter is honest (all methods agree to within 0.001 there).

Attacks (attackers know the truth and, where the attack needs it, the honest submissions):

* ``gaussian``: truth + N(0, 10 sigma^2) per coordinate, as in the paper.
* ``sign_flip``: the attacker's own honest-looking submission, negated.
* ``alie``: "A Little Is Enough" (Baruch et al., NeurIPS 2019), designed to slip past median
  and trimmed-mean defences: every attacker sends mu - z_max * std per coordinate of the
  honest submissions, z_max = Phi^-1((n - s) / n), s = floor(n / 2 + 1) - f.
* ``ipm``: inner product manipulation (Xie et al., UAI 2019): -eps * mean of the honest
  submissions, eps = 0.1.
* ``mimic``: not from the literature, the attack that matters for retrieval: the attackers
  collude and all submit the true vector of a sibling experience (same cluster), to make one
  experience's consensus point at another.

Every method runs with the node's rule (rows normalised, outlier rejection, recompute);
`mean` is the vulnerable estimator. `attacks_raw` repeats `mean` and `median` with rejection
off, to show what the rule itself buys. `detection` gives the precision and recall of the
rejected rows as a detector of attackers (precision is null when nothing was flagged). The
`_codes` variants run the pipeline the network runs: submissions travel as 964-byte BitDelta
codes, attackers craft codes from the decoded honest codes they see, the node aggregates the
decoded codes (`aggregate_codes`) and queries score the consensus codes (decode(code) @ q,
which is what `asymmetric_scores` computes; checked on one key each run). `targets` holds each
accuracy over the clean accuracy of the same method and pipeline, and the issue's targets.

`--paper-setting` (`run_paper`) runs Table 5 as the paper did: mean and median with no row
normalisation and no rejection, 30% attackers drawing N(0, 10 sigma^2), under three readings of
sigma, beside the paper's figures (BENCHMARKS.md "byzantine, paper setting").
"""

from __future__ import annotations

import argparse
import math
import statistics
import sys
import time
from typing import Any

import numpy as np

from dsonode.argtypes import SubParsers, bounded_int
from dsonode.bench.common import add_output_args, code_rows, report
from dsonode.core import attacks, bitdelta
from dsonode.core.aggregate import aggregate, aggregate_codes
from dsonode.core.constants import CODE_BYTES, DIM

METHODS = ("mean", "median", "trimmed_mean", "geometric_median")
ATTACKS = ("gaussian", "sign_flip", "alie", "ipm", "mimic")
RAW_METHODS = ("mean", "median")

# The synthetic task (fixed before any attack was measured; see BENCHMARKS.md).
CLUSTER_SIZE = 10
SIBLING_COS = 0.9  # cosine between the true vectors of two experiences of one cluster
HONEST_NOISE = 0.3  # relative noise of an honest submission (cosine ~0.958 to the truth)
QUERY_NOISE = 8.0  # relative noise of a query: clean float accuracy ~0.94, not a trivial 1.0
QUERIES_PER_EXPERIENCE = 20  # many queries: accuracy to about +-0.01
GAUSSIAN_VAR_FACTOR = 10.0  # the paper's N(0, 10 sigma^2)
IPM_EPS = attacks.IPM_EPS  # the same epsilon a live Byzantine node uses

# Bounds of the command line (memory: the queries take 20 * experiences * 30 KiB).
MAX_EXPERIENCES = 500
MAX_FRACTIONS = 5

# Targets of the issue.
TARGET_MEDIAN_GAUSSIAN = 0.97
TARGET_BEST = 0.95


def _unit_rows(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def alie_z(n: int, f: int) -> float:
    """z_max of "A Little Is Enough" for n submitters of which f are Byzantine."""
    s = math.floor(n / 2 + 1) - f
    p = (n - s) / n
    p = min(max(p, 1e-6), 1 - 1e-6)
    return statistics.NormalDist().inv_cdf(p)


def make_task(experiences: int, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """True vectors (N, d), queries (N * q, d) and each query's experience index."""
    rng = np.random.default_rng([seed, 1])
    n_clusters = math.ceil(experiences / CLUSTER_SIZE)
    centers = _unit_rows(rng.standard_normal((n_clusters, DIM)))
    cluster = np.arange(experiences) // CLUSTER_SIZE
    own = _unit_rows(rng.standard_normal((experiences, DIM)))
    truth = _unit_rows(math.sqrt(SIBLING_COS) * centers[cluster] + math.sqrt(1 - SIBLING_COS) * own)
    labels = np.repeat(np.arange(experiences), QUERIES_PER_EXPERIENCE)
    noise = rng.standard_normal((labels.size, DIM)) * (QUERY_NOISE / math.sqrt(DIM))
    queries = _unit_rows(truth[labels] + noise).astype(np.float32)
    return truth, queries, labels


def attack_rows(
    attack: str,
    f: int,
    truth: np.ndarray,
    honest: np.ndarray,
    own: np.ndarray,
    sibling: np.ndarray,
    rng: np.random.Generator,
) -> np.ndarray:
    """The f rows the attackers submit for one experience.

    `honest`: the honest submissions the attackers can see (floats, or decoded codes);
    `own`: f honest-looking submissions of the attackers' own; `sibling`: the true vector of
    another experience of the same cluster.
    """
    sigma = HONEST_NOISE / math.sqrt(DIM)
    if attack == "gaussian":
        noise = rng.standard_normal((f, DIM)) * (sigma * math.sqrt(GAUSSIAN_VAR_FACTOR))
        return truth + noise
    if attack == "sign_flip":
        return -own
    if attack == "alie":
        n = honest.shape[0] + f
        row = honest.mean(axis=0) - alie_z(n, f) * honest.std(axis=0)
        return np.tile(row, (f, 1))
    if attack == "ipm":
        return np.tile(-IPM_EPS * honest.mean(axis=0), (f, 1))
    if attack == "mimic":
        return np.tile(sibling, (f, 1))
    raise ValueError(f"unknown attack {attack!r}")


class _TopOne:
    """Running top-1 (by dot product) of every query over candidates added in index order."""

    BLOCK = 16

    def __init__(self, queries: np.ndarray):
        self.queries = queries
        self.best = np.full(len(queries), -np.inf, dtype=np.float32)
        self.arg = np.zeros(len(queries), dtype=np.int64)
        self.buf = np.empty((self.BLOCK, queries.shape[1]), dtype=np.float32)
        self.start = 0
        self.fill = 0

    def add(self, vector: np.ndarray) -> None:
        self.buf[self.fill] = vector
        self.fill += 1
        if self.fill == self.BLOCK:
            self.flush()

    def flush(self) -> None:
        if not self.fill:
            return
        scores = self.queries @ self.buf[: self.fill].T
        idx = np.argmax(scores, axis=1)
        val = scores[np.arange(len(idx)), idx]
        better = val > self.best  # strict: on a tie the earlier candidate wins, like argmax
        self.best[better] = val[better]
        self.arg[better] = self.start + idx[better]
        self.start += self.fill
        self.fill = 0

    def accuracy(self, labels: np.ndarray) -> float:
        self.flush()
        return float(np.mean(self.arg == labels))


def _detection(flagged: int, true_pos: int, attackers: int) -> dict[str, float | None]:
    return {
        "precision": true_pos / flagged if flagged else None,
        "recall": true_pos / attackers if attackers else None,
    }


def run(
    fractions: list[float],
    experiences: int,
    submitters: int,
    seed: int,
    attacks: tuple[str, ...] = ATTACKS,
) -> dict[str, Any]:
    t0 = time.perf_counter()
    truth, queries, labels = make_task(experiences, seed)
    sigma = HONEST_NOISE / math.sqrt(DIM)
    counts = {fr: math.floor(fr * submitters + 1e-9) for fr in fractions}
    scenarios = [("clean", 0.0)] + [(a, fr) for fr in fractions for a in attacks]

    # Running top-1 of every query per (attack, fraction, method, pipeline): consensus vectors
    # are scored block by block as experiences are done, so memory stays bounded.
    top: dict[tuple, _TopOne] = {}
    flags: dict[tuple, list[int]] = {}  # (*key, pipeline) -> [flagged, true pos, honest flagged]
    probe_codes = np.empty((experiences, CODE_BYTES), np.uint8)

    def tracker(key: tuple) -> _TopOne:
        if key not in top:
            top[key] = _TopOne(queries)
        return top[key]

    for j in range(experiences):
        rng = np.random.default_rng([seed, 2, j])
        honest_all = truth[j] + rng.standard_normal((submitters, DIM)) * sigma
        codes_all = code_rows(bitdelta.encode(honest_all.astype(np.float32)))
        decoded_all = bitdelta.decode(codes_all).astype(np.float64)
        # The mimic target: the next experience of the same cluster.
        start = (j // CLUSTER_SIZE) * CLUSTER_SIZE
        size = min(CLUSTER_SIZE, experiences - start)
        sibling = truth[start + (j - start + 1) % size]
        for attack, fr in scenarios:
            f = counts[fr] if attack != "clean" else 0
            h = submitters - f
            if f:
                a_id = ATTACKS.index(attack)
                # The attackers' own honest-looking submissions are the rows they replace.
                rows = attack_rows(
                    attack,
                    f,
                    truth[j],
                    honest_all[:h],
                    honest_all[h:],
                    sibling,
                    np.random.default_rng([seed, 3, j, a_id]),
                )
                x = np.vstack([honest_all[:h], rows])
                # On the wire they see decoded codes and must send codes.
                crows = attack_rows(
                    attack,
                    f,
                    truth[j],
                    decoded_all[:h],
                    decoded_all[h:],
                    sibling,
                    np.random.default_rng([seed, 4, j, a_id]),
                )
                c = np.vstack([codes_all[:h], bitdelta.encode(crows.astype(np.float32))])
            else:
                x, c = honest_all, codes_all
            is_attacker = np.arange(submitters) >= h
            for method in METHODS:
                key = (attack, fr, method)
                res = aggregate(x, method, trim=_trim(fr))
                cres = aggregate_codes(c, method=method, trim=_trim(fr))
                tracker((*key, "float")).add(res.consensus)
                # decode(code) @ q is what bitdelta.asymmetric_scores computes code by code
                # (checked below); a matrix product over decoded blocks is much faster here.
                tracker((*key, "codes")).add(bitdelta.decode(cres.code))
                if key == ("clean", 0.0, "median"):
                    assert cres.code is not None  # aggregate_codes always sets it
                    probe_codes[j] = np.frombuffer(cres.code, np.uint8)
                for pipe, r in (("float", res), ("codes", cres)):
                    tally = flags.setdefault((*key, pipe), [0, 0, 0])
                    rejected = ~r.accepted
                    tally[0] += int(rejected.sum())
                    tally[1] += int((rejected & is_attacker).sum())
                    tally[2] += int((rejected & ~is_attacker).sum())
            for method in RAW_METHODS:
                res = aggregate(x, method, reject=False)
                tracker((attack, fr, method, "raw")).add(res.consensus)

    def acc(key: tuple) -> float:
        return top[key].accuracy(labels)

    check = _TopOne(queries)
    for code in probe_codes:
        check.add(bitdelta.decode(code.tobytes()))
    check.flush()
    via_asymmetric = np.array(
        [np.argmax(bitdelta.asymmetric_scores(q, probe_codes)) for q in queries[:200]]
    )
    asym_agree = float(np.mean(via_asymmetric == check.arg[:200]))

    def block(fr: float, pipe: str) -> dict[str, Any]:
        f = counts[fr]
        out: dict[str, Any] = {"attacks": {}, "detection": {}}
        for attack in attacks:
            accs = {}
            det = {}
            for method in METHODS:
                key = (attack, fr, method)
                accs[method] = acc((*key, pipe))
                flagged, tp, _ = flags[(*key, pipe)]
                det[method] = _detection(flagged, tp, f * experiences)
            out["attacks"][attack] = accs
            out["detection"][attack] = det
        return out

    clean = {m: acc(("clean", 0.0, m, "float")) for m in METHODS}
    clean_codes = {m: acc(("clean", 0.0, m, "codes")) for m in METHODS}
    clean_rejected = {
        pipe: {m: flags[("clean", 0.0, m, pipe)][2] / (submitters * experiences) for m in METHODS}
        for pipe in ("float", "codes")
    }
    runs = []
    for fr in fractions:
        fl, cd = block(fr, "float"), block(fr, "codes")
        raw_acc = {a: {m: acc((a, fr, m, "raw")) for m in RAW_METHODS} for a in attacks}
        entry = {
            "fraction": fr,
            "attackers_per_experience": counts[fr],
            "trim": _trim(fr),
            "attacks": fl["attacks"],
            "attacks_raw": raw_acc,
            "attacks_codes": cd["attacks"],
            "detection": fl["detection"],
            "detection_codes": cd["detection"],
        }
        entry["targets"] = _targets(clean, entry["attacks"], clean_codes, entry["attacks_codes"])
        runs.append(entry)

    result: dict[str, Any] = {
        "dim": DIM,
        "experiences": experiences,
        "submitters": submitters,
        "queries": int(labels.size),
        "seed": seed,
        "clean": clean["median"],
        "clean_by_method": clean,
        "clean_codes": clean_codes["median"],
        "clean_codes_by_method": clean_codes,
        "clean_honest_rejected": clean_rejected,
        "clean_raw": {m: acc(("clean", 0.0, m, "raw")) for m in RAW_METHODS},
        # Share of (up to 200) queries whose top-1 over the clean median codes is the same by
        # asymmetric_scores as by decode @ q (the shortcut used above): should be 1.0.
        "asymmetric_top1_agreement": asym_agree,
    }
    if len(runs) == 1:
        result.update(runs[0])
    else:
        result["fractions"] = fractions
        result["by_fraction"] = {str(r["fraction"]): r for r in runs}
    result["seconds"] = round(time.perf_counter() - t0, 2)
    return result


# --------------------------------------------------------------------------------------------
# --paper-setting: Table 5 as the paper ran it

# The paper's Table 5 (accuracy, 30% attackers drawing N(0, 10 sigma^2)): the mean, the
# median, and the accuracy with no attack (92.1 / 94.7 = 0.973 is where this bench's
# TARGET_MEDIAN_GAUSSIAN of 0.97 comes from).
PAPER_TABLE5 = {"mean": 0.613, "median": 0.921, "no_attack": 0.947}
PAPER_FRACTION = 0.3
PAPER_METHODS = ("mean", "median")
# The paper does not say what sigma is nor whether the noise is added to the truth; each
# reading is run (BENCHMARKS.md "byzantine", paper setting):
# - truth_plus_noise: truth + N(0, 10 sigma_h^2), sigma_h = the honest noise per coordinate
#   (the default bench's `gaussian`),
# - noise_honest_sigma: N(0, 10 sigma_h^2) alone (the attacker row carries no signal),
# - noise_embedding_sigma: N(0, 10 sigma_e^2) alone, sigma_e = the per-coordinate standard
#   deviation of the embeddings themselves (1 / sqrt(d) for unit vectors): rows ~3.2x longer
#   than an honest one.
PAPER_READINGS = ("truth_plus_noise", "noise_honest_sigma", "noise_embedding_sigma")


def paper_attack_rows(
    reading: str, f: int, truth: np.ndarray, rng: np.random.Generator
) -> np.ndarray:
    """The f rows of N(0, 10 sigma^2) attackers under one reading of the paper."""
    sigma_h = HONEST_NOISE / math.sqrt(DIM)
    scale = math.sqrt(GAUSSIAN_VAR_FACTOR)
    if reading == "truth_plus_noise":
        return truth + rng.standard_normal((f, DIM)) * (sigma_h * scale)
    if reading == "noise_honest_sigma":
        return rng.standard_normal((f, DIM)) * (sigma_h * scale)
    if reading == "noise_embedding_sigma":
        return rng.standard_normal((f, DIM)) * (float(np.std(truth)) * scale)
    raise ValueError(f"unknown reading {reading!r}")


def run_paper(experiences: int, submitters: int, seed: int) -> dict[str, Any]:
    """Mean and median with no row normalisation and no rejection, 30% N(0, 10 sigma^2)
    attackers, on the same task as `run`; floats and 964-byte codes."""
    t0 = time.perf_counter()
    truth, queries, labels = make_task(experiences, seed)
    sigma = HONEST_NOISE / math.sqrt(DIM)
    f = math.floor(PAPER_FRACTION * submitters + 1e-9)
    h = submitters - f
    top: dict[tuple[str, str, str], _TopOne] = {}

    def add(key: tuple[str, str, str], vector: np.ndarray) -> None:
        if key not in top:
            top[key] = _TopOne(queries)
        top[key].add(vector)

    for j in range(experiences):
        rng = np.random.default_rng([seed, 2, j])
        honest_all = truth[j] + rng.standard_normal((submitters, DIM)) * sigma
        codes_all = code_rows(bitdelta.encode(honest_all.astype(np.float32)))
        cases: list[tuple[str, np.ndarray, np.ndarray]] = [("clean", honest_all, codes_all)]
        for r_id, reading in enumerate(PAPER_READINGS):
            rows = paper_attack_rows(
                reading, f, truth[j], np.random.default_rng([seed, 5, j, r_id])
            )
            x = np.vstack([honest_all[:h], rows])
            c = np.vstack([codes_all[:h], code_rows(bitdelta.encode(rows.astype(np.float32)))])
            cases.append((reading, x, c))
        for case, x, c in cases:
            for method in PAPER_METHODS:
                res = aggregate(x, method, reject=False, normalize=False)
                cres = aggregate_codes(c, method=method, reject=False, normalize=False)
                add((case, method, "float"), res.consensus)
                add((case, method, "codes"), bitdelta.decode(cres.code))

    def accs(case: str, pipe: str) -> dict[str, float]:
        return {m: top[(case, m, pipe)].accuracy(labels) for m in PAPER_METHODS}

    out: dict[str, Any] = {
        "setting": "paper",
        "dim": DIM,
        "experiences": experiences,
        "submitters": submitters,
        "attackers_per_experience": f,
        "fraction": PAPER_FRACTION,
        "normalize": False,
        "reject": False,
        "queries": int(labels.size),
        "seed": seed,
        "paper": PAPER_TABLE5,
        "paper_ratio_to_no_attack": {
            m: round(PAPER_TABLE5[m] / PAPER_TABLE5["no_attack"], 3) for m in PAPER_METHODS
        },
    }
    for pipe in ("float", "codes"):
        clean = accs("clean", pipe)
        block: dict[str, Any] = {"clean": clean}
        for reading in PAPER_READINGS:
            a = accs(reading, pipe)
            block[reading] = {
                "accuracy": a,
                "ratio_to_clean": {m: a[m] / clean[m] if clean[m] else None for m in a},
            }
        out["floats" if pipe == "float" else "codes"] = block
    out["seconds"] = round(time.perf_counter() - t0, 2)
    return out


def paper_table(result: dict[str, Any]) -> str:
    """The human-readable table: each reading's mean and median beside the paper's figures."""
    p = result["paper"]
    lines = [
        f"Table 5, paper setting: {result['attackers_per_experience']} of "
        f"{result['submitters']} submitters N(0, 10 sigma^2), no row normalisation, no rejection",
        f"{'pipeline / reading':44} {'mean':>7} {'median':>7}",
        f"{'paper (no attack ' + format(p['no_attack'], '.3f') + ')':44} "
        f"{p['mean']:7.3f} {p['median']:7.3f}",
    ]
    for pipe in ("floats", "codes"):
        block = result[pipe]
        cl = block["clean"]
        lines.append(f"{pipe + ' / clean':44} {cl['mean']:7.3f} {cl['median']:7.3f}")
        for reading in PAPER_READINGS:
            a = block[reading]["accuracy"]
            lines.append(f"{pipe + ' / ' + reading:44} {a['mean']:7.3f} {a['median']:7.3f}")
    return "\n".join(lines)


def _trim(fraction: float) -> float:
    """Trim as much as the assumed attacker share (Yin et al. 2018: beta >= alpha), >= 0.1."""
    return min(max(fraction, 0.1), 0.45)


def _targets(
    clean: dict[str, float],
    attacks: dict[str, dict[str, float]],
    clean_codes: dict[str, float],
    attacks_codes: dict[str, dict[str, float]],
) -> dict[str, Any]:
    """Each method's accuracy over clean (of the same method); the issue's targets, met or not."""

    def ratios(
        cl: dict[str, float], at: dict[str, dict[str, float]]
    ) -> dict[str, dict[str, float | None]]:
        # None where the method's clean accuracy is 0: no ratio exists.
        return {
            a: {m: acc / cl[m] if cl[m] else None for m, acc in ms.items()} for a, ms in at.items()
        }

    rf, rc = ratios(clean, attacks), ratios(clean_codes, attacks_codes)

    def verdict(r: dict[str, dict[str, float | None]]) -> dict[str, Any]:
        best = {
            a: max((v for v in ms.values() if v is not None), default=None) for a, ms in r.items()
        }
        out: dict[str, Any] = {
            "best_ratio": best,
            "every_attack_has_a_method_over_0.95": all(
                b is not None and b >= TARGET_BEST for b in best.values()
            ),
        }
        if "gaussian" in r:
            gauss = r["gaussian"]["median"]
            out["median_gaussian_ratio"] = gauss
            out["median_gaussian_over_0.97"] = gauss is not None and gauss >= TARGET_MEDIAN_GAUSSIAN
        return out

    return {"float": verdict(rf), "codes": verdict(rc), "ratios": rf, "ratios_codes": rc}


# --------------------------------------------------------------------------------------------
# command line


def _fraction(text: str) -> float:
    try:
        v = float(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from exc
    if not (0.0 < v < 0.5):
        raise argparse.ArgumentTypeError(f"fraction must be in (0, 0.5), got {text}")
    return v


def _fractions(text: str) -> list[float]:
    parts = [p for p in text.split(",") if p.strip()]
    if not parts or len(parts) > MAX_FRACTIONS:
        raise argparse.ArgumentTypeError(
            f"give 1 to {MAX_FRACTIONS} comma-separated fractions, e.g. 0.1,0.3,0.45"
        )
    return [_fraction(p.strip()) for p in parts]


def register(bench_subparsers: SubParsers) -> None:
    p = bench_subparsers.add_parser(
        "byzantine",
        help="consensus retrieval accuracy under Byzantine submitters (paper's Table 5)",
        description=__doc__.split("\n\n")[0],
    )
    p.add_argument("--json", action="store_true", help="print one JSON object on stdout")
    p.add_argument("--fraction", type=_fraction, default=0.3, help="attacker share (default 0.3)")
    p.add_argument(
        "--fractions",
        type=_fractions,
        default=None,
        help="several attacker shares, e.g. 0.1,0.3,0.45 (overrides --fraction)",
    )
    p.add_argument(
        "--experiences", type=bounded_int(10, MAX_EXPERIENCES), default=100, help="default 100"
    )
    p.add_argument(
        "--submitters", type=bounded_int(3, 100), default=20, help="per experience (default 20)"
    )
    p.add_argument("--seed", type=bounded_int(0, 2**32 - 1), default=0, help="default 0")
    p.add_argument(
        "--paper-setting",
        action="store_true",
        help="Table 5 as the paper ran it: mean and median, no row normalisation, no "
        "rejection, 30%% N(0, 10 sigma^2) attackers (ignores --fraction/--fractions)",
    )
    add_output_args(p, "byzantine")
    p.set_defaults(func=_main)


def _main(args: argparse.Namespace) -> int:
    if args.paper_setting:
        if args.plot is not None or (args.save is not None and not args.json):
            # plots.py draws the fraction sweep; the paper setting is one table (saved as JSON).
            print(
                "bench byzantine: --paper-setting takes --json (and --save), not --plot",
                file=sys.stderr,
            )
            return 2
        result = run_paper(args.experiences, args.submitters, args.seed)
        if args.json:
            # Saved beside the sweep, never over it: --save alone -> docs/bench/byzantine-paper.json.
            args.output_save_as = "byzantine-paper"
            report(result, True, args)
        else:
            print(paper_table(result))
        return 0
    fractions = args.fractions or [args.fraction]
    report(run(fractions, args.experiences, args.submitters, args.seed), args.json, args)
    return 0


__all__ = [
    "ATTACKS",
    "METHODS",
    "PAPER_TABLE5",
    "alie_z",
    "attack_rows",
    "make_task",
    "paper_attack_rows",
    "run",
    "run_paper",
]
