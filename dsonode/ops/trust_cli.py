"""Commands: the operator's control over what its node holds and serves.

`dsonode block AUTHOR` / `unblock AUTHOR` / `allow AUTHOR` / `disallow AUTHOR` change the
running node's operator lists (kept in its store), `dsonode forget EXPERIENCE_ID` deletes an
experience and tombstones it (never stored again at this node), `dsonode retract
EXPERIENCE_ID` withdraws one of the node's own experiences network-wide, `dsonode trust` shows the
policy, the lists and the tombstone count. AUTHOR is a base58 peer id or 64 hex (a public
key). All of it goes through the node's socket (`set_trust`, `forget`, `retract`, `trust`); no node on
the socket is exit code 1 with a message saying so. See ARCHITECTURE.md "Trust".
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from dsonode.api.cliargs import add_data_dir_arg, add_node_args, node_client
from dsonode.argtypes import SubParsers
from dsonode.config.paths import STORE_DIR_NAME, default_data_dir

#: command -> (operator list, on, help)
LIST_COMMANDS = {
    "block": ("block", True, "refuse and stop serving everything an author signs"),
    "unblock": ("block", False, "take an author off the block list"),
    "allow": ("allow", True, "trust an author as the node's own (its items are vouched)"),
    "disallow": ("allow", False, "take an author off the allow list"),
}


def _experience_command(
    subparsers: SubParsers,
    name: str,
    help_text: str,
    description: str,
    func: Callable[[argparse.Namespace], int],
) -> None:
    """A command on one experience id at the running node (forget, retract)."""
    p = subparsers.add_parser(name, help=help_text, description=description)
    p.add_argument("experience_id", help="64 hex digits")
    add_node_args(p, timeout=30.0)
    p.add_argument("--json", action="store_true", help="print the reply as JSON")
    p.set_defaults(func=func)


def register(subparsers: SubParsers) -> None:
    for name, (_list, _on, help_text) in LIST_COMMANDS.items():
        p = subparsers.add_parser(name, help=help_text, description=help_text + ".")
        p.add_argument("author", help="base58 peer id (12D3KooW...) or 64 hex (public key)")
        add_node_args(p, timeout=30.0)
        p.add_argument("--json", action="store_true", help="print the reply as JSON")
        p.set_defaults(func=cmd_list, trust_command=name)
    _experience_command(
        subparsers,
        "forget",
        "delete an experience at the node and never store it again",
        "Delete an experience with its codes and votes from the running node and write a "
        "tombstone: neither gossip nor sync stores it there again, also after a restart.",
        cmd_forget,
    )
    _experience_command(
        subparsers,
        "retract",
        "withdraw one of this node's experiences network-wide",
        "Sign a retraction of one of the running node's own experiences and publish it: every "
        "node that holds this node's copy deletes it and never stores it again "
        "(PROTOCOL.md 7.6).",
        cmd_retract,
    )
    p = subparsers.add_parser(
        "export",
        help="write the node's library as signed items (JSON lines)",
        description="Write every item of the node's store (experiences, submissions, votes, "
        "retractions) with its signature to FILE ('-': stdout), for a backup, a move or "
        "seeding a new network. Reads the store read-only: the node may be running.",
    )
    p.add_argument("file", help="output file, or - for stdout")
    add_data_dir_arg(p)
    p.set_defaults(func=cmd_export)
    p = subparsers.add_parser(
        "import",
        help="verify and add the signed items of an export (node stopped)",
        description="Verify every line of an export like gossip does (signature included) "
        "and store the valid items in the node's store; a tampered line is rejected by its "
        "line number, exit code 1. The node must be stopped; it recomputes the consensus of "
        "what was imported when it starts.",
    )
    p.add_argument("file", help="an export file, or - for stdin")
    add_data_dir_arg(p)
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    p.set_defaults(func=cmd_import)
    p = subparsers.add_parser(
        "compact",
        help="rewrite the store without its free pages (node stopped)",
        description="Compact the node's LMDB store (a compacting copy that replaces the data "
        "file once complete). The node must be stopped.",
    )
    add_data_dir_arg(p)
    p.add_argument("--json", action="store_true", help="print sizes as JSON")
    p.set_defaults(func=cmd_compact)
    p = subparsers.add_parser(
        "trust",
        help="the node's trust mode, operator lists and tombstones",
        description="Show what the running node serves (trust mode), its allow and block "
        "lists and how many experiences it has forgotten.",
    )
    add_node_args(p, timeout=30.0)
    p.add_argument("--json", action="store_true", help="print the reply as JSON")
    p.set_defaults(func=cmd_trust)


def _call(args: argparse.Namespace, fn: Callable[[Any], dict[str, Any]]) -> dict[str, Any] | None:
    """Run one client call; None after telling the user why not (exit code 1)."""
    from dsonode.api.client import ClientError
    from dsonode.api.jsonrpc import RpcError

    try:
        with node_client(args) as client:
            return fn(client)
    except (ClientError, RpcError) as exc:
        message = exc.message if isinstance(exc, RpcError) else str(exc)
        print(f"dsonode: {message}", file=sys.stderr)
        return None


def cmd_list(args: argparse.Namespace) -> int:
    list_name, on, _help = LIST_COMMANDS[args.trust_command]
    result = _call(args, lambda c: c.set_trust(list_name, args.author, on))
    if result is None:
        return 1
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        state = "now" if result.get("changed") else "already"
        where = "on" if on else "off"
        print(f"{result.get('peer_id')} is {state} {where} the {list_name} list")
    return 0


def cmd_forget(args: argparse.Namespace) -> int:
    result = _call(args, lambda c: c.forget(args.experience_id))
    if result is None:
        return 1
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        held = "deleted and tombstoned" if result.get("found") else "tombstoned (was not held)"
        print(f"{result.get('id')}: {held}")
    return 0


def cmd_retract(args: argparse.Namespace) -> int:
    result = _call(args, lambda c: c.retract(args.experience_id))
    if result is None:
        return 1
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        print(f"{result.get('id')}: retracted (published to peers)")
    return 0


def cmd_trust(args: argparse.Namespace) -> int:
    result = _call(args, lambda c: c.trust())
    if result is None:
        return 1
    if args.json:
        print(json.dumps(result, indent=2))
        return 0
    print(f"mode        {result.get('mode')}")
    print(f"allowed     {result.get('allowed')}")
    for a in result.get("allowed_authors") or []:
        print(f"  + {a}")
    print(f"blocked     {result.get('blocked')}")
    for b in result.get("blocked_authors") or []:
        print(f"  - {b}")
    print(f"tombstones  {result.get('tombstones')}")
    return 0


def _store_dir(args: argparse.Namespace) -> Path:
    return (args.data_dir or default_data_dir()) / STORE_DIR_NAME


def _open_store(args: argparse.Namespace, *, readonly: bool) -> Any:
    """The store, or None after saying why not (exit code 1)."""
    from dsonode.store import Store, StoreError

    try:
        return Store(_store_dir(args), readonly=readonly)
    except StoreError as exc:
        hint = " (stop the node first)" if "in use" in str(exc) else ""
        print(f"dsonode: {exc}{hint}", file=sys.stderr)
        return None


def cmd_export(args: argparse.Namespace) -> int:
    from dsonode.library.transfer import write_export

    store = _open_store(args, readonly=True)
    if store is None:
        return 1
    try:
        if args.file == "-":
            n = write_export(store, sys.stdout)
        else:
            with open(args.file, "w", encoding="utf-8") as out:
                n = write_export(store, out)
    finally:
        store.close()
    if args.file != "-":
        print(f"exported {n} signed items to {args.file}", file=sys.stderr)
    return 0


def cmd_import(args: argparse.Namespace) -> int:
    from dsonode.library.transfer import import_lines

    store = _open_store(args, readonly=False)
    if store is None:
        return 1
    try:
        if args.file == "-":
            report = import_lines(store, sys.stdin)
        else:
            try:
                with open(args.file, encoding="utf-8", errors="replace") as f:
                    report = import_lines(store, f)
            except OSError as exc:
                print(f"dsonode: cannot read {args.file}: {exc}", file=sys.stderr)
                return 1
    finally:
        store.close()
    if args.json:
        print(json.dumps(report.as_dict(), indent=2))
    else:
        print(
            f"{report.lines} items read: {report.stored} stored, {report.duplicates} already "
            f"held, {report.blocked} of blocked authors skipped, {report.rejected} rejected"
        )
        for r in report.rejected_lines:
            print(f"  line {r['line']}: {r['error']}")
    return 1 if report.rejected else 0


def cmd_compact(args: argparse.Namespace) -> int:
    store = _open_store(args, readonly=False)
    if store is None:
        return 1
    try:
        before, after = store.compact()
    finally:
        store.close()
    if args.json:
        print(json.dumps({"before_bytes": before, "after_bytes": after}))
    else:
        print(f"compacted {_store_dir(args)}: {before} -> {after} bytes")
    return 0
