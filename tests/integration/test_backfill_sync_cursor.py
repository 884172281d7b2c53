"""`relay sync stripe` when the object its cursor names is gone from Stripe's list (a customer
deleted since it was read): Stripe refuses it as `starting_after` (400 resource_missing), every
time; the sync reads on from that object's `created` second instead, and what comes again is a
duplicate. Against the Stripe API double, which answers as Stripe does."""

from __future__ import annotations

import threading
from typing import Any

import pytest
import stripe
from redis import Redis

from service.backfill.feed import Feeder
from service.backfill.stripe_reader import StripeReader
from service.backfill.sync import Checkpoint, sync
from service.config import Settings
from service.devtools.stripe_api import StripeApiServer
from service.store import keys
from service.store.ledger import Store
from tests.integration.conftest import API_KEY
from tests.integration.test_backfill import run
from tests.stripe_history import customer, subscription

START = 1_700_000_000


def seed_customers(stripe_api: StripeApiServer, count: int) -> None:
    for n in range(count):
        stripe_api.state.customers.append(customer(n, created=START + n))


def cursors(stripe_api: StripeApiServer) -> list[tuple[str | None, str | None]]:
    """(starting_after, created[lte]) of each customers request, in order."""
    asked = [r["args"] for r in stripe_api.state.requests if r["path"] == "/v1/customers"]
    return [(a.get("starting_after", [None])[0], a.get("created[lte]", [None])[0]) for a in asked]


def test_a_sync_whose_checkpoint_customer_was_deleted_resumes_from_its_second(
    api_env: dict[str, str], stripe_api: StripeApiServer, redis: Redis, capsys: pytest.CaptureFixture[str]
) -> None:
    settings = Settings.from_env(api_env)
    seed_customers(stripe_api, 150)
    stripe_api.state.customers[51]["created"] = START + 50  # the checkpoint's second: 51 is listed just before 50
    stop = threading.Event()
    stop.set()  # as Ctrl-C during the first page
    feeder = Feeder(settings, Store.from_settings(redis, settings), "stripe")
    sync(StripeReader(API_KEY, stripe_api.base_url, max_rps=1000), feeder, customers_only=True, stop=stop)
    assert Checkpoint(redis, "stripe", ("customers",)).load() == ("customers", "cus_000050")  # newest first
    stripe_api.state.delete_customer("cus_000050")
    stripe_api.state.requests.clear()

    code, rest = run(capsys, "sync", "stripe", "--customers-only", "--json")
    assert code == 0
    # 49 .. 0 are new; 51, of the checkpoint's second, comes again and is a duplicate
    assert (rest["resumed"], rest["accepted"], rest["duplicate"]) == (True, 50, 1)
    assert cursors(stripe_api) == [("cus_000050", None), (None, str(START + 50))]  # the gone cursor: asked once
    assert not redis.exists(keys.sync_checkpoint("stripe"))
    assert Store.from_settings(redis, settings).ledger()["received"] == 150  # each customer once


def test_a_customer_deleted_while_the_sync_reads_is_read_past(
    api_env: dict[str, str], stripe_api: StripeApiServer, redis: Redis
) -> None:
    settings = Settings.from_env(api_env)
    seed_customers(stripe_api, 250)

    class DeletingReader(StripeReader):
        """Each page's last customer is deleted in Stripe before the next page is asked for."""

        def pages(self, resource: str, params: dict[str, Any], after: str | None = None) -> Any:
            for page in super().pages(resource, params, after):
                yield page
                stripe_api.state.delete_customer(page[-1]["id"])

    feeder = Feeder(settings, Store.from_settings(redis, settings), "stripe")
    summary = sync(DeletingReader(API_KEY, stripe_api.base_url, max_rps=1000), feeder, customers_only=True)
    assert (summary["interrupted"], summary["accepted"], summary["duplicate"]) == (False, 250, 0)
    assert cursors(stripe_api) == [
        (None, None),
        ("cus_000150", None),
        (None, str(START + 150)),
        ("cus_000050", str(START + 150)),
        (None, str(START + 50)),
    ]


def test_a_gone_cursor_without_its_second_reads_the_phase_again(
    api_env: dict[str, str], stripe_api: StripeApiServer, redis: Redis, capsys: pytest.CaptureFixture[str]
) -> None:
    """A checkpoint written before the relay kept the second: the phase is read again from its start."""
    seed_customers(stripe_api, 3)
    checkpoint = {"phase": "customers", "after": "cus_000009", "order": "customers", "at": 1}  # --customers-only
    redis.hset(keys.sync_checkpoint("stripe"), mapping=checkpoint)
    code, summary = run(capsys, "sync", "stripe", "--customers-only", "--json")
    assert code == 0
    assert (summary["resumed"], summary["accepted"]) == (True, 3)
    assert cursors(stripe_api) == [("cus_000009", None), (None, None)]


def test_the_double_answers_a_deleted_customer_as_stripe_does(stripe_api: StripeApiServer) -> None:
    seed_customers(stripe_api, 3)
    stripe_api.state.subscriptions.append(subscription(1, created=START, plan="basic", status="canceled"))
    stripe_api.state.delete_customer("cus_000001")
    client = stripe.StripeClient(API_KEY, base_addresses={"api": stripe_api.base_url}, max_network_retries=0)
    assert [c.id for c in client.v1.customers.list()] == ["cus_000002", "cus_000000"]
    for _ in range(2):  # however often it is asked
        with pytest.raises(stripe.InvalidRequestError) as refused:
            client.v1.customers.list(params={"starting_after": "cus_000001"})
        error = refused.value
        assert (error.http_status, error.code, error.param) == (400, "resource_missing", "starting_after")
        assert error.user_message == "No such customer: 'cus_000001'"
    [sub] = client.v1.subscriptions.list(params={"status": "all", "expand": ["data.customer"]}).data
    assert sub.customer.to_dict() == {"id": "cus_000001", "object": "customer", "deleted": True}
