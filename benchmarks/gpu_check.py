"""The GPU check: does every family run on the device, agree with the CPU, and how fast is MAML there.

    python benchmarks/gpu_check.py --device cuda        # torch, numpy and pyarrow are enough
    learn2tune bench gpu --device cuda                  # the same through the CLI (full environment)

Four checks, one table at the end (progress goes to stderr):

1. every registered family at its defaults (``path`` fixed to ``split`` for the MAML family, so
   nothing compiles): predict at the initial weights and two meta-training steps on the device and
   on the CPU from the same weights and seeds; the largest relative difference of the logits and
   of the two losses. TF32 is off for this check, so the device computes in full fp32.
2. MAML (second order at 1 and 5 inner steps, first order at 1) on the Omniglot setting, 5-way
   1-shot, 15 queries, meta-batch 32: every :data:`learners.meta_gradient.PATHS` formulation
   (``split-compiled`` only with ``--compile``), median time and peak memory of one meta-gradient,
   as ratios to the task-by-task ``loop``. Peak memory is ``torch.cuda.max_memory_allocated``
   above what was allocated before the call; a CPU has no such counter (``-``).
3. MAML 5-way 1-shot meta-batch 32 meta-iterations/s (gradient and Adam step) by the fastest path
   of check 2, beside TorchBench's functorch MAML (~9 it/s on an A100).
4. Fractional-GPU packing: four ProtoNet learners in four threads of one process (one CUDA stream
   each) against one alone; the aggregate speed-up (4 x one's time / four's time) and their peak memory.

``--tiny`` shrinks every size (16x16 images, width 8, depth 2, two tasks) so the test suite runs
it on a CPU in seconds. Imports nothing beyond torch, numpy and this repository's learners.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import functools
import statistics
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a file: make the repository's packages importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch  # noqa: E402

from benchmarks.batches import WAYS, random_batch, timed, training_batch  # noqa: E402
from learners.base import Learner, synchronize  # noqa: E402
from learners.checkpoint import build_learner  # noqa: E402
from learners.maml import MAML  # noqa: E402
from learners.meta_gradient import PATHS  # noqa: E402
from learners.peak_memory import format_size, peak_bytes  # noqa: E402
from learners.registry import family_names  # noqa: E402
from tasks.episodes import EpisodeBatch  # noqa: E402

TORCHBENCH_MAML_A100 = 9.0  # meta-iterations/s of TorchBench's functorch_maml_omniglot on an A100
MAML_FAMILIES = ("maml", "fomaml", "metasgd")  # path "split": the same formulation on both devices
COMPILED = "split-compiled"
PACKED = 4
AGREE = 1e-3  # largest relative difference that passes check 1


@dataclasses.dataclass(frozen=True)
class Sizes:
    image: tuple[int, int, int]
    backbone: dict[str, int]  # width/depth overrides for every family (empty: defaults)
    steps: dict[str, dict[str, int]]  # per-family inner-step overrides for check 1 (empty: defaults)
    tasks: int  # meta-batch of checks 1 and 4
    maml_tasks: int  # meta-batch of checks 2 and 3
    query: int
    inner_steps: tuple[int, ...]
    runs: int  # timed runs per measurement
    packing_steps: int

    def batch(self, device: torch.device, tasks: int) -> EpisodeBatch:
        """The seeded random meta-batch of these sizes."""
        return random_batch(device, tasks, image=self.image, query=self.query)

    def training_batch(self, learner: Learner, device: torch.device, tasks: int) -> Any:
        """What ``learner`` meta-trains on, of these sizes (the meta-batch itself for an episodic family)."""
        return training_batch(learner, device, tasks, image=self.image, query=self.query)


FULL = Sizes((1, 28, 28), {}, {}, 8, 32, 15, (1, 5), 5, 20)
TINY = Sizes(
    (1, 16, 16),
    {"width": 8, "depth": 2},
    {
        "maml": {"test_inner_steps": 1},
        "fomaml": {"test_inner_steps": 1},
        "reptile": {"inner_steps": 1, "test_inner_steps": 1},
        "meta_lstm": {"inner_steps": 1},
    },
    2,
    2,
    1,
    (1,),
    1,
    1,
)

Row = tuple[str, str, str, str]  # check, setting, result, reference


def build(family: str, sizes: Sizes, device: torch.device, **hparams: object) -> Learner:
    torch.manual_seed(0)
    if family in MAML_FAMILIES and "path" not in hparams:
        hparams["path"] = "split"
    spec = {"family": family, "hparams": {**sizes.backbone, **hparams}, "image_shape": list(sizes.image), "ways": WAYS}
    return build_learner(spec, device)


def relative(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a.double().cpu() - b.double().cpu()).abs().max() / b.double().cpu().abs().max().clamp_min(1e-12)).item()


def run_family(learner: Learner, batch: EpisodeBatch, train_batch: Any) -> tuple[torch.Tensor, list[float]]:
    """Initial-weight logits on ``batch`` and the losses of two seeded meta-training steps on ``train_batch``."""
    logits = learner.predict(batch.support_x, batch.support_y, batch.query_x)
    losses = []
    for step in range(2):
        torch.manual_seed(1 + step)  # families that sample inside a step do so identically
        losses.append(learner.meta_train_step(train_batch)["loss"])
    return logits, losses


def check_families(sizes: Sizes, device: torch.device) -> list[Row]:
    rows = []
    cpu = torch.device("cpu")
    tf32 = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    try:
        for family in family_names():
            say(f"family {family}")
            hparams = sizes.steps.get(family, {})
            on_device = build(family, sizes, device, **hparams)
            batch, train = sizes.batch(device, sizes.tasks), sizes.training_batch(on_device, device, sizes.tasks)
            logits, losses = run_family(on_device, batch, train)
            reference = build(family, sizes, cpu, **hparams)
            ref_batch, ref_train = sizes.batch(cpu, sizes.tasks), sizes.training_batch(reference, cpu, sizes.tasks)
            ref_logits, ref_losses = run_family(reference, ref_batch, ref_train)
            loss_diffs = [abs(a - b) / max(abs(b), 1e-12) for a, b in zip(losses, ref_losses, strict=True)]
            diffs = [relative(logits, ref_logits), *loss_diffs]
            verdict = "ok" if max(diffs) <= AGREE else "DIFFERS"
            result = f"{verdict}: rel. diff logits {diffs[0]:.1e}, losses {diffs[1]:.1e} {diffs[2]:.1e}"
            rows.append(("family vs CPU", family, result, f"<= {AGREE:.0e}"))
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = tf32
    return rows


def measure(fn: Callable[[], object], device: torch.device, runs: int) -> tuple[float, int | None]:
    """Median seconds of ``fn`` after one warm-up, and its peak memory above the start (CUDA only)."""
    fn()
    seconds = statistics.median([timed(fn, device) for _ in range(runs)])
    return seconds, peak_bytes(fn, device) if device.type == "cuda" else None


def mib(n: int | None) -> str:
    return "-" if n is None else format_size(n)


def check_maml_paths(sizes: Sizes, device: torch.device, compile_too: bool) -> tuple[list[Row], str]:
    """Rows of check 2, and the fastest path at one inner step, second order (check 3 runs it)."""
    rows: list[Row] = []
    paths = [p for p in PATHS if compile_too or p != COMPILED]
    batch = sizes.batch(device, sizes.maml_tasks)
    fastest = "loop"
    for first_order, steps in [(False, s) for s in sizes.inner_steps] + [(True, 1)]:
        setting = f"{'first' if first_order else 'second'} order, {steps} inner step{'s' * (steps > 1)}"
        learner = build("maml", sizes, device, first_order=first_order, inner_steps=steps)
        assert isinstance(learner, MAML)
        found = {}
        for path in paths:
            say(f"maml {setting}: {path}")
            try:
                found[path] = measure(functools.partial(learner.compute, path, batch), device, sizes.runs)
            except Exception as exc:  # a formulation this device cannot run: say so in its row
                rows.append(("MAML path vs loop", f"{setting}: {path}", f"does not run ({type(exc).__name__})", ""))
        loop_s, loop_bytes = found["loop"]
        for path, (seconds, peak) in found.items():
            memory = "" if peak is None or not loop_bytes else f", memory {peak / loop_bytes:.2f}x ({mib(peak)})"
            result = f"{seconds * 1e3:.1f} ms, time {seconds / loop_s:.2f}x{memory}"
            reference = f"loop {loop_s * 1e3:.1f} ms, {mib(loop_bytes)}"
            rows.append(("MAML path vs loop", f"{setting}: {path}", result, reference))
        if not first_order and steps == 1:
            fastest = min(found, key=lambda p: found[p][0])
    return rows, fastest


def check_maml_speed(sizes: Sizes, device: torch.device, path: str) -> list[Row]:
    say(f"maml meta-iterations/s by {path}")
    learner = build("maml", sizes, device, path=path)
    batch = sizes.batch(device, sizes.maml_tasks)
    seconds, peak = measure(lambda: learner.meta_train_step(batch), device, sizes.runs)
    setting = f"5-way 1-shot, meta-batch {sizes.maml_tasks}, {'x'.join(map(str, sizes.image))}, path {path}"
    reference = f"TorchBench functorch MAML ~{TORCHBENCH_MAML_A100:.0f} it/s on an A100"
    return [("MAML meta-iter/s", setting, f"{1 / seconds:.2f} it/s ({mib(peak)} peak)", reference)]


def check_packing(sizes: Sizes, device: torch.device) -> list[Row]:
    """Four learners in four threads of this process against one alone."""
    say(f"packing: {PACKED} protonet learners in one process")
    learners = [build("protonet", sizes, device) for _ in range(PACKED)]
    batch = sizes.batch(device, sizes.tasks)
    losses: list[list[float]] = [[] for _ in learners]

    def train(index: int) -> None:
        stream = torch.cuda.Stream(device) if device.type == "cuda" else None
        with torch.cuda.stream(stream) if stream is not None else contextlib.nullcontext():
            for _ in range(sizes.packing_steps):
                losses[index].append(learners[index].meta_train_step(batch)["loss"])
            synchronize(device)

    train(0)  # warm-up
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    start = time.perf_counter()
    train(0)
    alone = time.perf_counter() - start
    threads = [threading.Thread(target=train, args=(i,)) for i in range(PACKED)]
    start = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    packed = time.perf_counter() - start
    finite = all(torch.isfinite(torch.tensor(values)).all() and len(values) >= sizes.packing_steps for values in losses)
    peak = torch.cuda.max_memory_allocated(device) if device.type == "cuda" else None
    setting = f"{PACKED} protonet learners, {sizes.packing_steps} steps each, one thread and stream each"
    result = (
        f"{'ok' if finite else 'FAILED'}: aggregate speed-up {PACKED * alone / packed:.2f}x over one alone "
        f"({alone:.2f} s alone, {packed:.2f} s for {PACKED}; peak {mib(peak)})"
    )
    return [("fractional packing", setting, result, f"ideal {PACKED:.2f}x")]


def say(message: str) -> None:
    print(f"gpu check: {message}", file=sys.stderr, flush=True)


def print_table(rows: list[Row], header: str) -> None:
    widths = [max(len(r[i]) for r in [("check", "setting", "result", "reference"), *rows]) for i in range(4)]
    print(header)
    for row in [("check", "setting", "result", "reference"), *rows]:
        print("  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python benchmarks/gpu_check.py", description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cuda", help="device to check (default cuda; cpu runs it without a GPU)")
    parser.add_argument("--tiny", action="store_true", help="tiny sizes (what the test suite runs on a CPU)")
    parser.add_argument(
        "--compile", action="store_true", help="also time MAML's split-compiled path (torch.compile: minutes)"
    )
    args = parser.parse_args(argv)
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        parser.error("--device cuda, but torch sees no CUDA device here (run with --device cpu to check without one)")
    device = torch.device(args.device)
    sizes = TINY if args.tiny else FULL
    start = time.perf_counter()
    rows = check_families(sizes, device)
    path_rows, fastest = check_maml_paths(sizes, device, args.compile)
    rows += path_rows + check_maml_speed(sizes, device, fastest) + check_packing(sizes, device)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU, {torch.get_num_threads()} threads"
    took = time.perf_counter() - start
    header = f"GPU check on {name}; torch {torch.__version__}; {'tiny' if args.tiny else 'full'} sizes; {took:.0f} s"
    print_table(rows, header)
    return 1 if any(r[2].startswith(("DIFFERS", "FAILED")) for r in rows) else 0


if __name__ == "__main__":
    raise SystemExit(main())
