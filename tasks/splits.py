"""Seeded class splits: which classes go to meta-train, meta-validation and meta-test.

``random``: ``test`` classes are drawn from all classes, then ``val`` classes from the rest;
the remainder is ``train``. ``by-alphabet`` (Omniglot, Lake et al.): the evaluation set is
``test`` and ``val`` is drawn from the background set. ``csv`` (mini-ImageNet, tiered-ImageNet:
Ravi & Larochelle's ``train.csv`` / ``val.csv`` / ``test.csv``): the split the source's files
give, each class's ``partition`` naming its split; nothing is drawn, so no counts and no seed
apply. A count is an int (number of classes) or a float in (0, 1) (fraction of the pool it is
drawn from). Each split's classes are returned sorted by key. Rotated copies are made later,
per split, so a character and its rotations always land in the same split.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from tasks.source import ClassInfo

METHODS = ("random", "by-alphabet", "csv")
COUNTED = ("random", "by-alphabet")  # the methods that draw classes by data.val_classes (and test_classes)
SPLIT_NAMES = ("train", "val", "test")


@dataclass(frozen=True)
class ClassSplit:
    train: list[ClassInfo]
    val: list[ClassInfo]
    test: list[ClassInfo]

    def items(self) -> list[tuple[str, list[ClassInfo]]]:
        """``(name, classes)`` in the order train, val, test."""
        return [(name, getattr(self, name)) for name in SPLIT_NAMES]


def resolve_count(value: int | float, pool: int, field: str) -> int:
    """Number of classes that ``value`` (count or fraction) takes from a pool of ``pool``."""
    count = round(value * pool) if isinstance(value, float) else value
    if count >= pool:
        raise ValueError(f"{field}={value!r} takes {count} of the {pool} classes available, leaving none for training")
    return count


def split_classes(
    classes: Sequence[ClassInfo], method: str, val: int | float | None, test: int | float | None, seed: int
) -> ClassSplit:
    """Split ``classes`` by ``method`` (see the module docstring); ``ValueError`` names the
    setting (``data.split``, ``data.val_classes``, ``data.test_classes``) that cannot be met.
    ``test`` is ignored by ``by-alphabet``, both counts by ``csv``; otherwise both are required."""
    rng = np.random.default_rng(seed)
    ordered = sorted(classes, key=lambda c: c.key)
    if method == "csv":
        return _given_split(ordered)
    if val is None:
        raise ValueError("data.val_classes must be set (a class count or a fraction)")
    if method == "random":
        if test is None:
            raise ValueError("data.test_classes must be set (a class count or a fraction) for split 'random'")
        order = rng.permutation(len(ordered))
        n_test = resolve_count(test, len(ordered), "data.test_classes")
        test_set = [ordered[i] for i in order[:n_test]]
        pool = [ordered[i] for i in order[n_test:]]
    elif method == "by-alphabet":
        partitions = {c.partition for c in ordered}
        if not partitions <= {"background", "evaluation"} or len(partitions) != 2:
            raise ValueError(
                "data.split 'by-alphabet' needs Omniglot's background and evaluation sets; "
                f"this source has partitions {sorted(map(str, partitions))}"
            )
        test_set = [c for c in ordered if c.partition == "evaluation"]
        background = [c for c in ordered if c.partition == "background"]
        pool = [background[i] for i in rng.permutation(len(background))]
    else:
        raise ValueError(f"data.split must be one of {', '.join(METHODS)}, got {method!r}")
    n_val = resolve_count(val, len(pool), "data.val_classes")
    split = ClassSplit(
        train=sorted(pool[n_val:], key=lambda c: c.key),
        val=sorted(pool[:n_val], key=lambda c: c.key),
        test=sorted(test_set, key=lambda c: c.key),
    )
    for name, members in split.items():
        if not members:
            raise ValueError(
                f"split {name!r} gets no classes out of {len(ordered)} "
                f"(data.val_classes={val!r}, data.test_classes={test!r}); each split needs at least one"
            )
    return split


def _given_split(ordered: list[ClassInfo]) -> ClassSplit:
    """The split the source's own files give: each class's ``partition`` is its split's name."""
    partitions = {c.partition for c in ordered}
    if not partitions <= set(SPLIT_NAMES):
        raise ValueError(
            "data.split 'csv' needs classes listed in train.csv, val.csv and test.csv; "
            f"this source has partitions {sorted(map(str, partitions))}"
        )
    split = ClassSplit(*([c for c in ordered if c.partition == name] for name in SPLIT_NAMES))
    for name, members in split.items():
        if not members:
            raise ValueError(f"split {name!r} gets no classes: {name}.csv lists none")
    return split
