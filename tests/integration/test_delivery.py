"""Delivery through a real rq worker, a real Redis and the User.com sandbox on a real socket."""

from __future__ import annotations

import time
from typing import Any

import pytest
from redis import Redis
from rq import SimpleWorker
from rq.callbacks import Callback
from rq.job import Job
from rq.registry import ScheduledJobRegistry
from rq.serializers import JSONSerializer

from service.config import Settings
from service.core.update import UserUpdate
from service.devtools.usercom_sandbox import Fault, SandboxServer
from service.store import keys
from service.store.jobs import DELIVER_FUNC, ON_FAILURE_FUNC
from service.store.trace import read_trace
from tests.conftest import USERCOM_KEY
from tests.ports import unused_port
from workers.delivery.context import DeliveryContext, configure
from workers.delivery.job import deliver_update, deliver_user
from workers.ratelimit import RateLimiter
from workers.runner import build_context, limit_config


def update(
    event_id: str = "evt_1", user_id: str | None = "u1", customer_id: str | None = "cus_1", **fields: Any
) -> UserUpdate:
    values = {"standard": {"email": "ada@example.com"}, "custom": {"plan": "pro"}, "tags": ["subscriber"]}
    values.update(fields)
    return UserUpdate(
        source="stripe",
        event_id=event_id,
        event_type="customer.subscription.updated",
        event_time=1_700_000_000,
        user_id=user_id,
        customer_id=customer_id,
        **values,
    )


def accept_and_work(ctx: DeliveryContext, *updates: UserUpdate) -> None:
    """Queue through the same path as the web endpoint, then drain with a real rq worker."""
    for item in updates:
        assert ctx.store.accept(item)
    SimpleWorker([ctx.queues[keys.LIVE]], connection=ctx.redis, serializer=JSONSerializer).work(burst=True)


def calls(sandbox: SandboxServer) -> list[tuple[str, str]]:
    return [(r["method"], r["path"].removeprefix("/api/public")) for r in sandbox.state.requests]


def test_unknown_user_is_created_then_updated_by_its_usercom_id(ctx: DeliveryContext, sandbox: SandboxServer) -> None:
    accept_and_work(ctx, update())
    user = sandbox.state.user_by_custom_id("u1")
    assert user is not None
    assert calls(sandbox) == [
        ("PUT", "/users-by-id/u1/"),
        ("POST", "/users/update_or_create/"),
        ("PUT", f"/users/{user['id']}/"),  # API version 2 (the double refuses it otherwise)
        ("PUT", "/users-by-id/u1/"),  # the v2 call refused "plan" (not created yet): by our id, which creates it
    ]
    assert user["email"] == "ada@example.com"
    assert user["attributes"] == {"plan": "pro"}
    assert user["tags"] == ["subscriber"]
    ledger = ctx.store.ledger()
    assert (ledger["received"], ledger["delivered"], ledger["in_flight"]) == (1, 1, 0)


def test_known_user_takes_one_put_and_tags_only_add(ctx: DeliveryContext, sandbox: SandboxServer) -> None:
    accept_and_work(ctx, update("evt_1"))
    user = sandbox.state.user_by_custom_id("u1")
    assert user is not None
    sandbox.state.requests.clear()
    accept_and_work(ctx, update("evt_2", tags=["paying"], custom={"plan": "team"}))
    assert calls(sandbox) == [("PUT", f"/users/{user['id']}/")]  # the id learned when it was created
    user = sandbox.state.user_by_custom_id("u1")
    assert user is not None
    assert user["tags"] == ["subscriber", "paying"]
    assert user["attributes"] == {"plan": "team"}


def test_an_update_of_tags_alone_is_a_delivery(ctx: DeliveryContext, sandbox: SandboxServer) -> None:
    """A call carrying only tags was counted coalesced ("merged into another delivery"), untraced."""
    accept_and_work(ctx, update("evt_tags", standard={}, custom={}, tags=["beta"]))
    user = sandbox.state.user_by_custom_id("u1")
    assert user is not None and user["tags"] == ["beta"]
    ledger = ctx.store.ledger()
    assert (ledger["delivered"], ledger["coalesced"], ledger["in_flight"]) == (1, 0, 0)
    [entry] = read_trace(ctx.redis, keys.USERCOM, "u1")
    assert (entry["kind"], entry["tags"], entry["event_ids"]) == ("delivery", ["beta"], ["evt_tags"])


def test_user_ids_are_escaped_in_paths(ctx: DeliveryContext, sandbox: SandboxServer) -> None:
    accept_and_work(ctx, update(user_id="team 42+ü"))
    assert "/api/public/users-by-id/team%2042%2B%C3%BC/" in [r["raw_path"] for r in sandbox.state.requests]
    assert sandbox.state.user_by_custom_id("team 42+ü") is not None


def test_a_user_known_by_id_only_through_its_usercom_id(ctx: DeliveryContext, sandbox: SandboxServer) -> None:
    # User.com decodes %2F before routing, so an id with "/" is never found by PUT /users-by-id/;
    # the id update_or_create answers reaches it (for custom attributes already created in User.com).
    sandbox.state.custom_attributes.add("plan")
    accept_and_work(ctx, update("evt_1", user_id="team/42"))
    user = sandbox.state.user_by_custom_id("team/42")
    assert user is not None and user["attributes"] == {"plan": "pro"}
    accept_and_work(ctx, update("evt_2", user_id="team/42", custom={"plan": "team"}))
    assert sandbox.state.user_by_custom_id("team/42")["attributes"] == {"plan": "team"}  # type: ignore[index]
    assert ctx.store.dead_letters() == [] and ctx.store.ledger()["delivered"] == 2


def test_a_usercom_id_that_404s_is_forgotten(ctx: DeliveryContext, sandbox: SandboxServer) -> None:
    sandbox.state.seed(["u1"])
    ctx.redis.set(keys.usercom_id("u1"), 999999)  # e.g. the user was merged away in User.com
    accept_and_work(ctx, update())
    assert calls(sandbox) == [("PUT", "/users/999999/"), ("PUT", "/users-by-id/u1/")]
    real = sandbox.state.user_by_custom_id("u1")
    assert real is not None and int(ctx.redis.get(keys.usercom_id("u1"))) == real["id"]


def test_a_refused_api_key_is_retried_not_dead_lettered(
    ctx: DeliveryContext, env: dict[str, str], sandbox: SandboxServer
) -> None:
    """A 401 says the key is wrong, not the update: halving the update to find a refused value would
    call again and again, and dead-letter every event."""
    sandbox.state.seed(["u1"])
    for n in range(3):
        assert ctx.store.accept(update(f"evt_{n}", custom={f"field_{n}": n}))
    wrong = build_context(Settings.from_env({**env, "USERCOM_API_KEY": "w" * 64}), "usercom")
    configure(wrong)
    assert deliver_user(wrong, "stripe", "user:u1") == "retry_scheduled"
    assert [r["status"] for r in sandbox.state.requests] == [401]  # one call, no halving
    assert ctx.store.dead_letters() == [] and ctx.store.ledger()["in_flight"] == 3
    wrong.redis.close()
    configure(ctx)
    assert deliver_user(ctx, "stripe", "user:u1") == "delivered"  # the key fixed: the retry delivers
    user = sandbox.state.user_by_custom_id("u1")
    assert user is not None and user["attributes"] == {"field_0": 0, "field_1": 1, "field_2": 2}


def test_a_halved_update_keeps_using_the_known_user_com_id(ctx: DeliveryContext, sandbox: SandboxServer) -> None:
    """After one half of a refused merge went through, the other half is sent by User.com's id too
    (a send that learns nothing new left the delivery without the id it had)."""
    sandbox.state.seed(["u1"])
    real = sandbox.state.user_by_custom_id("u1")
    assert real is not None
    ctx.redis.set(keys.usercom_id("u1"), real["id"])
    good = [update(f"evt_{n}", standard={name: "x"}, custom={}, tags=[]) for n, name in enumerate(("city", "region"))]
    bad = update("evt_bad", standard={"company_id": "co_missing"}, custom={}, tags=[])
    for item in (*good, bad):
        assert ctx.store.accept(item)
    assert deliver_user(ctx, "stripe", "user:u1") == "delivered"
    went = [r["path"] for r in sandbox.state.requests if r["status"] == 200]
    assert went and all(path == f"/api/public/users/{real['id']}/" for path in went), went
    [item] = ctx.store.dead_letters()
    assert item["event_id"] == "evt_bad"


def test_usercom_400_is_dead_lettered_with_status_and_body(ctx: DeliveryContext, sandbox: SandboxServer) -> None:
    # (A value the documented rules refuse is left out instead: test_dropped_values.py. A company the
    # account does not have is refused by User.com alone.)
    accept_and_work(ctx, update(standard={"company_id": "co_missing"}))
    [item] = ctx.store.dead_letters()
    assert item["reason"] == "usercom_rejected"
    assert item["last_status"] == 400
    assert "object does not exist" in item["last_response"]
    assert item["user_id"] == "u1"
    assert item["update"]["event_id"] == "evt_1"
    assert USERCOM_KEY not in str(item)
    ledger = ctx.store.ledger()
    assert (ledger["dead_lettered"], ledger["in_flight"]) == (1, 0)


@pytest.mark.parametrize("status", [500, 502, 504])
def test_server_errors_schedule_a_retry(ctx: DeliveryContext, sandbox: SandboxServer, status: int) -> None:
    sandbox.state.faults.extend([Fault(status)])
    started = time.time()
    accept_and_work(ctx, update())
    scheduled = ScheduledJobRegistry(queue=ctx.queues[keys.LIVE])
    [retry] = scheduled.get_job_ids()
    assert retry.startswith("stripe-u") and retry.endswith("-a2")  # the user's job, attempt 2
    at = scheduled.get_scheduled_time(retry).timestamp()
    assert int(started) <= at <= time.time() + ctx.settings.retry_base_seconds + 1
    assert ctx.store.dead_letters() == []
    assert ctx.store.ledger()["in_flight"] == 1


def test_429_is_never_retried_sooner_than_retry_after(ctx: DeliveryContext, sandbox: SandboxServer) -> None:
    sandbox.state.faults.append(Fault(429, "3"))
    started = time.time()
    accept_and_work(ctx, update())
    registry = ScheduledJobRegistry(queue=ctx.queues[keys.LIVE])
    [retry] = registry.get_job_ids()
    at = registry.get_scheduled_time(retry).timestamp()
    assert at >= started + 3


def test_retry_job_delivers_when_usercom_recovers(ctx: DeliveryContext, sandbox: SandboxServer) -> None:
    sandbox.state.faults.append(Fault(503))
    accept_and_work(ctx, update())
    [retry] = ScheduledJobRegistry(queue=ctx.queues[keys.LIVE]).get_job_ids()
    job = ctx.queues[keys.LIVE].fetch_job(retry)
    assert job is not None and job.args[0] == keys.user_ref("stripe", "user:u1")
    assert job.args[1:] == [2, pytest.approx(time.time(), abs=5), "live"]
    ScheduledJobRegistry(queue=ctx.queues[keys.LIVE]).remove(job)
    ctx.queues[keys.LIVE].enqueue_job(job)  # what the scheduler does when the time comes
    SimpleWorker([ctx.queues[keys.LIVE]], connection=ctx.redis, serializer=JSONSerializer).work(burst=True)
    assert sandbox.state.user_by_custom_id("u1") is not None
    assert ctx.store.ledger()["delivered"] == 1


def test_retries_end_in_the_dead_letter_queue(ctx: DeliveryContext, sandbox: SandboxServer) -> None:
    sandbox.state.faults.append(Fault(500))
    first_failure = time.time() - ctx.settings.retry_give_up_seconds
    assert ctx.store.accept(update())
    assert deliver_update(ctx, update(), attempt=7, first_failure_at=first_failure) == "dead_lettered"
    [item] = ctx.store.dead_letters()
    assert item["reason"] == "retries_exhausted"
    assert (item["attempts"], item["last_status"]) == (7, 500)
    assert item["first_failure_at"] == pytest.approx(first_failure)


def test_the_last_retry_comes_at_the_give_up_time_not_before_it(ctx: DeliveryContext, sandbox: SandboxServer) -> None:
    """3 s before the give-up time, a 429 asking for 60 s (4 s at most here, RELAY_RETRY_MAX_DELAY_SECONDS):
    retried once more, in 3 s, not dead-lettered now (the next retry's time is cut to the give-up time)."""
    sandbox.state.faults.append(Fault(429, retry_after="60"))
    first_failure = time.time() - ctx.settings.retry_give_up_seconds + 3
    assert ctx.store.accept(update())
    assert deliver_update(ctx, update(), attempt=3, first_failure_at=first_failure) == "retry_scheduled"
    registry = ScheduledJobRegistry(queue=ctx.queues[keys.LIVE])
    [retry] = registry.get_job_ids()
    assert registry.get_scheduled_time(retry).timestamp() <= first_failure + ctx.settings.retry_give_up_seconds + 1
    assert ctx.store.dead_letters() == []


def test_network_errors_are_retried(settings: Settings, redis: Redis) -> None:
    closed = Settings.from_env(
        {
            "REDIS_URL": settings.redis_url,
            "USERCOM_API_URL": f"http://127.0.0.1:{unused_port()}/api/public",
            "USERCOM_API_KEY": USERCOM_KEY,
        },
        role="worker",
    )
    ctx = build_context(closed, "usercom")
    assert ctx.store.accept(update())
    assert deliver_update(ctx, update()) == "retry_scheduled"
    [retry] = ScheduledJobRegistry(queue=ctx.queues[keys.LIVE]).get_job_ids()
    assert retry.endswith("-a2")
    assert ctx.redis.exists(keys.USERCOM.in_hand("stripe", "user:u1"))  # kept for the retry


def test_event_without_any_identity_is_dead_lettered(ctx: DeliveryContext, sandbox: SandboxServer) -> None:
    accept_and_work(ctx, update(user_id=None, customer_id=None))
    [item] = ctx.store.dead_letters()
    assert item["reason"] == "unresolved_identity"
    assert sandbox.state.requests == []


def test_customer_to_user_mapping_is_learned(ctx: DeliveryContext, sandbox: SandboxServer) -> None:
    accept_and_work(ctx, update("evt_1", user_id="u-9", customer_id="cus_9"))
    accept_and_work(ctx, update("evt_2", user_id=None, customer_id="cus_9", tags=["paying"]))
    accept_and_work(ctx, update("evt_3", user_id=None, customer_id="cus_unknown"))
    user = sandbox.state.user_by_custom_id("u-9")
    assert user is not None and user["tags"] == ["subscriber", "paying"]
    assert sandbox.state.user_by_custom_id("cus_unknown") is not None  # fallback: the customer id
    assert sandbox.state.user_by_custom_id("cus_9") is None


def test_the_mapping_is_learned_at_intake_so_delivery_order_does_not_matter(
    ctx: DeliveryContext, sandbox: SandboxServer
) -> None:
    with_metadata = update("evt_1", user_id="u-9", customer_id="cus_9")
    customer_only = update("evt_2", user_id=None, customer_id="cus_9", tags=["paying"])
    assert ctx.store.accept(with_metadata) and ctx.store.accept(customer_only)
    assert deliver_update(ctx, customer_only) == "delivered"  # before the event that names the user
    assert sandbox.state.user_by_custom_id("cus_9") is None
    user = sandbox.state.user_by_custom_id("u-9")
    assert user is not None and "paying" in user["tags"]


def test_a_job_run_twice_counts_once_and_changes_nothing(ctx: DeliveryContext, sandbox: SandboxServer) -> None:
    item = update()
    assert ctx.store.accept(item)
    assert deliver_user(ctx, "stripe", "user:u1") == "delivered"
    calls_before = len(sandbox.state.requests)
    assert deliver_user(ctx, "stripe", "user:u1") == "settled"  # e.g. rq re-ran it after the worker died post-send
    assert len(sandbox.state.requests) == calls_before  # counted already: not sent again
    ledger = ctx.store.ledger()
    assert (ledger["received"], ledger["delivered"], ledger["in_flight"]) == (1, 1, 0)


def test_a_state_left_in_hand_by_a_dead_worker_is_sent_by_the_rerun(
    ctx: DeliveryContext, sandbox: SandboxServer
) -> None:
    sandbox.state.seed(["u1"])
    assert ctx.store.accept(update("evt_1", custom={"plan": "pro"}))
    # The worker took the state (and its lease lapsed), then died before counting.
    ctx.redis.rename(keys.USERCOM.user_state("stripe", "user:u1"), keys.USERCOM.in_hand("stripe", "user:u1"))
    assert ctx.store.accept(update("evt_2", custom={"plan": "team"}))  # a new job queued meanwhile
    assert deliver_user(ctx, "stripe", "user:u1") == "delivered"
    assert sandbox.state.user_by_custom_id("u1")["attributes"]["plan"] == "team"  # type: ignore[index]
    ledger = ctx.store.ledger()
    assert (ledger["received"], ledger["delivered"], ledger["coalesced"], ledger["in_flight"]) == (2, 1, 1, 0)
    assert not ctx.redis.exists(keys.USERCOM.in_hand("stripe", "user:u1"))


def test_crashing_job_is_dead_lettered_as_internal_error(ctx: DeliveryContext, redis: Redis) -> None:
    item = update()
    assert ctx.store.accept(item)
    [job_id] = ctx.queues[keys.LIVE].job_ids
    # Overwrite the queued job with data this code version cannot read (a per-event job's payload).
    Job.create(
        DELIVER_FUNC,
        args=({**item.to_dict(), "unexpected": 1}, 1, None),
        id=job_id,
        connection=redis,
        serializer=JSONSerializer,
        origin=keys.USERCOM.queue_name(keys.LIVE),
        on_failure=Callback(ON_FAILURE_FUNC),
    ).save()
    SimpleWorker([ctx.queues[keys.LIVE]], connection=ctx.redis, serializer=JSONSerializer).work(burst=True)
    [dead] = ctx.store.dead_letters()
    assert dead["reason"] == "internal_error"
    assert dead["event_id"] == "evt_1"
    assert redis.zcard(f"rq:failed:{keys.USERCOM.queue_name(keys.LIVE)}") == 1


def test_a_user_held_by_another_job_is_put_back_not_failed(ctx: DeliveryContext, sandbox: SandboxServer) -> None:
    item = update()
    assert ctx.store.accept(item)
    ctx.redis.set(keys.USERCOM.user_lock("u1"), "another-job", px=60_000)
    assert deliver_update(ctx, item, attempt=2) == "user_busy"
    [job_id] = ScheduledJobRegistry(queue=ctx.queues[keys.LIVE]).get_job_ids()
    job = ctx.queues[keys.LIVE].fetch_job(job_id)
    assert job is not None and job_id.startswith("stripe-u") and "-t" in job_id
    assert job.args[1:] == [2, None, "live"]  # same attempt, no failure clock started
    assert sandbox.state.requests == []


def _run_scheduled_now(ctx: DeliveryContext) -> None:
    """What rq's scheduler does when their time comes."""
    queue = ctx.queues[keys.LIVE]
    registry = ScheduledJobRegistry(queue=queue)
    for job_id in registry.get_job_ids():
        job = queue.fetch_job(job_id)
        registry.remove(job_id)
        assert job is not None
        queue.enqueue_job(job)


def test_updates_waiting_for_one_user_go_in_one_put(ctx: DeliveryContext, sandbox: SandboxServer) -> None:
    sandbox.state.seed(["u1", "u2"])
    items = [
        update(
            f"evt_{n}",
            user_id=f"u{1 + n % 2}",
            customer_id=f"cus_{1 + n % 2}",  # each user its own customer: one is never re-pointed
            custom={"plan": f"p{n}", f"seen_{n}": True},
            tags=[f"t{n}"],
        )
        for n in range(10)
    ]
    items = [UserUpdate(**{**i.to_dict(), "event_time": 1000 + n}) for n, i in enumerate(items)]
    RateLimiter(ctx.redis, limit_config(ctx.settings, "usercom"), destination_keys=keys.USERCOM).pause(
        60
    )  # User.com throttles: a backlog builds
    accept_and_work(ctx, *items)
    assert sandbox.state.requests == []
    # One job per user, not per event; the users' states hold the merged values and the 5 events each.
    assert ctx.store.ledger()["received"] == 10
    for user in ("u1", "u2"):
        fields = ctx.redis.hkeys(keys.USERCOM.user_state("stripe", f"user:{user}"))
        fields += ctx.redis.hkeys(keys.USERCOM.in_hand("stripe", f"user:{user}"))  # taken, then throttled
        assert sum(1 for f in fields if f.startswith(b"e:")) == 5
    ctx.redis.delete(keys.USERCOM.limiter_paused_until)  # the pause ends
    _run_scheduled_now(ctx)
    SimpleWorker([ctx.queues[keys.LIVE]], connection=ctx.redis, serializer=JSONSerializer).work(burst=True)
    assert [r["method"] for r in sandbox.state.requests] == ["PUT", "PUT"]  # one per user, not ten
    u1 = sandbox.state.user_by_custom_id("u1")
    assert u1 is not None
    assert u1["attributes"] == {"plan": "p8", **{f"seen_{n}": True for n in (0, 2, 4, 6, 8)}}
    assert u1["tags"] == ["t0", "t2", "t4", "t6", "t8"]
    ledger = ctx.store.ledger()
    assert (ledger["delivered"], ledger["coalesced"], ledger["in_flight"]) == (2, 8, 0)


def test_a_refused_merge_isolates_the_update_user_com_refuses(ctx: DeliveryContext, sandbox: SandboxServer) -> None:
    sandbox.state.seed(["u1"])
    good = update("evt_good", custom={"plan": "pro"})
    bad = update("evt_bad", standard={"company_id": "co_missing"}, custom={})
    other = update("evt_other", standard={}, custom={"seats": 3}, tags=[])
    assert ctx.store.accept(good) and ctx.store.accept(bad) and ctx.store.accept(other)
    assert len(ctx.queues[keys.LIVE].job_ids) == 1  # one job for the user
    assert deliver_user(ctx, "stripe", "user:u1") == "delivered"
    user = sandbox.state.user_by_custom_id("u1")
    assert user is not None and user["attributes"] == {"plan": "pro", "seats": 3} and user["gender"] == "unknown"
    [item] = ctx.store.dead_letters()
    assert (item["event_id"], item["reason"]) == ("evt_bad", "usercom_rejected")
    assert item["update"]["standard"] == {"company_id": "co_missing"}  # what it carried that was refused, for a replay
    ledger = ctx.store.ledger()
    assert (ledger["delivered"], ledger["coalesced"], ledger["dead_lettered"], ledger["in_flight"]) == (1, 1, 1, 0)
