"""Typed errors of the embedding layer."""

from __future__ import annotations

from dsonode.core.errors import DsoError


class EmbedError(DsoError, ValueError):
    """Bad input to the embedder (not a list of str, bad dim, bad batch size, ...)."""


class ModelLoadError(DsoError, OSError):
    """An encoder folder or a head file is missing, unreadable or malformed."""
