"""Progress of a long run on the terminal (rich), and its summary table; nothing under --json.

The bar shows objects read, accepted, duplicates, the read rate and, when the run knows how far
it has to go (a time window read newest first), the ETA. Output goes to stderr; the summary
table (or the --json document) to stdout. A dry run queues nothing: what a run would accept is
shown as `would_queue`, in place of `accepted` in the bar and the table (which has no `healed`
row either); --json keeps `accepted` and `healed`, the names scripts read, and adds `would_queue`.
"""

from __future__ import annotations

import json
import sys
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, Progress, TaskID, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.table import Table


class Reporter:
    def __init__(self, title: str, *, quiet: bool, total: float | None = None, dry_run: bool = False) -> None:
        self.title = title
        self.quiet = quiet
        self.dry_run = dry_run
        self._total = total
        self._progress: Progress | None = None
        self._task: TaskID | None = None
        if not quiet:
            self._progress = Progress(
                TextColumn("[bold]{task.description}"),
                BarColumn(),
                TextColumn(
                    "{task.fields[read]} read, {task.fields[accepted]} "
                    + ("would queue" if dry_run else "accepted")
                    + ", {task.fields[dups]} duplicates"
                ),
                TextColumn("{task.fields[rate]}/s"),
                TimeElapsedColumn(),
                TimeRemainingColumn(),
                console=Console(stderr=True),
                transient=False,
            )
            self._progress.start()
            self._task = self._progress.add_task(title, total=total, read=0, accepted=0, dups=0, rate="0")

    def update(self, summary: dict[str, Any], completed: float | None = None) -> None:
        if self._progress is None or self._task is None:
            return
        self._progress.update(
            self._task,
            completed=completed,
            read=summary["read"],
            accepted=summary["accepted"],
            dups=summary["duplicate"],
            rate=f"{summary['per_second']:.0f}",
        )

    def note(self, message: str) -> None:
        """A line for the operator (interrupted, how to resume): stderr, even under --json."""
        if self._progress is not None:
            self._progress.console.print(message)
        else:
            print(message, file=sys.stderr)

    def finish(self, summary: dict[str, Any]) -> None:
        """The run's end: a run that was not interrupted fills its bar; then the summary."""
        if self._progress is not None:
            if summary.get("interrupted") is False and self._task is not None:
                self._progress.update(self._task, completed=self._total)
            self._progress.stop()
        if self.quiet:
            extra = {"would_queue": summary["accepted"]} if self.dry_run and "accepted" in summary else {}
            print(json.dumps({**summary, **extra}, sort_keys=True))
            return
        table = Table(title=self.title)
        table.add_column("")
        table.add_column("count", justify="right")
        for name, value in summary.items():
            if isinstance(value, dict | list) or (self.dry_run and name == "healed"):
                continue
            table.add_row("would_queue" if self.dry_run and name == "accepted" else name, str(value))
        Console().print(table)
