"""`dsonode bench simulate` at N = 200: coverage, the eager-push bound, consensus, determinism."""

from __future__ import annotations

import argparse
import json
import subprocess
import sys

import numpy as np
import pytest
import simpy

from dsonode.bench import simulate
from dsonode.config.settings import default

D_LOW = default("net.gossip_degree_low")
D_HIGH = default("net.gossip_degree_high")
CMD = (sys.executable, "-m", "dsonode", "bench", "simulate")


def _small(**kw):
    args = dict(seed=3, experiences=4, hop_ms=20.0, churn=0.001, byzantine=0.3)
    args.update(kw)
    return simulate.run([200], **args)


def test_fifo_cpu_serves_like_a_simpy_resource():
    """FifoCpu's finish times equal those of simpy.Resource(capacity=1) on random jobs."""
    rng = np.random.default_rng(7)
    arrivals = np.sort(rng.uniform(0, 1.0, 300)).tolist()
    costs = rng.uniform(0.001, 0.02, 300).tolist()  # load > 1 at times: queues form
    env = simpy.Environment()
    cpu = simpy.Resource(env, capacity=1)
    finished: list[float] = [0.0] * len(arrivals)

    def job(i):
        yield env.timeout(arrivals[i])
        with cpu.request() as req:
            yield req
            yield env.timeout(costs[i])
            finished[i] = env.now

    for i in range(len(arrivals)):
        env.process(job(i))
    env.run()
    fifo = simulate.FifoCpu()
    fifo.add()
    ours = [fifo.run(0, a, c) for a, c in zip(arrivals, costs, strict=True)]
    assert max(fifo.waits) > 0.01  # the comparison covers queueing, not just idle service
    assert np.allclose(ours, finished, rtol=0, atol=1e-12)


def test_small_network_covers_stays_in_the_push_bound_and_decodes():
    fig = _small()["by_nodes"]["200"]
    assert fig["experiences_not_covered"] == 0
    assert 0 < fig["coverage_99_s"] <= 2.0
    # Eager push with mesh degree in [D_low, D_high]: each node receives the message from
    # each mesh peer but at most one, so about D - 1 receptions per node.
    assert D_LOW <= fig["msgs_per_node_per_experience"] <= D_HIGH + 1
    assert fig["duplicates_per_node_per_experience"] == pytest.approx(
        fig["msgs_per_node_per_experience"] - 1, abs=0.1
    )
    assert fig["mesh_degree"]["min"] >= D_LOW and fig["mesh_degree"]["max"] <= D_HIGH
    assert fig["churn_events"]["leaves"] + fig["churn_events"]["joins"] > 0
    assert fig["items_decoded"] > 0 and fig["decode_failures"] == 0
    # The delivery CDF (drawn by bench/plots.py): percentiles rise with their values; a
    # node validates after the author published (one hop at least), and by the time the
    # slowest experience reached 99 % of its cohort, far more than half the deliveries had
    # happened.
    cdf = fig["delivery_cdf_ms"]
    assert [q for q, _ in cdf] == sorted(q for q, _ in cdf) and cdf[0][0] == 0
    values = [v for _, v in cdf]
    assert values == sorted(values)
    assert cdf[0][1] > 0 and dict(cdf)[50] <= 1000 * fig["coverage_99_s_max"]


def test_consensus_follows_the_honest_majority_of_submitters():
    """Default committee (7): a node's consensus is right exactly when honest submitters
    outnumber the sign-flipping ones among what it holds; every node of the cohort holds
    all submissions at the end, so per experience it is all or nothing."""
    sim = simulate.Simulation(
        200,
        seed=5,
        experiences=6,
        hop_ms=20.0,
        churn=0.0,
        byzantine=0.3,
        attack="sign_flip",
        rate=10.0,
        committee_size=default("consensus.committee"),
        exploit_slack=False,
    )
    fig = sim.run()
    assert sum(e["byzantine_submitters"] for e in sim.per_experience) > 0
    for e in sim.per_experience:
        expected = e["cohort"] if e["honest_submitters"] > e["byzantine_submitters"] else 0
        assert e["correct_pairs"] == expected, e
    assert fig["consensus_pairs"] == sum(e["cohort"] for e in sim.per_experience)


def test_consensus_correct_with_30_percent_byzantine_and_a_large_committee():
    fig = _small(committee_size=40)["by_nodes"]["200"]
    assert fig["byzantine_submissions_per_experience"] >= 5  # attackers did take part
    assert fig["consensus_correct_fraction"] >= 0.99
    rep = fig["reputation_mean_score"]
    assert rep["byzantine"] < 0.5 < rep["honest"]


def test_byzantine_nodes_exploiting_the_verifier_slack_submit_about_4x_more():
    plain = _small(seed=4, churn=0.0)["by_nodes"]["200"]
    slack = _small(seed=4, churn=0.0, exploit_slack=True)["by_nodes"]["200"]
    assert slack["byzantine_submissions_per_experience"] > (
        2 * plain["byzantine_submissions_per_experience"]
    )


@pytest.mark.timeout(60)
def test_paced_single_publisher_batches_and_finishes():
    """The calibration setting (5 nodes, node 0 publishing 20/s against a 10 msgs/s pacer):
    batches grow, the run ends (a rounding loop in the pacer once hung it)."""
    fig = simulate.run(
        [5],
        seed=1,
        experiences=40,
        hop_ms=0.1,
        churn=0.0,
        byzantine=0.0,
        rate=20.0,
        committee_size=1,
        single_publisher=True,
    )["by_nodes"]["5"]
    assert fig["experiences_not_covered"] == 0
    # Nothing can be faster than linger + publish + one validation.
    floor = default("net.batch_linger_s") + simulate.PUBLISH_S + simulate.VALIDATE_S
    assert fig["coverage_99_s"] >= floor
    assert fig["consensus_correct_fraction"] == 1.0  # no Byzantine node: always right


def test_same_seed_same_result():
    a, b = _small(experiences=3), _small(experiences=3)
    for r in (a, b):
        for fig in r["by_nodes"].values():
            fig.pop("wall_s")
    assert json.dumps(a, sort_keys=True) == json.dumps(b, sort_keys=True)
    c = _small(experiences=3, seed=4)
    c["by_nodes"]["200"].pop("wall_s")
    assert json.dumps(c, sort_keys=True) != json.dumps(a, sort_keys=True)


def test_command_line_json_and_bad_input():
    out = subprocess.run(
        [*CMD, "--json", "--nodes", "30", "--experiences", "2", "--seed", "1"],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    result = json.loads(out.stdout)
    assert result["by_nodes"]["30"]["experiences"] == 2
    assert "coverage_99_s_le_2" in result["targets"]
    bad = subprocess.run(
        [*CMD, "--nodes", "1"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert bad.returncode == 2 and "must be [2, 100000], got 1" in bad.stderr
    with pytest.raises(argparse.ArgumentTypeError):
        simulate._node_list("1000,abc")
