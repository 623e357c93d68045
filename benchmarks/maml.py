"""MAML meta-iteration time, peak memory and FLOP/s: each :mod:`learners.meta_gradient` path
against the older-library way.

    .venv/bin/python -m benchmarks.maml [--iters N] [--device cpu|cuda]
        [--full | --settings 5x32,...] [--paths ...]

Setting (Finn et al. 2017, Omniglot): Conv-4 with 64 filters and stride-2 convolutions, 28x28x1
images, 5-way 1-shot with 15 queries, inner lr 0.4, Adam; second order, then first order; by
default 1 and 5 inner steps at meta-batch 32 and the paths loop, split and split-compiled
(``--full``: inner steps 1, 5, 10 x meta-batch 4, 16, 32; ``--paths`` adds the vmap-ed ones).
The baseline does what learn2learn-style libraries do: per task it clones the module so its
parameters are graph-connected copies, takes the support loss's gradient with
``torch.autograd.grad(create_graph=True)`` (``False`` for first order), swaps in ``p - lr * g``
once per inner step, adds the query loss; then one backward and one Adam step.

Every method starts from the same weights and runs full meta-iterations (gradient and Adam
step) on the same random batch. The CPU may be shared, so all are timed interleaved, in a
rotating order, and the medians are reported; the dense-matmul reference (``torch.mm`` of
2048x2048 float32) is timed in the same rotation. Peak memory: one meta-iteration of each
method after its warm-up (:mod:`benchmarks.memory`). The meta-gradient of every path is also
compared with the baseline's on the first batch. The FLOPs of a meta-iteration are counted with
``FlopCounterMode`` on the baseline's task-by-task computation (what the meta-gradient costs;
the paths lay the same work out differently), and each method's fraction of the matmul rate is
that count over its time. Counted on a ``vmap``-ed path it would be
inflated: ``FlopCounterMode`` counts a grouped convolution's weight gradient as if every group
saw every input channel (x the number of groups; ``vmap`` turns per-task weights into groups).
"""

from __future__ import annotations

import copy
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial

import torch
import torch.nn.functional as F
from torch import nn

from benchmarks import flops, memory
from benchmarks.batches import IMAGE, QUERY, SHOTS, WAYS, random_batch, timed
from benchmarks.flops import MATMUL_SIZE
from learners.maml import AUTO_POLICY, MAML
from learners.meta_gradient import PATHS
from learners.registry import make_hparams
from pipeline.cli import Parser
from tasks.episodes import EpisodeBatch


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

    def __init__(
        self, net: nn.Module, inner_lr: float, meta_lr: float, first_order: bool, inner_steps: int = 1
    ) -> None:
        self.net = net
        self.inner_lr = inner_lr
        self.first_order = first_order
        self.inner_steps = inner_steps
        self.optimizer = torch.optim.Adam(net.parameters(), lr=meta_lr)

    def meta_gradient(self, batch: EpisodeBatch) -> list[torch.Tensor]:
        """Mean query loss's gradient, accumulated into (and returned from) ``.grad``."""
        self.optimizer.zero_grad(set_to_none=True)
        total = torch.zeros((), device=batch.query_x.device)
        for sx, sy, qx, qy in zip(batch.support_x, batch.support_y, batch.query_x, batch.query_y, strict=True):
            learner = clone_module(self.net)
            for _ in range(self.inner_steps):
                named = [
                    (sub, name, p) for sub in learner.modules() for name, p in sub._parameters.items() if p is not None
                ]
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


def device_name(device: torch.device) -> str:
    """The GPU's name, or the CPU and its thread count."""
    return torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU, {torch.get_num_threads()} threads"


def interleaved_medians(methods: dict[str, Callable[[], object]], iters: int, device: torch.device) -> dict[str, float]:
    """Median seconds of each method over ``iters`` rounds, every method once a round in a rotating order."""
    runs: dict[str, list[float]] = {name: [] for name in methods}
    names = list(methods)
    for i in range(iters):
        for name in names[i % len(names) :] + names[: i % len(names)]:
            runs[name].append(timed(methods[name], device))
    return {name: statistics.median(times) for name, times in runs.items()}


Setting = tuple[int, int]  # (inner steps, meta-batch)
DEFAULT_SETTINGS: tuple[Setting, ...] = ((1, 32), (5, 32))
FULL_SETTINGS: tuple[Setting, ...] = tuple((steps, tasks) for steps in (1, 5, 10) for tasks in (4, 16, 32))
DEFAULT_PATHS = ("loop", "split", "split-compiled")  # the vmap-ed paths run 2-3x slower than a loop on a CPU


def learner(path: str, first_order: bool, device: torch.device, inner_steps: int = 1, width: int = 64) -> MAML:
    torch.manual_seed(0)  # the same initial weights for every method
    hparams = make_hparams(
        "maml", {"path": path, "first_order": first_order, "inner_steps": inner_steps, "width": width}
    )
    return MAML(hparams, IMAGE, WAYS).to(device)


def max_relative_error(grads: list[torch.Tensor], reference: list[torch.Tensor]) -> float:
    return max(((g - r).abs().max() / r.abs().max()).item() for g, r in zip(grads, reference, strict=True))


@dataclass(frozen=True)
class Row:
    """One method's figures in one setting."""

    ms: float
    speedup: float  # baseline time / this time
    peak: int  # bytes
    memory_ratio: float  # this peak / the baseline's
    mm_fraction: float  # achieved FLOP/s (the baseline's FLOP count / this time) / torch.mm's FLOP/s


def run_setting(
    first_order: bool, steps: int, tasks: int, paths: list[str], iters: int, device: torch.device, width: int = 64
) -> dict[str, Row]:
    """Time, peak memory and FLOP/s fraction of the baseline and each path, printed and returned
    (``width``: the Conv-4's filters, smaller only in the benchmark's own test)."""
    order = "first" if first_order else "second"
    batch = random_batch(device, tasks=tasks)
    base_net = learner("loop", first_order, device, steps, width).net
    baseline = BaselineMAML(copy.deepcopy(base_net), 0.4, 1e-3, first_order, steps)
    reference = [g.clone() for g in baseline.meta_gradient(batch)]
    methods: dict[str, Callable[[], object]] = {"baseline": lambda: baseline.meta_train_step(batch)}
    print(f"\n== {order} order, {steps} inner step(s), meta-batch {tasks}", flush=True)
    ran = []
    for path in paths:
        lrn = learner(path, first_order, device, steps, width)
        start = time.perf_counter()
        try:
            grads = lrn.compute(path, batch).grads
        except Exception as exc:  # noqa: BLE001  (e.g. torch.compile without a compiler: reported, not fatal)
            print(f"   {path:15s} does not run here: {type(exc).__name__}: {exc}")
            continue
        error = max_relative_error([grads[k] for k, _ in lrn.net.named_parameters()], reference)
        print(
            f"   {path:15s} first call {time.perf_counter() - start:6.1f} s; "
            f"meta-gradient vs baseline: max rel. diff {error:.1e}"
        )
        methods[path] = partial(lrn.meta_train_step, batch)
        ran.append(path)
    for fn in methods.values():
        fn()  # warm-up
    peak = memory.peaks(methods, device)
    methods["matmul"] = flops.matmul_reference(device)
    methods["matmul"]()
    median = interleaved_medians(methods, iters, device)
    rate = flops.matmul_flops_per_s(median.pop("matmul"))
    step_flops = flops.count_flops(lambda: baseline.meta_gradient(batch))
    auto = auto_mark(ran, median)
    print(f"   {'method':15s}{'ms/iter':>9}{'speed-up':>10}{'peak MiB':>10}{'memory/base':>12}{'of mm':>7}")
    rows = {}
    for name in median:
        rows[name] = Row(
            median[name] * 1e3,
            median["baseline"] / median[name],
            peak[name],
            peak[name] / peak["baseline"],
            step_flops / median[name] / rate,
        )
        r = rows[name]
        mark = "  <- auto" if name == auto else ""
        print(
            f"   {name:15s}{r.ms:9.1f}{r.speedup:9.2f}x{memory.mib(r.peak):>10}"
            f"{r.memory_ratio:11.2f}x{r.mm_fraction:7.0%}{mark}"
        )
    print(
        f"   {step_flops / 1e9:.1f} GFLOP/iter (counted on the baseline); torch.mm {MATMUL_SIZE}x{MATMUL_SIZE} fp32: "
        f"{rate / 1e9:.0f} GFLOP/s, same run"
    )
    return rows


def auto_mark(ran: list[str], median: dict[str, float]) -> str | None:
    """The path ``auto`` takes among those measured: the fastest on a GPU, else the first that runs in
    :data:`learners.maml.AUTO_POLICY`'s CPU order."""
    if not ran:
        return None
    if torch.cuda.is_available() and all(p in ran for p in AUTO_POLICY.timed):
        return min(ran, key=median.__getitem__)
    return next((p for p in AUTO_POLICY.untimed if p in ran), None)


def parse_settings(text: str) -> tuple[Setting, ...]:
    """``"1x32,5x32"`` -> ((1, 32), (5, 32)): inner steps x meta-batch."""
    settings = []
    for item in text.split(","):
        steps, _, tasks = item.partition("x")
        if not (steps.isdigit() and tasks.isdigit() and int(steps) > 0 and int(tasks) > 0):
            raise ValueError(f"--settings: expected STEPSxTASKS items such as 5x32, got {item!r}")
        settings.append((int(steps), int(tasks)))
    return tuple(settings)


def main(argv: list[str] | None = None) -> int:
    parser = Parser(prog="python -m benchmarks.maml", description=__doc__.split("\n\n")[0])
    parser.add_argument("--iters", type=int, default=3, help="timed meta-iterations per method (default 3)")
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument(
        "--paths",
        default=None,
        help=f"comma-separated paths (default: {','.join(DEFAULT_PATHS)}; all: {','.join(PATHS)})",
    )
    parser.add_argument("--settings", default=None, help="comma-separated STEPSxTASKS (default: 1x32,5x32)")
    parser.add_argument("--full", action="store_true", help="inner steps 1, 5, 10 x meta-batch 4, 16, 32")
    parser.add_argument("--orders", choices=("both", "second", "first"), default="both")
    parser.add_argument(
        "--profile", choices=PATHS, default=None, help="print the top ops of one meta-iteration by this path"
    )
    args = parser.parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda, but torch sees no CUDA device here")
    if args.iters < 1:
        parser.error("--iters must be at least 1")
    paths = args.paths.split(",") if args.paths else list(DEFAULT_PATHS)
    unknown = sorted(set(paths) - set(PATHS))
    if unknown:
        parser.error(f"unknown paths {', '.join(unknown)}; choose from {', '.join(PATHS)}")
    try:
        settings = FULL_SETTINGS if args.full else parse_settings(args.settings) if args.settings else DEFAULT_SETTINGS
    except ValueError as exc:
        parser.error(str(exc))
    device = torch.device(args.device)
    print(
        f"MAML meta-iteration, {WAYS}-way {SHOTS}-shot {QUERY} query, Conv-4 (64, stride 2) on "
        f"{'x'.join(map(str, IMAGE))}, inner lr 0.4, Adam 1e-3; {device_name(device)}; torch {torch.__version__}; "
        f"medians of {args.iters} interleaved runs; "
        f"peak memory of one meta-iteration ({memory.HOW[device.type]})"
    )
    orders = {"both": (False, True), "second": (False,), "first": (True,)}[args.orders]
    results = {}
    for first_order in orders:
        for steps, tasks in settings:
            results[first_order, steps, tasks] = run_setting(first_order, steps, tasks, paths, args.iters, device)
    if args.profile:
        steps, tasks = settings[0]
        lrn, batch = learner(args.profile, orders[0], device, steps), random_batch(device, tasks=tasks)
        lrn.meta_train_step(batch)  # warm-up
        print(
            f"\ntop ops of one {args.profile} meta-iteration, {steps} inner step(s), meta-batch {tasks} "
            "(self CPU time):"
        )
        print(memory.top_ops(partial(lrn.meta_train_step, batch)))
    second = results.get((False, 5, 32))
    if second is not None and "split" in second:
        print(
            f"\nsecond-order split at meta-batch 32, 5 inner steps: peak {memory.mib(second['split'].peak)} MiB = "
            f"{second['split'].memory_ratio:.2f}x the clone-based baseline's {memory.mib(second['baseline'].peak)} MiB"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
