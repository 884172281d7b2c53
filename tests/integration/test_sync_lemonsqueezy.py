"""`relay sync lemonsqueezy`: Lemon Squeezy's subscriptions (every status) become the updates their
`subscription_updated` webhooks would make, named by customer id (the user learned for it when there is
one); twice sends nothing new; an interrupted sync continues from the page it fed last; Lemon Squeezy keeps
no event history, so backfill and reconcile refuse it. Against the Lemon Squeezy API double on a real socket."""

from __future__ import annotations

import copy
import itertools
import json
import threading
import time
import types
from typing import Any

import pytest
import urllib3
from redis import Redis

from service.backfill import api_reader, lemonsqueezy_reader
from service.backfill.feed import Feeder
from service.backfill.lemonsqueezy_reader import LemonSqueezyReader
from service.backfill.lemonsqueezy_sync import LEMONSQUEEZY
from service.backfill.sync import Checkpoint, sync
from service.cli import main
from service.config import Settings
from service.devtools.lemonsqueezy_api import LemonSqueezyApiServer
from service.devtools.usercom_sandbox import SandboxServer
from service.store import keys
from service.store.ledger import Store
from tests.conftest import load_fixture
from tests.integration.conftest import LEMONSQUEEZY_KEY
from tests.integration.test_backfill import drain, run

WEBHOOK = load_fixture("pay.subscription_updated.json", "lemon_squeezy")  # its `data`: what the API lists
START = int(time.time()) - 30 * 86400


def iso(seconds: int) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S.000000Z", time.gmtime(seconds))


def subscription(n: int, *, customer: int, status: str = "active", product: str = "Pro") -> dict[str, Any]:
    """Subscription `n` (created n minutes after START: the list is newest first) of `customer`; an expired
    one ended (and was last updated) a day after it was created."""
    created, ended = START + 60 * n, START + 60 * n + 86400
    obj = copy.deepcopy(WEBHOOK["data"])
    obj["id"] = str(n)
    obj["attributes"].update(
        customer_id=customer,
        status=status,
        status_formatted=status.replace("_", " ").title(),
        product_name=product,
        user_name=f"Buyer {customer}",
        user_email=f"buyer{customer}@example.com",
        created_at=iso(created),
        updated_at=iso(ended if status == "expired" else created),
        renews_at=iso(created + 30 * 86400),
        trial_ends_at=None,
        ends_at=iso(ended) if status == "expired" else None,
    )
    return obj


def usercom_calls(sandbox: SandboxServer) -> int:
    return sum(1 for r in sandbox.state.requests if r["path"].startswith("/api/public/"))


def test_lemonsqueezy_sync_brings_the_crm_to_the_subscriptions_state_and_twice_sends_nothing_new(
    lemonsqueezy_env: dict[str, str],
    lemonsqueezy_api: LemonSqueezyApiServer,
    sandbox: SandboxServer,
    redis: Redis,
    capsys: pytest.CaptureFixture[str],
) -> None:
    settings = Settings.from_env(lemonsqueezy_env)
    redis.hset(keys.customer_map("lemonsqueezy"), "1001", "u_dan")  # learned from a webhook with custom data
    lemonsqueezy_api.state.subscriptions.extend(
        [
            subscription(1, customer=1001),
            subscription(2, customer=1002, status="on_trial", product="Team"),
            # 1003 moved to an active subscription, then its "Legacy" one expired (updated last): stamped with
            # their updated_at the expired one would win; both read the same second, a tie would go to the
            # greater event id ("sync_9_..." > "sync_10_..."): only the expired one's stamp, its ends_at, older
            # than the read, lets the live one win
            subscription(10, customer=1003),
            subscription(9, customer=1003, status="expired", product="Legacy"),
        ]
    )
    code, first = run(capsys, "sync", "lemonsqueezy", "--json")  # the default pace: 4 reads a second
    assert (code, first["accepted"], first["duplicate"], first["resumed"], first["api_calls"]) == (0, 4, 0, False, 1)
    drain(settings)
    dan, trial, moved = (sandbox.state.user_by_custom_id(u) for u in ("u_dan", "1002", "1003"))
    assert dan is not None and trial is not None and moved is not None
    assert (dan["attributes"]["subscription_status"], dan["attributes"]["plan"]) == ("active", "Pro")
    assert sandbox.state.user_by_custom_id("1001") is None  # the learned user, not the customer id
    assert (trial["attributes"]["subscription_status"], sorted(trial["tags"])) == ("on_trial", ["subscriber", "trial"])
    assert (moved["attributes"]["subscription_status"], moved["attributes"]["plan"]) == ("active", "Pro")
    assert "subscriber" in moved["tags"]
    [delivery] = run(capsys, "trace", "u_dan", "--json")[1]["entries"]
    assert [i.split("_")[:2] for i in delivery["event_ids"]] == [["sync", "1"]]  # not an id of its updated_at
    calls = usercom_calls(sandbox)
    lemonsqueezy_api.state.clock = lambda: time.time() + 3600  # the signed `urls` are new at the next read
    code, second = run(capsys, "sync", "lemonsqueezy", "--json")
    assert (code, second["accepted"], second["duplicate"]) == (0, 0, 4)
    drain(settings)
    assert usercom_calls(sandbox) == calls


def test_an_older_unpaid_subscription_read_pages_later_loses_to_the_live_one_that_replaced_it(
    lemonsqueezy_env: dict[str, str],
    lemonsqueezy_api: LemonSqueezyApiServer,
    sandbox: SandboxServer,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Unpaid and paused subscriptions have no ends_at: stamped with their read time, the replaced one (older,
    so on a later page of the newest-first list, read seconds later) won over the live one."""
    old = subscription(1, customer=1003, status="unpaid", product="Legacy")
    lemonsqueezy_api.state.subscriptions.extend([old, subscription(2, customer=4242), subscription(3, customer=1003)])
    monkeypatch.setattr(lemonsqueezy_reader, "PAGE_SIZE", 1)  # a page each: 3, 2, then 1
    ticks = itertools.count()
    clock = types.SimpleNamespace(time=lambda: time.time() - 60 + 10 * next(ticks))  # pages asked 10 s apart
    monkeypatch.setattr(api_reader, "time", clock)  # where the readers note when a page was asked for
    code, summary = run(capsys, "sync", "lemonsqueezy", "--json", "--max-rps", "1000")
    assert (code, summary["accepted"]) == (0, 3)
    drain(Settings.from_env(lemonsqueezy_env))
    moved = sandbox.state.user_by_custom_id("1003")
    assert moved is not None
    assert (moved["attributes"]["subscription_status"], moved["attributes"]["plan"]) == ("active", "Pro")


def test_an_interrupted_lemonsqueezy_sync_continues_from_the_page_it_fed_last(
    lemonsqueezy_env: dict[str, str],
    lemonsqueezy_api: LemonSqueezyApiServer,
    redis: Redis,
    capsys: pytest.CaptureFixture[str],
) -> None:
    settings = Settings.from_env(lemonsqueezy_env)
    lemonsqueezy_api.state.subscriptions.extend(subscription(n, customer=5000 + n) for n in range(1, 251))
    stop = threading.Event()
    stop.set()  # as Ctrl-C during the first page
    reader = LemonSqueezyReader(LEMONSQUEEZY_KEY, lemonsqueezy_api.base_url, max_rps=1000)
    summary = sync(
        reader, Feeder(settings, Store.from_settings(redis, settings), "lemonsqueezy"), shape=LEMONSQUEEZY, stop=stop
    )
    assert summary["interrupted"] and summary["accepted"] == 100
    checkpoint = Checkpoint(redis, "lemonsqueezy", LEMONSQUEEZY.phases)
    assert checkpoint.load() == ("subscriptions", "151") and checkpoint.reread() == {"page[number]": "1"}  # 250 .. 151
    # Five subscriptions created since come first: the list moves on by five, the page fed last is read again
    lemonsqueezy_api.state.subscriptions.extend(subscription(n, customer=5000 + n) for n in range(251, 256))
    code, rest = run(capsys, "sync", "lemonsqueezy", "--json", "--max-rps", "1000")
    assert (code, rest["resumed"], rest["accepted"], rest["api_calls"]) == (0, True, 155, 3)
    assert rest["duplicate"] == 100  # page 1 again (95 fed) and the 5 it pushed onto page 2: none is missed
    assert lemonsqueezy_api.state.requests[1]["args"]["page[number]"] == ["1"]
    assert not redis.exists(keys.sync_checkpoint("lemonsqueezy"))
    assert Store.from_settings(redis, settings).ledger()["received"] == 255  # each subscription once


def test_a_resumed_lemonsqueezy_sync_skips_what_the_page_fed_last_held_up_to_its_checkpoint(
    lemonsqueezy_env: dict[str, str],
    lemonsqueezy_api: LemonSqueezyApiServer,
    redis: Redis,
    capsys: pytest.CaptureFixture[str],
) -> None:
    lemonsqueezy_api.state.subscriptions.extend(subscription(n, customer=5000 + n) for n in range(1, 151))
    Checkpoint(redis, "lemonsqueezy", LEMONSQUEEZY.phases).save("subscriptions", "51", {"page[number]": "1"})
    code, rest = run(capsys, "sync", "lemonsqueezy", "--json", "--max-rps", "1000")
    assert (code, rest["resumed"], rest["accepted"], rest["duplicate"], rest["api_calls"]) == (0, True, 50, 0, 2)


def test_a_refused_lemonsqueezy_key_is_one_line_exit_3_without_the_key(
    lemonsqueezy_env: dict[str, str], monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("LEMONSQUEEZY_API_KEY", "eyJ0eXAi.expired-lemon-key-not-the-right-one")
    assert main(["sync", "lemonsqueezy", "--json"]) == 3
    out, err = capsys.readouterr()
    assert err.count("\n") == 1 and "LEMONSQUEEZY_API_KEY" in err and "401 Unauthorized" in err
    assert "not-the-right-one" not in out + err


def test_a_lemonsqueezy_429_backs_off_and_the_read_goes_on(
    lemonsqueezy_env: dict[str, str], lemonsqueezy_api: LemonSqueezyApiServer, capsys: pytest.CaptureFixture[str]
) -> None:
    lemonsqueezy_api.state.subscriptions.extend(subscription(n, customer=7000 + n) for n in range(1, 4))
    lemonsqueezy_api.state.fail_next(429, "1")
    code, summary = run(capsys, "sync", "lemonsqueezy", "--json")
    assert (code, summary["accepted"], summary["rate_limited"], summary["api_calls"]) == (0, 3, 1, 2)
    assert lemonsqueezy_api.state.calls("/v1/subscriptions") == 2


@pytest.mark.parametrize(
    "argv",
    [["backfill", "lemonsqueezy"], ["backfill", "lemonsqueezy", "--since", "7d"], ["reconcile", "lemonsqueezy"]],
)
def test_backfill_and_reconcile_refuse_lemonsqueezy_in_one_line_pointing_at_sync(
    argv: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exited:
        main(argv)
    err = capsys.readouterr().err
    assert exited.value.code == 2 and err.count("\n") == 1
    assert "keeps no event history" in err and "`relay sync lemonsqueezy`" in err


def test_customers_only_is_refused_for_lemonsqueezy(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["sync", "lemonsqueezy", "--customers-only"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--customers-only" in err and "subscriptions only" in err


def test_the_lemonsqueezy_api_double_answers_as_its_docs_say(lemonsqueezy_api: LemonSqueezyApiServer) -> None:
    lemonsqueezy_api.state.subscriptions.extend(subscription(n, customer=9000 + n) for n in range(1, 13))
    http = urllib3.PoolManager(retries=False)
    auth = {"Authorization": f"Bearer {LEMONSQUEEZY_KEY}", "Accept": "application/vnd.api+json"}

    def get(path: str, headers: dict[str, str] = auth) -> tuple[int, dict[str, Any]]:
        answer = http.request("GET", f"{lemonsqueezy_api.base_url}{path}", headers=headers)
        assert answer.headers["Content-Type"] == "application/vnd.api+json"
        return answer.status, json.loads(answer.data)

    refused = {"detail": "Unauthenticated.", "status": "401", "title": "Unauthorized"}
    assert get("/v1/subscriptions", {}) == (401, {"jsonapi": {"version": "1.0"}, "errors": [refused]})
    status, body = get("/v1/subscriptions?page[number]=2")  # page[size] defaults to 10
    assert status == 200 and [s["id"] for s in body["data"]] == ["2", "1"]  # newest first
    assert body["meta"]["page"] == {"currentPage": 2, "from": 11, "lastPage": 2, "perPage": 10, "to": 12, "total": 12}
    assert "next" not in body["links"] and "page%5Bnumber%5D=1&page%5Bsize%5D=10" in body["links"]["prev"]
    status, body = get("/v1/subscriptions?page[size]=5")
    assert "page%5Bnumber%5D=2&page%5Bsize%5D=5" in body["links"]["next"] and "prev" not in body["links"]
    status, body = get("/v1/subscriptions?page[size]=101")
    assert status == 400 and body["errors"][0]["source"] == {"parameter": "page[size]"}
    assert get("/v1/customers/1")[0] == 404
    lemonsqueezy_api.state.fail_next(429, "3")
    answer = http.request("GET", f"{lemonsqueezy_api.base_url}/v1/subscriptions", headers=auth)
    assert (answer.status, answer.headers["Retry-After"]) == (429, "3")
