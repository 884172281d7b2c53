"""The OpenAPI document covers every route, and no request found by fuzzing it gets a 5xx."""

from __future__ import annotations

import json
import re
import time
from collections.abc import Callable
from typing import Any

import jsonschema
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from service import create_app
from service.config import Settings
from tests.conftest import (
    lemonsqueezy_headers,
    load_fixture,
    paddle_headers,
    sign,
    standard_event,
    standard_headers,
    stripe_event,
)

TOKEN = "fuzz-admin-token"


def test_every_route_and_method_is_documented(client: Any) -> None:
    spec = client.get("/openapi.json").get_json()
    assert spec["openapi"].startswith("3.")
    documented = {(path, method.upper()) for path, ops in spec["paths"].items() for method in ops}
    routes = {
        (re.sub(r"<(?:\w+:)?(\w+)>", r"{\1}", rule.rule), method)
        for rule in client.application.url_map.iter_rules()
        if rule.endpoint != "static"
        for method in rule.methods - {"HEAD", "OPTIONS"}
    }
    assert routes == documented
    for operation in (op for ops in spec["paths"].values() for op in ops.values()):
        assert operation["responses"], operation


def test_path_parameters_that_may_hold_a_slash_say_so(client: Any) -> None:
    """Routed with `<path:...>` (user ids like "org/42"): the document tells a client "/" may be in it."""
    spec = client.get("/openapi.json").get_json()
    slashed = {
        (re.sub(r"<(?:\w+:)?(\w+)>", r"{\1}", rule.rule), name)
        for rule in client.application.url_map.iter_rules()
        if rule.endpoint != "static"
        for name in re.findall(r"<(?:path|user_id):(\w+)>", rule.rule)
    }
    assert {name for _, name in slashed} >= {"user_id", "item_id"}
    for path, name in slashed:
        for operation in spec["paths"][path].values():
            [parameter] = [p for p in operation["parameters"] if p["in"] == "path" and p["name"] == name]
            assert 'may hold "/"' in parameter["description"], (path, parameter)


def test_error_answers_reference_the_error_schema(client: Any) -> None:
    spec = client.get("/openapi.json").get_json()
    answers = spec["paths"]["/webhooks/stripe"]["post"]["responses"]
    assert set(answers) == {"200", "202", "400", "401", "404", "413", "415", "422", "503"}
    assert answers["422"]["content"]["application/json"]["schema"] == {"$ref": "#/components/schemas/ErrorBody"}
    for path, item in spec["paths"].items():  # every admin answer documents an unknown ?destination=
        for operation in item.values():
            if path.startswith("/admin/"):
                assert "400" in operation["responses"], (path, operation["summary"])


def test_what_routes_really_answer_is_documented(client: Any) -> None:
    """A console file that is not there is a 404; a webhook body cut short a 400 `incomplete_body`; a
    Standard Webhooks attribute is a string, number or boolean (null is refused with 422, not taken)."""
    spec = client.get("/openapi.json").get_json()
    missing = client.get("/console/nope.js")
    assert missing.status_code == 404 and "404" in spec["paths"]["/console/{name}"]["get"]["responses"]
    for source in ("stripe", "standard", "paddle", "lemonsqueezy"):
        assert "`incomplete_body`" in spec["paths"][f"/webhooks/{source}"]["post"]["responses"]["400"]["description"]
    values = spec["components"]["schemas"]["UserData"]["properties"]["attributes"]["additionalProperties"]
    for value in ("pro", 3, 2.5, True):
        jsonschema.validate(value, values)
    for value in (None, [], {}):
        with pytest.raises(jsonschema.ValidationError):
            jsonschema.validate(value, values)


TEXT = st.text(max_size=40)
HEADER_TEXT = st.text(alphabet=st.characters(blacklist_categories=["Cc", "Cs"]), max_size=40)  # what HTTP can carry
JSONISH = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | TEXT,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(TEXT, inner, max_size=4),
    max_leaves=12,
)
BODIES = st.one_of(st.binary(max_size=200), JSONISH.map(lambda v: json.dumps(v).encode()))
QUERY_KEYS = st.sampled_from(["reason", "event_type", "user_id", "since", "until", "offset", "limit", "x"])


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    operation=st.sampled_from(
        [
            ("POST", "/webhooks/stripe"),
            ("POST", "/webhooks/standard"),
            ("POST", "/webhooks/paddle"),
            ("POST", "/webhooks/lemonsqueezy"),
            ("GET", "/healthz"),
            ("GET", "/readyz"),
            ("GET", "/status"),
            ("GET", "/metrics"),
            ("GET", "/openapi.json"),
            ("GET", "/admin/dlq"),
            ("GET", "/admin/dlq/{item_id}"),
            ("DELETE", "/admin/dlq/{item_id}"),
            ("POST", "/admin/dlq/{item_id}/replay"),
            ("POST", "/admin/dlq/replay"),
            ("GET", "/admin/users/{item_id}/trace"),
        ]
    ),
    item_id=st.text(
        alphabet=st.characters(blacklist_categories=["Cs"], blacklist_characters="?#%"), min_size=1, max_size=30
    ),
    query=st.dictionaries(QUERY_KEYS, TEXT, max_size=3),
    body=BODIES,
    content_type=st.sampled_from(["application/json", "text/plain", "application/x-www-form-urlencoded", ""]),
    auth=st.sampled_from([None, f"Bearer {TOKEN}", "Bearer nope", "Basic abc"]),
    signature=st.one_of(st.none(), HEADER_TEXT, st.just("t=1,v1=00")),
)
def test_fuzzed_requests_never_get_a_5xx(
    env: dict[str, str],
    redis: Any,
    operation: tuple[str, str],
    item_id: str,
    query: dict[str, str],
    body: bytes,
    content_type: str,
    auth: str | None,
    signature: str | None,
) -> None:
    app = _app(env)
    method, path = operation
    names = ("Stripe-Signature", "Paddle-Signature", "X-Signature", "webhook-signature", "webhook-id")
    headers = {k: v for k, v in (("Authorization", auth), *((n, signature) for n in names)) if v is not None}
    response = app.test_client().open(
        path.replace("{item_id}", item_id),
        method=method,
        query_string=query,
        data=body,
        content_type=content_type or None,
        headers=headers,
    )
    assert response.status_code < 500, response.get_data(as_text=True)
    if response.status_code >= 400:
        assert response.get_json()["error"]["code"]


# Signed as each provider would: the body itself is fuzzed past the signature check.
SIGNERS: dict[str, Callable[[bytes], dict[str, str]]] = {
    "stripe": lambda body: {"Stripe-Signature": sign(body)},
    "standard": lambda body: standard_headers(body, "msg_fuzz"),
    "paddle": paddle_headers,
    "lemonsqueezy": lemonsqueezy_headers,
}
ENVELOPES = st.fixed_dictionaries(
    {},
    optional={
        name: JSONISH
        for name in ("id", "type", "created", "data", "event_id", "event_type", "occurred_at", "meta", "timestamp")
    },
)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    source=st.sampled_from(sorted(SIGNERS)),
    body=st.one_of(BODIES, ENVELOPES.map(lambda v: json.dumps(v).encode())),
)
def test_fuzzed_signed_bodies_never_get_a_5xx(env: dict[str, str], redis: Any, source: str, body: bytes) -> None:
    if source in ("stripe", "standard"):
        assume(_is_utf8(body))  # the stripe and standardwebhooks packages sign text only
    response = (
        _app(env)
        .test_client()
        .post(f"/webhooks/{source}", data=body, headers=SIGNERS[source](body), content_type="application/json")
    )
    assert response.status_code in (200, 202, 400, 422), response.get_data(as_text=True)


# Valid signed events with one value swapped for a hostile one (tests/integration/test_hardening.py
# has one of each by name): deep nesting, lone surrogates, huge or non-finite numbers, long text.
DEEP = "__deep__"
HOSTILE_VALUES = st.sampled_from(
    [DEEP, "\ud800", "a\udfffb", 10**15, -(10**15), 10**30, 1e30, float("nan"), float("inf"), "x" * 40_000, [], {}]
)


def _valid(source: str) -> dict[str, Any]:
    now = int(time.time())
    if source == "stripe":
        obj = {"id": "cus_fz", "email": "a@example.com", "name": "A B", "metadata": {"user_id": "u1"}}
        return stripe_event("customer.created", obj, event_id="evt_fz", created=now - 60)
    if source == "standard":
        return standard_event("u1", attributes={"plan": "pro", "seats": 3}, tags=["beta"])
    if source == "paddle":
        return {**load_fixture("pay.subscription.created.json", "paddle_billing"), "event_id": "evt_fz"}
    event = load_fixture("pay.subscription_created.json", "lemon_squeezy")
    event["data"]["attributes"]["updated_at"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(now - 60))
    return event


@st.composite
def planted(draw: Any) -> tuple[str, bytes]:
    source = draw(st.sampled_from(sorted(SIGNERS)))
    event = _valid(source)
    node: Any = event
    for _ in range(draw(st.integers(0, 5))):
        inner = [
            k
            for k, v in (node.items() if isinstance(node, dict) else enumerate(node))
            if v and isinstance(v, dict | list)
        ]
        if not inner:
            break
        node = node[draw(st.sampled_from(inner))]
    slots = list(node) if isinstance(node, dict) else list(range(len(node)))
    if slots:
        node[draw(st.sampled_from(slots))] = draw(HOSTILE_VALUES)
    return source, json.dumps(event).replace(f'"{DEEP}"', "[" * 5000 + "]" * 5000).encode()


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(case=planted())
def test_signed_events_carrying_hostile_values_never_get_a_5xx(
    env: dict[str, str], redis: Any, case: tuple[str, bytes]
) -> None:
    source, body = case
    response = (
        _app(env)
        .test_client()
        .post(f"/webhooks/{source}", data=body, headers=SIGNERS[source](body), content_type="application/json")
    )
    assert response.status_code in (200, 202, 400, 422), response.get_data(as_text=True)


def _is_utf8(body: bytes) -> bool:
    try:
        body.decode()
    except UnicodeDecodeError:
        return False
    return True


_APPS: dict[str, Any] = {}


def _app(env: dict[str, str]) -> Any:
    key = env["REDIS_URL"]
    if key not in _APPS:
        _APPS.clear()
        _APPS[key] = create_app(Settings.from_env({**env, "RELAY_ADMIN_TOKEN": TOKEN}))
    return _APPS[key]
