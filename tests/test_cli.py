"""The command line: every area registers its commands, and building the parser stays light."""

import subprocess
import sys

import pytest

from dsonode.cli import build_parser, command_modules, main

HEAVY = ("torch", "transformers", "libp2p", "lmdb", "faiss", "trio")


def test_every_area_with_a_cli_registers_commands():
    modules = command_modules()
    assert "dsonode.bench" in modules
    for area in ("api", "demo", "embed", "gateway"):
        assert f"dsonode.{area}.cli" in modules
    commands = build_parser()._subparsers._group_actions[0].choices
    for name in ("bench", "run", "search", "add", "stats", "demo", "embed", "head", "gateway"):
        assert name in commands, f"`dsonode {name}` is not registered"


def test_building_the_parser_imports_no_heavy_library():
    """`dsonode search` must start fast: registering commands may not import torch & co."""
    code = (
        "import sys\n"
        "from dsonode.cli import build_parser\n"
        "build_parser()\n"
        f"print(','.join(m for m in {HEAVY!r} if m in sys.modules))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "", f"building the parser imported: {out.stdout.strip()}"


def test_bad_arguments_exit_with_a_usage_error(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["search", "q", "-k", "0"])
    assert exc.value.code == 2
    assert "must be >= 1" in capsys.readouterr().err


@pytest.mark.parametrize("command", [["config", "check"], ["config", "check", "--json"]])
def test_a_reader_that_goes_away_is_no_traceback(command):
    """`dsonode ... | head -1`: the reader closes the pipe before we write (closed here at
    once, so the very first write fails): exit 141 like a SIGPIPE death, nothing on stderr."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "dsonode", *command],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    assert proc.stdout is not None
    proc.stdout.close()
    try:
        _, err = proc.communicate(timeout=60)
    finally:
        proc.kill()  # no-op once it has exited
    assert proc.returncode == 141
    assert err.decode() == ""
