"""Model-based (memory) families: mann (Santoro et al. 2016) and metanet (Munkhdalai & Yu 2017).

Real training on synthetic glyphs and real checkpoints, no mocks; CPU-sized. The mechanisms each
paper is about are checked directly: MANN's one-step label offset and least-recently-used
writes, MetaNet's fast weights (they matter, and come from the support set alone).
"""

from __future__ import annotations

import dataclasses
import math
import time
from typing import Any

import pytest
import torch
import torch.nn.functional as F

from learners.checkpoint import build_learner, load_learner, save_learner
from learners.mann import MemoryState, lrua_step
from learners.metric import evaluating
from learners.registry import family_names, get_family
from learners.space import Choice, Float, Int
from pipeline.scoring import episode_accuracies, mean_ci95
from tasks.episodes import EpisodeBatch, EpisodeSpec
from tasks.sampler import EpisodeSampler, fixed_episodes

pytestmark = pytest.mark.usefixtures("single_thread")

FAMILIES = ("mann", "metanet")
SPEC = EpisodeSpec(ways=5, shots=1, query=5)
TEST_EPISODES = 60
TINY = {
    "mann": {"controller_size": 16, "memory_slots": 8, "memory_size": 8, "read_heads": 2},
    "metanet": {"width": 8, "representation_dim": 8, "hidden_dim": 8, "generator_hidden": 4},
}
# Tiny models for the mechanical tests: MANN with each encoder (batch-norm only in the conv one).
TINY_CASES = [
    pytest.param("mann", TINY["mann"], id="mann-pixels"),
    pytest.param("mann", {**TINY["mann"], "encoder": "conv", "width": 8}, id="mann-conv"),
    pytest.param("metanet", TINY["metanet"], id="metanet"),
]


@pytest.fixture(scope="module")
def glyphs(glyph_store):
    """Synthetic glyphs, 260 classes x 12 images (train 200 / val 20 / test 40), built once."""
    return glyph_store(synthetic_classes=260, synthetic_images_per_class=12, val_classes=20, test_classes=40, seed=5)


@pytest.fixture(scope="module")
def test_episodes(glyphs):
    """Fixed-seed 5-way 1-shot episodes of the test split (float images)."""
    return [b.to("cpu") for b in fixed_episodes(glyphs.split("test"), SPEC, TEST_EPISODES, seed=7, batch_tasks=30)]


def _learner(family: str, image_shape=(1, 28, 28), seed: int = 0, **hparams):
    torch.manual_seed(seed)
    spec = {"family": family, "hparams": hparams, "image_shape": list(image_shape), "ways": SPEC.ways}
    return build_learner(spec)


def _accuracy(learner, episodes) -> tuple[float, float]:
    return mean_ci95(episode_accuracies(learner, episodes, torch.device("cpu")))


def _meta_train(learner, split, steps: int, tasks: int) -> tuple[int, float]:
    """``steps`` meta-iterations (a count, not a time budget: a loaded machine is only slower);
    returns (steps, seconds taken)."""
    sampler = EpisodeSampler(split, learner.training_spec(SPEC), tasks=tasks, seed=1)
    start = time.monotonic()
    for _ in range(steps):
        metrics = learner.meta_train_step(sampler.sample().to("cpu"))
        assert math.isfinite(metrics["loss"]) and 0.0 <= metrics["accuracy"] <= 1.0
    return steps, time.monotonic() - start


def _episode(
    tasks: int = 2, ways: int = 5, shots: int = 1, query: int = 2, seed: int = 0, shape=(1, 28, 28)
) -> EpisodeBatch:
    g = torch.Generator().manual_seed(seed)
    return EpisodeBatch(
        support_x=torch.rand(tasks, ways * shots, *shape, generator=g),
        support_y=torch.arange(ways).repeat_interleave(shots).expand(tasks, -1).contiguous(),
        query_x=torch.rand(tasks, ways * query, *shape, generator=g),
        query_y=torch.arange(ways).repeat_interleave(query).expand(tasks, -1).contiguous(),
        ways=ways,
    )


# --- both families ---------------------------------------------------------------------------


@pytest.mark.parametrize("family", FAMILIES)
def test_registered_with_paper_and_search_space(family):
    assert family in family_names()
    learner_cls = get_family(family)
    assert learner_cls.family == family and learner_cls.paper
    fields = {f.name: f for f in dataclasses.fields(learner_cls.Hyperparams)}
    assert {"lr", "width", "depth"} <= set(learner_cls.search_space) <= set(fields)
    lr = learner_cls.search_space["lr"]
    assert isinstance(lr, Float) and lr.log
    defaults = learner_cls.Hyperparams()
    for name, dist in learner_cls.search_space.items():
        kind = type(getattr(defaults, name))
        if isinstance(dist, Choice):
            assert all(isinstance(option, kind) for option in dist.options), name
        else:
            assert isinstance(dist, Int if kind is int else Float) and dist.low < dist.high, name
    # The extreme corners of the space build and run.
    for pick in (lambda d: d.low, lambda d: d.high):
        values = {n: (d.options[0] if isinstance(d, Choice) else pick(d)) for n, d in learner_cls.search_space.items()}
        learner = _learner(family, **values)
        batch = _episode(tasks=1, query=1)
        logits = learner.predict(batch.support_x, batch.support_y, batch.query_x)
        assert logits.shape == (1, 5, 5) and torch.isfinite(logits).all()


@pytest.mark.parametrize("family, hparams", TINY_CASES)
def test_fixed_output_head_refuses_other_ways_clearly(family, hparams):
    learner = _learner(family, **hparams)
    learner.check_ways(5)
    with pytest.raises(ValueError, match=r"built for 5-way episodes .* cannot score 20-way"):
        learner.check_ways(20)
    batch = _episode(ways=3)
    with pytest.raises(ValueError, match="cannot score 3-way"):
        learner.predict(batch.support_x, batch.support_y, batch.query_x)


@pytest.mark.parametrize("family, hparams", TINY_CASES)
def test_every_parameter_learns_and_predict_leaves_the_model_alone(family, hparams):
    learner = _learner(family, **hparams)
    learner.meta_train_step(_episode())
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in learner.parameters()), [
        n for n, p in learner.named_parameters() if p.grad is None or p.grad.abs().sum() == 0
    ]
    state = {k: v.clone() for k, v in learner.state_dict().items()}
    batch = _episode(tasks=3, query=3, seed=1)
    logits = learner.predict(batch.support_x, batch.support_y, batch.query_x)
    assert logits.shape == (3, 15, 5) and not logits.requires_grad and torch.isfinite(logits).all()
    assert learner.training  # the mode predict found is restored, and nothing changed
    assert all(torch.equal(v, learner.state_dict()[k]) for k, v in state.items())
    # A query's logits depend on its task's support set and itself only: not on the other
    # queries, not on the other tasks of the batch, and the same on every call.
    other = batch.query_x.clone()
    other[:, 1:] = torch.rand_like(other[:, 1:])
    again = learner.predict(batch.support_x, batch.support_y, other)
    torch.testing.assert_close(again[:, 0], logits[:, 0])
    alone = learner.predict(batch.support_x[1:2], batch.support_y[1:2], batch.query_x[1:2])
    torch.testing.assert_close(alone[0], logits[1])


@pytest.mark.parametrize("family, hparams", TINY_CASES)
def test_checkpoint_round_trip_gives_identical_predictions_and_resumes_exactly(tmp_path, family, hparams):
    learner = _learner(family, **hparams)
    for seed in range(2):  # moves the weights, batch-norm statistics, Adam state (and MANN's order generator)
        learner.meta_train_step(_episode(seed=seed))
    save_learner(learner, tmp_path / "ckpt", extra={"iteration": 2})
    loaded, extra = load_learner(tmp_path / "ckpt")
    assert extra == {"iteration": 2} and type(loaded) is type(learner) and loaded.hparams == learner.hparams
    batch = _episode(tasks=3, query=3, seed=5)
    assert torch.equal(
        loaded.predict(batch.support_x, batch.support_y, batch.query_x),
        learner.predict(batch.support_x, batch.support_y, batch.query_x),
    )
    # Training goes on identically from the checkpoint.
    step = _episode(seed=9)
    assert loaded.meta_train_step(step) == learner.meta_train_step(step)
    for (name, a), b in zip(learner.state_dict().items(), loaded.state_dict().values(), strict=True):
        assert torch.equal(a, b), name


# --- MANN ------------------------------------------------------------------------------------


def test_mann_shows_each_label_one_step_late():
    learner = _learner("mann", encoder="pixels", controller_size=16, memory_slots=8, memory_size=8, read_heads=2)
    g = torch.Generator().manual_seed(0)
    features = torch.rand(3, 10, 28 * 28, generator=g)
    labels = torch.randint(0, 5, (3, 10), generator=g)
    with torch.no_grad():
        seq = learner.run_sequence(features, labels, torch.Generator().manual_seed(1))
    assert sorted(seq.order[0].tolist()) == list(range(10)) and not torch.equal(seq.order[0], torch.arange(10))
    assert torch.equal(seq.labels, labels.gather(1, seq.order))
    assert torch.equal(seq.label_inputs[:, 0], torch.zeros(3, 5))  # the first step carries no label
    assert torch.equal(seq.label_inputs[:, 1:], F.one_hot(seq.labels[:, :-1], 5).float())  # step t: label of t-1

    # Behaviour, not just bookkeeping: relabel the image shown at step t. The predictions up to
    # and including step t cannot change (its label has not been shown yet); step t+1's does.
    t = 4
    relabelled = labels.clone()
    shown = seq.order[:, t]
    relabelled[torch.arange(3), shown] = (labels[torch.arange(3), shown] + 1) % 5
    with torch.no_grad():
        seq2 = learner.run_sequence(features, relabelled, torch.Generator().manual_seed(1))
    assert torch.equal(seq2.order, seq.order)
    torch.testing.assert_close(seq2.logits[:, : t + 1], seq.logits[:, : t + 1])
    assert not torch.allclose(seq2.logits[:, t + 1], seq.logits[:, t + 1])

    # Episodes: the support set is one shuffled sequence, then every query is the next step,
    # whose label input is the last support label; a query's own label is never an input.
    batch = _episode(tasks=2, query=3)
    with torch.no_grad():
        out = learner.run_episodes(batch.support_x, batch.support_y, batch.query_x, torch.Generator().manual_seed(2))
    assert torch.equal(out.support.label_inputs[:, 0], torch.zeros(2, 5))
    assert torch.equal(out.query_label_input, F.one_hot(out.support.labels[:, -1], 5).float())
    assert out.query_logits.shape == (2, 15, 5)


def _state(usage, read_weights, memory):
    b, h = read_weights.shape[:2]
    return MemoryState(
        h=torch.zeros(b, 1),
        c=torch.zeros(b, 1),
        memory=memory,
        usage=usage,
        read_weights=read_weights,
        reads=torch.zeros(b, h, memory.shape[-1]),
    )


def test_lrua_writes_to_the_least_used_rows_or_to_the_rows_read_last():
    g = torch.Generator().manual_seed(0)
    usage = torch.tensor([[0.9, 0.2, 0.7, 0.1, 0.5, 0.8]])  # least used: row 3, then row 1
    read_weights = F.one_hot(torch.tensor([[5, 0]]), 6).float()  # head 0 read row 5, head 1 row 0
    memory = torch.rand(1, 6, 4, generator=g) + 0.1
    keys = torch.randn(1, 2, 4, generator=g)
    content = torch.randn(1, 2, 4, generator=g)
    state = _state(usage, read_weights, memory)

    # Gate closed (sigmoid(alpha) ~ 0): head i writes to the i-th least-used row, which is zeroed
    # first; nothing else changes.
    new_memory, new_usage, reads_w, reads, write_w = lrua_step(
        state, keys, torch.full((1, 2), -40.0), 0.9, None, content
    )
    torch.testing.assert_close(write_w, F.one_hot(torch.tensor([[3, 1]]), 6).float())
    expected = memory.clone()
    expected[0, 3], expected[0, 1] = content[0, 0], content[0, 1]
    torch.testing.assert_close(new_memory, expected)
    cosine = F.cosine_similarity(keys[0, :, None], new_memory[0, None], dim=-1)
    torch.testing.assert_close(reads_w[0], torch.softmax(cosine, dim=-1))  # paper: softmax of cosine
    torch.testing.assert_close(reads, reads_w @ new_memory)
    torch.testing.assert_close(new_usage, 0.9 * usage + reads_w.sum(1) + write_w.sum(1))

    # Gate open (sigmoid(alpha) ~ 1): each head adds to the row it read last step; the
    # least-used rows are still zeroed before the write.
    new_memory, _, _, _, write_w = lrua_step(state, keys, torch.full((1, 2), 40.0), 0.9, None, content)
    torch.testing.assert_close(write_w, read_weights)
    expected = memory.clone()
    expected[0, [3, 1]] = 0.0
    expected[0, 5] += content[0, 0]
    expected[0, 0] += content[0, 1]
    torch.testing.assert_close(new_memory, expected)

    # Without a separate write vector the key itself is written (the paper's rule).
    new_memory, *_ = lrua_step(state, keys, torch.full((1, 2), -40.0), 0.9)
    torch.testing.assert_close(new_memory[0, 3], keys[0, 0])

    # In the model: from a fresh memory, after a step's usage update, the next write goes to the
    # rows the usage marks least used.
    learner = _learner("mann", encoder="pixels", controller_size=16, memory_slots=8, memory_size=8, read_heads=2)
    with torch.no_grad():
        seq = learner.run_sequence(torch.rand(1, 3, 28 * 28, generator=g), torch.tensor([[0, 1, 2]]))
    first = seq.write_weights[0, 0]  # step 0: no row read yet, all usage 0 -> rows 0 and 1 (ties: lowest index)
    assert first[0].nonzero().flatten().tolist() == [0] and first[1].nonzero().flatten().tolist() == [1]
    assert ((first.sum(-1) > 0) & (first.sum(-1) < 1)).all()  # weight 1 - sigmoid(alpha) each


# --- MetaNet ---------------------------------------------------------------------------------


def test_metanet_fast_weights_come_from_the_support_set_alone():
    learner = _learner("metanet", **TINY["metanet"])
    learner.meta_train_step(_episode())
    batch = _episode(tasks=2, query=3, seed=3)
    with torch.no_grad(), evaluating(learner):
        fast = learner.adapt(batch.support_x, batch.support_y)
        again = learner.adapt(batch.support_x, batch.support_y)
        for name in ("representation", "keys", "hidden", "output"):
            assert torch.equal(getattr(fast, name), getattr(again, name)), name
        # predict uses exactly these fast weights, whatever the query images are.
        for queries in (batch.query_x, torch.rand_like(batch.query_x)):
            torch.testing.assert_close(
                learner.predict(batch.support_x, batch.support_y, queries), learner.classify(fast, queries)
            )
        # ...and they do depend on the support set: other labels, other fast weights.
        relabelled = learner.adapt(batch.support_x, batch.support_y.roll(1, dims=1))
    assert not torch.allclose(relabelled.output, fast.output)
    assert fast.hidden.shape == (2, 5, 8, learner.b_trunk.embedding_dim)  # one W*_i per support example
    assert fast.output.shape == (2, 5, 5, 8) and fast.representation.shape == (2, 8, learner.u_trunk.embedding_dim)


# --- meta-learning ---------------------------------------------------------------------------

# Budgets and bars. 5-way episodes: chance is 20%, and both untrained networks score it
# (their logits do not yet depend on the query image). 60 test episodes x 25 queries give a
# 95% CI half-width of about 2-3.5 points.
#
# MetaNet: measured on this dataset (width 16, 2 tasks per step, lr 3e-3), test accuracy is
# ~32% after 50 steps, ~57% after 75, ~65% after 100 and ~71% after 150. The bar, 40% and 15
# points over the untrained network, holds from ~70 steps on; the test trains 150.
METANET_HPARAMS: dict[str, Any] = {"width": 16, "representation_dim": 32, "hidden_dim": 32, "lr": 3e-3}
METANET_STEPS, METANET_TASKS = 150, 2
METANET_MIN_ACCURACY, METANET_MIN_GAIN = 0.40, 0.15
# MANN learns slowly (the paper trained on 100,000 episodes): it must discover how to bind an
# image to a label that arrives one step later, through memory, before its query predictions
# depend on the query image at all. Santoro et al. down-sample Omniglot to 20x20 pixels for the
# flat pixel input; on 28x28 glyphs MANN stays at chance for ~1,200 steps here (~28% after
# 3,000). On the same glyphs at 14x14 (pixels, 16 tasks per step, lr 3e-3; measured on an idle
# core): ~22% after 250 steps, 33% after 750, 39% after 1,000, 44% after 1,250 and 46% after
# 1,500 (28 s). The bar, 32% and 10 points over the untrained network (20%), holds from ~750
# steps on; the test trains 1,500.
MANN_HPARAMS: dict[str, Any] = {
    "encoder": "pixels",
    "controller_size": 128,
    "memory_slots": 16,
    "memory_size": 32,
    "read_heads": 1,
    "lr": 3e-3,
}
MANN_IMAGE_SIZE = 14
MANN_STEPS, MANN_TASKS = 1500, 16
MANN_MIN_ACCURACY, MANN_MIN_GAIN = 0.32, 0.10


@pytest.fixture(scope="module")
def trained_metanet(glyphs, test_episodes):
    learner = _learner("metanet", glyphs.image_shape, **METANET_HPARAMS)
    untrained = _accuracy(learner, test_episodes)[0]
    steps, seconds = _meta_train(learner, glyphs.split("train"), METANET_STEPS, METANET_TASKS)
    return learner, untrained, _accuracy(learner, test_episodes), steps, seconds


@pytest.mark.slow  # ~50 s each on 2 cores: MetaNet and MANN learn slowly; the tiny-case tests above stay in CI
def test_metanet_meta_learns_on_glyphs(trained_metanet):
    _, untrained, (accuracy, ci95), steps, seconds = trained_metanet
    print(f"metanet: untrained {untrained:.3f} -> {accuracy:.3f} +- {ci95:.3f} after {steps} steps in {seconds:.1f}s")
    assert accuracy >= METANET_MIN_ACCURACY, f"{accuracy:.3f} < {METANET_MIN_ACCURACY} after {steps} steps"
    assert accuracy >= untrained + METANET_MIN_GAIN, (
        f"{accuracy:.3f} not {METANET_MIN_GAIN} above untrained {untrained:.3f}"
    )


@pytest.mark.slow  # ~50 s each on 2 cores: MetaNet and MANN learn slowly; the tiny-case tests above stay in CI
def test_metanet_trained_predictions_rest_on_the_fast_weights(trained_metanet, test_episodes):
    """Zeroing the fast weights leaves the slow network, whose output layer knows nothing of this
    task's labels: the logits change and the accuracy falls back towards chance."""
    learner, _, (accuracy, _), _, _ = trained_metanet
    correct, changed = [], []
    with torch.no_grad(), evaluating(learner):
        for batch in test_episodes:
            fast = learner.adapt(batch.support_x, batch.support_y)
            with_fast = learner.classify(fast, batch.query_x)
            slow_only = learner.classify(fast.zeroed(), batch.query_x)
            changed.append((with_fast - slow_only).abs().amax().item())
            correct.append((slow_only.argmax(-1) == batch.query_y).float().mean().item())
    slow_accuracy = sum(correct) / len(correct)
    print(f"metanet: {accuracy:.3f} with fast weights, {slow_accuracy:.3f} without")
    assert min(changed) > 1e-3
    assert slow_accuracy <= accuracy - 0.15


@pytest.fixture(scope="module")
def small_glyphs(glyph_store):
    """The same glyphs at 14x14 pixels (MANN's flat pixel input; see MANN_IMAGE_SIZE)."""
    return glyph_store(
        synthetic_classes=260, synthetic_images_per_class=12, val_classes=20, test_classes=40, seed=5,
        image_size=MANN_IMAGE_SIZE,
    )  # fmt: skip


@pytest.mark.slow  # ~50 s each on 2 cores: MetaNet and MANN learn slowly; the tiny-case tests above stay in CI
def test_mann_meta_learns_on_glyphs(small_glyphs):
    episodes = [
        b.to("cpu") for b in fixed_episodes(small_glyphs.split("test"), SPEC, TEST_EPISODES, seed=7, batch_tasks=30)
    ]
    learner = _learner("mann", small_glyphs.image_shape, **MANN_HPARAMS)
    untrained = _accuracy(learner, episodes)[0]
    steps, seconds = _meta_train(learner, small_glyphs.split("train"), MANN_STEPS, MANN_TASKS)
    accuracy, ci95 = _accuracy(learner, episodes)
    print(f"mann: untrained {untrained:.3f} -> {accuracy:.3f} +- {ci95:.3f} after {steps} steps in {seconds:.1f}s")
    assert accuracy >= MANN_MIN_ACCURACY, f"{accuracy:.3f} < {MANN_MIN_ACCURACY} after {steps} steps"
    assert accuracy >= untrained + MANN_MIN_GAIN, f"{accuracy:.3f} not {MANN_MIN_GAIN} above untrained {untrained:.3f}"
