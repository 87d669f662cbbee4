"""The socket clients: `dsonode search`, `add`, `stats` and `ingest` (dsonode.api.ingest).

The client commands find the node through `--data-dir` (default $DSONODE_DATA_DIR or
~/.dsonode) or an explicit `--socket`, and fail with a clear message when no node runs there.
"""

from __future__ import annotations

import argparse
import json
from typing import Any

from dsonode.api import ingest
from dsonode.api.cliargs import add_node_args, node_client
from dsonode.argtypes import SubParsers, bounded_int


def _add_client_args(p: argparse.ArgumentParser) -> None:
    add_node_args(p, timeout=60.0)
    p.add_argument("--json", action="store_true", help="print the raw JSON result")


def register(subparsers: SubParsers) -> None:
    p = subparsers.add_parser("search", help="search the running node's experiences")
    p.add_argument("query", help="what to look for (free text)")
    p.add_argument("-k", type=bounded_int(1), default=5, help="results (1..100, default 5)")
    p.add_argument("--domain", default=None, help="only this domain")
    p.add_argument("--min-score", type=float, default=None, help="drop results below it")
    p.add_argument("--confirmed-only", action="store_true", help="only confirmed consensus")
    _add_client_args(p)
    p.set_defaults(func=cmd_search)

    p = subparsers.add_parser("add", help="add an experience (signed by the node) to the node")
    p.add_argument("text", help="the lesson, at most 1,024 bytes of UTF-8")
    p.add_argument("--domain", required=True, help="its domain, e.g. math")
    p.add_argument("--tags", default="", help="comma-separated tags, e.g. algebra,proofs")
    _add_client_args(p)
    p.set_defaults(func=cmd_add)

    p = subparsers.add_parser("stats", help="counts and state of the running node")
    _add_client_args(p)
    p.set_defaults(func=cmd_stats)

    ingest.register(subparsers)


def _print_json(obj: Any) -> None:
    print(json.dumps(obj, indent=2, ensure_ascii=False))


def cmd_search(args: argparse.Namespace) -> int:
    with node_client(args) as client:
        result = client.call(
            "search",
            {
                k: v
                for k, v in {
                    "query": args.query,
                    "k": args.k,
                    "domain": args.domain,
                    "min_score": args.min_score,
                    "confirmed_only": args.confirmed_only or None,
                }.items()
                if v is not None
            },
        )
    if args.json:
        _print_json(result)
        return 0
    hits = result["results"]
    if not hits:
        print("no results")
    for rank, hit in enumerate(hits, 1):
        flag = "confirmed" if hit["confirmed"] else f"{hit['submissions']} submission(s)"
        tags = f" [{', '.join(hit['tags'])}]" if hit["tags"] else ""
        print(f"{rank:>3}. {hit['score']:.4f}  {hit['domain']}{tags}  ({flag})  {hit['id'][:12]}")
        print(f"     {hit['text']}")
    return 0


def cmd_add(args: argparse.Namespace) -> int:
    tags = [t.strip() for t in args.tags.split(",") if t.strip()]
    with node_client(args) as client:
        result = client.add_experience(args.text, args.domain, tags)
    if args.json:
        _print_json(result)
    else:
        state = "added" if result.get("new") else "already known"
        print(f"{state}: {result['id']} ({result['domain']})")
    return 0


def cmd_stats(args: argparse.Namespace) -> int:
    with node_client(args) as client:
        result = client.stats()
    if args.json:
        _print_json(result)
        return 0
    store = result.get("store", {})
    print(f"version      {result['version']}  (up {result['uptime_s']:.0f} s)")
    print(f"model        {result['model']}  ({result['dim']}-d)")
    print(f"space        {result['space_id']}")
    print(f"author       {result['author']}")
    print(f"indexed      {result['indexed']}")
    for name, count in store.items():
        print(f"store.{name:<8}{count}" if len(name) < 8 else f"store.{name} {count}")
    conns = result.get("connections", {})
    print(
        f"connections  {conns.get('open', 0)} open, {conns.get('served', 0)} served, "
        f"{conns.get('requests', 0)} requests, {conns.get('errors', 0)} errors"
    )
    return 0
