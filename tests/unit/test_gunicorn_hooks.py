"""gunicorn's hooks in the web worker process."""

from __future__ import annotations

import logging
import os
import signal
import types

import pytest

from service.cli import gunicorn_hooks


def test_a_sigterm_before_the_worker_has_booted_still_stops_it(monkeypatch: pytest.MonkeyPatch) -> None:
    """Between fork and gunicorn's own handler a SIGTERM was lost and the worker served 30 s more."""
    monkeypatch.setenv("REDIS_URL", "redis://127.0.0.1:1/0")
    monkeypatch.setenv("STRIPE_WEBHOOK_SECRETS", "whsec_hooks_test")
    previous = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGINT)}
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level  # post_fork configures logging: put it back after
    worker = types.SimpleNamespace(alive=True)
    try:
        gunicorn_hooks.post_fork(server=None, worker=worker)
        os.kill(os.getpid(), signal.SIGTERM)
        assert worker.alive is False
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
        root.handlers[:], root.level = handlers, level
