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


def test_xdist_workers_take_shares_no_two_of_them_hold(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PYTEST_XDIST_WORKER_COUNT", "2")
    shares = []
    for worker in ("gw0", "gw1"):
        monkeypatch.setenv("PYTEST_XDIST_WORKER", worker)
        shares.append(set(ports._share(range(20_000, 20_010))))
    assert shares[0] and shares[1] and not shares[0] & shares[1]
    assert shares[0] | shares[1] == set(range(20_000, 20_010))
