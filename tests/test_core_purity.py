"""The core must stay sans-IO: importing it pulls in no trio, libp2p, lmdb or torch."""

import subprocess
import sys

FORBIDDEN = ("trio", "libp2p", "lmdb", "torch", "transformers")


def test_core_imports_no_io_libraries():
    code = (
        "import importlib, pkgutil, sys\n"
        "import dsonode.core as core\n"
        "for m in pkgutil.iter_modules(core.__path__):\n"
        "    importlib.import_module('dsonode.core.' + m.name)\n"
        f"bad = [n for n in {FORBIDDEN!r} if n in sys.modules]\n"
        "print(','.join(bad))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "", f"dsonode.core imported I/O libraries: {out.stdout.strip()}"
