"""Split checks at build: the one line names the split and the numbers, and never hints at fewer than 2 ways."""

from __future__ import annotations

import re

import pytest

from tasks.errors import DatasetError
from tasks.source import ClassInfo
from tasks.split_check import EpisodeNeed, check_class_images, check_classes
from tasks.splits import ClassSplit


def _split(train: int, val: int, test: int) -> ClassSplit:
    classes = iter(ClassInfo(f"c{i:03d}", "g") for i in range(train + val + test))
    return ClassSplit(*([next(classes) for _ in range(n)] for n in (train, val, test)))


def _needs(ways: int, test_ways: int) -> list[EpisodeNeed]:
    return [
        EpisodeNeed("train", ways, 1, 5, "episodes.train"),
        EpisodeNeed("val", ways, 1, 5, "episodes.train", "used for validation"),
        EpisodeNeed("test", test_ways, 1, 5, "episodes.test"),
    ]


def _refusal(split: ClassSplit, needs: list[EpisodeNeed], rotations: bool = False, method: str = "random") -> str:
    counts: dict[str, int | float | None] = {"val_classes": 0.15, "test_classes": 0.2}
    with pytest.raises(DatasetError) as refused:
        check_classes(needs, split, rotations=rotations, method=method, counts=counts, where="folder source /x")
    return str(refused.value)


@pytest.mark.parametrize("val", [1, 2, 3, 4])
def test_hints_never_suggest_fewer_than_two_ways(val):
    line = _refusal(_split(20, val, 10), _needs(5, 5))
    assert f"split 'val' gets {val} class" in line and "asks for 5-way episodes" in line
    assert "set data.val_classes to 5 or more (now 0.15)" in line
    suggested = [int(n) for n in re.findall(r"ways to (?:between 2 and )?(\d+)", line)]
    assert all(n >= 2 for n in suggested) and (suggested == [] if val < 2 else suggested == [val])


def test_train_and_test_splits_and_a_source_too_small_for_all_three():
    assert "lower data.val_classes (0.15) or data.test_classes (0.2) so that train keeps 5" in _refusal(
        _split(3, 6, 6), _needs(5, 5)
    )
    assert "split 'test' gets 3 classes" in _refusal(_split(10, 6, 3), _needs(5, 5))
    by_alphabet = _refusal(_split(10, 6, 3), _needs(5, 5), method="by-alphabet")  # the evaluation set is test
    assert "set data.test_classes" not in by_alphabet and "lower episodes.test.ways to between 2 and 3" in by_alphabet
    line = _refusal(_split(3, 1, 1), _needs(3, 3))
    assert line.endswith(
        "split 'val' gets 1 class but episodes.train (used for validation) asks for 3-way episodes: add classes to "
        "the image source (the source's 5 classes are fewer than the 9 that train, val and test episodes need together)"
    )


def test_a_source_too_small_for_the_ways_gets_the_most_ways_that_fit():
    line = _refusal(_split(8, 1, 1), _needs(5, 5))  # 10 classes: 3 + 3 + 3 fit, 5 + 5 + 5 do not
    assert "lower episodes.train.ways and episodes.test.ways to between 2 and 3 and give val and test 3 classes" in line
    assert "ways to between 2 and 4" in _refusal(_split(2, 1, 1), _needs(8, 8), rotations=True)  # 4 x 4 rotations


def test_rotations_count_four_classes_each():
    check_classes(_needs(8, 8), _split(2, 2, 2), rotations=True, method="random", counts={}, where="x")
    assert "gets 4 classes (with rotations)" in _refusal(_split(2, 1, 2), _needs(8, 8), rotations=True)


def test_class_with_too_few_images_for_shots_and_query():
    check_class_images(_needs(5, 5), "test", "c1", 6, "x")
    with pytest.raises(
        DatasetError,
        match=r"class 'c1' of split 'test' has 5 images but episodes.test asks for "
        r"shots \+ query = 1 \+ 5 = 6 per class: lower episodes.test.query or episodes.test.shots "
        r"so that shots \+ query <= 5",
    ):
        check_class_images(_needs(5, 5), "test", "c1", 5, "x")
