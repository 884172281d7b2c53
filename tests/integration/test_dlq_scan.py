"""A DLQ scan (listing, bulk replay, bulk purge) while the queue changes under it, against a real Redis.

The scan reads the index in pages, one round trip each. A client that runs the other party's change
right after a page is read makes the interleaving deterministic: no timing, no threads.
"""

from __future__ import annotations

import base64
import json
import time
from collections import Counter
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from redis import Redis

from service.config import Settings
from service.core.dead_letter import DeadLetter, DlqFilter
from service.core.errors import InvalidRequest
from service.devtools.embedded_redis import RedisProcess
from service.operator import REPLAYED, UNRESOLVED, Operator
from service.store.dlq import DeadLetterQueue
from service.store.ledger import Store
from tests.conftest import an_update


class InterleavingRedis(Redis):
    """A client that calls `after_page` after each read of the DLQ index it makes."""

    after_page: Callable[[], None] = staticmethod(lambda: None)

    def zrangebyscore(self, *args: Any, **kwargs: Any) -> Any:
        page = super().zrangebyscore(*args, **kwargs)
        self.after_page()
        return page


@pytest.fixture
def scanner(redis_server: RedisProcess, redis: Redis) -> Iterator[InterleavingRedis]:
    client = InterleavingRedis.from_url(redis_server.url, socket_timeout=5)
    yield client
    client.close()


def dead_letter(n: int, at: float, *, tag: str = "old") -> DeadLetter:
    update = an_update(f"{tag}{n:04d}", event_time=n, user_id=f"u{n}")
    return DeadLetter(
        id=f"stripe-{tag}{n:04d}",
        reason="usercom_rejected",
        source="stripe",
        event_type="invoice.paid",
        event_id=f"{tag}{n:04d}",
        event_time=n,
        message="m",
        update=update.to_dict(),
        user_id=f"u{n}",
        first_failure_at=at,
        last_failure_at=at,
    )


def fill(store: Store, count: int) -> list[str]:
    """`count` dead letters, oldest first, one second apart (well within the retention age)."""
    now = time.time()
    for n in range(count):
        assert store.reject(dead_letter(n, now - count + n), f"old{n:04d}")
    return [f"stripe-old{n:04d}" for n in range(count)]


def left(redis: Redis, store: Store) -> list[str]:
    return [item_id.decode() for item_id in redis.zrange(store.keys.dlq[1], 0, -1)]


def test_purge_all_takes_every_item_there_when_it_began_while_retention_drops_the_oldest_meanwhile(
    env: dict[str, str], redis: Redis, scanner: InterleavingRedis
) -> None:
    settings = Settings.from_env({**env, "RELAY_DLQ_MAX_ITEMS": "1000"})
    worker = Store.from_settings(redis, settings)
    fill(worker, 1000)
    fresh = iter([dead_letter(0, time.time(), tag="new")])

    def a_worker_dead_letters_one_more() -> None:  # once: the queue is full, retention drops old0000
        for item in fresh:
            assert worker.reject(item, item.event_id or "")

    scanner.after_page = a_worker_dead_letters_one_more
    result = Operator(Store.from_settings(scanner, settings), settings).purge_matching(DlqFilter(), dry_run=False)

    # The scan ends at the newest item there when it began: one dead-lettered since is left for the next.
    assert left(redis, worker) == ["stripe-new0000"]
    assert result["matched"] == result["selected"] == result["deleted"] == 999  # old0001..old0999


def test_replay_all_replays_every_item_when_another_operator_replays_one_meanwhile(
    settings: Settings, redis: Redis, scanner: InterleavingRedis
) -> None:
    other = Operator(Store.from_settings(redis, settings), settings)
    fill(other.store, 1000)
    first = other.dlq.get("stripe-old0000")
    assert first is not None
    once = iter([first])

    def another_operator_replays_the_oldest() -> None:
        for item in once:
            assert other.replay(item) == REPLAYED

    scanner.after_page = another_operator_replays_the_oldest
    result = Operator(Store.from_settings(scanner, settings), settings).replay_matching(DlqFilter(), dry_run=False)

    assert left(redis, other.store) == []
    assert result["matched"] == 999  # old0000 was taken before its item was read
    assert result["outcomes"] == {REPLAYED: 999}


@pytest.mark.parametrize("sizes", [[3, 4, 1, 9, 2, 5, 4], [12], [1] * 15, [4, 4, 4, 4]])
def test_scan_sees_every_item_that_stays_once_whatever_the_ties_and_changes(
    settings: Settings, redis: Redis, scanner: InterleavingRedis, sizes: list[int]
) -> None:
    """Failure times shared by several items (the index's score ties) across page boundaries, while
    after each page another party deletes the oldest item or dead-letters again one already read."""
    store = Store.from_settings(redis, settings)
    ids = fill(store, sum(sizes))
    base = time.time() - 10_000
    position = 0
    for group, size in enumerate(sizes):
        redis.zadd(store.keys.dlq[1], {ids[n]: base + group for n in range(position, position + size)}, xx=True)
        position += size
    scan = DeadLetterQueue(scanner, store.retention, store.keys)
    scan.PAGE_SCAN = 4
    removed: list[str] = []
    changes = iter(range(1000))

    def another_party_changes_the_queue() -> None:
        oldest = left(redis, store)[:2]
        if next(changes) % 2 == 0 and oldest:
            assert store.dlq().delete(oldest[0])
            removed.append(oldest[0])
        elif oldest:  # dead-lettered again: the same id moves to the end of the queue
            item = store.dlq().get(oldest[-1])
            assert item is not None and store.reject(DeadLetter(**item), f"again-{oldest[-1]}")

    scanner.after_page = another_party_changes_the_queue
    seen = [item["id"] for item in scan.scan(DlqFilter())]

    assert set(ids) - set(removed) <= set(seen)
    assert len(seen) == len(set(seen))
    assert len(removed) >= 2


def test_listing_pages_are_unchanged(settings: Settings, redis: Redis) -> None:
    store = Store.from_settings(redis, settings)
    ids = fill(store, 1203)
    dlq = store.dlq()

    items, total = dlq.matching(DlqFilter(), offset=498, limit=7)
    assert total == 1203 and [item["id"] for item in items] == ids[498:505]
    items, total = dlq.matching(DlqFilter(user_id="u1000"))
    assert total == 1 and [item["id"] for item in items] == ["stripe-old1000"]
    items, total = dlq.matching(DlqFilter(), offset=1200)
    assert total == 1203 and [item["id"] for item in items] == ids[1200:]
    since, until = (redis.zscore(store.keys.dlq[1], ids[n]) for n in (100, 1100))
    items, total = dlq.matching(DlqFilter(since=since, until=until), offset=2)
    assert total == 1001 and [item["id"] for item in items] == ids[102:1101]


def test_replay_all_never_takes_an_item_twice_whatever_the_clocks(
    settings: Settings, redis: Redis, scanner: InterleavingRedis
) -> None:
    """The newest item was dead-lettered by a pod whose clock runs 2 s ahead; an item the scan replayed
    fails again on a pod with a right clock, so it sorts again before the scan's end. Taken again, it
    was replayed twice in one bulk request."""
    worker = Store.from_settings(redis, settings)
    ids = fill(worker, 1200)  # scores now-1200 .. now-1
    redis.zadd(worker.keys.dlq[1], {ids[-1]: time.time() + 2}, xx=True)
    first = worker.dlq().get(ids[0])
    assert first is not None
    failed_again: list[str] = []

    def replayed_item_fails_again() -> None:
        if not failed_again and redis.hget(worker.keys.dlq[0], ids[0]) is None:  # replayed by the scan
            failed_again.append(ids[0])
            assert worker.reject(DeadLetter(**first), f"again-{ids[0]}")

    scanner.after_page = replayed_item_fails_again
    operator = Operator(Store.from_settings(scanner, settings), settings)
    taken: Counter[str] = Counter()
    replay = operator.replay
    object.__setattr__(operator, "replay", lambda item: taken.update([item["id"]]) or replay(item))
    operator.replay_matching(DlqFilter(), dry_run=False)
    assert failed_again == [ids[0]] and len(taken) == 1200
    assert taken.most_common(1)[0][1] == 1  # each once
    assert redis.hexists(worker.keys.dlq[0], ids[0])  # its new failure is left for the next run


# A replay in batches (the console's, `batch` in the admin API): short requests joined by a cursor.


def replay_in_batches(operator: Operator, flt: DlqFilter, batch: int) -> list[dict[str, Any]]:
    answers = [operator.replay_batch(flt, batch=batch)]
    while answers[-1]["cursor"] is not None:
        answers.append(operator.replay_batch(flt, batch=batch, cursor=answers[-1]["cursor"]))
    return answers


@pytest.mark.parametrize("sizes", [[3, 4, 1, 9, 2, 5, 4], [12], [1] * 15])
def test_a_replay_in_batches_takes_each_item_there_when_it_began_once(
    settings: Settings, redis: Redis, scanner: InterleavingRedis, sizes: list[int]
) -> None:
    """Batches of 3 across failure times shared by several items (a batch may end inside a tie), while
    after each page an item the replay took fails again (dated now: before the end of the scan, whose
    newest item is dated ahead) and another party deletes the oldest item left."""
    worker = Store.from_settings(redis, settings)
    ids = fill(worker, sum(sizes))
    base = time.time() - 10_000
    position = 0
    for group, size in enumerate(sizes):
        redis.zadd(worker.keys.dlq[1], {ids[n]: base + group for n in range(position, position + size)}, xx=True)
        position += size
    redis.zadd(worker.keys.dlq[1], {ids[-1]: time.time() + 60}, xx=True)  # written by a clock ahead
    originals = {item["id"]: item for item in worker.dead_letters()}
    removed: list[str] = []
    failed_again: list[str] = []

    def the_queue_changes() -> None:
        taken = [
            item_id for item_id in ids if item_id not in removed and not redis.hexists(worker.keys.dlq[0], item_id)
        ]
        for item_id in taken[:1]:
            if item_id not in failed_again:
                failed_again.append(item_id)
                assert worker.reject(DeadLetter(**originals[item_id]), f"again-{item_id}")
        oldest = left(redis, worker)[:1]
        if oldest and oldest[0] not in failed_again and len(removed) < 3:
            assert worker.dlq().delete(oldest[0])
            removed.append(oldest[0])

    scanner.after_page = the_queue_changes
    operator = Operator(Store.from_settings(scanner, settings), settings)
    operator.dlq.PAGE_SCAN = 4
    taken: Counter[str] = Counter()
    replay = operator.replay
    object.__setattr__(operator, "replay", lambda item: taken.update([item["id"]]) or replay(item))
    answers = replay_in_batches(operator, DlqFilter(), batch=3)

    assert set(taken) == set(ids) - set(removed)  # every item that stayed, none deleted before it was read
    assert taken.most_common(1)[0][1] == 1  # each once, though items failed again before the scan's end
    assert sum(answer["selected"] for answer in answers) == len(taken)
    assert all(answer["selected"] == 3 for answer in answers[:-1]) and answers[-1]["cursor"] is None
    assert failed_again and set(left(redis, worker)) == set(failed_again)  # left for the next replay
    assert list(redis.scan_iter(f"{worker.keys.prefix}:dlq:replayed:*")) == []  # nothing left behind


def test_a_replay_in_batches_moves_past_the_items_it_could_not_replay(settings: Settings, redis: Redis) -> None:
    """An item refused (its update names no user) stays where it is: the next batch does not take it again."""
    store = Store.from_settings(redis, settings)
    ids = fill(store, 7)
    for item_id in ids[:4]:
        item = store.dlq().get(item_id)
        assert item is not None
        nobody = {**item["update"], "user_id": None, "customer_id": None}
        redis.hset(store.keys.dlq[0], item_id, json.dumps({**item, "update": nobody}))
    answers = replay_in_batches(Operator(store, settings), DlqFilter(), batch=2)

    assert [answer["outcomes"] for answer in answers] == [
        {UNRESOLVED: 2},
        {UNRESOLVED: 2},
        {REPLAYED: 2},
        {REPLAYED: 1},
    ]
    assert left(redis, store) == ids[:4]


def test_a_cursor_is_taken_only_as_given_for_its_filters_and_within_the_hour(settings: Settings, redis: Redis) -> None:
    operator = Operator(Store.from_settings(redis, settings), settings)
    fill(operator.store, 5)
    first = operator.replay_batch(DlqFilter(event_type="invoice.paid"), batch=2)
    cursor = first["cursor"]
    assert first["selected"] == 2 and cursor
    for wrong, because in [
        (cursor[:-3], "not one this API gave"),
        ("e30", "not one this API gave"),  # "{}"
        (cursor, "made for other filters"),
    ]:
        with pytest.raises(InvalidRequest, match=because):
            operator.replay_batch(DlqFilter(event_type="charge.refunded"), batch=2, cursor=wrong)
    (operation,) = [key for key in redis.scan_iter(f"{operator.store.keys.prefix}:dlq:replayed:*")]
    assert redis.ttl(operation) > 3000 and redis.scard(operation) == 3  # the ids given, and the marker
    redis.delete(operation)
    with pytest.raises(InvalidRequest, match="expired"):
        operator.replay_batch(DlqFilter(event_type="invoice.paid"), batch=2, cursor=cursor)
    assert len(left(redis, operator.store)) == 3


def forged(cursor: str, *, end: Any = None, after: Any = None, raw: str | None = None) -> str:
    """`cursor` with its scores changed (or its JSON replaced by `raw`), encoded as the API encodes one."""
    operation, filters, *_ = json.loads(base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)))
    text = raw if raw is not None else json.dumps([operation, filters, end, after])
    return base64.urlsafe_b64encode(text.encode()).decode().rstrip("=")


def test_a_forged_cursor_is_refused_never_an_internal_error(settings: Settings, redis: Redis) -> None:
    operator = Operator(Store.from_settings(redis, settings), settings)
    fill(operator.store, 3)
    cursor = operator.replay_batch(DlqFilter(), batch=1)["cursor"]
    operation, filters, *_ = json.loads(base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)))
    for wrong in [
        forged(cursor, raw=f'["{operation}", "{filters}", 1{"0" * 400}, null]'),  # past a float's range
        forged(cursor, raw="[" * 5000 + "]" * 5000),  # nested past Python's recursion limit
        forged(cursor, end=True),
        forged(cursor, end="1e9"),
        forged(cursor, raw=f'["{operation}", "{filters}", NaN, null]'),
    ]:
        with pytest.raises(InvalidRequest, match="not one this API gave"):
            operator.replay_batch(DlqFilter(), batch=1, cursor=wrong)
    assert len(left(redis, operator.store)) == 2


def test_a_forged_cursor_takes_nothing_outside_its_filters_times(settings: Settings, redis: Redis) -> None:
    """The filters' digest is no secret: a position sent back stays within the times filtered."""
    operator = Operator(Store.from_settings(redis, settings), settings)
    ids = fill(operator.store, 9)
    scores = [score for _, score in redis.zrange(operator.store.keys.dlq[1], 0, -1, withscores=True)]
    within = DlqFilter(since=scores[3], until=scores[5])
    cursor = operator.replay_batch(within, batch=1)["cursor"]
    answer = operator.replay_batch(within, batch=10, cursor=forged(cursor, end=scores[-1] + 1, after=scores[0] - 1))
    assert answer["selected"] == 2 and answer["cursor"] is None
    assert left(redis, operator.store) == ids[:3] + ids[6:]
