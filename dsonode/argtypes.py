"""argparse value types with bounds, shared by every command (clear messages, no tracebacks)."""

from __future__ import annotations

import argparse
import math
from collections.abc import Callable
from typing import TypeAlias

#: What `register(subparsers)` receives: the object `ArgumentParser.add_subparsers()` returns.
#: A string because argparse's class is generic only in typeshed, not at run time.
SubParsers: TypeAlias = "argparse._SubParsersAction[argparse.ArgumentParser]"


def bounded_int(lo: int, hi: int | None = None) -> Callable[[str], int]:
    """An integer in [lo, hi] (hi=None: no upper bound)."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
        if value < lo or (hi is not None and value > hi):
            bound = f"[{lo}, {hi}]" if hi is not None else f">= {lo}"
            raise argparse.ArgumentTypeError(f"must be {bound}, got {value}")
        return value

    return parse


def bounded_float(
    lo: float, hi: float = math.inf, *, open_low: bool = False
) -> Callable[[str], float]:
    """A finite number in [lo, hi] (or (lo, hi] with open_low)."""

    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
        if not math.isfinite(value) or value > hi or value < lo or (open_low and value == lo):
            raise argparse.ArgumentTypeError(
                f"must be in {'(' if open_low else '['}{lo}, {hi}], got {text}"
            )
        return value

    return parse
