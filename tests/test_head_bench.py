"""Head training for `dsonode bench head`: the Matryoshka term, a frozen fc2, precomputed
features, and the benchmark's data rules (titles as pseudo-queries, the query split).

Model tests use the real packaged encoder on the tiny generated capitals set of
tests/test_train.py, with a narrow hidden layer so a step costs milliseconds.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from dsonode.embed import losses as L
from tests.test_train import write_pairs


def test_matryoshka_term_is_the_rank_loss_of_the_renormalised_prefixes():
    gen = torch.Generator().manual_seed(0)
    eq = torch.nn.functional.normalize(torch.randn(3, 16, generator=gen), dim=-1)
    ec = torch.nn.functional.normalize(torch.randn(5, 16, generator=gen), dim=-1)
    pos = torch.tensor([0, 1, 2])
    neg = torch.ones(3, 5, dtype=torch.bool)
    neg[0, 0] = neg[1, 1] = neg[2, 2] = False
    got = L.matryoshka_rank_loss(eq, ec, pos, neg, (4, 8))
    want = []
    for d in (4, 8):
        pq = eq[:, :d] / eq[:, :d].norm(dim=1, keepdim=True)
        pc = ec[:, :d] / ec[:, :d].norm(dim=1, keepdim=True)
        want.append(L.pairwise_rank_loss(pq @ pc.T, pos, neg))
    assert torch.allclose(got, torch.stack(want).mean())
    # Coordinates beyond the largest prefix do not enter it; they do enter the full loss.
    ec2 = ec.clone()
    ec2[:, 8:] = torch.randn(5, 8, generator=gen)
    assert torch.allclose(L.matryoshka_rank_loss(eq, ec2, pos, neg, (4, 8)), got)
    assert not torch.allclose(
        L.pairwise_rank_loss(eq @ ec2.T, pos, neg), L.pairwise_rank_loss(eq @ ec.T, pos, neg)
    )
    for bad in ((), (32,), (0,)):
        with pytest.raises(ValueError):
            L.matryoshka_rank_loss(eq, ec, pos, neg, bad)


def test_title_pairs_and_the_query_split():
    from dsonode.bench.embed import BenchDataError
    from dsonode.bench.head import split_queries, title_pairs

    trec = (
        "<DOC>\n<DOCNO>1</DOCNO>\ncompact memories have flexible capacities  a digital data\n"
        "storage system with capacity up to bits is described\n</DOC>\n"
        "<DOC>\n<DOCNO>2</DOCNO>\nno title here just one long run of text without a break\n</DOC>\n"
        "<DOC>\n<DOCNO>3</DOCNO>\nshort title  too short\n</DOC>\n"
        "<DOC>\n<DOCNO>4</DOCNO>\nx  a one word title leaves plenty of words behind it\n</DOC>\n"
    )
    assert title_pairs(trec) == [
        (
            "1",
            "compact memories have flexible capacities",
            "a digital data storage system with capacity up to bits is described",
        )
    ]
    dev, held = split_queries(["1", "2", "3", "10", "11"])
    assert dev == [0, 2, 4] and held == [1, 3]
    with pytest.raises(BenchDataError):
        split_queries(["1", "q2"])


@pytest.fixture(scope="module")
def embedder():
    from dsonode.embed.embedder import get_embedder

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield get_embedder(None, None, device="cpu")
    finally:
        torch.set_num_threads(threads)


def _cfg(tmp_path, name, **kw):
    from dsonode.embed.train import TrainConfig

    args = dict(
        stage=2,
        data=tmp_path / "pairs.jsonl",
        out=tmp_path / f"{name}.safetensors",
        batch_size=8,
        steps=4,
        lr=1e-3,
        hidden=64,
        mine_k=2,
        mine_every=2,
        log_every=1000,
        progress=False,
        checkpoint_every=0,
    )
    args.update(kw)
    return TrainConfig(**args)


def test_given_features_a_frozen_fc2_and_the_matryoshka_term(tmp_path, embedder):
    from dsonode.embed.fastpath import FastHead, fast_head
    from dsonode.embed.head import build_seeded_head, load_head
    from dsonode.embed.train import TrainError, train_head

    write_pairs(tmp_path / "pairs.jsonl")
    calls = []

    def given(texts):
        calls.append(len(texts))
        return embedder.encode_base(texts)

    quiet = dict(log=lambda _msg: None)
    kw = dict(matryoshka=1.0, freeze_fc2=True)
    r1 = train_head(_cfg(tmp_path, "given", **kw), embedder, features=given, **quiet)
    r2 = train_head(_cfg(tmp_path, "computed", **kw), embedder, **quiet)
    assert len(calls) == 1 and calls[0] > 28  # every distinct text, once
    h1, _ = load_head(r1.out)
    h2, _ = load_head(r2.out)
    for (name, a), (_, b) in zip(h1.state_dict().items(), h2.state_dict().items(), strict=True):
        assert torch.equal(a, b), name  # the same features give the same run, bit for bit
    assert "matryoshka" in r1.components and r1.metadata["matryoshka"] == 1.0
    # fc2 stayed the seeded one (so the int8 kernel still applies); fc1 moved.
    start = build_seeded_head(384, hidden=64)
    assert torch.equal(h1.fc2.weight, start.fc2.weight)
    assert not torch.equal(h1.fc1.weight, start.fc1.weight)
    assert isinstance(fast_head(h1), FastHead)
    # Without the freeze fc2 trains too.
    r3 = train_head(_cfg(tmp_path, "free", matryoshka=1.0), embedder, **quiet)
    assert not torch.equal(load_head(r3.out)[0].fc2.weight, start.fc2.weight)
    with pytest.raises(TrainError, match="features"):
        train_head(
            _cfg(tmp_path, "bad"),
            embedder,
            features=lambda texts: np.zeros((len(texts), 3), np.float32),
            **quiet,
        )
