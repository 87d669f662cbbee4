"""The package graph of ARCHITECTURE.md, checked on the source: layers, no cycles, pure core.

Every `import dsonode.X` / `from dsonode.X import ...` in the package (module level or inside a
function, `TYPE_CHECKING` blocks included) is an arrow from the importing package to X. An
arrow must point to the same package or to a lower layer; a new arrow upwards fails here
with the file and line, and so would the cycle it could start. The core imports no I/O
library at all, directly or through another module.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import dsonode

ROOT = Path(dsonode.__file__).parent

#: ARCHITECTURE.md "Packages and layers": a package may import its own modules and those of
#: lower layers only. Top-level modules (dsonode/x.py) are packages of their own here.
LAYERS: dict[str, int] = {
    "core": 0,
    "__init__": 0,
    "identity": 1,
    "dirlock": 1,
    "argtypes": 1,
    "lazy": 1,
    "data": 1,
    "embed": 2,
    "store": 2,
    "extract": 2,
    "gateway": 3,
    "config": 4,
    "library": 5,
    "net": 6,
    "api": 7,
    "ops": 8,
    "mcp": 8,
    "node": 9,
    "testnet": 10,
    "bench": 11,
    "cli": 11,
    "demo": 12,
    "__main__": 13,
}

#: What the pure core must never import (ARCHITECTURE.md "The pure core").
CORE_FORBIDDEN = ("trio", "libp2p", "lmdb", "torch", "transformers", "socket", "httpx")


def _package_of(path: Path) -> str:
    rel = path.relative_to(ROOT)
    return rel.parts[0] if len(rel.parts) > 1 else rel.stem


def _imports(path: Path) -> list[tuple[str, int]]:
    """(imported dsonode package, line) of every dsonode import in one file."""
    out = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names = [node.module]
            if node.module == "dsonode":  # from dsonode import x
                names = [f"dsonode.{a.name}" for a in node.names]
        else:
            continue
        for name in names:
            parts = name.split(".")
            if parts[0] == "dsonode" and len(parts) > 1:
                is_module = (ROOT / parts[1]).is_dir() or (ROOT / f"{parts[1]}.py").is_file()
                out.append((parts[1] if is_module else "__init__", node.lineno))
    return out


def _edges() -> dict[tuple[str, str], list[str]]:
    edges: dict[tuple[str, str], list[str]] = {}
    for path in sorted(ROOT.rglob("*.py")):
        src = _package_of(path)
        for dst, line in _imports(path):
            if dst != src:
                edges.setdefault((src, dst), []).append(f"{path.relative_to(ROOT)}:{line}")
    return edges


def test_every_package_has_a_layer():
    packages = {_package_of(p) for p in ROOT.rglob("*.py")}
    missing = sorted(packages - set(LAYERS))
    assert not missing, f"add these to LAYERS and to ARCHITECTURE.md: {missing}"


def _upward(edges: dict[tuple[str, str], list[str]]) -> list[str]:
    return [
        f"{src} (layer {LAYERS[src]}) -> {dst} (layer {LAYERS[dst]}) at {', '.join(where[:3])}"
        for (src, dst), where in edges.items()
        if LAYERS[dst] >= LAYERS[src]
    ]


def _find_cycle(edges: dict[tuple[str, str], list[str]]) -> list[str] | None:
    """A cycle of packages (depth-first search for a back edge), or None."""
    graph: dict[str, set[str]] = {}
    for src, dst in edges:
        graph.setdefault(src, set()).add(dst)
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return [*stack[stack.index(nxt) :], nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        state[node] = 2
        stack.pop()
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


def test_imports_point_down_the_layers():
    upward = _upward(_edges())
    assert not upward, "imports against the layering of ARCHITECTURE.md:\n" + "\n".join(upward)


def test_no_package_cycle():
    cycle = _find_cycle(_edges())
    assert cycle is None, "package cycle: " + " -> ".join(cycle or [])


def test_the_checks_see_a_violation(tmp_path):
    """The checks are only worth something if they can fail: a core module importing the
    node, and a two-package loop, are both reported."""
    fake = tmp_path / "fake.py"
    fake.write_text(
        "import trio\nfrom dsonode.node import Node\n\ndef f():\n    import dsonode.api\n"
    )
    assert _imports(fake) == [("node", 2), ("api", 5)]
    edges = {("core", "node"): ["core/fake.py:2"], **_edges()}
    assert any(line.startswith("core (layer 0) -> node") for line in _upward(edges))
    loop = {("api", "ops"): ["a"], ("ops", "api"): ["b"]}
    assert _find_cycle(loop) in (["api", "ops", "api"], ["ops", "api", "ops"])


def test_core_imports_no_io_library():
    code = (
        "import importlib, pkgutil, sys\n"
        "import dsonode.core as core\n"
        "for m in pkgutil.iter_modules(core.__path__):\n"
        "    importlib.import_module('dsonode.core.' + m.name)\n"
        f"bad = [n for n in {CORE_FORBIDDEN!r} if n in sys.modules]\n"
        "print(','.join(bad))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "", f"dsonode.core imported I/O libraries: {out.stdout.strip()}"
    for path in sorted((ROOT / "core").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            names = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            for name in names:
                top = name.split(".")[0]
                assert top not in CORE_FORBIDDEN, f"{path.name}:{node.lineno} imports {name}"
                assert not (top == "dsonode" and name.split(".")[1] != "core"), (
                    f"{path.name}:{node.lineno}: the core imports only the core ({name})"
                )


def test_no_module_reads_another_modules_private_names():
    """`other._private` across modules is how the rooms leaned on each other; a module's own
    `self._x`, `cls._x`, names the same file defines and dunder names are fine, and so is a
    library's internals where a comment on the line says why (a third-party workaround)."""
    offenders = []
    for path in sorted(ROOT.rglob("*.py")):
        lines = path.read_text().splitlines()
        tree = ast.parse("\n".join(lines))
        own = {n.name for n in ast.walk(tree) if isinstance(n, ast.FunctionDef)} | {
            n.attr
            for n in ast.walk(tree)
            if isinstance(n, ast.Attribute)
            and isinstance(n.value, ast.Name)
            and n.value.id in ("self", "cls")
        }
        for node in ast.walk(tree):
            if not isinstance(node, ast.Attribute) or not node.attr.startswith("_"):
                continue
            if node.attr.startswith("__") or not isinstance(node.value, ast.Name):
                continue
            if node.value.id in ("self", "cls") or node.attr in own:
                continue
            line = lines[node.lineno - 1]
            above = lines[node.lineno - 2] if node.lineno > 1 else ""
            if "#" in line or above.strip().startswith("#"):  # a commented, deliberate reach
                continue
            offenders.append(f"{path.relative_to(ROOT)}:{node.lineno}: {line.strip()}")
    assert not offenders, "reads of another module's private names:\n" + "\n".join(offenders)


def test_the_package_never_imports_the_qa_campaigns():
    """qa/ (campaign drivers, not installed) may import dsonode; never the reverse."""
    offenders = []
    for path in sorted(ROOT.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            names = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            offenders += [f"{path.name}:{node.lineno}" for n in names if n.split(".")[0] == "qa"]
    assert not offenders, f"the installed package imports qa/: {offenders}"
