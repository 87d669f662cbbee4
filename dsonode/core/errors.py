"""Typed errors of the pure core. Decoders raise only these, whatever the input bytes."""


class DsoError(Exception):
    """Base of every error dsonode raises on purpose."""


class CodecError(DsoError, ValueError):
    """A vector or a BitDelta code is malformed (shape, dimension, NaN/inf, length)."""


class AggregateError(DsoError, ValueError):
    """Aggregation was asked something impossible (no rows, bad weights, unknown method)."""


class WireError(DsoError, ValueError):
    """A wire item or batch is invalid. Subclasses say why (see dsonode.core.wire)."""


# --- Wire errors (dsonode.core.wire). Each names one decoding step of protocol/PROTOCOL.md §9;
# --- a decoder raises the class of the first step that fails, and nothing else.


class MalformedError(WireError):
    """The bytes are not one well-formed msgpack object (truncated, trailing bytes, bad UTF-8)."""


class OversizeError(WireError):
    """A size or count bound is exceeded (item, batch, text, tags, provenance, domain...)."""


class SchemaError(WireError):
    """Wrong type, missing or extra field, forbidden character, bad charset or value range."""


class CodeLengthError(SchemaError):
    """A submission's BitDelta code is not exactly 964 bytes."""


class VersionError(WireError):
    """The item or batch declares a wire version this node does not speak."""


class KindError(WireError):
    """Unknown (or reserved, not yet implemented) kind of item or envelope."""


class NonCanonicalError(WireError):
    """Valid content in a non-canonical form (encoding, unnormalised text, unsorted tags...)."""


class IdMismatchError(WireError):
    """An experience id is not sha256(b"dso/exp/1" + msgpack([domain, text]))."""


class SignatureError(WireError):
    """The Ed25519 signature does not verify against the author key."""


class ClockSkewError(WireError):
    """The item's `created` lies more than the allowed skew ahead of the receiver's clock."""


# --- Sync protocol errors (dsonode.core.sync, PROTOCOL.md §12). A sync message that is not
# --- well-formed raises the wire classes above (same decoding steps as §9); these are for what
# --- only the sync protocol can get wrong.


class SyncError(WireError):
    """A sync response does not answer its request (wrong kind, unrequested or out-of-window
    data, a cursor that does not advance), or the exchange broke a sync limit."""


class FrameError(SyncError):
    """A sync stream frame is bad: non-minimal or over-long varint, zero or oversize length."""


class SyncTimeoutError(DsoError, TimeoutError):
    """The sync peer was too slow: a read, a write or the whole exchange ran past its deadline.

    Not a WireError: no bytes were wrong (and so it has no test vector)."""
