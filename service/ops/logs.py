"""Log lines with event and user ids as fields, and secrets redacted: one JSON object per line, or,
when stderr is a terminal (`relay dev`), one readable line per event.

rq colours parts of its worker messages (queue names, job ids) when stdout is a terminal; the
escape codes are removed from every line, so JSON never carries them."""

from __future__ import annotations

import json
import logging
import re
import sys
import threading
import time
from collections.abc import Callable, Hashable, Iterable
from datetime import UTC, datetime
from typing import TextIO

from service.core.redaction import JsonRedactor, Redactor
from service.core.times import iso

# `extra=` keys that become fields of the line.
FIELDS = ("source", "event_id", "event_type", "user_id", "lane", "attempt", "outcome", "reason", "status")
ANSI_ESCAPE = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")


class JsonFormatter(logging.Formatter):
    def __init__(self, secrets: Iterable[str] = ()) -> None:
        super().__init__()
        secrets = list(secrets)
        self.redact = Redactor(secrets)
        self.redact_json = JsonRedactor(secrets)

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, object] = {
            "ts": iso(record.created),  # 2026-11-29T20:10:00.123Z
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": self.message(record),
        }
        entry.update({name: getattr(record, name) for name in FIELDS if hasattr(record, name)})
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        return self.redact_json(json.dumps(entry, default=str))

    def message(self, record: logging.LogRecord) -> str:
        return ANSI_ESCAPE.sub("", record.getMessage())


class RedactSecrets(logging.Filter):
    """Secrets out of the records of a logger whose lines the app does not format: gunicorn's own, which
    quote what a client sent (a header line without a colon, `Authorization Bearer <token>`, whole)."""

    def __init__(self, secrets: Iterable[str]) -> None:
        super().__init__()
        self.redact = Redactor(secrets)

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        redacted = self.redact(message)
        if redacted != message:
            record.msg, record.args = redacted, None
        return True


class TextFormatter(JsonFormatter):
    """`20:10:00.123 INFO  relay.delivery  delivered evt_1  event_id=evt_1 user_id=u1` (UTC)."""

    def format(self, record: logging.LogRecord) -> str:
        when = datetime.fromtimestamp(record.created, UTC).strftime("%H:%M:%S.%f")[:-3]
        message = " ".join(self.message(record).split("\n"))
        fields = " ".join(f"{name}={getattr(record, name)}" for name in FIELDS if hasattr(record, name))
        line = f"{when} {record.levelname:<5} {record.name}  {message}" + (f"  {fields}" if fields else "")
        if record.exc_info:
            line += "\n" + self.formatException(record.exc_info)
        return self.redact(ANSI_ESCAPE.sub("", line))


def is_terminal(stream: TextIO) -> bool:
    isatty = getattr(stream, "isatty", None)
    return bool(isatty and isatty())


def configure_logging(level: str, secrets: Iterable[str] = (), stream: TextIO | None = None) -> None:
    """Every log record goes through one handler on the root logger (so rq adds no colouring
    handler of its own): readable lines on a terminal, JSON otherwise."""
    stream = sys.stderr if stream is None else stream
    handler = logging.StreamHandler(stream)
    handler.setFormatter(TextFormatter(secrets) if is_terminal(stream) else JsonFormatter(secrets))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)


class EverySeconds:
    """Lets one line of a kind through every `seconds` (a public endpoint's refusals must not flood the
    logs), counting the ones held back meanwhile."""

    def __init__(self, seconds: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.seconds = seconds
        self.clock = clock
        self._last: dict[Hashable, tuple[float, int]] = {}  # kind -> (when let through, held back since)
        self._lock = threading.Lock()

    def take(self, kind: Hashable) -> int | None:
        """None: hold this one back; else how many of its kind were held back since the last one."""
        now = self.clock()
        with self._lock:
            last = self._last.get(kind)
            if last is not None and now - last[0] < self.seconds:
                self._last[kind] = (last[0], last[1] + 1)
                return None
            self._last[kind] = (now, 0)
            return last[1] if last is not None else 0
