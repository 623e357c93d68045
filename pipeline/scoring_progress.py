"""Progress while one model scores its test episodes (a :class:`pipeline.bar.Bar`: episodes done,
rate, ETA), and a warning when a model scores far slower than the ones before it (long
test-time adaptation)."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Iterable, Iterator
from typing import TextIO, TypeVar

from pipeline.bar import LOG_EVERY_S, Bar, duration
from tasks.say import Say

SLOW_FACTOR = 5.0  # a model this many times slower than the median of the others gets a warning
SLOW_FLOOR_S = 60.0  # ... when its estimate is also at least this long

T = TypeVar("T")


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
        self.label, self.total = label, total
        self._out = out
        self._bar = Bar(label, total, "episodes", out, stream, every_s, clock)
        self._earlier = sorted(earlier_s)
        self._slow_hint = slow_hint
        self._warned = False

    @property
    def done(self) -> int:
        return self._bar.done

    @property
    def elapsed(self) -> float:
        return self._bar.elapsed

    def count(self, batches: Iterable[T], size: Callable[[T], int]) -> Iterator[T]:
        """``batches`` passed through; each one counts (``size`` episodes) once it has been scored."""
        for batch in batches:
            yield batch
            self.advance(size(batch))

    def advance(self, episodes: int) -> None:
        done = self.done + episodes
        self._check_slow(self.elapsed / done * self.total if done else 0.0)
        self._bar.advance(episodes)

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
