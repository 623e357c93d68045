"""MAML / FOMAML: every meta-gradient path against explicit task-by-task autograd, training, ways, predict."""

from __future__ import annotations

import functools
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from torch.func import functional_call

from learners.auto_path import AutoPath, AutoPolicy
from learners.maml import FOMAML, MAML
from learners.meta_gradient import PATHS
from learners.peak_memory import peak_bytes
from learners.registry import get_family, make_hparams
from tasks.episodes import EpisodeBatch

pytestmark = pytest.mark.usefixtures("single_thread")

SHAPE = (1, 12, 12)


def batch(tasks=2, ways=3, shots=2, query=3, seed=0, dtype=torch.float64) -> EpisodeBatch:
    gen = torch.Generator().manual_seed(seed)

    def labels(n: int) -> torch.Tensor:
        return torch.arange(ways).repeat_interleave(n).expand(tasks, -1).contiguous()

    def images(n: int) -> torch.Tensor:
        return torch.rand(tasks, ways * n, *SHAPE, generator=gen, dtype=dtype)

    return EpisodeBatch(images(shots), labels(shots), images(query), labels(query), ways)


def make(family="maml", ways=3, **hparams) -> MAML:
    torch.manual_seed(0)
    values = {"width": 6, "depth": 2, "path": "loop", **hparams}
    cls = {"maml": MAML, "fomaml": FOMAML}[family]
    return cls(make_hparams(family, values), SHAPE, ways)


def explicit_meta_gradient(learner: MAML, b: EpisodeBatch, second_order: bool) -> dict[str, torch.Tensor]:
    """Task by task with plain autograd: the definition of the (second- or first-order) meta-gradient."""
    params: dict[str, torch.Tensor] = dict(learner.net.named_parameters())
    lr, steps = learner.hparams.inner_lr, learner.hparams.inner_steps
    total = {k: torch.zeros_like(p) for k, p in params.items()}
    for sx, sy, qx, qy in zip(b.support_x, b.support_y, b.query_x, b.query_y, strict=True):
        fast = params
        for _ in range(steps):
            loss = F.cross_entropy(functional_call(learner.net, fast, (sx,)), sy)
            grads = torch.autograd.grad(loss, list(fast.values()), create_graph=second_order)
            fast = {k: p - lr * g for (k, p), g in zip(fast.items(), grads, strict=True)}
        if not second_order:  # first order: the query-loss gradient at the adapted weights
            fast = {k: p.detach().requires_grad_() for k, p in fast.items()}
        query_loss = F.cross_entropy(functional_call(learner.net, fast, (qx,)), qy)
        grads = torch.autograd.grad(query_loss, list((params if second_order else fast).values()))
        total = {k: total[k] + g / b.tasks for k, g in zip(total, grads, strict=True)}
    return total


def assert_same(grads: dict[str, torch.Tensor], reference: dict[str, torch.Tensor], rtol=1e-9) -> None:
    for name, ref in reference.items():
        torch.testing.assert_close(grads[name], ref, rtol=rtol, atol=rtol * ref.abs().max().item(), msg=name)


CASES: list[Any] = [(path, steps) for path in PATHS if path != "split-compiled" for steps in (1, 2)]
# torch.compile takes a minute on a 2-core CPU: one compiled case (2 steps covers every stage), marked slow.
CASES.append(pytest.param("split-compiled", 2, marks=pytest.mark.slow))


@pytest.mark.parametrize("path, inner_steps", CASES)
def test_every_path_gives_the_second_order_meta_gradient(path, inner_steps):
    learner = make(inner_steps=inner_steps).double()
    b = batch()
    reference = explicit_meta_gradient(learner, b, second_order=True)
    assert_same(learner.compute(path, b).grads, reference)


@pytest.mark.parametrize("path", ["loop", "vmap", "split", "split-vmap"])
def test_fomaml_gives_the_query_gradient_at_the_adapted_weights(path):
    learner = make("fomaml", inner_steps=2).double()
    b = batch()
    first = explicit_meta_gradient(learner, b, second_order=False)
    assert_same(learner.compute(path, b).grads, first)
    second = explicit_meta_gradient(learner, b, second_order=True)
    assert max((first[k] - second[k]).abs().max() / second[k].abs().max() for k in first) > 1e-3


def test_maml_first_order_flag_is_fomaml():
    b = batch()
    flagged = make(first_order=True).double().compute("split", b).grads
    fomaml = make("fomaml").double().compute("split", b).grads
    assert_same(flagged, fomaml)


@pytest.mark.parametrize("family", ["maml", "fomaml"])
def test_training_reduces_loss_on_a_fixed_batch(family):
    learner = make(family, path="split", meta_lr=1e-2)  # the head reads 6 spatial means: a slower memoriser
    b = batch(dtype=torch.float32)
    losses = [learner.meta_train_step(b)["loss"] for _ in range(40)]
    assert losses[-1] < 0.5 * losses[0], losses


TWO_PATHS = AutoPolicy(untimed=("nope", "split", "loop"), timed=("nope", "split", "loop"), timed_runs=3, statistic=min)


def two_paths(**hparams) -> MAML:
    """MAML whose "auto" chooses between an unknown path (which raises) and the two cheap ones."""
    learner = make(path="auto", **hparams)
    learner.paths = AutoPath("maml", "auto", TWO_PATHS, learner.paths.memory_limit)
    return learner


def test_auto_on_a_gpu_times_the_candidates_and_keeps_the_fastest():
    learner = two_paths()
    b = batch(dtype=torch.float32)
    before = [p.detach().clone() for p in learner.parameters()]
    with pytest.warns(UserWarning, match="skipping path 'nope'"):
        fastest = learner.paths.fastest(learner.device, lambda path: learner.compute(path, b))  # what a GPU runs
    assert all(torch.equal(p, q) for p, q in zip(before, learner.parameters(), strict=True))  # timing applies no update
    assert set(learner.paths.timings_ms) == {"split", "loop"}
    assert fastest == min(learner.paths.timings_ms, key=lambda path: learner.paths.timings_ms[path])
    assert f"path {fastest!r} (auto: fastest on a GPU; ms " in learner.paths.reason


def test_auto_on_a_cpu_takes_the_first_candidate_that_runs_untimed():
    learner = two_paths()
    before = [p.detach().clone() for p in learner.parameters()]
    b = batch(dtype=torch.float32)
    with pytest.warns(UserWarning, match="skipping path 'nope'"):
        assert learner.paths.choose(learner.device, lambda path: learner.compute(path, b)) == "split"
    assert all(torch.equal(p, q) for p, q in zip(before, learner.parameters(), strict=True))
    learner.paths.chosen = None
    with pytest.warns(UserWarning, match="skipping path 'nope'"):
        learner.meta_train_step(b)
    assert learner.paths.chosen == "split" and learner.paths.timings_ms == {} and learner.paths.peaks == {}


def test_a_memory_limit_makes_auto_take_the_first_path_that_fits():
    b = batch(tasks=4, dtype=torch.float32)
    reference = make()
    split, loop = (
        peak_bytes(functools.partial(reference.compute, path, b), torch.device("cpu")) for path in ("split", "loop")
    )
    assert split > loop > 0  # at 4 tasks: split holds every task's inner trajectory at once, the loop one task's graph
    learner = two_paths(memory_limit=f"{(split + loop) // 2}B")
    with pytest.warns(UserWarning, match="skipping path 'nope'"):
        learner.meta_train_step(b)
    assert learner.paths.chosen == "loop" and learner.paths.peaks == {"split": split, "loop": loop}
    assert learner.paths.reason.startswith(
        "maml: path 'loop' (auto: first that runs, untimed off a GPU within memory_limit"
    )
    tight = two_paths(memory_limit="1KiB")
    with pytest.warns(UserWarning, match="no path fits memory_limit 0.0 MiB"):
        tight.meta_train_step(b)
    assert tight.paths.chosen == "loop"  # the lowest peak


def test_refuses_a_different_number_of_ways():
    learner = make(ways=3)
    with pytest.raises(ValueError, match="3-way output head and cannot score 5-way"):
        learner.check_ways(5)
    b = batch(ways=5, dtype=torch.float32)
    with pytest.raises(ValueError, match="cannot score 5-way"):
        learner.meta_train_step(b)
    with pytest.raises(ValueError, match="cannot score 5-way"):
        learner.predict(b.support_x, b.support_y, b.query_x)


def test_predict_adapts_and_works_without_autograd():
    learner = make(test_inner_steps=3)
    b = batch(dtype=torch.float32)
    logits = learner.predict(b.support_x, b.support_y, b.query_x)
    assert logits.shape == (2, 9, 3) and not logits.requires_grad
    with torch.no_grad():
        torch.testing.assert_close(learner.predict(b.support_x, b.support_y, b.query_x), logits)
    with torch.inference_mode():
        torch.testing.assert_close(learner.predict(b.support_x, b.support_y, b.query_x), logits)
    # adaptation matters: predictions with the unadapted weights differ
    unadapted = torch.stack([learner.net(x) for x in b.query_x]).detach()
    assert not torch.allclose(unadapted, logits)


def test_rejects_bad_hyperparameters():
    with pytest.raises(ValueError, match="path must be 'auto' or one of"):
        make(path="fastest")
    with pytest.raises(ValueError, match="inner_steps"):
        make(inner_steps=0)
    with pytest.raises(ValueError, match="memory_limit: expected a size such as 2GiB"):
        make(memory_limit="2 parsecs")


@pytest.mark.parametrize("family", ["maml", "fomaml", "metasgd"])
def test_the_head_reads_what_finns_code_feeds_it(family):
    """Omniglot model (stride-2): the spatial mean of the last map (issue 19); miniImageNet model (pool): flattened."""
    cls = get_family(family)
    stride = cls(make_hparams(family, {"width": 6, "depth": 2}), (1, 12, 12), 3)
    pool = cls(make_hparams(family, {"width": 6, "depth": 2, "downsample": "pool"}), (1, 12, 12), 3)
    heads = [next(m for m in learner.modules() if isinstance(m, torch.nn.Linear)) for learner in (stride, pool)]
    assert heads[0].in_features == 6 and heads[1].in_features == 6 * 3 * 3
