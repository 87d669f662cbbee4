"""`dsonode embed "text" [--dim 1024] [--json]`: one text -> its vector and the space id."""

from __future__ import annotations

import argparse
import json

from dsonode.argtypes import SubParsers
from dsonode.embed.defaults import DEFAULT_DEVICE, VALID_DIMS

_SHOWN_VALUES = 8


def register(subparsers: SubParsers) -> None:
    p = subparsers.add_parser(
        "embed",
        help="embed one text in the native space and print a summary (or the vector)",
        description="Embed one text with the node's encoder and projection head.",
    )
    p.add_argument("text", help="the text to embed (truncated to the encoder's max length)")
    p.add_argument(
        "--dim",
        type=int,
        choices=VALID_DIMS,
        default=None,
        help="return a renormalised Matryoshka prefix of this size (default: native 7680)",
    )
    p.add_argument("--json", action="store_true", help="print the full vector as one JSON object")
    p.add_argument("--encoder", default=None, help="local Hugging Face encoder folder")
    p.add_argument("--head", default=None, help="trained head (.safetensors); default: seeded")
    p.add_argument(
        "--device",
        default=DEFAULT_DEVICE,
        help=f"auto, cpu or cuda[:N] (default: {DEFAULT_DEVICE})",
    )
    p.set_defaults(func=_run_embed)
    # `dsonode head train ...` (the three training stages) lives with the trainer.
    from dsonode.embed.train_cli import register_head_commands

    register_head_commands(subparsers)


def _run_embed(args: argparse.Namespace) -> int:
    import numpy as np

    from dsonode.embed.embedder import get_embedder

    emb = get_embedder(args.encoder, args.head, device=args.device)
    vec = emb.embed_query(args.text, dim=args.dim)
    if args.json:
        print(
            json.dumps(
                {
                    "model": emb.model_name,
                    "space_id": emb.space_id,
                    "dim": int(vec.shape[0]),
                    "tokens": emb.count_tokens([args.text])[0],
                    "vector": [float(x) for x in vec],
                }
            )
        )
        return 0
    head = ", ".join(f"{x:+.5f}" for x in vec[:_SHOWN_VALUES])
    print(f"model:    {emb.model_name}")
    print(f"space_id: {emb.space_id}")
    print(f"dim:      {vec.shape[0]}")
    print(f"norm:     {float(np.linalg.norm(vec)):.6f}")
    print(f"tokens:   {emb.count_tokens([args.text])[0]} (max {emb.max_length})")
    print(f"values:   [{head}, ...]")
    return 0
