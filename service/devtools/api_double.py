"""What every provider API double keeps (Stripe's, Paddle's, Lemon Squeezy's): the key it accepts, the
requests it was sent, and the faults queued for the next ones (`fail_next`)."""

from __future__ import annotations

import collections
import threading
from dataclasses import dataclass, field
from typing import Any

from flask import request


@dataclass
class ApiDoubleState:
    api_key: str
    requests: list[dict[str, Any]] = field(default_factory=list)
    faults: collections.deque[tuple[int, str | None]] = field(default_factory=collections.deque)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def fail_next(self, status: int, retry_after: str | None = None, times: int = 1) -> None:
        with self.lock:
            self.faults.extend([(status, retry_after)] * times)

    def calls(self, path: str) -> int:
        with self.lock:
            return sum(1 for r in self.requests if r["path"] == path)

    def record(self) -> None:
        """Keep the request being answered (its path and query)."""
        with self.lock:
            self.requests.append({"path": request.path, "args": request.args.to_dict(flat=False)})

    def next_fault(self) -> tuple[int, str | None] | None:
        """The fault the request being answered takes (status, Retry-After), if one is queued."""
        with self.lock:
            return self.faults.popleft() if self.faults else None
