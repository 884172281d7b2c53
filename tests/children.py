"""Every process the suite starts dies with the pytest process that started it.

A run killed (`kill -9`, an xdist worker gone with its controller) or interrupted gives the fixtures no
chance to stop what they started: redis-servers, `relay web` (gunicorn) and `relay worker` supervisors,
`relay dev` would run on, re-parented to PID 1, holding their ports. `install()` (tests/conftest.py, at
import: in xdist's controller, whose children its workers are, and in every worker) makes every
subprocess.Popen of the pytest process ask the kernel for a SIGTERM when that process dies
(`PR_SET_PDEATHSIG`, service/ops/parent_death.py), as `relay dev` does for its own children. SIGTERM:
each stops as it does in a pod, a relay removing the temporary metrics directory it made; their own
children go with them (gunicorn's workers, the supervisor's forks: workers.lifeline).

The kernel sends it when the *thread* that forked the child ends: a child started from any other thread
than the main one is forked from one kept for the purpose, that lives as long as the process.

The children are also given a TMPDIR of the run's (pytest's base temporary directory, removed with
pytest's old runs) unless their environment names one: the temporary metrics directory of a relay
SIGKILLed on purpose is not left in /tmp.
"""

from __future__ import annotations

import os
import queue
import subprocess
import threading
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from service.ops.parent_death import dies_with_this_process

_children_tmpdir: Path | None = None


def use_tmpdir(directory: Path | None) -> None:
    """The TMPDIR of the children started from now on (None: the environment's)."""
    global _children_tmpdir  # one per process, set once the session has its temporary directory
    _children_tmpdir = directory


def _with_tmpdir(env: Mapping[str, str] | None) -> Mapping[str, str] | None:
    if _children_tmpdir is None or (env is not None and "TMPDIR" in env):
        return env
    return {**(os.environ if env is None else env), "TMPDIR": str(_children_tmpdir)}


def _dying_with_this_process(preexec_fn: Callable[[], object] | None) -> Callable[[], None]:
    """The child's preexec_fn: PR_SET_PDEATHSIG first, then the caller's own if it gave one."""
    die = dies_with_this_process()
    if preexec_fn is None:
        return die

    def both() -> None:
        die()
        preexec_fn()

    return both


class _Forker:
    """A thread that starts the children of the other threads, and ends only with the process."""

    def __init__(self) -> None:
        self._requests: queue.SimpleQueue[Callable[[], None]] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    def run(self, start: Callable[[], None]) -> None:
        """Run `start` on the forking thread; its exception, if any, is raised here."""
        with self._lock:
            if self._thread is None:
                self._thread = threading.Thread(target=self._serve, name="suite-forker", daemon=True)
                self._thread.start()
        done = threading.Event()
        failure: list[BaseException] = []

        def request() -> None:
            try:
                start()
            except BaseException as exc:  # raised in the thread that asked
                failure.append(exc)
            finally:
                done.set()

        self._requests.put(request)
        done.wait()
        if failure:
            raise failure[0]

    def _serve(self) -> None:
        while True:
            self._requests.get()()


_FORKER = _Forker()


class DiesWithThisProcess(subprocess.Popen[Any]):
    """subprocess.Popen whose child is sent SIGTERM when this process dies (whichever thread started it)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs["preexec_fn"] = _dying_with_this_process(kwargs.get("preexec_fn"))
        kwargs["env"] = _with_tmpdir(kwargs.get("env"))
        if threading.current_thread() is threading.main_thread():
            super().__init__(*args, **kwargs)
        else:
            _FORKER.run(lambda: super(DiesWithThisProcess, self).__init__(*args, **kwargs))


def install() -> None:
    """From now on every subprocess.Popen (subprocess.run and asyncio's included) of this process
    starts a child that dies with it."""
    subprocess.Popen = DiesWithThisProcess  # type: ignore[misc]
