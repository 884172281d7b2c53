"""Durable writes to Redis: accepting events, counting outcomes, dead-lettering.

Every write that changes the ledger is one Lua script, so the ledger and what it counts
change together or not at all: received = delivered + coalesced + ignored + dead_lettered
+ in flight holds at every instant.

Accepting an event writes an rq job hash (rq's own fields: service.store.jobs) and pushes its id
in the same script, as rq.scripts.save_unique_job does: one round trip instead of rq's several.
"""

from __future__ import annotations

import json
import time
from dataclasses import replace
from typing import TYPE_CHECKING, Any

from redis import Redis

from service.core.dead_letter import DeadLetter, DlqFilter
from service.core.update import UserUpdate
from service.store import keys
from service.store.customer_map import accepted
from service.store.dlq import DeadLetterQueue, Retention
from service.store.jobs import JobWriter, job_id_for
from service.store.ledger_counts import Settled
from service.store.ledger_counts import ledger_from as ledger_from
from service.store.ledger_scripts import (
    ACCEPT_JOB_SCRIPT,
    DEAD_LETTER_SCRIPT,
    IGNORE_SCRIPT,
    REJECT_SCRIPT,
    REPLAY_SCRIPT,
    SETTLE_SCRIPT,
    AcceptJobFanOut,
    RejectFanOut,
)
from service.store.trace import TraceEntry, TracePolicy, dead_letter_entry, trace_args

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
        live, replay = self._jobs[keys.LIVE], self._jobs[keys.REPLAY]
        self._accept_job_script = redis.register_script(live.lua(ACCEPT_JOB_SCRIPT))
        self._ignore_script = redis.register_script(IGNORE_SCRIPT)
        self._reject_script = redis.register_script(REJECT_SCRIPT)
        self._dead_letter_script = redis.register_script(DEAD_LETTER_SCRIPT)
        self._settle_script = redis.register_script(SETTLE_SCRIPT)
        self._replay_script = redis.register_script(replay.lua(REPLAY_SCRIPT))

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
        """Queue the update for every destination; False: accepted before (IdentityConflict:
        customer_map.py). `lane`: whose rq queue (backfill: events read back from the provider)."""
        update_json = json.dumps(update.to_dict(), separators=(",", ":"))
        # Parked at once, so that a backlog for one user goes out as one merged update.
        hint = update.hint
        fan_out = []
        for dest in self.fan_out:
            job_id = job_id_for(update, destination=dest.destination)
            fan_out.append(
                AcceptJobFanOut(
                    ledger=dest.ledger,
                    job_key=keys.RQ_JOB_KEY_PREFIX + job_id,
                    queue_key=dest.rq_queue_key(lane),
                    pending=dest.pending(keys.LIVE),
                    parked=dest.parked(update.source, hint or "-"),
                    job_id=job_id,
                    origin=dest.queue_name(lane),
                )
            )
        data, timestamp, description = self._jobs[lane].args(update, update_json)
        return self._run_accept_job(
            dedup_key=keys.dedup(update.source, update.event_id),
            queues_set=keys.RQ_QUEUES_SET,
            customer_map=keys.customer_map(update.source),
            dedup_ttl=self.dedup_ttl,
            data=data,
            timestamp=timestamp,
            description=description,
            now=time.time(),
            member=keys.pending_member(update.source, update.event_id),
            event_id=update.event_id,
            parked_update=update_json if hint is not None else "",
            customer_id=update.customer_id or "",
            user_id=update.user_id or "",
            fan_out=fan_out,
        )

    def ignore(self, source: str, event_id: str) -> bool:
        return self._run_ignore(
            dedup_key=keys.dedup(source, event_id),
            ledgers=[dest.ledger for dest in self.fan_out],
            dedup_ttl=self.dedup_ttl,
        )

    def reject(self, item: DeadLetter, dedup_id: str) -> bool:
        """Keep an event that could not be accepted for delivery (e.g. invalid payload), in the
        dead-letter queue of every destination: replaying it there delivers it there."""
        max_items, cutoff = self.retention.args()
        return self._run_reject(
            dedup_key=keys.dedup(item.source, dedup_id),
            dedup_ttl=self.dedup_ttl,
            dlq_id=item.id,
            reason=item.reason,
            now=time.time(),
            max_items=max_items,
            cutoff=cutoff,
            fan_out=[
                RejectFanOut(
                    ledger=dest.ledger, dlq=dest.dlq, item=replace(item, destination=dest.destination).to_json()
                )
                for dest in self.fan_out
            ],
        )

    def settle(
        self,
        outcomes: list[tuple[UserUpdate, str]],
        lease: tuple[str, str] | None = None,
        memory: tuple[str, str, int] | None = None,
        slots: list[str] | None = None,
        trace: TraceEntry | None = None,
    ) -> list[Settled]:
        """Count each update's outcome ('delivered'; 'coalesced': merged into a delivered update or
        superseded by newer values; 'ignored': nothing in it for the destination), end the lease
        (lock key, token), keep what the destination learned (key, value ('' to forget), ttl) and
        release the delivery's call slots (RateLimiter.released_later) and trace it, in one step."""
        lock, token = lease or ("", "")
        trace_key, trace_entry = trace_args(self.trace, self.keys, trace)
        memory_key, value, memory_ttl = memory or ("", "", 0)
        answer = self._run_settle(
            ledger=self.keys.ledger,
            last_delivery=self.keys.last_delivery,
            pending_live=self.keys.pending(keys.LIVE),
            pending_replay=self.keys.pending(keys.REPLAY),
            lock=lock or self.keys.ledger,  # keys are passed either way; unused without a token or memory
            memory_key=memory_key or self.keys.ledger,
            limiter_in_flight=self.keys.limiter_in_flight,
            trace_key=trace_key or self.keys.ledger,
            outcome_keys=[self.keys.outcome(u.source, u.event_id) for u, _ in outcomes],
            outcome_ttl=self.dedup_ttl,
            now=time.time(),
            token=token,
            memory_change="" if memory is None else (f"set:{value}" if value else "del"),
            memory_ttl=memory_ttl,
            slots=" ".join(slots or []),
            trace_entry=trace_entry,
            trace_keep=self.trace.per_user,
            trace_ttl=self.trace.ttl_seconds,
            outcomes=[(outcome, keys.pending_member(u.source, u.event_id)) for u, outcome in outcomes],
        )
        return [Settled(bool(counted), float(accepted) if accepted else None) for counted, accepted in answer]

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
        """Move a dead-lettered item's update to the replay lane; False if the item is gone."""
        job_id = job_id_for(update, replay=int(time.time() * 1000), destination=self.keys.destination)
        update_json = json.dumps(update.to_dict(), separators=(",", ":"))
        data, timestamp, description = self._jobs[keys.REPLAY].args(update, update_json)
        return self._run_replay(
            dlq=self.keys.dlq,
            ledger=self.keys.ledger,
            outcome_key=self.keys.outcome(update.source, update.event_id),
            job_key=keys.RQ_JOB_KEY_PREFIX + job_id,
            queue_key=self.keys.rq_queue_key(keys.REPLAY),
            queues_set=keys.RQ_QUEUES_SET,
            pending=self.keys.pending(keys.REPLAY),
            dlq_id=item_id,
            job_id=job_id,
            origin=self.keys.queue_name(keys.REPLAY),
            data=data,
            timestamp=timestamp,
            description=description,
            now=time.time(),
            member=keys.pending_member(update.source, update.event_id),
        )

    def ledger(self) -> dict[str, int]:
        return ledger_from(self.redis.hgetall(self.keys.ledger))

    def dead_letters(self) -> list[dict[str, Any]]:
        return self.dlq().matching(DlqFilter())[0]

    # One wrapper per script, its parameters in the order of the script's header: KEYS, then ARGV.

    def _run_accept_job(
        self,
        *,
        dedup_key: str,
        queues_set: str,
        customer_map: str,
        dedup_ttl: int,
        data: str,
        timestamp: str,
        description: str,
        now: float,
        member: str,
        event_id: str,
        parked_update: str,
        customer_id: str,
        user_id: str,
        fan_out: list[AcceptJobFanOut],
    ) -> bool:
        script_keys = [dedup_key, queues_set, customer_map, *(key for dest in fan_out for key in dest.script_keys())]
        args = [
            *(dedup_ttl, data, timestamp, description, now, member, event_id, parked_update, customer_id, user_id),
            *(arg for dest in fan_out for arg in dest.script_args()),
        ]
        return accepted(self._accept_job_script(keys=script_keys, args=args), customer_id)

    def _run_ignore(self, *, dedup_key: str, ledgers: list[str], dedup_ttl: int) -> bool:
        return bool(self._ignore_script(keys=[dedup_key, *ledgers], args=[dedup_ttl]))

    def _run_reject(
        self,
        *,
        dedup_key: str,
        dedup_ttl: int,
        dlq_id: str,
        reason: str,
        now: float,
        max_items: int,
        cutoff: float,
        fan_out: list[RejectFanOut],
    ) -> bool:
        script_keys = [dedup_key, *(key for dest in fan_out for key in dest.script_keys())]
        args = [
            *(dedup_ttl, dlq_id, reason, now, max_items, cutoff),
            *(arg for dest in fan_out for arg in dest.script_args()),
        ]
        return bool(self._reject_script(keys=script_keys, args=args))

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

    def _run_settle(
        self,
        *,
        ledger: str,
        last_delivery: str,
        pending_live: str,
        pending_replay: str,
        lock: str,
        memory_key: str,
        limiter_in_flight: str,
        trace_key: str,
        outcome_keys: list[str],  # per event
        outcome_ttl: int,
        now: float,
        token: str,
        memory_change: str,
        memory_ttl: int,
        slots: str,
        trace_entry: str,
        trace_keep: int,
        trace_ttl: int,
        outcomes: list[tuple[str, str]],  # per event: outcome, member
    ) -> list[Any]:
        return self._settle_script(
            keys=[
                ledger,
                last_delivery,
                pending_live,
                pending_replay,
                lock,
                memory_key,
                limiter_in_flight,
                trace_key,
                *outcome_keys,
            ],
            args=[
                *(outcome_ttl, now, token, memory_change, memory_ttl, slots, trace_entry, trace_keep, trace_ttl),
                *(arg for outcome_and_member in outcomes for arg in outcome_and_member),
            ],
        )

    def _run_replay(
        self,
        *,
        dlq: list[str],  # dlq_items, dlq_index, dlq_reasons, dlq_dropped
        ledger: str,
        outcome_key: str,
        job_key: str,
        queue_key: str,
        queues_set: str,
        pending: str,
        dlq_id: str,
        job_id: str,
        origin: str,
        data: str,
        timestamp: str,
        description: str,
        now: float,
        member: str,
    ) -> bool:
        return bool(
            self._replay_script(
                keys=[*dlq, ledger, outcome_key, job_key, queue_key, queues_set, pending],
                args=[dlq_id, job_id, origin, data, timestamp, description, now, member],
            )
        )
