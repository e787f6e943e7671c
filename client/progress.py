"""Progress events and how they are shown (rich bars per layer on a terminal, plain lines
otherwise), and the other human output of the commands: sizes, ages, tables.

Events have the shape of Ollama's pull/push stream (``status``, ``digest``, ``total``,
``completed``) so the runtime can forward them to ``/api/pull`` clients unchanged."""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from types import TracebackType
from typing import TYPE_CHECKING, Any, TextIO

if TYPE_CHECKING:
    from rich.progress import Progress as RichProgress


@dataclass(frozen=True)
class Progress:
    status: str
    digest: str | None = None
    total: int | None = None
    completed: int | None = None

    def to_json(self) -> dict[str, object]:
        # Ollama's fields are ``omitempty``: a zero total or completed, an empty digest, is left out.
        return {k: v for k, v in asdict(self).items() if k == "status" or v not in (None, 0, "")}


ProgressCallback = Callable[[Progress], None]


def no_progress(_: Progress) -> None:
    pass


class ProgressView:
    """A ProgressCallback that renders events; use as a context manager."""

    def __init__(self, stream: TextIO | None = None, *, plain: bool | None = None) -> None:
        self.stream = stream or sys.stdout
        self.plain = (not self.stream.isatty()) if plain is None else plain
        self._rich: RichProgress | None = None
        self._tasks: dict[str, Any] = {}
        self._last_status = ""
        self._plain_marks: dict[str, tuple[int, float]] = {}

    def __enter__(self) -> ProgressView:
        if not self.plain:
            # Imported here: rich costs a noticeable part of a second, and plain mode needs none of it.
            from rich.console import Console
            from rich.progress import BarColumn, DownloadColumn, TextColumn, TimeRemainingColumn, TransferSpeedColumn
            from rich.progress import Progress as RichProgress

            self._rich = RichProgress(
                TextColumn("{task.description}"),
                BarColumn(bar_width=None),
                TextColumn("{task.percentage:>3.0f}%"),
                DownloadColumn(binary_units=False),
                TransferSpeedColumn(),
                TimeRemainingColumn(),
                console=Console(file=self.stream),
                transient=False,
            )
            self._rich.__enter__()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self._rich is not None:
            self._rich.__exit__(exc_type, exc, tb)

    def __call__(self, event: Progress) -> None:
        if event.digest is None or event.total is None:
            self._line(event.status)
            return
        if self._rich is not None:
            task = self._tasks.get(event.digest)
            if task is None:
                task = self._rich.add_task(event.status, total=event.total)
                self._tasks[event.digest] = task
            self._rich.update(task, completed=event.completed or 0, total=event.total)
            return
        self._plain_progress(event)

    def _line(self, status: str) -> None:
        if status == self._last_status:
            return
        self._last_status = status
        if self._rich is not None:
            self._rich.console.print(status, highlight=False)
        else:
            print(status, file=self.stream, flush=True)

    def _plain_progress(self, event: Progress) -> None:
        """A line every 10%, at least every 10 s while it moves, and one at 100%."""
        assert event.digest is not None and event.total is not None
        done = event.completed or 0
        percent = 100 if event.total == 0 else done * 100 // event.total
        now = time.monotonic()
        last_percent, last_time = self._plain_marks.setdefault(event.digest, (0, now))
        if percent == last_percent == 100:
            return
        if percent >= last_percent + 10 or percent == 100 or (percent > last_percent and now - last_time > 10):
            self._plain_marks[event.digest] = (percent, now)
            size = f"{human_size(done)}/{human_size(event.total)}"
            print(f"{event.status}: {percent}% ({size})", file=self.stream, flush=True)


def human_size(n: int) -> str:
    """Decimal units, as Ollama prints them (4.7 GB)."""
    size = float(n)
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if size < 1000 or unit == "TB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1000
    return f"{n} B"  # unreachable


def human_age(seconds: float) -> str:
    seconds = max(0.0, seconds)
    for unit, span in (("year", 365 * 86400), ("month", 30 * 86400), ("week", 7 * 86400), ("day", 86400),
                       ("hour", 3600), ("minute", 60)):  # fmt: skip
        if seconds >= span:
            n = int(seconds // span)
            return f"{n} {unit}{'s' if n != 1 else ''} ago"
    return "Less than a minute ago" if seconds >= 1 else "Just now"


def print_table(rows: Sequence[Sequence[str]], gap: str = "    ") -> None:
    """Print rows (the first one the header) in columns as wide as their widest cell, as
    Ollama's ``list`` and ``ps`` do."""
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for row in rows:
        print(gap.join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip())
