"""`relay backfill paddle` and `relay reconcile paddle` against the Paddle API double (real socket,
PADDLE_API_BASE), on the same feed path as Stripe: Paddle's envelope and object schemas, the
mapping, dedup (an event accepted as a webhook is a duplicate, never delivered twice),
last-writer-wins by event time, the backfill lane."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from typing import Any

import pytest
import urllib3
from redis import Redis

from service.backfill import periodic
from service.backfill.paddle_reader import PaddleReader
from service.backfill.stripe_reader import ReadError
from service.cli import main
from service.config import Settings
from service.devtools.paddle_api import PaddleApiServer
from service.devtools.usercom_sandbox import SandboxServer
from service.store import keys
from service.store.ledger import Store
from tests.conftest import paddle_headers
from tests.integration.conftest import PADDLE_KEY
from tests.integration.test_backfill import drain, run
from tests.paddle_history import customer_id, final_plans, history, paddle_event


@pytest.fixture
def post_paddle(client: Any) -> Callable[[dict[str, Any]], Any]:
    def post(event: dict[str, Any]) -> Any:
        body = json.dumps(event).encode()
        return client.post("/webhooks/paddle", data=body, headers=paddle_headers(body), content_type="application/json")

    return post


def lose_a_third(
    paddle_api: PaddleApiServer, post_paddle: Callable[..., Any], events: list[dict[str, Any]]
) -> list[dict[str, Any]]:
    """Every event is in Paddle's event stream; every third never reached the relay."""
    lost = []
    for n, event in enumerate(events):
        paddle_api.state.add_event(event)
        if n % 3:
            assert post_paddle(event).status_code == 202
        else:
            lost.append(event)
    return lost


def test_paddle_backfill_brings_the_crm_to_the_state_of_the_whole_history(
    paddle_env: dict[str, str],
    paddle_api: PaddleApiServer,
    post_paddle: Callable[..., Any],
    sandbox: SandboxServer,
    redis: Redis,
    capsys: pytest.CaptureFixture[str],
) -> None:
    settings = Settings.from_env(paddle_env)
    events = history(users=6, steps=4, start=int(time.time()) - 3600)
    lost = lose_a_third(paddle_api, post_paddle, events)
    code, summary = run(capsys, "backfill", "paddle", "--since", "2h", "--json")
    assert code == 0
    assert (summary["read"], summary["accepted"], summary["duplicate"]) == (
        len(events),
        len(lost),
        len(events) - len(lost),
    )
    asked = paddle_api.state.requests[0]["args"]
    assert asked["order_by"] == ["id[DESC]"] and asked["per_page"] == ["200"] and "from" in asked
    assert sorted(asked["event_type"][0].split(",")) == sorted(settings.mapping.rules["paddle"])
    assert redis.llen(keys.USERCOM.rq_queue_key(keys.BACKFILL)) <= len(lost)
    drain(settings)
    for user, (plan, status) in final_plans(events).items():
        found = sandbox.state.user_by_custom_id(user)
        assert found is not None and found["email"] == f"user{int(user[4:])}@example.com", user
        assert (found["attributes"]["plan"], found["attributes"]["subscription_status"]) == (plan, status), user
    ledger = Store.from_settings(redis, settings).ledger()
    assert ledger["received"] == len(events) and ledger["in_flight"] == 0 and ledger["dead_lettered"] == 0
    assert ledger["delivered"] + ledger["coalesced"] == len(events)
    code, again = run(capsys, "backfill", "paddle", "--since", "2h", "--json")
    assert (code, again["accepted"], again["duplicate"]) == (0, 0, len(events))
    assert Store.from_settings(redis, settings).ledger()["received"] == len(events)


def test_paddle_reconcile_reports_and_heals_what_never_arrived(
    paddle_env: dict[str, str],
    client: Any,
    paddle_api: PaddleApiServer,
    post_paddle: Callable[..., Any],
    sandbox: SandboxServer,
    redis: Redis,
    capsys: pytest.CaptureFixture[str],
) -> None:
    events = history(users=4, steps=2, start=int(time.time()) - 3600)
    lost = lose_a_third(paddle_api, post_paddle, events)
    code, summary = run(capsys, "reconcile", "paddle", "--since", "2h", "--json")
    assert (code, summary["missing"], summary["healed"], summary["duplicate"]) == (
        0,
        len(lost),
        len(lost),
        len(events) - len(lost),
    )
    record = client.get("/status").get_json()["reconcile"]["paddle"]
    assert (record["missing"], record["healed"]) == (len(lost), len(lost))
    assert sorted(record["missing_ids"]) == sorted(e["event_id"] for e in lost)
    drain(Settings.from_env(paddle_env))
    for user, (plan, _status) in final_plans(events).items():
        assert sandbox.state.user_by_custom_id(user)["attributes"]["plan"] == plan  # type: ignore[index]
    code, again = run(capsys, "reconcile", "paddle", "--since", "2h", "--json")
    assert (code, again["missing"], again["healed"]) == (0, 0, 0)


def test_a_refund_pending_approval_answered_ignored_is_received_not_missing(
    paddle_env: dict[str, str],
    paddle_api: PaddleApiServer,
    post_paddle: Callable[..., Any],
    redis: Redis,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """An event the mapping sends nothing for is remembered apart from the accepted ones: reconcile counted
    it missing at every run, and fed it again each time."""
    at = int(time.time()) - 600
    adjustment = {
        "id": "adj_1",
        "action": "refund",
        "status": "pending_approval",
        "customer_id": customer_id(1),
        "currency_code": "USD",
        "totals": {"total": "1000"},
    }
    pending = paddle_event("adjustment.created", adjustment, at=at, n=1)
    paddle_api.state.add_event(pending)
    answer = post_paddle(pending)
    assert answer.status_code == 200 and answer.get_json()["status"] == "ignored"
    dry = run(capsys, "backfill", "paddle", "--since", "2h", "--dry-run", "--json")[1]
    assert (dry["read"], dry["duplicate"]) == (1, 1)
    code, summary = run(capsys, "reconcile", "paddle", "--since", "2h", "--json")
    assert (code, summary["missing"], summary["healed"]) == (0, 0, 0)
    assert Store.from_settings(redis, Settings.from_env(paddle_env)).ledger()["received"] == 1


def test_a_refused_paddle_key_is_one_line_exit_3_without_the_key(
    paddle_env: dict[str, str], monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("PADDLE_API_KEY", "pdl_sdbx_apikey_not_the_right_one_42")
    assert main(["backfill", "paddle", "--since", "1h", "--json"]) == 3
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "PADDLE_API_KEY" in err and "403 invalid_token" in err
    assert "not_the_right_one" not in err


def test_a_paddle_429_backs_off_after_retry_after_and_the_read_goes_on(
    paddle_env: dict[str, str], paddle_api: PaddleApiServer, capsys: pytest.CaptureFixture[str]
) -> None:
    for event in history(users=2, steps=1, start=int(time.time()) - 60):
        paddle_api.state.add_event(event)
    paddle_api.state.fail_next(429, "0", times=2)
    code, summary = run(capsys, "backfill", "paddle", "--since", "1h", "--json")
    # The window is read twice (its customers' first users, then the feed): two reads, two 429s.
    assert (code, summary["accepted"], summary["rate_limited"], summary["api_calls"]) == (0, 4, 2, 4)


def test_undelivered_only_is_refused_for_paddle(paddle_env: dict[str, str], capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["backfill", "paddle", "--since", "1h", "--undelivered-only"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "no delivery filter" in err and "relay reconcile paddle" in err


def test_the_reader_pages_newest_first_by_next_and_keeps_to_the_window(paddle_api: PaddleApiServer) -> None:
    start = int(time.time()) - 3600
    events = history(users=150, steps=2, start=start)  # 450 events: three pages of at most 200
    for event in events:
        paddle_api.state.add_event(event)
    reader = PaddleReader(PADDLE_KEY, paddle_api.base_url, max_rps=1000)
    since, until = start + 11, start + 440
    pages = list(reader.event_pages(since, until, ["customer.updated", "subscription.updated"]))
    got = [e["event_id"] for page in pages for e in page]
    kinds = ("customer.updated", "subscription.updated")
    timed = [(start + n + 1, e) for n, e in enumerate(events)]  # one second apart
    wanted = [e["event_id"] for at, e in reversed(timed) if e["event_type"] in kinds and since <= at <= until]
    assert got == wanted and reader.calls == len(pages) == 2
    assert all(len(page) <= 200 for page in pages)
    nexts = [r["args"].get("after") for r in paddle_api.state.requests]
    assert nexts[0] is None and nexts[1] == [pages[0][-1]["event_id"]]


def test_the_double_answers_as_paddle_documents(paddle_api: PaddleApiServer) -> None:
    http = urllib3.PoolManager(retries=False)
    base = paddle_api.base_url

    def get(path: str, key: str | None = PADDLE_KEY, scheme: str = "Bearer") -> tuple[int, dict[str, Any]]:
        headers = {"Authorization": f"{scheme} {key}"} if key else {}
        answer = http.request("GET", base + path, headers=headers)
        return answer.status, json.loads(answer.data)

    assert get("/events", key=None)[1]["error"]["code"] == "authentication_missing"
    assert get("/events", scheme="Basic")[0] == 403
    status, body = get("/events", key="pdl_wrong")
    assert (status, body["error"]["type"], body["error"]["code"]) == (403, "request_error", "invalid_token")
    assert get("/customers/ctm_1")[0] == 404 and get("/nowhere")[1]["error"]["code"] == "not_found"
    assert get("/events?per_page=0")[1]["error"]["code"] == "invalid_field"
    assert get("/events?order_by=occurred_at[ASC]")[0] == 400
    for event in history(users=3, steps=0, start=1_780_000_000):
        paddle_api.state.add_event(event)
    status, body = get("/events?per_page=500")
    pagination = body["meta"]["pagination"]
    assert status == 200 and (pagination["per_page"], pagination["has_more"], pagination["estimated_total"]) == (
        200,
        False,
        3,
    )
    assert [e["data"]["id"] for e in body["data"]] == ["ctm_000000", "ctm_000001", "ctm_000002"]  # id[ASC]: default
    _, first = get("/events?per_page=1&order_by=id[DESC]")
    assert first["data"][0]["data"]["id"] == "ctm_000002" and first["meta"]["pagination"]["has_more"]
    following = first["meta"]["pagination"]["next"].removeprefix(base)
    assert [e["data"]["id"] for e in get(following)[1]["data"]] == ["ctm_000001"]


def test_the_reader_refuses_without_a_key_and_names_the_variable() -> None:
    with pytest.raises(ReadError, match="PADDLE_API_KEY is required"):
        PaddleReader("", "http://127.0.0.1:9")


def test_periodic_reconcile_covers_paddle_when_its_key_is_set(
    paddle_env: dict[str, str], paddle_api: PaddleApiServer, post_paddle: Callable[..., Any], redis: Redis
) -> None:
    lost = lose_a_third(paddle_api, post_paddle, history(users=3, steps=1, start=int(time.time()) - 3600))
    settings = Settings.from_env({**paddle_env, "RELAY_RECONCILE_INTERVAL": "3600"})
    assert periodic.SOURCES == ("stripe", "paddle")
    first = periodic.run_once(settings, redis, source="paddle")
    assert first is not None and (first["missing"], first["healed"]) == (len(lost), len(lost))
    assert periodic.run_once(settings, redis, source="paddle") is None  # this interval's lock is taken
    assert periodic.last_run(redis, "paddle") is not None and periodic.last_run(redis, "stripe") is None
