"""`dsonode head train`: data validation, the loss formulas, and real training of each stage.

The training tests use the real packaged encoder (MiniLM) on a tiny generated set of
country/capital pairs, with a narrow hidden layer (the API allows any width) so a step costs
milliseconds; the head's output stays 7680-d.
"""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from dsonode.embed import losses as L
from dsonode.embed.train_data import (
    MAX_LINE_BYTES,
    PairIndex,
    PairRecord,
    TrainDataError,
    load_training_data,
)

CAPITALS = [
    ("France", "Paris"),
    ("Germany", "Berlin"),
    ("Italy", "Rome"),
    ("Spain", "Madrid"),
    ("Portugal", "Lisbon"),
    ("Japan", "Tokyo"),
    ("China", "Beijing"),
    ("India", "New Delhi"),
    ("Egypt", "Cairo"),
    ("Kenya", "Nairobi"),
    ("Canada", "Ottawa"),
    ("Mexico", "Mexico City"),
    ("Brazil", "Brasilia"),
    ("Argentina", "Buenos Aires"),
    ("Peru", "Lima"),
    ("Russia", "Moscow"),
    ("Poland", "Warsaw"),
    ("Sweden", "Stockholm"),
    ("Norway", "Oslo"),
    ("Finland", "Helsinki"),
    ("Greece", "Athens"),
    ("Turkey", "Ankara"),
    ("Thailand", "Bangkok"),
    ("Vietnam", "Hanoi"),
    ("Australia", "Canberra"),
    ("Chile", "Santiago"),
    ("Austria", "Vienna"),
    ("Ireland", "Dublin"),
]


def write_pairs(path, n: int | None = None):
    """Query -> its capital sentence; every other line names a neighbour's as a hard negative."""
    n = n or len(CAPITALS)
    with path.open("w", encoding="utf-8") as f:
        for i, (country, city) in enumerate(CAPITALS[:n]):
            rec = {
                "query": f"What is the capital of {country}?",
                "positive": f"{city} is the capital city of {country}.",
            }
            if i % 2 == 0:
                other_country, other_city = CAPITALS[(i + 1) % n]
                rec["negatives"] = [f"{other_city} is the capital city of {other_country}."]
            f.write(json.dumps(rec) + "\n")
    return path


# --------------------------------------------------------------------------- data (no model)


def test_bad_lines_are_reported_with_line_numbers_and_skipped(tmp_path):
    path = tmp_path / "d.jsonl"
    lines = [
        json.dumps({"query": "q1", "positive": "p1", "negatives": ["n1"]}),  # 1 ok
        "",  # 2 blank: ignored
        "{not json",  # 3
        json.dumps(["a list"]),  # 4
        json.dumps({"query": "q2"}),  # 5 no positive
        json.dumps({"query": "q3", "positive": "p3", "negatives": ["p3"]}),  # 6 neg == pos
        json.dumps({"text": "only text"}),  # 7 stage 2 needs pairs
        json.dumps({"query": "q4", "positive": 7}),  # 8
        json.dumps({"query": "q5", "positive": "p5"}),  # 9 ok
    ]
    raw = ("\n".join(lines) + "\n").encode() + b"\xff\xfe bad utf8\n"  # 10
    path.write_bytes(raw)
    data = load_training_data(path, stage=2)
    assert [p.query for p in data.pairs] == ["q1", "q5"]
    assert [b.line for b in data.bad_lines] == [3, 4, 5, 6, 7, 8, 10]
    assert data.bad_count == 7
    reasons = dict((b.line, b.reason) for b in data.bad_lines)
    assert "not JSON" in reasons[3] and "JSON object" in reasons[4]
    assert '"positive"' in reasons[5] and "positive itself" in reasons[6]
    assert "stage 1 only" in reasons[7] and "UTF-8" in reasons[10]
    # Stage 1 takes the text record and every text of the pairs.
    data1 = load_training_data(path, stage=1)
    assert "only text" in data1.texts and "n1" in data1.texts and data1.bad_count == 6
    # --strict: the first bad line is fatal and named.
    with pytest.raises(TrainDataError, match="line 3"):
        load_training_data(path, stage=2, strict=True)


def test_data_limits_and_empty_files(tmp_path):
    huge = tmp_path / "huge.jsonl"
    with huge.open("wb") as f:
        f.write(b'{"text": "' + b"x" * (MAX_LINE_BYTES + 10) + b'"}\n')
        f.write(b'{"text": "fine"}\n')
    data = load_training_data(huge, stage=1)
    assert data.texts == ("fine",) and data.bad_lines[0].line == 1
    assert "longer than" in data.bad_lines[0].reason
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n\n", encoding="utf-8")
    with pytest.raises(TrainDataError, match="no usable record"):
        load_training_data(empty, stage=1)
    with pytest.raises(TrainDataError, match="not found"):
        load_training_data(tmp_path / "missing.jsonl", stage=1)
    # Same bytes, same hash; one changed byte, another hash.
    a = load_training_data(huge, stage=1).sha256
    huge.write_bytes(huge.read_bytes().replace(b"fine", b"fina"))
    assert load_training_data(huge, stage=1).sha256 != a


def test_pair_batch_masks_every_known_positive():
    from dsonode.embed.train import pair_batch

    pairs = [
        PairRecord("q", "p1", ("n1",)),
        PairRecord("q", "p2", ("p1",)),  # p1 is also a positive of q: never its negative
        PairRecord("r", "p3", ()),
    ]
    index = PairIndex.build(pairs)
    t = {text: i for i, text in enumerate(index.texts)}
    assert index.neg_ids[1].tolist() == []
    q, cand, pos_col, neg = pair_batch(index, None, np.array([0, 1, 2]))
    names = [index.texts[c] for c in cand]
    assert sorted(names) == ["n1", "p1", "p2", "p3"]
    assert [index.texts[cand[c]] for c in pos_col] == ["p1", "p2", "p3"]
    for i, qid in enumerate(q):
        negs = {index.texts[c] for c, m in zip(cand, neg[i], strict=True) if m}
        if qid == t["q"]:
            assert negs == {"n1", "p3"}
        else:
            assert negs == {"n1", "p1", "p2"}


# --------------------------------------------------------------------------- losses (no model)


def test_rank_loss_is_the_papers_equation_4_at_tau_1():
    s = torch.tensor([[0.9, 0.2, 0.5]])
    got = L.pairwise_rank_loss(s, torch.tensor([0]), torch.tensor([[False, True, True]]), tau=1.0)
    paper = [-math.log(math.exp(0.9) / (math.exp(0.9) + math.exp(n))) for n in (0.2, 0.5)]
    assert got.item() == pytest.approx(sum(paper) / 2, rel=1e-6)
    hinge = L.pairwise_rank_loss(
        s, torch.tensor([0]), torch.tensor([[False, True, True]]), "margin", margin=0.5
    )
    assert hinge.item() == pytest.approx((0.0 + 0.1) / 2, abs=1e-6)


def test_bitdelta_loss_is_the_code_reconstruction_error():
    g = torch.Generator().manual_seed(0)
    e = torch.nn.functional.normalize(torch.randn(4, 7680, generator=g), dim=-1)
    a = e.abs().mean(dim=-1)
    closed_form = (1 - 7680 * a**2).mean()
    assert L.bitdelta_loss(e).item() == pytest.approx(closed_form.item(), rel=1e-4)
    cube = torch.sign(torch.randn(2, 7680, generator=g)) / math.sqrt(7680)
    assert L.bitdelta_loss(cube).item() == pytest.approx(0.0, abs=1e-6)
    # The straight-through sign lets gradient reach e.
    x = e.clone().requires_grad_(True)
    L.bitdelta_loss(x).backward()
    assert x.grad is not None and x.grad.abs().sum() > 0


def test_diversity_prefers_spread_and_robust_is_zero_without_noise():
    g = torch.Generator().manual_seed(1)
    spread = torch.nn.functional.normalize(torch.randn(16, 7680, generator=g), dim=-1)
    base = torch.nn.functional.normalize(torch.randn(1, 7680, generator=g), dim=-1)
    clumped = torch.nn.functional.normalize(
        base + 0.05 * torch.randn(16, 7680, generator=g) / math.sqrt(7680), dim=-1
    )
    assert L.diversity_loss(spread) < L.diversity_loss(clumped)
    head = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.Tanh())
    h = torch.randn(5, 8, generator=g)
    h = torch.nn.functional.normalize(h, dim=-1)
    assert L.robust_loss(head, h, head(h), noise=0.0, copies=3).item() == pytest.approx(0, abs=1e-6)
    assert L.robust_loss(head, h, head(h), noise=0.5, copies=3, generator=g).item() > 0


# --------------------------------------------------------------------------- training (real encoder)


@pytest.fixture(scope="module")
def embedder():
    """The real encoder, with torch on one thread while this module runs: the steps here are
    tiny, and on a shared 2-core machine two spinning threads were measured ~10x slower."""
    from dsonode.embed.embedder import get_embedder

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield get_embedder(None, None, device="cpu")
    finally:
        torch.set_num_threads(threads)


def _cfg(tmp_path, stage, **kw):
    from dsonode.embed.train import TrainConfig

    defaults = dict(
        stage=stage,
        data=tmp_path / "pairs.jsonl",
        out=tmp_path / f"stage{stage}.safetensors",
        batch_size=8,
        log_every=1000,
        progress=False,
        mine_every=8,
        mine_k=3,
    )
    defaults.update(kw)
    return TrainConfig(**defaults)


def _recall_at_1(head, emb, tmp_path):
    data = load_training_data(tmp_path / "pairs.jsonl", stage=2)
    queries = [p.query for p in data.pairs]
    docs = sorted({p.positive for p in data.pairs})
    with torch.no_grad():
        eq = head(torch.from_numpy(emb.encode_base(queries)))
        ed = head(torch.from_numpy(emb.encode_base(docs)))
    top = (eq @ ed.T).argmax(dim=1).tolist()
    return float(np.mean([docs[j] == p.positive for j, p in zip(top, data.pairs, strict=True)]))


@pytest.mark.slow
def test_three_stages_reduce_their_loss_and_give_a_new_space(tmp_path, embedder):
    from dsonode.embed.embedder import Embedder
    from dsonode.embed.head import load_head
    from dsonode.embed.train import train_head

    write_pairs(tmp_path / "pairs.jsonl")
    logs: list[str] = []
    runs = {}
    init = None
    for stage, steps, lr in ((1, 24, 1e-3), (2, 20, 3e-4), (3, 16, 3e-4)):
        cfg = _cfg(tmp_path, stage, steps=steps, lr=lr, init=init, hidden=None if init else 256)
        result = train_head(cfg, embedder=embedder, log=logs.append)
        assert result.steps == steps and len(result.history) == steps
        first, last = np.mean(result.history[:5]), np.mean(result.history[-5:])
        assert last < first, f"stage {stage}: loss did not fall ({first:.4f} -> {last:.4f})"
        head, meta = load_head(result.out)
        assert meta["stage"] == str(stage) and meta["steps"] == str(steps)
        assert meta["data_sha256"] == result.data_sha256 and float(meta["final_loss"]) > 0
        assert head.hidden == 256 and head.out_dim == 7680
        assert not cfg.checkpoint_path.exists()  # removed after success
        runs[stage] = (result, head)
        init = result.out
    r3 = runs[3][0]
    assert set(r3.components) == {"loss", "rank", "bitdelta", "robust", "diverse"}
    assert any("stage 3 step 1/16" in line for line in logs)
    # Stage 2 taught the head to rank the training pairs at least as well as stage 1 did.
    assert _recall_at_1(runs[2][1], embedder, tmp_path) >= max(
        0.9, _recall_at_1(runs[1][1], embedder, tmp_path)
    )
    # The trained head loads through the Embedder and names a new space.
    trained = Embedder(head=r3.out, device="cpu")
    assert trained.space_id == r3.space_id
    assert trained.space_id != embedder.space_id
    assert len({r.space_id for r, _ in runs.values()}) == 3
    vec = trained.embed(["What is the capital of Peru?"])
    with torch.no_grad():
        want = runs[3][1](torch.from_numpy(embedder.encode_base(["What is the capital of Peru?"])))
    assert vec.shape == (1, 7680)
    np.testing.assert_allclose(vec, want.numpy(), atol=1e-5)


@pytest.mark.slow
def test_interrupt_and_resume_is_bit_identical(tmp_path, embedder):
    from dsonode.embed.head import load_head
    from dsonode.embed.train import TrainError, train_head

    write_pairs(tmp_path / "pairs.jsonl", n=16)
    kw = dict(steps=7, lr=3e-4, hidden=64, mine_every=3, checkpoint_every=2, seed=7, copies=2)
    straight = train_head(
        _cfg(tmp_path, 3, out=tmp_path / "straight.safetensors", **kw), embedder=embedder, log=str
    )
    cfg = _cfg(tmp_path, 3, out=tmp_path / "resumed.safetensors", **kw)

    def interrupt(step, loss):
        if step == 4:  # after a periodic checkpoint (2) and a re-mining (3): both must be kept
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train_head(cfg, embedder=embedder, log=str, on_step=interrupt)
    assert cfg.checkpoint_path.exists() and not cfg.out.exists()
    with pytest.raises(TrainError, match="--resume"):
        train_head(cfg, embedder=embedder, log=str)
    cfg.resume = True
    resumed = train_head(cfg, embedder=embedder, log=str)
    assert resumed.history == straight.history
    a, _ = load_head(straight.out)
    b, _ = load_head(resumed.out)
    for (name, x), (_, y) in zip(a.state_dict().items(), b.state_dict().items(), strict=True):
        assert torch.equal(x, y), name
    assert resumed.space_id == straight.space_id
    # A checkpoint from another seed is refused, not silently mixed.
    cfg2 = _cfg(tmp_path, 3, out=tmp_path / "other.safetensors", **{**kw, "seed": 8})
    with pytest.raises(KeyboardInterrupt):
        train_head(cfg2, embedder=embedder, log=str, on_step=interrupt)
    cfg2.seed, cfg2.resume = 9, True
    with pytest.raises(TrainError, match="seed"):
        train_head(cfg2, embedder=embedder, log=str)


@pytest.mark.slow
def test_cli_head_train(tmp_path, embedder, capsys):
    from dsonode.cli import main
    from dsonode.embed.head import load_head

    write_pairs(tmp_path / "pairs.jsonl", n=12)
    with (tmp_path / "pairs.jsonl").open("a", encoding="utf-8") as f:
        f.write('{"query": "broken"}\n')
    out = tmp_path / "cli.safetensors"
    argv = ["head", "train", "--stage", "1", "--data", str(tmp_path / "pairs.jsonl")]
    argv += ["--out", str(out), "--steps", "3", "--hidden", "32", "--no-progress", "--json"]
    assert main(argv) == 0
    captured = capsys.readouterr()
    summary = json.loads(captured.out)
    assert summary["steps"] == 3 and summary["bad_lines"] == 1 and len(summary["space_id"]) == 64
    assert "line 13" in captured.err
    load_head(out)
    # --strict turns the bad line into a clean error (exit 2) naming it.
    assert main([*argv[:-1], "--strict"]) == 2
    assert "line 13" in capsys.readouterr().err
    # Bounded options are refused by the parser.
    with pytest.raises(SystemExit):
        main([*argv, "--batch-size", "0"])


def test_a_corrupt_or_foreign_checkpoint_is_a_clean_error(tmp_path):
    from safetensors.torch import save_file

    from dsonode.embed.train import TrainError, load_checkpoint

    junk = tmp_path / "junk.ckpt"
    junk.write_bytes(b"\x00" * 100)
    with pytest.raises(TrainError, match="not readable"):
        load_checkpoint(junk)
    foreign = tmp_path / "foreign.ckpt"
    save_file({"x": torch.zeros(2)}, str(foreign), metadata={"dso_ckpt": '{"format": "other"}'})
    with pytest.raises(TrainError, match="not a dsonode"):
        load_checkpoint(foreign)
    with pytest.raises(TrainError, match="no checkpoint"):
        load_checkpoint(tmp_path / "absent.ckpt")
