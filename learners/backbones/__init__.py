"""The backbone registry: name -> embedding network, and the one factory every family builds from.

A backbone is a :class:`~learners.backbones.base.Backbone` (an ``nn.Module`` mapping images
``[B, C, H, W]`` to embeddings, with ``embedding_dim``, ``feature_shape`` and ``feature_map``).
Which one a learner gets is its ``backbone`` hyperparameter (:class:`learners.base.BackboneHyperparams`,
with the knobs ``width``, ``depth``, ``dropblock``); the family says only what it needs of it
(batch-norm running statistics or none, the form of the features, Conv-4's downsampling).

A new backbone is one module with a ``Backbone`` subclass plus one line in ``_BACKBONES``. Modules
are imported when a backbone is first built, so listing the names costs nothing.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

from torch import nn

from learners.backbones.base import Backbone, BackboneOptions, Features

if TYPE_CHECKING:
    from learners.base import BackboneHyperparams

# Backbone name -> "module:class".
_BACKBONES: dict[str, str] = {
    "conv4": "learners.backbones.conv4:Conv4",
    "resnet12": "learners.backbones.resnet12:ResNet12",
}

# The drop rates the families that allow it search (ResNet-12's ``dropblock``; RFS and MetaOptNet use 0.1).
DROPBLOCK_RATES: tuple[float, ...] = (0.0, 0.1)

__all__ = [
    "DROPBLOCK_RATES",
    "Backbone",
    "BackboneOptions",
    "adaptable_classifier",
    "backbone_class",
    "backbone_names",
    "build_backbone",
]


def backbone_names() -> tuple[str, ...]:
    """Every registered backbone, in a stable order."""
    return tuple(_BACKBONES)


def backbone_class(name: str) -> type[Backbone]:
    """The class registered as ``name``; a clear error listing the registered names."""
    entry = _BACKBONES.get(name)
    if entry is None:
        raise ValueError(f"unknown backbone {name!r}; choose from: {', '.join(backbone_names())}")
    module, _, attribute = entry.partition(":")
    cls = getattr(importlib.import_module(module), attribute, None)
    if not (isinstance(cls, type) and issubclass(cls, Backbone)):
        raise TypeError(f"{entry} is registered as backbone {name!r} but is not a Backbone subclass")
    return cls


def build_backbone(
    hparams: BackboneHyperparams,
    image_shape: tuple[int, int, int],
    *,
    running_stats: bool,
    features: Features | None = None,
    downsample: str = "pool",
    pooled_blocks: int | None = None,
) -> Backbone:
    """The embedding network ``hparams.backbone`` names, sized by ``hparams``' knobs, for ``image_shape``.

    ``running_stats=False``: batch-norm on the statistics of each batch only, no buffers, no random
    layers, so the network is a pure function of its parameters (``torch.func``). ``features``:
    ``flatten``, ``mean`` or ``map`` (None: the backbone's own default). ``downsample`` and
    ``pooled_blocks`` shape Conv-4 only (see :class:`~learners.backbones.conv4.Conv4`).
    """
    options = BackboneOptions(running_stats, features, downsample, pooled_blocks)
    channels, height, width = image_shape
    return backbone_class(hparams.backbone).from_hparams(hparams, (channels, height, width), options)


def adaptable_classifier(
    hparams: BackboneHyperparams,
    image_shape: tuple[int, int, int],
    ways: int,
    *,
    downsample: str = "pool",
    features: Features | None = None,
) -> nn.Sequential:
    """The backbone without running statistics and a linear ``ways``-class head.

    The network the gradient-based families (MAML, FOMAML, Meta-SGD, Reptile, the Meta-LSTM's
    learner) adapt functionally: a pure function of its parameters, so it runs under
    ``functional_call``, ``grad`` and ``vmap``. Parameter names: ``0.*`` the backbone, ``1.*`` the head.
    """
    encoder = build_backbone(hparams, image_shape, running_stats=False, features=features, downsample=downsample)
    return nn.Sequential(encoder, nn.Linear(encoder.embedding_dim, ways))
