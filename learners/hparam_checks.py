"""The checks a hyperparameter dataclass runs on its own values, in its ``validate``.

Each raises ``ValueError`` whose message starts with the field's name and says what it expects,
so the config stage can name ``search.fixed.<family>.<field>`` before any trial starts.
"""

from __future__ import annotations

from collections.abc import Iterable


def one_of(name: str, value: object, options: Iterable[object]) -> None:
    """``value`` must be one of ``options``."""
    allowed = tuple(options)
    if value not in allowed:
        raise ValueError(f"{name} must be one of {', '.join(map(str, allowed))}, got {value!r}")


def path_or_auto(name: str, value: str, paths: Iterable[str]) -> None:
    """``value`` must be ``auto`` (chosen at the first step) or one of the family's formulations."""
    allowed = tuple(paths)
    if value != "auto" and value not in allowed:
        raise ValueError(f"{name} must be 'auto' or one of {', '.join(allowed)}, got {value!r}")


def at_least(name: str, value: float, least: float) -> None:
    """``value`` must be ``>= least``."""
    if not value >= least:
        raise ValueError(f"{name} must be >= {least:g}, got {value!r}")


def positive(name: str, value: float) -> None:
    """``value`` must be ``> 0``."""
    if not value > 0:
        raise ValueError(f"{name} must be > 0, got {value!r}")


def within(name: str, value: float, low: float, high: float) -> None:
    """``value`` must lie in ``[low, high]``."""
    if not low <= value <= high:
        raise ValueError(f"{name} must be in [{low:g}, {high:g}], got {value!r}")


def below_one(name: str, value: float) -> None:
    """``value`` must lie in ``[0, 1)`` (a rate of dropping)."""
    if not 0 <= value < 1:
        raise ValueError(f"{name} must be in [0, 1), got {value!r}")


def no_dropblock(name: str, value: float) -> None:
    """``value`` must be 0: the gradient-based families adapt a pure network (torch.func), which a
    random dropout mask per call would break (see :mod:`learners.backbones.resnet12`)."""
    if value:
        raise ValueError(
            f"{name} must be 0 for the families that adapt their backbone functionally (random masks cannot "
            f"run under torch.func), got {value!r}"
        )


def size_or_unset(name: str, value: str) -> None:
    """``value`` must be empty (no limit) or a size such as ``2GiB``."""
    from learners.peak_memory import parse_size

    if value:
        try:
            parse_size(value)
        except ValueError as exc:
            raise ValueError(f"{name}: {exc}") from None
