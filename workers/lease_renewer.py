"""The users' leases a worker process holds (workers/ordering.py), renewed by one daemon thread with
one script call every `interval` seconds, whatever their number: starting a thread per delivery cost
more than the delivery's own Redis calls.

A lease is renewed only while it is still ours (the script compares tokens); one found lost is
dropped from the registry. A renewal that fails (a Redis blip) is tried again at the next tick, as
the lease itself outlives several ticks. The thread is started on first use, and again in a process
forked from one that had it (threads do not survive a fork).

The registry also knows when each lease was last known to run its whole length (taken or renewed:
the time before that round trip). A delivery makes no call on a lease not known to run for a while
yet (`fresh`): after a pause of its process (SIGSTOP, a frozen VM) or renewals failing, another job
may have taken the user and sent newer values, which a late call would overwrite.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable
from typing import Any

from redis.exceptions import RedisError

log = logging.getLogger(__name__)
# A lease last known to run its length longer ago than this part of it may lapse before a call made now
# ends its way out (renewals come every third: two in a row have failed, or the process was paused).
FRESH_PART = 2 / 3


class LeaseRenewer:
    def __init__(self, renew_script: Any, *, lease_ms: int, clock: Callable[[], float] = time.monotonic) -> None:
        self._script = renew_script  # RENEW_SCRIPT, registered (service/store/ordering_scripts.py)
        self.lease_ms = lease_ms
        self.interval = lease_ms / 3000
        self.clock = clock
        self._held: dict[str, str] = {}  # lock key -> token
        self._since: dict[str, float] = {}  # lock key -> when (clock) its lease was last known to run lease_ms on
        self._mutex = threading.Lock()
        self._wake = threading.Event()
        self._pid: int | None = None  # the process whose thread runs

    def add(self, lock: str, token: str, since: float) -> None:
        """Renew the lease from now on; `since`: the clock before the round trip that took it."""
        with self._mutex:
            self._held[lock] = token
            self._since[lock] = since
            if self._pid != os.getpid():
                self._pid = os.getpid()
                threading.Thread(target=self._run, name="lease-renewer", daemon=True).start()

    def remove(self, lock: str, token: str) -> None:
        with self._mutex:
            if self._held.get(lock) == token:
                del self._held[lock]
                del self._since[lock]

    def fresh(self, lock: str, token: str) -> bool:
        """Whether the lease is ours and surely runs a while yet (FRESH_PART): a call may be made on it."""
        with self._mutex:
            if self._held.get(lock) != token:
                return False
            return self.clock() - self._since[lock] < self.lease_ms / 1000 * FRESH_PART

    def held(self) -> dict[str, str]:
        with self._mutex:
            return dict(self._held)

    def renew_now(self) -> None:
        """Renew every lease held once (the thread's tick)."""
        held = self.held()
        if not held:
            return
        locks = list(held)
        started = self.clock()
        try:
            answers = self._script(keys=locks, args=[self.lease_ms, *(held[lock] for lock in locks)])
        except RedisError as exc:  # the next tick tries again: the leases outlive several ticks
            log.warning("renewing %d user leases failed: %s", len(locks), type(exc).__name__)
            return
        for lock, extended in zip(locks, answers, strict=True):
            if not extended:
                self.remove(lock, held[lock])
                continue
            with self._mutex:
                if self._held.get(lock) == held[lock]:
                    self._since[lock] = started

    def _run(self) -> None:
        pid = os.getpid()
        while not self._wake.wait(self.interval):
            if self._pid != pid:  # pragma: no cover - a fork's copy of a thread never runs
                return
            self.renew_now()
