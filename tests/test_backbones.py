"""The backbone registry (learners/backbones): ResNet-12 as published, the pure variant under torch.func,
DropBlock, a third backbone in one module, and every family training and predicting on each backbone
at 3x84x84 (mini-ImageNet's size)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import pytest
import torch
from torch import nn
from torch.func import functional_call, vmap

from benchmarks.batches import training_batch
from learners import backbones
from learners.backbones import Backbone, BackboneOptions, build_backbone
from learners.backbones.base import Features
from learners.backbones.resnet12 import ResNet12, drop_block
from learners.base import BackboneHyperparams
from learners.registry import family_names, get_family, make_hparams
from tasks.episodes import EpisodeBatch

pytestmark = pytest.mark.usefixtures("single_thread")

COLOUR_84 = (3, 84, 84)
# Per family, what keeps one step cheap here: a formulation without torch.compile (``auto`` takes
# split-compiled on a CPU), few test-time steps; MANN's backbone serves its conv encoder only.
CHEAP: dict[str, dict[str, object]] = {
    "maml": {"path": "split", "test_inner_steps": 2},
    "fomaml": {"path": "split", "test_inner_steps": 2},
    "metasgd": {"path": "split"},
    "reptile": {"path": "loop", "inner_steps": 2, "test_inner_steps": 2},
    "meta_lstm": {"path": "loop", "inner_steps": 2},
    "mann": {"encoder": "conv"},
}


def test_resnet12_has_the_published_parameter_count_and_feature_map():
    """ResNet-12 of 64-160-320-640 filters: Lee et al. 2019 (MetaOptNet) report 12.4M parameters for it.

    What is counted: the convolution weights (three 3x3 per block and the 1x1 shortcut, no biases) and
    the batch-norm scales and shifts, no running statistics (buffers) and no classifier:
    76,160 + 564,480 + 2,357,760 + 9,425,920 = 12,424,320 = 12.4M. At 84x84 the last map is 640x5x5
    (84 -> 42 -> 21 -> 10 -> 5), the 640-d embedding its global average (Tian et al. 2020)."""
    net = ResNet12(COLOUR_84, width=64)
    assert sum(p.numel() for p in net.parameters()) == 12_424_320
    assert [m.out_channels for name, m in net.named_modules() if name.endswith("conv1")] == [64, 160, 320, 640]
    assert net.feature_shape == (640, 5, 5) and net.embedding_dim == 640
    x = torch.rand(1, *COLOUR_84)
    with torch.no_grad():
        assert net.feature_map(x).shape == (1, 640, 5, 5)
        assert net(x).shape == (1, 640)
    assert ResNet12(COLOUR_84, width=64, features="flatten").embedding_dim == 16_000  # MetaOptNet's


def test_resnet12_without_running_stats_is_a_pure_function_under_vmap():
    net = ResNet12((3, 20, 20), width=2, running_stats=False)
    assert not list(net.buffers())
    params: dict[str, torch.Tensor] = dict(net.named_parameters())
    x = torch.rand(3, 4, 3, 20, 20)
    batched = vmap(lambda xt: functional_call(net, params, (xt,)))(x)
    torch.testing.assert_close(batched, torch.stack([net(xt) for xt in x]))  # per-task batch statistics
    with pytest.raises(ValueError, match="dropblock must be 0 for a ResNet-12 without running statistics"):
        ResNet12((3, 20, 20), width=2, running_stats=False, drop_rate=0.1)


def test_dropblock_drops_whole_blocks_at_the_rate_and_keeps_the_mean_in_expectation():
    torch.manual_seed(0)
    x = torch.ones(64, 8, 10, 10)
    out = drop_block(x, 0.1, 5)
    dropped = out == 0
    assert 0.06 < dropped.float().mean().item() < 0.14  # ~rate of the map, in 5x5 squares
    assert abs(out.mean().item() - 1.0) < 1e-5  # the rest rescaled
    net = ResNet12((3, 84, 84), width=2, drop_rate=0.1).eval()
    x = torch.rand(2, *COLOUR_84)
    torch.testing.assert_close(net(x), net(x))  # eval: no dropping


class Tiny(Backbone):
    """A third backbone for the test: one 3x3 convolution and a global average."""

    knobs: ClassVar[tuple[str, ...]] = ("width",)

    def __init__(self, channels: int, width: int, features: Features) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, width, 3, padding=1)
        self.feature_shape = (width, 1, 1)
        self.features = features
        self.embedding_dim = width

    @classmethod
    def from_hparams(
        cls, hparams: BackboneHyperparams, image_shape: tuple[int, int, int], options: BackboneOptions
    ) -> Tiny:
        return cls(image_shape[0], hparams.width, options.features or "flatten")

    def feature_map(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x).mean((2, 3), keepdim=True)


def test_a_new_backbone_is_one_module_plus_one_registry_line(monkeypatch):
    monkeypatch.setitem(backbones._BACKBONES, "tiny", f"{__name__}:Tiny")
    hparams = make_hparams("protonet", {"backbone": "tiny", "width": 6})
    learner = get_family("protonet")(hparams, (1, 12, 12), 3)
    assert isinstance(learner.encoder, Tiny)
    batch = _batch((1, 12, 12), ways=3)
    assert learner.predict(batch.support_x, batch.support_y, batch.query_x).shape == (2, 3, 3)
    assert isinstance(build_backbone(BackboneHyperparams(backbone="tiny"), (1, 8, 8), running_stats=True), Tiny)
    with pytest.raises(ValueError, match="unknown backbone 'vgg'; choose from: conv4, resnet12, tiny"):
        backbones.backbone_class("vgg")


def _batch(shape: tuple[int, int, int], ways: int = 5, tasks: int = 2) -> EpisodeBatch:
    """``tasks`` random ``ways``-way 1-shot episodes with one query per class."""
    gen = torch.Generator().manual_seed(0)
    labels = torch.arange(ways).expand(tasks, -1).contiguous()
    images = lambda: torch.rand(tasks, ways, *shape, generator=gen)  # noqa: E731
    return EpisodeBatch(images(), labels, images(), labels, ways)


@pytest.mark.parametrize("backbone", ["resnet12", "conv4"])
@pytest.mark.parametrize("family", family_names())
def test_every_family_trains_and_predicts_on_each_backbone_at_84x84_colour(family, backbone):
    torch.manual_seed(0)
    hparams = make_hparams(family, {"backbone": backbone, "width": 4, **CHEAP.get(family, {})})
    learner = get_family(family)(hparams, COLOUR_84, 5)
    encoders = [m for m in learner.modules() if isinstance(m, Backbone)]
    assert encoders and all(type(m).__name__ == {"resnet12": "ResNet12", "conv4": "Conv4"}[backbone] for m in encoders)
    batch = _batch(COLOUR_84)
    # finetune trains on class mini-batches: what its training_sampler draws from a split of such images
    train = batch if learner.trains_on_episodes else training_batch(learner, torch.device("cpu"), 2, image=COLOUR_84)
    before = [p.detach().clone() for p in learner.parameters()]
    metrics = learner.meta_train_step(train)
    assert torch.isfinite(torch.tensor(metrics["loss"])) and 0 <= metrics["accuracy"] <= 1
    assert any(not torch.equal(p, q) for p, q in zip(before, learner.parameters(), strict=True))  # it learned
    logits = learner.predict(batch.support_x, batch.support_y, batch.query_x)
    assert logits.shape == (2, 5, 5) and torch.isfinite(logits).all()


def test_relation_works_on_a_resnet12_map_too_small_to_pool():
    """ResNet-12 leaves a 1x1 map of a 28x28 image: the relation module then skips its pools."""
    learner = get_family("relation")(make_hparams("relation", {"backbone": "resnet12", "width": 2}), (1, 28, 28), 5)
    encoder = learner.encoder
    assert isinstance(encoder, Backbone) and encoder.feature_shape == (20, 1, 1)
    batch = _batch((1, 28, 28))
    learner.meta_train_step(batch)
    assert learner.predict(batch.support_x, batch.support_y, batch.query_x).shape == (2, 5, 5)


@dataclass(frozen=True)
class _Knobs(BackboneHyperparams):
    pass


def test_the_factory_builds_what_the_hyperparameters_name_with_the_family_s_options():
    conv = build_backbone(_Knobs(width=8, depth=4), (1, 28, 28), running_stats=False, features="map", pooled_blocks=2)
    assert type(conv).__name__ == "Conv4" and conv.feature_shape == (8, 7, 7) and not list(conv.buffers())
    assert conv(torch.rand(2, 1, 28, 28)).shape == (2, 8, 7, 7)
    res = build_backbone(_Knobs(width=8, backbone="resnet12", dropblock=0.1), COLOUR_84, running_stats=True)
    assert type(res).__name__ == "ResNet12" and res.embedding_dim == 80 and res.feature_shape == (80, 5, 5)
