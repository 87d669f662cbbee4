"""Typed errors of the pure core. Decoders raise only these, whatever the input bytes."""


class DsoError(Exception):
    """Base of every error dsonode raises on purpose."""


class CodecError(DsoError, ValueError):
    """A vector or a BitDelta code is malformed (shape, dimension, NaN/inf, length)."""


class AggregateError(DsoError, ValueError):
    """Aggregation was asked something impossible (no rows, bad weights, unknown method)."""


class WireError(DsoError, ValueError):
    """A wire item or batch is invalid. Subclasses say why (see dsonode.core.wire)."""
