"""One cell of the Omniglot table: train (or reuse the model of an equal recipe), test, log to MLflow.

Training goes through the pipeline's meta-training loop (:mod:`pipeline.meta_training`); testing
through :mod:`pipeline.scoring` (the evaluate stage's path) on fixed-seed test-split episodes. Each
cell is a nested MLflow run: parameters, training curves, learning-curve plot, checkpoint, test
metrics, throughput. A cell that fails (NaN loss, out of memory) is recorded and the table goes on.
"""

from __future__ import annotations

import tempfile
import time
from typing import Any

import numpy as np
import torch

from benchmarks import omniglot_report as report
from benchmarks.omniglot_jobs import Job, learner_spec
from benchmarks.omniglot_resume import cell_record
from learners.base import Learner, synchronize
from learners.checkpoint import build_learner, save_learner
from pipeline import tracking
from pipeline.evaluate import tasks_per_batch
from pipeline.meta_training import Report, Schedule, TrainingEpisodes, meta_train
from pipeline.plots import learning_curve
from pipeline.scoring import episode_accuracies, mean_ci95
from tasks.sampler import fixed_episodes
from tasks.say import Say

# Images per scoring batch off a GPU: on this project's 2-core CPU, batches of ~2,000 images (the
# evaluate stage's size, for GPUs) score 1.4-2x slower than ~250 (cache). Results do not depend on it.
CPU_BATCH_IMAGES = 256
CURVE_POINTS = 100  # training-curve points logged per cell
PROGRESS_SECONDS = 30.0


def run_cell(
    job: Job,
    device: torch.device,
    seed: int,
    trained: dict[str, tuple[Learner, dict[str, Any]]],
    client: Any,
    experiment_id: str,
    parent: str,
    say: Say,
    commit: str,
) -> dict[str, Any]:
    """Train (or reuse the model of an equal recipe), test, log one cell; its record for the table."""
    cell = job.cell
    record = cell_record(job, commit)
    tags = {tracking.ROLE_TAG: "bench-cell", "learn2tune.family": cell.family, "learn2tune.setting": cell.setting}
    run_id = tracking.start_run(client, experiment_id, f"{cell.family}-{cell.setting}", tags, parent)
    record["run_id"] = run_id
    tracking.log_params(client, run_id, tracking.flatten({k: v for k, v in record.items() if v is not None}))
    try:
        if job.recipe in trained:
            learner, stats = trained[job.recipe]
            record["shared_with"] = stats["setting"]
            client.set_tag(run_id, "learn2tune.model_of", stats["run_id"])
            say(f"  the model of {stats['setting']} (same training recipe)")
        else:
            learner, stats = _train(job, device, seed, say)
            stats.update(setting=cell.setting, run_id=run_id)
            trained[job.recipe] = learner, stats
            _log_training(client, run_id, learner, stats, job)
        record.update({k: stats[k] for k in ("train_seconds", "meta_iterations_per_s", "episodes_per_s", "final_loss")})
        synchronize(device)
        start = time.perf_counter()
        batch = (
            tasks_per_batch(job.test)
            if device.type == "cuda"
            else max(1, CPU_BATCH_IMAGES // (job.test.ways * job.test.images_per_class))
        )
        episodes = fixed_episodes(job.store.split("test"), job.test, job.episodes, seed=seed, batch_tasks=batch)
        accuracy, ci95 = mean_ci95(episode_accuracies(learner, episodes, device))
        synchronize(device)
        record.update(accuracy=accuracy, ci95=ci95, eval_seconds=time.perf_counter() - start)
    except Exception as exc:  # one failed cell (NaN loss, out of memory) is reported; the table goes on
        record["error"] = f"{type(exc).__name__}: {exc}".splitlines()[0][:200]
        client.set_tag(run_id, "learn2tune.error", record["error"])
        client.set_terminated(run_id, "FAILED")
        say(f"  failed: {record['error']}")
        return record
    except KeyboardInterrupt:
        client.set_terminated(run_id, "KILLED")
        raise
    metrics = {
        "test_accuracy": accuracy,
        "test_ci95": ci95,
        "eval_seconds": record["eval_seconds"],
        **{k: record[k] for k in ("train_seconds", "meta_iterations_per_s", "episodes_per_s")},
    }
    if cell.paper is not None:
        metrics.update(paper_accuracy=cell.paper / 100, diff_points=100 * accuracy - cell.paper)
    tracking.log_metrics(client, run_id, metrics)
    client.set_terminated(run_id, "FINISHED")
    paper = "paper –" if cell.paper is None else f"paper {cell.paper:g}, {100 * accuracy - cell.paper:+.2f}"
    say(
        f"  test: {100 * accuracy:.2f} ± {100 * ci95:.2f} ({paper}) on {job.episodes} episodes in "
        f"{report.duration(record['eval_seconds'])}"
    )
    return record


class TrainingCurves:
    """The loop's reports as a cell keeps them: curve points, and a progress line at the first report
    after every :data:`PROGRESS_SECONDS`."""

    def __init__(self, iterations: int, say: Say) -> None:
        self.iterations, self.say = iterations, say
        self.points: dict[str, list[tuple[int, float]]] = {"loss": [], "train_accuracy": []}
        self.started = time.perf_counter()
        self.next_line = self.started + PROGRESS_SECONDS

    def __call__(self, point: Report) -> None:
        self.points["loss"].append((point.iteration, point.loss))
        self.points["train_accuracy"].append((point.iteration, point.train_accuracy))
        now = time.perf_counter()
        if now >= self.next_line:
            self.next_line = now + PROGRESS_SECONDS
            self.say(
                f"    {point.iteration:,}/{self.iterations:,}: loss {point.loss:.3f}, train accuracy "
                f"{point.train_accuracy:.3f}, {point.iteration / (now - self.started):.2f} it/s"
            )


def _train(job: Job, device: torch.device, seed: int, say: Say) -> tuple[Learner, dict[str, Any]]:
    cell = job.cell
    torch.manual_seed(seed)
    np.random.seed(seed)
    learner = build_learner(learner_spec(cell, job.store), device)
    say(
        f"  training {job.train.ways}-way {job.train.shots}-shot {job.train.query}-query episodes, "
        f"meta-batch {cell.meta_batch}, {cell.iterations:,} meta-iterations"
    )
    episodes = TrainingEpisodes(job.store.split("train"), cell.train, cell.meta_batch, seed)
    schedule = Schedule(cell.iterations, report_every=max(1, cell.iterations // CURVE_POINTS))
    synchronize(device)
    curves = TrainingCurves(cell.iterations, say)
    meta_train(learner, episodes, schedule, curves)
    synchronize(device)
    seconds = time.perf_counter() - curves.started
    rate = cell.iterations / seconds
    final_loss = curves.points["loss"][-1][1]
    say(f"  trained in {report.duration(seconds)} ({rate:.2f} meta-it/s, final loss {final_loss:.3f})")
    stats = {
        "train_seconds": seconds,
        "meta_iterations_per_s": rate,
        "episodes_per_s": rate * cell.meta_batch,
        "final_loss": final_loss,
        "curves": curves.points,
    }
    return learner, stats


def _log_training(client: Any, run_id: str, learner: Learner, stats: dict[str, Any], job: Job) -> None:
    """The training curves, their plot and the trained model's checkpoint, on the cell's run."""
    from mlflow.entities import Metric

    cell = job.cell
    now = int(time.time() * 1000)
    points = [Metric(key, value, now, step) for key, curve in stats["curves"].items() for step, value in curve]
    for begin in range(0, len(points), 1000):
        client.log_batch(run_id, metrics=points[begin : begin + 1000])
    title = f"{cell.family} {cell.setting} ({cell.budget} budget)"
    client.log_figure(run_id, learning_curve(stats["curves"], title, 1 / job.train.ways), "learning_curve.png")
    with tempfile.TemporaryDirectory(prefix="learn2tune-bench-") as directory:
        save_learner(learner, directory, {"iteration": cell.iterations})
        client.log_artifacts(run_id, directory, "checkpoint")
