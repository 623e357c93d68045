"""Progress of one long step with its ETA: a tqdm bar on a terminal, plain periodic lines in a log.

On a terminal (``stream`` given) tqdm redraws one bar in place; otherwise a plain line goes to
``out`` every ``every_s`` seconds, so a CI log shows that a long step is alive and how long it
has left, without the carriage returns a bar would fill it with.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Iterator
from typing import TextIO, TypeVar

from tasks.say import Say

LOG_EVERY_S = 30.0

T = TypeVar("T")


def duration(seconds: float) -> str:
    """``42s``, ``3m05s``, ``1h07m``."""
    seconds = max(0, round(seconds))
    if seconds < 60:
        return f"{seconds}s"
    minutes, seconds = divmod(seconds, 60)
    return f"{minutes}m{seconds:02d}s" if minutes < 60 else f"{minutes // 60}h{minutes % 60:02d}m"


def eta(elapsed: float, done: int, total: int) -> float:
    """Seconds left at the pace so far (0 before anything is done)."""
    return elapsed / done * (total - done) if done else 0.0


class Bar:
    """Counts ``total`` units of one step (``unit`` names them: ``episodes``, ``classes``)."""

    def __init__(
        self,
        label: str,
        total: int,
        unit: str,
        out: Say,
        stream: TextIO | None = None,
        every_s: float = LOG_EVERY_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.label, self.total, self.unit, self.done = label, total, unit, 0
        self._out, self._every, self._clock = out, every_s, clock
        self._start = self._last = clock()
        self._terminal = stream is not None
        self._tqdm = None
        if stream is not None:
            from tqdm import tqdm

            self._tqdm = tqdm(
                total=total, desc=label, unit=f" {unit}", file=stream, dynamic_ncols=True, leave=True, mininterval=0.2
            )

    @property
    def elapsed(self) -> float:
        return self._clock() - self._start

    def count(self, items: Iterable[T], size: Callable[[T], int] = lambda _: 1) -> Iterator[T]:
        """``items`` passed through; each counts (``size`` units) once the caller is done with it."""
        for item in items:
            yield item
            self.advance(size(item))

    def advance(self, units: int = 1) -> None:
        self.done += units
        if self._terminal:
            if self._tqdm is not None:
                self._tqdm.update(units)
            if self.done >= self.total:
                self.close()
            return
        now = self._clock()
        if now - self._last >= self._every and self.done < self.total:
            self._last = now
            self._out(f"  {self.line()}")

    def line(self) -> str:
        """``label: 240/600 episodes (40%), 19.9/s, 12s elapsed, ETA 18s``."""
        elapsed = self.elapsed
        rate = self.done / elapsed if elapsed > 0 else 0.0
        left = f", ETA {duration(eta(elapsed, self.done, self.total))}" if self.done < self.total else ""
        percent = 100 * self.done // self.total if self.total else 100
        return (
            f"{self.label}: {self.done}/{self.total} {self.unit} ({percent}%), "
            f"{rate:.1f}/s, {duration(elapsed)} elapsed{left}"
        )

    def close(self) -> None:
        """Leave the finished bar on the terminal (a no-op in a log, and when already closed)."""
        if self._tqdm is not None:
            self._tqdm.close()
            self._tqdm = None


class BarTally:
    """A :data:`tasks.say.Tally` drawn as one :class:`Bar`, made when the first call gives the total."""

    def __init__(self, label: str, unit: str, out: Say, stream: TextIO | None = None) -> None:
        self.label, self.unit, self._out, self._stream = label, unit, out, stream
        self.bar: Bar | None = None

    def __call__(self, done: int, total: int) -> None:
        if self.bar is None:
            self.bar = Bar(self.label, total, self.unit, self._out, self._stream)
        self.bar.advance(done - self.bar.done)
