"""Gateway configuration: where to listen, auth, limits, batching. Validated before any I/O."""

from __future__ import annotations

import ipaddress
import math
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from dsonode.core.errors import DsoError
from dsonode.gateway.schema import Limits

#: Environment variable read for the bearer token when none is given explicitly.
TOKEN_ENV = "DSONODE_GATEWAY_TOKEN"
MIN_TOKEN_CHARS = 16
MAX_TOKEN_CHARS = 4096


_NUMERIC_KEYS: dict[str, type | tuple[type, ...]] = {
    "max_body_bytes": int,
    "request_timeout_s": (int, float),
    "max_batch_texts": int,
    "max_wait_ms": (int, float),
    "max_pending_texts": int,
}
_MAPPING_KEYS = {
    "listen",
    "token",
    *_NUMERIC_KEYS,
    "max_inputs",
    "max_input_chars",
    "max_documents",
}


class GatewayError(DsoError, ValueError):
    """A gateway configuration that must not start (bad address, missing or weak token, ...)."""


def parse_listen(value: str) -> tuple[str, int]:
    """'HOST:PORT' or '[IPv6]:PORT' -> (host, port). Port 0 asks the OS for a free port."""
    if not isinstance(value, str) or not value or len(value) > 300:
        raise GatewayError(f"--listen must look like 127.0.0.1:8080, got {value!r}")
    if value.startswith("["):
        host, sep, port_s = value[1:].partition("]:")
    else:
        host, sep, port_s = value.rpartition(":")
        if ":" in host:
            raise GatewayError(f"write IPv6 addresses in brackets, e.g. [::1]:8080 (got {value!r})")
    if not sep or not host or not port_s.isdigit():
        raise GatewayError(f"--listen must look like 127.0.0.1:8080, got {value!r}")
    port = int(port_s)
    if not 0 <= port <= 65535:
        raise GatewayError(f"port {port} is out of range 0..65535")
    return host, port


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # a host name other than localhost: treat as reachable from outside


def token_from_env() -> str | None:
    value = os.environ.get(TOKEN_ENV)
    return value if value else None


@dataclass(frozen=True)
class GatewayConfig:
    host: str = "127.0.0.1"
    port: int = 8080
    #: Bearer token; None = no auth (allowed on loopback only).
    token: str | None = None
    max_body_bytes: int = 2 * 1024 * 1024
    request_timeout_s: float = 60.0
    max_batch_texts: int = 64
    max_wait_ms: float = 2.0
    max_pending_texts: int = 8192
    limits: Limits = field(default_factory=Limits)

    @classmethod
    def from_mapping(cls, data: Mapping[str, Any]) -> GatewayConfig:
        """Build from a config-file table, e.g. the node's `[gateway]` section:
        `listen = "127.0.0.1:8080"`, `token` (else $DSONODE_GATEWAY_TOKEN), and optionally
        the numeric fields of this class plus `max_inputs`, `max_input_chars`,
        `max_documents`. Unknown keys and wrong types are errors. The result is validated."""
        if not isinstance(data, Mapping):
            raise GatewayError("the gateway configuration must be a table")
        unknown = set(data) - _MAPPING_KEYS
        if unknown:
            raise GatewayError(f"unknown gateway setting(s): {', '.join(sorted(unknown))}")
        kwargs: dict[str, Any] = {}
        if "listen" in data:
            kwargs["host"], kwargs["port"] = parse_listen(data["listen"])
        token = data.get("token")
        if token is not None and not isinstance(token, str):
            raise GatewayError("gateway token must be a string")
        kwargs["token"] = token or token_from_env()
        for key, kind in _NUMERIC_KEYS.items():
            if key in data:
                value = data[key]
                if isinstance(value, bool) or not isinstance(value, kind):
                    raise GatewayError(f"gateway setting {key} must be a number, got {value!r}")
                kwargs[key] = value
        limit_args = {
            k: data[k] for k in ("max_inputs", "max_input_chars", "max_documents") if k in data
        }
        for key, value in limit_args.items():
            if isinstance(value, bool) or not isinstance(value, int):
                raise GatewayError(f"gateway setting {key} must be an integer, got {value!r}")
        if limit_args:
            kwargs["limits"] = Limits(**limit_args)
        config = cls(**kwargs)
        config.validate()
        return config

    def validate(self) -> None:
        """Raise GatewayError unless this configuration is safe and sane to start."""
        if not self.host or len(self.host) > 255:
            raise GatewayError("listen host must be a non-empty address")
        if not 0 <= self.port <= 65535:
            raise GatewayError(f"port {self.port} is out of range 0..65535")
        if self.token is not None:
            tok = self.token
            if not MIN_TOKEN_CHARS <= len(tok) <= MAX_TOKEN_CHARS:
                raise GatewayError(
                    f"the gateway token must be {MIN_TOKEN_CHARS}..{MAX_TOKEN_CHARS} characters"
                )
            if not all(33 <= ord(c) <= 126 for c in tok):
                raise GatewayError("the gateway token must be printable ASCII without spaces")
        elif not is_loopback(self.host):
            raise GatewayError(
                f"refusing to listen on {self.host} without a token: anything beyond loopback "
                f"needs bearer auth (--token, --token-file or ${TOKEN_ENV})"
            )
        if not 1024 <= self.max_body_bytes <= 64 * 1024 * 1024:
            raise GatewayError("max_body_bytes must be within 1 KiB..64 MiB")
        if not (0.1 <= self.request_timeout_s <= 3600) or math.isnan(self.request_timeout_s):
            raise GatewayError("request_timeout_s must be within 0.1..3600 seconds")
        if not 1 <= self.max_batch_texts <= 4096:
            raise GatewayError("max_batch_texts must be within 1..4096")
        if not (0 <= self.max_wait_ms <= 1000) or math.isnan(self.max_wait_ms):
            raise GatewayError("max_wait_ms must be within 0..1000")
        if not self.max_batch_texts <= self.max_pending_texts <= 1_000_000:
            raise GatewayError("max_pending_texts must be within max_batch_texts..1,000,000")
        lim = self.limits
        if not (1 <= lim.max_inputs <= 100_000 and 1 <= lim.max_input_chars <= 10_000_000):
            raise GatewayError("limits.max_inputs / max_input_chars out of range")
        if not 1 <= lim.max_documents <= 100_000:
            raise GatewayError("limits.max_documents out of range")
