"""What a model costs to serve: its parameter count, its weights file's size and its in-process
inference latency on a standard request, measured on the machine at hand (and named).

The standard request is one episode of ``WAYS``-way ``SHOTS``-shot support plus
``QUERIES_PER_CLASS`` queries per class (5-way 5-shot + 75 queries; a fixed-head learner built
for other ways gets its own ways), of images of the model's size and channels: the test
split's when it is at hand, else seeded noise. A registered version is timed
the way serving runs it: its pyfunc model, loaded in-process from the logged model's files,
``predict`` on the request's rows (base64 PNGs, so decoding is timed too). The size is the
bytes of the model's weights file (``learner.pt``), not the code and metadata logged with it,
which are the same for every model.
"""

from __future__ import annotations

import base64
import io
import os
import platform
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from learners.checkpoint import WEIGHTS_FILE
from pipeline.config import Config
from pipeline.errors import PipelineError
from tasks.errors import DatasetError
from tasks.storage import StorageError

if TYPE_CHECKING:
    import pandas as pd
    import torch

    from learners.base import Learner
    from tasks.store import SplitStore

WAYS, SHOTS, QUERIES_PER_CLASS = 5, 5, 15
WARMUP_CALLS = 5
TIMED_CALLS = 50
MIN_BUDGET_CALLS = 5  # timed calls a time budget cannot cut


@dataclass(frozen=True)
class StandardRequest:
    """One episode of uint8 ``[n, C, H, W]`` images, support ordered class by class."""

    support: np.ndarray
    support_labels: np.ndarray
    query: np.ndarray
    images: str  # where the images came from: "test split" or "synthetic"

    @property
    def ways(self) -> int:
        return int(self.support_labels.max()) + 1

    def describe(self) -> str:
        shots = len(self.support) // self.ways
        return f"{self.ways}-way {shots}-shot + {len(self.query)} queries"

    def frame(self) -> pd.DataFrame:
        """The request as serving receives it: one row per image, base64 PNGs."""
        import pandas as pd

        rows: list[dict[str, str | None]] = [
            {"role": "support", "label": f"class-{label}", "image": _png(image)}
            for image, label in zip(self.support, self.support_labels, strict=True)
        ]
        rows += [{"role": "query", "label": None, "image": _png(image)} for image in self.query]
        return pd.DataFrame(rows)

    def tensors(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(support_x, support_y, query_x)`` as ``Learner.predict`` takes them (one task, floats in [0, 1])."""
        import torch

        def images(array: np.ndarray) -> torch.Tensor:
            return torch.from_numpy(array).float().div_(255.0)[None]

        return images(self.support), torch.from_numpy(self.support_labels)[None], images(self.query)


def standard_request(
    image_shape: tuple[int, int, int], ways: int = WAYS, split: SplitStore | None = None, seed: int = 0
) -> StandardRequest:
    """The standard request for a model of ``image_shape``: images of ``ways`` classes of ``split``
    when it has that shape and as many classes (drawn with replacement from a class with fewer than
    ``SHOTS + QUERIES_PER_CLASS`` images), else seeded noise."""
    rng = np.random.default_rng(seed)
    per_class = SHOTS + QUERIES_PER_CLASS
    usable = split is not None and split.image_shape == tuple(image_shape) and split.num_classes >= ways
    if usable and split is not None:
        counts = split.class_counts
        classes = rng.choice(split.num_classes, size=ways, replace=False)
        drawn = [
            split.class_images(int(c))[rng.choice(counts[c], per_class, replace=bool(counts[c] < per_class))]
            for c in classes
        ]
        source = "test split"
    else:
        drawn = [rng.integers(0, 256, (per_class, *image_shape), dtype=np.uint8) for _ in range(ways)]
        source = "synthetic"
    support = np.concatenate([images[:SHOTS] for images in drawn])
    query = np.concatenate([images[SHOTS:] for images in drawn])
    labels = np.repeat(np.arange(ways, dtype=np.int64), SHOTS)
    return StandardRequest(support, labels, query, source)


@dataclass(frozen=True)
class Timing:
    """Wall time of repeated calls, in milliseconds."""

    p50_ms: float
    p95_ms: float
    calls: int


def learner_request(learner: Learner, split: SplitStore | None) -> StandardRequest:
    """The standard request for ``learner``: its own number of ways when its head fixes them."""
    return standard_request(learner.image_shape, learner.ways if learner.fixed_ways else WAYS, split)


def time_calls(
    call: Callable[[], object], calls: int = TIMED_CALLS, warmup: int = WARMUP_CALLS, budget_s: float | None = None
) -> Timing:
    """Median and 95th percentile of ``calls`` timed calls of ``call``, after ``warmup`` untimed ones;
    with ``budget_s``, fewer once that many seconds of timed calls and ``MIN_BUDGET_CALLS`` are done."""
    for _ in range(warmup):
        call()
    seconds: list[float] = []
    while len(seconds) < calls:
        start = time.perf_counter()
        call()
        seconds.append(time.perf_counter() - start)
        if budget_s is not None and len(seconds) >= MIN_BUDGET_CALLS and sum(seconds) >= budget_s:
            break
    p50, p95 = np.percentile(np.array(seconds) * 1000.0, [50, 95])
    return Timing(float(p50), float(p95), len(seconds))


def machine(device: str = "cpu") -> str:
    """The machine a timing was taken on: CPU model, cores, torch threads and device."""
    import torch

    model = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{model}, {os.cpu_count()} cores, {torch.get_num_threads()} torch threads, {device}"


TAGS = {
    "params": "model.params",
    "size_bytes": "model.size_bytes",
    "p50_ms": "latency.p50_ms",
    "p95_ms": "latency.p95_ms",
    "calls": "latency.calls",
    "request": "latency.request",
    "machine": "latency.machine",
}


@dataclass(frozen=True)
class ModelCost:
    """A model's size and latency, as tagged on its registered version (``TAGS``)."""

    params: int
    size_bytes: int
    p50_ms: float
    p95_ms: float
    calls: int
    request: str  # e.g. "5-way 5-shot + 75 queries (test split)"
    machine: str

    def to_tags(self) -> dict[str, str]:
        values = {**self.__dict__, "p50_ms": f"{self.p50_ms:.3f}", "p95_ms": f"{self.p95_ms:.3f}"}
        return {tag: str(values[name]) for name, tag in TAGS.items()}

    @classmethod
    def from_tags(cls, tags: dict[str, str]) -> ModelCost | None:
        """The cost in a version's tags; None when it has none (registered before they were recorded)."""
        if any(tag not in tags for tag in TAGS.values()):
            return None
        get = {name: tags[tag] for name, tag in TAGS.items()}
        return cls(
            params=int(get["params"]),
            size_bytes=int(get["size_bytes"]),
            p50_ms=float(get["p50_ms"]),
            p95_ms=float(get["p95_ms"]),
            calls=int(get["calls"]),
            request=get["request"],
            machine=get["machine"],
        )

    def describe(self) -> str:
        return (
            f"{self.params:,} parameters, {self.size_bytes / 1e6:.2f} MB; latency p50 {self.p50_ms:.2f} ms, "
            f"p95 {self.p95_ms:.2f} ms ({self.request}, {self.calls} calls)"
        )


def measure_model_dir(model_dir: Path, split: SplitStore | None, calls: int = TIMED_CALLS) -> ModelCost:
    """The cost of the pyfunc model in ``model_dir``, loaded in-process and timed through ``predict``."""
    import mlflow.pyfunc

    model = mlflow.pyfunc.load_model(str(model_dir))
    learner = model.unwrap_python_model().learner
    request = learner_request(learner, split)
    frame = request.frame()
    timing = time_calls(lambda: model.predict(frame), calls)
    weights = next(model_dir.rglob(WEIGHTS_FILE))
    return ModelCost(
        params=sum(p.numel() for p in learner.parameters()),
        size_bytes=weights.stat().st_size,
        p50_ms=timing.p50_ms,
        p95_ms=timing.p95_ms,
        calls=timing.calls,
        request=f"{request.describe()} ({request.images})",
        machine=machine("cpu"),
    )


def measure_model(
    artifact_uri: str, tracking_uri: str, split: SplitStore | None, calls: int = TIMED_CALLS
) -> ModelCost:
    """The cost of the logged or registered model at ``artifact_uri`` (downloaded first)."""
    import mlflow.artifacts

    with tempfile.TemporaryDirectory(prefix="learn2tune-cost-") as tmp:
        local = mlflow.artifacts.download_artifacts(artifact_uri=artifact_uri, dst_path=tmp, tracking_uri=tracking_uri)
        return measure_model_dir(Path(local), split, calls)


def test_split(config: Config) -> SplitStore | None:
    """The config's dataset's test split, for the request's images; None when it cannot be read."""
    from pipeline import datasets

    try:
        return datasets.open_dataset(config).split("test")
    except (PipelineError, DatasetError, StorageError, OSError, KeyError):
        return None


def _png(image: np.ndarray) -> str:
    from PIL import Image

    pixels = image[0] if image.shape[0] == 1 else image.transpose(1, 2, 0)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode()
