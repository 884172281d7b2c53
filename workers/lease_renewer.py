"""The users' leases a worker process holds (workers/ordering.py), renewed by one daemon thread with
one script call every `interval` seconds, whatever their number: starting a thread per delivery cost
more than the delivery's own Redis calls.

A lease is renewed only while it is still ours (the script compares tokens); one found lost is
dropped from the registry. A renewal that fails (a Redis blip) is tried again at the next tick, as
the lease itself outlives several ticks. The thread is started on first use, and again in a process
forked from one that had it (threads do not survive a fork).
"""

from __future__ import annotations

import logging
import os
import threading
from typing import Any

from redis.exceptions import RedisError

log = logging.getLogger(__name__)


class LeaseRenewer:
    def __init__(self, renew_script: Any, *, lease_ms: int) -> None:
        self._script = renew_script  # RENEW_SCRIPT, registered (service/store/ordering_scripts.py)
        self.lease_ms = lease_ms
        self.interval = lease_ms / 3000
        self._held: dict[str, str] = {}  # lock key -> token
        self._mutex = threading.Lock()
        self._wake = threading.Event()
        self._pid: int | None = None  # the process whose thread runs

    def add(self, lock: str, token: str) -> None:
        with self._mutex:
            self._held[lock] = token
            if self._pid != os.getpid():
                self._pid = os.getpid()
                threading.Thread(target=self._run, name="lease-renewer", daemon=True).start()

    def remove(self, lock: str, token: str) -> None:
        with self._mutex:
            if self._held.get(lock) == token:
                del self._held[lock]

    def held(self) -> dict[str, str]:
        with self._mutex:
            return dict(self._held)

    def renew_now(self) -> None:
        """Renew every lease held once (the thread's tick)."""
        held = self.held()
        if not held:
            return
        locks = list(held)
        try:
            answers = self._script(keys=locks, args=[self.lease_ms, *(held[lock] for lock in locks)])
        except RedisError as exc:  # the next tick tries again: the leases outlive several ticks
            log.warning("renewing %d user leases failed: %s", len(locks), type(exc).__name__)
            return
        for lock, extended in zip(locks, answers, strict=True):
            if not extended:
                self.remove(lock, held[lock])

    def _run(self) -> None:
        pid = os.getpid()
        while not self._wake.wait(self.interval):
            if self._pid != pid:  # pragma: no cover - a fork's copy of a thread never runs
                return
            self.renew_now()
