"""Meta-iteration time of every learner family, same shapes, same machine, same run.

    .venv/bin/python -m benchmarks.families [--iters N] [--tasks T] [--device cpu|cuda]
    .venv/bin/python -m benchmarks.families --backbone resnet12 [--width W] [--query Q]  (beside Conv-4, 84x84x3)

Every family of :func:`learners.registry.family_names` is built with
:func:`learners.checkpoint.build_learner` at its default hyperparameters for 28x28x1 images and
5 ways, except that maml, fomaml and metasgd get ``path="split"`` (their default ``"auto"`` also
tries ``split-compiled``, a ``torch.compile`` that takes minutes). All run full meta-iterations
(``meta_train_step``: gradient and optimizer step) on the same random, seeded meta-batch:
5-way 1-shot, 15 queries, ``--tasks`` tasks, float images in [0, 1], labels ordered class by class
(finetune, which trains on class mini-batches: one batch of its size from a random split of that
meta-batch's shape, :func:`benchmarks.batches.training_batch`).

For maml, fomaml, metasgd and reptile the fast path is also set against the task-by-task path of
the same learner. MAML-family learners expose ``compute(path, batch)`` (the meta-gradient by a
given path, no optimizer step): ``loop`` and ``split`` are timed through it on one learner.
Reptile has no public per-path meta-iteration, so two more reptile learners are built with
``path`` fixed to ``loop`` and to ``vmap`` and their ``meta_train_step`` is timed; the default
reptile (``"auto"``) picks its path during the warm-up and the ratio uses that choice.

For protonet, matching, relation and siamese the learner's step is set against a plain PyTorch
loop of the same math (:mod:`benchmarks.metric_plain`: one task at a time, broadcast distances,
textbook layout) on a copy with the same weights, and each step's achieved FLOP/s is given as a
fraction of a ``torch.mm`` timed in the same rotation (:mod:`benchmarks.flops`).

One warm-up call each, then ``--iters`` rounds in which every measurement runs once, in a
rotating order (the CPU may be shared); medians are reported. Beside each family's time: the
peak memory of one meta-iteration and its FLOP/s as a fraction of the same run's ``torch.mm``
rate (:mod:`benchmarks.memory`). FLOPs are counted on a task-by-task run of the same step: for a
family that chooses among paths, a twin learner with ``path="loop"`` (a ``vmap``-ed path's
grouped convolutions would be over-counted).
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from functools import partial

import torch

from benchmarks import backbones, memory
from benchmarks.batches import IMAGE, QUERY, SHOTS, WAYS, random_batch, training_batch
from benchmarks.flops import (
    MATMUL_FLOPS,
    MATMUL_SIZE,
    count_flops,
    fraction_of_matmul,
    matmul_flops_per_s,
    matmul_reference,
)
from benchmarks.maml import device_name, interleaved_medians
from benchmarks.metric_plain import PLAIN_FAMILIES, plain_learner, plain_step
from learners.backbones import backbone_names
from learners.base import Learner
from learners.checkpoint import build_learner
from learners.registry import family_names
from pipeline.cli import Parser
from tasks.episodes import EpisodeBatch

SPLIT_FAMILIES = ("maml", "fomaml", "metasgd")  # path fixed to "split": no torch.compile
RATIO_FAMILIES = (*SPLIT_FAMILIES, "reptile")
MAML_FAST, MAML_LOOP = "split", "loop"


def make(family: str, device: torch.device, **hparams: object):
    torch.manual_seed(0)  # the same initial weights whatever was built before
    spec = {"family": family, "hparams": hparams, "image_shape": list(IMAGE), "ways": WAYS}
    return build_learner(spec, device)


def task_by_task(family: str, learner: Learner, batch: EpisodeBatch, device: torch.device) -> Callable[[], object]:
    """The meta-iteration whose FLOPs are counted: the learner's own, or a ``path="loop"`` twin's
    for a family that chooses among paths."""
    twin = make(family, device, path="loop") if getattr(learner, "paths", None) is not None else learner
    return partial(twin.meta_train_step, training_batch(twin, device, batch.tasks))


def main(argv: list[str] | None = None) -> int:
    parser = Parser(prog="python -m benchmarks.families", description=__doc__.split("\n\n")[0])
    parser.add_argument("--iters", type=int, default=3, help="timed meta-iterations per measurement (default 3)")
    parser.add_argument("--tasks", type=int, help="tasks per meta-batch (default 8; 4 with --backbone)")
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument("--families", default=None, help="comma-separated families to time (default: all registered)")
    parser.add_argument(
        "--backbone", help="time every family on this backbone beside conv4 at 84x84x3 (benchmarks/backbones.py)"
    )
    parser.add_argument("--width", type=int, help="with --backbone: every family's first-stage width")
    parser.add_argument("--query", type=int, default=QUERY, help=f"queries per class (default {QUERY})")
    args = parser.parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda, but torch sees no CUDA device here")
    args.tasks = args.tasks or (4 if args.backbone else 8)
    if args.iters < 1 or args.tasks < 1 or args.query < 1 or (args.width is not None and args.width < 1):
        parser.error("--iters, --tasks, --query and --width must be at least 1")
    families = family_names()
    if args.families:
        unknown = sorted(set(args.families.split(",")) - set(families))
        if unknown:
            parser.error(f"unknown families {', '.join(unknown)}; choose from {', '.join(families)}")
        families = [f for f in families if f in args.families.split(",")]
    device = torch.device(args.device)
    if args.backbone:
        if args.backbone not in backbone_names():
            parser.error(f"unknown backbone {args.backbone!r}; choose from {', '.join(backbone_names())}")
        return backbones.run(args.backbone, families, args.tasks, args.query, args.width, args.iters, device)
    name = device_name(device)
    print(
        f"meta-iteration per learner family, {WAYS}-way {SHOTS}-shot {args.query} query, meta-batch {args.tasks}, "
        f"{'x'.join(map(str, IMAGE))}; {name}; torch {torch.__version__}; medians of {args.iters} interleaved runs "
        f"after one warm-up\ndefault hyperparameters, except path='split' for {', '.join(SPLIT_FAMILIES)} "
        f"(their default 'auto' would also try split-compiled, a minutes-long torch.compile)",
        flush=True,
    )
    batch = random_batch(device, tasks=args.tasks, query=args.query)
    learners = {f: make(f, device, **({"path": MAML_FAST} if f in SPLIT_FAMILIES else {})) for f in families}
    methods: dict[str, Callable[[], object]] = {
        f: partial(lrn.meta_train_step, training_batch(lrn, device, args.tasks)) for f, lrn in learners.items()
    }
    for f in SPLIT_FAMILIES:
        if f in learners:
            for path in (MAML_FAST, MAML_LOOP):
                methods[f"{f}:{path}"] = functools.partial(learners[f].compute, path, batch)
    if "reptile" in learners:
        for path in ("loop", "vmap"):
            methods[f"reptile:{path}"] = functools.partial(make("reptile", device, path=path).meta_train_step, batch)

    metric = [f for f in families if f in PLAIN_FAMILIES]
    plains = {f: plain_learner(learners[f]) for f in metric}
    for f, plain in plains.items():
        methods[f"{f}:plain"] = functools.partial(plain_step, plain, batch)
    methods["matmul"] = matmul_reference(device)

    for fn in methods.values():
        fn()  # warm-up (reptile "auto" picks its path here)
    peak = memory.peaks({f: methods[f] for f in families}, device)
    flops = {f: count_flops(task_by_task(f, learners[f], batch, device)) for f in families}
    median = interleaved_medians(methods, args.iters, device)
    rate = matmul_flops_per_s(median["matmul"])

    print(
        f"\n{'family':<12}{'ms/meta-iter':>14}{'meta-iter/s':>13}{'episodes/s':>12}"
        f"{'peak MiB':>10}{'GFLOP':>7}{'of mm':>7}"
    )
    for f in families:
        note = ""
        if f in SPLIT_FAMILIES:
            note = f"  (path {MAML_FAST})"
        elif getattr(learners[f], "paths", None) is not None and learners[f].paths.chosen:
            note = f"  (auto picked {learners[f].paths.chosen})"
        s = median[f]
        print(
            f"{f:<12}{s * 1e3:>14.1f}{1 / s:>13.2f}{args.tasks / s:>12.1f}{memory.mib(peak[f]):>10}"
            f"{flops[f] / 1e9:>7.2f}{flops[f] / s / rate:>7.0%}{note}"
        )
    print(f"torch.mm {MATMUL_SIZE}x{MATMUL_SIZE} fp32: {rate / 1e9:.0f} GFLOP/s, same run")

    if metric:
        print_metric_rows(metric, median, flops)
    if not any(f in learners for f in RATIO_FAMILIES):
        return 0
    print("\nfast path vs task-by-task path, same learner, same run (ratio = fast time / loop time)")
    print(f"{'family':<12}{'measured':<24}{'fast':<7}{'fast ms':>9}{'loop ms':>9}{'ratio':>7}{'speed-up':>10}")
    for f in RATIO_FAMILIES:
        if f not in learners:
            continue
        if f == "reptile":
            fast, what = learners[f].paths.chosen, "meta_train_step"
        else:
            fast, what = MAML_FAST, "compute (no optimizer)"
        fast_s, loop_s = median[f"{f}:{fast}"], median[f"{f}:loop"]
        print(
            f"{f:<12}{what:<24}{fast:<7}{fast_s * 1e3:>9.1f}"
            f"{loop_s * 1e3:>9.1f}{fast_s / loop_s:>7.2f}{loop_s / fast_s:>9.2f}x"
        )
    return 0


def print_metric_rows(metric: list[str], median: dict[str, float], flops: dict[str, int]) -> None:
    """Each metric family's step against its plain loop, and its FLOP/s against ``torch.mm``'s."""
    matmul = median["matmul"]
    print(
        f"\nmetric families: learner step vs plain per-task loop (benchmarks/metric_plain.py), same weights, "
        f"same run; FLOP/s as a fraction of torch.mm {MATMUL_SIZE}x{MATMUL_SIZE} fp32 "
        f"({MATMUL_FLOPS / matmul / 1e9:.0f} GFLOP/s here)"
    )
    print(f"{'family':<12}{'step ms':>9}{'plain ms':>10}{'speed-up':>10}{'GFLOP/iter':>12}{'GFLOP/s':>9}{'of mm':>7}")
    for f in metric:
        fast_s, plain_s = median[f], median[f"{f}:plain"]
        fraction = fraction_of_matmul(flops[f], fast_s, matmul)
        print(
            f"{f:<12}{fast_s * 1e3:>9.1f}{plain_s * 1e3:>10.1f}{plain_s / fast_s:>9.2f}x"
            f"{flops[f] / 1e9:>12.2f}{flops[f] / fast_s / 1e9:>9.1f}{fraction:>7.0%}"
        )


if __name__ == "__main__":
    raise SystemExit(main())
