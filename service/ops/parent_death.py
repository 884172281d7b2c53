"""Processes that die with their parent (Linux `PR_SET_PDEATHSIG`): a `kill -9` of the parent gives
it no chance to stop them, and they would run on, re-parented to PID 1, holding their ports."""

from __future__ import annotations

import ctypes
import os
import signal
import sys
from collections.abc import Callable
from typing import Any

PR_SET_PDEATHSIG = 1


def _prctl() -> Any:
    return ctypes.CDLL(None, use_errno=True).prctl if sys.platform.startswith("linux") else None


def die_with_parent(expected_parent: int, signum: int = signal.SIGTERM, prctl: Any = None) -> None:
    """Have the kernel send `signum` to this process when its parent dies; exit now if it already has.

    `expected_parent` closes the race between the fork and this call: a parent that died in between
    has re-parented this process already."""
    prctl = prctl or _prctl()
    if prctl is not None and prctl(PR_SET_PDEATHSIG, int(signum), 0, 0, 0) != 0:  # pragma: no cover - EINVAL only
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_PDEATHSIG) failed")
    if os.getppid() != expected_parent:
        os._exit(1)


def dies_with_this_process(signum: int = signal.SIGTERM) -> Callable[[], None]:
    """A `preexec_fn` for subprocess.Popen: the child is sent `signum` when this process dies (when the
    thread starting it ends, in fact: start children from the main thread). prctl is looked up here,
    not between fork and exec."""
    prctl, parent = _prctl(), os.getpid()
    return lambda: die_with_parent(parent, signum, prctl)
