"""`relay dlq` from a terminal, against a real Redis."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from marshmallow import ValidationError
from redis import Redis

from service.cli import main
from service.config import Settings
from service.core.dead_letter import DeadLetter
from service.intake import invalid_item
from service.sources.base import Described
from service.store import keys
from service.store.ledger import Store
from service.store.ledger_user import EventOutcome
from tests.conftest import an_update, stripe_event
from workers.ordering import Ordering

RELAY = str(Path(sys.executable).with_name("relay"))
# The code under test, when it is not the installed one (a worktree beside an editable install).
PYTHONPATH = {"PYTHONPATH": os.environ["PYTHONPATH"]} if os.environ.get("PYTHONPATH") else {}


@pytest.fixture
def store(settings: Settings, redis: Redis) -> Store:
    store = Store.from_settings(redis, settings)
    ordering = Ordering(redis, memory_ttl_seconds=3600, destination_keys=keys.USERCOM)
    for n, reason in enumerate(["usercom_rejected", "retries_exhausted", "usercom_rejected"]):
        update = an_update(f"evt_{n}", event_time=n, user_id=f"u{n}")
        assert store.accept(update)
        redis.delete(keys.USERCOM.rq_queue_key(keys.LIVE))
        item = DeadLetter(
            id=f"stripe-evt_{n}",
            reason=reason,
            source="stripe",
            event_type="invoice.paid",
            event_id=f"evt_{n}",
            event_time=n,
            message=f"problem {n}",
            update=update.to_dict(),
            user_id=f"u{n}",
            attempts=n + 1,
            last_status=400,
        )
        # as a delivery job dead-letters it: taken from the user's pending state, counted with its item
        with ordering.hold("stripe", f"user:u{n}", f"u{n}") as hold:
            hold.settle(store, [EventOutcome(f"evt_{n}", "dead_lettered", item)])
    return store


def dlq(settings: Settings, *args: str) -> subprocess.CompletedProcess[str]:
    env = {"PATH": "/usr/bin:/bin", "REDIS_URL": settings.redis_url, **PYTHONPATH}
    return subprocess.run([RELAY, "dlq", *args], env=env, capture_output=True, text=True, timeout=30)


def test_list_prints_a_readable_table(settings: Settings, store: Store) -> None:
    result = dlq(settings, "list")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0].split()[:3] == ["ID", "REASON", "EVENT_TYPE"]
    assert [line.split()[0] for line in lines[1:4]] == ["stripe-evt_0", "stripe-evt_1", "stripe-evt_2"]
    assert lines[-1] == "(3 matching)"


def test_list_filters_and_json(settings: Settings, store: Store) -> None:
    result = dlq(settings, "list", "--reason", "usercom_rejected", "--json")
    body: dict[str, Any] = json.loads(result.stdout)
    assert body["total"] == 2 and [i["id"] for i in body["items"]] == ["stripe-evt_0", "stripe-evt_2"]
    assert dlq(settings, "list", "--reason", "bogus").returncode != 0


def test_show_replay_and_purge(settings: Settings, store: Store, redis: Redis) -> None:
    shown = json.loads(dlq(settings, "show", "stripe-evt_1", "--json").stdout)
    assert shown["message"] == "problem 1"
    assert dlq(settings, "show", "nope").returncode == 1
    replayed = dlq(settings, "replay", "stripe-evt_1")
    assert replayed.returncode == 0 and "replayed" in replayed.stdout
    assert redis.llen(keys.USERCOM.rq_queue_key(keys.REPLAY)) == 1
    dry = json.loads(dlq(settings, "purge", "--all", "--reason", "usercom_rejected", "--dry-run", "--json").stdout)
    assert (dry["matched"], dry["deleted"]) == (2, 0)
    purged = json.loads(dlq(settings, "purge", "--all", "--reason", "usercom_rejected", "--json").stdout)
    assert purged["deleted"] == 2
    assert store.dead_letters() == []
    assert dlq(settings, "purge").returncode == 2  # neither an id nor --all


@pytest.mark.parametrize(
    ("args", "line"),
    [
        (["list", "--limit", "0"], "relay dlq list: --limit must be at least 1"),
        (["list", "--limit", "-1"], "relay dlq list: --limit must be at least 1"),
        (["list", "--offset", "-2", "--limit", "1"], "relay dlq list: --offset must be from 0 to 1000000000"),
        (["list", "--offset", str(2**63)], "relay dlq list: --offset must be from 0 to 1000000000"),
        (["list", "--since", "yesterday"], "relay dlq list: --since: Not a valid datetime."),
        (["list", "--reason", "nope"], "relay dlq list: --reason: Must be one of: invalid_payload, "),
        (["--destination", "userkit", "list"], "relay dlq list: --destination userkit is not in RELAY_DESTINATIONS"),
        (["list", "--destination", "userkit"], "relay dlq list: --destination userkit is not in RELAY_DESTINATIONS"),
        (
            ["replay", "--all", "--destination", "userkit"],
            "relay dlq replay: --destination userkit is not in RELAY_DESTINATIONS",
        ),
        (
            ["purge", "stripe-evt_1", "--reason", "usercom_rejected"],
            "relay dlq purge: --reason: filters apply to --all",
        ),
        (["replay", "stripe-evt_1", "--user", "u2"], "relay dlq replay: --user: filters apply to --all"),
    ],
)
def test_an_argument_it_cannot_use_as_asked_is_one_line_and_exit_2(
    settings: Settings,
    store: Store,
    redis: Redis,
    args: list[str],
    line: str,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """In process (`relay dlq` as a whole runs in the tests above and below): eleven cases."""
    monkeypatch.setenv("REDIS_URL", settings.redis_url)
    code = main(["dlq", *args])
    out, err = capsys.readouterr()
    assert (code, out) == (2, ""), out + err
    assert len(err.splitlines()) == 1 and err.startswith(line), err
    assert len(store.dead_letters()) == 3  # nothing purged
    assert redis.llen(keys.USERCOM.rq_queue_key(keys.REPLAY)) == 0  # nothing replayed


def test_a_replay_refused_says_why_and_exits_1(settings: Settings, store: Store) -> None:
    """A single replay said only `still_invalid`; a bulk one exited 0 with every item still refused."""
    event = stripe_event("customer.updated", {"id": "cus_1", "email": 42}, event_id="evt_bad")
    refused = ValidationError({"data": {"object": {"email": ["Not a valid string."]}}})
    item = invalid_item(
        "stripe", "evt_bad", "evt_bad", Described("evt_bad", "customer.updated", 1), event, refused, "no"
    )
    assert store.reject(item, "evt_bad")
    one = dlq(settings, "replay", "stripe-evt_bad")
    assert one.returncode == 1
    line, details = one.stdout.splitlines()
    assert line == "stripe-evt_bad: still_invalid: the payload still does not fit the schema"
    assert "email" in json.loads(details)["data"]["object"]
    as_json = json.loads(dlq(settings, "replay", "stripe-evt_bad", "--json").stdout)
    assert as_json["status"] == "still_invalid" and "email" in as_json["details"]["data"]["object"]
    bulk = dlq(settings, "replay", "--all", "--reason", "invalid_payload", "--json")
    assert bulk.returncode == 1 and json.loads(bulk.stdout)["outcomes"] == {"still_invalid": 1}
    replayed = dlq(settings, "replay", "--all", "--reason", "retries_exhausted")
    assert replayed.returncode == 0, replayed.stdout


def test_list_shows_the_whole_message_and_marks_a_cut_cell(settings: Settings, store: Store) -> None:
    """The message was cut at 40 characters with nothing to say so ("... is mapped to user dev")."""
    message = "customer cus_dev_1 is mapped to user dev-user-1; the event names user someone-else entirely"
    user = "a-user-id-longer-than-its-column"
    item = DeadLetter(
        id="stripe-evt_long",
        reason="identity_conflict",
        source="stripe",
        event_type="invoice.paid",
        event_id="evt_long",
        event_time=1,
        message=message,
        user_id=user,
    )
    assert store.reject(item, "evt_long")
    [row] = [line for line in dlq(settings, "list").stdout.splitlines() if line.startswith("stripe-evt_long")]
    assert row.endswith(message)
    assert user[:17] + "…" in row and user not in row


@pytest.mark.parametrize("as_json", [False, True])
def test_replay_all_stopped_by_ctrl_c_says_what_it_replayed(
    settings: Settings, store: Store, redis: Redis, monkeypatch: pytest.MonkeyPatch, capsys: Any, as_json: bool
) -> None:
    """Ctrl-C during the second batch: the first batch's summary, marked interrupted, and exit 130."""
    from service import cli
    from service.cli import dlq as dlq_cli
    from service.operator import Operator

    monkeypatch.setattr(dlq_cli, "REPLAY_BATCH", 1)
    monkeypatch.setenv("REDIS_URL", settings.redis_url)
    replay_batch = Operator.replay_batch
    batches: list[str | None] = []

    def interrupted_at_the_second(self: Operator, *args: Any, cursor: str | None = None, **kwargs: Any) -> Any:
        batches.append(cursor)
        if len(batches) == 2:
            raise KeyboardInterrupt
        return replay_batch(self, *args, cursor=cursor, **kwargs)

    monkeypatch.setattr(Operator, "replay_batch", interrupted_at_the_second)
    code = cli.main(["dlq", "replay", "--all", *(["--json"] if as_json else [])])
    out, err = capsys.readouterr()
    assert code == 130 and len(batches) == 2
    expected = {"matched": 1, "selected": 1, "dry_run": False, "outcomes": {"replayed": 1}, "interrupted": True}
    if as_json:
        assert json.loads(out) == expected
    else:
        assert out == ", ".join(f"{k}: {v}" for k, v in expected.items()) + "\n"
    assert "stopped (Ctrl-C) after replaying 1" in err and "replay --all again to go on" in err
    assert len(store.dead_letters()) == 2
