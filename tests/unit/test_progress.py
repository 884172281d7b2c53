"""The progress bar of backfill and reconcile: a run that ends by itself shows it whole."""

from __future__ import annotations

import pytest

from service.backfill.progress import Reporter

SUMMARY = {"read": 3, "accepted": 1, "duplicate": 2, "per_second": 5.0}


@pytest.mark.parametrize(("interrupted", "unknown_eta"), [(False, False), (True, True)])
def test_a_finished_run_fills_its_bar_an_interrupted_one_does_not(
    capsys: pytest.CaptureFixture[str], interrupted: bool, unknown_eta: bool
) -> None:
    reporter = Reporter("reconcile stripe", quiet=False, total=100)
    reporter.update(SUMMARY, 40)  # a window read to 40 %, the rest of it empty
    reporter.finish({**SUMMARY, "interrupted": interrupted})
    bar = capsys.readouterr().err.splitlines()[0]
    assert "3 read, 1 accepted, 2 duplicates" in bar
    assert ("-:--:--" in bar) == unknown_eta  # rich's time remaining: unknown until the bar is full
