"""rq job ids: one per (source, event id, destination, attempt), never shared by two events."""

from __future__ import annotations

import itertools
import json
import re
from typing import Any

import pytest
from redis import Redis
from rq import SimpleWorker
from rq.serializers import JSONSerializer

from service.config import Settings
from service.core.update import UserUpdate
from service.devtools.usercom_sandbox import SandboxServer
from service.store import keys
from service.store.jobs import job_event_id, job_id_for
from service.store.ledger import Store
from tests.conftest import standard_event, standard_headers
from workers.delivery.context import configure
from workers.delivery.outcomes import JOB_SUFFIXES
from workers.runner import build_context

RQ_ID = re.compile(r"^[A-Za-z0-9_-]+$")
TRICKY = (
    "col.1 col:1 col_1 col-1 _col_d1 x x-a2 x-userkit x-replay5 x-t0123456789ab 2-a a-1 a--1 a- -a _ __ a_h1 "
    "msg_2LhL 9f1c-4b2e order-orders-1-1700000000000"
).split()


def an_update(event_id: str) -> UserUpdate:
    return UserUpdate(
        source="standard", event_id=event_id, event_type="user.updated", event_time=1, user_id="u1", customer_id=None
    )


def test_job_ids_are_rq_safe_and_never_shared() -> None:
    seen: dict[str, tuple[str, str, int, int | None]] = {}
    for event_id, destination, attempt, replay in itertools.product(TRICKY, ["usercom", "userkit"], [1, 2], [None, 7]):
        job_id = job_id_for(an_update(event_id), attempt, destination=destination, replay=replay)
        assert RQ_ID.match(job_id), job_id
        assert job_id not in seen, (job_id, seen.get(job_id), (event_id, destination, attempt, replay))
        seen[job_id] = (event_id, destination, attempt, replay)
        # the worker's suffix stripping gives back the id of the first attempt, never another event's
        assert JOB_SUFFIXES.sub("", job_id) == job_id_for(an_update(event_id), destination=destination, replay=replay)


def test_ids_already_safe_keep_their_job_ids() -> None:
    for event_id in ["evt_1NqZ", "msg_2LhL", "subscription_created-subscriptions-1-1673959431000", "pri_01h"]:
        assert job_event_id(event_id) == event_id


def post_standard(client: Any, msg_id: str, user_id: str) -> Any:
    body = json.dumps(standard_event(user_id, attributes={"plan": user_id})).encode()
    return client.post(
        "/webhooks/standard", data=body, headers=standard_headers(body, msg_id), content_type="application/json"
    )


def test_events_whose_ids_differ_by_punctuation_are_each_delivered(
    client: Any, redis: Redis, settings: Settings, sandbox: SandboxServer
) -> None:
    assert post_standard(client, "col.1", "user-a").status_code == 202
    assert post_standard(client, "col:1", "user-b").status_code == 202
    assert post_standard(client, "col_1", "user-c").status_code == 202
    ctx = build_context(settings, "usercom")
    configure(ctx)
    SimpleWorker([ctx.queues[keys.LIVE]], connection=redis, serializer=JSONSerializer).work(burst=True)
    for user in ["user-a", "user-b", "user-c"]:
        assert sandbox.state.user_by_custom_id(user) is not None, user
    ledger = Store.from_settings(redis, settings).ledger()
    assert (ledger["received"], ledger["delivered"], ledger["in_flight"]) == (3, 3, 0)


@pytest.mark.parametrize("msg_id", ["a/b", "a b", "é", "x" * 256])
def test_an_id_the_relay_cannot_store_as_it_is_is_refused(client: Any, msg_id: str) -> None:
    response = post_standard(client, msg_id, "u1")
    assert response.status_code == 422 and response.get_json()["error"]["code"] == "invalid_payload"
