"""Worker processes die with their parent (Linux `PR_SET_PDEATHSIG`: service/ops/parent_death.py).

A `kill -9` of `relay worker` (or of one worker) gives its children no chance to clean up: without
this they run on, re-parented to PID 1, and a fork still holding the dead process's Redis socket keeps
that client alive on the server, so a blocking pop it had issued still moves a job into rq's
intermediate list, where nobody works it.
"""

from __future__ import annotations

import contextlib
import gc
import os
import signal
from collections.abc import Iterator

from redis import ConnectionPool

from service.ops.parent_death import die_with_parent

SUPERVISOR_PID_ENV = "RELAY_SUPERVISOR_PID"
STOP_SIGNALS = {signal.SIGTERM, signal.SIGINT}


def die_with_supervisor() -> None:
    """In a worker started by `relay worker`: stop (rq's warm shutdown) when the supervisor dies."""
    supervisor = os.environ.get(SUPERVISOR_PID_ENV)
    if supervisor and supervisor.isdigit():
        die_with_parent(int(supervisor))


def close_inherited() -> None:
    """In a forked child: close (never shut down) every Redis socket the parent had pooled, so each
    closes on the server when the parent's copy does; the child's clients open their own."""
    for pool in [o for o in gc.get_objects() if isinstance(o, ConnectionPool)]:
        for connection in [*getattr(pool, "_available_connections", ()), *getattr(pool, "_in_use_connections", ())]:
            connection.disconnect()  # in another pid redis-py only close()s: the parent's socket stays usable
        pool.reset()


@contextlib.contextmanager
def stop_signals_deferred() -> Iterator[None]:
    """Hold SIGTERM/SIGINT until the block ends (a fork made inside starts with them default, unblocked)."""
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)  # runs the handler of one that came meanwhile


def stop_signals_default() -> None:
    """In a forked child: SIGTERM and SIGINT do what they do by default (end it), whatever handler the
    parent had installed or held them with (stop_signals_deferred)."""
    for signum in STOP_SIGNALS:
        signal.signal(signum, signal.SIG_DFL)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, STOP_SIGNALS)


def forks_die_with_this_process() -> None:
    """In a worker: every process it forks from now on (rq's scheduler) dies with it and drops its sockets."""
    parent = os.getpid()

    def in_child() -> None:
        # No handler of the worker's (rq's warm shutdown) may run here: a stop for the child kills it.
        stop_signals_default()
        die_with_parent(parent)
        close_inherited()

    os.register_at_fork(after_in_child=in_child)
