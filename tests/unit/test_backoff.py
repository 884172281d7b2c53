from __future__ import annotations

import pytest

from workers.delivery.outcomes import backoff_delay


def test_ceiling_doubles_up_to_the_cap() -> None:
    ceilings = [backoff_delay(n, base=2, cap=60, jitter=1.0, retry_after=None) for n in range(1, 8)]
    assert ceilings == [2, 4, 8, 16, 32, 60, 60]


@pytest.mark.parametrize("jitter", [0.0, 0.25, 0.999])
def test_full_jitter_draws_between_zero_and_the_ceiling(jitter: float) -> None:
    assert backoff_delay(3, base=2, cap=60, jitter=jitter, retry_after=None) == pytest.approx(8 * jitter)


def test_never_sooner_than_retry_after() -> None:
    assert backoff_delay(1, base=2, cap=60, jitter=0.1, retry_after=30) == 30
    assert backoff_delay(6, base=2, cap=60, jitter=1.0, retry_after=5) == 60


def test_never_later_than_the_cap_whatever_retry_after_asks() -> None:
    assert backoff_delay(1, base=2, cap=60, jitter=0.1, retry_after=864_000) == 60
