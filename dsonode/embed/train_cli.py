"""`dsonode head train`: the command line of the head trainer (dsonode.embed.train).

Kept apart from the trainer so that registering the command imports no torch: every `dsonode`
command builds the whole parser.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import TYPE_CHECKING

from dsonode.argtypes import SubParsers, bounded_float, bounded_int
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

if TYPE_CHECKING:  # torch loads only when a head is trained (see the module docstring)
    from dsonode.embed.train import TrainConfig


def register_head_commands(subparsers: SubParsers) -> None:
    """Add `head train` to the `dsonode` command line (called by dsonode/embed/cli.py)."""
    head = subparsers.add_parser("head", help="projection head: train the three DSO stages")
    head_sub = head.add_subparsers(dest="head_command", metavar="SUBCOMMAND", required=True)
    p = head_sub.add_parser(
        "train",
        help="train the projection head (stage 1, 2 or 3) and write a safetensors head",
        description=(
            "Stage 1: MSE to the encoder's own embedding zero-padded to 7680. Stage 2: pairwise "
            "reranking loss with in-batch and mined hard negatives. Stage 3: 0.3 L_bitdelta + "
            '0.5 L_robust + 0.2 L_diverse + rank-weight * L_rank. Data: JSONL, {"text"} '
            '(stage 1) or {"query", "positive", "negatives"}; bad lines are reported and '
            "skipped (--strict: fatal). Ctrl-C saves a checkpoint; --resume continues it."
        ),
    )
    p.add_argument("--stage", type=int, choices=(1, 2, 3), required=True)
    p.add_argument("--data", type=Path, required=True, help="training data (JSONL)")
    p.add_argument("--out", type=Path, required=True, help="head to write (.safetensors)")
    p.add_argument("--init", type=Path, help="head to start from (default: the seeded head)")
    p.add_argument("--encoder", type=Path, help="local Hugging Face encoder folder")
    p.add_argument("--device", default="cpu", help="cpu, cuda, cuda:N or auto (default cpu)")
    p.add_argument(
        "--threads",
        type=bounded_int(1, 1024),
        help="torch CPU threads (default: torch's; 1 is faster on a busy machine)",
    )
    p.add_argument("--epochs", type=bounded_int(1, MAX_EPOCHS), default=1)
    p.add_argument("--steps", type=bounded_int(1, MAX_STEPS), help="total steps (over epochs)")
    p.add_argument(
        "--lr", type=bounded_float(0, 1, open_low=True), help="default 5e-4 (stage 1), 1e-4"
    )
    p.add_argument("--weight-decay", type=bounded_float(0, 1), default=0.01)
    p.add_argument("--batch-size", type=bounded_int(1, MAX_BATCH), default=32)
    p.add_argument("--warmup", type=bounded_int(0, MAX_STEPS), default=0, help="linear warm-up")
    p.add_argument("--seed", type=bounded_int(0, 2**63 - 1), default=0)
    p.add_argument("--checkpoint", type=Path, help="checkpoint file (default <out>.ckpt)")
    p.add_argument("--checkpoint-every", type=bounded_int(0, MAX_STEPS), default=100)
    p.add_argument("--resume", action="store_true", help="continue from the checkpoint")
    p.add_argument("--keep-checkpoint", action="store_true", help="keep it after success")
    p.add_argument("--log-every", type=bounded_int(1, MAX_STEPS), default=10)
    bar = p.add_mutually_exclusive_group()
    bar.add_argument("--progress", dest="progress", action="store_true", default=None)
    bar.add_argument("--no-progress", dest="progress", action="store_false")
    p.add_argument("--strict", action="store_true", help="a bad data line is fatal")
    g = p.add_argument_group("stages 2-3 (ranking)")
    g.add_argument("--loss", choices=("logistic", "margin"), default="logistic")
    g.add_argument("--tau", type=bounded_float(0, 10, open_low=True), default=DEFAULT_TAU)
    g.add_argument("--margin", type=bounded_float(0, 2), default=DEFAULT_MARGIN)
    g.add_argument("--mine-k", type=bounded_int(0, MAX_MINE_K), default=4)
    g.add_argument("--mine-every", type=bounded_int(1, MAX_STEPS), default=50)
    g.add_argument(
        "--matryoshka",
        type=bounded_float(0, 100),
        default=0.0,
        help="weight of the ranking loss on the 1024/2048/4096 prefixes (default 0: off)",
    )
    g3 = p.add_argument_group("stage 3 (DSO regularisers)")
    g3.add_argument("--noise", type=bounded_float(0, 10), default=0.05)
    g3.add_argument("--copies", type=bounded_int(1, MAX_COPIES), default=4)
    g3.add_argument("--rank-weight", type=bounded_float(0, 100), default=1.0)
    p.add_argument(
        "--freeze-fc2",
        action="store_true",
        help="train fc1 and the layer norms only (a seeded fc2 keeps its exact int8 kernel)",
    )
    gh = p.add_argument_group("fresh seeded head (without --init)")
    gh.add_argument("--hidden", type=bounded_int(1, 65_536), help=f"default {HEAD_HIDDEN}")
    gh.add_argument("--head-seed", type=bounded_int(0, 2**64 - 1), default=DEFAULT_HEAD_SEED)
    p.add_argument("--json", action="store_true", help="print the result as one JSON object")
    p.set_defaults(func=_cmd_train)


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    from dsonode.embed.train import TrainConfig

    names = TrainConfig.__dataclass_fields__
    return TrainConfig(**{k: v for k, v in vars(args).items() if k in names})


def _cmd_train(args: argparse.Namespace) -> int:
    import torch

    from dsonode.embed.train import train_head

    cfg = config_from_args(args)
    if args.threads:
        torch.set_num_threads(args.threads)
    result = train_head(cfg)
    summary = {
        "out": str(result.out),
        "stage": result.stage,
        "steps": result.steps,
        "first_loss": result.first_loss,
        "final_loss": result.final_loss,
        "losses": result.components,
        "data_sha256": result.data_sha256,
        "bad_lines": result.bad_lines,
        "space_id": result.space_id,
    }
    if args.json:
        print(json.dumps(summary, sort_keys=True))
    else:
        print(
            f"{result.out}  stage {result.stage}  steps {result.steps}  "
            f"loss {result.first_loss:.4f} -> {result.final_loss:.4f}  space {result.space_id}"
        )
    return 0
