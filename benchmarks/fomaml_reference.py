"""learn2tune's first-order MAML against an independent one, side by side: ``learn2tune bench fomaml-reference``.

    learn2tune bench fomaml-reference                      # issue 19's setting, 110 meta-iterations
    learn2tune bench fomaml-reference --iterations 300 --flattened

Setting (issue 19; Finn et al. 2017 on Omniglot): Conv-4 of 64 filters with stride-2 convolutions on
28x28 images, 5-way 1-shot with 15 queries, inner lr 0.4, one inner step, Adam 1e-3, meta-batch 32,
seed 0. learn2tune's ``fomaml`` (the ``split`` path: ``auto`` would spend minutes compiling on a
CPU) and the reference of ``tests/fomaml_reference.py`` (its own network, ``copy.deepcopy`` per task,
``torch.optim.SGD`` on the support loss, the query gradient of the copy added onto the initial
weights) start from the same initial weights and train on the same batches,
in alternating blocks of ``--every`` iterations, so a shared machine's load falls on both alike.
Every ``--every`` iterations a row gives each one's mean training query accuracy over the last 50
iterations. ``--flattened`` adds the reference with its head on the flattened last feature map
(what learn2tune's MAML family did before issue 19; same initial convolutions, its own head).

The Omniglot dataset is ``bench omniglot``'s (random character split with rotations), built from the
upstream zips in ``--data`` on first use.
"""

from __future__ import annotations

import importlib.util
import time
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import torch

from benchmarks.omniglot_datasets import ZIPS, dataset_dir
from benchmarks.omniglot_options import DEFAULT_DATA, REPO
from learners.maml import FOMAML
from learners.registry import make_hparams
from pipeline.cli import Parser
from pipeline.errors import PipelineError
from tasks.build import BuildSpec, build_dataset
from tasks.episodes import EpisodeBatch, EpisodeSpec
from tasks.sampler import EpisodeSampler
from tasks.store import DatasetStore

EPISODE = EpisodeSpec(ways=5, shots=1, query=15)
IMAGE_SIZE, INNER_LR, META_LR, WINDOW = 28, 0.4, 1e-3, 50


def load_reference() -> ModuleType:
    """The test suite's reference (it lives with the tests, outside the installed packages)."""
    path = REPO / "tests" / "fomaml_reference.py"
    spec = importlib.util.spec_from_file_location("fomaml_reference", path)
    if spec is None or spec.loader is None or not path.is_file():
        raise PipelineError(f"the reference first-order MAML is missing: {path}")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def omniglot(data: Path, workdir: Path, seed: int) -> DatasetStore:
    """``bench omniglot``'s 28x28 dataset, built from the zips in ``data`` unless it is there already."""
    if not all((data / name).exists() or (data / f"{name}.zip").is_file() for name in ZIPS):
        raise PipelineError(
            f"no Omniglot in {data}: expected images_background.zip and images_evaluation.zip; pass --data DIR"
        )
    spec = BuildSpec(
        source="omniglot", path=str(data), split="random", rotations=True, image_size=IMAGE_SIZE, seed=seed
    )
    directory = dataset_dir(workdir, "cpu", IMAGE_SIZE, seed)
    build_dataset(spec, directory, overwrite=True)
    return DatasetStore.open(directory)


def learners(
    reference: ModuleType, width: int, flattened: bool, device: torch.device
) -> dict[str, Callable[[EpisodeBatch], float]]:
    """Column name -> a function training one meta-iteration on a batch and returning its query accuracy."""
    shape = (1, IMAGE_SIZE, IMAGE_SIZE)
    hparams = {"width": width, "meta_lr": META_LR, "inner_lr": INNER_LR, "inner_steps": 1, "path": "split"}
    ours = FOMAML(make_hparams("fomaml", hparams), shape, EPISODE.ways).to(device)
    theirs = reference.reference_network(shape, width, 4, EPISODE.ways)
    reference.copy_weights(ours.net, theirs)
    columns = {
        "learn2tune fomaml": lambda b: ours.meta_train_step(b)["accuracy"],
        "reference FOMAML": _reference_step(reference.ReferenceFOMAML(theirs.to(device), INNER_LR, 1, META_LR)),
    }
    if flattened:
        flat = reference.reference_network(shape, width, 4, EPISODE.ways, features="flatten")
        with torch.no_grad():  # the same initial convolutions and batch-norms; the head keeps its own init
            for a, b in zip(list(theirs.parameters())[:-2], list(flat.parameters())[:-2], strict=True):
                b.copy_(a)
        columns["reference, flattened head"] = _reference_step(
            reference.ReferenceFOMAML(flat.to(device), INNER_LR, 1, META_LR)
        )
    return columns


def _reference_step(learner: Any) -> Callable[[EpisodeBatch], float]:
    return lambda b: learner.meta_train_step(b.support_x, b.support_y, b.query_x, b.query_y)


def main(argv: list[str] | None = None) -> int:
    parser = Parser(prog="learn2tune bench fomaml-reference", description=__doc__.split("\n\n")[0])
    parser.add_argument("--iterations", type=int, default=110, help="meta-iterations of each (default 110)")
    parser.add_argument(
        "--every", type=int, default=10, help="a row, and a switch of learner, every N iterations (default 10)"
    )
    parser.add_argument("--tasks", type=int, default=32, help="meta-batch (default 32)")
    parser.add_argument("--width", type=int, default=64, help="Conv-4 filters (default 64)")
    parser.add_argument("--flattened", action="store_true", help="add the reference with its head on the flattened map")
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA, help="directory with the Omniglot zips")
    parser.add_argument("--workdir", type=Path, default=Path("runs"), help="where the dataset is built (default runs)")
    parser.add_argument("--seed", type=int, default=0, help="class split, initial weights and episodes (default 0)")
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    args = parser.parse_args(argv)
    for name in ("iterations", "every", "tasks", "width"):
        if getattr(args, name) < 1:
            parser.error(f"--{name} must be at least 1, got {getattr(args, name)}")
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda, but torch sees no CUDA device here")
    device = torch.device(args.device)
    reference = load_reference()
    train = omniglot(args.data, args.workdir, args.seed).split("train")
    sampler = EpisodeSampler(train, EPISODE, tasks=args.tasks, seed=args.seed)
    torch.manual_seed(args.seed)
    columns = learners(reference, args.width, args.flattened, device)
    print(
        f"first-order MAML on Omniglot {EPISODE.ways}-way {EPISODE.shots}-shot, {EPISODE.query} queries, meta-batch "
        f"{args.tasks}, Conv-4 ({args.width} filters, stride 2), inner lr {INNER_LR} x 1 step, Adam {META_LR}, seed "
        f"{args.seed}, {device}; mean training query accuracy over the last {WINDOW} iterations",
        flush=True,
    )
    print(f"| iteration | {' | '.join(columns)} |\n| --- |{' --- |' * len(columns)}", flush=True)
    accuracies: dict[str, list[float]] = {name: [] for name in columns}
    seconds = dict.fromkeys(columns, 0.0)
    for start in range(0, args.iterations, args.every):
        batches: list[EpisodeBatch] = [
            sampler.sample().to(device) for _ in range(min(args.every, args.iterations - start))
        ]
        for name, step in columns.items():
            began = time.perf_counter()
            accuracies[name] += [step(b) for b in batches]
            seconds[name] += time.perf_counter() - began
        row = [f"{np.mean(accuracies[name][-WINDOW:]):.3f}" for name in columns]
        print(f"| {start + len(batches)} | {' | '.join(row)} |", flush=True)
    print(
        "seconds per meta-iteration: " + ", ".join(f"{name} {s / args.iterations:.2f}" for name, s in seconds.items())
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
