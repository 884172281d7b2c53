"""`relay sync paddle`: the CRM's first billing state from Paddle's `GET /customers` and `GET /subscriptions`.

The same sync as Stripe's (service.backfill.sync: checkpoint, resumable, twice sends nothing new),
with Paddle's shape: each customer becomes the notification a `customer.updated` would be, each
subscription a `subscription.updated`, `occurred_at` the second before its page was asked for (a
newer webhook still wins). Paddle scopes customers to `active` by default: `status=active,archived` reads them
all; subscriptions are listed in every status by default. Read oldest id first (`order_by=id[ASC]`)
so a checkpoint's `after` cursor continues where it stopped. A subscription that makes no subscriber is
stamped with its `canceled_at` (a paused one has none), never later than the run's start
(service.backfill.sync.ReadTimes.ended), older than any page's read time, so a customer's live
subscription wins over the one it replaced whichever page each is on (a newer id is read later: a read
time would let it win).
"""

from __future__ import annotations

from typing import Any

from service.backfill.paddle_reader import rfc3339
from service.backfill.sync import ReadTimes, Shape, digest
from service.sources.base import iso_seconds
from service.sources.paddle.extract import SUBSCRIBED_STATUSES

EVENT_TYPES = {"customers": "customer.updated", "subscriptions": "subscription.updated"}


def snapshot_event(phase: str, obj: dict[str, Any], times: ReadTimes) -> dict[str, Any]:
    stamp = times.page
    if phase == "subscriptions" and obj.get("status") not in SUBSCRIBED_STATUSES:
        stamp = times.ended(iso_seconds(obj.get("canceled_at")))
    return {
        "event_id": f"sync_{obj['id']}_{digest(obj)}",
        "event_type": EVENT_TYPES[phase],
        "occurred_at": rfc3339(stamp),
        "data": obj,
    }


PADDLE = Shape(
    ("customers", "subscriptions"),
    snapshot_event,
    {
        "customers": {"status": "active,archived", "order_by": "id[ASC]"},
        "subscriptions": {"order_by": "id[ASC]"},
    },
)
