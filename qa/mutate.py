"""Pure input generators for fuzzing the decoders: seeds from the test vectors, mutated.

Seeds are the encoded bytes of every test vector in protocol/vectors/ (items, batches, sync
messages and frames, valid and invalid alike), so a new vector (a new kind, such as
`feedback`) is fuzzed as soon as it is published. `mutate(rng, seeds)` returns one input: a
seed changed by one to four of the mutators below, or a generated msgpack value, or raw
random bytes. Everything is drawn from the `random.Random` it is given, so a seed number
reproduces a whole run.

Mutators: bit flips, byte sets (to boundary and msgpack header values), truncations,
insertions, deletions, duplications, splices of two seeds, msgpack type confusions (one node
of the parsed value replaced by a value of another type), huge declared lengths (a str/bin/
array header that claims up to 4 GiB), deep nesting (up to 100,000 arrays), and structured
values (well-formed msgpack of the right outer shape with arbitrary contents).
"""

from __future__ import annotations

import contextlib
import json
import random
import struct
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import msgpack

from qa import REPO_ROOT

#: The protocol test vectors of this checkout (qa/ runs only from the repository).
VECTORS_DIR = REPO_ROOT / "protocol" / "vectors"

# Bytes that mean something to msgpack or sit on a boundary.
_INTERESTING_BYTES = (
    0x00, 0x01, 0x7F, 0x80, 0x8F, 0x90, 0x9F, 0xA0, 0xBF, 0xC0, 0xC1, 0xC2, 0xC3, 0xC4, 0xC5,
    0xC6, 0xC7, 0xCA, 0xCB, 0xCC, 0xCD, 0xCE, 0xCF, 0xD0, 0xD3, 0xD4, 0xD9, 0xDA, 0xDB, 0xDC,
    0xDD, 0xDE, 0xDF, 0xE0, 0xFF,
)  # fmt: skip
# Headers that declare a length, with the size of their length field.
_LENGTH_HEADERS = (
    (0xC4, 1), (0xC5, 2), (0xC6, 4),  # bin 8/16/32
    (0xD9, 1), (0xDA, 2), (0xDB, 4),  # str 8/16/32
    (0xDC, 2), (0xDD, 4),  # array 16/32
    (0xDE, 2), (0xDF, 4),  # map 16/32
    (0xC7, 1), (0xC8, 2), (0xC9, 4),  # ext 8/16/32
)  # fmt: skip
_KINDS = (
    "experience", "submission", "feedback", "batch", "sync/inventory-request",
    "sync/inventory", "sync/hashes-request", "sync/hashes", "sync/items-request", "sync/items",
)  # fmt: skip


@dataclass(frozen=True)
class Seeds:
    """Encoded test vectors by the decoder they are meant for."""

    items: tuple[bytes, ...]
    batches: tuple[bytes, ...]
    sync_messages: tuple[bytes, ...]
    sync_frames: tuple[bytes, ...]

    def all(self) -> tuple[bytes, ...]:
        return self.items + self.batches + self.sync_messages + self.sync_frames


def _hex_fields(obj: Any, found: dict[str, list[bytes]], key: str = "") -> None:
    """Collect every *_hex string (or list of them) of a vector file, by key name."""
    if isinstance(obj, dict):
        for k, v in obj.items():
            _hex_fields(v, found, k)
    elif isinstance(obj, list):
        for v in obj:
            _hex_fields(v, found, key)
    elif isinstance(obj, str) and key.endswith("_hex"):
        with contextlib.suppress(ValueError):
            found.setdefault(key, []).append(bytes.fromhex(obj))


def load_seeds(vectors_dir: Path = VECTORS_DIR) -> Seeds:
    """Every encoded input of every vector file, sorted into the four decoders' piles."""
    items: list[bytes] = []
    batches: list[bytes] = []
    messages: list[bytes] = []
    frames: list[bytes] = []
    for path in sorted(vectors_dir.glob("*.json")):
        vec = json.loads(path.read_text())
        found: dict[str, list[bytes]] = {}
        _hex_fields(vec, found)
        vtype = vec.get("type") if isinstance(vec, dict) else None
        for key, values in found.items():
            if key.endswith("frame_hex") or (vtype == "sync" and "frame" in str(vec.get("input"))):
                frames += values
            elif key in ("request_hex", "response_hex") or vtype == "sync":
                messages += values
            elif key == "entries_hex":
                items += values
            elif key == "encoded_hex":
                (batches if vtype == "batch" else items).append(values[0])
    if not items or not batches or not messages:
        raise FileNotFoundError(f"no usable test vectors under {vectors_dir}")
    dedup = lambda xs: tuple(dict.fromkeys(x for x in xs if x))  # noqa: E731
    return Seeds(dedup(items), dedup(batches), dedup(messages), dedup(frames))


# --- byte-level mutators ---------------------------------------------------------------------


def _flip(rng: random.Random, data: bytearray) -> None:
    if data:
        i = rng.randrange(len(data))
        data[i] ^= 1 << rng.randrange(8)


def _set_byte(rng: random.Random, data: bytearray) -> None:
    if data:
        data[rng.randrange(len(data))] = rng.choice((*_INTERESTING_BYTES, rng.randrange(256)))


def _truncate(rng: random.Random, data: bytearray) -> None:
    if data:
        del data[rng.randrange(len(data)) :]


def _insert(rng: random.Random, data: bytearray) -> None:
    i = rng.randrange(len(data) + 1)
    data[i:i] = bytes(rng.randrange(256) for _ in range(rng.choice((1, 1, 2, 4, 16))))


def _delete(rng: random.Random, data: bytearray) -> None:
    if data:
        i = rng.randrange(len(data))
        del data[i : i + rng.choice((1, 1, 2, 8, 64))]


def _duplicate(rng: random.Random, data: bytearray) -> None:
    if data:
        i = rng.randrange(len(data))
        chunk = data[i : i + rng.choice((1, 4, 32, 256))]
        j = rng.randrange(len(data) + 1)
        data[j:j] = chunk * rng.choice((1, 2, 8))


def _huge_length(rng: random.Random, data: bytearray) -> None:
    """Put a str/bin/array/map/ext header that declares a huge length somewhere."""
    header, width = rng.choice(_LENGTH_HEADERS)
    length = rng.choice((2 ** (8 * width) - 1, 2 ** (8 * width - 1), 1 << 20, 65_537, 4_097))
    length = min(length, 2 ** (8 * width) - 1)
    fmt = {1: ">B", 2: ">H", 4: ">I"}[width]
    i = rng.randrange(len(data) + 1)
    data[i:i] = bytes([header]) + struct.pack(fmt, length)


MUTATORS: dict[str, Callable[[random.Random, bytearray], None]] = {
    "flip": _flip,
    "set": _set_byte,
    "truncate": _truncate,
    "insert": _insert,
    "delete": _delete,
    "duplicate": _duplicate,
    "huge_length": _huge_length,
}


def splice(rng: random.Random, a: bytes, b: bytes) -> bytes:
    """The head of one seed joined to the tail of another."""
    return a[: rng.randrange(len(a) + 1)] + b[rng.randrange(len(b) + 1) :]


def deep_nesting(rng: random.Random) -> bytes:
    """Arrays (or maps) nested up to 100,000 deep, inside an envelope or bare."""
    depth = rng.choice((5, 6, 10, 100, 1_000, 10_000, 100_000))
    opener = rng.choice((b"\x91", b"\x92", b"\xdc\x00\x01", b"\x81\xa1a"))
    leaves = depth + 1 if opener == b"\x92" else 1  # an array of 2 needs a second element
    inner = opener * depth + b"\xc0" * leaves
    prefix = rng.choice(
        (b"", b"\x94\x01\xaaexperience", b"\x93\x01\xa5batch", b"\x93\x01\xb2sync/items-request")
    )
    return prefix + inner


# --- msgpack-level mutators ------------------------------------------------------------------


def confusion_value(rng: random.Random) -> Any:
    """A value of some msgpack type, often the wrong one for where it lands."""
    return rng.choice(
        (
            None,
            True,
            False,
            0,
            -1,
            2**64 - 1,
            -(2**63),
            2**53,
            1.5,
            float("nan"),
            float("inf"),
            "",
            "x" * rng.choice((1, 64, 1025)),
            "\u0000\u0085\u200b",
            b"",
            bytes(rng.choice((1, 31, 32, 33, 63, 64, 65, 964, 4097))),
            [],
            [[]],
            {},
            {"a": 1},
            msgpack.ExtType(1, b"x"),
            list(range(rng.choice((3, 17, 257)))),
        )
    )


def _nodes(obj: Any, path: tuple[int, ...] = ()) -> list[tuple[int, ...]]:
    out = [path]
    if isinstance(obj, list) and len(path) < 6:
        for i, v in enumerate(obj[:64]):
            out += _nodes(v, (*path, i))
    return out


def _replace(obj: Any, path: tuple[int, ...], value: Any) -> Any:
    if not path:
        return value
    copy = list(obj)
    copy[path[0]] = _replace(copy[path[0]], path[1:], value)
    return copy


def type_confusion(rng: random.Random, seed: bytes) -> bytes | None:
    """Parse a seed, replace (or drop, or duplicate) one node, re-encode; None if unparsable."""
    try:
        obj = msgpack.unpackb(seed, raw=False, strict_map_key=False, use_list=True)
    except Exception:
        return None
    path = rng.choice(_nodes(obj))
    op = rng.randrange(4)
    if op == 0 or not path:
        obj = _replace(obj, path, confusion_value(rng))
    else:
        parent_path, i = path[:-1], path[-1]
        parent = obj
        for p in parent_path:
            parent = parent[p]
        new_parent = list(parent)
        if op == 1:
            del new_parent[i]  # a missing field
        elif op == 2:
            new_parent.insert(i, confusion_value(rng))  # an extra field
        else:
            new_parent.insert(i, new_parent[i])  # a duplicated field
        obj = _replace(obj, parent_path, new_parent)
    try:
        return msgpack.packb(obj, use_bin_type=True)
    except Exception:
        return None


def structured(rng: random.Random) -> bytes:
    """Well-formed msgpack with an envelope-like outer shape and arbitrary contents."""

    def value(depth: int) -> Any:
        if depth > 3 or rng.random() < 0.5:
            return confusion_value(rng)
        return [value(depth + 1) for _ in range(rng.randrange(8))]

    shape = rng.randrange(4)
    kind = rng.choice(_KINDS)
    if shape == 0:
        obj: Any = [1, kind, value(1), bytes(64)]
    elif shape == 1:
        obj = [1, kind, *[value(1) for _ in range(rng.randrange(6))]]
    elif shape == 2:
        obj = [rng.choice((0, 1, 2, 255, -1)), kind, value(1)]
    else:
        obj = value(0)
    return msgpack.packb(obj, use_bin_type=True)


def mutate(rng: random.Random, seeds: Sequence[bytes], others: Sequence[bytes] = ()) -> bytes:
    """One fuzz input: a mutated seed (most of the time), a generated value or random bytes.

    `others` are seeds of the other decoders, spliced in now and then (an item where a batch
    is expected, a sync message where an item is...).
    """
    roll = rng.random()
    if roll < 0.03:
        return bytes(rng.randrange(256) for _ in range(rng.choice((0, 1, 2, 8, 64, 512))))
    if roll < 0.05:
        return deep_nesting(rng)
    if roll < 0.12:
        return structured(rng)
    seed = rng.choice(seeds)
    if roll < 0.30:
        confused = type_confusion(rng, seed)
        if confused is not None:
            return confused
    if roll < 0.36:
        return splice(rng, seed, rng.choice(tuple(seeds) + tuple(others)))
    data = bytearray(seed)
    names = tuple(MUTATORS)
    # Mostly one small change: inputs stay close to valid and reach the deep checks.
    for _ in range(rng.choice((1, 1, 1, 2, 2, 3, 4))):
        MUTATORS[rng.choice(names)](rng, data)
    return bytes(data)
