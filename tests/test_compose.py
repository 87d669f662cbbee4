"""docker-compose.yml is a valid compose file, and it agrees with configs/ (no engine needed)."""

from __future__ import annotations

import copy
import ipaddress
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from dsonode.config import ConfigError, load_config
from dsonode.config.cli import peer_id_of_key, seeded_testnet_key
from dsonode.core.peerinfo import parse_multiaddr

ROOT = Path(__file__).resolve().parent.parent
COMPOSE = ROOT / "docker-compose.yml"
CONFIGS = ROOT / "configs"
CONFIG_MOUNT = "/etc/dsonode/dsonode.toml"
CHECK_JSONSCHEMA = Path(sys.executable).parent / "check-jsonschema"


def test_compose_file_validates_against_the_vendored_compose_spec():
    # The builtin schema ships inside check-jsonschema (vendor/compose-spec.json): no network.
    out = subprocess.run(
        [str(CHECK_JSONSCHEMA), "--builtin-schema", "vendor.compose-spec", str(COMPOSE)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, out.stdout + out.stderr


def test_the_validator_rejects_a_broken_compose_file(tmp_path):
    broken = yaml.safe_load(COMPOSE.read_text())
    broken["services"]["node1"]["healthcheck"]["tset"] = ["CMD", "true"]  # a typo of `test`
    path = tmp_path / "docker-compose.yml"
    path.write_text(yaml.safe_dump(broken))
    out = subprocess.run(
        [str(CHECK_JSONSCHEMA), "--builtin-schema", "vendor.compose-spec", str(path)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 1 and "tset" in out.stdout


def _seed_of(service: dict) -> str | None:
    command = " ".join(service.get("command") or [])
    m = re.search(r"--testnet-key-seed ([A-Za-z0-9_.-]+)", command)
    return m.group(1) if m else None


def topology_problems(compose: dict, configs_dir: Path) -> list[str]:
    """Everything on which docker-compose.yml and configs/ disagree (empty: they agree)."""
    problems: list[str] = []
    services: dict = compose.get("services", {})
    declared_volumes = set(compose.get("volumes") or {})
    subnets = {
        name: [ipaddress.ip_network(c["subnet"]) for c in (net.get("ipam") or {}).get("config", [])]
        for name, net in (compose.get("networks") or {}).items()
    }
    configs, addr_of, peer_id_of = {}, {}, {}
    used_files: set[Path] = set()
    for name, svc in services.items():
        mounts = [v for v in svc.get("volumes", []) if v.split(":")[1:2] == [CONFIG_MOUNT]]
        if len(mounts) != 1:
            problems.append(f"{name}: needs exactly one config mounted at {CONFIG_MOUNT}")
            continue
        path = (ROOT / mounts[0].split(":")[0]).resolve()
        if path.parent != configs_dir.resolve() or not path.is_file():
            problems.append(f"{name}: config {path} is not a file in configs/")
            continue
        used_files.add(path)
        try:
            cfg = load_config(path, env={})
        except ConfigError as exc:
            problems.append(f"{name}: {path.name} does not load: {exc}")
            continue
        configs[name] = cfg
        for vol in svc.get("volumes", []):
            source = vol.split(":")[0]
            if not source.startswith(".") and source not in declared_volumes:
                problems.append(f"{name}: volume {source} is not declared")
        data_mount = [v for v in svc["volumes"] if v.split(":")[1:2] == [str(cfg.node.data_dir)]]
        if not data_mount or data_mount[0].startswith("."):
            problems.append(f"{name}: node.data_dir {cfg.node.data_dir} is not a named volume")
        sock_dir = str(cfg.api.socket.parent)
        if not any(v.split(":")[1:2] == [sock_dir] for v in svc["volumes"]):
            problems.append(f"{name}: the socket directory {sock_dir} is not a volume")
        health = " ".join(svc.get("healthcheck", {}).get("test", []))
        env = svc.get("environment", {})
        health = health.replace("$${DSONODE_SERVICE}", str(env.get("DSONODE_SERVICE", "")))
        if "dsonode stats" not in health or f"--socket {cfg.api.socket}" not in health:
            problems.append(f"{name}: the health check does not ask the node's socket")
        nets = svc.get("networks") or {}
        for net_name, net in nets.items():
            ip = ipaddress.ip_address((net or {}).get("ipv4_address", "0.0.0.0"))
            if not any(ip in sub for sub in subnets.get(net_name, [])):
                problems.append(f"{name}: {ip} is outside the subnet of network {net_name}")
            listen = parse_multiaddr(cfg.net.listen, allow_non_loopback=True, allow_port_zero=True)
            addr_of[(str(ip), listen.port)] = name
        seed = _seed_of(svc)
        if seed is not None:
            peer_id_of[name] = peer_id_of_key(seeded_testnet_key(seed))
        if (
            parse_multiaddr(cfg.net.listen, allow_non_loopback=True, allow_port_zero=True).ip
            in (
                "0.0.0.0",
                "::",
            )
            and not cfg.net.allow_non_loopback
        ):
            problems.append(f"{name}: listens on all interfaces without allow_non_loopback")
    for name, cfg in configs.items():
        for addr in cfg.bootstrap_addrs():
            target = addr_of.get((addr.ip, addr.port))
            if target is None:
                problems.append(f"{name}: peer {addr} is no service's address")
            elif target == name:
                problems.append(f"{name}: lists itself as a peer")
            elif peer_id_of.get(target) != addr.peer_id:
                problems.append(f"{name}: peer {addr} does not carry the peer id of {target}")
    byzantine = [n for n, c in configs.items() if c.testnet.attack != "none"]
    if len(byzantine) != 1:
        problems.append(f"expected exactly one Byzantine node, found {byzantine}")
    for path in sorted(configs_dir.glob("*.toml")):
        if path.resolve() not in used_files:
            problems.append(f"configs/{path.name} is used by no service")
    return problems


@pytest.fixture(scope="module")
def compose() -> dict:
    return yaml.safe_load(COMPOSE.read_text())


def test_compose_and_configs_agree(compose):
    assert set(compose["services"]) == {
        "bootstrap",
        "node1",
        "node2",
        "node3",
        "node4",
        "byzantine",
    }
    assert topology_problems(compose, CONFIGS) == []


def test_the_agreement_check_catches_disagreements(compose):
    no_bootstrap = copy.deepcopy(compose)
    del no_bootstrap["services"]["bootstrap"]
    problems = topology_problems(no_bootstrap, CONFIGS)
    assert any("is no service's address" in p for p in problems)
    assert any("bootstrap.toml is used by no service" in p for p in problems)

    wrong_seed = copy.deepcopy(compose)
    cmd = wrong_seed["services"]["bootstrap"]["command"]
    cmd[0] = cmd[0].replace("--testnet-key-seed bootstrap", "--testnet-key-seed other")
    assert any("does not carry the peer id" in p for p in topology_problems(wrong_seed, CONFIGS))

    two_byzantine = copy.deepcopy(compose)
    vols = two_byzantine["services"]["node4"]["volumes"]
    vols[vols.index(f"./configs/node4.toml:{CONFIG_MOUNT}:ro")] = (
        f"./configs/byzantine.toml:{CONFIG_MOUNT}:ro"
    )
    assert any("exactly one Byzantine" in p for p in topology_problems(two_byzantine, CONFIGS))


def test_every_service_starts_with_its_config_and_seed(compose):
    for name, svc in compose["services"].items():
        assert _seed_of(svc) == name
        command = shlex.split(" ".join(svc["command"]))
        assert command[-3:] == ["run", "--config", CONFIG_MOUNT]
    net = compose["networks"]["dsonet"]
    assert net.get("internal") is True  # the test network has no way out


def test_the_compose_topology_plans_onto_loopback(compose):
    """docker-compose.yml + configs/ -> the same graph, identities and attack on 127.0.0.x."""
    from dsonode.testnet.compose import services_from_compose
    from dsonode.testnet.plan import plan_from_services

    services = services_from_compose(compose, ROOT)
    plan = plan_from_services(services, list(range(41001, 41001 + len(services))))
    by_name = {n.name: n for n in plan.nodes}
    assert list(by_name) == list(compose["services"])  # file order
    assert [n.ip for n in plan.nodes] == [f"127.0.0.{i}" for i in range(2, 8)]
    assert plan.neighbours(by_name["bootstrap"].index) == {
        n.index for n in plan.nodes if n.name != "bootstrap"
    }
    for name, node in by_name.items():
        assert node.key_seed == name
        assert node.attack == ("sign_flip" if name == "byzantine" else None)
        # the dial graph is the configs' one: compare by peer id, not by address
        cfg = load_config(CONFIGS / f"{name}.toml", env={})
        dialled = [peer_id_of_key(seeded_testnet_key(plan.nodes[j].name)) for j in node.dials]
        assert dialled == [a.peer_id for a in cfg.bootstrap_addrs()]


@pytest.mark.slow
def test_the_compose_topology_runs_as_local_processes(compose, tmp_path):
    """Every service as a real `dsonode run` on its own 127.0.0.x, dialling as in configs/."""
    import time

    from dsonode.testnet import Testnet, free_ports
    from dsonode.testnet.compose import services_from_compose
    from dsonode.testnet.plan import host_ip, plan_from_services

    services = services_from_compose(compose, ROOT)
    ports = free_ports([host_ip(i) for i in range(len(services))])
    plan = plan_from_services(services, ports)
    idx = {n.name: n.index for n in plan.nodes}
    # Testnet waits (bounded) until every node answers and is connected to its planned peers.
    with Testnet(plan, tmp_path / "tn", start_timeout=240, mesh_timeout=90) as net:
        for node in net.nodes:  # the identities of the compose services, as in configs/
            assert node.peer_id == peer_id_of_key(seeded_testnet_key(node.name))
            net_stats = net.stats(node.index)["network"]
            assert net_stats["peer_id"] == node.peer_id
            assert net_stats["listen"][0].startswith(f"/ip4/{host_ip(node.index)}/tcp/")
        everyone = {n.peer_id for n in net.nodes}
        for node in net.nodes:  # every planned link is up; discovery may add links, never a
            # stranger (the configs' dial graph is where a node starts, not all it may learn)
            connected = set(net.stats(node.index)["network"]["connected"])
            want = {net.nodes[j].peer_id for j in plan.neighbours(node.index)}
            assert want <= connected, (node.name, want - connected)
            assert connected <= everyone - {node.peer_id}, (node.name, connected - everyone)
        with net.client(idx["node1"]) as c:
            exp_id = c.add_experience(
                "Read the failing test's assertion before reading the code under test.",
                "coding",
            )["id"]
        # node1 -> (mesh) -> node4: confirmed from the five honest services' submissions.
        deadline, hit = time.monotonic() + 120, None
        while time.monotonic() < deadline:
            with net.client(idx["node4"]) as c:
                hits = c.search("read the failing assertion first", k=1)
            hit = hits[0] if hits else None
            if hit and hit["id"] == exp_id and hit["confirmed"] and hit["submissions"] == 5:
                break
            time.sleep(0.5)
        else:
            pytest.fail(f"no confirmed consensus at node4: {hit!r}\n{net.nodes[4].log_tail()}")
        liar = net.nodes[idx["byzantine"]].author
        deadline, rec = time.monotonic() + 60, None
        while time.monotonic() < deadline:
            rec = net.stats(idx["node4"])["network"]["reputation"].get(liar)
            if rec and rec["rejected"] >= 1:
                break
            time.sleep(0.5)
        assert rec and rec["rejected"] >= 1 and rec["accepted"] == 0, rec
    assert all(n.proc.poll() is not None for n in net.nodes)  # every process stopped


def test_no_container_shares_a_socket_or_data_volume_with_another(compose):
    """Each node's socket (and data) is on a volume only its own container mounts, so no
    container, the Byzantine one included, can drive another node over its socket. The live
    check (every container tries every node's socket) is in `make compose-test`."""
    owners: dict[str, list[str]] = {}
    for name, svc in compose["services"].items():
        for vol in svc["volumes"]:
            source, target = vol.split(":")[:2]
            if source.startswith("."):  # a config file, bind-mounted read-only
                assert vol.endswith(":ro"), (name, vol)
                continue
            owners.setdefault(source, []).append(name)
            if target == "/run/dsonode":
                assert source == f"{name}-socket", (name, vol)
    assert {v: o for v, o in owners.items() if len(o) > 1} == {}
    assert set(owners) == set(compose["volumes"])  # every declared volume is someone's


def test_the_network_is_closed_and_the_start_order_waits_for_bootstrap(compose):
    net = compose["networks"]["dsonet"]
    assert net["internal"] is True
    assert net["driver_opts"]["com.docker.network.bridge.name"] == "dsonet0"
    for name, svc in compose["services"].items():
        assert "ports" not in svc and "network_mode" not in svc, name  # nothing published
        assert list(svc["networks"]) == ["dsonet"], name
        if name != "bootstrap":
            assert svc["depends_on"] == {"bootstrap": {"condition": "service_healthy"}}, name
    roles = {name: svc["labels"]["org.dsonode.role"] for name, svc in compose["services"].items()}
    attackers = {
        name
        for name in compose["services"]
        if load_config(CONFIGS / f"{name}.toml", env={}).testnet.attack != "none"
    }
    assert {n for n, r in roles.items() if r == "byzantine"} == attackers == {"byzantine"}


# ---- qa/compose_test.py's pure parts (the script itself needs root and an engine) ----


def test_the_container_test_reads_the_subnet_and_bridge_the_compose_file_declares(compose):
    from qa import compose_test as ct

    text = COMPOSE.read_text()
    declared = compose["networks"]["dsonet"]["ipam"]["config"][0]["subnet"]
    assert str(ct.compose_subnet(text)) == declared
    assert ct.compose_bridge(text) == "dsonet0"
    assert peer_id_of_key(seeded_testnet_key("byzantine")) == ct.BYZANTINE_PEER_ID
    assert set(ct.SERVICES) == set(compose["services"])
    with pytest.raises(ct.ComposeTestError):
        ct.compose_subnet(text + "\n        - subnet: 10.9.0.0/24\n")


def test_the_subnet_check_finds_a_host_address_or_route_inside_it():
    from qa.compose_test import host_networks, overlaps

    subnet = ipaddress.IPv4Network("172.28.0.0/24")
    addrs = (
        '[{"ifname": "lo", "addr_info": [{"family": "inet", "local": "127.0.0.1", "prefixlen": 8}]},'
        ' {"ifname": "eth0", "addr_info": [{"family": "inet", "local": "192.0.2.2", "prefixlen": 24},'
        ' {"family": "inet6", "local": "fd00::2", "prefixlen": 64}]},'
        ' {"ifname": "dsonet0", "addr_info": [{"family": "inet", "local": "172.28.0.1", "prefixlen": 24}]}]'
    )
    routes = '[{"dst": "default", "gateway": "192.0.2.1", "dev": "eth0"}, {"dst": "192.0.2.0/24", "dev": "eth0"}]'
    clean = host_networks(addrs, routes, skip_dev="dsonet0")  # our own bridge is not a clash
    assert overlaps(subnet, clean) == []
    vpn = '[{"dst": "172.16.0.0/12", "dev": "tun0"}]'
    assert overlaps(subnet, host_networks(addrs, vpn, skip_dev="dsonet0")) == ["172.16.0.0/12"]
    lan = addrs.replace("192.0.2.2", "172.28.0.77")
    assert overlaps(subnet, host_networks(lan, routes, skip_dev="dsonet0")) == ["172.28.0.0/24"]


def test_the_fence_keeps_traffic_on_the_bridge():
    from qa.compose_test import fence_rules

    rules = fence_rules("dsonet0")
    assert ["INPUT", "-i", "dsonet0", "-j", "DROP"] in rules
    assert ["OUTPUT", "-o", "dsonet0", "-j", "DROP"] in rules
    forward = [r for r in rules if r[0] == "FORWARD"]
    # leaving or entering the bridge: dropped; bridge to bridge: accepted
    assert ["FORWARD", "-i", "dsonet0", "!", "-o", "dsonet0", "-j", "DROP"] in forward
    assert ["FORWARD", "-o", "dsonet0", "!", "-i", "dsonet0", "-j", "DROP"] in forward
    assert forward[-1] == ["FORWARD", "-i", "dsonet0", "-o", "dsonet0", "-j", "ACCEPT"]


def test_the_container_test_reads_reputation_errors_and_build_inputs(tmp_path):
    from qa.compose_test import count_error_lines, inputs_hash, reputation_of

    stats = {"network": {"reputation": {"ab": {"peer_id": "P1", "score": 0.2, "rejected": 3}}}}
    assert reputation_of(stats, "P1") == {"peer_id": "P1", "score": 0.2, "rejected": 3}
    assert reputation_of(stats, "P2") is None and reputation_of({}, "P1") is None
    logs = "\n".join(
        [
            'node2_1  | {"level": "INFO", "msg": "connected"}',
            'node2_1  | {"level": "ERROR", "msg": "boom"}',
            "node3_1  | Traceback (most recent call last):",
            "node3_1  | plain text line",
        ]
    )
    assert len(count_error_lines(logs)) == 2
    (tmp_path / "pkg").mkdir()
    (tmp_path / "pkg" / "a.py").write_text("x = 1\n")
    (tmp_path / "Dockerfile").write_text("FROM x\n")
    first = inputs_hash(tmp_path, ["Dockerfile", "pkg"], ["base1"])
    (tmp_path / "pkg" / "__pycache__").mkdir()
    (tmp_path / "pkg" / "__pycache__" / "a.pyc").write_bytes(b"\0")
    assert inputs_hash(tmp_path, ["Dockerfile", "pkg"], ["base1"]) == first  # caches ignored
    assert inputs_hash(tmp_path, ["Dockerfile", "pkg"], ["base2"]) != first
    (tmp_path / "pkg" / "a.py").write_text("x = 2\n")
    assert inputs_hash(tmp_path, ["Dockerfile", "pkg"], ["base1"]) != first
