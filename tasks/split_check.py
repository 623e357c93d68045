"""Check at build time that each split can supply the episodes the config will ask of it.

A split with fewer classes than the configured ways, or a class with fewer images than
shots + query, is refused before the dataset is published, with a line naming the split, the
numbers and what to change. Hints never suggest fewer than 2 ways (the smallest episode).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from tasks.errors import DatasetError
from tasks.splits import ClassSplit

MIN_WAYS = 2
ROTATION_FACTOR = 4  # rotations turn each class into four


@dataclass(frozen=True)
class EpisodeNeed:
    """Episodes split ``split`` must supply: ``ways`` classes of ``shots + query`` images each.

    ``field`` is the config section they come from (``episodes.train``), ``use`` what they are
    for when that is not obvious from the split (``used for validation``).
    """

    split: str
    ways: int
    shots: int
    query: int
    field: str
    use: str = ""

    @property
    def images(self) -> int:
        return self.shots + self.query

    @property
    def label(self) -> str:
        return f"{self.field} ({self.use})" if self.use else self.field


def check_classes(
    needs: Sequence[EpisodeNeed],
    split: ClassSplit,
    *,
    rotations: bool,
    method: str,
    counts: dict[str, int | float | None],
    where: str,
) -> None:
    """:class:`DatasetError` for the first need whose split has fewer classes than its ways.

    ``counts`` holds the configured ``val_classes`` / ``test_classes``, quoted in the hint.
    """
    factor = ROTATION_FACTOR if rotations else 1
    total = sum(len(members) for _, members in split.items())
    required = {name: 0 for name, _ in split.items()}  # source classes each split needs
    for need in needs:
        required[need.split] = max(required[need.split], math.ceil(need.ways / factor))
    feasible = sum(required.values()) <= total
    for need in needs:
        have = len(getattr(split, need.split)) * factor
        if need.ways <= have:
            continue
        stored = f"{have} class{'' if have == 1 else 'es'}" + (" (with rotations)" if rotations else "")
        if feasible:
            hint = _hint(need, have, required[need.split], method, counts)
        else:
            hint = _fewer_ways_hint(total, factor, method) + (
                f" (the source's {total} classes are fewer than the {sum(required.values())} that train, val and "
                f"test episodes need together{' with rotations' if rotations else ''})"
            )
        raise DatasetError(
            f"{where}: split {need.split!r} gets {stored} but {need.label} asks for {need.ways}-way episodes: {hint}"
        )


def check_class_images(needs: Sequence[EpisodeNeed], split_name: str, key: str, count: int, where: str) -> None:
    """:class:`DatasetError` when class ``key`` of ``split_name`` has fewer images than a need asks."""
    for need in needs:
        if need.split != split_name or count >= need.images:
            continue
        least = f"so that shots + query <= {count}" if count >= 2 else "or add images to it"
        raise DatasetError(
            f"{where}: class {key!r} of split {split_name!r} has {count} images but {need.label} asks for "
            f"shots + query = {need.shots} + {need.query} = {need.images} per class: lower {need.field}.query "
            f"or {need.field}.shots {least}"
        )


def _hint(need: EpisodeNeed, have: int, required: int, method: str, counts: dict[str, int | float | None]) -> str:
    """What to change when the source has classes enough for every split, just not this one."""
    options = []
    counted = method != "csv"  # a csv split's classes are the source's files', not counts
    if counted and need.split == "train":
        options.append(
            f"lower data.val_classes ({counts.get('val_classes')!r}) or data.test_classes "
            f"({counts.get('test_classes')!r}) so that train keeps {required} classes"
        )
    elif counted and (need.split == "val" or method == "random"):
        name = f"data.{need.split}_classes"
        options.append(f"set {name} to {required} or more (now {counts.get(f'{need.split}_classes')!r})")
    if have >= MIN_WAYS:
        options.append(f"lower {need.field}.ways to {_ways_range(have)}")
    if not counted:
        options.append(f"list more classes in {need.split}.csv")
    return " or ".join(options)


def _fewer_ways_hint(total: int, factor: int, method: str) -> str:
    """The most ways that train, val and test episodes can all have from ``total`` source classes."""
    ways = max((w for w in range(MIN_WAYS, total * factor + 1) if 3 * math.ceil(w / factor) <= total), default=0)
    if not ways:
        return "add classes to the image source"
    each = math.ceil(ways / factor)
    where = "in val.csv and test.csv" if method == "csv" else "(data.val_classes, data.test_classes)"
    return (
        f"lower episodes.train.ways and episodes.test.ways to {_ways_range(ways)} and give val "
        f"and test {each} classes each {where}, or add classes to the image source"
    )


def _ways_range(most: int) -> str:
    return str(most) if most == MIN_WAYS else f"between {MIN_WAYS} and {most}"
