"""What every family shares: the Conv-4 backbone, the registry's hyperparameter checks, checkpoints."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from torch.func import functional_call, vmap

from learners.backbones.conv4 import Conv4
from learners.base import Learner
from learners.checkpoint import load_learner, save_learner
from learners.registry import HyperparamError, family_names, get_family, make_hparams
from learners.space import Choice, Float, Int
from tasks.episodes import EpisodeBatch

pytestmark = pytest.mark.usefixtures("single_thread")


@pytest.mark.parametrize(
    "shape, downsample, dim",
    [
        ((1, 28, 28), "pool", 64),
        ((1, 28, 28), "stride", 256),
        ((3, 84, 84), "pool", 1600),
        ((3, 84, 84), "stride", 2304),
    ],
)
def test_conv4_embedding_size(shape, downsample, dim):
    net = Conv4(shape, width=64, depth=4, downsample=downsample)
    assert net.embedding_dim == dim
    assert net(torch.rand(2, *shape)).shape == (2, dim)


def test_conv4_mean_features_average_the_last_map_over_its_positions():
    net = Conv4((1, 28, 28), width=8, depth=4, downsample="stride", features="mean")
    x = torch.rand(3, 1, 28, 28)
    assert net.embedding_dim == 8
    torch.testing.assert_close(net(x), net.blocks(x).mean((2, 3)))
    with pytest.raises(ValueError, match="features must be one of flatten, mean"):
        Conv4((1, 28, 28), features="max")  # type: ignore[arg-type]  # the refused value under test


def test_conv4_refuses_a_depth_the_image_cannot_take():
    with pytest.raises(ValueError, match="28x28 image is too small for depth 5"):
        Conv4((1, 28, 28), depth=5, downsample="pool")


def test_conv4_without_running_stats_is_a_pure_function_under_vmap():
    net = Conv4((1, 12, 12), width=4, depth=2, downsample="stride", running_stats=False)
    assert not list(net.buffers())
    params: dict[str, torch.Tensor] = dict(net.named_parameters())
    x = torch.rand(3, 5, 1, 12, 12)
    batched = vmap(lambda xt: functional_call(net, params, (xt,)))(x)
    torch.testing.assert_close(batched, torch.stack([net(xt) for xt in x]))  # per-task batch statistics


@pytest.mark.parametrize("family", family_names())
def test_search_space_names_hyperparameters_with_defaults(family):
    cls = get_family(family)
    fields = {f.name for f in dataclasses.fields(cls.Hyperparams)}
    assert set(cls.search_space) <= fields
    assert all(isinstance(d, (Float, Int, Choice)) for d in cls.search_space.values())
    assert cls.paper and cls.family == family


@pytest.mark.parametrize("family", family_names())
def test_every_value_the_search_space_declares_is_one_the_family_accepts(family):
    for name, distribution in get_family(family).search_space.items():
        bounds = distribution.options if isinstance(distribution, Choice) else (distribution.low, distribution.high)
        for bound in bounds:
            assert getattr(make_hparams(family, {name: bound}), name) == bound


@pytest.mark.parametrize(
    "family, values, expected",
    [
        ("protonet", {"distance": "l1"}, "protonet.distance must be one of sqeuclidean, cosine, got 'l1'"),
        ("protonet", {"width": 0}, "protonet.width must be >= 1, got 0"),
        ("matching", {"fce_steps": 0}, "matching.fce_steps must be >= 1, got 0"),
        ("relation", {"depth": 1}, "relation.depth must be >= 2, got 1"),
        ("siamese", {"embedding": 0}, "siamese.embedding must be >= 1, got 0"),
        ("maml", {"path": "bogus"}, "maml.path must be 'auto' or one of loop,"),
        ("fomaml", {"downsample": "avg"}, "fomaml.downsample must be one of pool, stride"),
        ("metasgd", {"alpha_low": 0.3}, "metasgd.alpha_high must be >= alpha_low (0.3), got 0.1"),
        ("reptile", {"inner_optimizer": "rmsprop"}, "reptile.inner_optimizer must be one of adam, sgd"),
        ("reptile", {"outer_lr": 0.0}, "reptile.outer_lr must be > 0, got 0.0"),
        ("meta_lstm", {"hidden": 0}, "meta_lstm.hidden must be >= 1, got 0"),
        ("mann", {"gamma": 1.5}, "mann.gamma must be in [0, 1], got 1.5"),
        ("mann", {"read_heads": 200}, "mann.read_heads (200) must not exceed memory_slots (128)"),
        ("metanet", {"pairs": 0}, "metanet.pairs must be >= 1, got 0"),
    ],
)
def test_each_hyperparameter_dataclass_refuses_values_its_learner_cannot_use(family, values, expected):
    with pytest.raises(HyperparamError) as error:
        make_hparams(family, values)
    assert str(error.value).startswith(expected)
    with pytest.raises(ValueError):  # the dataclass itself: no learner needed to find out
        get_family(family).Hyperparams(**values)


def test_make_hparams_rejects_unknown_hyperparameters_listing_the_allowed_ones():
    with pytest.raises(HyperparamError) as error:
        make_hparams("protonet", {"inner_steps": 5})
    message = str(error.value)
    assert "'inner_steps'" in message
    for name in ("depth", "distance", "lr", "lr_decay_every", "train_ways", "width"):
        assert name in message
    with pytest.raises(HyperparamError, match="allowed: .*inner_lr"):
        make_hparams("fomaml", {"first_order": False})  # FOMAML's order is not a knob


def test_registry_knows_the_families():
    assert {"protonet", "maml", "fomaml"} <= set(family_names())


@pytest.mark.parametrize(
    "family, hparams",
    [
        ("protonet", {"distance": "cosine"}),
        ("maml", {"path": "split", "test_inner_steps": 2}),
        ("fomaml", {"path": "loop"}),
    ],
)
def test_checkpoint_round_trip_gives_the_same_predictions(tmp_path, family, hparams):
    torch.manual_seed(0)
    cls = get_family(family)
    learner = cls(make_hparams(family, {"width": 6, "depth": 2, **hparams}), (1, 12, 12), 3)
    gen = torch.Generator().manual_seed(1)

    def labels(n: int) -> torch.Tensor:
        return torch.arange(3).repeat_interleave(n).expand(2, -1).contiguous()

    def images(n: int) -> torch.Tensor:
        return torch.rand(2, 3 * n, 1, 12, 12, generator=gen)

    b = EpisodeBatch(images(1), labels(1), images(2), labels(2), 3)
    learner.meta_train_step(b)
    save_learner(learner, tmp_path, {"iteration": 1})
    loaded, extra = load_learner(tmp_path)
    assert extra == {"iteration": 1} and type(loaded) is cls and loaded.hparams == learner.hparams

    def predict(model: Learner) -> torch.Tensor:
        return model.predict(b.support_x, b.support_y, b.query_x)

    torch.testing.assert_close(predict(loaded), predict(learner))
    # the optimizer state came back too: one more identical step gives identical weights
    learner.meta_train_step(b)
    loaded.meta_train_step(b)
    for p, q in zip(learner.parameters(), loaded.parameters(), strict=True):
        torch.testing.assert_close(p, q)


PIXEL_MEAN_MODULE = '''
"""A toy family: nearest class mean of the raw pixels, with a learned temperature."""

from dataclasses import dataclass

import torch
from torch import nn

from learners.base import Learner
from learners.space import Float


@dataclass(frozen=True)
class PixelMeanHyperparams:
    lr: float = 0.1


class PixelMean(Learner):
    family = "pixel_mean"
    paper = "none: a nearest-mean baseline"
    Hyperparams = PixelMeanHyperparams
    search_space = {"lr": Float(1e-3, 1.0, log=True)}

    def __init__(self, hparams, image_shape, ways):
        super().__init__(hparams, image_shape, ways)
        self.log_scale = nn.Parameter(torch.zeros(()))
        self.optimizer = torch.optim.SGD(self.parameters(), lr=hparams.lr)

    def predict(self, support_x, support_y, query_x):
        onehot = nn.functional.one_hot(support_y).to(support_x.dtype)  # [tasks, support, ways]
        means = onehot.transpose(1, 2) @ support_x.flatten(2) / onehot.sum(1).unsqueeze(-1)
        return -self.log_scale.exp() * torch.cdist(query_x.flatten(2), means) ** 2

    def meta_train_step(self, batch):
        logits = self.predict(batch.support_x, batch.support_y, batch.query_x)
        loss = nn.functional.cross_entropy(logits.flatten(0, 1), batch.query_y.flatten())
        self.optimizer.zero_grad()
        loss.backward()
        self.optimizer.step()
        return {"loss": loss.item(), "accuracy": (logits.argmax(-1) == batch.query_y).float().mean().item()}
'''


def test_a_new_family_is_one_module_plus_one_registry_line(tmp_path, monkeypatch):
    from learners import registry
    from pipeline.config import load_config
    from pipeline.errors import ConfigError

    (tmp_path / "pixel_mean_family.py").write_text(PIXEL_MEAN_MODULE)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setitem(registry._FAMILIES, "pixel_mean", "pixel_mean_family:PixelMean")  # the registration line

    config_file = tmp_path / "c.yaml"
    config_file.write_text("search: {families: [pixel_mean, protonet], fixed: {pixel_mean: {lr: 0.5}}}\n")
    config = load_config(config_file, [], cwd=tmp_path, environ={})
    assert config.search.families == ("pixel_mean", "protonet")
    every = load_config(config_file, [("search.families", "all")], cwd=tmp_path, environ={})
    assert "pixel_mean" in every.search.families
    with pytest.raises(ConfigError, match="pixel_mean has no hyperparameter 'width'; allowed: lr"):
        load_config(config_file, [("search.fixed.pixel_mean.width", 8)], cwd=tmp_path, environ={})

    torch.manual_seed(0)
    learner = get_family("pixel_mean")(make_hparams("pixel_mean", {"lr": 0.5}), (1, 6, 6), 3)
    support_y, query_y = (torch.arange(3).repeat_interleave(n).expand(2, -1).contiguous() for n in (2, 3))
    support_x, query_x = (torch.rand(2, 3 * n, 1, 6, 6) for n in (2, 3))
    batch = EpisodeBatch(support_x, support_y, query_x, query_y, 3)
    assert learner.meta_train_step(batch)["loss"] > 0
    assert learner.state_dict()["log_scale"] != 0  # one step moved the temperature
    save_learner(learner, tmp_path / "ckpt", {"iteration": 1})
    loaded, _ = load_learner(tmp_path / "ckpt")
    assert type(loaded).__name__ == "PixelMean"
    assert torch.equal(loaded.state_dict()["log_scale"], learner.state_dict()["log_scale"])


def test_the_family_registry_checks_what_it_loads(monkeypatch):
    from learners import registry

    monkeypatch.setitem(registry._FAMILIES, "proto", "learners.protonet:ProtoNet")
    with pytest.raises(TypeError, match="learners.protonet:ProtoNet is registered as family 'proto'"):
        get_family("proto")
