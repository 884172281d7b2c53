"""A trace entry stays within its budget, keeping every attribute that fits, in order."""

from __future__ import annotations

import json

from hypothesis import given, settings
from hypothesis import strategies as st

from service.store.trace import MAX_ENTRY_BYTES, MAX_VALUE_CHARS, TraceEntry

BUDGET = MAX_ENTRY_BYTES - 40
values = st.one_of(st.text(max_size=300), st.integers(), st.booleans(), st.none())


def stored(value: object) -> object:
    """A long text is kept cut, with an ellipsis."""
    if isinstance(value, str) and len(value) > MAX_VALUE_CHARS:
        return value[: MAX_VALUE_CHARS - 1] + "…"
    return value


def size(entry: dict[str, object]) -> int:
    return len(json.dumps(entry, separators=(",", ":")))


@settings(max_examples=200, deadline=None)
@given(st.dictionaries(st.text(min_size=1, max_size=40), values, max_size=40))
def test_an_entry_keeps_what_fits_and_counts_what_it_leaves_out(attributes: dict[str, object]) -> None:
    text = TraceEntry(kind="delivery", user_id="u1", destination="usercom", attributes=attributes).to_json()
    entry = json.loads(text)
    assert len(text) <= MAX_ENTRY_BYTES
    kept = entry["attributes"]
    left_out = [name for name in attributes if name not in kept]
    assert list(kept) == [name for name in attributes if name in kept]  # in their order
    assert entry.get("attributes_left_out", 0) == len(left_out)
    assert kept == {name: stored(attributes[name]) for name in kept}
    base = {key: value for key, value in entry.items() if key != "attributes_left_out"}
    assert size(base) <= BUDGET
    for name in left_out:  # it did not fit then, so it does not fit beside all that was kept either
        assert size({**base, "attributes": {**kept, name: stored(attributes[name])}}) > BUDGET


def test_two_long_names_cut_to_the_same_keep_the_later_value_within_the_budget() -> None:
    prefix = "x" * 200
    attributes = {f"{prefix}a": "first", f"{prefix}b": "second", **{f"a{n}": "v" * 100 for n in range(15)}}
    text = TraceEntry(kind="delivery", user_id="u1", destination="usercom", attributes=attributes).to_json()
    entry = json.loads(text)
    assert entry["attributes"]["x" * 119 + "…"] == "second"
    # all fit (1,923 of 1,960 bytes) when the replaced name is not counted twice
    assert len(entry["attributes"]) == 16 and "attributes_left_out" not in entry


def test_an_entry_too_large_whole_keeps_the_first_attributes_that_fit() -> None:
    attributes = {f"a{n:02d}": "v" * 100 for n in range(40)}  # about 4,500 bytes in all
    text = TraceEntry(kind="delivery", user_id="u1", destination="usercom", attributes=attributes).to_json()
    entry = json.loads(text)
    assert len(text) <= MAX_ENTRY_BYTES
    kept = list(entry["attributes"])
    assert 0 < len(kept) < 40 and kept == [f"a{n:02d}" for n in range(len(kept))]
    assert entry["attributes_left_out"] == 40 - len(kept)
