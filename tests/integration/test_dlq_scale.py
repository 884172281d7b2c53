"""A large dead-letter queue, against a real Redis: what retention does, in script calls (never in time),
counted by Redis itself (INFO commandstats).
"""

from __future__ import annotations

import time

from redis import Redis

from service.config import Settings
from service.store.dlq import KEEP_TRIM_BATCH, TRIM_BATCH
from service.store.ledger import Store
from tests.integration.test_dlq_scan import dead_letter, fill

TOKEN = "admin-token-for-tests-0123456789"


def calls(redis: Redis, command: str) -> int:
    return int(redis.info("commandstats").get(f"cmdstat_{command}", {}).get("calls", 0))


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
