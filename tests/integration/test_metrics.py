"""GET /metrics after a known sequence of events (single process: counters as deltas)."""

from __future__ import annotations

import copy
from typing import Any

from prometheus_client import REGISTRY
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import stripe_event

CUSTOMER = {"id": "cus_1", "email": "a@b.co", "metadata": {"user_id": "u1"}}


def scrape(client: Any) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    response = client.get("/metrics")
    assert response.status_code == 200
    assert response.content_type.startswith("text/plain; version=0.0.4")
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(response.get_data(as_text=True))
        for s in family.samples
    }


def webhooks(outcome: str, event_type: str) -> float:
    labels = {"source": "stripe", "event_type": event_type, "outcome": outcome}
    return REGISTRY.get_sample_value("relay_webhooks_total", labels) or 0.0


def test_metrics_after_a_known_sequence(client: Any, post_event: Any) -> None:
    before = {
        k: webhooks(*k)
        for k in [
            ("accepted", "customer.created"),
            ("duplicate", "customer.created"),
            ("invalid_payload", "customer.subscription.updated"),
        ]
    }
    for n in range(3):
        assert (
            post_event(stripe_event("customer.created", copy.deepcopy(CUSTOMER), event_id=f"evt_{n}")).status_code
            == 202
        )
    assert post_event(stripe_event("customer.created", copy.deepcopy(CUSTOMER), event_id="evt_0")).status_code == 200
    invalid = stripe_event("customer.subscription.updated", {"id": "sub_1"}, event_id="evt_bad")
    assert post_event(invalid).status_code == 422
    assert webhooks("accepted", "customer.created") - before[("accepted", "customer.created")] == 3
    assert webhooks("duplicate", "customer.created") - before[("duplicate", "customer.created")] == 1
    bad = ("invalid_payload", "customer.subscription.updated")
    assert webhooks(*bad) - before[bad] == 1
    metrics = scrape(client)
    # three events for one user: one job, three events in flight
    assert metrics[("relay_queue_depth", (("destination", "usercom"), ("lane", "live")))] == 1
    assert metrics[("relay_queue_depth", (("destination", "usercom"), ("lane", "replay")))] == 0
    assert metrics[("relay_oldest_pending_age_seconds", (("destination", "usercom"), ("lane", "live")))] >= 0
    assert metrics[("relay_dlq_size", (("destination", "usercom"), ("reason", "invalid_payload")))] == 1
    assert metrics[("relay_dlq_size", (("destination", "usercom"), ("reason", "usercom_rejected")))] == 0
    assert metrics[("relay_events_total", (("destination", "usercom"), ("state", "received")))] == 4
    assert metrics[("relay_events_total", (("destination", "usercom"), ("state", "duplicates")))] == 1
    assert metrics[("relay_events_in_flight", (("destination", "usercom"),))] == 3
    assert metrics[("relay_ratelimit_pause_seconds", (("destination", "usercom"),))] == 0
    assert metrics[("relay_ratelimit_effective_rate", (("destination", "usercom"),))] == 1000  # no 429: the ceiling
    assert ("relay_ingest_duration_seconds_bucket", (("le", "0.005"), ("source", "stripe"))) in metrics


def test_an_unmapped_event_type_is_counted_as_other(client: Any, post_event: Any) -> None:
    """A signed sender's arbitrary type names no series of its own."""
    before = webhooks("ignored", "other")
    assert post_event(stripe_event("made.up.type\u2028x", {"id": "x_1"}, event_id="evt_odd")).status_code == 200
    assert webhooks("ignored", "other") - before == 1
    assert "made.up.type" not in scrape(client).__repr__()


def test_metrics_say_when_redis_is_down(settings: Any) -> None:
    from service import create_app
    from service.config import Settings
    from tests.ports import unused_port

    dead = Settings.from_env(
        {"REDIS_URL": f"redis://127.0.0.1:{unused_port()}/0", "STRIPE_WEBHOOK_SECRETS": "whsec_x"}, role="web"
    )
    metrics = scrape(create_app(dead).test_client())
    assert metrics[("relay_redis_up", ())] == 0
