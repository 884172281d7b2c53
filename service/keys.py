"""Every Redis key and queue name the relay uses, in one place."""

from __future__ import annotations

PREFIX = "relay"
# RQ queue that carries delivery jobs; rq's own keys live under "rq:".
DELIVERY_QUEUE = "relay-delivery"
RQ_QUEUE_KEY = f"rq:queue:{DELIVERY_QUEUE}"
RQ_QUEUES_SET = "rq:queues"
RQ_JOB_KEY_PREFIX = "rq:job:"

# hash: received / ignored / delivered / dead_lettered / coalesced / duplicates
LEDGER = f"{PREFIX}:ledger"
# hash: dead-letter id -> JSON item; zset: dead-letter id by time of failure
DLQ_ITEMS = f"{PREFIX}:dlq:items"
DLQ_INDEX = f"{PREFIX}:dlq:index"


def dedup(source: str, event_id: str) -> str:
    """Set when an event is first accepted; lives RELAY_DEDUP_TTL_SECONDS."""
    return f"{PREFIX}:dedup:{source}:{event_id}"


def outcome(source: str, event_id: str) -> str:
    """Set once an event's final outcome is counted, so a re-run job never counts twice."""
    return f"{PREFIX}:outcome:{source}:{event_id}"


def customer_map(source: str) -> str:
    """hash: the source's customer id -> user id learned from events carrying both."""
    return f"{PREFIX}:customers:{source}"
