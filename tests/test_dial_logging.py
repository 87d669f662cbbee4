"""A refused dial (a peer not listening yet) is not logged at ERROR; other errors still are."""

from __future__ import annotations

import logging
import socket

import multiaddr
import pytest
import trio
from libp2p.transport.exceptions import OpenConnectionError
from libp2p.transport.tcp.tcp import TCP

from dsonode.net.host import quiet_refused_dials


def _closed_port() -> int:
    with socket.socket() as s:  # bound, never listening: a dial to it is refused
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _dial_refused(port: int) -> None:
    async def dial() -> None:
        await TCP().dial(multiaddr.Multiaddr(f"/ip4/127.0.0.1/tcp/{port}"))

    with pytest.raises(OpenConnectionError):  # the caller still gets the failure
        trio.run(dial)


def test_a_refused_dial_logs_no_error_once_quieted(caplog):
    caplog.set_level(logging.DEBUG, logger="libp2p.transport.tcp.tcp")
    logger = logging.getLogger("libp2p.transport.tcp.tcp")
    saved = list(logger.filters)
    try:
        for f in saved:  # libp2p as shipped (another test may have built a host already)
            logger.removeFilter(f)
        _dial_refused(_closed_port())
        shipped = [r for r in caplog.records if r.levelno >= logging.ERROR]
        assert shipped, "py-libp2p no longer logs a refused dial at ERROR: drop the filter"
        caplog.clear()
        quiet_refused_dials()
        quiet_refused_dials()  # idempotent
        assert len(logger.filters) == 1
        _dial_refused(_closed_port())
        assert [r for r in caplog.records if r.levelno >= logging.ERROR] == []
        logger.error("Failed to listen on %s", "x")  # any other error passes
        errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
        assert errors == ["Failed to listen on x"]
    finally:
        for f in list(logger.filters):
            logger.removeFilter(f)
        for f in saved:
            logger.addFilter(f)
