"""Commands: `dsonode init` (identity + commented config) and `dsonode config check`.

Registering them imports nothing heavy (no libp2p, torch): `dsonode` must start fast.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import os
import sys
from pathlib import Path
from typing import Any

from dsonode.argtypes import SubParsers
from dsonode.config.paths import CONFIG_FILE_NAME, KEY_FILE_NAME

#: Domain separation for the deterministic testnet keys (`--testnet-key-seed`).
TESTNET_KEY_DOMAIN = b"dso/testnet-key/1"
MAX_PEERS_ON_COMMAND_LINE = 64


def register(subparsers: SubParsers) -> None:
    p = subparsers.add_parser(
        "init",
        help="create a node's identity key and a commented config file",
        description="Write DATA_DIR/node.key (Ed25519, mode 0600) and DATA_DIR/dsonode.toml "
        "(every setting documented with its default), then print the node's peer id.",
    )
    p.add_argument("--data-dir", type=Path, required=True, help="the node's data directory")
    p.add_argument("--listen", default=None, help="libp2p listen multiaddr (net.listen)")
    p.add_argument(
        "--peer",
        action="append",
        default=[],
        metavar="MULTIADDR",
        help="a bootstrap peer /ip4/.../tcp/N/p2p/<id> (net.bootstrap; repeatable)",
    )
    p.add_argument(
        "--allow-non-loopback",
        action="store_true",
        help="allow non-loopback addresses (net.allow_non_loopback = true)",
    )
    p.add_argument(
        "--force",
        action="store_true",
        help="replace an existing key (kept as node.key.bak) and config",
    )
    p.add_argument(
        "--testnet-key-seed",
        default=None,
        metavar="TEXT",
        help="TEST NETWORKS ONLY: derive the key from TEXT (anyone can recompute it), so "
        "other nodes' configs can name this node's peer id in advance",
    )
    p.set_defaults(func=cmd_init)

    p = subparsers.add_parser("config", help="check a node configuration")
    sub = p.add_subparsers(dest="config_command", metavar="SUBCOMMAND", required=True)
    c = sub.add_parser(
        "check",
        help="validate a config file and print the effective settings",
        description="Load the file with the DSONODE_<SECTION>_<KEY> environment overrides, "
        "validate every setting, and print the effective configuration as TOML.",
    )
    c.add_argument("--config", type=Path, default=None, help="the config file (default: none)")
    c.add_argument("--json", action="store_true", help="print JSON instead of TOML")
    c.set_defaults(func=cmd_config_check)


def seeded_testnet_key(seed: str) -> Any:
    """A deterministic Ed25519 key from `seed` (test networks only: it is not a secret)."""
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    if not seed or len(seed) > 256:
        raise _error("--testnet-key-seed must be 1..256 characters")
    digest = hashlib.sha256(TESTNET_KEY_DOMAIN + b"\0" + seed.encode("utf-8")).digest()
    return Ed25519PrivateKey.from_private_bytes(digest)


def peer_id_of_key(key: Any) -> str:
    from dsonode.core.peerinfo import peer_id_from_public_key
    from dsonode.identity import public_key_bytes

    return peer_id_from_public_key(public_key_bytes(key))


def _error(message: str) -> Exception:
    from dsonode.config.loader import ConfigError

    return ConfigError("init", message)


def _write_private(path: Path, data: bytes) -> None:
    """Write `data` to a new file with mode 0600 atomically; FileExistsError if present."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.link(tmp, path)  # refuses to replace: the caller moved any old file away first
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()


def cmd_init(args: argparse.Namespace) -> int:
    from cryptography.hazmat.primitives import serialization

    from dsonode.config.loader import config_from_mapping, render_template
    from dsonode.identity import create_key, load_key

    data_dir = args.data_dir.expanduser().resolve()
    key_path = data_dir / KEY_FILE_NAME
    config_path = data_dir / CONFIG_FILE_NAME
    if len(args.peer) > MAX_PEERS_ON_COMMAND_LINE:
        raise _error(f"at most {MAX_PEERS_ON_COMMAND_LINE} --peer options")
    existing = [p for p in (key_path, config_path) if p.exists() or p.is_symlink()]
    if existing and not args.force:
        raise _error(
            f"{', '.join(map(str, existing))} already exist(s); refusing to overwrite "
            "(pass --force to replace them; the old key is kept as node.key.bak)"
        )

    overrides: dict[str, Any] = {}
    if args.listen is not None:
        overrides["net.listen"] = args.listen
    if args.peer:
        overrides["net.bootstrap"] = list(args.peer)
    if args.allow_non_loopback:
        overrides["net.allow_non_loopback"] = True
    text = render_template(overrides)
    import tomllib

    # Validate before writing anything (errors name the key: net.listen, net.bootstrap[0]).
    config_from_mapping(tomllib.loads(text), source=config_path, env={})

    data_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    if args.force and (key_path.exists() or key_path.is_symlink()):
        os.replace(key_path, key_path.with_name(KEY_FILE_NAME + ".bak"))
    if args.testnet_key_seed is not None:
        key = seeded_testnet_key(args.testnet_key_seed)
        pem = key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        _write_private(key_path, pem)
        print(
            "warning: a testnet key derived from a public seed; never use it on a real network",
            file=sys.stderr,
        )
    else:
        create_key(key_path)
    key = load_key(key_path)  # read back: the mode and format checks of a starting node
    if config_path.exists() or config_path.is_symlink():
        config_path.unlink()
    _write_private(config_path, text.encode("utf-8"))
    peer_id = peer_id_of_key(key)
    print(f"identity  {key_path}")
    print(f"config    {config_path}")
    print(f"peer id   {peer_id}")
    return 0


def cmd_config_check(args: argparse.Namespace) -> int:
    import json

    import tomli_w

    from dsonode.config.loader import load_config

    config = load_config(args.config)
    effective = config.to_toml_dict()
    if args.json:
        print(json.dumps(effective, indent=2))
        return 0
    where = str(config.source) if config.source else "(no file: defaults)"
    print(f"# effective configuration from {where}")
    if config.env_overrides:
        print(f"# overridden by the environment: {', '.join(config.env_overrides)}")
    print(tomli_w.dumps(effective), end="")
    return 0
