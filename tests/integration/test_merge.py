"""Intake merges each update into its user's pending state (MERGE_LUA): per attribute the newest
value by event time (a tie to the greater event id), tags with their earliest carrier."""

from __future__ import annotations

from redis import Redis

from service.core.update import UserUpdate
from service.store import keys
from service.store.dlq import Retention
from service.store.ledger import Store
from service.store.ledger_state import PendingState, decode
from tests.conftest import an_update


def _merged(redis: Redis, updates: list[UserUpdate]) -> PendingState:
    redis.flushdb()
    store = Store(
        redis,
        dedup_ttl=3600,
        retention=Retention(max_items=10, ttl_seconds=3600),
        destination_keys=keys.USERCOM,
        fan_out=(keys.USERCOM,),
    )
    for update in updates:
        assert store.accept(update)
    return decode(redis.hgetall(keys.USERCOM.user_state("stripe", "user:u1")))


def _values(found: dict[str, tuple[object, int, str]]) -> dict[str, tuple[object, int]]:
    return {name: (value, when) for name, (value, when, _) in found.items()}


def test_newest_value_per_attribute_wins_whatever_the_order(redis: Redis) -> None:
    older = an_update(
        "evt_1",
        event_time=100,
        standard={"email": "old@x.co", "city": "Oslo"},
        custom={"plan": "a"},
        tags=["subscriber"],
    )
    newer = an_update(
        "evt_2",
        event_time=200,
        standard={"email": "new@x.co"},
        custom={"plan": "b", "mrr": 5},
        tags=["paying", "subscriber"],
    )
    for batch in ([older, newer], [newer, older]):
        merged = _merged(redis, batch)
        assert _values(merged.standard) == {"email": ("new@x.co", 200), "city": ("Oslo", 100)}
        assert _values(merged.custom) == {"plan": ("b", 200), "mrr": (5, 200)}
        assert merged.tag_list() == ["subscriber", "paying"]
        assert set(merged.events) == {"evt_1", "evt_2"}


def test_a_tie_in_event_time_goes_to_the_later_event_id(redis: Redis) -> None:
    a = an_update("evt_a", event_time=5, custom={"plan": "a"})
    b = an_update("evt_b", event_time=5, custom={"plan": "b"})
    for batch in ([b, a], [a, b]):
        assert _values(_merged(redis, batch).custom) == {"plan": ("b", 5)}
