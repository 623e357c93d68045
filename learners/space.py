"""Search-space declarations, as plain data.

A family declares the ranges of its hyperparameters with these three types; the pipeline
turns them into Optuna ``suggest_*`` calls (define-by-run, conditional on the family). Keeping
them as data keeps ``learners/`` free of Optuna and Ray, so a learner runs with torch alone.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Float:
    """A float in ``[low, high]``, sampled log-uniformly when ``log``."""

    low: float
    high: float
    log: bool = False


@dataclass(frozen=True)
class Int:
    """An integer in ``[low, high]`` (inclusive), sampled log-uniformly when ``log``."""

    low: int
    high: int
    log: bool = False


@dataclass(frozen=True)
class Choice:
    """One of ``options``."""

    options: tuple


Distribution = Float | Int | Choice
SearchSpace = dict[str, Distribution]
