"""tests/ports.py: the ports the suite gives its own servers."""

from __future__ import annotations

import socket

import pytest

from tests import ports


def test_ports_are_below_the_ephemeral_range_bindable_and_not_handed_out_twice() -> None:
    handed = [ports.unused_port() for _ in range(50)]
    assert len(set(handed)) == len(handed)
    low = ports._ephemeral_low()
    assert all(ports.LOWEST <= port < low for port in handed)
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", handed[-1]))


def test_a_port_something_listens_on_is_skipped(monkeypatch: pytest.MonkeyPatch) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        taken = busy.getsockname()[1]
        free = ports.unused_port()
        monkeypatch.setattr(ports, "_WALK", iter([taken, free]))
        monkeypatch.setattr(ports, "_RANGE", range(2))
        assert ports.unused_port() == free
