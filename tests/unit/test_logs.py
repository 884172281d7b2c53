from __future__ import annotations

import json
import logging

from service.ops.logs import JsonFormatter

SECRET = "whsec_do_not_print_me"
KEY = "usercom-api-key-0123456789"


def record(msg: str, *args: object, exc: BaseException | None = None, **extra: object) -> logging.LogRecord:
    rec = logging.LogRecord(
        "relay.test", logging.WARNING, __file__, 1, msg, args, (type(exc), exc, exc.__traceback__) if exc else None
    )
    rec.__dict__.update(extra)
    return rec


def test_one_json_object_per_line_with_event_fields() -> None:
    line = JsonFormatter().format(record("delivered %s", "evt_1", event_id="evt_1", user_id="u1", lane="live"))
    entry = json.loads(line)
    assert "\n" not in line
    assert entry["msg"] == "delivered evt_1" and entry["level"] == "warning"
    assert (entry["event_id"], entry["user_id"], entry["lane"]) == ("evt_1", "u1", "live")


def test_secrets_are_redacted_everywhere() -> None:
    try:
        raise RuntimeError(f"upstream said Token {KEY}")
    except RuntimeError as exc:
        line = JsonFormatter([SECRET, KEY]).format(record("secret %s in message", SECRET, exc=exc, reason=KEY))
    assert SECRET not in line and KEY not in line
    entry = json.loads(line)
    assert entry["msg"] == "secret [redacted] in message"
    assert "Token [redacted]" in entry["exc"] and entry["reason"] == "[redacted]"


def test_a_secret_the_json_line_escapes_is_redacted_and_a_longer_one_whole() -> None:
    """A key holding `"` or `\\` is escaped in the JSON line; a secret that contains another is replaced
    whole, not around the shorter one."""
    quoted, short = 'k"ey\\with/odd', "usercom-api"
    entry = json.loads(JsonFormatter([quoted, short, KEY]).format(record("echo %s", quoted, reason=KEY)))
    assert entry["msg"] == "echo [redacted]"
    assert entry["reason"] == "[redacted]"  # not "[redacted]-key-0123456789"


def test_a_secret_holding_a_quote_never_breaks_the_json_line() -> None:
    """Redacted after the line was written, `abc"` matched the end of "user xabc" and its closing quote."""
    line = JsonFormatter(['abc"']).format(record("user %s", "xabc", reason='say abc" twice', status="abc%22"))
    entry = json.loads(line)
    assert (entry["msg"], entry["reason"], entry["status"]) == ("user xabc", "say [redacted] twice", "[redacted]")


def test_a_secret_never_matches_inside_an_escape_of_the_line() -> None:
    """A line break then "opeSecret123": written `\\nopeSecret123`, whose "n" belongs to the escape, not to
    a secret "nopeSecret123". Matched there, the line was left with an invalid escape (`\\[redacted]`)."""
    line = JsonFormatter(["nopeSecret123"]).format(record("body was:\nopeSecret123 and nopeSecret123"))
    assert json.loads(line)["msg"] == "body was:\nopeSecret123 and [redacted]"
