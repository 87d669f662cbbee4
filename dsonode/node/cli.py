"""`dsonode run`: run a node (serves the retrieval socket; joins the network when configured).

Its flags are derived from the settings declaration (dsonode.config.settings: every setting
with a `flag`), so a flag, its TOML key and its environment variable share one default, one
bound and one help text. Precedence: the file (--config), then DSONODE_<SECTION>_<KEY>, then
the flags given. Registering imports nothing heavy; the node itself (torch, libp2p) is
imported only when the command runs.
"""

from __future__ import annotations

import argparse
import logging
import math
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from dsonode.api.cliargs import add_data_dir_arg
from dsonode.argtypes import SubParsers, bounded_float, bounded_int
from dsonode.config.loader import ConfigError, load_config
from dsonode.config.settings import SPEC, Setting, setting


def _flag_type(s: Setting) -> Callable[[str], Any]:
    """The argparse type of a setting's flag: numbers within the declared bounds (a bad flag
    is a usage error, exit 2); the loader validates everything once more."""
    lo = s.lo if s.lo is not None else -math.inf
    hi = s.hi if s.hi is not None else math.inf
    if s.kind == "int":
        return bounded_int(int(lo), None if hi == math.inf else int(hi))
    if s.kind == "float":
        return bounded_float(lo, hi)
    if s.kind == "committee":
        numbers = bounded_int(int(lo), int(hi))

        def committee(text: str) -> int | str:
            if text == "all":
                return text
            try:
                return numbers(text)
            except argparse.ArgumentTypeError:
                raise argparse.ArgumentTypeError(
                    f'must be {int(lo)}..{int(hi)} or "all", got {text!r}'
                ) from None

        return committee
    return str


def _flag_help(s: Setting) -> str:
    shown = "all" if s.kind == "committee" and s.default is None else s.default
    note = f" (sets {s.name}; default {shown!r})" if s.kind != "bool" else f" (sets {s.name})"
    if s.kind == "peers":
        note = f" (repeat; replaces {s.name})"
    return s.doc + note


def add_setting_flags(p: argparse.ArgumentParser) -> None:
    """One flag per setting that declares one; each defaults to None (= not given)."""
    for s in SPEC:
        if not s.flag:
            continue
        dest = s.name.replace(".", "__")
        if s.kind == "bool":
            p.add_argument(s.flag, dest=dest, action="store_true", default=None, help=_flag_help(s))
        elif s.kind == "peers":
            p.add_argument(
                s.flag, dest=dest, action="append", default=None, metavar="MULTIADDR",
                help=_flag_help(s),
            )  # fmt: skip
        elif s.kind == "choice":
            choices = [c for c in s.choices if c != "none"]
            p.add_argument(s.flag, dest=dest, choices=choices, default=None, help=_flag_help(s))
        else:
            p.add_argument(s.flag, dest=dest, type=_flag_type(s), default=None, help=_flag_help(s))


def flag_overrides(args: argparse.Namespace) -> dict[str, Any]:
    """The settings the flags give, as dotted name -> value (with what each flag enables)."""
    out: dict[str, Any] = {}
    for s in SPEC:
        if not s.flag:
            continue
        value = getattr(args, s.name.replace(".", "__"), None)
        if value is None:
            continue
        out[s.name] = value
        if s.enables:
            out[s.enables] = True
    return out


def _flag_of(key: str) -> str | None:
    """The flag of the setting a ConfigError names ("net.bootstrap[0]" -> "--peer")."""
    try:
        return setting(key.split("[")[0]).flag or None
    except KeyError:  # a section or an unknown key: no flag
        return None


def register(subparsers: SubParsers) -> None:
    p = subparsers.add_parser(
        "run",
        help="run a node (serves the retrieval socket; joins the network with --listen/--config)",
        description="Run a node: opens the store in DATA_DIR, loads the embedding model, and "
        "serves JSON-RPC on DATA_DIR/dsonode.sock until SIGTERM or Ctrl-C. With --config F the "
        "settings come from the TOML file F; DSONODE_<SECTION>_<KEY> environment variables "
        "override it, and flags given explicitly override both. Without --config the node "
        "joins no network unless --listen is given.",
    )
    p.add_argument(
        "--config",
        type=Path,
        default=None,
        help="TOML config (see `dsonode init`, `dsonode config check`)",
    )
    add_data_dir_arg(p)
    add_setting_flags(p)
    p.set_defaults(func=cmd_run)


def run_config(args: argparse.Namespace) -> Any:
    """The NodeConfig of `dsonode run` (a `dsonode.node.NodeConfig`). Raises ConfigError/
    DaemonError/LibraryError (DsoError: a clean message, exit 2) before the model loads."""
    from dsonode.node.node import (
        NodeError,
        consensus_rules,
        daemon_config,
        light_embedder,
        node_config,
    )

    overrides = flag_overrides(args)
    if args.config is None and "net.enabled" not in overrides:
        overrides["net.enabled"] = False  # no file, no --listen: a local node
    if args.data_dir is not None:
        overrides["node.data_dir"] = str(Path(args.data_dir).expanduser().resolve())
    try:
        config = node_config(load_config(args.config, overrides=overrides))
    except ConfigError as exc:
        flag = _flag_of(exc.key)
        if flag is None or exc.source is not None or exc.key.split("[")[0] not in overrides:
            raise
        raise ConfigError(exc.key, f"{str(exc).split(': ', 1)[1]} (given as {flag})") from None
    if config.listen is None and (config.peers or config.byzantine_attack):
        raise NodeError("--peer and --byzantine-attack need --listen (or net.enabled)")
    consensus_rules(config)
    if config.role == "light":  # no gateway, a known space: checked before anything opens
        light_embedder(config)
    if config.listen is not None:  # bad addresses stop the node before the model loads
        daemon_config(config)
    return config


#: glibc malloc arenas a node may use. glibc's default (8 per core) gives each worker thread
#: (socket handlers, to_thread workers, torch) its own arena that keeps freed memory, so resident
#: memory climbs with thread churn; 2 arenas bound that at a few per cent of throughput.
MALLOC_ARENAS = 2
_M_ARENA_MAX = -8  # mallopt parameter number in glibc's malloc.h


def limit_malloc_arenas(arenas: int = MALLOC_ARENAS) -> bool:
    """Cap glibc's malloc arenas (before threads start); False where there is no glibc or the
    operator set MALLOC_ARENA_MAX themselves (theirs wins)."""
    import ctypes
    import ctypes.util
    import os

    if "MALLOC_ARENA_MAX" in os.environ:
        return False
    name = ctypes.util.find_library("c")
    if name is None:
        return False
    try:
        libc = ctypes.CDLL(name)
        return bool(libc.mallopt(_M_ARENA_MAX, arenas))
    except (OSError, AttributeError):  # not glibc (musl, macOS): nothing to cap
        return False


def cmd_run(args: argparse.Namespace) -> int:
    from dsonode.node.node import run_node

    limit_malloc_arenas()
    config = run_config(args)
    logging.basicConfig(
        level=getattr(logging, config.log_level),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    return run_node(config)
