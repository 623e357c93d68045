"""``path: auto``: choosing among a family's equal formulations on the first meta-batch.

MAML, Reptile and Meta-LSTM each compute one step by several formulations ("paths") that agree
to rounding. With ``path: auto`` the learner hands its first meta-batch's computation to
:class:`AutoPath`, which decides once and keeps the choice for the life of the learner:

- off a GPU it takes the first candidate that runs, untimed: the formulations agree only to
  rounding, so a timed choice would keep a CPU run from repeating to the last digit;
- on a GPU each candidate that runs is warmed up once (compiling, if it compiles), timed
  ``timed_runs`` times interleaved, and the lowest ``statistic`` wins.

With a memory limit the peak memory of each candidate that runs is measured too
(:func:`learners.peak_memory.peak_bytes`, which on a CPU does not depend on timing): off a GPU
the first candidate that fits is taken, on a GPU the fastest that fits; when none fits, the one
with the lowest peak, with a warning. ``reason`` says in one line what was chosen and why; it
is logged (logger ``learners.auto_path``) when the choice is made.
"""

from __future__ import annotations

import logging
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial

import torch

from learners.base import synchronize
from learners.peak_memory import format_size, peak_bytes

logger = logging.getLogger(__name__)

RunPath = Callable[[str], object]  # computes the first meta-batch's step by a path, applying nothing


@dataclass(frozen=True)
class AutoPolicy:
    """What ``auto`` chooses from: ``untimed`` candidates off a GPU (in order of preference),
    ``timed`` ones on a GPU, timed ``timed_runs`` times each and summarised by ``statistic``."""

    untimed: tuple[str, ...]
    timed: tuple[str, ...]
    timed_runs: int
    statistic: Callable[[list[float]], float]


class AutoPath:
    """A learner's path: the configured one, or with ``"auto"`` the one chosen on the first batch."""

    def __init__(self, family: str, setting: str, policy: AutoPolicy, memory_limit: int | None = None) -> None:
        self.family = family
        self.policy = policy
        self.memory_limit = memory_limit
        self.chosen: str | None = None if setting == "auto" else setting
        self.timings_ms: dict[str, float] = {}
        self.peaks: dict[str, int] = {}  # bytes, measured only under a memory limit
        self.reason = "" if self.chosen is None else f"{family}: path {setting!r} (configured)"

    def path(self, device: torch.device, run: RunPath) -> str:
        """The path to run; with ``"auto"`` chosen now (on the first call) by ``run``."""
        if self.chosen is None:
            self.chosen = self.choose(device, run)
            logger.info(self.reason)
        return self.chosen

    def choose(self, device: torch.device, run: RunPath) -> str:
        """On a GPU the fastest timed candidate (that fits), elsewhere the first that runs (and fits)."""
        return self.fastest(device, run) if device.type == "cuda" else self.first(device, run)

    def first(self, device: torch.device, run: RunPath) -> str:
        """The first untimed candidate that runs (and, under a memory limit, fits)."""
        how = "first that runs, untimed off a GPU"
        for path in self.policy.untimed:
            if not _runs(self.family, path, run):
                continue
            if self.memory_limit is None:
                self.reason = f"{self.family}: path {path!r} (auto: {how})"
                return path
            self.peaks[path] = peak_bytes(partial(run, path), device)
            if self.peaks[path] <= self.memory_limit:
                self.reason = f"{self.family}: path {path!r} (auto: {how} within {self._peaks()})"
                return path
        if not self.peaks:
            raise RuntimeError(f"{self.family}: none of the paths {', '.join(self.policy.untimed)} runs here")
        return self._lowest_peak()

    def fastest(self, device: torch.device, run: RunPath) -> str:
        """The fastest timed candidate (under a memory limit, the fastest that fits); applies nothing."""
        candidates = [path for path in self.policy.timed if _runs(self.family, path, run)]
        if not candidates:
            raise RuntimeError(f"{self.family}: none of the paths {', '.join(self.policy.timed)} runs here")
        self.timings_ms = timings_ms(candidates, run, device, self.policy.timed_runs, self.policy.statistic)
        timings = "ms " + ", ".join(f"{p} {ms:.0f}" for p, ms in self.timings_ms.items())
        if self.memory_limit is None:
            best = min(candidates, key=self.timings_ms.__getitem__)
            self.reason = f"{self.family}: path {best!r} (auto: fastest on a GPU; {timings})"
            return best
        self.peaks = {path: peak_bytes(partial(run, path), device) for path in candidates}
        fits = [path for path in candidates if self.peaks[path] <= self.memory_limit]
        if not fits:
            return self._lowest_peak()
        best = min(fits, key=self.timings_ms.__getitem__)
        self.reason = f"{self.family}: path {best!r} (auto: fastest on a GPU within {self._peaks()}; {timings})"
        return best

    def _lowest_peak(self) -> str:
        """With no candidate within the memory limit: the one with the lowest peak, with a warning."""
        smallest = min(self.peaks, key=self.peaks.__getitem__)
        self.reason = f"{self.family}: path {smallest!r} (auto: no path fits {self._peaks()}; lowest peak taken)"
        warnings.warn(self.reason, stacklevel=3)
        return smallest

    def _peaks(self) -> str:
        limit = format_size(self.memory_limit or 0)
        return f"memory_limit {limit}; peaks " + ", ".join(f"{p} {format_size(b)}" for p, b in self.peaks.items())


def timings_ms(
    paths: Sequence[str], run: RunPath, device: torch.device, timed_runs: int, statistic: Callable[[list[float]], float]
) -> dict[str, float]:
    """Path -> milliseconds of ``run(path)`` (already warmed up): ``timed_runs`` interleaved runs, summarised."""
    times: dict[str, list[float]] = {path: [] for path in paths}
    for _ in range(timed_runs):
        for path in paths:
            synchronize(device)
            start = time.perf_counter()
            run(path)
            synchronize(device)
            times[path].append(time.perf_counter() - start)
    return {path: statistic(seconds) * 1e3 for path, seconds in times.items()}


def _runs(family: str, path: str, run: RunPath) -> bool:
    """Whether ``run(path)`` completes; a warning names the path and the error when it does not."""
    try:
        run(path)
    except Exception as exc:  # a path this machine cannot run, e.g. torch.compile without a compiler
        warnings.warn(f"{family}: skipping path {path!r} here ({type(exc).__name__}: {exc})", stacklevel=3)
        return False
    return True
