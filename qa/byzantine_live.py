"""Colluding Byzantine submitters in a live testnet (issue 7; `dsonode bench faults`).

One testnet of `dsonode run` processes (dsonode.testnet.Testnet: separate processes on
127.0.0.2.., a full mesh, committee "all" so every node submits for every experience). A
few *slots* (the nodes just before the last, as in `plan_testnet`) can run an attack; the
sweep moves through configurations by restarting only the slots whose attack changes (the
honest nodes, their stores and their reputation tables stay up throughout):

    clean (every node honest), then for each attack: 1, 3, 5 ... of the slots attacking

With 11 nodes and 1 / 3 / 5 attackers the fractions are 1/11 = 9.1 %, 3/11 = 27.3 % and
5/11 = 45.5 % of the submitters of every experience. Each configuration seeds its own new
experiences at the first node (texts never used before, so identities are fresh), waits
(bounded) until every honest node holds a submission from *every* node for each of them,
and then reads each honest node's store (LMDB, read-only, beside the running node) and its
reputation table (`stats`):

* quality: cosine of the node's consensus code to (a) the median of the honest submissions
  alone (`aggregate_codes` of the honest authors' codes) and (b) the node's own submission
  (its exact embedding of the text); medians and minima over experiences x honest nodes,
  and ratios to the clean configuration's medians;
* detection: precision / recall of the consensus verdicts (rejected authors) as a detector of
  Byzantine authors, over experiences x honest nodes; honest rows rejected;
* reputation: what this configuration's verdicts moved (accepted / rejected deltas, summed
  over the honest observers) for Byzantine and honest authors, and the resulting scores
  (`reputation_score` of the counts accumulated so far, medians over observers);
* the cosine of the Byzantine submissions to the consensus (how close each attack sits to
  the cut-off, recorded in the consensus record).

The restart keeps each slot's key and data, so reputation accumulates across the attacks a
slot has run; the per-configuration deltas isolate each configuration.
"""

from __future__ import annotations

import statistics
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from dsonode.core import bitdelta
from dsonode.core.aggregate import aggregate_codes
from dsonode.core.attacks import ATTACKS
from dsonode.core.errors import DsoError

__all__ = [
    "ATTACKS",
    "LiveTestnet",
    "measure",
    "run_byzantine_live",
    "texts_for",
]

#: Target of the team's byzantine bench (issue 4): honest consensus >= 0.95 x clean.
TARGET_RATIO = 0.95
DEFAULT_NODES = 11
#: `--attack-scale` per attack (default 1.0). ALIE is meant to stay inside the cut-off; a
#: 1-bit code magnifies its push (scale 1: code cosine ~0.82 to the honest code, rejected),
#: so the sweep runs it at 0.2 (code cosine ~0.96, over the 0.94 cut-off of agreeing codes).
ATTACK_SCALES = {"alie": 0.2, "alie_collude": 0.2}
DEFAULT_COUNTS = (1, 3, 5)
MAX_NODES = 16
MAX_EXPERIENCES_PER_RUN = 10

#: Extra lessons beyond the packaged samples, so every configuration gets new texts that are
#: not near-duplicates of earlier ones (a `mimic` attacker picks the nearest one it holds).
EXTRA_LESSONS = [
    ("coding", "Read the stack trace from the bottom frame that is your own code upward."),
    ("coding", "Delete dead feature flags within a sprint of the full rollout."),
    ("coding", "Name a boolean after the question it answers, such as is_ready."),
    ("ops", "Alert on symptoms users feel, such as latency and errors, not on CPU usage."),
    ("ops", "Rehearse restoring a backup; an untested backup is a hope, not a plan."),
    ("ops", "Roll out a config change to one canary host before the whole fleet."),
    ("math", "Draw a small example by hand before generalising a recurrence."),
    ("math", "In probability questions, look for the complement when 'at least one' appears."),
    ("science", "Write down the units of every quantity before plugging numbers in."),
    ("science", "Record negative results in the lab notebook with the same care as positive."),
    ("web", "Compare the page's canonical URL with the address when two pages look alike."),
    ("web", "Prefer the site's own search over guessing deep links that may have moved."),
    ("writing", "Put the conclusion in the first sentence of a status update."),
    ("writing", "Cut every adverb from a draft and put back only those that are missed."),
    ("agents", "Give a tool-using agent a budget of steps and make it report when it is spent."),
    ("agents", "Have the agent restate the task in one line before its first action."),
]


def texts_for(n_configs: int, per_config: int) -> list[list[dict[str, Any]]]:
    """Fresh experiences for each configuration: packaged samples plus EXTRA_LESSONS, each
    used at most once; raises DsoError when there are not enough."""
    from dsonode.testnet.samples import load_samples

    pool = [{"domain": s["domain"], "text": s["text"], "tags": s["tags"]} for s in load_samples()]
    pool += [{"domain": d, "text": t, "tags": []} for d, t in EXTRA_LESSONS]
    need = n_configs * per_config
    if need > len(pool):
        raise DsoError(
            f"byzantine_live: {n_configs} runs x {per_config} experiences need {need} texts, "
            f"only {len(pool)} available (fewer experiences per run or attacks)"
        )
    # Interleave so consecutive configurations do not get lessons of the same domain only.
    order = sorted(range(len(pool)), key=lambda i: (i % 7, i))
    picked = [pool[i] for i in order[:need]]
    return [picked[k * per_config : (k + 1) * per_config] for k in range(n_configs)]


def schedule(attacks: Sequence[str], counts: Sequence[int]) -> list[tuple[str | None, int]]:
    """(attack, attackers) in the order run: clean first, then each attack with the counts
    ascending and descending in turn (fewer slot restarts)."""
    out: list[tuple[str | None, int]] = [(None, 0)]
    for k, attack in enumerate(attacks):
        seq = sorted(counts) if k % 2 == 0 else sorted(counts, reverse=True)
        out += [(attack, c) for c in seq]
    return out


def _cos(a: np.ndarray, b: np.ndarray) -> float:
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))


def _median(xs: list[float]) -> float | None:
    return round(statistics.median(xs), 6) if xs else None


class LiveTestnet:
    """A Testnet whose slot nodes can be restarted with another attack (or none)."""

    def __init__(
        self,
        n_nodes: int,
        slots: Sequence[int],
        root: Path,
        *,
        committee: str = "all",
        initial_attack: str | None = None,
        initial_count: int = 0,
        start_timeout: float = 420.0,
        mesh_timeout: float = 180.0,
        log: Callable[[str], None] | None = None,
    ) -> None:
        from dsonode.testnet import Testnet, free_ports, plan_testnet
        from dsonode.testnet.plan import host_ip

        self.slots = list(slots)
        self._initial = (initial_attack, initial_count)
        plan = plan_testnet(n_nodes, ports=free_ports([host_ip(i) for i in range(n_nodes)]))

        # Every node submitting ("all"), and the scale of the node's current attack
        # (NodeHandle.attack, changed by `set_attacks`; the supervisor adds the attack).
        def node_args(node: Any) -> list[str]:
            args = ["--committee", committee]
            if node.attack is not None:
                args += ["--attack-scale", str(ATTACK_SCALES.get(node.attack, 1.0))]
            return args

        self.net = Testnet(
            plan,
            root,
            start_timeout=start_timeout,
            mesh_timeout=mesh_timeout,
            log=log,
            node_args=node_args,
        )
        self.log = log or (lambda _m: None)

    def __enter__(self) -> LiveTestnet:
        """Start every node (the first `initial_count` slots with `initial_attack`)."""
        self.net.prepare()
        for k, s in enumerate(self.slots):
            self.net.nodes[s].attack = self._initial[0] if k < self._initial[1] else None
        self.net.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        self.net.__exit__(*exc)

    @property
    def nodes(self):
        return self.net.nodes

    def attackers(self) -> list[int]:
        return [n.index for n in self.net.nodes if n.attack is not None]

    def honest(self) -> list[int]:
        return [n.index for n in self.net.nodes if n.attack is None]

    def set_attacks(self, attack: str | None, count: int) -> list[int]:
        """Make the first `count` slots run `attack` and the others honest, restarting only
        the nodes whose attack changes. Returns the restarted indices."""
        if not 0 <= count <= len(self.slots):
            raise DsoError(f"byzantine_live: {count} attackers but {len(self.slots)} slots")
        want = {s: (attack if k < count else None) for k, s in enumerate(self.slots)}
        changed = [s for s, a in want.items() if self.net.nodes[s].attack != a]
        for s in changed:
            self.net.stop_node(s, grace=15.0)
        for s in changed:
            node = self.net.nodes[s]
            node.attack = want[s]
            self.net.start_node(s)
            self.log(f"restarted {node.name} as {want[s] or 'honest'} (pid {node.proc.pid})")
        if changed:
            self.net.wait_healthy(self.net.start_timeout)
            self.net.wait_meshed(self.net.mesh_timeout)
        return changed

    # -- reading a node

    def store_view(self, i: int, space: bytes, exp_ids: Sequence[bytes]) -> dict[bytes, Any]:
        """exp id -> (consensus record, {author: code}) from node i's store (read-only)."""
        from dsonode.store import Store

        out = {}
        with Store(self.net.nodes[i].data_dir / "store", readonly=True) as store:
            for e in exp_ids:
                subs = {s.author: s.code for s in store.get_submissions(e, space)}
                out[e] = (store.get_consensus(space, e), subs)
        return out

    def reputation(self, i: int) -> dict[str, dict[str, Any]]:
        return self.net.stats(i, timeout=30.0)["network"]["reputation"]

    def wait_all_submissions(self, space: bytes, exp_ids: Sequence[bytes], timeout: float) -> None:
        """Until every honest node holds a submission of every node for every experience and
        a consensus computed over all of them (bounded)."""
        n = len(self.net.nodes)
        deadline = time.monotonic() + timeout
        last: dict[str, Any] = {}
        while time.monotonic() < deadline:
            self.net.check_alive()
            behind = []
            for i in self.honest():
                try:
                    view = self.store_view(i, space, exp_ids)
                except DsoError as exc:
                    last[self.net.nodes[i].name] = str(exc)
                    behind.append(self.net.nodes[i])
                    continue
                done = [
                    rec is not None and len(subs) == n and rec.stats.get("submissions") == n
                    for rec, subs in view.values()
                ]
                if not all(done):
                    last[self.net.nodes[i].name] = sum(done)
                    behind.append(self.net.nodes[i])
            if not behind:
                return
            time.sleep(1.0)
        self.net.fail_waiting(
            f"{n} submissions for each of {len(exp_ids)} experiences", behind, last
        )


def measure(
    lt: LiveTestnet,
    space: bytes,
    exp_ids: Sequence[bytes],
    before: dict[int, dict[str, dict[str, Any]]],
) -> dict[str, Any]:
    """Quality, detection and reputation of one configuration (see the module docstring)."""
    from dsonode.core.consensus import reputation_score

    byz = {bytes.fromhex(lt.nodes[i].author) for i in lt.attackers()}
    vs_honest: list[float] = []
    vs_own: list[float] = []
    byz_cos: list[float] = []
    cutoffs: list[float] = []
    tp = fp = fn = 0
    honest_rows = 0
    confirmed = 0
    for i in lt.honest():
        me = bytes.fromhex(lt.nodes[i].author)
        for _e, (rec, subs) in lt.store_view(i, space, exp_ids).items():
            cons = bitdelta.decode(rec.code)
            own = bitdelta.decode(subs[me])
            honest_codes = [c for a, c in subs.items() if a not in byz]
            honest_only = bitdelta.decode(aggregate_codes(honest_codes).code)
            vs_honest.append(_cos(cons, honest_only))
            vs_own.append(_cos(cons, own))
            confirmed += bool(rec.confirmed)
            if rec.stats.get("cutoff") is not None:
                cutoffs.append(float(rec.stats["cutoff"]))
            verdicts = rec.stats.get("verdicts", {})
            for author, code in subs.items():
                ok = verdicts.get(author.hex())
                if author in byz:
                    byz_cos.append(_cos(bitdelta.decode(code), cons))
                    tp += ok is False
                    fn += ok is True
                else:
                    honest_rows += 1
                    fp += ok is False
    rep: dict[str, Any] = {}
    for group, members in (("byzantine", byz), ("honest", None)):
        d_acc = d_rej = 0
        scores: list[float] = []
        for i in lt.honest():
            now = lt.reputation(i)
            me = lt.nodes[i].author
            for author, record in now.items():
                is_byz = bytes.fromhex(author) in byz
                if author == me or (members is not None) != is_byz:
                    continue
                old = before.get(i, {}).get(author, {})
                d_acc += int(record.get("accepted", 0)) - int(old.get("accepted", 0))
                d_rej += int(record.get("rejected", 0)) - int(old.get("rejected", 0))
                scores.append(float(record.get("score", reputation_score(0, 0))))
        rep[group] = {
            "accepted_delta": d_acc,
            "rejected_delta": d_rej,
            "score_of_this_run": round(reputation_score(d_acc, d_rej), 4),
            "score_median": _median(scores),
        }
    flagged = tp + fp
    return {
        "samples": len(vs_honest),
        "confirmed": confirmed,
        "quality_vs_honest_median": _median(vs_honest),
        "quality_vs_honest_min": round(min(vs_honest), 6) if vs_honest else None,
        "quality_vs_own_median": _median(vs_own),
        "quality_vs_own_min": round(min(vs_own), 6) if vs_own else None,
        "detection": {
            "precision": round(tp / flagged, 4) if flagged else None,
            "recall": round(tp / (tp + fn), 4) if tp + fn else None,
            "byzantine_rows": tp + fn,
            "honest_rows": honest_rows,
            "honest_rejected": fp,
        },
        "byzantine_cosine_median": _median(byz_cos),
        "cutoff_median": _median(cutoffs),
        "reputation": rep,
    }


def run_byzantine_live(
    work: Path,
    *,
    nodes: int = DEFAULT_NODES,
    counts: Sequence[int] = DEFAULT_COUNTS,
    attacks: Sequence[str] = ATTACKS,
    experiences: int = 2,
    wait_timeout: float = 240.0,
    progress: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """The sweep (see the module docstring); returns the `byzantine_live` block."""
    say = progress or (lambda _m: None)
    if not 4 <= nodes <= MAX_NODES:
        raise DsoError(f"byzantine_live: nodes must be 4..{MAX_NODES}")
    if not 1 <= experiences <= MAX_EXPERIENCES_PER_RUN:
        raise DsoError(f"byzantine_live: experiences per run must be 1..{MAX_EXPERIENCES_PER_RUN}")
    unknown = [a for a in attacks if a not in ATTACKS]
    if unknown:
        raise DsoError(f"byzantine_live: unknown attacks {unknown} (one of {', '.join(ATTACKS)})")
    n_slots = max(counts, default=0)
    if not counts or min(counts) < 1 or 2 * n_slots >= nodes or n_slots > nodes - 2:
        raise DsoError("byzantine_live: attackers must be 1.. and a minority of the nodes")
    slots = list(range(nodes - 1 - n_slots, nodes - 1))
    plan = schedule(attacks, counts)
    texts = texts_for(len(plan), experiences)
    t0 = time.perf_counter()
    runs: list[dict[str, Any]] = []
    with LiveTestnet(nodes, slots, work, log=say) as lt:
        say(f"{nodes} nodes up and meshed ({time.perf_counter() - t0:.0f} s)")
        space = bytes.fromhex(lt.net.stats(0)["space_id"])
        for k, ((attack, count), batch) in enumerate(zip(plan, texts, strict=True)):
            t1 = time.perf_counter()
            restarted = lt.set_attacks(attack, count)
            before = {i: lt.reputation(i) for i in lt.honest()}
            ids = lt.net.seed(batch, node=0)
            exp_ids = [bytes.fromhex(x) for x in ids]
            lt.wait_all_submissions(space, exp_ids, wait_timeout)
            time.sleep(1.0)  # the last recompute's reputation update follows its record
            m = measure(lt, space, exp_ids, before)
            m.update(
                attack=attack or "clean",
                byzantine=count,
                fraction=round(count / nodes, 4),
                restarted=len(restarted),
                seconds=round(time.perf_counter() - t1, 1),
            )
            runs.append(m)
            say(
                f"[{k + 1}/{len(plan)}] {m['attack']} x{count}: quality "
                f"{m['quality_vs_honest_median']} (min {m['quality_vs_honest_min']}), "
                f"detection {m['detection']['precision']}/{m['detection']['recall']}, "
                f"{m['seconds']} s"
            )
    clean = runs[0]
    base = clean["quality_vs_honest_median"] or 0.0
    base_own = clean["quality_vs_own_median"] or 0.0
    worst = 1.0
    for r in runs:
        q, qo = r["quality_vs_honest_median"], r["quality_vs_own_median"]
        r["ratio_to_clean"] = round(q / base, 6) if q is not None and base else None
        r["ratio_own_to_clean"] = round(qo / base_own, 6) if qo is not None and base_own else None
        if r["ratio_to_clean"] is not None:
            worst = min(worst, r["ratio_to_clean"])
    return {
        "nodes": nodes,
        "committee": "all",
        "method": "median",
        "experiences_per_run": experiences,
        "fractions": {str(c): round(c / nodes, 4) for c in counts},
        "attacks": list(attacks),
        "attack_scales": {a: ATTACK_SCALES.get(a, 1.0) for a in attacks},
        "clean": clean,
        "runs": runs[1:],
        "worst_ratio_to_clean": round(worst, 6),
        "target_ratio": TARGET_RATIO,
        "target_met": worst >= TARGET_RATIO,
        "elapsed_s": round(time.perf_counter() - t0, 1),
    }


def main(argv: Sequence[str] | None = None) -> int:  # python -m qa.byzantine_live
    import argparse
    import json
    import tempfile

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--nodes", type=int, default=DEFAULT_NODES)
    p.add_argument("--counts", default=",".join(map(str, DEFAULT_COUNTS)))
    p.add_argument("--attacks", default=",".join(ATTACKS))
    p.add_argument("--experiences", type=int, default=2)
    args = p.parse_args(argv)
    try:
        counts = [int(c) for c in args.counts.split(",") if c][:8]
    except ValueError:
        p.error(f"--counts: comma-separated integers, got {args.counts[:40]!r}")
    attacks = [a for a in args.attacks.split(",") if a][:16]
    try:
        with tempfile.TemporaryDirectory(prefix="dsonode-byzlive-") as tmp:
            out = run_byzantine_live(
                Path(tmp),
                nodes=args.nodes,
                counts=counts,
                attacks=attacks,
                experiences=args.experiences,
                progress=lambda m: print(f"[byzantine_live] {m}", file=sys.stderr, flush=True),
            )
    except DsoError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(json.dumps(out, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
