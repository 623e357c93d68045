"""Episode throughput: :class:`tasks.sampler.EpisodeSampler` on the Parquet store versus a
loader that decodes PNGs for every episode, as image-folder loaders do.

    .venv/bin/python -m benchmarks.sampler [--omniglot DIR] [--seconds S]

Both draw meta-batches of 32 tasks (5-way 1-shot and 5-shot, 15 queries) from the same
meta-train classes, one after the other in the same run. The baseline picks classes and
files, opens each PNG (from the Omniglot zip, or from disk for the fallback), decodes it
with PIL, resizes it to 28x28 (LANCZOS) and stacks the arrays into the same tensors.
Without real Omniglot the benchmark writes synthetic glyph PNGs (105x105, Omniglot's size)
into a temporary folder and says so.
"""

from __future__ import annotations

import functools
import sys
import tempfile
import time
import zipfile
from collections import defaultdict
from collections.abc import Callable
from contextlib import ExitStack
from pathlib import Path
from typing import IO

import numpy as np
import torch
from PIL import Image

from pipeline.cli import Parser
from tasks.build import BuildSpec, build_dataset
from tasks.episodes import EpisodeBatch, EpisodeSpec
from tasks.sampler import EpisodeSampler
from tasks.store import DatasetStore
from tasks.synthetic import SyntheticSource

DEFAULT_OMNIGLOT = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "omniglot"
META_BATCH = 32
SETTINGS = (EpisodeSpec(ways=5, shots=1, query=15), EpisodeSpec(ways=5, shots=5, query=15))
IMAGE_SIZE = 28
FALLBACK_CLASSES = 60


class PngEpisodeLoader:
    """The baseline: every episode opens, decodes and resizes its PNGs again."""

    def __init__(self, classes: list[list[str]], open_file: Callable[[str], IO[bytes]], invert: bool, seed: int = 0):
        self.classes = classes
        self.open_file = open_file
        self.invert = invert
        self.rng = np.random.default_rng(seed)

    def _load(self, name: str) -> np.ndarray:
        with self.open_file(name) as f, Image.open(f) as image:
            array = np.asarray(image.convert("L").resize((IMAGE_SIZE, IMAGE_SIZE), Image.Resampling.LANCZOS))
        return 255 - array if self.invert else array

    def sample(self, spec: EpisodeSpec, tasks: int) -> EpisodeBatch:
        support, query = [], []
        for _ in range(tasks):
            task_support, task_query = [], []
            for c in self.rng.choice(len(self.classes), spec.ways, replace=False):
                files = self.rng.choice(self.classes[c], spec.images_per_class, replace=False)
                images = [self._load(name) for name in files]
                task_support += images[: spec.shots]
                task_query += images[spec.shots :]
            support.append(np.stack(task_support))
            query.append(np.stack(task_query))
        labels = torch.arange(spec.ways)
        return EpisodeBatch(
            support_x=torch.from_numpy(np.stack(support)[:, :, None]),
            support_y=labels.repeat_interleave(spec.shots).expand(tasks, -1).contiguous(),
            query_x=torch.from_numpy(np.stack(query)[:, :, None]),
            query_y=labels.repeat_interleave(spec.query).expand(tasks, -1).contiguous(),
            ways=spec.ways,
        )


def _rate(draw: Callable[[], EpisodeBatch], seconds: float) -> float:
    """Episodes (tasks) per second of ``draw``, timed for about ``seconds`` after one warm-up."""
    draw()
    episodes, start = 0, time.perf_counter()
    while (elapsed := time.perf_counter() - start) < seconds:
        episodes += draw().tasks
    return episodes / elapsed


def _omniglot_baseline(root: Path, class_names: list[str], stack: ExitStack) -> PngEpisodeLoader:
    archives = {
        name: stack.enter_context(zipfile.ZipFile(root / f"{name}.zip"))
        for name in ("images_background", "images_evaluation")
    }
    members: dict[str, list[str]] = defaultdict(list)
    for archive in archives.values():
        for name in archive.namelist():
            if name.endswith(".png"):
                members[name.rsplit("/", 1)[0]].append(name)
    return PngEpisodeLoader(
        [members[key] for key in class_names],
        lambda name: archives[name.split("/", 1)[0]].open(name),
        invert=True,
    )


def _write_fallback_pngs(root: Path) -> None:
    """Synthetic glyphs as 105x105 PNGs (dark strokes on white, like Omniglot), one folder per class."""
    source = SyntheticSource(classes=FALLBACK_CLASSES, images_per_class=20, image_size=105, seed=0)
    for info in source.classes():
        folder = root / info.key
        folder.mkdir(parents=True)
        for i, image in enumerate(source.images(info.key)):
            Image.fromarray(255 - image).save(folder / f"{i:02d}.png")


def main(argv: list[str] | None = None) -> int:
    parser = Parser(prog="python -m benchmarks.sampler", description=__doc__.split("\n\n")[0])
    parser.add_argument("--omniglot", type=Path, default=DEFAULT_OMNIGLOT, help="directory with the Omniglot zips")
    parser.add_argument("--seconds", type=float, default=3.0, help="timing window per loader and setting")
    args = parser.parse_args(argv)
    root = args.omniglot.resolve()
    with tempfile.TemporaryDirectory(prefix="l2t-bench-") as tmp, ExitStack() as stack:
        if all((root / f"{n}.zip").is_file() for n in ("images_background", "images_evaluation")):
            print(f"data: real Omniglot from {root}")
            spec = BuildSpec(source="omniglot", path=str(root))
        else:
            print(
                f"data: no Omniglot zips in {root}; using {FALLBACK_CLASSES} classes of synthetic glyph PNGs "
                f"written to {tmp} instead"
            )
            _write_fallback_pngs(Path(tmp) / "pngs")
            spec = BuildSpec(
                source="folder", path=str(Path(tmp) / "pngs"), channels=1, val_classes=0.1, test_classes=0.1
            )
        start = time.perf_counter()
        build_dataset(spec, Path(tmp) / "dataset")
        built = time.perf_counter()
        train = DatasetStore.open(Path(tmp) / "dataset").split("train")
        loaded = time.perf_counter() - built
        print(f"build {built - start:.1f}s, load train split {loaded:.2f}s: images {tuple(train.images.shape)}")
        if spec.source == "omniglot":
            baseline = _omniglot_baseline(root, train.class_names, stack)
        else:
            folder = Path(tmp) / "pngs"
            baseline = PngEpisodeLoader(
                [[f"{key}/{p.name}" for p in sorted((folder / key).iterdir())] for key in train.class_names],
                lambda name: open(folder / name, "rb"),  # noqa: SIM115 - the loader closes each file it reads
                invert=False,
            )
        print(f"\nmeta-batch {META_BATCH} tasks, 28x28, ~{args.seconds:g}s per measurement; figures are episodes/s")
        print(f"{'setting':<20}{'EpisodeSampler':>16}{'PNG loader':>14}{'ratio':>10}")
        for spec_ in SETTINGS:
            sampler = EpisodeSampler(train, spec_, tasks=META_BATCH, seed=0)
            fast = _rate(sampler.sample, args.seconds)
            slow = _rate(functools.partial(baseline.sample, spec_, META_BATCH), args.seconds)
            name = f"{spec_.ways}-way {spec_.shots}-shot {spec_.query}q"
            print(f"{name:<20}{fast:>16,.0f}{slow:>14,.1f}{fast / slow:>9,.0f}x", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
