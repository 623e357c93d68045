"""Pre-train + fine-tune against ProtoNet at the same training budget, on synthetic glyphs.

    .venv/bin/python -m benchmarks.finetune_baseline [--seconds 45] [--episodes 600]

Issue 13 asks whether ``finetune`` reaches ProtoNet's test accuracy at the same budget. Both train
through the pipeline's loop (:func:`pipeline.meta_training.meta_train`) on the quickstart's dataset
(``configs/quickstart.yaml``: 400 glyph classes, 260 for training) and episodes (5-way 1-shot,
5 queries, meta-batch 4) with the quickstart's Conv-4 of 32 filters, then are scored through the
evaluate stage's path (:mod:`pipeline.scoring`) on the same fixed-seed 5-way 1-shot and 5-shot
test episodes (10 queries). The budget is CPU time of one torch thread (``time.process_time``), not
wall time, so a CPU shared with other jobs gives each the same work: each learner's seconds per
meta-iteration are measured on a throwaway copy first, and it then trains for the meta-iterations
that fit ``--seconds``.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

import torch

from learners.checkpoint import fresh_learner
from pipeline.meta_training import Schedule, TrainingEpisodes, meta_train
from pipeline.scoring import episode_accuracies, mean_ci95
from tasks.build import BuildSpec, build_dataset
from tasks.episodes import EpisodeSpec
from tasks.sampler import fixed_episodes
from tasks.store import DatasetStore

TRAIN = EpisodeSpec(5, 1, 5)
META_BATCH = 4
CALIBRATION_STEPS = 30
LEARNERS: dict[str, tuple[str, dict[str, Any]]] = {
    "protonet": ("protonet", {"width": 32, "train_ways": 0}),
    "finetune (RFS: linear, normalised LR head)": ("finetune", {"width": 32}),
    "finetune (Baseline: linear head)": ("finetune", {"width": 32, "normalize": False}),
    "finetune (Baseline++: cosine)": ("finetune", {"width": 32, "head": "cosine"}),
}


def train_for(family: str, hparams: dict[str, Any], store: DatasetStore, seconds: float) -> tuple[Any, int, float]:
    """A learner trained for the meta-iterations that fit ``seconds`` of CPU time, the count and the time."""
    spec = {"family": family, "hparams": hparams, "image_shape": list(store.image_shape), "ways": TRAIN.ways}
    episodes = TrainingEpisodes(store.split("train"), TRAIN, META_BATCH, seed=1)
    probe = fresh_learner(spec, seed=0)
    start = time.process_time()
    meta_train(probe, episodes, Schedule(CALIBRATION_STEPS, CALIBRATION_STEPS), lambda report: None)
    iterations = max(1, int(seconds / ((time.process_time() - start) / CALIBRATION_STEPS)))
    learner = fresh_learner(spec, seed=0)
    start = time.process_time()
    meta_train(learner, episodes, Schedule(iterations, iterations), lambda report: None)
    return learner, iterations, time.process_time() - start


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.finetune_baseline", description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=float, default=45.0, help="CPU seconds of training per learner")
    parser.add_argument("--episodes", type=int, default=600, help="test episodes per setting")
    parser.add_argument("--data", default="runs/bench/finetune-glyphs", help="where the glyph dataset is built")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    data = Path(args.data)
    if not (data / "manifest.json").is_file():
        build_dataset(BuildSpec(synthetic_classes=400, synthetic_images_per_class=20, seed=0), data)
    store = DatasetStore.open(data)
    tests = {
        f"5w{shots}s": list(fixed_episodes(store.split("test"), EpisodeSpec(5, shots, 10), args.episodes, seed=0))
        for shots in (1, 5)
    }
    print(f"{args.seconds:g} CPU-s of training each (1 thread), {args.episodes} test episodes per setting", flush=True)
    for name, (family, hparams) in LEARNERS.items():
        learner, iterations, spent = train_for(family, hparams, store, args.seconds)
        scores = {
            setting: mean_ci95(episode_accuracies(learner, batches, torch.device("cpu")))
            for setting, batches in tests.items()
        }
        cells = "  ".join(f"{s} {100 * a:.2f} ± {100 * c:.2f}" for s, (a, c) in scores.items())
        print(f"{name:<44} {iterations:>5} meta-it in {spent:5.1f} CPU-s  {cells}", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
