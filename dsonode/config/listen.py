"""Where the metrics endpoint listens: the pure check of `metrics.listen` (HOST:PORT).

Here rather than in dsonode.ops so the configuration loader can validate the setting
without importing the operations layer (ARCHITECTURE.md: config sits below ops).
"""

from __future__ import annotations

import ipaddress

from dsonode.config.settings import default
from dsonode.core.errors import DsoError

DEFAULT_LISTEN = default("metrics.listen")


class MetricsError(DsoError, ValueError):
    """The metrics endpoint cannot be configured or started (the message says why)."""


def parse_metrics_listen(text: str, *, allow_non_loopback: bool = False) -> tuple[str, int]:
    """'HOST:PORT' or '[IPv6]:PORT' -> (host, port); loopback only unless allowed.

    HOST must be an IP address or `localhost` (a name could resolve anywhere). Port 0 asks
    the OS for a free port (the node prints the one it got).
    """
    if not isinstance(text, str) or not text or len(text) > 300:
        raise MetricsError(f"metrics listen address must look like {DEFAULT_LISTEN}, got {text!r}")
    if text.startswith("["):
        host, sep, port_s = text[1:].partition("]:")
    else:
        host, sep, port_s = text.rpartition(":")
        if ":" in host:
            raise MetricsError(f"write IPv6 addresses in brackets, e.g. [::1]:9464 (got {text!r})")
    if not sep or not host or not port_s.isdigit() or len(port_s) > 5 or int(port_s) > 65535:
        raise MetricsError(f"metrics listen address must look like {DEFAULT_LISTEN}, got {text!r}")
    if host == "localhost":
        host = "127.0.0.1"
    try:
        addr = ipaddress.ip_address(host)
    except ValueError:
        raise MetricsError(f"metrics listen host must be an IP address, got {host!r}") from None
    if not addr.is_loopback and not allow_non_loopback:
        raise MetricsError(
            f"refusing to serve metrics on {host}: not a loopback address (metrics describe "
            "this node's peers and traffic; set metrics.allow_non_loopback = true or pass "
            "--metrics-allow-non-loopback to expose them beyond this machine)"
        )
    return str(addr), int(port_s)
