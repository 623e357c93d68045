"""Trials' dataset memory and start-up on one Ray node: a private copy per trial
(``search.data: storage``) versus one shared object-store copy per node (``object-store``).

    learn2tune bench data-sharing [--trials N] [--size full|tiny] [--omniglot DIR] [--workdir DIR]

For 1 and for N concurrent trials (Ray actors, one CPU each, started and idle before the
clock starts), each path runs what a trial runs before training: ``trial_dataset``, the train
and val splits, the first sampled meta-batch. Datasets: real Omniglot (with rotations, when
its zips are in DIR) and 84x84x3 uint8 noise shaped like mini-ImageNet (64/16/20 classes of
600 images, 1.27 GB; ``--size tiny``: 8/4/4 classes of 20 images), built once under
``--workdir`` and reused.

Memory per node = what the trials added to their private memory (USS: pages only that
process maps, from /proc/<pid>/smaps_rollup; RSS would count the shared copy once per trial)
+ the object-store bytes of the shared splits on this node (Ray's count, one copy).
"""

from __future__ import annotations

import functools
import hashlib
import logging
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from statistics import mean
from typing import Any

import numpy as np

from pipeline.cli import Parser
from pipeline.config import Config, load_config
from pipeline.errors import PipelineError
from pipeline.trial_data import SharedDataset, share_dataset, trial_dataset
from tasks.build import BuildSpec, build_dataset, write_dataset
from tasks.episodes import EpisodeSpec
from tasks.sampler import EpisodeSampler
from tasks.say import Say
from tasks.source import ClassInfo, Source
from tasks.store import DatasetStore

DEFAULT_OMNIGLOT = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "omniglot"
EPISODE = EpisodeSpec(ways=5, shots=1, query=15)
META_BATCH = 8
# (train, val, test classes, images per class) of the noise set
NOISE_SIZES = {"full": (64, 16, 20, 600), "tiny": (8, 4, 4, 20)}
NOISE_SHAPE = (84, 84, 3)
MEMORY_MARGIN = 2 << 30  # keep this much of the machine's memory free
PATHS = (("storage", "storage (per-trial copy)"), ("object-store", "object-store (shared)"))


class NoiseSource(Source):
    """Uniform uint8 noise images, ``classes`` x ``per_class``, regenerated identically from ``seed``."""

    kind = "noise"

    def __init__(self, classes: int, per_class: int, seed: int = 0) -> None:
        self.count, self.per_class, self.seed = classes, per_class, seed

    @classmethod
    def open(cls, spec: BuildSpec, progress: Say | None = None) -> NoiseSource:
        return cls(spec.synthetic_classes, spec.synthetic_images_per_class, spec.seed)

    @property
    def location(self) -> str | None:
        return None

    def classes(self) -> list[ClassInfo]:
        return [ClassInfo(f"noise-{i:03d}", "noise") for i in range(self.count)]

    def images(self, key: str) -> list[np.ndarray]:
        rng = np.random.default_rng([self.seed, int(key.removeprefix("noise-"))])
        return list(rng.integers(0, 256, (self.per_class, *NOISE_SHAPE), dtype=np.uint8))

    def digest(self) -> str:
        return hashlib.sha256(f"noise {self.count} {self.per_class} {NOISE_SHAPE} {self.seed}".encode()).hexdigest()


class TrialProbe:
    """A Ray actor standing in for one trial: it gets its dataset and samples its first batch."""

    def __init__(self) -> None:
        self._held: tuple[Any, ...] = ()

    def ready(self) -> tuple[int, dict[str, int]]:
        """This process's pid and its memory now (idle, before any data)."""
        return os.getpid(), memory_kib(os.getpid())

    def start(self, config: Config, shared: SharedDataset | None) -> float:
        """Seconds from the trial's start to its first sampled meta-batch; the data stays held."""
        started = time.perf_counter()
        dataset = trial_dataset(config, shared)
        train, val = dataset.split("train"), dataset.split("val")
        batch = EpisodeSampler(train, EPISODE, tasks=META_BATCH, seed=0).sample()
        self._held = (dataset, train, val, batch)
        return time.perf_counter() - started

    def peak_kib(self) -> int:
        """The highest RSS this process reached (VmHWM)."""
        with open("/proc/self/status") as status:
            return next(int(line.split()[1]) for line in status if line.startswith("VmHWM:"))


def memory_kib(pid: int) -> dict[str, int]:
    """RSS, PSS and USS (private clean + dirty) of ``pid``, in KiB, from /proc/<pid>/smaps_rollup."""
    fields: dict[str, int] = {}
    with open(f"/proc/{pid}/smaps_rollup") as rollup:
        for line in rollup:
            parts = line.split()
            if len(parts) == 3 and parts[2] == "kB":
                fields[parts[0].rstrip(":")] = int(parts[1])
    return {"rss": fields["Rss"], "pss": fields["Pss"], "uss": fields["Private_Clean"] + fields["Private_Dirty"]}


def available_bytes() -> int:
    """MemAvailable of this machine."""
    with open("/proc/meminfo") as meminfo:
        return next(int(line.split()[1]) * 1024 for line in meminfo if line.startswith("MemAvailable:"))


@dataclass(frozen=True)
class Measurement:
    path: str
    trials: int
    private_bytes: int  # what the trials added to their USS, summed
    shared_bytes: int  # object-store bytes of the shared splits on this node (0 for storage)
    startups: list[float]
    peak_bytes: int  # the largest RSS growth of one trial while loading

    @property
    def node_bytes(self) -> int:
        return self.private_bytes + self.shared_bytes


def measure(ray: Any, config: Config, path: str, trials: int, shared: SharedDataset | None) -> Measurement:
    """Start ``trials`` probes, wait until all are idle, then start their trials at once."""
    probe_class = ray.remote(num_cpus=1)(TrialProbe)
    probes = [probe_class.remote() for _ in range(trials)]
    try:
        idle = ray.get([probe.ready.remote() for probe in probes])
        startups = ray.get([probe.start.remote(config, shared) for probe in probes])
        after = [memory_kib(pid)["uss"] for pid, _ in idle]
        peaks = ray.get([probe.peak_kib.remote() for probe in probes])
    finally:
        for probe in probes:
            ray.kill(probe)
    return Measurement(
        path=path,
        trials=trials,
        private_bytes=1024 * sum(a - before["uss"] for a, (_, before) in zip(after, idle, strict=True)),
        shared_bytes=_object_store_bytes(ray, shared),
        startups=startups,
        peak_bytes=1024 * max(peak - before["rss"] for peak, (_, before) in zip(peaks, idle, strict=True)),
    )


def _object_store_bytes(ray: Any, shared: SharedDataset | None) -> int:
    """Bytes of the shared splits held in this node's object store (one copy per node)."""
    if shared is None:
        return 0
    from ray.experimental import get_object_locations

    node = ray.get_runtime_context().get_node_id()
    locations = get_object_locations(list(shared.refs.values()))
    return sum(int(loc["object_size"] or 0) for loc in locations.values() if node in loc["node_ids"])


def bench_dataset(ray: Any, label: str, directory: Path, trials: int, out: Any) -> None:
    """Both paths, 1 and ``trials`` trials, on the dataset in ``directory``; prints the table."""
    config = load_config(None, [("data.dir", str(directory))], cwd=directory, environ={})
    store = DatasetStore.open(directory)
    splits = [store.split(name) for name in ("train", "val")]  # the driver holds them, as a search does
    data_bytes = sum(split.images.nbytes for split in splits)
    out(
        f"\n== {label}: train+val {sum(len(s.images) for s in splits):,} images of "
        f"{'x'.join(map(str, store.image_shape))}, {data_bytes / 1e6:,.1f} MB (what each trial loads)"
    )
    rows: list[Measurement] = []
    put_seconds = 0.0
    for path, _ in PATHS:
        shared = None
        if path == "object-store":
            started = time.perf_counter()
            shared = share_dataset(store)
            put_seconds = time.perf_counter() - started
        one = measure(ray, config, path, 1, shared)
        rows.append(one)
        needed = trials * one.peak_bytes + MEMORY_MARGIN
        if trials > 1 and needed > available_bytes():
            out(
                f"  {path} with {trials} trials skipped: each trial peaked at {one.peak_bytes / 2**30:.2f} GiB while "
                f"loading; {trials} of them need {needed / 2**30:.1f} GiB with the margin, "
                f"{available_bytes() / 2**30:.1f} GiB available"
            )
        elif trials > 1:
            rows.append(measure(ray, config, path, trials, shared))
        del shared  # frees the object store copy once the probes are gone
    _print_rows(rows, out)
    _print_ratios(rows, trials, out)
    out(f"driver: put the train and val splits into the object store once: {put_seconds:.2f} s")
    if data_bytes < 100e6:
        out("(a small set: what every trial holds anyway, its batch and Ray's buffers, weighs on the ratios)")


def _print_rows(rows: list[Measurement], out: Any) -> None:
    names = dict(PATHS)
    widths = (-26, 7, 16, 14, 13, 12, 15, 8)  # negative: left-aligned
    header = ("path", "trials", "private (ΣUSS)", "object store", "node memory", "peak/trial", "start-up mean", "max")
    out("".join(f"{name:{'<' if width < 0 else '>'}{abs(width)}}" for name, width in zip(header, widths, strict=True)))
    for row in rows:
        out(
            f"{names[row.path]:<26}{row.trials:>7}{_mb(row.private_bytes):>16}{_mb(row.shared_bytes):>14}"
            f"{_mb(row.node_bytes):>13}{_mb(row.peak_bytes):>12}{mean(row.startups):>13.3f} s"
            f"{max(row.startups):>6.2f} s"
        )


def _print_ratios(rows: list[Measurement], trials: int, out: Any) -> None:
    ratios = []
    for path, name in PATHS:
        by_trials = {row.trials: row for row in rows if row.path == path}
        if trials in by_trials and 1 in by_trials and by_trials[1].node_bytes > 0:
            ratios.append(f"{name} {by_trials[trials].node_bytes / by_trials[1].node_bytes:.2f}x")
        else:
            ratios.append(f"{name} not measured")
    out(f"memory({trials} trials)/memory(1 trial): {', '.join(ratios)} (target for the shared path: <= 1.5x)")


def _mb(count: int) -> str:
    return f"{count / 1e6:,.1f} MB"


def _datasets(args: Any, out: Any) -> list[tuple[str, Path]]:
    """(label, directory) of each dataset to measure, built under the workdir when missing."""
    found = []
    root = args.omniglot.resolve()
    if args.size == "tiny":
        out("data: --size tiny measures the small noise set only (no Omniglot)")
    elif all((root / f"{n}.zip").is_file() for n in ("images_background", "images_evaluation")):
        directory = args.workdir / "omniglot"
        build_dataset(BuildSpec(source="omniglot", path=str(root), rotations=True), directory)
        found.append(("Omniglot (rotations, 28x28)", directory))
    else:
        out(f"data: Omniglot skipped: {root} lacks images_background.zip / images_evaluation.zip")
    train, val, test, per_class = NOISE_SIZES[args.size]
    classes = train + val + test
    spec = BuildSpec(
        image_size=NOISE_SHAPE[0],
        channels=NOISE_SHAPE[2],
        val_classes=val,
        test_classes=test,
        synthetic_classes=classes,
        synthetic_images_per_class=per_class,
    )
    directory = args.workdir / f"noise-{args.size}"
    started = time.perf_counter()
    write_dataset(NoiseSource(classes, per_class), spec, directory)
    size = sum(f.stat().st_size for f in directory.iterdir())
    out(f"data: noise set {directory} ({size / 1e9:.2f} GB on disk, ready in {time.perf_counter() - started:.1f} s)")
    found.append((f"noise {'x'.join(map(str, NOISE_SHAPE))} uint8, {classes} classes x {per_class}", directory))
    return found


def _connect(trials: int) -> Any:
    """The Ray already running in this process (a test session), else a local one sized for ``trials``."""
    import ray

    from pipeline.ray_runtime import QUIET_ENV

    if not ray.is_initialized():
        for key, value in QUIET_ENV.items():
            os.environ.setdefault(key, value)
        ray.init(num_cpus=trials, include_dashboard=False, logging_level=logging.WARNING)
    cpus = ray.cluster_resources().get("CPU", 0)
    if cpus < trials:
        raise PipelineError(f"--trials {trials} needs {trials} CPUs in Ray, it has {cpus:g}")
    return ray


def main(argv: list[str] | None = None) -> int:
    parser = Parser(prog="learn2tune bench data-sharing", description=__doc__.split("\n\n")[0])
    parser.add_argument("--trials", type=int, default=4, help="concurrent trials (default 4)")
    parser.add_argument("--size", choices=("full", "tiny"), default="full", help="noise set size (default full)")
    parser.add_argument("--omniglot", type=Path, default=DEFAULT_OMNIGLOT, help="directory with the Omniglot zips")
    parser.add_argument(
        "--workdir", type=Path, default=Path("runs/bench/data-sharing"), help="where the datasets are built and kept"
    )
    args = parser.parse_args(argv)
    if args.trials < 2:
        parser.error(f"--trials must be at least 2 (1 trial is always measured), got {args.trials}")
    out = functools.partial(print, flush=True)
    args.workdir = args.workdir.resolve()
    datasets = _datasets(args, out)
    ray = _connect(args.trials)
    out(
        f"\n{args.trials} concurrent trials on one Ray node. Node memory = the trials' private memory "
        f"(USS from /proc/<pid>/smaps_rollup) + the shared copy's object-store bytes; start-up = trial "
        f"start to its first sampled {EPISODE.ways}-way {EPISODE.shots}-shot batch of {META_BATCH} tasks"
    )
    for label, directory in datasets:
        bench_dataset(ray, label, directory, args.trials, out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
