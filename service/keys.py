"""Every Redis key and queue name the relay uses, in one place."""

from __future__ import annotations

PREFIX = "relay"
RQ_QUEUES_SET = "rq:queues"
RQ_JOB_KEY_PREFIX = "rq:job:"

# Lanes: live traffic, and replays from the dead-letter queue, each its own rq queue and
# worker so that a bulk replay never holds up live updates.
LIVE = "live"
REPLAY = "replay"
LANES = (LIVE, REPLAY)
QUEUE_NAMES = {LIVE: "relay-delivery", REPLAY: "relay-replay"}
DELIVERY_QUEUE = QUEUE_NAMES[LIVE]
RQ_QUEUE_KEY = f"rq:queue:{DELIVERY_QUEUE}"


def rq_queue_key(lane: str) -> str:
    return f"rq:queue:{QUEUE_NAMES[lane]}"


# hash: received / ignored / delivered / dead_lettered / coalesced / duplicates / replayed
LEDGER = f"{PREFIX}:ledger"
# strings: epoch seconds of the last successful delivery, and of the last 429 from User.com
LAST_DELIVERY = f"{PREFIX}:last-delivery"
LAST_429 = f"{PREFIX}:limiter:last-429"
# The User.com rate limiter (workers/ratelimit.py), shared by every worker: GCRA theoretical
# arrival time (ms), the end of a 429 pause (ms), and calls in flight (zset token -> lease end).
LIMITER_TAT = f"{PREFIX}:limiter:tat"
LIMITER_PAUSED_UNTIL = f"{PREFIX}:limiter:paused-until"
LIMITER_IN_FLIGHT = f"{PREFIX}:limiter:in-flight"
# hash: id -> JSON item; zset: id by time of failure; hash: reason -> count; string: dropped count
DLQ_ITEMS = f"{PREFIX}:dlq:items"
DLQ_INDEX = f"{PREFIX}:dlq:index"
DLQ_REASONS = f"{PREFIX}:dlq:reasons"
DLQ_DROPPED = f"{PREFIX}:dlq:dropped"


def pending(lane: str) -> str:
    """zset: "<source>:<event id>" by time accepted (or replayed), until its outcome is counted."""
    return f"{PREFIX}:pending:{lane}"


def pending_member(source: str, event_id: str) -> str:
    return f"{source}:{event_id}"


def dedup(source: str, event_id: str) -> str:
    """Set when an event is first accepted; lives RELAY_DEDUP_TTL_SECONDS."""
    return f"{PREFIX}:dedup:{source}:{event_id}"


def outcome(source: str, event_id: str) -> str:
    """Set once an event's final outcome is counted, so a re-run job never counts twice."""
    return f"{PREFIX}:outcome:{source}:{event_id}"


def customer_map(source: str) -> str:
    """hash: the source's customer id -> user id learned from events carrying both."""
    return f"{PREFIX}:customers:{source}"


def user_lock(source: str, user_id: str) -> str:
    """One delivery per user at a time, so User.com sees a user's updates in the order claimed."""
    return f"{PREFIX}:lock:{source}:{user_id}"


def parked(source: str, hint: str) -> str:
    """hash: event id -> update JSON, updates waiting for one merged delivery (UserUpdate.hint)."""
    return f"{PREFIX}:parked:{source}:{hint}"


def last_written(source: str, user_id: str) -> str:
    """hash: attribute -> event time of the value last sent (last-writer-wins by event time)."""
    return f"{PREFIX}:lww:{source}:{user_id}"
