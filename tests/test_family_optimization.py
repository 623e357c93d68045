"""Optimisation-based families (metasgd, reptile, meta_lstm): each paper's defining update checked
against an explicit computation, brief real meta-training on synthetic glyphs that must beat chance
and the untrained network on held-out test classes, checkpoint round-trips, hyperparameter checks.
No mocks; CPU-sized (tiny widths, capped training time)."""

from __future__ import annotations

import copy
import dataclasses
import math
import time

import pytest
import torch
import torch.nn.functional as F
from torch.func import functional_call

from learners.checkpoint import build_learner, load_learner, save_learner
from learners.gradient_encoding import preprocess_gradients as preprocess
from learners.maml import MAML
from learners.meta_lstm import MetaLSTM
from learners.metasgd import MetaSGD
from learners.registry import HyperparamError, get_family, make_hparams
from learners.reptile import Reptile
from learners.space import Choice, Float, Int
from pipeline.scoring import episode_accuracies, mean_ci95
from tasks.episodes import EpisodeBatch, EpisodeSpec
from tasks.sampler import EpisodeSampler, fixed_episodes

pytestmark = pytest.mark.usefixtures("single_thread")

FAMILIES = ("metasgd", "reptile", "meta_lstm")
SPEC = EpisodeSpec(ways=5, shots=1, query=5)
SMALL = (1, 12, 12)  # images of the exactness checks
# Training settings: small widths and settings that learn within seconds on a shared 2-core CPU.
# Reptile gets SGD with a large inner step and 8 tasks per meta-batch: with ε = 1 the new weights are
# the mean of the adapted ones, which is too noisy over fewer tasks, and with Nichol's Adam at 1e-3 it
# needs thousands of iterations to move; paths are fixed so no test pays for torch.compile.
HPARAMS = {
    "metasgd": {"width": 16, "path": "split"},
    "reptile": {"width": 16, "path": "vmap", "inner_optimizer": "sgd", "inner_lr": 0.2, "test_inner_steps": 10},
    "meta_lstm": {"width": 16, "path": "vmap", "inner_steps": 3, "hidden": 10},
}
META_BATCH = {"metasgd": 2, "reptile": 8, "meta_lstm": 2}
STEPS = {"metasgd": 150, "reptile": 60, "meta_lstm": 100}
TEST_EPISODES = 40
# 5-way episodes: chance is 20%. After a few seconds of meta-training each family must reach 33%
# on held-out test classes (well clear of chance: at 40 episodes x 25 queries the 95% CI
# half-width is ~4 points) AND beat the very same network untrained (same seed, same episodes, same
# adaptation at test time) by 5 points, so the bar measures what meta-training added rather than
# what random conv features plus test-time fine-tuning give for free (untrained Reptile fine-tuned
# for 10 steps already scores ~40%).
MIN_ACCURACY = 0.33
MIN_GAIN = 0.05


@pytest.fixture(scope="module")
def glyphs(glyph_store):
    """Synthetic glyphs, 160 classes x 10 images (train 130 / val 10 / test 20), built once."""
    return glyph_store(synthetic_classes=160, synthetic_images_per_class=10, val_classes=10, test_classes=20, seed=5)


@pytest.fixture(scope="module")
def test_episodes(glyphs):
    """Fixed-seed 5-way 1-shot episodes of the test split, as float tensors."""
    return [b.to("cpu") for b in fixed_episodes(glyphs.split("test"), SPEC, TEST_EPISODES, seed=7, batch_tasks=20)]


def _learner(family: str, image_shape, seed: int = 0, **hparams):
    torch.manual_seed(seed)
    spec = {
        "family": family,
        "hparams": {**HPARAMS[family], **hparams},
        "image_shape": list(image_shape),
        "ways": SPEC.ways,
    }
    return build_learner(spec)


def _accuracy(learner, episodes) -> float:
    return mean_ci95(episode_accuracies(learner, episodes, torch.device("cpu")))[0]


@pytest.fixture(scope="module")
def trained(glyphs, test_episodes):
    """family -> (learner, untrained accuracy, trained accuracy, steps, seconds); trained once, on demand."""
    cache = {}

    def get(family: str):
        if family not in cache:
            with torch.random.fork_rng():
                torch.set_num_threads(1)
                learner = _learner(family, glyphs.image_shape)
                untrained = _accuracy(learner, test_episodes)
                sampler = EpisodeSampler(glyphs.split("train"), SPEC, tasks=META_BATCH[family], seed=1)
                start = time.monotonic()
                for _ in range(STEPS[family]):
                    metrics = learner.meta_train_step(sampler.sample().to("cpu"))
                    assert math.isfinite(metrics["loss"]) and 0.0 <= metrics["accuracy"] <= 1.0
                seconds = time.monotonic() - start
                cache[family] = (learner, untrained, _accuracy(learner, test_episodes), STEPS[family], seconds)
        return cache[family]

    return get


def _episode(tasks=2, ways=3, shots=2, query=3, seed=0, shape=SMALL, dtype=torch.float64) -> EpisodeBatch:
    g = torch.Generator().manual_seed(seed)
    labels = lambda n: torch.arange(ways).repeat_interleave(n).expand(tasks, -1).contiguous()  # noqa: E731
    images = lambda n: torch.rand(tasks, ways * n, *shape, generator=g, dtype=dtype)  # noqa: E731
    return EpisodeBatch(images(shots), labels(shots), images(query), labels(query), ways)


def _small(cls, family: str, ways: int = 3, **hparams):
    torch.manual_seed(0)
    return cls(make_hparams(family, {"width": 4, "depth": 2, **hparams}), SMALL, ways).double()


def _close(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor], rtol=1e-9) -> None:
    assert a.keys() == b.keys()
    for name in b:
        torch.testing.assert_close(a[name], b[name], rtol=rtol, atol=rtol * b[name].abs().max().item(), msg=name)


# --- every family ----------------------------------------------------------------------------


@pytest.mark.parametrize("family", FAMILIES)
def test_registered_with_paper_and_search_space(family):
    learner_cls = get_family(family)
    assert learner_cls.family == family and learner_cls.paper and learner_cls.__module__ == f"learners.{family}"
    fields = {f.name for f in dataclasses.fields(learner_cls.Hyperparams)}
    assert {"width", "depth"} <= set(learner_cls.search_space) <= fields
    assert all(isinstance(d, (Float, Int, Choice)) for d in learner_cls.search_space.values())
    assert make_hparams(family, {"width": 16.0}).width == 16


@pytest.mark.parametrize(
    "family, foreign",
    [("metasgd", "inner_lr"), ("reptile", "first_order"), ("meta_lstm", "inner_lr"), ("meta_lstm", "test_inner_steps")],
)
def test_rejects_a_hyperparameter_of_another_family(family, foreign):
    with pytest.raises(HyperparamError, match=f"{family} has no hyperparameter '{foreign}'; allowed: ") as info:
        make_hparams(family, {foreign: 1})
    allowed = sorted(f.name for f in dataclasses.fields(get_family(family).Hyperparams))
    assert str(info.value).endswith(", ".join(allowed))


@pytest.mark.parametrize("family", FAMILIES)
def test_refuses_a_different_number_of_ways(family):
    learner = _learner(family, (1, 28, 28), width=4)
    b = _episode(tasks=1, ways=3, shots=1, query=2, shape=(1, 28, 28), dtype=torch.float32)
    with pytest.raises(ValueError, match="5-way output head and cannot score 3-way"):
        learner.predict(b.support_x, b.support_y, b.query_x)
    with pytest.raises(ValueError, match="cannot score 3-way"):
        learner.meta_train_step(b)


@pytest.mark.parametrize("family", FAMILIES)
def test_meta_training_beats_chance_and_the_untrained_network(family, trained):
    _, untrained, accuracy, steps, seconds = trained(family)
    print(f"{family}: untrained {untrained:.3f} -> trained {accuracy:.3f} after {steps} steps in {seconds:.1f}s")
    assert accuracy >= MIN_ACCURACY, f"{family}: {accuracy:.3f} < {MIN_ACCURACY} (untrained {untrained:.3f})"
    assert accuracy >= untrained + MIN_GAIN, f"{family}: {accuracy:.3f} not {MIN_GAIN} above untrained {untrained:.3f}"


@pytest.mark.parametrize("family", FAMILIES)
def test_checkpoint_round_trip_predicts_identically(family, trained, test_episodes, tmp_path):
    learner = trained(family)[0]
    save_learner(learner, tmp_path, {"iteration": 3})
    loaded, extra = load_learner(tmp_path)
    assert extra == {"iteration": 3} and loaded.hparams == learner.hparams and type(loaded) is type(learner)
    batch = test_episodes[0]
    logits = learner.predict(batch.support_x, batch.support_y, batch.query_x)
    assert logits.shape == (20, 25, 5) and not logits.requires_grad
    assert torch.equal(loaded.predict(batch.support_x, batch.support_y, batch.query_x), logits)
    # The meta-optimizer's state came along too.
    assert loaded.optimizer.state_dict()["state"].keys() == learner.optimizer.state_dict()["state"].keys()


# --- Meta-SGD (Li et al. 2017) -----------------------------------------------------------------


@pytest.mark.parametrize("path", ["loop", "vmap", "split", "split-vmap"])
@pytest.mark.parametrize("inner_steps", [1, 2])
def test_metasgd_with_constant_alpha_has_mamls_meta_gradient(path, inner_steps):
    """α frozen at MAML's inner_lr everywhere: the θ meta-gradient is MAML's (same init, same batch)."""
    lr = 0.3
    maml = _small(MAML, "maml", inner_lr=lr, inner_steps=inner_steps, path="loop")
    metasgd = _small(MetaSGD, "metasgd", alpha_low=lr, alpha_high=lr, inner_steps=inner_steps, path="loop")
    assert all(torch.equal(p, q) for p, q in zip(maml.net.parameters(), metasgd.net.parameters(), strict=True))
    assert all(torch.allclose(a, torch.full_like(a, lr)) for a in metasgd.alpha)  # a constant start
    with torch.no_grad():  # exactly MAML's rate in float64 (the start was drawn in float32)
        for a in metasgd.alpha:
            a.fill_(lr)
    b = _episode()
    _close(metasgd.compute(path, b).grads, maml.compute(path, b).grads)


@pytest.mark.parametrize("first_order", [False, True])
@pytest.mark.parametrize("path", ["loop", "vmap", "split", "split-vmap"])
def test_metasgd_alpha_gradient_matches_explicit_autograd(path, first_order):
    learner = _small(MetaSGD, "metasgd", inner_steps=2, first_order=first_order, path="loop")
    b = _episode()
    params, alpha = dict(learner.net.named_parameters()), dict(learner.meta_gradient.inner_lr)
    total = {k: torch.zeros_like(a) for k, a in alpha.items()}
    for sx, sy, qx, qy in zip(b.support_x, b.support_y, b.query_x, b.query_y, strict=True):
        fast = params
        for _ in range(2):
            loss = F.cross_entropy(functional_call(learner.net, fast, (sx,)), sy)
            grads = torch.autograd.grad(loss, list(fast.values()), create_graph=not first_order)
            fast = {
                k: p - alpha[k] * (g if not first_order else g.detach())
                for (k, p), g in zip(fast.items(), grads, strict=True)
            }
        query_loss = F.cross_entropy(functional_call(learner.net, fast, (qx,)), qy)
        for k, g in zip(alpha, torch.autograd.grad(query_loss, list(alpha.values())), strict=True):
            total[k] += g / b.tasks
    _close(learner.compute(path, b).lr_grads, total)


def test_metasgd_learns_alpha_with_theta():
    learner = _small(MetaSGD, "metasgd", path="split").float()
    alpha = [a.detach().clone() for a in learner.alpha]
    assert all(((a >= 0.005) & (a <= 0.1)).all() and a.std() > 0 for a in alpha)  # random in the paper's range
    learner.meta_train_step(_episode(dtype=torch.float32))
    assert all(not torch.equal(a, b) for a, b in zip(alpha, learner.alpha, strict=True))
    assert {id(p) for p in learner.alpha} <= {id(p) for g in learner.optimizer.param_groups for p in g["params"]}


# --- Reptile (Nichol et al. 2018) --------------------------------------------------------------


@pytest.mark.parametrize("path", ["loop", "vmap"])
@pytest.mark.parametrize("inner_optimizer, inner_lr", [("sgd", 0.1), ("adam", 0.01)])
def test_reptile_outer_step_interpolates_toward_the_explicitly_adapted_weights(path, inner_optimizer, inner_lr):
    epsilon = 0.4
    learner = _small(
        Reptile,
        "reptile",
        path=path,
        inner_optimizer=inner_optimizer,
        inner_lr=inner_lr,
        inner_steps=3,
        inner_batch=4,
        outer_lr=epsilon,
    )
    b = _episode(tasks=3)
    theta = {k: p.detach().clone() for k, p in learner.net.named_parameters()}
    torch.manual_seed(123)
    order = learner.inner_order(b)  # [tasks, steps, batch] indices into support ++ query
    assert order.shape == (3, 3, 4)
    phis = []
    for t in range(b.tasks):  # φ_t: a plain copy of the network trained by a torch.optim optimizer
        net = copy.deepcopy(learner.net)
        opt: torch.optim.Optimizer
        if inner_optimizer == "sgd":
            opt = torch.optim.SGD(net.parameters(), lr=inner_lr)
        else:
            opt = torch.optim.Adam(net.parameters(), lr=inner_lr, betas=(0.0, 0.999), eps=1e-8)
        x, y = torch.cat([b.support_x[t], b.query_x[t]]), torch.cat([b.support_y[t], b.query_y[t]])
        for idx in order[t]:
            opt.zero_grad()
            F.cross_entropy(net(x[idx]), y[idx]).backward()
            opt.step()
        phis.append(dict(net.named_parameters()))
    expected = {k: theta[k] + epsilon * (torch.stack([phi[k] for phi in phis]).mean(0) - theta[k]) for k in theta}
    torch.manual_seed(123)  # the same minibatches
    learner.meta_train_step(b)
    _close({k: p.detach() for k, p in learner.net.named_parameters()}, {k: v.detach() for k, v in expected.items()})


def test_reptile_scores_queries_non_transductively_by_default():
    b = _episode(tasks=2, ways=3, shots=1, query=3, dtype=torch.float32)
    other = dataclasses.replace(b, query_x=torch.cat([b.query_x[:, :1], torch.rand(2, 8, *SMALL)], 1))
    for transductive in (False, True):
        learner = _small(Reptile, "reptile", test_inner_steps=3, transductive=transductive).float()
        logits = learner.predict(b.support_x, b.support_y, b.query_x)
        changed = learner.predict(other.support_x, other.support_y, other.query_x)
        # Query 0's logits depend on the other queries only when batch-norm sees them all at once.
        assert torch.allclose(logits[:, 0], changed[:, 0], atol=1e-5) is not transductive
    learner = _small(Reptile, "reptile", test_inner_steps=3).float()
    phi = learner._adapt_tasks(
        "loop", b.support_x[:, None].expand(-1, 3, -1, -1, -1, -1), b.support_y[:, None].expand(-1, 3, -1)
    )[0]
    alone = functional_call(
        learner.net, {k: p[1] for k, p in phi.items()}, (torch.cat([b.support_x[1], b.query_x[1, 2:3]]),)
    )[-1]
    torch.testing.assert_close(learner.predict(b.support_x, b.support_y, b.query_x)[1, 2], alone, atol=1e-5, rtol=1e-5)


# --- Meta-learner LSTM (Ravi & Larochelle 2017) -------------------------------------------------


def test_meta_lstm_preprocessing_is_andrychowiczs():
    x = torch.tensor([2.0, -3e-3, 1e-6, -1e-5, 0.0])
    p, e = 10.0, math.exp(-10.0)
    assert (x[:2].abs() >= e).all() and (x[2:].abs() < e).all()
    expected = torch.tensor(
        [[math.log(2.0) / p, 1.0], [math.log(3e-3) / p, -1.0], [-1.0, 1e-6 / e], [-1.0, -1e-5 / e], [-1.0, 0.0]]
    )
    torch.testing.assert_close(preprocess(x), expected)


def test_meta_lstm_cell_state_is_the_learner_parameters_updated_by_gates():
    """One update for two tasks, recomputed by hand: c_1 = f ⊙ c_0 - i ⊙ ∇L(c_0), gates from [h, c_0, 0]."""
    learner = _small(MetaLSTM, "meta_lstm", inner_steps=1, path="loop")
    b = _episode(tasks=2)
    meta = learner.meta_learner
    c0 = torch.cat([p.detach().reshape(-1) for p in learner.net.parameters()])
    assert torch.equal(learner.initial().detach(), c0)
    for t in range(2):
        net = copy.deepcopy(learner.net)  # the learner at c_0, trained by plain autograd
        loss = F.cross_entropy(net(b.support_x[t]), b.support_y[t])
        grad = torch.cat([g.reshape(-1) for g in torch.autograd.grad(loss, list(net.parameters()))])
        x = torch.cat([preprocess(grad), preprocess(loss.detach().expand_as(grad))], dim=-1)
        h, _ = meta.lstm(x)
        zero = torch.zeros_like(c0)[:, None]
        f = torch.sigmoid(torch.cat([h, c0[:, None], zero], 1) @ meta.forget.weight.T + meta.forget.bias)[:, 0]
        i = torch.sigmoid(torch.cat([h, c0[:, None], zero], 1) @ meta.input.weight.T + meta.input.bias)[:, 0]
        assert (f > 0.98).all() and (i < 0.02).all()  # the paper's initialisation: keep θ, small steps
        expected = f * c0 - i * grad
        for path in ("loop", "vmap"):
            torch.testing.assert_close(
                learner.adapt(path, b.support_x, b.support_y)[t].detach(), expected.detach(), rtol=1e-9, atol=1e-12
            )


def test_meta_lstm_meta_gradient_is_first_order_in_the_learner_gradient():
    """The meta-gradient reaches c_0 (the learner's initial parameters) and every gate weight, but
    through the cell state and gates only: no second derivative of the learner's loss is taken."""
    learner = _small(MetaLSTM, "meta_lstm", inner_steps=2, path="loop")
    b = _episode(tasks=2)
    loss = F.cross_entropy(
        learner.query_logits(learner.adapt("loop", b.support_x, b.support_y), b.query_x).flatten(0, 1),
        b.query_y.flatten(),
    )
    grads = torch.autograd.grad(loss, list(learner.parameters()), allow_unused=True)
    assert all(g is not None and g.abs().sum() > 0 for g in grads)
    # With frozen gates f = 1, i = constant the update is SGD with a detached gradient, so the
    # gradient with respect to c_0 is exactly the query gradient at the adapted weights (FOMAML's).
    with torch.no_grad():
        for gate, bias in ((learner.meta_learner.forget, 50.0), (learner.meta_learner.input, 0.0)):
            gate.weight.zero_()
            gate.bias.fill_(bias)
    flat = learner.adapt("loop", b.support_x, b.support_y)
    loss = F.cross_entropy(learner.query_logits(flat, b.query_x).flatten(0, 1), b.query_y.flatten())
    c0_grads = torch.autograd.grad(loss, list(learner.net.parameters()))
    at = flat.detach().requires_grad_()
    query = F.cross_entropy(learner.query_logits(at, b.query_x).flatten(0, 1), b.query_y.flatten())
    (fo,) = torch.autograd.grad(query, [at])
    expected = fo.sum(0)  # c_0 feeds every task's coordinates with ∂c_T/∂c_0 = I
    torch.testing.assert_close(torch.cat([g.reshape(-1) for g in c0_grads]), expected, rtol=1e-9, atol=1e-12)


def test_meta_lstm_predict_adapts_the_learner():
    learner = _small(MetaLSTM, "meta_lstm", inner_steps=2).float()
    with torch.no_grad():
        learner.meta_learner.input.bias.fill_(0.0)  # visible steps
    b = _episode(dtype=torch.float32)
    logits = learner.predict(b.support_x, b.support_y, b.query_x)
    assert logits.shape == (2, 9, 3) and not logits.requires_grad
    with torch.inference_mode():
        torch.testing.assert_close(learner.predict(b.support_x, b.support_y, b.query_x), logits)
    unadapted = torch.stack([learner.net(x) for x in b.query_x]).detach()
    assert not torch.allclose(unadapted, logits)
