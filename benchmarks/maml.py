"""MAML meta-iteration time: each :mod:`learners.meta_gradient` path against the older-library way.

    .venv/bin/python -m benchmarks.maml [--iters N] [--device cpu|cuda]

Setting (Finn et al. 2017, Omniglot): Conv-4 with 64 filters and stride-2 convolutions, 28x28x1
images, 5-way 1-shot with 15 queries, meta-batch 32, one inner step (lr 0.4), Adam; second
order, then first order. The baseline does what learn2learn-style libraries do: per task it
clones the module so its parameters are graph-connected copies, takes the support loss's
gradient with ``torch.autograd.grad(create_graph=True)`` (``False`` for first order), swaps in
``p - lr * g``, adds the query loss; then one backward and one Adam step.

Every method starts from the same weights and runs full meta-iterations (gradient and Adam
step) on the same random batch. The CPU may be shared, so all are timed interleaved, in a
rotating order, and the medians are reported; the dense-matmul reference (``torch.mm`` of
2048x2048 float32) is timed in the same rotation. The meta-gradient of every path is also
compared with the baseline's on the first batch. The FLOPs of a meta-iteration are counted with
``FlopCounterMode`` on the baseline's task-by-task computation (what the meta-gradient costs;
the paths lay the same work out differently). Counted on a ``vmap``-ed path it would be
inflated: ``FlopCounterMode`` counts a grouped convolution's weight gradient as if every group
saw every input channel (x the number of groups; ``vmap`` turns per-task weights into groups).
"""

from __future__ import annotations

import copy
import functools
import statistics
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from learners.base import synchronize
from learners.maml import MAML
from learners.meta_gradient import PATHS
from learners.registry import make_hparams
from pipeline.cli import Parser
from tasks.episodes import EpisodeBatch

WAYS, SHOTS, QUERY, TASKS, IMAGE = 5, 1, 15, 32, (1, 28, 28)
MATMUL_SIZE = 2048


def clone_module(module: nn.Module) -> nn.Module:
    """A copy of ``module`` whose parameters are graph-connected clones (learn2learn's way)."""
    clone = copy.copy(module)
    clone.__dict__ = module.__dict__.copy()
    # learn2learn's trick: graph-connected tensors where nn.Module keeps Parameters
    clone._parameters = {k: None if p is None else p.clone() for k, p in module._parameters.items()}  # type: ignore[misc]
    clone._buffers = dict(module._buffers)
    clone._modules = {k: None if m is None else clone_module(m) for k, m in module._modules.items()}
    return clone


def update_module(module: nn.Module, updates: dict[nn.Module, dict[str, torch.Tensor]]) -> None:
    """Swap in new parameter tensors, module by module."""
    for sub in module.modules():
        sub._parameters.update(updates.get(sub, {}))  # type: ignore[arg-type]  # tensors, as clone_module's


class BaselineMAML:
    """Task-by-task MAML on a cloned module, as older libraries do it."""

    def __init__(self, net: nn.Module, inner_lr: float, meta_lr: float, first_order: bool) -> None:
        self.net = net
        self.inner_lr = inner_lr
        self.first_order = first_order
        self.optimizer = torch.optim.Adam(net.parameters(), lr=meta_lr)

    def meta_gradient(self, batch: EpisodeBatch) -> list[torch.Tensor]:
        """Mean query loss's gradient, accumulated into (and returned from) ``.grad``."""
        self.optimizer.zero_grad(set_to_none=True)
        total = torch.zeros((), device=batch.query_x.device)
        for sx, sy, qx, qy in zip(batch.support_x, batch.support_y, batch.query_x, batch.query_y, strict=True):
            learner = clone_module(self.net)
            named = [(sub, name, p) for sub in learner.modules() for name, p in sub._parameters.items() if p is not None]
            loss = F.cross_entropy(learner(sx), sy)
            grads = torch.autograd.grad(loss, [p for _, _, p in named], create_graph=not self.first_order)
            updates: dict[nn.Module, dict[str, torch.Tensor]] = {}
            for (sub, name, p), g in zip(named, grads, strict=True):
                updates.setdefault(sub, {})[name] = p - self.inner_lr * g
            update_module(learner, updates)
            total = total + F.cross_entropy(learner(qx), qy)
        (total / batch.tasks).backward()
        return [p.grad for p in self.net.parameters() if p.grad is not None]

    def meta_train_step(self, batch: EpisodeBatch) -> None:
        self.meta_gradient(batch)
        self.optimizer.step()


def random_batch(device: torch.device, seed: int = 0, tasks: int = TASKS) -> EpisodeBatch:
    """A seeded random meta-batch: uint8 images made float in [0, 1] by ``EpisodeBatch.to``."""
    gen = torch.Generator().manual_seed(seed)

    def labels(per_class: int) -> torch.Tensor:
        return torch.arange(WAYS).repeat_interleave(per_class).expand(tasks, -1).contiguous()

    def images(per_class: int) -> torch.Tensor:
        return torch.randint(0, 256, (tasks, WAYS * per_class, *IMAGE), generator=gen, dtype=torch.uint8)

    return EpisodeBatch(images(SHOTS), labels(SHOTS), images(QUERY), labels(QUERY), WAYS).to(device)


def device_name(device: torch.device) -> str:
    """The GPU's name, or the CPU and its thread count."""
    return torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU, {torch.get_num_threads()} threads"


def timed(fn: Callable[[], object], device: torch.device) -> float:
    synchronize(device)
    start = time.perf_counter()
    fn()
    synchronize(device)
    return time.perf_counter() - start


def interleaved_medians(methods: dict[str, Callable[[], object]], iters: int, device: torch.device) -> dict[str, float]:
    """Median seconds of each method over ``iters`` rounds, every method once a round in a rotating order."""
    runs: dict[str, list[float]] = {name: [] for name in methods}
    names = list(methods)
    for i in range(iters):
        for name in names[i % len(names):] + names[: i % len(names)]:
            runs[name].append(timed(methods[name], device))
    return {name: statistics.median(times) for name, times in runs.items()}


def learner(path: str, first_order: bool, device: torch.device) -> MAML:
    torch.manual_seed(0)  # the same initial weights for every method
    hparams = make_hparams("maml", {"path": path, "first_order": first_order})
    return MAML(hparams, IMAGE, WAYS).to(device)


def max_relative_error(grads: list[torch.Tensor], reference: list[torch.Tensor]) -> float:
    return max(((g - r).abs().max() / r.abs().max()).item() for g, r in zip(grads, reference, strict=True))


def run_order(first_order: bool, paths: list[str], iters: int, device: torch.device) -> None:
    order = "first" if first_order else "second"
    batch = random_batch(device)
    auto = learner("auto", first_order, device)
    start = time.perf_counter()
    auto.meta_train_step(batch)
    chosen = auto.chosen_path
    assert chosen is not None, "the first auto step picks a path"
    paths = list(dict.fromkeys([*paths, chosen]))
    timings = ", ".join(f"{p} {ms:.0f}" for p, ms in auto.path_timings_ms.items())
    how = f"ms: {timings}" if timings else "untimed off a GPU"
    print(f"\n== {order} order: auto picked {chosen!r} in {time.perf_counter() - start:.1f} s ({how})")

    base_net = learner("loop", first_order, device).net
    baseline = BaselineMAML(copy.deepcopy(base_net), auto.hparams.inner_lr, auto.hparams.meta_lr, first_order)
    reference = [g.clone() for g in baseline.meta_gradient(batch)]
    methods: dict[str, Callable[[], object]] = {"baseline": lambda: baseline.meta_train_step(batch)}
    learners = {path: learner(path, first_order, device) for path in paths}
    for path, lrn in learners.items():
        start = time.perf_counter()
        grads = lrn.compute(path, batch).grads
        error = max_relative_error([grads[k] for k, _ in lrn.net.named_parameters()], reference)
        seconds = time.perf_counter() - start
        print(f"   {path:15s} first call {seconds:6.1f} s; meta-gradient vs baseline: max rel. diff {error:.1e}")
        methods[path] = functools.partial(lrn.meta_train_step, batch)
    a, b = (torch.randn(MATMUL_SIZE, MATMUL_SIZE, device=device) for _ in range(2))
    methods["matmul"] = lambda: torch.mm(a, b)
    for fn in methods.values():
        fn()  # warm-up
    median = interleaved_medians(methods, iters, device)
    for name in list(methods)[:-1]:
        ratio = median["baseline"] / median[name]
        mark = "  <- auto" if name == chosen else ""
        print(f"   {name:15s} {median[name] * 1e3:8.1f} ms/iter   speed-up vs baseline {ratio:5.2f}x{mark}")

    matmul_flops = 2 * MATMUL_SIZE**3 / median["matmul"]
    with FlopCounterMode(display=False) as counter:
        baseline.meta_gradient(batch)
    step_flops = counter.get_total_flops()
    achieved = step_flops / median[chosen]
    print(
        f"   {chosen}: {step_flops / 1e9:.1f} GFLOP/iter -> {achieved / 1e9:.1f} GFLOP/s "
        f"= {achieved / matmul_flops:.0%} of this device's dense matmul "
        f"({matmul_flops / 1e9:.0f} GFLOP/s, torch.mm {MATMUL_SIZE}x{MATMUL_SIZE} fp32, same run)"
    )
    ratio = median[chosen] / median["baseline"]
    print(f"   ratio chosen/baseline time: {ratio:.2f} (speed-up {1 / ratio:.2f}x)")


def main(argv: list[str] | None = None) -> int:
    parser = Parser(prog="python -m benchmarks.maml", description=__doc__.split("\n\n")[0])
    parser.add_argument("--iters", type=int, default=5, help="timed meta-iterations per method (default 5)")
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument("--paths", default=None, help=f"comma-separated paths to time (default: all of {', '.join(PATHS)})")
    args = parser.parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda, but torch sees no CUDA device here")
    paths = args.paths.split(",") if args.paths else list(PATHS)
    unknown = sorted(set(paths) - set(PATHS))
    if unknown:
        parser.error(f"unknown paths {', '.join(unknown)}; choose from {', '.join(PATHS)}")
    device = torch.device(args.device)
    name = device_name(device)
    print(
        f"MAML meta-iteration, {WAYS}-way {SHOTS}-shot {QUERY} query, meta-batch {TASKS}, Conv-4 (64, stride 2) on "
        f"{'x'.join(map(str, IMAGE))}, 1 inner step; {name}; torch {torch.__version__}; "
        f"medians of {args.iters} interleaved runs"
    )
    for first_order in (False, True):
        run_order(first_order, paths, args.iters, device)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
