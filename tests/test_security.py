"""Security review, as tests (the checks of a running node are in tests/test_socket_abuse.py
and tests/test_kill9.py): no code execution from data anywhere in dsonode/, a socket
directory others can write is refused, and the protocol's limits are written down.
"""

from __future__ import annotations

import ast
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from dsonode.api.server import SocketPathError, check_socket_dir, prepare_socket_path
from dsonode.core import constants, sync, wire

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "dsonode"

#: Modules that turn bytes into code or objects (never on any input path).
FORBIDDEN_MODULES = {"pickle", "cPickle", "_pickle", "marshal", "shelve", "dill", "cloudpickle"}
#: Builtins that run strings as code.
FORBIDDEN_BUILTINS = {"eval", "exec", "compile", "__import__"}
#: module.function calls that run a shell or load pickles.
FORBIDDEN_CALLS = {
    ("os", "system"),
    ("os", "popen"),
    ("os", "execl"),
    ("os", "execlp"),
    ("os", "execv"),
    ("os", "execvp"),
    ("os", "spawnl"),
    ("os", "spawnv"),
    ("pd", "read_pickle"),
    ("pandas", "read_pickle"),
    ("yaml", "load"),
    ("yaml", "unsafe_load"),
}
#: Explicit exceptions: (path relative to the repo, what) -> why it is safe. Empty today.
ALLOWED: dict[tuple[str, str], str] = {}


def _call_name(node: ast.Call) -> tuple[str, str] | str | None:
    f = node.func
    if isinstance(f, ast.Name):
        return f.id
    if isinstance(f, ast.Attribute) and isinstance(f.value, ast.Name):
        return (f.value.id, f.attr)
    return None


def _kw_true(node: ast.Call, name: str) -> bool:
    for kw in node.keywords:
        if kw.arg == name:
            return not (isinstance(kw.value, ast.Constant) and kw.value.value in (False, None))
    return False


def _kw_is(node: ast.Call, name: str, value: object) -> bool:
    return any(
        kw.arg == name and isinstance(kw.value, ast.Constant) and kw.value.value is value
        for kw in node.keywords
    )


def findings(path: Path) -> list[tuple[int, str]]:
    tree = ast.parse(path.read_text(), filename=str(path))
    out: list[tuple[int, str]] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.split(".")[0] in FORBIDDEN_MODULES:
                    out.append((node.lineno, f"import {alias.name}"))
        elif isinstance(node, ast.ImportFrom):
            if (node.module or "").split(".")[0] in FORBIDDEN_MODULES:
                out.append((node.lineno, f"from {node.module} import"))
        elif isinstance(node, ast.Call):
            name = _call_name(node)
            if isinstance(name, str) and name in FORBIDDEN_BUILTINS:
                out.append((node.lineno, f"{name}()"))
            elif isinstance(name, tuple) and name in FORBIDDEN_CALLS:
                out.append((node.lineno, f"{name[0]}.{name[1]}()"))
            if _kw_true(node, "shell"):
                out.append((node.lineno, "shell=True"))
            torch_load = isinstance(name, tuple) and name == ("torch", "load")
            if torch_load and not _kw_is(node, "weights_only", True):
                out.append((node.lineno, "torch.load without weights_only=True"))
            if _kw_true(node, "allow_pickle"):
                out.append((node.lineno, "allow_pickle=True"))
    return out


def test_the_scanner_finds_what_it_looks_for(tmp_path):
    bad = tmp_path / "bad.py"
    bad.write_text(
        "import pickle\nimport os, subprocess, torch, numpy as np\n"
        "eval('1')\nexec('x = 1')\nos.system('ls')\n"
        "subprocess.run('ls', shell=True)\ntorch.load('f')\nnp.load('f', allow_pickle=True)\n"
        "model.eval()\nsubprocess.run(['ls'], shell=False)\ntorch.load('f', weights_only=True)\n"
    )
    found = [what for _, what in findings(bad)]
    assert found == [
        "import pickle",
        "eval()",
        "exec()",
        "os.system()",
        "shell=True",
        "torch.load without weights_only=True",
        "allow_pickle=True",
    ]


def test_no_pickle_eval_exec_or_shell_in_dsonode():
    seen = set()
    problems = []
    for path in sorted(PACKAGE.rglob("*.py")):
        rel = str(path.relative_to(ROOT))
        for line, what in findings(path):
            if (rel, what) in ALLOWED:
                seen.add((rel, what))
            else:
                problems.append(f"{rel}:{line}: {what}")
    assert problems == []
    assert seen == set(ALLOWED), "stale allow-list entries"


def test_socket_directory_writable_by_others_is_refused(tmp_path):
    for mode in (0o777, 0o770, 0o702, 0o720):
        d = tmp_path / f"d{mode:o}"
        d.mkdir()
        d.chmod(mode)
        with pytest.raises(SocketPathError, match="writable by group or others"):
            check_socket_dir(d)
        with pytest.raises(SocketPathError):
            prepare_socket_path(d / "dsonode.sock")
    private = tmp_path / "private"
    private.mkdir(mode=0o700)
    check_socket_dir(private)
    prepare_socket_path(private / "dsonode.sock")
    shared = tmp_path / "readable"
    shared.mkdir()
    shared.chmod(0o755)  # others may read and enter, not replace the socket
    check_socket_dir(shared)


@pytest.mark.skipif(os.getuid() != 0, reason="needs root to give a directory to another user")
def test_socket_directory_of_another_user_is_refused(tmp_path):
    theirs = tmp_path / "theirs"
    theirs.mkdir(mode=0o700)
    os.chown(theirs, 65534, 65534)  # nobody
    with pytest.raises(SocketPathError, match="belongs to another user"):
        check_socket_dir(theirs)


def test_a_node_refuses_a_world_writable_data_dir(tmp_path):
    data_dir = tmp_path / "open"
    data_dir.mkdir()
    data_dir.chmod(0o777)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    proc = subprocess.run(
        [sys.executable, "-m", "dsonode", "run", "--data-dir", str(data_dir)],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
        check=False,
    )
    assert proc.returncode == 2
    assert "writable by group or others" in proc.stderr
    assert not (data_dir / "dsonode.sock").exists()


def _stated(text: str, value: int) -> bool:
    """The number appears in the spec, in one of its usual spellings."""
    forms = {str(value), f"{value:,}", f"{value:_}"}
    if value % 1024 == 0:
        forms.add(f"{value // 1024} KiB")
    if value >= 2**10 and (value & (value - 1)) == 0:
        forms.add(f"2^{value.bit_length() - 1}")
    return any(re.search(rf"(?<![\d,]){re.escape(f)}(?![\d,])", text) for f in forms)


@pytest.mark.parametrize(
    "name, value",
    [
        ("MAX_TEXT_BYTES", constants.MAX_TEXT_BYTES),
        ("MAX_ITEM_BYTES", constants.MAX_ITEM_BYTES),
        ("MAX_BATCH_BYTES", constants.MAX_BATCH_BYTES),
        ("MAX_CLOCK_SKEW_S", constants.MAX_CLOCK_SKEW_S),
        ("MAX_BATCH_ITEMS", wire.MAX_BATCH_ITEMS),
        ("MAX_DOMAIN_BYTES", wire.MAX_DOMAIN_BYTES),
        ("MAX_TAGS", wire.MAX_TAGS),
        ("MAX_TAG_BYTES", wire.MAX_TAG_BYTES),
        ("MAX_PROVENANCE", wire.MAX_PROVENANCE),
        ("MAX_PROV_VALUE_BYTES", wire.MAX_PROV_VALUE_BYTES),
        ("sync.MAX_FRAME_BYTES", sync.MAX_FRAME_BYTES),
        ("sync.MAX_BUCKETS", sync.MAX_BUCKETS),
        ("sync.MAX_HASHES", sync.MAX_HASHES),
        ("sync.MAX_ITEMS", sync.MAX_ITEMS),
    ],
)
def test_every_protocol_limit_is_stated_in_the_spec(name, value):
    spec = (ROOT / "protocol" / "PROTOCOL.md").read_text()
    assert _stated(spec, value), f"{name} = {value} is not stated in protocol/PROTOCOL.md"


def _limits_table(spec: str) -> list[tuple[str, str, str]]:
    """(bound, value, code reference) of every row of PROTOCOL.md section 17."""
    section = spec.split("\n## 17. Limits\n", 1)[1].split("\n## ", 1)[0]
    rows = []
    for line in section.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) == 5 and cells[4].startswith("`dsonode."):
            rows.append((cells[1], cells[2], cells[4].strip("`")))
    return rows


def _resolve(ref: str):
    """`pkg.module.NAME`, `pkg.module.Class.field` (a dataclass default) or `...DICT[key]`."""
    import importlib

    key = None
    if ref.endswith("]"):
        ref, key = ref[:-1].split("[")
    parts = ref.split(".")
    for cut in range(len(parts) - 1, 0, -1):
        try:
            obj = importlib.import_module(".".join(parts[:cut]))
        except ModuleNotFoundError:
            continue
        for attr in parts[cut:]:
            obj = getattr(obj, attr)
        return obj[key] if key is not None else obj
    raise AssertionError(f"cannot resolve {ref}")


def _check_limits_table(spec: str) -> int:
    """AssertionError unless every row's value equals its constant; returns the row count."""
    from dsonode.net.pipeline import PENALTY

    rows = _limits_table(spec)
    assert len(rows) >= 60, "the Limits table lost rows"
    refs = [ref for _, _, ref in rows]
    assert len(refs) == len(set(refs)), "a constant is listed twice"
    for bound, value, ref in rows:
        assert float(value.replace(",", "")) == float(_resolve(ref)), (bound, value, ref)
    # every protocol limit of the test above is in the table too, and every penalty weight
    listed = {ref.rsplit(".", 1)[-1] for ref in refs}
    for name in ("MAX_TEXT_BYTES", "MAX_ITEM_BYTES", "MAX_BATCH_BYTES", "MAX_CLOCK_SKEW_S",
                 "MAX_BATCH_ITEMS", "MAX_FRAME_BYTES", "MAX_BUCKETS", "MAX_HASHES", "MAX_ITEMS"):  # fmt: skip
        assert name in listed, name
    missing = {k for k, v in PENALTY.items() if v and f"PENALTY[{k}]" not in listed}
    assert not missing, f"penalty weights missing from the Limits table: {missing}"
    return len(rows)


def test_the_collected_limits_table_matches_the_code():
    """PROTOCOL.md section 17 lists every bound with its constant; each value is the code's."""
    assert _check_limits_table((ROOT / "protocol" / "PROTOCOL.md").read_text()) >= 60


def test_the_limits_table_check_can_fail():
    """A changed value or an unknown constant in the table is caught (not vacuous)."""
    spec = (ROOT / "protocol" / "PROTOCOL.md").read_text()
    row = "| W | one encoded item | 4096 | bytes | `dsonode.core.constants.MAX_ITEM_BYTES` |"
    assert row in spec
    with pytest.raises(AssertionError, match="MAX_ITEM_BYTES"):
        _check_limits_table(spec.replace(row, row.replace("4096", "8192")))
    with pytest.raises(AttributeError):
        _check_limits_table(spec.replace(row, row.replace("MAX_ITEM_BYTES", "NO_SUCH_LIMIT")))


def test_the_spec_has_limits_and_security_sections():
    spec = (ROOT / "protocol" / "PROTOCOL.md").read_text()
    headings = [h.lower() for h in re.findall(r"^#+ (.*)$", spec, flags=re.M)]
    assert any("constants" in h for h in headings)
    assert any("limits" in h for h in headings)
    assert any("security" in h for h in headings)
