"""Fuzzing every decoder of peer bytes: items, batches, sync messages, sync frames.

The CI subset of `dsonode bench faults` (which runs >= 100,000 inputs per decoder): a fixed
seed of the mutation runner, a derandomized hypothesis run over the same mutators, targeted
worst cases (deep nesting, huge declared lengths), and checks that the runner itself does
report crashes and hangs (so a green run means something). See RELIABILITY.md.
"""

from __future__ import annotations

import contextlib
import random
import time

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dsonode.core import sync, wire
from dsonode.core.errors import WireError
from qa import atheris_fuzz, fuzz, mutate

SEEDS = mutate.load_seeds()
CI_INPUTS_PER_TARGET = 2_500


def test_seeds_cover_every_decoder_and_every_vector_kind():
    assert len(SEEDS.items) >= 25 and len(SEEDS.batches) >= 5
    assert len(SEEDS.sync_messages) >= 10 and len(SEEDS.sync_frames) >= 5
    # the valid vectors are among them, and decode (so mutations start from valid bytes)
    assert sum(1 for s in SEEDS.items if fuzz.run_one("item", s) == "ok") >= 4
    assert any(fuzz.run_one("batch", s) == "ok" for s in SEEDS.batches)
    assert any(fuzz.run_one("sync", s) == "ok" for s in SEEDS.sync_messages)
    # every item kind the wire module decodes is among the seeds (feedback included)
    kinds = set()
    for s in SEEDS.items:
        with contextlib.suppress(WireError):
            kinds.add(wire.decode_item(s).kind)
    assert kinds == set(wire._BODY_LEN), kinds


def test_mutation_run_subset_only_typed_errors():
    result = fuzz.run_fuzz(CI_INPUTS_PER_TARGET, seed=20261123)
    summary = result.summary()
    assert result.inputs == 4 * CI_INPUTS_PER_TARGET
    assert result.crashes == [], summary["first_crashes"]
    assert result.hangs == [], summary["first_hangs"]
    # The inputs reach deep into the decoders, not only the msgpack parser.
    item_errors = result.targets["item"].errors
    for cls in ("SchemaError", "OversizeError", "NonCanonicalError", "SignatureError"):
        assert item_errors[cls] > 0, (cls, dict(item_errors))
    assert result.targets["sync"].errors["SyncError"] + result.targets["sync"].accepted > 0
    assert result.targets["frame"].errors["FrameError"] > 0
    assert result.rss_growth_mb < 200


@settings(
    max_examples=1500,
    derandomize=True,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
@given(st.sampled_from(tuple(fuzz.TARGETS)), st.integers(0, 2**64 - 1))
def test_hypothesis_mutations_only_typed_errors(target, seed):
    own, others = fuzz.seeds_for(target, SEEDS)
    data = mutate.mutate(random.Random(seed), own, others)
    outcome = fuzz.run_one(target, data)
    assert not outcome.startswith("crash:") and outcome != "hang", (outcome, data[:256].hex())


@pytest.mark.parametrize("depth", [100, 1_000, 10_000, 100_000])
def test_deep_nesting_is_a_typed_error(depth):
    for data in (b"\x91" * depth + b"\xc0", b"\x94\x01\xaaexperience" + b"\x91" * depth + b"\x01"):
        for target in fuzz.TARGETS:
            outcome = fuzz.run_one(target, data)
            assert outcome != "hang" and not outcome.startswith("crash:"), outcome
            # (the frame reader may just be waiting for the rest of a long frame)
            assert outcome != "ok" or target == "frame"


@pytest.mark.parametrize("header", [0xC6, 0xDB, 0xDD, 0xDF, 0xC9])
def test_huge_declared_lengths_allocate_nothing(header):
    # a 4 GiB str/bin/array/map/ext header followed by a few bytes
    for prefix in (b"", b"\x94\x01\xaaexperience", b"\x93\x01\xa5batch"):
        data = prefix + bytes([header]) + b"\xff\xff\xff\xff" + b"\x00" * 16
        t0 = time.perf_counter()
        for target in fuzz.TARGETS:
            outcome = fuzz.run_one(target, data)
            assert not outcome.startswith("crash:") and outcome != "hang", outcome
            assert outcome != "ok" or target == "frame"
        assert time.perf_counter() - t0 < 5  # a bound against hangs, not a performance target


def test_the_runner_reports_crashes(monkeypatch):
    def buggy(data: bytes) -> bool:
        if len(data) % 5 == 2:
            raise IndexError("a bug")  # not a WireError: must be reported
        wire.decode_item(data)
        return True

    monkeypatch.setitem(fuzz.TARGETS, "buggy", buggy)
    result = fuzz.run_fuzz(300, seed=1, targets=("buggy",))
    assert result.crashes and result.crashes[0].error.startswith("IndexError")
    assert bytes.fromhex(result.crashes[0].input_hex)  # the input is kept to reproduce it


def test_the_runner_reports_hangs(monkeypatch):
    def slow(data: bytes) -> bool:
        time.sleep(5)
        return True

    monkeypatch.setitem(fuzz.TARGETS, "slow", slow)
    t0 = time.perf_counter()
    assert fuzz.run_one("slow", b"x", timeout_s=0.2) == "hang"
    assert time.perf_counter() - t0 < 4  # the alarm interrupted the sleep


def test_frame_reader_fed_byte_by_byte_never_overreads():
    frames = b"".join(sync.encode_frame(m) for m in SEEDS.sync_messages)
    reader = sync.FrameReader()
    out = []
    for b in frames:
        reader.feed(bytes([b]))
        while (payload := reader.next_frame()) is not None:
            out.append(payload)
    assert out == list(SEEDS.sync_messages)


def test_typed_errors_are_wire_errors():
    # what the runner accepts as "typed": every class a decoder may raise is a WireError
    for cls in (sync.SyncError, sync.FrameError, wire.SchemaError, wire.SignatureError):
        assert issubclass(cls, WireError)


@pytest.mark.skipif(not atheris_fuzz.available(), reason="atheris is not installed")
def test_atheris_smoke(tmp_path):
    out = atheris_fuzz.run_atheris(tmp_path / "corpus", runs=3_000, wall_s=120)
    assert out["crashed"] is False, out
    assert out["runs"] == 3_000 and out["coverage_edges"] > 100
