"""A running job's heartbeat, sent from a thread.

rq's SimpleWorker runs the job in its own thread and sends no heartbeat until it ends, so the job's
entry in the started registry had to outlive the job's whole timeout (60 s) before maintenance could
tell a dead worker's job from a slow one. Here a thread renews the entry (and the worker's own key)
every HEARTBEAT_INTERVAL_SECONDS while the job runs, with a short time to live: a job whose worker
was SIGKILLed is found abandoned within HEARTBEAT_TTL_SECONDS plus one maintenance interval, and
rq runs it again (workers/runner.py).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from redis.exceptions import RedisError

HEARTBEAT_INTERVAL_SECONDS = 1.5
# A job whose heartbeat stopped this long ago is abandoned. Several missed beats, so a busy
# process (or a slow Redis) is not taken for a dead one; the user's lease (workers/ordering.py)
# lapses no later, so the re-run finds the user free.
HEARTBEAT_TTL_SECONDS = 6

log = logging.getLogger(__name__)


@contextmanager
def heartbeat_while_running(worker: Any, job: Any, execution: Any) -> Iterator[None]:
    """Renew the job's heartbeat (rq's own `maintain_heartbeats`) until the block ends."""
    stop = threading.Event()

    def beat() -> None:
        while not stop.wait(HEARTBEAT_INTERVAL_SECONDS):
            try:
                worker.maintain_heartbeats(job, execution)
            except RedisError as exc:  # the next beat tries again; a lapse only means a re-run
                log.warning("heartbeat of job %s failed: %s", job.id, type(exc).__name__)

    thread = threading.Thread(target=beat, name="job-heartbeat", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join(timeout=HEARTBEAT_INTERVAL_SECONDS * 2)
