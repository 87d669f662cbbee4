"""`dsonode head train`: the three training stages of the DSO paper's projection head.

    stage 1  projection expansion      L = mean ||head(h) - pad(h)||^2           (eq. 3)
    stage 2  contrastive reranking     L = L_rank, hard negatives in-batch + mined (eq. 4)
    stage 3  DSO regularisers          L = 0.3 L_bitdelta + 0.5 L_robust + 0.2 L_diverse
                                           + rank_weight * L_rank                (eqs. 5-8)

The exact formulas are in `dsonode.embed.losses`. The encoder is frozen: its features (the
L2-normalised mean-pooled vectors that the head receives at inference, `encode_base`) are
computed once, and only the head trains, with AdamW, on CPU or CUDA.

Determinism: given `seed` (and the same data, init, thread count and torch build) a run gives
bit-identical weights, including across an interruption and `--resume`: the batch order of
each epoch is a permutation drawn from (seed, epoch), the stage-3 noise from (seed, step), and
a checkpoint stores the head, AdamW's moments, the mined negatives and the loss history.

Checkpoints (`<out>.ckpt`, a safetensors file: tensors only, no pickle) are written every
`checkpoint_every` steps and on Ctrl-C (the current step finishes first; a second Ctrl-C
aborts at once), and removed after a successful run unless `keep_checkpoint`.
"""

from __future__ import annotations

import json
import math
import os
import signal
import sys
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from dsonode.core.constants import DIM, PREFIX_DIMS
from dsonode.core.errors import DsoError
from dsonode.embed import losses as L
from dsonode.embed.defaults import (
    DEFAULT_HEAD_SEED,
    DEFAULT_MARGIN,
    DEFAULT_TAU,
    HEAD_HIDDEN,
    MAX_BATCH,
    MAX_COPIES,
    MAX_EPOCHS,
    MAX_MINE_K,
    MAX_STEPS,
)
from dsonode.embed.head import (
    ProjectionHead,
    build_seeded_head,
    head_weights_sha256,
    load_head,
    save_head,
)
from dsonode.embed.train_data import PairIndex, load_training_data

if TYPE_CHECKING:  # types only: rich and the embedder load when train_head needs them
    from rich.progress import Progress

    from dsonode.embed.embedder import Embedder

#: Learning rate per stage when none is given. Stage 1 regresses onto a fixed target and
#: tolerates a large step; stages 2-3 fine-tune a head that already works.
DEFAULT_LR = {1: 5e-4, 2: 1e-4, 3: 1e-4}
#: Queries embedded at once while mining (16,384 x 7680 float32 = 503 MB).
MINE_QUERY_CHUNK = 16_384
#: Documents embedded at once while mining.
MINE_DOC_CHUNK = 2_048
#: Steps averaged for the reported first/final loss (at most; fewer on short runs).
LOSS_WINDOW = 10
CHECKPOINT_FORMAT = "dso-head-ckpt-1"


class TrainError(DsoError, ValueError):
    """Training was asked something impossible (bad option, checkpoint mismatch, ...)."""


@dataclass
class TrainConfig:
    stage: int
    data: Path
    out: Path
    init: Path | None = None  # head to start from; None = the seeded default head
    encoder: Path | None = None  # local HF folder; None = packaged MiniLM
    device: str = "cpu"
    epochs: int = 1
    steps: int | None = None  # total optimizer steps; overrides epochs
    lr: float | None = None  # None = DEFAULT_LR[stage]
    weight_decay: float = 0.01
    batch_size: int = 32
    warmup: int = 0  # linear warm-up steps
    seed: int = 0
    checkpoint: Path | None = None  # None = <out>.ckpt
    checkpoint_every: int = 100  # 0 = only on Ctrl-C
    resume: bool = False
    keep_checkpoint: bool = False
    log_every: int = 10
    progress: bool | None = None  # None = a rich bar when stderr is a terminal
    strict: bool = False  # first bad data line is fatal
    # stages 2-3
    loss: str = "logistic"
    tau: float = DEFAULT_TAU
    margin: float = DEFAULT_MARGIN
    mine_k: int = 4  # mined hard negatives per query (0 = in-batch only)
    mine_every: int = 50  # re-mine with the current head every N steps
    # stage 3
    noise: float = 0.05
    copies: int = 4
    rank_weight: float = 1.0
    # stages 2-3: weight of the Matryoshka term (ranking on the 1024/2048/4096 prefixes)
    matryoshka: float = 0.0
    # train fc1 and the layer norms only: fc2 stays as initialised (a seeded fc2 keeps its
    # exact int8 kernel, and a step costs about a third less on a CPU)
    freeze_fc2: bool = False
    # fresh seeded head only (no --init)
    hidden: int | None = None
    head_seed: int = DEFAULT_HEAD_SEED

    @property
    def checkpoint_path(self) -> Path:
        return self.checkpoint or self.out.with_name(self.out.name + ".ckpt")

    @property
    def learning_rate(self) -> float:
        return self.lr if self.lr is not None else DEFAULT_LR[self.stage]

    def validate(self) -> None:
        def need(ok: bool, msg: str) -> None:
            if not ok:
                raise TrainError(msg)

        need(self.stage in (1, 2, 3), f"stage must be 1, 2 or 3, got {self.stage!r}")
        need(1 <= self.epochs <= MAX_EPOCHS, f"epochs must be in 1..{MAX_EPOCHS}")
        need(self.steps is None or 1 <= self.steps <= MAX_STEPS, f"steps must be in 1..{MAX_STEPS}")
        need(1 <= self.batch_size <= MAX_BATCH, f"batch size must be in 1..{MAX_BATCH}")
        need(0 < self.learning_rate <= 1.0 and math.isfinite(self.learning_rate), "lr in (0, 1]")
        need(0 <= self.weight_decay <= 1.0, "weight decay must be in [0, 1]")
        need(0 <= self.warmup <= MAX_STEPS, "warmup must be >= 0")
        need(0 <= self.seed < 2**63, "seed must be in [0, 2**63)")
        need(self.checkpoint_every >= 0, "checkpoint-every must be >= 0")
        need(self.log_every >= 1, "log-every must be >= 1")
        need(self.loss in ("logistic", "margin"), "loss must be 'logistic' or 'margin'")
        need(0 < self.tau <= 10 and math.isfinite(self.tau), "tau must be in (0, 10]")
        need(0 <= self.margin <= 2, "margin must be in [0, 2]")
        need(0 <= self.mine_k <= MAX_MINE_K, f"mine-k must be in 0..{MAX_MINE_K}")
        need(self.mine_every >= 1, "mine-every must be >= 1")
        need(0 <= self.noise <= 10 and math.isfinite(self.noise), "noise must be in [0, 10]")
        need(1 <= self.copies <= MAX_COPIES, f"copies must be in 1..{MAX_COPIES}")
        need(0 <= self.rank_weight <= 100, "rank-weight must be in [0, 100]")
        need(0 <= self.matryoshka <= 100, "matryoshka must be in [0, 100]")
        need(self.hidden is None or 1 <= self.hidden <= 65_536, "hidden must be in 1..65536")
        need(
            self.hidden is None or self.init is None,
            "--hidden applies to a fresh seeded head; it cannot be combined with --init",
        )
        need(0 <= self.head_seed < 2**64, "head seed must be in [0, 2**64)")
        need(self.out.parent.is_dir(), f"output folder does not exist: {self.out.parent}")
        need(not self.out.is_dir(), f"--out is a folder: {self.out}")
        ckpt = self.checkpoint_path
        need(ckpt.parent.is_dir(), f"checkpoint folder does not exist: {ckpt.parent}")
        need(not ckpt.is_dir(), f"--checkpoint is a folder: {ckpt}")
        need(self.out.resolve() != self.checkpoint_path.resolve(), "checkpoint path == --out")


@dataclass
class TrainResult:
    out: Path
    stage: int
    steps: int
    first_loss: float
    final_loss: float
    history: list[float]
    components: dict[str, float]  # final-window mean of each loss term
    data_sha256: str
    bad_lines: int
    space_id: str
    metadata: dict[str, object] = field(default_factory=dict)


# --------------------------------------------------------------------------- pure helpers


def window_mean(values: list[float], first: bool) -> float:
    """Mean of the first or last min(LOSS_WINDOW, n // 2 or 1) values."""
    if not values:
        return float("nan")
    w = max(1, min(LOSS_WINDOW, len(values) // 2))
    part = values[:w] if first else values[-w:]
    return float(sum(part) / len(part))


def epoch_order(seed: int, epoch: int, n: int) -> np.ndarray:
    """The shuffled example order of one epoch: a function of (seed, epoch) only."""
    return np.random.default_rng([seed, epoch]).permutation(n)


def batch_rows(seed: int, step: int, n: int, batch_size: int, cache: dict[str, Any]) -> np.ndarray:
    """Rows of the batch of global step `step` (epochs are ceil(n / batch_size) steps).

    `cache` keeps the current epoch's "epoch" (int) and "order" (array) between calls."""
    per_epoch = -(-n // batch_size)
    epoch, pos = divmod(step, per_epoch)
    if cache.get("epoch") != epoch:
        cache["epoch"], cache["order"] = epoch, epoch_order(seed, epoch, n)
    return cache["order"][pos * batch_size : (pos + 1) * batch_size]


def pair_batch(
    index: PairIndex, mined: np.ndarray | None, rows: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Assemble one stage-2/3 batch.

    Returns (query text ids (B,), candidate text ids (C,), column of each query's positive
    (B,), negative mask (B, C)). Candidates are the batch's positives, explicit negatives and
    mined negatives; a candidate is a negative of a query unless it is one of that query's
    known positives (from any line of the file) or the query's own text.
    """
    q = index.query_ids[rows]
    parts = [index.pos_ids[rows]] + [index.neg_ids[r] for r in rows]
    if mined is not None and mined.size:
        slots = np.searchsorted(index.unique_queries, q)
        m = mined[slots].ravel()
        parts.append(m[m >= 0])
    cand = np.unique(np.concatenate(parts))
    pos_col = np.searchsorted(cand, index.pos_ids[rows])
    neg_mask = cand[None, :] != q[:, None]
    for i, qid in enumerate(q):
        for p in index.positives_of[int(qid)]:
            j = np.searchsorted(cand, p)
            if j < len(cand) and cand[j] == p:
                neg_mask[i, j] = False
    return q, cand, pos_col, neg_mask


@torch.no_grad()
def mine_hard_negatives(
    head: ProjectionHead, feats: torch.Tensor, index: PairIndex, k: int
) -> np.ndarray:
    """(n_unique_queries, k) text ids of each query's top-k scoring non-positive documents
    under the current head (-1 where the corpus has fewer); rows follow index.unique_queries."""
    nq = len(index.unique_queries)
    out = np.full((nq, k), -1, dtype=np.int64)
    if k == 0:
        return out
    was_training = head.training
    head.eval()
    corpus = index.corpus_ids
    # Over-fetch by the most positives any query has (+1 for the query's own text), then
    # filter: cheaper than masking a (queries x corpus) matrix.
    extra = 1 + max(len(p) for p in index.positives_of.values())
    fetch = min(k + extra, len(corpus))
    for qs in range(0, nq, MINE_QUERY_CHUNK):
        qids = index.unique_queries[qs : qs + MINE_QUERY_CHUNK]
        eq = head(feats[torch.from_numpy(qids)])
        best_s = torch.full((len(qids), 0), -math.inf)
        best_i = torch.zeros((len(qids), 0), dtype=torch.int64)
        for cs in range(0, len(corpus), MINE_DOC_CHUNK):
            cids = torch.from_numpy(corpus[cs : cs + MINE_DOC_CHUNK])
            s = (eq @ head(feats[cids]).T).float().cpu()
            s_all = torch.cat([best_s, s], dim=1)
            i_all = torch.cat([best_i, cids.expand(len(qids), -1)], dim=1)
            top = torch.topk(s_all, min(fetch, s_all.shape[1]), dim=1)
            best_s, best_i = top.values, i_all.gather(1, top.indices)
        ids = best_i.numpy()
        for r, qid in enumerate(qids):
            skip = index.positives_of[int(qid)]
            chosen = [int(t) for t in ids[r] if t != qid and int(t) not in skip][:k]
            out[qs + r, : len(chosen)] = chosen
    head.train(was_training)
    return out


# --------------------------------------------------------------------------- checkpoints


def _atomic(path: Path, write: Callable[[Path], None]) -> None:
    """Write through a temporary file in the same folder, so `path` is never half-written."""
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        write(tmp)
        os.replace(tmp, path)
    except OSError as exc:
        raise TrainError(f"cannot write {path}: {exc}") from exc
    finally:
        if tmp.exists():
            tmp.unlink()


def save_checkpoint(
    path: Path,
    head: ProjectionHead,
    optimizer: torch.optim.Optimizer,
    step: int,
    history: dict[str, list[float]],
    mined: np.ndarray | None,
    state: Mapping[str, object],
) -> None:
    from safetensors.torch import save_file

    tensors = {f"head.{n}": t.detach().cpu().contiguous() for n, t in head.state_dict().items()}
    params = list(optimizer.param_groups[0]["params"])  # the trained ones, in order
    for i, p in enumerate(params):
        for key, value in optimizer.state.get(p, {}).items():
            tensors[f"opt.{i}.{key}"] = torch.as_tensor(value).detach().cpu().contiguous()
    for name, values in history.items():
        tensors[f"hist.{name}"] = torch.tensor(values, dtype=torch.float64)
    if mined is not None:
        tensors["mined"] = torch.from_numpy(np.ascontiguousarray(mined))
    meta = {"dso_ckpt": json.dumps({**state, "step": step, "format": CHECKPOINT_FORMAT})}
    _atomic(path, lambda tmp: save_file(tensors, str(tmp), metadata=meta))


def load_checkpoint(path: Path) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    from safetensors import SafetensorError, safe_open

    if not path.is_file():
        raise TrainError(f"no checkpoint to resume from at {path}")
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = json.loads((f.metadata() or {}).get("dso_ckpt", "null"))
            tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 - not a dict
    except (SafetensorError, OSError, ValueError) as exc:
        raise TrainError(f"checkpoint {path} is not readable: {exc}") from exc
    if not isinstance(meta, dict) or meta.get("format") != CHECKPOINT_FORMAT:
        raise TrainError(f"{path} is not a dsonode head-training checkpoint")
    return meta, tensors


# --------------------------------------------------------------------------- the trainer


class _StopFlag:
    """First Ctrl-C asks the loop to stop after the current step (and checkpoint); the second
    one raises KeyboardInterrupt at once. Only the main thread can own SIGINT."""

    def __init__(self) -> None:
        self.requested = False
        self._prev: Callable[[int, FrameType | None], Any] | int | None = None

    def _handler(self, signum: int, frame: FrameType | None) -> None:
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True

    def __enter__(self) -> _StopFlag:
        if threading.current_thread() is threading.main_thread():
            self._prev = signal.signal(signal.SIGINT, self._handler)
        return self

    def __exit__(self, *exc: object) -> None:
        if self._prev is not None:
            signal.signal(signal.SIGINT, self._prev)


class _Reporter:
    """A rich progress bar, or plain log lines every `every` steps."""

    def __init__(
        self,
        total: int,
        start: int,
        stage: int,
        every: int,
        bar: bool,
        log: Callable[[str], None],
    ) -> None:
        self.total, self.start, self.stage, self.every, self.log = total, start, stage, every, log
        self.t0 = time.time()
        self._p: Progress | None = None
        if bar:
            from rich.console import Console
            from rich.progress import (
                BarColumn,
                MofNCompleteColumn,
                Progress,
                TextColumn,
                TimeElapsedColumn,
                TimeRemainingColumn,
            )

            self._p = Progress(
                TextColumn(f"stage {stage}"),
                BarColumn(),
                MofNCompleteColumn(),
                TextColumn("loss {task.fields[loss]}"),
                TimeElapsedColumn(),
                TimeRemainingColumn(),
                console=Console(stderr=True),
            )
            self._p.start()
            self._task = self._p.add_task("train", total=total, completed=start, loss="-")

    def step(self, step: int, loss: float, parts: dict[str, float], lr: float) -> None:
        if self._p is not None:
            self._p.update(self._task, completed=step, loss=f"{loss:.4f}")
            return
        if step % self.every == 0 or step == self.total or step == self.start + 1:
            rate = (step - self.start) / max(time.time() - self.t0, 1e-9)
            detail = " ".join(f"{k} {v:.4f}" for k, v in parts.items() if k != "loss")
            self.log(
                f"stage {self.stage} step {step}/{self.total} loss {loss:.4f}"
                + (f" ({detail})" if detail else "")
                + f" lr {lr:.2e} {rate:.2f} steps/s"
            )

    def close(self) -> None:
        if self._p is not None:
            self._p.stop()


def _stderr(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def _initial_head(cfg: TrainConfig, in_dim: int) -> tuple[ProjectionHead, str]:
    if cfg.init is not None:
        head, _ = load_head(cfg.init)
        if head.in_dim != in_dim or head.out_dim != DIM:
            raise TrainError(
                f"--init head maps {head.in_dim} -> {head.out_dim}; the encoder gives "
                f"{in_dim}-d and the space is {DIM}-d"
            )
        return head, str(cfg.init)
    hidden = cfg.hidden or HEAD_HIDDEN
    head = build_seeded_head(in_dim, cfg.head_seed, hidden=hidden)
    return head, f"seeded:{cfg.head_seed}:hidden={hidden}"


def _restore(
    path: Path, expected: dict[str, int | str], index: PairIndex | None
) -> tuple[ProjectionHead, int, dict[str, list[float]], np.ndarray | None, dict, str]:
    """Load a checkpoint and check it continues this very run (same stage, data, seed, ...)."""
    meta, tensors = load_checkpoint(path)
    for key, value in expected.items():
        if meta.get(key) != value:
            raise TrainError(
                f"checkpoint {path} was made with {key}={meta.get(key)!r}, this run has {value!r}"
            )
    try:
        head = ProjectionHead(int(meta["in_dim"]), int(meta["hidden"]), int(meta["out_dim"]))
        head.load_state_dict(
            {k[5:]: v.float() for k, v in tensors.items() if k.startswith("head.")}, strict=True
        )
        step = int(meta["step"])
    except (KeyError, TypeError, ValueError, RuntimeError) as exc:
        raise TrainError(f"checkpoint {path} holds no usable head: {exc}") from exc
    if head.out_dim != DIM or not all(torch.isfinite(t).all() for t in head.state_dict().values()):
        raise TrainError(f"checkpoint {path}: head is not {DIM}-d or has non-finite weights")
    history = {
        k[5:]: [float(x) for x in v.tolist()] for k, v in tensors.items() if k.startswith("hist.")
    }
    if not 0 <= step <= MAX_STEPS or any(len(v) != step for v in history.values()):
        raise TrainError(f"checkpoint {path}: step {step} does not match its loss history")
    mined = None
    if "mined" in tensors:
        mined = tensors["mined"].numpy().astype(np.int64)
        ok = (
            index is not None
            and mined.shape == (len(index.unique_queries), int(expected["mine_k"]))
            and (mined.size == 0 or (mined.min() >= -1 and mined.max() < len(index.texts)))
        )
        if not ok:
            raise TrainError(f"checkpoint {path}: mined negatives do not fit this data")
    return head, step, history, mined, tensors, str(meta.get("init", "?"))


def train_head(
    cfg: TrainConfig,
    embedder: Embedder | None = None,
    log: Callable[[str], None] = _stderr,
    on_step: Callable[[int, float], None] | None = None,
    features: Callable[[list[str]], np.ndarray] | None = None,
) -> TrainResult:
    """Run one training stage end to end and write `cfg.out`. See the module docstring.

    `embedder` (a loaded `dsonode.embed.Embedder`) is reused if given, else one is loaded for
    `cfg.encoder`. `on_step(step, loss)` is called after each step; a KeyboardInterrupt it
    raises behaves like Ctrl-C (checkpoint, then re-raise). `features(texts)` gives the
    encoder features of the texts when the caller already has them (a benchmark's cache);
    by default they are computed with `embedder.encode_base`.
    """
    cfg.validate()
    ckpt_path = cfg.checkpoint_path
    if not cfg.resume and ckpt_path.exists():
        raise TrainError(
            f"a checkpoint exists at {ckpt_path}: pass --resume to continue it, or remove it"
        )
    data = load_training_data(cfg.data, cfg.stage, strict=cfg.strict)
    if data.bad_count:
        log(f"{cfg.data}: skipped {data.bad_count} bad line(s):")
        for line in data.describe_bad():
            log(f"  {line}")

    if embedder is None:
        from dsonode.embed.embedder import get_embedder

        embedder = get_embedder(cfg.encoder, None, device=cfg.device)
    device = embedder.device
    index = PairIndex.build(data.pairs) if cfg.stage >= 2 else None
    texts = list(index.texts) if index is not None else list(data.texts)
    if index is not None and len(index.corpus_ids) < 2:
        raise TrainError(f"stage {cfg.stage} needs at least two distinct documents in the data")
    if features is None:
        log(f"encoding {len(texts)} texts with {embedder.encoder_name} (frozen)")
        base = embedder.encode_base(texts)
    else:
        base = np.asarray(features(texts), dtype=np.float32)
        if base.shape != (len(texts), embedder.hidden_size) or not np.isfinite(base).all():
            raise TrainError(
                f"features must be a finite ({len(texts)}, {embedder.hidden_size}) array"
            )
    feats = torch.from_numpy(base).to(device)
    n_examples = len(texts) if index is None else len(index.query_ids)
    per_epoch = -(-n_examples // cfg.batch_size)
    total = cfg.steps if cfg.steps is not None else cfg.epochs * per_epoch

    torch.manual_seed(cfg.seed)
    # What a checkpoint must agree on to be continued (the rest may change between runs).
    state: dict[str, int | str] = {
        "stage": cfg.stage,
        "seed": cfg.seed,
        "data_sha256": data.sha256,
        "batch_size": cfg.batch_size,
        "encoder_sha256": embedder.encoder_sha256,
        "mine_k": cfg.mine_k if cfg.stage >= 2 else 0,
        "freeze_fc2": int(cfg.freeze_fc2),
    }
    if cfg.resume:
        head, step, history, mined, tensors, init_desc = _restore(ckpt_path, state, index)
        log(f"resumed from {ckpt_path} at step {step}")
    else:
        head, init_desc = _initial_head(cfg, embedder.hidden_size)
        step, history, mined, tensors = 0, {}, None, None
    state.update(in_dim=head.in_dim, hidden=head.hidden, out_dim=head.out_dim, init=init_desc)
    head = head.to(device).train()
    if cfg.freeze_fc2:
        head.fc2.requires_grad_(False)
    params = [p for p in head.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=cfg.learning_rate, weight_decay=cfg.weight_decay)
    if tensors is not None:
        opt_state = optimizer.state_dict()
        opt_state["state"] = {}
        for i in range(len(params)):
            prefix = f"opt.{i}."
            entry = {k[len(prefix) :]: v for k, v in tensors.items() if k.startswith(prefix)}
            if entry:
                opt_state["state"][i] = entry
        try:
            optimizer.load_state_dict(opt_state)
        except (KeyError, ValueError, RuntimeError) as exc:
            raise TrainError(f"checkpoint {ckpt_path}: optimizer state unusable: {exc}") from exc
    if total > step:
        log(
            f"stage {cfg.stage}: {n_examples} examples, batch {cfg.batch_size}, "
            f"steps {step}->{total}, lr {cfg.learning_rate:g}, init {init_desc}"
        )

    reference = None
    if getattr(embedder, "reference", None) is not None:
        reference = torch.as_tensor(embedder.reference, dtype=torch.float32, device=device)
    order_cache: dict[str, Any] = {}
    show_bar = cfg.progress if cfg.progress is not None else sys.stderr.isatty()
    reporter = _Reporter(total, step, cfg.stage, cfg.log_every, bool(show_bar), log)

    def checkpoint() -> None:
        save_checkpoint(ckpt_path, head, optimizer, step, history, mined, state)

    try:
        with _StopFlag() as stop:
            while step < total:
                lr = cfg.learning_rate * (min(1.0, (step + 1) / cfg.warmup) if cfg.warmup else 1)
                for group in optimizer.param_groups:
                    group["lr"] = lr
                rows = batch_rows(cfg.seed, step, n_examples, cfg.batch_size, order_cache)
                if index is not None and cfg.mine_k and step % cfg.mine_every == 0:
                    mined = mine_hard_negatives(head, feats, index, cfg.mine_k)
                loss, parts = _loss(cfg, head, feats, index, mined, rows, reference, step)
                if not torch.isfinite(loss):
                    raise TrainError(f"loss became {loss.item()} at step {step + 1}")
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                step += 1
                for k, v in parts.items():
                    history.setdefault(k, []).append(v)
                reporter.step(step, parts["loss"], parts, lr)
                if on_step is not None:
                    try:
                        on_step(step, parts["loss"])
                    except KeyboardInterrupt:
                        stop.requested = True
                if stop.requested:
                    checkpoint()
                    log(f"interrupted: checkpoint at step {step} in {ckpt_path} (--resume)")
                    raise KeyboardInterrupt
                if cfg.checkpoint_every and step % cfg.checkpoint_every == 0 and step < total:
                    checkpoint()
    finally:
        reporter.close()

    losses = history.get("loss", [])
    components = {k: window_mean(v, first=False) for k, v in history.items()}
    head = head.cpu().eval()
    from dsonode.embed.space import space_id_of

    space_id = space_id_of(
        embedder.encoder_name,
        embedder.encoder_sha256,
        embedder.max_length,
        head_weights_sha256(head),
        head.out_dim,
        getattr(embedder, "reference", None),
        getattr(embedder, "options", None),
    )
    first_loss = window_mean(losses, first=True)
    final_loss = window_mean(losses, first=False)
    metadata: dict[str, object] = {
        "trainer": "dsonode head train",
        "stage": cfg.stage,
        "steps": step,
        "final_loss": final_loss,
        "first_loss": first_loss,
        "losses": components,
        "data_sha256": data.sha256,
        "data_records": n_examples,
        "seed": cfg.seed,
        "init": init_desc,
        "encoder": embedder.encoder_name,
        "encoder_sha256": embedder.encoder_sha256,
        "lr": cfg.learning_rate,
        "batch_size": cfg.batch_size,
        "space_id": space_id,
    }
    if cfg.stage >= 2:
        metadata.update(loss=cfg.loss, tau=cfg.tau, mine_k=cfg.mine_k, matryoshka=cfg.matryoshka)
    if cfg.freeze_fc2:
        metadata.update(freeze_fc2=True)
    if cfg.stage == 3:
        metadata.update(noise=cfg.noise, copies=cfg.copies, rank_weight=cfg.rank_weight)
    _atomic(cfg.out, lambda tmp: save_head(head, tmp, metadata))
    if ckpt_path.exists() and not cfg.keep_checkpoint:
        ckpt_path.unlink()
    log(
        f"wrote {cfg.out}: stage {cfg.stage}, {step} steps, loss "
        f"{metadata['first_loss']:.4f} -> {metadata['final_loss']:.4f}, space {space_id[:16]}"
    )
    return TrainResult(
        out=cfg.out,
        stage=cfg.stage,
        steps=step,
        first_loss=first_loss,
        final_loss=final_loss,
        history=list(losses),
        components=components,
        data_sha256=data.sha256,
        bad_lines=data.bad_count,
        space_id=space_id,
        metadata=metadata,
    )


def _loss(
    cfg: TrainConfig,
    head: ProjectionHead,
    feats: torch.Tensor,
    index: PairIndex | None,
    mined: np.ndarray | None,
    rows: np.ndarray,
    reference: torch.Tensor | None,
    step: int,
) -> tuple[torch.Tensor, dict[str, float]]:
    """The loss of one batch for cfg.stage, and its terms as floats for logging."""
    if index is None:  # stage 1
        h = feats[torch.from_numpy(rows)]
        loss = L.projection_loss(head(h), L.pad_target(h, head.out_dim))
        return loss, {"loss": loss.item()}
    q, cand, pos_col, neg_mask = pair_batch(index, mined, rows)
    hq, hc = feats[torch.from_numpy(q)], feats[torch.from_numpy(cand)]
    eq, ec = head(hq), head(hc)
    pos_t = torch.from_numpy(pos_col).to(feats.device)
    neg_t = torch.from_numpy(neg_mask).to(feats.device)
    l_rank = L.pairwise_rank_loss(eq @ ec.T, pos_t, neg_t, cfg.loss, cfg.tau, cfg.margin)
    terms: dict[str, float] = {"rank": l_rank.item()}
    if cfg.matryoshka:
        dims = tuple(d for d in PREFIX_DIMS if d < eq.shape[1])
        l_mat = L.matryoshka_rank_loss(eq, ec, pos_t, neg_t, dims, cfg.loss, cfg.tau, cfg.margin)
        terms["matryoshka"] = l_mat.item()
        l_rank = l_rank + cfg.matryoshka * l_mat
    if cfg.stage == 2:
        return l_rank, {"loss": l_rank.item(), **terms}
    e_all = torch.cat([eq, ec])
    l_bit = L.bitdelta_loss(e_all, reference)
    gen = torch.Generator().manual_seed((cfg.seed * 1_000_003 + step) % 2**63)
    # Robustness on the pairs themselves (queries and their positives): the noisy copies
    # cost `copies` extra head passes each, so they are not spent on every candidate.
    h_r, e_r = torch.cat([hq, hc[pos_t]]), torch.cat([eq, ec[pos_t]])
    l_rob = L.robust_loss(head, h_r, e_r, cfg.noise, cfg.copies, gen)
    l_div = L.diversity_loss(e_all)
    loss = L.dso_loss(l_bit, l_rob, l_div) + cfg.rank_weight * l_rank
    return loss, {
        "loss": loss.item(),
        **terms,
        "bitdelta": l_bit.item(),
        "robust": l_rob.item(),
        "diverse": l_div.item(),
    }


__all__ = [
    "TrainConfig",
    "TrainError",
    "TrainResult",
    "mine_hard_negatives",
    "pair_batch",
    "train_head",
]
