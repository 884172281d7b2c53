"""The event mapping: a readable TOML file that says which events are used and what they set.

The default ships as `service/mapping/mapping.toml`; `RELAY_MAPPING_FILE` replaces it. The file is
checked whole at start-up so a typo stops the process instead of silently sending nothing.
"""

from __future__ import annotations

import difflib
import math
import tomllib
from collections import Counter
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

from marshmallow import ValidationError

from service.core.attributes import CUSTOM_ATTRIBUTE_NAME, RESERVED_KEYS, STANDARD_ATTRIBUTES
from service.core.payload_shape import MAX_NUMBER, MAX_STRING
from service.core.update import UserUpdate, user_id_problem
from service.sources.base import Envelope
from service.sources.extraction import Extracted, Extractor, trusted_user_id
from service.sources.registry import SOURCES as SOURCE_SPECS

RULE_KEYS = frozenset({"extract", "standard", "custom", "set", "tags", "tags_if"})
MAX_TAG_LENGTH = 255  # as a Standard Webhooks event's tags
# The sources whose events go through a mapping, and the extractors each one offers.
EXTRACTORS: dict[str, dict[str, Extractor]] = {
    name: spec.extractors for name, spec in SOURCE_SPECS.items() if spec.extractors
}
SOURCES = tuple(EXTRACTORS)


class MappingError(ValueError):
    """The mapping file is unreadable or names something that does not exist."""


@dataclass(frozen=True)
class Rule:
    event_type: str
    extract: str
    standard: dict[str, str]  # extracted field -> User.com standard attribute
    custom: dict[str, str]  # extracted field -> User.com custom attribute
    constants: dict[str, Any]  # custom attribute -> fixed value
    tags: tuple[str, ...]
    tags_if: dict[str, str]  # tag -> extracted field that must be true

    def apply(self, extracted: Extracted) -> tuple[dict[str, Any], dict[str, Any], list[str]]:
        """Extracted fields -> (standard attributes, custom attributes, tags); unknown values skipped,
        values the event says are empty (Extracted.cleared) sent as null."""
        values, cleared = extracted.fields, extracted.cleared
        standard = {attr: values[f] for f, attr in self.standard.items() if values.get(f) is not None or f in cleared}
        custom = {attr: values[f] for f, attr in self.custom.items() if values.get(f) is not None or f in cleared}
        custom.update(self.constants)
        tags = list(self.tags) + [tag for tag, f in self.tags_if.items() if values.get(f) is True]
        return standard, custom, tags


@dataclass(frozen=True)
class Mapping:
    rules: dict[str, dict[str, Rule]]  # source -> event type -> rule

    def rule_for(self, source: str, event_type: str) -> Rule | None:
        return self.rules.get(source, {}).get(event_type)

    def to_update(
        self, source: str, envelope: Envelope, identity_key: str, trusted: frozenset[str] = frozenset()
    ) -> UserUpdate | None:
        """The update an event makes: None when its type is not mapped, or it has nothing to send. Raises marshmallow's
        ValidationError, with messages at the object's place in the payload. `trusted`: the
        buyer-settable identity fields that may name the user (RELAY_TRUSTED_IDENTITY_FIELDS)."""
        if envelope.direct:
            return envelope.update
        rule = self.rule_for(source, envelope.event_type)
        if rule is None:
            return None
        extractor = EXTRACTORS[source][rule.extract]
        try:
            obj = extractor.schema.load(envelope.obj)
            extracted = extractor.extract(obj, envelope.event_time, identity_key)
            user_id = trusted_user_id(envelope.user_id or extracted.user_id, envelope.claim or extracted.claim, trusted)
            if user_id is not None and (problem := user_id_problem(user_id)):
                raise ValidationError({identity_key: [problem]})
        except ValidationError as exc:
            messages: Any = exc.messages
            for key in reversed(envelope.path):
                messages = {key: messages}
            raise ValidationError(messages) from None
        standard, custom, tags = rule.apply(extracted)
        if not (standard or custom or tags):  # e.g. a Paddle refund still pending approval: nothing to send
            return None
        return UserUpdate(
            source=source,
            event_id=envelope.event_id,
            event_type=envelope.event_type,
            event_time=envelope.event_time,
            user_id=user_id,
            customer_id=extracted.customer_id,
            standard=standard,
            custom=custom,
            tags=tags,
        )


def undocumented_types(mapping: Mapping) -> list[str]:
    """A line per mapped event type its provider does not document (a typo's events would be answered
    "ignored", never delivered), with the documented one it is closest to. Not a refusal: a type newer
    than the lists here (Stripe's: the installed `stripe` package's) is mapped on purpose."""
    lines = []
    for source, rules in mapping.rules.items():
        spec = SOURCE_SPECS[source]
        documented = spec.documented_types()
        if documented is None:
            continue
        for event_type in sorted(set(rules) - documented):
            close = difflib.get_close_matches(event_type, documented, n=1)
            hint = f' (did you mean "{close[0]}"?)' if close else ""
            lines.append(
                f'the mapping names {source} event type "{event_type}", not one of the {spec.title} event types this '
                f"release knows{hint}; if it is a typo, those events are answered ignored"
            )
    return lines


def load_mapping(path: Path | None) -> Mapping:
    if path is None:
        text = resources.files("service.mapping").joinpath("mapping.toml").read_text(encoding="utf-8")
        where = "default mapping"
    else:
        try:
            text = path.read_text(encoding="utf-8-sig")  # a leading BOM (an editor's) is not TOML
        except OSError as exc:
            raise MappingError(f"cannot read {path}: {exc.strerror}") from None
        where = str(path)
    try:
        document = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise MappingError(f"{where} is not valid TOML: {exc}") from None
    unknown_sources = set(document) - set(SOURCES)
    if unknown_sources:
        raise MappingError(f"unknown source(s) {sorted(unknown_sources)}; known: {list(SOURCES)}")
    rules: dict[str, dict[str, Rule]] = {}
    for source, events in document.items():
        if not isinstance(events, dict) or not events:
            raise MappingError(f'{where}: [{source}] must hold [{source}."<event type>"] tables')
        rules[source] = {name: _rule(source, name, body) for name, body in events.items()}
    if not rules:
        raise MappingError(f'{where} maps no events (e.g. [stripe."customer.updated"])')
    return Mapping(rules)


def _rule(source: str, event_type: str, body: Any) -> Rule:
    where = f'[{source}."{event_type}"]'
    if not isinstance(body, dict):
        raise MappingError(f"{where} must be a table")
    unknown = set(body) - RULE_KEYS
    if unknown:
        raise MappingError(f"{where} has unknown key(s) {sorted(unknown)}")
    extract = body.get("extract", "")
    extractor = EXTRACTORS[source].get(extract) if isinstance(extract, str) else None
    if extractor is None:
        raise MappingError(f"{where} extract must be one of {sorted(EXTRACTORS[source])}")
    standard = _names(where, "standard", body.get("standard", {}), extractor.fields)
    custom = _names(where, "custom", body.get("custom", {}), extractor.fields)
    for attr in standard.values():
        if attr not in STANDARD_ATTRIBUTES or attr == "user_id":
            raise MappingError(f"{where} standard: {attr!r} is not a User.com standard attribute")
    constants = body.get("set", {})
    if not isinstance(constants, dict):
        raise MappingError(f"{where} set must be a table")
    for key, table in (("standard", standard), ("custom", custom)):
        if twice := sorted(attr for attr, n in Counter(table.values()).items() if n > 1):
            raise MappingError(f"{where} {key}: {twice[0]!r} is given by two fields (which one would it hold?)")
    for attr in [*custom.values(), *constants]:
        if not CUSTOM_ATTRIBUTE_NAME.match(attr) or attr in STANDARD_ATTRIBUTES or attr in RESERVED_KEYS:
            raise MappingError(
                f"{where}: {attr!r} is not a valid custom attribute name (a-z, 0-9, _; not a standard "
                "attribute nor a field of User.com's user record such as name or created_at)"
            )
    for attr, value in constants.items():
        if problem := _constant_problem(value):
            raise MappingError(f"{where} set: {attr!r} {problem}")
    tags = body.get("tags", [])
    if not isinstance(tags, list) or not all(_is_tag(t) for t in tags):
        raise MappingError(f"{where} tags must be a list of non-empty strings of at most {MAX_TAG_LENGTH} characters")
    tags_if = _names(where, "tags_if", body.get("tags_if", {}), None)
    for tag, field_name in tags_if.items():
        if not _is_tag(tag):
            raise MappingError(
                f"{where} tags_if: {tag!r} is not a tag (not blank, {MAX_TAG_LENGTH} characters at most)"
            )
        if field_name not in extractor.fields:
            raise MappingError(f"{where} tags_if: {tag!r} names unknown field {field_name!r}")
    if not (standard or custom or constants or tags or tags_if):
        raise MappingError(f"{where} sends nothing: give it standard, custom, set or tags")
    return Rule(event_type, body["extract"], standard, custom, dict(constants), tuple(tags), tags_if)


def _is_tag(tag: Any) -> bool:
    return isinstance(tag, str) and bool(tag.strip()) and len(tag) <= MAX_TAG_LENGTH


def _constant_problem(value: Any) -> str | None:
    """Why a `set` value is not one an update can carry (what a Standard Webhooks attribute may be: a
    string, number or boolean, within the bounds of a webhook's values), or None. A TOML date, list or
    table would otherwise fail every event of its type (a 500 at intake, or a refusal by User.com)."""
    if isinstance(value, bool):
        return None
    if isinstance(value, str):
        return None if len(value) <= MAX_STRING else f"is longer than {MAX_STRING} characters"
    if isinstance(value, int | float):
        if isinstance(value, float) and not math.isfinite(value):
            return "must be a finite number (not inf or nan)"
        return None if abs(value) <= MAX_NUMBER else "is a number beyond +-2^53"
    kind = {"dict": "table", "list": "array"}.get(type(value).__name__, "date or time")
    return f"must be a string, number or boolean, not a TOML {kind}"


def _names(where: str, key: str, table: Any, known: frozenset[str] | None) -> dict[str, str]:
    if not isinstance(table, dict) or not all(isinstance(v, str) and v for v in table.values()):
        raise MappingError(f"{where} {key} must be a table of names")
    if known is not None:
        for field_name in table:
            if field_name not in known:
                raise MappingError(f"{where} {key}: unknown field {field_name!r}; known: {sorted(known)}")
    return dict(table)
