"""Every Redis key and queue name the relay uses, in one place.

Each destination (User.com, UserKit, ...) has its own set: queues, ledger, dead-letter queue,
rate limiter, per-user leases, parked updates and last-writer-wins times, so that a slow or
failing destination never holds up another. User.com's keys keep the names they had before
destinations existed, so upgrading needs no migration; another destination's keys carry its
name (`relay:userkit:ledger`, queue `relay-delivery-userkit`). Shared by all: dedup memory and
the customer -> user identities learned from events.
"""

from __future__ import annotations

from dataclasses import dataclass

PREFIX = "relay"
RQ_QUEUES_SET = "rq:queues"
RQ_JOB_KEY_PREFIX = "rq:job:"

# Lanes: live traffic, replays from the dead-letter queue, and events read back from the provider
# (`relay backfill|sync|reconcile`), each its own rq queue and worker so that a bulk replay or
# backfill never holds up live updates. A lane's updates are counted pending on the live lane.
LIVE = "live"
REPLAY = "replay"
BACKFILL = "backfill"
LANE_QUEUES = {LIVE: "relay-delivery", REPLAY: "relay-replay", BACKFILL: "relay-backfill"}
LANES = tuple(LANE_QUEUES)
# User.com came first: its keys carry no destination name (relay:ledger, queue relay-delivery).
UNPREFIXED_DESTINATION = "usercom"


def dedup(source: str, event_id: str) -> str:
    """Set when an event is first accepted; lives RELAY_DEDUP_TTL_SECONDS."""
    return f"{PREFIX}:dedup:{source}:{event_id}"


def customer_map(source: str) -> str:
    """hash: the source's customer id -> user id learned from events carrying both."""
    return f"{PREFIX}:customers:{source}"


def usercom_id(user_id: str) -> str:
    """string: User.com's own id for our user id, learned from its answers (service/destinations/usercom)."""
    return f"{PREFIX}:usercom-id:{user_id}"


def reconcile_last(source: str) -> str:
    """string: JSON of the last reconcile run for the source (service/backfill/reconcile.py)."""
    return f"{PREFIX}:reconcile:last:{source}"


def reconcile_lock(source: str) -> str:
    """string: held by the one `relay worker` running the periodic reconcile for the source."""
    return f"{PREFIX}:reconcile:lock:{source}"


def sync_checkpoint(source: str) -> str:
    """hash: where an interrupted `relay sync` continues (service/backfill/sync.py)."""
    return f"{PREFIX}:sync:checkpoint:{source}"


def pending_member(source: str, event_id: str) -> str:
    return f"{source}:{event_id}"


@dataclass(frozen=True)
class Keys:
    """The keys of one destination."""

    destination: str

    @property
    def prefix(self) -> str:
        return PREFIX if self.destination == UNPREFIXED_DESTINATION else f"{PREFIX}:{self.destination}"

    def queue_name(self, lane: str) -> str:
        base = LANE_QUEUES[lane]
        return base if self.destination == UNPREFIXED_DESTINATION else f"{base}-{self.destination}"

    def rq_queue_key(self, lane: str) -> str:
        return f"rq:queue:{self.queue_name(lane)}"

    @property
    def ledger(self) -> str:
        """hash: received / ignored / delivered / dead_lettered / coalesced / duplicates / replayed"""
        return f"{self.prefix}:ledger"

    @property
    def last_delivery(self) -> str:
        """string: epoch seconds of the last successful delivery"""
        return f"{self.prefix}:last-delivery"

    @property
    def last_429(self) -> str:
        """string: epoch seconds of the last 429 from the destination"""
        return f"{self.prefix}:limiter:last-429"

    # The rate limiter (workers/ratelimit.py): GCRA theoretical arrival time (ms), the end of a
    # 429 pause (ms), and calls in flight (zset token -> lease end).
    @property
    def limiter_tat(self) -> str:
        return f"{self.prefix}:limiter:tat"

    @property
    def limiter_paused_until(self) -> str:
        return f"{self.prefix}:limiter:paused-until"

    @property
    def limiter_in_flight(self) -> str:
        return f"{self.prefix}:limiter:in-flight"

    # The limiter's sliding window (list of booked slot times, newest first) and its effective
    # rate (hash base / at / hold_until: AIMD, lowered by each 429), service/store/limiter_scripts.py.
    @property
    def limiter_window(self) -> str:
        return f"{self.prefix}:limiter:window"

    @property
    def limiter_rate(self) -> str:
        return f"{self.prefix}:limiter:rate"

    @property
    def dlq(self) -> list[str]:
        """hash: id -> JSON item; zset: id by time of failure; hash: reason -> count; string: dropped"""
        return [f"{self.prefix}:dlq:{name}" for name in ("items", "index", "reasons", "dropped")]

    def pending(self, lane: str) -> str:
        """zset: "<source>:<event id>" by time accepted (or replayed), until its outcome is counted."""
        return f"{self.prefix}:pending:{lane}"

    def outcome(self, source: str, event_id: str) -> str:
        """Set once an event's final outcome is counted, so a re-run job never counts twice."""
        return f"{self.prefix}:outcome:{source}:{event_id}"

    def user_lock(self, source: str, user_id: str) -> str:
        """One delivery per user at a time, so the destination sees a user's updates in order."""
        return f"{self.prefix}:lock:{source}:{user_id}"

    def parked(self, source: str, hint: str) -> str:
        """hash: event id -> update JSON, updates waiting for one merged delivery (UserUpdate.hint)."""
        return f"{self.prefix}:parked:{source}:{hint}"

    def last_written(self, source: str, user_id: str) -> str:
        """hash: attribute -> event time of the value last sent (last-writer-wins by event time)."""
        return f"{self.prefix}:lww:{source}:{user_id}"

    def trace(self, user_id: str) -> str:
        """list: the user's latest deliveries and dead letters here, newest first (service/store/trace.py)."""
        return f"{PREFIX}:trace:{self.destination}:{user_id}"


USERCOM = Keys(UNPREFIXED_DESTINATION)
