"""Progress while one model scores its test episodes: episodes done, rate, ETA; and a warning
when a model scores far slower than the ones before it (long test-time adaptation).

On a terminal the line is rewritten in place; otherwise a plain line is printed every
``every_s`` seconds, so a log shows that a long evaluation is alive and how long it has left.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Iterable, Iterator
from typing import TextIO, TypeVar

from tasks.say import Say

SLOW_FACTOR = 5.0  # a model this many times slower than the median of the others gets a warning
SLOW_FLOOR_S = 60.0  # ... when its estimate is also at least this long
LOG_EVERY_S = 30.0

T = TypeVar("T")


def duration(seconds: float) -> str:
    seconds = max(0, round(seconds))
    if seconds < 60:
        return f"{seconds}s"
    minutes, seconds = divmod(seconds, 60)
    return f"{minutes}m{seconds:02d}s" if minutes < 60 else f"{minutes // 60}h{minutes % 60:02d}m"


class ScoringProgress:
    """Counts the episodes a model has scored out of ``total`` (all its settings together)."""

    def __init__(
        self,
        label: str,
        total: int,
        out: Say,
        stream: TextIO | None = None,
        earlier_s: Iterable[float] = (),
        slow_hint: str = "",
        every_s: float = LOG_EVERY_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.label, self.total, self.done = label, total, 0
        self._out, self._stream, self._every, self._clock = out, stream, every_s, clock
        self._earlier = sorted(earlier_s)
        self._slow_hint = slow_hint
        self._start = self._last = clock()
        self._warned = False

    @property
    def elapsed(self) -> float:
        return self._clock() - self._start

    def count(self, batches: Iterable[T], size: Callable[[T], int]) -> Iterator[T]:
        """``batches`` passed through; each one counts (``size`` episodes) once it has been scored."""
        for batch in batches:
            yield batch
            self.advance(size(batch))

    def advance(self, episodes: int) -> None:
        self.done += episodes
        now = self._clock()
        estimate = self.elapsed / self.done * self.total if self.done else 0.0
        self._check_slow(estimate)
        if self._stream is not None:
            end = "\n" if self.done >= self.total else ""
            self._stream.write(f"\r  {self._line(estimate)}\x1b[K{end}")
            self._stream.flush()
        elif now - self._last >= self._every and self.done < self.total:
            self._last = now
            self._out(f"  {self._line(estimate)}")

    def _line(self, estimate: float) -> str:
        rate = self.done / self.elapsed if self.elapsed > 0 else 0.0
        left = f", ETA {duration(estimate - self.elapsed)}" if self.done < self.total else ""
        return (
            f"{self.label}: {self.done}/{self.total} episodes ({100 * self.done // self.total}%), "
            f"{rate:.1f}/s, {duration(self.elapsed)} elapsed{left}"
        )

    def _check_slow(self, estimate: float) -> None:
        if self._warned or not self._earlier:
            return
        typical = statistics.median(self._earlier)
        if estimate >= SLOW_FLOOR_S and estimate > SLOW_FACTOR * max(typical, 1e-9):
            self._warned = True
            hint = f" ({self._slow_hint})" if self._slow_hint else ""
            self._out(
                f"  warning: {self.label} scores about {estimate / max(typical, 1e-9):.0f}x slower than the models "
                f"before it (~{duration(estimate)} against {duration(typical)}); its test-time adaptation{hint} "
                "dominates the evaluation. The models scored so far are saved; an interrupted evaluate resumes "
                "where it stopped"
            )
