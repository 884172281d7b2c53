"""Log lines: readable on a terminal, JSON otherwise, never rq's colour codes, secrets redacted."""

from __future__ import annotations

import io
import json
import logging
import os
import pty
import sys
from collections.abc import Iterator

import pytest
from rq.logutils import colorizer, setup_loghandlers

from service.ops.logs import JsonFormatter, TextFormatter, configure_logging

SECRET = "whsec_log_format_secret"
GREEN, RESET = colorizer.codes["darkgreen"], colorizer.codes["reset"]


@pytest.fixture(autouse=True)
def restore_logging() -> Iterator[None]:
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    rq_handlers = logging.getLogger("rq.worker").handlers[:]
    yield
    root.handlers[:], root.level = handlers, level
    logging.getLogger("rq.worker").handlers[:] = rq_handlers


def log_rq_line() -> None:
    """What rq's worker logs when its stdout is a terminal: the queue name coloured."""
    logging.getLogger("rq.worker").info("*** Listening on %s...", f"{GREEN}relay:usercom:live{RESET}")


def test_not_a_terminal_gives_json_without_colour_codes() -> None:
    stream = io.StringIO()
    configure_logging("INFO", [SECRET], stream=stream)
    setup_loghandlers("INFO", name="rq.worker")  # as rq's Worker.work() does: it must add no handler
    assert logging.getLogger("rq.worker").handlers == []
    log_rq_line()
    logging.getLogger("relay.delivery").info("secret %s", SECRET, extra={"event_id": "evt_1", "user_id": "u1"})
    first, second = (json.loads(line) for line in stream.getvalue().splitlines())
    assert first["msg"] == "*** Listening on relay:usercom:live..." and first["logger"] == "rq.worker"
    assert first["ts"].endswith("Z") and len(first["ts"]) == len("2026-11-29T20:10:00.123Z")
    assert "\x1b" not in stream.getvalue() and "\\u001b" not in stream.getvalue()
    assert (second["msg"], second["event_id"], second["user_id"]) == ("secret [redacted]", "evt_1", "u1")


def test_a_terminal_gets_one_readable_line_per_event() -> None:
    leader, follower = pty.openpty()
    try:
        with open(follower, "w", closefd=False) as terminal:
            configure_logging("INFO", [SECRET], stream=terminal)
            assert isinstance(logging.getLogger().handlers[0].formatter, TextFormatter)
            log_rq_line()
            logging.getLogger("relay.delivery").warning(
                "delivered with %s\nsecond line", SECRET, extra={"event_id": "evt_1", "lane": "live"}
            )
            terminal.flush()
        text = ""
        while text.count("\n") < 2:  # a pty may hand the lines over in pieces
            text += os.read(leader, 65536).decode()
    finally:
        os.close(leader)
        os.close(follower)
    first, second = text.splitlines()
    assert first.endswith(" INFO  rq.worker  *** Listening on relay:usercom:live...")
    assert second.endswith(" WARNING relay.delivery  delivered with [redacted] second line  event_id=evt_1 lane=live")
    assert first[2] == ":" and first[12] == " " and "\x1b" not in text and "{" not in text


def test_formatters_strip_escapes_and_keep_tracebacks() -> None:
    try:
        raise ValueError(SECRET)
    except ValueError:
        record = logging.LogRecord("x", logging.ERROR, __file__, 1, f"{GREEN}boom{RESET}", None, sys.exc_info())
    text = TextFormatter([SECRET]).format(record)
    assert text.splitlines()[0].endswith("ERROR x  boom") and "ValueError: [redacted]" in text
    entry = json.loads(JsonFormatter([SECRET]).format(record))
    assert entry["msg"] == "boom" and "ValueError: [redacted]" in entry["exc"]
