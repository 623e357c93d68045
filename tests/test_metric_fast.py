"""The metric families' batched steps compute what a plain per-task PyTorch loop computes."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from benchmarks.metric_plain import plain_learner, plain_loss, plain_step
from learners.backbones.conv4 import Conv4
from learners.base import Learner
from learners.checkpoint import build_learner
from learners.metric import EpisodeLossLearner
from learners.protonet import ProtoNet
from tasks.episodes import EpisodeBatch

pytestmark = pytest.mark.usefixtures("single_thread")

SHAPE = (1, 16, 16)
WAYS = 3
VARIANTS = [
    ("protonet", {}),
    ("protonet", {"distance": "cosine"}),
    ("matching", {}),
    ("matching", {"fce": True, "fce_steps": 2}),
    ("relation", {}),
    ("siamese", {"embedding": 16}),
]


def variant_id(value: object) -> str:
    return value if isinstance(value, str) else "-".join(map(str, value.values()))  # type: ignore[attr-defined]


def batch(tasks: int, shots: int = 2, query: int = 2, seed: int = 0) -> EpisodeBatch:
    gen = torch.Generator().manual_seed(seed)

    def labels(n: int) -> torch.Tensor:
        return torch.arange(WAYS).repeat_interleave(n).expand(tasks, -1).contiguous()

    def images(n: int) -> torch.Tensor:
        return torch.rand(tasks, WAYS * n, *SHAPE, generator=gen)

    return EpisodeBatch(images(shots), labels(shots), images(query), labels(query), WAYS)


def make(family: str, hparams: dict[str, object]) -> Learner:
    torch.manual_seed(0)
    spec = {"family": family, "hparams": {"width": 8, "depth": 2, **hparams}, "image_shape": list(SHAPE), "ways": WAYS}
    return build_learner(spec)


def fast_loss(learner: Learner, b: EpisodeBatch) -> torch.Tensor:
    if isinstance(learner, ProtoNet):
        logits = learner.logits(b.support_x, b.support_y, b.query_x, b.ways)
        return F.cross_entropy(logits.flatten(0, 1), b.query_y.flatten())
    assert isinstance(learner, EpisodeLossLearner)
    return learner.episode_loss(b)[0]


def loss_and_grads(
    learner: Learner, loss_fn: Callable[[Learner, EpisodeBatch], torch.Tensor], b: EpisodeBatch
) -> tuple[torch.Tensor, list[torch.Tensor]]:
    learner.zero_grad(set_to_none=True)
    loss = loss_fn(learner, b)
    loss.backward()
    grads = [p.grad for p in learner.parameters()]
    assert all(g is not None for g in grads)
    return loss.detach(), [g.clone() for g in grads if g is not None]


def assert_same(fast: tuple[torch.Tensor, list[torch.Tensor]], plain: tuple[torch.Tensor, list[torch.Tensor]]) -> None:
    torch.testing.assert_close(fast[0], plain[0], rtol=1e-4, atol=1e-5)
    for g, h in zip(fast[1], plain[1], strict=True):
        torch.testing.assert_close(g, h, rtol=1e-3, atol=1e-4 * max(h.abs().max().item(), 1e-3))


def test_plain_learner_is_the_textbook_layout_with_the_same_weights():
    learner = make("protonet", {})
    plain = plain_learner(learner)
    convs = [m.weight for m in learner.modules() if isinstance(m, nn.Conv2d)]
    conv = convs[1]  # 8 input channels: the two layouts differ
    assert conv.is_contiguous(memory_format=torch.channels_last) and not conv.is_contiguous()
    assert all(m.weight.is_contiguous() for m in plain.modules() if isinstance(m, nn.Conv2d))

    def order(module: nn.Module) -> list[type]:
        return [type(m) for m in module.modules() if isinstance(m, (nn.MaxPool2d, nn.ReLU))]

    assert order(learner) == [nn.MaxPool2d, nn.ReLU] * 2
    assert order(plain) == [nn.ReLU, nn.MaxPool2d] * 2
    for a, b in zip(learner.state_dict().values(), plain.state_dict().values(), strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


@pytest.mark.parametrize(("family", "hparams"), VARIANTS, ids=variant_id)
def test_one_task_step_has_the_plain_loops_loss_and_gradients(family, hparams):
    learner = make(family, hparams)
    learner.train()
    b = batch(tasks=1)
    plain = plain_learner(learner)
    assert_same(loss_and_grads(learner, fast_loss, b), loss_and_grads(plain, plain_loss, b))


@pytest.mark.parametrize(("family", "hparams"), VARIANTS, ids=variant_id)
def test_batched_tasks_match_the_plain_loop_when_batch_norm_uses_fixed_statistics(family, hparams):
    """In eval mode batch-norm does not mix tasks, so the whole meta-batch must agree too."""
    learner = make(family, hparams)
    learner.eval()
    plain = plain_learner(learner)
    b = batch(tasks=3, seed=1)
    assert_same(loss_and_grads(learner, fast_loss, b), loss_and_grads(plain, plain_loss, b))


def test_plain_step_updates_the_copy_only():
    learner = make("protonet", {})
    before = [p.detach().clone() for p in learner.parameters()]
    plain = plain_learner(learner)
    loss = plain_step(plain, batch(tasks=2))
    assert loss > 0
    assert all(torch.equal(a, p) for a, p in zip(before, learner.parameters(), strict=True))
    assert any(not torch.equal(a, p) for a, p in zip(before, plain.parameters(), strict=True))


def test_pool_before_relu_is_exact_in_value_and_gradient():
    torch.manual_seed(0)
    net = Conv4((1, 16, 16), width=4, depth=2)
    textbook = plain_learner(net)
    x = torch.randn(5, 1, 16, 16)
    out, ref = net(x), textbook(x)
    assert torch.equal(out, ref)
    out.square().sum().backward()
    ref.square().sum().backward()
    for a, b in zip(net.parameters(), textbook.parameters(), strict=True):
        torch.testing.assert_close(a.grad, b.grad, rtol=1e-6, atol=0)
