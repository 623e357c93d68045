"""Class splits: counts, fractions, Omniglot protocols, determinism, errors."""

from __future__ import annotations

import pytest

from tasks.source import ClassInfo
from tasks.splits import split_classes


def _omniglot_like() -> list[ClassInfo]:
    def one(set_name: str, alphabet: str, i: int) -> ClassInfo:
        group = f"{alphabet}{i // 40:02d}"
        return ClassInfo(f"images_{set_name}/{group}/character{i:04d}", group, set_name)

    return [one("background", "A", i) for i in range(964)] + [one("evaluation", "B", i) for i in range(659)]


def _keys(classes: list[ClassInfo]) -> list[str]:
    return [c.key for c in classes]


def test_random_split_omniglot_counts_are_disjoint_sorted_and_seeded():
    classes = _omniglot_like()
    split = split_classes(classes, "random", 172, 423, seed=0)
    assert (len(split.train), len(split.val), len(split.test)) == (1028, 172, 423)
    keys = [set(_keys(members)) for _, members in split.items()]
    assert set.union(*keys) == {c.key for c in classes} and sum(map(len, keys)) == 1623
    assert all(_keys(members) == sorted(_keys(members)) for _, members in split.items())
    assert split == split_classes(list(reversed(classes)), "random", 172, 423, seed=0)  # input order is irrelevant
    assert split.test != split_classes(classes, "random", 172, 423, seed=1).test


def test_fractions_take_from_their_pool():
    classes = [ClassInfo(f"c{i:03d}", "g") for i in range(400)]
    split = split_classes(classes, "random", 0.15, 0.2, seed=0)
    assert (len(split.test), len(split.val), len(split.train)) == (80, 48, 272)  # val = 15% of the 320 left


def test_by_alphabet_uses_evaluation_set_for_test():
    split = split_classes(_omniglot_like(), "by-alphabet", 172, None, seed=0)
    assert (len(split.train), len(split.val), len(split.test)) == (792, 172, 659)
    assert all(c.partition == "evaluation" for c in split.test)
    assert all(c.partition == "background" for c in split.train + split.val)


def test_split_errors_name_the_setting():
    classes = [ClassInfo(f"c{i}", "g") for i in range(10)]
    with pytest.raises(ValueError, match="by-alphabet.*background and evaluation"):
        split_classes(classes, "by-alphabet", 2, None, seed=0)
    with pytest.raises(ValueError, match="data.test_classes=10"):
        split_classes(classes, "random", 2, 10, seed=0)
    with pytest.raises(ValueError, match="data.val_classes=8"):
        split_classes(classes, "random", 8, 2, seed=0)
    with pytest.raises(ValueError, match="split 'val' gets no classes"):
        split_classes(classes, "random", 0.01, 2, seed=0)
    with pytest.raises(ValueError, match="data.split must be one of"):
        split_classes(classes, "random-chars", 2, 2, seed=0)
