"""ProtoNet: logits against a hand computation, training, train-time ways, cosine distance."""

from __future__ import annotations

import pytest
import torch

from learners.protonet import ProtoNet
from learners.registry import make_hparams
from tasks.episodes import EpisodeBatch, EpisodeSpec

pytestmark = pytest.mark.usefixtures("single_thread")

SHAPE = (1, 12, 12)


def batch(tasks=2, ways=3, shots=2, query=3, seed=0) -> EpisodeBatch:
    gen = torch.Generator().manual_seed(seed)

    def labels(n: int) -> torch.Tensor:
        return torch.arange(ways).repeat_interleave(n).expand(tasks, -1).contiguous()

    def images(n: int) -> torch.Tensor:
        return torch.rand(tasks, ways * n, *SHAPE, generator=gen)

    return EpisodeBatch(images(shots), labels(shots), images(query), labels(query), ways)


def make(**hparams) -> ProtoNet:
    torch.manual_seed(0)
    return ProtoNet(make_hparams("protonet", {"width": 8, "depth": 2, **hparams}), SHAPE, 3)


def test_squared_euclidean_logits_equal_a_hand_computation():
    learner = make()
    b = batch(shots=3)
    logits = learner.predict(b.support_x, b.support_y, b.query_x)
    assert logits.shape == (2, 9, 3)
    with torch.no_grad():
        for t in range(b.tasks):
            support = learner.encoder(b.support_x[t])
            query = learner.encoder(b.query_x[t])
            for c in range(3):
                prototype = support[b.support_y[t] == c].mean(0)
                for i, q in enumerate(query):
                    expected = -sum((q[d] - prototype[d]).item() ** 2 for d in range(q.numel()))
                    assert logits[t, i, c].item() == pytest.approx(expected, rel=1e-4, abs=1e-4)


def test_prototypes_do_not_depend_on_support_order():
    learner = make()
    b = batch()
    order = torch.randperm(b.support_x.shape[1])
    shuffled = learner.predict(b.support_x[:, order], b.support_y[:, order], b.query_x)
    torch.testing.assert_close(shuffled, learner.predict(b.support_x, b.support_y, b.query_x))


@pytest.mark.parametrize("distance", ["sqeuclidean", "cosine"])
def test_training_reduces_loss_on_a_fixed_batch(distance):
    learner = make(distance=distance, lr=1e-2)
    b = batch()
    losses = [learner.meta_train_step(b)["loss"] for _ in range(20)]
    assert losses[-1] < 0.5 * losses[0], losses


def test_learning_rate_halves_every_lr_decay_every_updates():
    learner = make(lr=1e-3, lr_decay_every=2)
    b = batch()
    lrs = [learner.meta_train_step(b)["lr"] for _ in range(5)]
    assert lrs == pytest.approx([1e-3, 1e-3, 5e-4, 5e-4, 2.5e-4])


def test_train_ways_sets_the_training_episodes():
    spec = EpisodeSpec(ways=5, shots=1, query=15)
    assert make(train_ways=60).training_spec(spec) == EpisodeSpec(ways=60, shots=1, query=15)
    assert make().training_spec(spec) == spec


def test_scores_any_number_of_ways():
    learner = make()
    b = batch(ways=5)
    assert learner.predict(b.support_x, b.support_y, b.query_x).shape == (2, 15, 5)
