"""Every Redis key and queue name the relay uses, in one place.

Each destination (User.com, UserKit, ...) has its own set: queues, ledger, dead-letter queue,
rate limiter, per-user leases, parked updates and last-writer-wins times, so that a slow or
failing destination never holds up another. User.com's keys keep the names they had before
destinations existed, so upgrading needs no migration; another destination's keys carry its
name (`relay:userkit:ledger`, queue `relay-delivery-userkit`). Shared by all: dedup memory and
the customer -> user identities learned from events.
"""

from __future__ import annotations

import base64
import hashlib
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
    """Before per-user pending state: set when an event was first accepted, for RELAY_DEDUP_TTL_SECONDS.
    Still consulted after an upgrade, until the last of them expires."""
    return f"{PREFIX}:dedup:{source}:{event_id}"


def dedup_bucket_prefix(source: str) -> str:
    """set: 8-byte digests of the event ids first accepted in one time bucket (service/store/ledger_dedup.py)."""
    return f"{PREFIX}:dedup:{source}:b"


def dedup_shard(source: str, bucket: int, shard: int) -> str:
    """set (an intset): 64-bit digests of the event ids first accepted in one time bucket whose digest falls
    in one of SHARDS_PER_BUCKET shards (service/store/ledger_dedup.py). DEDUP_LUA builds the same name."""
    return f"{dedup_bucket_prefix(source)}{bucket}:{shard:x}"


def dedup_shards_since(source: str) -> str:
    """string: the bucket of the first sharded dedup write; the per-bucket sets of 8-byte digests from before
    are checked only up to the bucket after it (service/store/ledger_dedup.py)."""
    return f"{PREFIX}:dedup:{source}:shards-since"


def customer_map(source: str) -> str:
    """hash: the source's customer id -> user id learned from events carrying both."""
    return f"{PREFIX}:customers:{source}"


def first_users(source: str, run: str) -> str:
    """hash: per customer not learned yet, the user its oldest event in a backfill run's window names,
    gathered before the run feeds anything (service/store/customer_map.py); expires if the run dies."""
    return f"{PREFIX}:customers:{source}:first:{run}"


def usercom_id(user_id: str) -> str:
    """string: User.com's own id for our user id, learned from its answers (service/destinations/usercom)."""
    return f"{PREFIX}:usercom-id:{user_id}"


def userkit_name(user_id: str) -> str:
    """string: JSON of the first and last name last sent to UserKit for our user id, which UserKit keeps
    as one full name (service/destinations/userkit)."""
    return f"{PREFIX}:userkit-name:{user_id}"


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


def user_ref(source: str, hint: str) -> str:
    """A user's short reference: 16 characters (base64url of a 96-bit digest of source and hint: two of
    10 M users collide with probability ~6e-16). A delivery job carries it, whatever the length of the
    user's ids, and the user's state keys are named by it; the state keeps the source and hint."""
    digest = hashlib.blake2b(f"{source} {hint}".encode(), digest_size=12).digest()
    return base64.urlsafe_b64encode(digest).decode()


def pending_ref(source: str, hint: str) -> str:
    """A user's member of Keys.pending(lane)."""
    return f"u:{source}:{hint}"


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
    def limiter_tat_below_live(self) -> str:
        """string: the GCRA arrival time of a lane below live (backfill): it spaces its own calls
        and follows live calls, but live calls never wait behind its spacing"""
        return f"{self.prefix}:limiter:tat-below-live"

    @property
    def limiter_paused_until(self) -> str:
        return f"{self.prefix}:limiter:paused-until"

    @property
    def limiter_in_flight(self) -> str:
        return f"{self.prefix}:limiter:in-flight"

    # The limiter's sliding window (sorted set of booked slots by time) and its effective rate (hash
    # base / at / hold_until: AIMD, lowered by each 429), service/store/limiter_scripts.py. The
    # release before kept the window as a list under `limiter:window` (a rolling upgrade: docs/delivery.md).
    @property
    def limiter_window(self) -> str:
        return f"{self.prefix}:limiter:slots"

    @property
    def limiter_rate(self) -> str:
        return f"{self.prefix}:limiter:rate"

    @property
    def dlq(self) -> list[str]:
        """hash: id -> JSON item; zset: id by time of failure; hash: reason -> count; string: dropped"""
        return [f"{self.prefix}:dlq:{name}" for name in ("items", "index", "reasons", "dropped")]

    def dlq_replayed(self, operation: str) -> str:
        """set: the item ids a bulk replay in batches gave (service.operator.replay_batch), until
        its last batch or an hour after a batch"""
        return f"{self.prefix}:dlq:replayed:{operation}"

    def pending(self, lane: str) -> str:
        """zset: users with something pending ("u:<source>:<hint>", pending_ref) by time first accepted;
        before the upgrade, "<source>:<event id>" per event (still removed when such an event settles)."""
        return f"{self.prefix}:pending:{lane}"

    def user_state(self, source: str, hint: str) -> str:
        """hash: what is pending for one user (service/store/ledger_state.py): per attribute value and event
        time with the event carrying it, tags, the events merged in, and the user's source and hint. It
        exists while a job is queued. Named by the user's reference (user_ref)."""
        return self.user_state_of(user_ref(source, hint))

    def user_state_of(self, ref: str) -> str:
        return f"{self.prefix}:user:{ref}"

    def in_hand(self, source: str, hint: str) -> str:
        """hash: the user's state taken by the delivery job holding the user's lease, until its outcome is
        counted; a re-run after the worker died finds it here."""
        return self.in_hand_of(user_ref(source, hint))

    def in_hand_of(self, ref: str) -> str:
        return f"{self.prefix}:in-hand:{ref}"

    def outcome(self, source: str, event_id: str) -> str:
        """Before the upgrade: set once an event's outcome was counted. Now written only for events queued
        by the old per-event jobs (so their own job, run again, does not count them twice)."""
        return f"{self.prefix}:outcome:{source}:{event_id}"

    def user_lock(self, user_id: str) -> str:
        """One delivery per user at a time, whichever source its events came from, so the destination
        sees a user's updates in order (releases before locked per source: `lock:<source>:<user>`)."""
        return f"{self.prefix}:user-lock:{user_id}"

    def parked(self, source: str, hint: str) -> str:
        """hash: event id -> update JSON, updates waiting for one merged delivery (UserUpdate.hint)."""
        return f"{self.prefix}:parked:{source}:{hint}"

    def last_written(self, source: str, user_id: str) -> str:
        """hash: attribute -> event time of the value last sent, and "#<attribute>" -> "<event time>|<event
        id>" of it (last-writer-wins by event time, then event id: ordering_scripts.CLAIM_LUA)."""
        return f"{self.prefix}:lww:{source}:{user_id}"

    def trace(self, user_id: str) -> str:
        """list: the user's latest deliveries and dead letters here, newest first (service/store/trace.py)."""
        return f"{PREFIX}:trace:{self.destination}:{user_id}"


USERCOM = Keys(UNPREFIXED_DESTINATION)
