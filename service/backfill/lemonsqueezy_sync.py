"""`relay sync lemonsqueezy`: the CRM's first billing state from Lemon Squeezy's `GET /v1/subscriptions`.

The same sync as Stripe's and Paddle's (service.backfill.sync: checkpoint, resumable, twice sends nothing
new), with Lemon Squeezy's shape: each subscription (every status) becomes the webhook a
`subscription_updated` would be, `{"meta": {"event_name": ...}, "data": <the resource object>}`, so its
schemas and mapping apply. Subscriptions only: Lemon Squeezy sends no webhook about a customer, so the mapping
has nothing to make of one, and a subscription names its customer (`customer_id`).

- Identity: the API does not return the checkout's `custom_data` (a webhook's `meta.custom_data`), so a
  synced subscription names its user by its customer id, as a webhook without custom data does: the user
  learned for that customer applies (service/store/customer_map.py), else the customer id itself.
- Time: Lemon Squeezy signs no event time; the relay reads a webhook's from `data.attributes.updated_at`
  (service/sources/lemonsqueezy/source.py), so that is where the stamp goes: the second before its page
  was asked for (a webhook about a later change still wins), or for a subscription that makes no
  subscriber (expired; unpaid; paused, unless for free) its `ends_at`, else (unpaid and paused have none)
  its own `updated_at`, when it last changed, never later than the run's start
  (service.backfill.sync.ReadTimes.ended): older than any page's read time, so a customer's live
  subscription wins over the one it replaced whichever page each is on (the list is newest first: the
  replaced one is read later, and a read time would let it win). The object keeps its other
  attributes as read.
- Id: `sync_<id>_<digest>` in `meta.relay_event_id`, which the source takes in place of the id it
  builds from the body (that one holds `updated_at`, the stamp: a second run would make new ids).
  The digest leaves out `attributes.urls`: signed links valid for 24 hours, made anew as they expire,
  that would make every run's ids new.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from service.backfill.sync import ReadTimes, Shape, digest
from service.sources.base import iso_seconds
from service.sources.lemonsqueezy.extract import serves

EVENT_NAMES = {"subscriptions": "subscription_updated"}
VOLATILE = frozenset({"urls"})  # attributes that change at each read, not with the subscription


def lemon_time(seconds: int) -> str:
    """Lemon Squeezy's own form of a time: 2023-01-17T12:43:51.000000Z."""
    return datetime.fromtimestamp(seconds, UTC).strftime("%Y-%m-%dT%H:%M:%S.000000Z")


def snapshot_event(phase: str, obj: dict[str, Any], times: ReadTimes) -> dict[str, Any]:
    attributes = obj.get("attributes") if isinstance(obj.get("attributes"), dict) else {}
    ended = iso_seconds(attributes.get("ends_at")) or iso_seconds(attributes.get("updated_at"))
    stamp = times.page if serves(attributes) else times.ended(ended)
    lasting = {**obj, "attributes": {k: v for k, v in attributes.items() if k not in VOLATILE}}
    return {
        "meta": {"event_name": EVENT_NAMES[phase], "relay_event_id": f"sync_{obj['id']}_{digest(lasting)}"},
        "data": {**obj, "attributes": {**attributes, "updated_at": lemon_time(stamp)}},
    }


LEMONSQUEEZY = Shape(("subscriptions",), snapshot_event, numbered=True)
