"""The Stripe API double, driven through the official stripe package: Stripe's list semantics."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import stripe

from service.devtools.stripe_api import StripeApiServer

KEY = "rk_test_readonly_0123456789"


@pytest.fixture
def api() -> Iterator[StripeApiServer]:
    server = StripeApiServer(KEY).start()
    for i in range(25):
        kind = "customer.updated" if i % 2 else "invoice.paid"
        event = {"id": f"evt_{i}", "object": "event", "created": 1000 + i, "type": kind, "data": {"object": {}}}
        server.state.add_event(event, delivered=i % 3 != 0)
    yield server
    server.stop()


def client(server: StripeApiServer, key: str = KEY) -> stripe.StripeClient:
    return stripe.StripeClient(key, base_addresses={"api": server.base_url}, max_network_retries=0)


def test_pages_newest_first_with_cursors(api: StripeApiServer) -> None:
    seen, after = [], None
    while True:
        params: dict = {"limit": 10, **({"starting_after": after} if after else {})}
        page = client(api).v1.events.list(params=params)
        seen += [e.id for e in page.data]
        if not page.has_more:
            break
        after = page.data[-1].id
    assert seen == [f"evt_{i}" for i in range(24, -1, -1)]


def test_filters_created_types_and_delivery(api: StripeApiServer) -> None:
    page = client(api).v1.events.list(
        params={"limit": 100, "created": {"gte": 1010, "lte": 1020}, "types": ["customer.updated"]}
    )
    assert [e.id for e in page.data] == [f"evt_{i}" for i in (19, 17, 15, 13, 11)] and not page.has_more
    undelivered = client(api).v1.events.list(params={"limit": 100, "delivery_success": False})
    assert [e.id for e in undelivered.data] == [f"evt_{i}" for i in (24, 21, 18, 15, 12, 9, 6, 3, 0)]


def test_limit_bounds_unknown_cursor_and_bad_key(api: StripeApiServer) -> None:
    with pytest.raises(stripe.InvalidRequestError) as too_many:
        client(api).v1.events.list(params={"limit": 101})
    assert too_many.value.param == "limit"
    with pytest.raises(stripe.InvalidRequestError) as missing:
        client(api).v1.events.list(params={"starting_after": "evt_nope"})
    assert missing.value.code == "resource_missing"
    with pytest.raises(stripe.AuthenticationError) as refused:
        client(api, "rk_test_wrong_key_000000000").v1.events.list()
    assert refused.value.http_status == 401 and "wrong_key" not in str(refused.value)


def test_injected_429_carries_retry_after(api: StripeApiServer) -> None:
    api.state.fail_next(429, "2")
    with pytest.raises(stripe.RateLimitError) as limited:
        client(api).v1.events.list()
    assert limited.value.http_status == 429 and limited.value.headers.get("Retry-After") == "2"
    assert len(client(api).v1.events.list().data) == 10  # the fault answered once


def test_subscriptions_default_hides_canceled(api: StripeApiServer) -> None:
    api.state.subscriptions += [
        {"id": "sub_a", "object": "subscription", "created": 1, "customer": "cus_1", "status": "active"},
        {"id": "sub_b", "object": "subscription", "created": 2, "customer": "cus_1", "status": "canceled"},
    ]
    assert [s.id for s in client(api).v1.subscriptions.list().data] == ["sub_a"]
    assert [s.id for s in client(api).v1.subscriptions.list(params={"status": "all"}).data] == ["sub_b", "sub_a"]


def test_subscriptions_expand_their_customer(api: StripeApiServer) -> None:
    api.state.customers.append({"id": "cus_1", "object": "customer", "created": 1, "email": "a@example.com"})
    api.state.subscriptions += [
        {"id": "sub_a", "object": "subscription", "created": 1, "customer": "cus_1", "status": "active"},
        {"id": "sub_b", "object": "subscription", "created": 2, "customer": "cus_gone", "status": "active"},
    ]
    page = client(api).v1.subscriptions.list(params={"expand": ["data.customer"]}).data
    assert [(s.id, s.customer if isinstance(s.customer, str) else s.customer.email) for s in page] == [
        ("sub_b", "cus_gone"),
        ("sub_a", "a@example.com"),
    ]
    with pytest.raises(stripe.InvalidRequestError, match="cannot be expanded"):
        client(api).v1.subscriptions.list(params={"expand": ["data.plan"]})
