"""Episode sampling: shapes, labels, class purity, no repeats, seeding, fixed episodes, errors."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from tasks.episodes import EpisodeBatch, EpisodeSpec
from tasks.errors import EpisodeError
from tasks.sampler import EpisodeSampler, fixed_episodes
from tasks.store import DatasetStore, SplitStore


@pytest.fixture(scope="module")
def train(tasks_small_dataset) -> SplitStore:
    return DatasetStore.open(tasks_small_dataset).split("train")


def _image_rows(split: SplitStore) -> dict[bytes, int]:
    """Each image's bytes -> its row (the synthetic images are all distinct)."""
    rows = {image.tobytes(): row for row, image in enumerate(split.images)}
    assert len(rows) == len(split.images)
    return rows


def _class_of_row(split: SplitStore) -> np.ndarray:
    return np.repeat(np.arange(split.num_classes), split.class_counts)


def test_sample_shapes_labels_and_class_purity(train):
    spec = EpisodeSpec(ways=5, shots=2, query=3)
    batch = EpisodeSampler(train, spec, tasks=4, seed=0).sample()
    assert batch.support_x.shape == (4, 10, 1, 28, 28) and batch.query_x.shape == (4, 15, 1, 28, 28)
    assert batch.support_x.dtype == torch.uint8 and batch.support_y.dtype == torch.int64
    assert batch.support_y.tolist() == [[0, 0, 1, 1, 2, 2, 3, 3, 4, 4]] * 4
    assert batch.query_y[0].tolist() == [0, 0, 0, 1, 1, 1, 2, 2, 2, 3, 3, 3, 4, 4, 4]
    assert (batch.tasks, batch.shots, batch.query) == (4, 2, 3)
    rows, row_class = _image_rows(train), _class_of_row(train)
    orders = []
    for t in range(4):
        support = [rows[x.numpy().tobytes()] for x in batch.support_x[t]]
        query = [rows[x.numpy().tobytes()] for x in batch.query_x[t]]
        assert len(set(support + query)) == 25  # no image twice in an episode
        classes = row_class[support].reshape(5, 2)
        assert (classes == classes[:, :1]).all()  # each label's images come from one class
        assert len(set(classes[:, 0])) == 5  # five different classes
        assert (row_class[query].reshape(5, 3) == classes[:, :1]).all()  # query labels match support
        orders.append(tuple(classes[:, 0]))
    assert any(list(order) != sorted(order) for order in orders)  # labels follow a random class order


def test_sampler_is_seeded(train):
    spec = EpisodeSpec(ways=3, shots=1, query=2)
    a, b = EpisodeSampler(train, spec, tasks=2, seed=5), EpisodeSampler(train, spec, tasks=2, seed=5)
    first, second = a.sample(), b.sample()
    assert torch.equal(first.support_x, second.support_x) and torch.equal(first.query_x, second.query_x)
    assert not torch.equal(a.sample().query_x, first.query_x)
    assert not torch.equal(EpisodeSampler(train, spec, tasks=2, seed=6).sample().query_x, first.query_x)


def test_sampler_covers_all_images_of_uneven_classes(train):
    """Uneven class sizes: only a class's own rows are drawn, and all of them eventually."""
    counts = np.array([3, 7, 5, 9])
    offsets = np.concatenate([[0], np.cumsum(counts)])
    images = np.repeat(np.arange(len(counts), dtype=np.uint8), counts)[:, None, None, None] * 10
    images = images + np.concatenate([np.arange(c) for c in counts]).astype(np.uint8)[:, None, None, None]
    split = SplitStore("uneven", images, offsets, counts, list("abcd"), list("abcd"))
    batch = EpisodeSampler(split, EpisodeSpec(ways=4, shots=1, query=2), tasks=400, seed=1).sample()
    values = torch.cat([batch.support_x, batch.query_x], 1).flatten().numpy()
    assert set(values) == {10 * c + i for c, n in enumerate(counts) for i in range(n)}


def test_fixed_episodes_do_not_depend_on_batch_size(train):
    spec = EpisodeSpec(ways=5, shots=1, query=4)
    by_7 = list(fixed_episodes(train, spec, episodes=20, seed=11, batch_tasks=7))
    by_50 = list(fixed_episodes(train, spec, episodes=20, seed=11))
    assert [b.tasks for b in by_7] == [7, 7, 6] and [b.tasks for b in by_50] == [20]
    for name in ("support_x", "support_y", "query_x", "query_y"):
        assert torch.equal(torch.cat([getattr(b, name) for b in by_7]), getattr(by_50[0], name))
    again = next(fixed_episodes(train, spec, episodes=20, seed=11))
    assert torch.equal(again.query_x, by_50[0].query_x)
    other = next(fixed_episodes(train, spec, episodes=20, seed=12))
    assert not torch.equal(other.query_x, by_50[0].query_x)
    assert list(fixed_episodes(train, spec, episodes=0, seed=1)) == []


def test_impossible_episodes_raise_clear_errors(train, tasks_small_dataset, tasks_snapshot):
    before = tasks_snapshot(tasks_small_dataset)
    too_many = r"25-way episodes need 25 classes but split 'train' has 24: use ways <= 24"
    with pytest.raises(EpisodeError, match=too_many):
        EpisodeSampler(train, EpisodeSpec(ways=25, shots=1, query=1))
    too_few = r"shots \+ query = 5 \+ 6 = 11 .* split 'train' has 10: lower shots or query"
    with pytest.raises(EpisodeError, match=too_few):
        fixed_episodes(train, EpisodeSpec(ways=5, shots=5, query=6), episodes=10, seed=0)
    with pytest.raises(ValueError, match="tasks"):
        EpisodeSampler(train, EpisodeSpec(ways=5, shots=1, query=1), tasks=0)
    assert tasks_snapshot(tasks_small_dataset) == before


def test_batch_moves_to_float_on_device(train):
    batch = EpisodeSampler(train, EpisodeSpec(ways=2, shots=1, query=1), tasks=2).sample().to("cpu")
    assert isinstance(batch, EpisodeBatch) and batch.support_x.dtype == torch.float32
    assert batch.support_x.min() >= 0.0 and batch.support_x.max() <= 1.0
