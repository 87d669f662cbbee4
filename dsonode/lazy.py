"""Names a package exports without importing their modules until first use (PEP 562).

`dsonode.embed` and `dsonode.node` are imported by every `dsonode` command (the CLI registers
each area's commands), but their modules import torch, libp2p and trio: a package lists its
exports and defines `__getattr__(name)` as `lazy_attribute(__name__, EXPORTS, name)`.
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Mapping
from typing import Any


def lazy_attribute(package: str, exports: Mapping[str, str], name: str) -> Any:
    """`name` from the module `exports[name]` names, cached on `package` once imported."""
    module = exports.get(name)
    if module is None:
        raise AttributeError(f"module {package!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    setattr(sys.modules[package], name, value)
    return value
