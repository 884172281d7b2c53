"""A user's pending state (Keys.user_state, Keys.in_hand): one Redis hash per (destination, user) into
which intake merges every accepted update, so memory grows with users, not events.

Fields:
  s:<name> / c:<name>  "<event time>|<event id>|<value JSON>": a standard / custom attribute, the newest
                       value by event time (a tie goes to the greater event id), and the event carrying it
  t:<tag>              "<event time>|<event id>": a tag, with the earliest event carrying it
  e:<event id>         "[!]<accepted at>,<accepted at - event time>,<type>": an event merged in, until its
                       outcome is counted; both numbers in base 36 (seconds), the type as `#<code>` (its index in
                       EVENT_TYPES, base 36) or verbatim; `!`: queued by a per-event job from before the upgrade.
                       ~45 B a field instead of ~80 B ("customer.subscription.updated" alone is 29 B). Written
                       before: "<accepted at>|<event time>|<event type>[|L]", still read (decode, SETTLE_USER_SCRIPT).
  h                    "<source> <hint>": whose state it is (a delivery job carries only keys.user_ref)
  q                    the lane of the job queued for a pending state (a live event for a state whose
                       job waits on another lane queues a live job too); not merged, not delivered
MERGE_LUA merges a field in Redis; `decode` reads a state back for delivery.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from service.core.update import UserUpdate

HINT_FIELD = "h"
LEGACY_MARK = "!"
# The event types stored as a code: APPEND ONLY (a code is an index here, and a state queued by an older
# deployment is read with this table). A type not here is stored verbatim.
EVENT_TYPES = (
    "customer.created",
    "customer.updated",
    "customer.deleted",
    "customer.subscription.created",
    "customer.subscription.updated",
    "customer.subscription.paused",
    "customer.subscription.resumed",
    "customer.subscription.deleted",
    "customer.subscription.trial_will_end",
    "invoice.paid",
    "invoice.payment_failed",
    "checkout.session.completed",
    "charge.refunded",
    "subscription.created",
    "subscription.updated",
    "subscription.canceled",
    "transaction.completed",
    "order_created",
    "subscription_created",
    "subscription_updated",
    "subscription_expired",
    "subscription_payment_success",
    "subscription_payment_failed",
    "subscription_payment_refunded",
)
_CODES = {name: n for n, name in enumerate(EVENT_TYPES)}
_DIGITS = "0123456789abcdefghijklmnopqrstuvwxyz"


def update_fields(update: UserUpdate, hint: str | None = None) -> list[str]:
    """The update as state fields, flattened: field, value, field, value... (`hint`: the update's own unless
    given), the user's source and hint first."""
    head = f"{update.event_time}|{update.event_id}"
    out: list[str] = [HINT_FIELD, f"{update.source} {hint or update.hint}"]
    for kind, values in (("s", update.standard), ("c", update.custom)):
        for name, value in values.items():
            out += [f"{kind}:{name}", f"{head}|{json.dumps(value, separators=(',', ':'))}"]
    for tag in update.tags:
        out += [f"t:{tag}", head]
    return out


def base36(n: int) -> str:
    if n < 0:
        return "-" + base36(-n)
    out = ""
    while True:
        n, digit = divmod(n, 36)
        out = _DIGITS[digit] + out
        if n == 0:
            return out


def event_value(update: UserUpdate, accepted: float, *, legacy: bool = False) -> str:
    """An event's `e:` field value (the module's docstring)."""
    at = int(accepted)
    code = _CODES.get(update.event_type)
    kind = update.event_type if code is None else f"#{base36(code)}"
    if code is None and kind.startswith("#"):
        kind = "#" + kind  # verbatim, not a code
    return f"{LEGACY_MARK if legacy else ''}{base36(at)},{base36(at - update.event_time)},{kind}"


def event_of(event_id: str, value: str) -> Event:
    """An `e:` field read back, in either format."""
    if "|" in value.split(",", 1)[0]:  # written before compact entries: "<accepted>|<event time>|<type>[|L]"
        parts = value.split("|")
        return Event(event_id, float(parts[0]), int(float(parts[1])), parts[2], parts[3:] == ["L"])
    legacy = value.startswith(LEGACY_MARK)
    at_text, delta, kind = value.removeprefix(LEGACY_MARK).split(",", 2)
    at = int(at_text, 36)
    if kind.startswith("#"):
        kind = kind[1:] if kind.startswith("##") else EVENT_TYPES[int(kind[1:], 36)]
    return Event(event_id, float(at), at - int(delta, 36), kind, legacy)


@dataclass(frozen=True)
class Event:
    event_id: str
    accepted_at: float
    event_time: int
    event_type: str
    legacy: bool


@dataclass
class PendingState:
    """What is pending for one user, read back from its hash."""

    standard: dict[str, tuple[Any, int, str]] = field(default_factory=dict)  # name -> (value, time, carrier)
    custom: dict[str, tuple[Any, int, str]] = field(default_factory=dict)
    tags: dict[str, tuple[int, str]] = field(default_factory=dict)  # tag -> (time, carrier)
    events: dict[str, Event] = field(default_factory=dict)

    def order_keys(self) -> dict[str, str]:
        """Per attribute, "<event time>|<carrier event id>": what the delivery-side claim compares and
        records (ordering_scripts.CLAIM_LUA), in the order the merge keeps (ORDER_LUA)."""
        return {name: f"{t}|{c}" for name, (_, t, c) in (*self.standard.items(), *self.custom.items())}

    def tag_list(self, carriers: set[str] | None = None) -> list[str]:
        chosen = [(t, c, tag) for tag, (t, c) in self.tags.items() if carriers is None or c in carriers]
        return [tag for _, _, tag in sorted(chosen)]

    def carriers(self) -> set[str]:
        """The events carrying a value or tag that goes out (the rest were superseded: coalesced)."""
        found = {c for _, _, c in (*self.standard.values(), *self.custom.values())}
        return (found | {c for _, c in self.tags.values()}) & set(self.events)

    def update_of(self, source: str, hint: str, event_id: str) -> UserUpdate:
        """An event's own part of the state, as an update (for its dead-letter item and a replay)."""
        event = self.events[event_id]
        user_id, customer_id = identity_of(hint)
        return UserUpdate(
            source=source,
            event_id=event_id,
            event_type=event.event_type,
            event_time=event.event_time,
            user_id=user_id,
            customer_id=customer_id,
            standard={k: v for k, (v, _, c) in self.standard.items() if c == event_id},
            custom={k: v for k, (v, _, c) in self.custom.items() if c == event_id},
            tags=self.tag_list({event_id}),
        )


def source_and_hint(value: bytes | None) -> tuple[str, str] | None:
    """The HINT_FIELD of a state, read back."""
    if value is None:
        return None
    source, _, hint = value.decode().partition(" ")
    return source, hint


def identity_of(hint: str) -> tuple[str | None, str | None]:
    """(user_id, customer_id) of a UserUpdate.hint."""
    kind, _, value = hint.partition(":")
    return (value, None) if kind == "user" else (None, value)


def decode(raw: dict[bytes, bytes]) -> PendingState:
    state = PendingState()
    for key, value in raw.items():
        name, text = key.decode(), value.decode()
        kind, rest = name[:2], name[2:]
        if kind in ("s:", "c:"):
            when, carrier, value_json = text.split("|", 2)
            target = state.standard if kind == "s:" else state.custom
            target[rest] = (json.loads(value_json), int(float(when)), carrier)
        elif kind == "t:":
            when, carrier = text.split("|", 1)
            state.tags[rest] = (int(float(when)), carrier)
        elif kind == "e:":
            state.events[rest] = event_of(rest, text)
    return state


# The one order of values, by (event time, event id), for the merge here and the delivery-side claim
# (ordering_scripts.CLAIM_LUA), so two events of one second end the same whether merged or sent apart.
# Reads "<time>|<event id>[|...]", or a bare "<time>" (a last-written time from before ids were kept there:
# that time with the lowest id). (a, b) -> whether a is at least as new as b
ORDER_LUA = """
local function order_key(value)
    local t, id = string.match(value, '^([^|]*)|([^|]*)')
    if t == nil then return tonumber(value), '' end
    return tonumber(t), id
end
local function at_least_as_new(a, b)
    local ta, ia = order_key(a)
    local tb, ib = order_key(b)
    if ta ~= tb then return ta > tb end
    return ia >= ib
end
"""

# Merge one field into a state hash: per attribute the newest value, per tag the earliest carrier,
# an event once, the source and hint once. (state, field, value) -> nothing
MERGE_LUA = (
    ORDER_LUA
    + """
local function merge_field(state, name, value)
    if name == 'q' then return end  -- the lane of the job queued for a pending state: not data
    local old = redis.call('HGET', state, name)
    local kind = string.sub(name, 1, 1)
    if not old then
        redis.call('HSET', state, name, value)
    elseif kind == 't' then
        if not at_least_as_new(value, old) then redis.call('HSET', state, name, value) end
    elseif kind ~= 'e' and kind ~= 'h' and at_least_as_new(value, old) then
        redis.call('HSET', state, name, value)
    end
end
-- Whether an event is pending for the user already: merged in (the state) or taken by a delivery (in hand).
local function pending_already(state, in_hand, event_field)
    return redis.call('HEXISTS', state, event_field) == 1 or redis.call('HEXISTS', in_hand, event_field) == 1
end
local function merge_hash(target, source)
    local all = redis.call('HGETALL', source)
    for i = 1, #all, 2 do merge_field(target, all[i], all[i + 1]) end
end
"""
)
