"""A large dead-letter queue, against a real Redis: what a listing, a count, a bulk operation and
retention read and hold, in items and script calls (never in time).

Reads are counted on the client (ids asked of the items hash) or by Redis itself (INFO commandstats).
"""

from __future__ import annotations

import json
import time
import tracemalloc
from collections.abc import Iterator
from typing import Any

import pytest
import urllib3
from redis import Redis

from service import create_app
from service.config import Settings
from service.core.dead_letter import DlqFilter
from service.devtools.embedded_redis import RedisProcess
from service.devtools.wsgi_server import BackgroundServer
from service.operator import REPLAYED, Operator
from service.store.dlq import KEEP_TRIM_BATCH, TRIM_BATCH, DeadLetterQueue
from service.store.ledger import Store
from tests.conftest import close_connections
from tests.integration.test_dlq_cli import dlq as relay_dlq
from tests.integration.test_dlq_scan import InterleavingRedis, dead_letter, fill, left

TOKEN = "admin-token-for-tests-0123456789"


class CountingRedis(InterleavingRedis):
    """Counts the items it reads from the DLQ's items hash (ids asked with HMGET); `after_page` as there."""

    items_read = 0
    ids_checked = 0  # against a batched replay's memory of the ids it gave

    def hmget(self, name: Any, keys: Any, *args: Any) -> Any:
        self.items_read += len(keys)
        return super().hmget(name, keys, *args)

    def smismember(self, name: Any, values: Any, *args: Any) -> Any:
        self.ids_checked += len(values)
        return super().smismember(name, values, *args)


@pytest.fixture
def counting(redis_server: RedisProcess, redis: Redis) -> Iterator[CountingRedis]:
    client = CountingRedis.from_url(redis_server.url, socket_timeout=5)
    yield client
    client.close()


def calls(redis: Redis, command: str) -> int:
    return int(redis.info("commandstats").get(f"cmdstat_{command}", {}).get("calls", 0))


# Listing: the page and the total, never every item.


def test_a_page_of_the_whole_queue_reads_only_its_items(
    settings: Settings, redis: Redis, counting: CountingRedis
) -> None:
    ids = fill(Store.from_settings(redis, settings), 1203)
    dlq = Store.from_settings(counting, settings).dlq()

    items, total = dlq.matching(DlqFilter(), limit=1)
    assert (total, [item["id"] for item in items], counting.items_read) == (1203, ids[:1], 1)
    items, total = dlq.matching(DlqFilter(), offset=600, limit=5)
    assert (total, [item["id"] for item in items], counting.items_read) == (1203, ids[600:605], 6)


def test_a_page_of_one_reason_stops_reading_once_full_and_its_count_is_the_total(
    settings: Settings, redis: Redis, counting: CountingRedis, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(DeadLetterQueue, "PAGE_SCAN", 50)
    store = Store.from_settings(redis, settings)
    fill(store, 1203)
    exhausted = [item["id"] for item in store.dead_letters()[::10]]  # as listed: oldest failure first
    for item_id in exhausted:
        item = store.dlq().get(item_id)
        assert item is not None
        redis.hset(store.keys.dlq[0], item_id, json.dumps({**item, "reason": "retries_exhausted"}))
    redis.hset(store.keys.dlq[2], mapping={"retries_exhausted": len(exhausted), "usercom_rejected": 1203 - 121})
    dlq = Store.from_settings(counting, settings).dlq()

    items, total = dlq.matching(DlqFilter(reason="retries_exhausted"), offset=3, limit=2)
    assert (total, [item["id"] for item in items]) == (121, exhausted[3:5])
    assert counting.items_read <= 2 * 50  # the pages up to the fifth match, not the 1203 items
    items, total = dlq.matching(DlqFilter(reason="retries_exhausted"), offset=120, limit=50)
    assert (total, [item["id"] for item in items]) == (121, exhausted[120:])


# Counting and bulk operations: a dry run reads no item it need not; replay and purge act page by page.


def test_a_dry_run_of_everything_or_of_a_reason_reads_no_item(
    settings: Settings, redis: Redis, counting: CountingRedis
) -> None:
    fill(Store.from_settings(redis, settings), 1203)
    operator = Operator(Store.from_settings(counting, settings), settings)

    everything = operator.replay_matching(DlqFilter(), dry_run=True)
    by_reason = operator.purge_matching(DlqFilter(reason="usercom_rejected"), dry_run=True, limit=10)
    none = operator.replay_matching(DlqFilter(reason="retries_exhausted"), dry_run=True)

    assert everything == {"matched": 1203, "selected": 1203, "dry_run": True, "outcomes": {}}
    assert by_reason == {"matched": 1203, "selected": 10, "dry_run": True, "deleted": 0}
    assert none == {"matched": 0, "selected": 0, "dry_run": True, "outcomes": {}}
    assert counting.items_read == 0


def test_a_filtered_dry_run_holds_a_page_of_items_at_a_time(
    settings: Settings, redis: Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(DeadLetterQueue, "PAGE_SCAN", 100)
    store = Store.from_settings(redis, settings)
    fill(store, 2000)
    kept_bytes = sum(len(raw) for raw in redis.hvals(store.keys.dlq[0]))
    operator = Operator(store, settings)

    tracemalloc.start()
    try:
        result = operator.replay_matching(DlqFilter(event_type="invoice.paid"), dry_run=True)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()

    assert result["matched"] == 2000
    assert peak < kept_bytes / 4  # holding every item (parsed) takes several times its JSON


@pytest.mark.parametrize("purge", [False, True])
def test_a_bulk_operation_acts_on_each_page_before_reading_the_next(
    settings: Settings, redis: Redis, counting: CountingRedis, monkeypatch: pytest.MonkeyPatch, purge: bool
) -> None:
    monkeypatch.setattr(DeadLetterQueue, "PAGE_SCAN", 50)
    store = Store.from_settings(redis, settings)
    fill(store, 200)
    left_at_each_page: list[int] = []
    counting.after_page = lambda: left_at_each_page.append(int(redis.zcard(store.keys.dlq[1])))
    operator = Operator(Store.from_settings(counting, settings), settings)

    if purge:
        result = operator.purge_matching(DlqFilter(user_id="u7"), dry_run=False)
        assert (result["matched"], result["deleted"]) == (1, 1)
        result = operator.purge_matching(DlqFilter(), dry_run=False)
        assert result == {"matched": 199, "selected": 199, "dry_run": False, "deleted": 199}
    else:
        result = operator.replay_matching(DlqFilter(), dry_run=False)
        assert result == {"matched": 200, "selected": 200, "dry_run": False, "outcomes": {REPLAYED: 200}}

    assert left(redis, store) == []
    last_scan = left_at_each_page[-5:]  # 200 items, 49 a page (a page stops short of its last score)
    assert len(last_scan) == 5 and last_scan[0] >= 199 and last_scan[-1] < 50
    assert last_scan == sorted(last_scan, reverse=True) and len(set(last_scan)) == 5  # fewer left at each page


# Retention: bounded script calls; every item dropped is counted.


def test_lowering_max_items_trims_in_bounded_script_calls_and_counts_every_item_dropped(
    env: dict[str, str], redis: Redis
) -> None:
    store = Store.from_settings(redis, Settings.from_env(env))
    count = 2 * TRIM_BATCH + 500
    fill(store, count)
    lowered = Store.from_settings(redis, Settings.from_env({**env, "RELAY_DLQ_MAX_ITEMS": "100"}))
    dlq = lowered.dlq()
    max_items, cutoff = lowered.retention.args()

    assert dlq._run_trim(dlq=lowered.keys.dlq, max_items=max_items, cutoff=cutoff, batch=TRIM_BATCH) == TRIM_BATCH
    assert dlq.summary()["size"] == redis.zcard(lowered.keys.dlq[1]) == count - TRIM_BATCH
    one_more = dead_letter(0, time.time(), tag="new")
    assert lowered.reject(one_more, one_more.event_id or "")  # a dead letter trims a little too
    assert redis.zcard(lowered.keys.dlq[1]) == count - TRIM_BATCH + 1 - KEEP_TRIM_BATCH

    redis.config_resetstat()
    assert dlq.trim() == count - TRIM_BATCH + 1 - KEEP_TRIM_BATCH - 100  # the rest, a batch a call
    assert calls(redis, "evalsha") == 2  # 1000, then the 301 left over (fewer than a batch: done)
    summary = dlq.summary()
    assert (summary["size"], summary["dropped_by_retention"]) == (100, count + 1 - 100)
    assert [item_id.decode() for item_id in redis.zrange(lowered.keys.dlq[1], -1, -1)] == ["stripe-new0000"]


def test_index_entries_without_their_item_are_trimmed_too(env: dict[str, str], redis: Redis) -> None:
    """More than a batch of them at the old end: kept, every call trimmed them again and trim() never ended."""
    store = Store.from_settings(redis, Settings.from_env({**env, "RELAY_DLQ_MAX_ITEMS": "5"}))
    redis.zadd(store.keys.dlq[1], {f"stripe-orphan{n}": time.time() - 3600 + n for n in range(TRIM_BATCH + 50)})
    fill(store, 5)  # each dead letter trims a little (KEEP_TRIM_BATCH), trim() the rest
    store.dlq().trim()
    summary = store.dlq().summary()
    assert redis.zcard(store.keys.dlq[1]) == 5 == summary["size"]
    assert summary["dropped_by_retention"] == TRIM_BATCH + 50


# Over HTTP and from a terminal: what the console and `relay dlq` ask at sign-in and before a replay.


@pytest.fixture
def served(env: dict[str, str], redis: Redis) -> Iterator[str]:
    server = BackgroundServer(create_app(Settings.from_env({**env, "RELAY_ADMIN_TOKEN": TOKEN}))).start()
    yield server.base_url
    server.stop()


def test_the_consoles_first_page_and_dry_run_read_one_item_and_none(
    served: str, settings: Settings, redis: Redis
) -> None:
    fill(Store.from_settings(redis, settings), 1203)
    http = urllib3.PoolManager(retries=False, timeout=10, headers={"Authorization": f"Bearer {TOKEN}"})
    try:
        redis.config_resetstat()
        page = http.request("GET", f"{served}/admin/dlq?limit=1").json()
        assert (page["total"], len(page["items"]), calls(redis, "hmget")) == (1203, 1, 1)
        dry = http.request("POST", f"{served}/admin/dlq/replay", json={"all": True, "dry_run": True}).json()
        assert (dry["matched"], calls(redis, "hmget")) == (1203, 1)
    finally:
        close_connections(http)


def test_relay_dlq_list_and_dry_run_read_only_what_they_show(settings: Settings, redis: Redis) -> None:
    fill(Store.from_settings(redis, settings), 1203)
    redis.config_resetstat()

    listed = relay_dlq(settings, "list", "--limit", "5", "--json")
    assert listed.returncode == 0 and json.loads(listed.stdout)["total"] == 1203
    dry = relay_dlq(settings, "replay", "--all", "--dry-run", "--json")
    assert dry.returncode == 0 and json.loads(dry.stdout)["matched"] == 1203
    assert calls(redis, "hmget") == 1  # the listed page's five items


def test_a_replay_in_batches_reads_each_item_once_and_keeps_only_ids_between_batches(
    settings: Settings, redis: Redis, counting: CountingRedis, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each batch goes on from where the last one ended: it neither reads again nor checks again what
    the batches before it took, though half of them stay in the queue (their updates name no user)."""
    monkeypatch.setattr(DeadLetterQueue, "PAGE_SCAN", 50)
    store = Store.from_settings(redis, settings)
    ids = fill(store, 1203)
    for item_id in ids[::2]:
        item = store.dlq().get(item_id)
        assert item is not None
        nobody = {**item["update"], "user_id": None, "customer_id": None}
        redis.hset(store.keys.dlq[0], item_id, json.dumps({**item, "update": nobody}))
    operator = Operator(Store.from_settings(counting, settings), settings)
    answers = [operator.replay_batch(DlqFilter(), batch=100)]
    while answers[-1]["cursor"]:
        answers.append(operator.replay_batch(DlqFilter(), batch=100, cursor=answers[-1]["cursor"]))

    assert [answer["selected"] for answer in answers] == [100] * 12 + [3]
    assert sum(answer["outcomes"].get(REPLAYED, 0) for answer in answers) == 601
    # A batch reads at most one page past its last item to know whether more follow.
    assert counting.ids_checked <= 1203 + 13 * 50
    assert counting.items_read <= 1203 + 13 * 50
    # The ids given were kept between batches; the last batch leaves nothing behind.
    assert list(redis.scan_iter(f"{operator.store.keys.prefix}:dlq:replayed:*")) == []


def test_relay_dlq_replay_all_goes_in_batches_with_a_progress_bar(settings: Settings, redis: Redis) -> None:
    """1,203 items: two batches of 1,000 and one of 203 (the ids a batch gave are kept between batches);
    the bar on stderr counts them, and --json keeps stderr for errors."""
    fill(Store.from_settings(redis, settings), 1203)
    replayed = relay_dlq(settings, "replay", "--all")
    assert replayed.returncode == 0, replayed.stderr
    assert replayed.stdout.strip() == "matched: 1203, selected: 1203, dry_run: False, outcomes: {'replayed': 1203}"
    assert "1203/1203" in replayed.stderr
    assert list(redis.scan_iter(f"{Store.from_settings(redis, settings).keys.prefix}:dlq:replayed:*")) == []

    store = Store.from_settings(redis, settings)
    for n in range(3):
        assert store.reject(dead_letter(n, time.time(), tag="new"), f"new{n}")
    quiet = relay_dlq(settings, "replay", "--all", "--json")
    assert quiet.returncode == 0 and quiet.stderr == ""
    assert json.loads(quiet.stdout) == {"matched": 3, "selected": 3, "dry_run": False, "outcomes": {"replayed": 3}}
