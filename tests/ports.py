"""Ports for the servers a test starts, or names as a place nothing listens.

A port the system hands out for `bind(0)` (service.devtools.embedded_redis.free_port) comes from its
ephemeral range, which every outgoing connection draws from too: between finding such a port and a
child process binding it, any connection on the machine (another test's client, say) could take it.
These ports are found below that range, where only explicit binds go; each process walks them from a
random start, so two test processes (xdist workers, or two runs at once) do not hand out the same ones."""

from __future__ import annotations

import itertools
import random
import socket
from pathlib import Path

LOWEST = 20_000


def _ephemeral_low() -> int:
    try:
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32_768  # Linux's default


_RANGE = range(LOWEST, max(LOWEST + 1_000, _ephemeral_low()))
_START = random.randrange(len(_RANGE))
_WALK = itertools.cycle([*_RANGE[_START:], *_RANGE[:_START]])


def unused_port() -> int:
    """A loopback port that nothing listens on now, and that no other caller of this function is
    handed before this one has been handed the rest of the range."""
    for port in itertools.islice(_WALK, len(_RANGE)):
        with socket.socket() as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise RuntimeError(f"no free port between {_RANGE.start} and {_RANGE.stop - 1}")
