"""`make compose-test`: build the image, run docker-compose.yml's testnet for real, check it.

    python3 -m qa.compose_test [--base IMAGE] [--keep-daemon] [--json-only]

What it does, in order (every wait bounded; the teardown always runs):
1. Installs docker.io, docker-compose and debootstrap with apt if the commands are missing.
2. Checks that the compose subnet overlaps no address or route of the host.
3. Starts dockerd if none answers (`--bridge=none --iptables=false --ip6tables=false
   --ip-forward=false`: it gets no default bridge and touches neither the firewall nor
   forwarding), and stops only that one, by its PID, at the end.
4. Builds the image unless one built from the same inputs is there (label
   org.dsonode.build-inputs). Base: a Debian base made from packages (scripts/base-image), or
   --base (e.g. python:3.11-slim where a registry is reachable). Wheels: `pip wheel` with the
   host's own pip configuration (indexes, find-links, CA bundle), cached under
   /var/cache/dsonode/wheels; the build itself runs with `--network none`.
5. Creates the network and containers, fences the bridge (dsonet0) with firewall rules of its
   own (no packet between the containers and the host or anything beyond), starts them.
6. Checks what the network must guarantee: no container can open another node's socket or
   reach the host's bridge address, and every fence rule that closes the way beyond the host
   is in place (checked on the host: no probe is ever sent to an address beyond this machine).
7. Adds experiences at node1 over node1's socket inside node1's container, waits until every
   honest node holds each of them with confirmed consensus, and until the Byzantine node's
   reputation has fallen at every honest node.
8. `down -v`, removes its firewall rules, restores ip_forward, stops the daemon it started,
   checks the firewall and ip_forward are as it found them, prints one JSON summary.

Needs root (packages, dockerd, firewall). When Docker cannot run it fails and says why; it
never skips. Standard library only: it runs before (or without) the project's venv.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import ipaddress
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
COMPOSE_FILE = ROOT / "docker-compose.yml"
IMAGE = "dsonode:0.1.0"
PROJECT = "dsonode-ct"  # compose project name: its containers, network and volumes
INPUTS_LABEL = "org.dsonode.build-inputs"
WHEEL_CACHE = Path(os.environ.get("DSONODE_WHEEL_CACHE", "/var/cache/dsonode/wheels"))
APT_PACKAGES = ("docker.io", "docker-compose", "debootstrap")
HONEST = ("bootstrap", "node1", "node2", "node3", "node4")
BYZANTINE = "byzantine"
SERVICES = (*HONEST, BYZANTINE)
# The testnet identity of the Byzantine service: `dsonode init --testnet-key-seed byzantine`
# (configs/byzantine.toml names the same peer id).
BYZANTINE_PEER_ID = "12D3KooWP9ynZTvKwKWzW9dDZsGsZpWB5yXMUqTMWcmrRPE6GeQP"
# What the build copies (Dockerfile COPY lines; .dockerignore admits these and nothing else).
BUILD_INPUTS = ("Dockerfile", ".dockerignore", "pyproject.toml", "README.md", "dsonode", "docker")
EXPERIENCES = (
    ("Read the failing test's assertion before reading the code under test.", "coding"),
    ("Check units on both sides of an equation before solving it.", "math"),
    ("Give a tool call its arguments from the last observation, not from memory.", "agents"),
)

UP_TIMEOUT_S = 600.0
CONFIRM_TIMEOUT_S = 240.0
REPUTATION_TIMEOUT_S = 120.0


class ComposeTestError(Exception):
    """The container test cannot run or failed; the message says why."""


def log(msg: str) -> None:
    print(f"compose-test: {msg}", file=sys.stderr, flush=True)


def run(
    cmd: Sequence[str],
    *,
    timeout: float = 120.0,
    check: bool = True,
    input: str | None = None,
    env: dict[str, str] | None = None,
) -> subprocess.CompletedProcess[str]:
    """One command, bounded in time; on failure its output goes into the error."""
    try:
        out = subprocess.run(
            list(cmd),
            capture_output=True,
            text=True,
            timeout=timeout,
            input=input,
            env=env,
            cwd=ROOT,
            check=False,
        )
    except subprocess.TimeoutExpired as exc:
        raise ComposeTestError(f"{' '.join(cmd)}: no answer within {timeout:.0f} s") from exc
    except FileNotFoundError as exc:
        raise ComposeTestError(f"{cmd[0]}: command not found") from exc
    if check and out.returncode != 0:
        tail = (out.stdout + out.stderr).strip()[-3000:]
        raise ComposeTestError(f"{' '.join(cmd)} exited {out.returncode}:\n{tail}")
    return out


# ---- pure parts (tests/test_compose.py checks them without an engine) ----


def compose_subnet(text: str) -> ipaddress.IPv4Network:
    """The one `subnet:` of docker-compose.yml (no YAML parser: stdlib only)."""
    found = re.findall(r"^\s*-?\s*subnet:\s*([0-9./]+)\s*$", text, flags=re.MULTILINE)
    if len(found) != 1:
        raise ComposeTestError(f"expected one subnet in docker-compose.yml, found {found}")
    return ipaddress.IPv4Network(found[0])


def compose_bridge(text: str) -> str:
    m = re.search(r"com\.docker\.network\.bridge\.name:\s*([A-Za-z0-9_.-]{1,15})\s*$", text, re.M)
    if m is None:
        raise ComposeTestError(
            "docker-compose.yml names no bridge (com.docker.network.bridge.name)"
        )
    return m.group(1)


def host_networks(addr_json: str, route_json: str, skip_dev: str) -> list[ipaddress.IPv4Network]:
    """Every IPv4 network the host has an address in or a route to (`ip -j addr`, `ip -j
    route`), leaving out `skip_dev` (our own bridge, when a previous run left it)."""
    nets: list[ipaddress.IPv4Network] = []
    for iface in json.loads(addr_json or "[]"):
        if iface.get("ifname") == skip_dev:
            continue
        for a in iface.get("addr_info", []):
            if a.get("family") == "inet":
                nets.append(ipaddress.IPv4Network(f"{a['local']}/{a['prefixlen']}", strict=False))
    for r in json.loads(route_json or "[]"):
        dst = r.get("dst", "")
        if r.get("dev") == skip_dev or dst in ("", "default"):
            continue
        with contextlib.suppress(ValueError):
            nets.append(ipaddress.IPv4Network(dst if "/" in dst else f"{dst}/32", strict=False))
    return nets


def overlaps(subnet: ipaddress.IPv4Network, nets: Iterable[ipaddress.IPv4Network]) -> list[str]:
    return sorted({str(n) for n in nets if n.overlaps(subnet)})


def fence_rules(bridge: str) -> list[list[str]]:
    """Firewall rules (iptables arguments after the chain operation) that confine the
    containers to their bridge: they reach each other, never the host or beyond."""
    return [
        ["INPUT", "-i", bridge, "-j", "DROP"],  # the host itself (its bridge address)
        ["OUTPUT", "-o", bridge, "-j", "DROP"],
        ["FORWARD", "-i", bridge, "!", "-o", bridge, "-j", "DROP"],  # anything beyond
        ["FORWARD", "-o", bridge, "!", "-i", bridge, "-j", "DROP"],
        # container to container (bridged frames pass FORWARD when br_netfilter is loaded),
        # whatever the chain's policy
        ["FORWARD", "-i", bridge, "-o", bridge, "-j", "ACCEPT"],
    ]


def reputation_of(stats: dict[str, Any], peer_id: str) -> dict[str, Any] | None:
    """The reputation record a node's `stats` holds for `peer_id` (None: none yet)."""
    reps = (stats.get("network") or {}).get("reputation") or {}
    for record in reps.values():
        if isinstance(record, dict) and record.get("peer_id") == peer_id:
            return record
    return None


def inputs_hash(root: Path, paths: Sequence[str], extra: Sequence[str]) -> str:
    """sha256 over the build inputs' paths and contents (bytecode caches left out) and `extra`
    (base image id, wheelhouse key): an image with this label needs no rebuild."""
    h = hashlib.sha256()
    for name in paths:
        p = root / name
        files = sorted(p.rglob("*")) if p.is_dir() else [p]
        for f in files:
            if not f.is_file() or "__pycache__" in f.parts or f.suffix == ".pyc":
                continue
            if f.parent.name == "wheels" and f.suffix == ".whl":  # keyed by `extra` instead
                continue
            h.update(str(f.relative_to(root)).encode() + b"\0" + f.read_bytes() + b"\0")
    for e in extra:
        h.update(e.encode() + b"\0")
    return h.hexdigest()[:16]


def count_error_lines(logs: str) -> list[str]:
    """Log lines at ERROR or worse: the nodes log JSON (`"level": "ERROR"`), libraries may not."""
    bad = []
    for line in logs.splitlines():
        body = line.split("|", 1)[-1].strip()  # compose prefixes "service_1  | "
        try:
            level = str(json.loads(body).get("level", "")).upper()
        except (ValueError, AttributeError):
            level = "ERROR" if re.search(r"\b(ERROR|CRITICAL|Traceback)\b", body) else ""
        if level in ("ERROR", "CRITICAL"):
            bad.append(line)
    return bad


# ---- the machine: packages, daemon, firewall ----


def need_root() -> None:
    if os.geteuid() != 0:
        raise ComposeTestError(
            "needs root: it installs packages, may start dockerd and adds firewall rules "
            "(run `sudo make compose-test`)"
        )


def ensure_packages() -> None:
    missing = [
        c for c in ("dockerd", "docker", "docker-compose", "debootstrap") if not shutil.which(c)
    ]
    if not missing:
        return
    if not shutil.which("apt-get"):
        raise ComposeTestError(f"missing {missing} and no apt-get to install them")
    log(f"installing {' '.join(APT_PACKAGES)} (missing: {' '.join(missing)})")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    run(["apt-get", "update", "-q"], timeout=600, env=env)
    run(["apt-get", "install", "-y", "-q", *APT_PACKAGES], timeout=900, env=env)


def compose_cmd() -> list[str]:
    """`docker compose` (v2) where the plugin is there, else `docker-compose` (1.29)."""
    if run(["docker", "compose", "version"], check=False, timeout=30).returncode == 0:
        return ["docker", "compose"]
    if shutil.which("docker-compose"):
        return ["docker-compose"]
    raise ComposeTestError("neither `docker compose` nor `docker-compose` is installed")


def engine_answers() -> bool:
    return run(["docker", "info"], check=False, timeout=30).returncode == 0


@dataclass
class Machine:
    """What this run changed on the machine, so that it can put everything back."""

    dockerd: subprocess.Popen[bytes] | None = None
    dockerd_log: Path | None = None
    dockerd_children: list[int] = field(default_factory=list)
    rules: list[tuple[str, list[str]]] = field(default_factory=list)  # (iptables cmd, rule)
    firewall_before: dict[str, str] = field(default_factory=dict)
    tables_before: set[str] = field(default_factory=set)
    sysctl_before: dict[str, str] = field(default_factory=dict)


SYSCTLS = ("/proc/sys/net/ipv4/ip_forward", "/proc/sys/net/ipv6/conf/all/forwarding")
FIREWALLS = ("iptables", "ip6tables")


def firewall_state() -> dict[str, str]:
    """iptables-save / ip6tables-save without comments and packet counters."""
    state = {}
    for fw in FIREWALLS:
        out = run([f"{fw}-save"], check=False, timeout=60)
        lines = [
            re.sub(r"\[\d+:\d+\]", "", line)
            for line in out.stdout.splitlines()
            if not line.startswith("#")
        ]
        state[fw] = "\n".join(lines)
    return state


def nft_tables() -> set[str]:
    """`nft list tables` ("table ip filter", ...): iptables-nft creates a table on first use."""
    if not shutil.which("nft"):
        return set()
    out = run(["nft", "list", "tables"], check=False, timeout=30)
    return {line.strip() for line in out.stdout.splitlines() if line.startswith("table ")}


def sysctl_state() -> dict[str, str]:
    return {p: Path(p).read_text().strip() for p in SYSCTLS if Path(p).exists()}


def children_of(pid: int) -> list[int]:
    kids: list[int] = []
    with contextlib.suppress(OSError):
        for task in Path(f"/proc/{pid}/task").iterdir():
            with contextlib.suppress(OSError):
                kids += [int(k) for k in (task / "children").read_text().split()]
    return kids


def start_dockerd(m: Machine) -> None:
    m.dockerd_log = Path(tempfile.mkstemp(prefix="dsonode-dockerd.", suffix=".log")[1])
    cmd = [
        "dockerd",
        "--bridge=none",  # no default docker0 bridge: compose's network is the only one
        "--iptables=false",  # it adds no firewall rules (we add our own, and remove them)
        "--ip6tables=false",
        "--ip-forward=false",  # it leaves net.ipv4.ip_forward as it is
    ]
    log(f"starting {' '.join(cmd)} (log: {m.dockerd_log})")
    with m.dockerd_log.open("wb") as out:
        m.dockerd = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if m.dockerd.poll() is not None:
            raise ComposeTestError(
                f"dockerd exited {m.dockerd.returncode}:\n{m.dockerd_log.read_text()[-2000:]}"
            )
        if engine_answers():
            m.dockerd_children = children_of(m.dockerd.pid)  # its containerd
            return
        time.sleep(0.5)
    raise ComposeTestError(
        f"dockerd did not answer within 60 s:\n{m.dockerd_log.read_text()[-2000:]}"
    )


def stop_dockerd(m: Machine) -> None:
    if m.dockerd is None:
        return
    log(f"stopping the dockerd this run started (pid {m.dockerd.pid})")
    m.dockerd.send_signal(signal.SIGTERM)
    try:
        m.dockerd.wait(timeout=60)
    except subprocess.TimeoutExpired:
        m.dockerd.kill()
        m.dockerd.wait(timeout=30)
    for pid in m.dockerd_children:  # containerd normally leaves with it; make sure, by pid
        deadline = time.monotonic() + 20
        while Path(f"/proc/{pid}").exists() and time.monotonic() < deadline:
            time.sleep(0.2)
        if Path(f"/proc/{pid}").exists():
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)
    m.dockerd = None
    if m.dockerd_log is not None:
        m.dockerd_log.unlink(missing_ok=True)


def add_fence(m: Machine, bridge: str) -> None:
    for fw in FIREWALLS:
        # Inserted at the top, in reverse, so they apply in fence_rules' order and before
        # any rule already there.
        for rule in reversed(fence_rules(bridge)):
            run([fw, "-I", rule[0], "1", *rule[1:]], timeout=30)
            m.rules.append((fw, rule))


def remove_fence(m: Machine) -> None:
    for fw, rule in reversed(m.rules):
        run([fw, "-D", *rule], timeout=30, check=False)
    m.rules.clear()
    # A filter table that only our rules brought into being (nft backend): empty again now,
    # so remove it, as the machine had none.
    for table in nft_tables() - m.tables_before:
        listing = run(["nft", "list", *table.split()], check=False, timeout=30).stdout
        if not re.search(r"^\s*(?!type |chain |\}|table )\S", listing, flags=re.M):
            run(["nft", "delete", *table.split()], check=False, timeout=30)


def restore_sysctls(m: Machine) -> None:
    for path, value in m.sysctl_before.items():
        if Path(path).read_text().strip() != value:
            Path(path).write_text(value + "\n")


# ---- the image ----


def pip_config_key(python: str) -> str:
    """What decides which wheels the host's pip picks: its configuration, its Python."""
    cfg = run([python, "-m", "pip", "config", "list"], check=False, timeout=60).stdout
    env = sorted(f"{k}={v}" for k, v in os.environ.items() if k.startswith("PIP_"))
    ver = run([python, "-c", "import sys; print(sys.version_info[:2])"], timeout=30).stdout
    return hashlib.sha256("\n".join([cfg, *env, ver]).encode()).hexdigest()[:12]


def wheelhouse(python: str) -> Path:
    """The dependencies' wheels, made by the host's pip with the host's configuration (how it
    finds torch's CPU build, for one), cached by pyproject.toml and that configuration."""
    key = hashlib.sha256((ROOT / "pyproject.toml").read_bytes()).hexdigest()[:12]
    cache = WHEEL_CACHE / f"{key}-{pip_config_key(python)}"
    if (cache / ".complete").exists():
        return cache
    ver = run([python, "-c", "import sys; print('%d.%d' % sys.version_info[:2])"]).stdout.strip()
    if ver != "3.11":
        raise ComposeTestError(
            f"{python} is Python {ver}: the image runs Python 3.11, so its wheels must be made "
            "by a Python 3.11 (make compose-test PYTHON=python3.11)"
        )
    tmp = Path(
        tempfile.mkdtemp(
            prefix="wheels.", dir=WHEEL_CACHE.parent if WHEEL_CACHE.parent.exists() else None
        )
    )
    log(f"pip wheel with the host's pip configuration -> {cache}")
    run(
        [
            python,
            "-m",
            "pip",
            "wheel",
            "--quiet",
            "--wheel-dir",
            str(tmp),
            "torch==2.13.0",
            ".[onnx]",
            "setuptools",
            "wheel",
        ],
        timeout=1800,
    )
    for own in tmp.glob("dsonode-*.whl"):  # the image builds dsonode from the source
        own.unlink()
    (tmp / ".complete").write_text("")
    cache.parent.mkdir(parents=True, exist_ok=True)
    shutil.rmtree(cache, ignore_errors=True)
    shutil.move(str(tmp), str(cache))
    return cache


def base_image(base: str | None) -> str:
    if base:
        if run(["docker", "image", "inspect", base], check=False, timeout=30).returncode != 0:
            raise ComposeTestError(f"base image {base} is not on this engine (docker pull it)")
        return base
    log("base image: scripts/base-image (debootstrap the first time, about 30 s to minutes)")
    return run([str(ROOT / "scripts" / "base-image")], timeout=900).stdout.strip()


def image_label(image: str, label: str) -> str | None:
    out = run(
        [
            "docker",
            "image",
            "inspect",
            "--format",
            f'{{{{index .Config.Labels "{label}"}}}}',
            image,
        ],
        check=False,
        timeout=30,
    )
    return out.stdout.strip() if out.returncode == 0 else None


def build_image(base: str | None, python: str) -> dict[str, Any]:
    """build_s (all of it), base_s, wheels_s, and whether an image built from the same
    inputs was reused (build_cached)."""
    t0 = time.monotonic()
    base_name = base_image(base)
    out: dict[str, Any] = {"base": base_name, "base_s": round(time.monotonic() - t0, 1)}
    base_id = run(["docker", "image", "inspect", "--format", "{{.Id}}", base_name]).stdout.strip()
    wheel_key = hashlib.sha256((ROOT / "pyproject.toml").read_bytes()).hexdigest()[:12]
    wanted = inputs_hash(ROOT, BUILD_INPUTS, [base_id, wheel_key, pip_config_key(python)])
    if image_label(IMAGE, INPUTS_LABEL) == wanted:
        log(f"{IMAGE} was built from these inputs ({wanted}): reused")
        return {**out, "build_s": round(time.monotonic() - t0, 1), "build_cached": True}
    t1 = time.monotonic()
    wheels = wheelhouse(python)
    out["wheels_s"] = round(time.monotonic() - t1, 1)
    target = ROOT / "docker" / "wheels"
    copied = []
    try:
        for whl in wheels.glob("*.whl"):
            dst = target / whl.name
            try:
                os.link(whl, dst)  # same file system: no copy
            except OSError:
                shutil.copy2(whl, dst)
            copied.append(dst)
        log(f"docker build --network none (base {base_name}, {len(copied)} wheels)")
        run(
            [
                "docker",
                "build",
                "--network",
                "none",
                "--build-arg",
                f"BASE={base_name}",
                "--label",
                f"{INPUTS_LABEL}={wanted}",
                "-t",
                IMAGE,
                ".",
            ],
            timeout=2400,
        )
    finally:
        for dst in copied:
            dst.unlink(missing_ok=True)
    return {**out, "build_s": round(time.monotonic() - t0, 1), "build_cached": False}


def image_mb(image: str) -> float:
    size = run(["docker", "image", "inspect", "--format", "{{.Size}}", image]).stdout.strip()
    return round(int(size) / 1e6, 1)


# ---- the testnet ----


class Testnet:
    def __init__(self, compose: list[str]):
        self.compose = [*compose, "-p", PROJECT, "-f", str(COMPOSE_FILE)]
        self.ids: dict[str, str] = {}

    def __call__(self, *args: str, timeout: float = 300.0, check: bool = True) -> str:
        return run([*self.compose, *args], timeout=timeout, check=check).stdout

    def container(self, service: str) -> str:
        if service not in self.ids:
            cid = self("ps", "-q", service).strip()
            if not cid:
                raise ComposeTestError(f"no container for service {service}")
            self.ids[service] = cid
        return self.ids[service]

    def py(self, service: str, code: str, timeout: float = 60.0) -> Any:
        """Run Python in the service's container (as its user); its last stdout line is JSON."""
        out = run(
            ["docker", "exec", "-i", self.container(service), "python", "-"],
            input=code,
            timeout=timeout,
        )
        return json.loads(out.stdout.strip().splitlines()[-1])

    def health(self, service: str) -> str:
        out = run(
            ["docker", "inspect", "--format", "{{.State.Health.Status}}", self.container(service)],
            timeout=30,
        )
        return out.stdout.strip()


SOCKET_PROBE = """
import json, socket
me, names = {me!r}, {names!r}
result = {{}}
for name in names:
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(5)
    try:
        s.connect(f"/run/dsonode/{{name}}.sock")
        result[name] = "open"
    except OSError as exc:
        result[name] = type(exc).__name__
    finally:
        s.close()
# Only the host's own address on the bridge this run created: no probe ever targets an
# address beyond this machine (that path is checked on the host: fence rules, forwarding).
out = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
out.settimeout(3)
try:
    out.connect(({host!r}, 22))
    result["host"] = "open"
except OSError as exc:  # TimeoutError: dropped by the fence; refused would mean it got there
    result["host"] = type(exc).__name__
finally:
    out.close()
print(json.dumps(result))
"""

NODE_PROBE = """
import json
from dsonode.api.client import Client, ClientError
ids = {ids!r}
with Client("/run/dsonode/{me}.sock", timeout=20) as c:
    held = {{}}
    for i in ids:
        try:
            item = c.get(i)
            held[i] = {{"confirmed": item["confirmed"], "submissions": item["submissions"]}}
        except ClientError as exc:
            held[i] = {{"error": str(exc)[:200]}}
    stats = c.stats()
print(json.dumps({{"held": held, "stats": {{"network": {{"reputation":
    (stats.get("network") or {{}}).get("reputation") or {{}}}}}}}}))
"""


def fence_active(bridge: str) -> list[str]:
    """The fence rules `iptables -C` / `ip6tables -C` do not find (empty: all in place)."""
    missing = []
    for fw in FIREWALLS:
        for rule in fence_rules(bridge):
            if run([fw, "-C", *rule], check=False, timeout=30).returncode != 0:
                missing.append(f"{fw} " + " ".join(rule))
    return missing


def check_isolation(net: Testnet, gateway: str, bridge: str) -> dict[str, Any]:
    """Every container: its own socket opens, no other node's does, and the host's bridge
    address (the containers' default route) does not answer. The way beyond the host is
    checked on the host, never by sending anything there: every fence rule is in place."""
    problems, outcomes = [], set()
    for me in SERVICES:
        probe = SOCKET_PROBE.format(me=me, names=list(SERVICES), host=gateway)
        seen = net.py(me, probe)
        for name in SERVICES:
            if (seen[name] == "open") != (name == me):
                problems.append(f"{me} -> {name}.sock: {seen[name]}")
        outcomes.add(f"host: {seen['host']}")
        if seen["host"] == "open":
            problems.append(f"{me} reached the host address")
    for rule in fence_active(bridge):
        problems.append(f"fence rule missing, the way out is not closed: {rule}")
    return {
        "socket_isolation": not any(".sock" in p for p in problems),
        "network_isolation": not any("reached" in p or "fence" in p for p in problems),
        "network_probes": sorted(outcomes),
        "isolation_problems": problems,
    }


def add_experiences(net: Testnet) -> list[str]:
    ids = []
    for text, domain in EXPERIENCES:
        out = run(
            [
                "docker",
                "exec",
                net.container("node1"),
                "dsonode",
                "add",
                "--socket",
                "/run/dsonode/node1.sock",
                "--domain",
                domain,
                "--json",
                text,
            ],
            timeout=120,
        )
        ids.append(json.loads(out.stdout)["id"])
    return ids


def wait_confirmed(net: Testnet, ids: list[str], t_first_add: float) -> dict[str, Any]:
    """Bounded: until every honest node holds every experience with confirmed consensus and
    the Byzantine node's reputation has fallen (below the 0.5 of no evidence) at each."""
    confirmed_at: dict[str, float] = {}
    reputation: dict[str, dict[str, Any] | None] = {}
    deadline = time.monotonic() + CONFIRM_TIMEOUT_S + REPUTATION_TIMEOUT_S
    last: dict[str, Any] = {}
    while time.monotonic() < deadline:
        for name in HONEST:
            try:
                last[name] = got = net.py(name, NODE_PROBE.format(ids=ids, me=name))
            except ComposeTestError as exc:
                last[name] = {"error": str(exc)[-300:]}
                continue
            if name not in confirmed_at and all(h.get("confirmed") for h in got["held"].values()):
                confirmed_at[name] = time.monotonic() - t_first_add
            reputation[name] = reputation_of(got["stats"], BYZANTINE_PEER_ID)
        scores = [(r or {}).get("score") for r in reputation.values()]
        fallen = len(reputation) == len(HONEST) and all(
            s is not None and s < 0.5 and (r or {}).get("rejected", 0) >= len(ids)
            for s, r in zip(scores, reputation.values(), strict=True)
        )
        if len(confirmed_at) == len(HONEST) and fallen:
            break
        time.sleep(2.0)
    scores = [float(r["score"]) for r in reputation.values() if r is not None and "score" in r]
    return {
        "confirmed_s": round(max(confirmed_at.values()), 1)
        if len(confirmed_at) == len(HONEST)
        else None,
        "honest_nodes_confirmed": len(confirmed_at),
        "honest_nodes": len(HONEST),
        "byzantine_reputation_max": max(scores) if len(scores) == len(HONEST) else None,
        "byzantine_rejected_min": min(
            (int(r.get("rejected", 0)) if r else 0) for r in reputation.values()
        )
        if reputation
        else 0,
        "last_seen": None if len(confirmed_at) == len(HONEST) else last,
    }


def wait_healthy(net: Testnet, t0: float) -> float:
    deadline = t0 + UP_TIMEOUT_S
    state: dict[str, str] = {}
    while time.monotonic() < deadline:
        state = {s: net.health(s) for s in SERVICES}
        if all(v == "healthy" for v in state.values()):
            return time.monotonic() - t0
        time.sleep(2.0)  # "unhealthy" can recover (a busy machine): wait to the deadline
    logs = net("logs", "--no-color", "--tail", "30", check=False, timeout=120)
    raise ComposeTestError(f"the testnet did not come up healthy: {state}\n{logs[-4000:]}")


@contextlib.contextmanager
def machine(keep_daemon: bool) -> Iterator[Machine]:
    m = Machine(
        firewall_before=firewall_state(), tables_before=nft_tables(), sysctl_before=sysctl_state()
    )
    try:
        yield m
    finally:
        remove_fence(m)
        if not keep_daemon:
            stop_dockerd(m)
        restore_sysctls(m)


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        prog="python -m qa.compose_test", description=__doc__.split("\n")[0]
    )
    ap.add_argument("--base", help="base image already on the engine (default: scripts/base-image)")
    ap.add_argument(
        "--python", default=sys.executable, help="the Python 3.11 whose pip makes the wheels"
    )
    ap.add_argument(
        "--keep-daemon", action="store_true", help="leave a dockerd this run started running"
    )
    args = ap.parse_args(argv)

    summary: dict[str, Any] = {"ok": False}
    t_start = time.monotonic()
    touched: Machine | None = None  # set once the run may have changed the machine
    try:
        need_root()
        ensure_packages()
        text = COMPOSE_FILE.read_text()
        subnet, bridge = compose_subnet(text), compose_bridge(text)
        addrs = run(["ip", "-j", "-4", "addr"], timeout=30).stdout
        routes = run(["ip", "-j", "-4", "route", "show", "table", "all"], timeout=30).stdout
        clash = overlaps(subnet, host_networks(addrs, routes, skip_dev=bridge))
        if clash:
            raise ComposeTestError(
                f"the compose subnet {subnet} overlaps the host's {clash}: change it in "
                "docker-compose.yml and configs/ before running containers here"
            )
        summary["subnet"] = str(subnet)
        compose = compose_cmd()
        summary["compose"] = " ".join(compose)
        with machine(args.keep_daemon) as m:
            touched = m
            if not engine_answers():
                start_dockerd(m)
            summary["dockerd_started"] = m.dockerd is not None
            net = Testnet(compose)
            net("down", "-v", "--remove-orphans", timeout=300, check=False)  # a crashed run's
            try:
                summary.update(build_image(args.base, args.python))
                summary["image_mb"] = image_mb(IMAGE)
                net("up", "--no-start", "--no-build", timeout=300)  # network + containers
                add_fence(m, bridge)
                t_up = time.monotonic()
                log("starting the 6 containers (bounded: every node healthy)")
                net("up", "-d", "--no-build", timeout=600)
                summary["up_s"] = round(wait_healthy(net, t_up), 1)
                summary.update(check_isolation(net, str(next(subnet.hosts())), bridge))
                log("adding experiences at node1; waiting for consensus at every honest node")
                t_add = time.monotonic()
                ids = add_experiences(net)
                summary["experiences"] = len(ids)
                summary.update(wait_confirmed(net, ids, t_add))
                errors = count_error_lines(net("logs", "--no-color", timeout=120, check=False))
                summary["error_log_lines"] = len(errors)
                if errors:
                    summary["error_log_sample"] = errors[:5]
            finally:
                net("down", "-v", "--remove-orphans", timeout=300, check=False)
    except Exception as exc:  # any failure: say why, after the teardown above has run
        summary["error"] = f"{type(exc).__name__}: {exc}"
        log(f"FAILED: {summary['error']}")
    if touched is not None:  # checked on failure too: the machine must be as found
        summary["firewall_restored"] = (
            firewall_state() == touched.firewall_before and nft_tables() == touched.tables_before
        )
        summary["ip_forward_restored"] = sysctl_state() == touched.sysctl_before
    if "error" not in summary:
        summary["ok"] = bool(
            summary.get("confirmed_s") is not None
            and summary.get("byzantine_reputation_max") is not None
            and summary["byzantine_reputation_max"] < 0.5
            and summary.get("socket_isolation")
            and summary.get("network_isolation")
            and summary.get("firewall_restored")
            and summary.get("ip_forward_restored")
        )
    summary["total_s"] = round(time.monotonic() - t_start, 1)
    print(json.dumps(summary, indent=2))
    return 0 if summary["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
