"""Durable writes to Redis: accepting events, counting outcomes, dead-lettering.

Every write that changes the ledger is one Lua script, so the ledger and what it counts
change together or not at all: received = delivered + coalesced + ignored + dead_lettered
+ in flight holds at every instant.

Accepting an event writes an rq job hash (rq's own fields: service.store.jobs) and pushes its id
in the same script, as rq.scripts.save_unique_job does: one round trip instead of rq's several.
"""

from __future__ import annotations

import time
from dataclasses import replace
from typing import TYPE_CHECKING, Any

from redis import Redis

from service.core.dead_letter import DeadLetter, DlqFilter
from service.core.update import UserUpdate
from service.store import keys
from service.store.customer_map import IdentityConflict, accepted
from service.store.dlq import DeadLetterQueue, Retention
from service.store.jobs import JobWriter, user_job_id
from service.store.ledger_counts import Settled
from service.store.ledger_counts import ledger_from as ledger_from
from service.store.ledger_dedup import dedup_check, ignored_namespace
from service.store.ledger_scripts import (
    ACCEPT_JOB_SCRIPT,
    DEAD_LETTER_SCRIPT,
    IGNORE_SCRIPT,
    REJECT_SCRIPT,
    AcceptJobFanOut,
    RejectFanOut,
)
from service.store.ledger_state import event_value, update_fields
from service.store.ledger_user import SettleUser, unresolved
from service.store.ledger_user_scripts import REPLAY_USER_SCRIPT, SETTLE_USER_SCRIPT
from service.store.trace import TracePolicy, dead_letter_entry, trace_args

if TYPE_CHECKING:
    from service.config import Settings


class Store:
    """Intake, outcomes and replays: every write that moves an event through a ledger.

    Intake fans each event out to every destination in `fan_out`; outcomes, the dead-letter
    queue and replays belong to one destination (`keys`)."""

    def __init__(
        self,
        redis: Redis,
        *,
        dedup_ttl: int,
        retention: Retention,
        destination_keys: keys.Keys,
        fan_out: tuple[keys.Keys, ...],
        trace: TracePolicy | None = None,
    ) -> None:
        self.redis = redis
        self.trace = trace or TracePolicy()
        self.dedup_ttl = dedup_ttl
        self.retention = retention
        self.keys = destination_keys
        self.fan_out = fan_out
        self._jobs = {lane: JobWriter(redis, lane) for lane in keys.LANES}
        self._accept_job_script = redis.register_script(self._jobs[keys.LIVE].lua(ACCEPT_JOB_SCRIPT))
        self._ignore_script = redis.register_script(IGNORE_SCRIPT)
        self._reject_script = redis.register_script(REJECT_SCRIPT)
        self._dead_letter_script = redis.register_script(DEAD_LETTER_SCRIPT)
        self._settle_user_script = redis.register_script(SETTLE_USER_SCRIPT)
        self._replay_script = redis.register_script(self._jobs[keys.REPLAY].lua(REPLAY_USER_SCRIPT))

    @classmethod
    def from_settings(cls, redis: Redis, settings: Settings, destination: str | None = None) -> Store:
        """A store fanning out to the configured destinations; outcomes for `destination` (default:
        the first one configured)."""
        retention = Retention(max_items=settings.dlq_max_items, ttl_seconds=settings.dlq_ttl_days * 24 * 3600)
        fan_out = tuple(keys.Keys(name) for name in settings.destinations)
        own = keys.Keys(destination) if destination else fan_out[0]
        trace = TracePolicy(settings.trace_per_user, settings.trace_ttl_days * 24 * 3600)
        dedup_ttl = settings.dedup_ttl_seconds
        return cls(redis, dedup_ttl=dedup_ttl, retention=retention, destination_keys=own, fan_out=fan_out, trace=trace)

    def for_destination(self, destination: str) -> Store:
        return Store(
            self.redis,
            dedup_ttl=self.dedup_ttl,
            retention=self.retention,
            destination_keys=keys.Keys(destination),
            fan_out=self.fan_out,
            trace=self.trace,
        )

    def dlq(self) -> DeadLetterQueue:
        return DeadLetterQueue(self.redis, self.retention, self.keys)

    def accept(self, update: UserUpdate, *, lane: str = keys.LIVE) -> bool:
        """Merge the update into its user's pending state at every destination, queuing the user once;
        False if this event id was accepted before. An update naming no user cannot be delivered: it
        is dead-lettered at once (unresolved_identity). `lane`: whose queue a new job for the user goes
        to (backfill: events read back from the provider); a live event for a user whose job waits on
        another lane queues a live job too, so live traffic never waits behind a backfill. Raises
        IdentityConflict (customer_map.py) when the event would re-point a learned customer."""
        if update.hint is None:
            return self.reject(unresolved(update), update.event_id)
        script_keys, args = self._accept_call(update, update.hint, lane)
        return accepted(self._accept_job_script(keys=script_keys, args=args), update.customer_id or "")

    def accept_together(self, updates: list[UserUpdate], *, lane: str = keys.LIVE) -> list[bool | IdentityConflict]:
        """Each update accepted as `accept` does, all in one transaction (MULTI/EXEC): no delivery takes
        a user's state between them, so updates read together (a sync's customer and its subscription)
        leave in one call. Per update: accepted, a duplicate, or the IdentityConflict `accept` raises."""
        answers: dict[int, bool | IdentityConflict] = {}
        queued: list[int] = []
        pipe = self.redis.pipeline(transaction=True)
        for n, update in enumerate(updates):
            if update.hint is None:
                answers[n] = self.reject(unresolved(update), update.event_id)
                continue
            script_keys, args = self._accept_call(update, update.hint, lane)
            self._accept_job_script(keys=script_keys, args=args, client=pipe)
            queued.append(n)
        for n, answer in zip(queued, pipe.execute() if queued else [], strict=True):
            try:
                answers[n] = accepted(answer, updates[n].customer_id or "")
            except IdentityConflict as exc:
                answers[n] = exc
        return [answers[n] for n in range(len(updates))]

    def _accept_call(self, update: UserUpdate, hint: str, lane: str) -> tuple[list[str], list[Any]]:
        """ACCEPT_JOB_SCRIPT's keys and arguments for the update (`hint`: the user it names)."""
        now = time.time()
        check = dedup_check(update.source, update.event_id, self.dedup_ttl, now)
        data, timestamp, description = self._jobs[lane].user_args(update.source, hint)
        fan_out = []
        for dest in self.fan_out:
            job_id = user_job_id(update.source, hint, dest.destination)
            fan_out.append(
                AcceptJobFanOut(
                    ledger=dest.ledger,
                    job_key=keys.RQ_JOB_KEY_PREFIX + job_id,
                    queue_key=dest.rq_queue_key(lane),
                    pending=dest.pending(keys.LIVE),
                    state=dest.user_state(update.source, hint),
                    in_hand=dest.in_hand(update.source, hint),
                    job_id=job_id,
                    origin=dest.queue_name(lane),
                )
            )
        script_keys = [*check.script_keys(), keys.RQ_QUEUES_SET, keys.customer_map(update.source)]
        args = [
            *check.script_args(),
            *(data, timestamp, description, now, keys.pending_ref(update.source, hint)),
            *(f"e:{update.event_id}", event_value(update, now), update.customer_id or "", update.user_id or "", lane),
            *(arg for dest in fan_out for arg in dest.script_args()),
            *update_fields(update),
        ]
        script_keys += [key for dest in fan_out for key in dest.script_keys()]
        return script_keys, args

    def ignore(self, source: str, event_id: str) -> bool:
        """Count an event the mapping sends nothing for, once per event id. Its id is remembered apart from the
        accepted ones (ignored_namespace): once a new mapping uses the type, a backfill or a redelivery of the
        event is accepted, not taken for a duplicate and never delivered."""
        check = dedup_check(ignored_namespace(source), event_id, self.dedup_ttl, time.time())
        ledgers = [dest.ledger for dest in self.fan_out]
        return bool(self._ignore_script(keys=[*check.script_keys(), *ledgers], args=check.script_args()))

    def reject(self, item: DeadLetter, dedup_id: str) -> bool:
        """Keep an event that could not be accepted for delivery (e.g. invalid payload), in the
        dead-letter queue of every destination: replaying it there delivers it there."""
        max_items, cutoff = self.retention.args()
        now = time.time()
        check = dedup_check(item.source, dedup_id, self.dedup_ttl, now)
        fan_out = [
            RejectFanOut(ledger=dest.ledger, dlq=dest.dlq, item=replace(item, destination=dest.destination).to_json())
            for dest in self.fan_out
        ]
        script_keys = [*check.script_keys(), *(key for dest in fan_out for key in dest.script_keys())]
        args = [
            *check.script_args(),
            *(item.id, item.reason, now, max_items, cutoff),
            *(arg for dest in fan_out for arg in dest.script_args()),
        ]
        return bool(self._reject_script(keys=script_keys, args=args))

    def dead_letter(self, item: DeadLetter) -> Settled:
        item = replace(item, destination=self.keys.destination)
        event_id = item.event_id or item.id
        max_items, cutoff = self.retention.args()
        trace_key, trace_entry = trace_args(self.trace, self.keys, dead_letter_entry(item, event_id))
        counted, accepted = self._run_dead_letter(
            outcome_key=self.keys.outcome(item.source, event_id),
            ledger=self.keys.ledger,
            pending_live=self.keys.pending(keys.LIVE),
            pending_replay=self.keys.pending(keys.REPLAY),
            dlq=self.keys.dlq,
            trace_key=trace_key or self.keys.ledger,
            outcome_ttl=self.dedup_ttl,
            member=keys.pending_member(item.source, event_id),
            dlq_id=item.id,
            item=item.to_json(),
            reason=item.reason,
            now=time.time(),
            max_items=max_items,
            cutoff=cutoff,
            trace_entry=trace_entry,
            trace_keep=self.trace.per_user,
            trace_ttl=self.trace.ttl_seconds,
        )
        return Settled(bool(counted), float(accepted) if accepted else None)

    def replay(self, item_id: str, update: UserUpdate) -> bool:
        """Merge a dead-lettered item's update into its user's pending state, queuing the user on the
        replay lane when nothing was pending; False if the item is gone. The update must name its user
        or customer (Operator.replay refuses one that names neither)."""
        hint = update.hint
        if hint is None:
            raise ValueError(f"event {update.event_id} names no user or customer: it cannot be replayed")
        job_id = user_job_id(update.source, hint, self.keys.destination)
        data, timestamp, description = self._jobs[keys.REPLAY].user_args(update.source, hint)
        now = time.time()
        script_keys = [
            *self.keys.dlq,
            *(self.keys.ledger, keys.RQ_JOB_KEY_PREFIX + job_id),
            *(self.keys.rq_queue_key(keys.REPLAY), keys.RQ_QUEUES_SET, self.keys.pending(keys.REPLAY)),
            *(self.keys.user_state(update.source, hint), self.keys.in_hand(update.source, hint)),
        ]
        args = [
            *(item_id, job_id, self.keys.queue_name(keys.REPLAY), data, timestamp, description, now),
            *(keys.pending_ref(update.source, hint), f"e:{update.event_id}", event_value(update, now), keys.REPLAY),
            *update_fields(update, hint),
        ]
        return bool(self._replay_script(keys=script_keys, args=args))

    def settle_user(self, settle: SettleUser) -> list[Settled] | None:
        """Count the outcomes of one user's delivery (SETTLE_USER_SCRIPT); None if the lease was lost."""
        answer = self._settle_user_script(keys=settle.script_keys(self), args=settle.script_args(self))
        if answer is None:
            return None
        return [Settled(bool(counted), float(at) if at else None) for counted, at in answer]

    def ledger(self) -> dict[str, int]:
        return ledger_from(self.redis.hgetall(self.keys.ledger))

    def dead_letters(self) -> list[dict[str, Any]]:
        return self.dlq().matching(DlqFilter())[0]

    # One wrapper per script, its parameters in the order of the script's header: KEYS, then ARGV.

    def _run_dead_letter(
        self,
        *,
        outcome_key: str,
        ledger: str,
        pending_live: str,
        pending_replay: str,
        dlq: list[str],  # dlq_items, dlq_index, dlq_reasons, dlq_dropped
        trace_key: str,
        outcome_ttl: int,
        member: str,
        dlq_id: str,
        item: str,
        reason: str,
        now: float,
        max_items: int,
        cutoff: float,
        trace_entry: str,
        trace_keep: int,
        trace_ttl: int,
    ) -> list[Any]:
        return self._dead_letter_script(
            keys=[outcome_key, ledger, pending_live, pending_replay, *dlq, trace_key],
            args=[
                *(outcome_ttl, member, dlq_id, item, reason, now, max_items, cutoff),
                *(trace_entry, trace_keep, trace_ttl),
            ],
        )
