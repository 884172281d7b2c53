"""Ports for the servers a test starts, or names as a place nothing listens.

A port the system hands out for `bind(0)` (service.devtools.embedded_redis.free_port) comes from its
ephemeral range, which every outgoing connection draws from too: between finding such a port and a
child process binding it, any connection on the machine (another test's client, say) could take it.
These ports are found below that range, where only explicit binds go. Each xdist worker walks its own
share of them (every n-th port), so two workers of a run never hand out the same one; it starts at a
random place in its share, so two runs at once seldom do (and a port in use is skipped)."""

from __future__ import annotations

import itertools
import os
import random
import socket
from pathlib import Path

LOWEST = 20_000


def _ephemeral_low() -> int:
    try:
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32_768  # Linux's default


def _share(ports: range) -> range:
    """This xdist worker's share: worker k of n (PYTEST_XDIST_WORKER gw<k>) takes every n-th port from k."""
    worker = os.environ.get("PYTEST_XDIST_WORKER", "gw0").removeprefix("gw")
    count = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
    return ports[int(worker) % count :: count] if worker.isdigit() and count > 0 else ports


_RANGE = _share(range(LOWEST, max(LOWEST + 1_000, _ephemeral_low())))
_START = random.randrange(len(_RANGE))
_WALK = itertools.cycle([*_RANGE[_START:], *_RANGE[:_START]])


def unused_port() -> int:
    """A loopback port that nothing listens on now, and that no other caller in this run is handed
    (in this process, not before the rest of its share has been)."""
    for port in itertools.islice(_WALK, len(_RANGE)):
        with socket.socket() as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise RuntimeError(f"no free port between {_RANGE.start} and {_RANGE.stop - 1}")
