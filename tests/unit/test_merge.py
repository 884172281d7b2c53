from __future__ import annotations

from tests.conftest import an_update
from workers.ordering import merge


def test_newest_value_per_attribute_wins_whatever_the_order() -> None:
    older = an_update(
        "evt_1",
        event_time=100,
        standard={"email": "old@x.co", "city": "Oslo"},
        custom={"plan": "a"},
        tags=["subscriber"],
    )
    newer = an_update(
        "evt_2",
        event_time=200,
        standard={"email": "new@x.co"},
        custom={"plan": "b", "mrr": 5},
        tags=["paying", "subscriber"],
    )
    for batch in ([older, newer], [newer, older]):
        merged = merge(batch)
        assert merged.standard == {"email": ("new@x.co", 200), "city": ("Oslo", 100)}
        assert merged.custom == {"plan": ("b", 200), "mrr": (5, 200)}
        assert merged.tags == ["subscriber", "paying"]
        assert merged.times() == {"email": 200, "city": 100, "plan": 200, "mrr": 200}


def test_a_tie_in_event_time_goes_to_the_later_event_id() -> None:
    a = an_update("evt_a", event_time=5, custom={"plan": "a"})
    b = an_update("evt_b", event_time=5, custom={"plan": "b"})
    assert merge([b, a]).custom == {"plan": ("b", 5)}
