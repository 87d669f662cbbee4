"""Read docker-compose.yml + the configs it mounts into a loopback testnet plan.

No Docker engine runs here, so `dsonode testnet --compose docker-compose.yml` runs the same
topology as local processes: every service becomes one `dsonode run` on its own 127.0.0.x
address (in file order), with the same identity (the `--testnet-key-seed` of its command),
the same Byzantine attack (its config's `[testnet] attack`) and the same dial graph (its
config's `net.bootstrap`, each address resolved to the service that owns it through the
compose network's `ipv4_address` and that service's listen port). Only addresses and ports
are rewritten; everything else of the topology is kept, and anything that does not resolve
is an error naming the service.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from dsonode.testnet.plan import PlanError, ServiceSpec

CONFIG_MOUNT = "/etc/dsonode/dsonode.toml"
MAX_COMPOSE_BYTES = 1024 * 1024
_SEED = re.compile(r"--testnet-key-seed ([A-Za-z0-9_.-]{1,64})")


def read_compose(path: Path) -> dict[str, Any]:
    import yaml

    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise PlanError(f"--compose {path}: {exc.strerror or exc}") from None
    if len(data) > MAX_COMPOSE_BYTES:
        raise PlanError(f"--compose {path}: larger than {MAX_COMPOSE_BYTES} bytes")
    try:
        doc = yaml.safe_load(data)
    except yaml.YAMLError as exc:
        raise PlanError(f"--compose {path}: not YAML: {str(exc)[:200]}") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("services"), dict):
        raise PlanError(f"--compose {path}: no `services` mapping")
    return doc


def services_from_compose(compose: dict[str, Any], root: Path) -> list[ServiceSpec]:
    """One `ServiceSpec` per compose service (file order); `root` resolves ./configs/..."""
    from dsonode.config import ConfigError, load_config

    services: dict[str, Any] = compose["services"]
    owner: dict[tuple[str, int], str] = {}  # (compose ip, listen port) -> service
    loaded: dict[str, Any] = {}
    for name, svc in services.items():
        if not isinstance(svc, dict):
            raise PlanError(f"{name}: not a mapping")
        mounts = [
            v
            for v in svc.get("volumes") or []
            if isinstance(v, str) and v.split(":")[1:2] == [CONFIG_MOUNT]
        ]
        if len(mounts) != 1:
            raise PlanError(f"{name}: needs exactly one config mounted at {CONFIG_MOUNT}")
        cfg_path = (root / mounts[0].split(":")[0]).resolve()
        try:
            cfg = load_config(cfg_path, env={})
        except ConfigError as exc:
            raise PlanError(f"{name}: {cfg_path.name}: {exc}") from None
        except OSError as exc:
            raise PlanError(f"{name}: {cfg_path}: {exc.strerror or exc}") from None
        loaded[name] = cfg
        from dsonode.core.peerinfo import parse_multiaddr

        port = parse_multiaddr(cfg.net.listen, allow_non_loopback=True, allow_port_zero=True).port
        for net in (svc.get("networks") or {}).values():
            ip = (net or {}).get("ipv4_address") if isinstance(net, dict) else None
            if ip:
                owner[(str(ip), port)] = name
    specs = []
    for name, svc in services.items():
        cfg = loaded[name]
        dials = []
        for addr in cfg.bootstrap_addrs():
            target = owner.get((addr.ip, addr.port))
            if target is None:
                raise PlanError(f"{name}: bootstrap peer {addr} is no service's address")
            dials.append(target)
        command = " ".join(str(c) for c in svc.get("command") or [])
        m = _SEED.search(command)
        specs.append(
            ServiceSpec(
                name=name,
                dials=tuple(dials),
                attack=cfg.byzantine_attack,
                key_seed=m.group(1) if m else None,
            )
        )
    return specs
