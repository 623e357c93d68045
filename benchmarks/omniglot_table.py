"""Every learner family against its paper on Omniglot: ``learn2tune bench omniglot``.

    learn2tune bench omniglot --budget cpu                    # the whole table on 2 CPU cores, < 1 hour
    learn2tune bench omniglot --budget full --device cuda     # the papers' iteration counts (GPU)
    learn2tune bench omniglot --families maml,protonet --settings 5w1s,20w1s
    learn2tune bench omniglot --tuned runs/tune/omniglot-search   # fill the "tuned" column
    learn2tune bench omniglot --resume                        # keep the cells the last run finished

The Omniglot dataset is built once per image size from the upstream zips (``--data``): the random
character split of the MAML/ProtoNet papers (1200 training characters, 172 of them held out for
validation, and 423 test characters; ``--seed`` fixes it), rotated by 90/180/270 degrees into new
classes. Each (family, setting) cell then trains the configuration of
``configs/omniglot/<family>.yaml`` for that setting and budget, is scored through
:mod:`pipeline.scoring` (the evaluate stage's path) on 600 fixed-seed test-split episodes (mean ±
95% CI, the same episodes for every family) and logged as a nested MLflow run (parameters,
training curves, learning-curve plot, checkpoint, test metrics, throughput) under one parent run.
After every cell the Markdown table (``--out``) and a JSON of all results beside it are rewritten
atomically, so an interrupted run leaves a table of what it finished; ``--resume`` keeps every cell
of that JSON which finished and which this run would repeat exactly (same configuration, dataset and
test episodes), so a run continues where the last one stopped, and a new ``--tuned`` column or an
edited family file costs only the cells it changes.

Budgets: ``full`` follows the papers' iteration counts (a GPU's work); ``cpu`` is the cut each
family file states (fewer iterations, and where needed smaller meta-batches, 32 filters instead of
64 and fewer test-time fine-tuning steps) that fits the whole table in under an hour on 2 CPU
cores, and fewer test queries per class; ``smoke`` runs the cpu configuration for 2 iterations per
cell and 10 test episodes on the built-in synthetic glyphs, a check that everything runs, without
Omniglot, in about a minute (its numbers mean nothing). Cells with the same training recipe
(ProtoNet trains 60-way for both its 5-way and 20-way tests) share one trained model.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import json
import math
import os
import shlex
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from benchmarks import omniglot_report as report
from benchmarks.omniglot_config import (
    SETTINGS,
    Cell,
    FamilyPlan,
    load_families,
    resolve,
    setting_spec,
)
from learners.base import Learner, synchronize
from learners.checkpoint import build_learner, save_learner
from learners.registry import family_names, make_hparams
from pipeline import tracking
from pipeline.cli import Parser
from pipeline.device import pick_device
from pipeline.errors import PipelineError
from pipeline.evaluate import EVALUATION_FILE, tasks_per_batch
from pipeline.io import read_json, write_json_atomic, write_text_atomic
from pipeline.plots import learning_curve
from pipeline.scoring import episode_accuracies, mean_ci95
from tasks.build import BuildSpec, build_dataset
from tasks.episodes import EpisodeSpec
from tasks.sampler import EpisodeSampler, check_episode, fixed_episodes
from tasks.store import DatasetStore

REPO = Path(__file__).resolve().parents[1]
DEFAULT_DATA = REPO.parent / "shared" / "data" / "omniglot"
DEFAULT_CONFIGS = REPO / "configs" / "omniglot"
ZIPS = ("images_background", "images_evaluation")
EXPERIMENT = "omniglot-table"
TEST_EPISODES = 600
# Test queries per class by ways. The full budget uses the usual 15; the cpu budget 20-25 queries
# per episode, which costs CI width, not bias (the mean estimates the same accuracy), and most of
# the test time of the families that score each query on its own (Reptile).
TEST_QUERY = {"full": {5: 15, 20: 15}, "cpu": {5: 5, 20: 1}}
# Images per scoring batch off a GPU: on this project's 2-core CPU, batches of ~2,000 images (the
# evaluate stage's size, for GPUs) score 1.4-2x slower than ~250 (cache). Results do not depend on it.
CPU_BATCH_IMAGES = 256
SMOKE_ITERATIONS, SMOKE_META_BATCH, SMOKE_EPISODES = 2, 2, 10
SMOKE_DATA: dict[str, Any] = {"synthetic_classes": 120, "synthetic_images_per_class": 20, "val_classes": 24, "test_classes": 24}
CURVE_POINTS = 100  # training-curve points logged per cell
PROGRESS_SECONDS = 30.0
BUDGET_NOTES = {
    "full": "each family's published configuration and iteration count (configs/omniglot/*.yaml); a GPU's work.",
    "cpu": "a cut of each family's published configuration that fits the whole table in under an hour on "
    "2 CPU cores: the budget column lists every change, with the full budget's value in brackets (fewer "
    "meta-iterations; where needed smaller meta-batches, 32 filters instead of 64, fewer test-time "
    "fine-tuning steps), and fewer test queries. Minutes of CPU, not the papers' hours of GPU: the diff "
    "column shows how far that gets, not a failed reproduction.",
    "smoke": f"{SMOKE_ITERATIONS} meta-iterations per cell and {SMOKE_EPISODES} test episodes on synthetic "
    "glyphs, to check that the benchmark runs; the numbers mean nothing.",
}

Say = Callable[[str], None]


@dataclasses.dataclass(frozen=True)
class Job:
    """A cell with what it runs on: its dataset, test episodes and training recipe."""

    cell: Cell
    store: DatasetStore
    train: EpisodeSpec  # what the sampler draws (ProtoNet: its train_ways)
    test: EpisodeSpec
    episodes: int
    recipe: str  # cells with equal recipes share one trained model


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    args = _parser().parse_args(argv)
    say: Say = functools.partial(print, flush=True)
    started = time.time()
    device = pick_device(args.device)
    families = family_names() if args.families == ["all"] else args.families
    plans = load_families(args.configs, families)  # every file checked before anything runs
    tuned = read_tuned(args.tuned) if args.tuned else None
    stores, dataset = _datasets(args, plans, say)
    jobs = _jobs(args, plans, stores)
    uri = tracking_uri(args.tracking_uri)
    client = tracking.make_client(uri)
    experiment_id = tracking.ensure_experiment(client, EXPERIMENT, uri)
    doc = _document(args, argv, device, plans, dataset, jobs[0].episodes, tuned, started)
    finished = _finished_cells(args.out, doc) if args.resume else {}
    parent = tracking.start_run(
        client,
        experiment_id,
        f"omniglot-table-{args.budget}-{time.strftime('%Y%m%d-%H%M%S')}",
        {tracking.ROLE_TAG: "bench", "learn2tune.budget": args.budget},
    )
    doc["mlflow"] = {"tracking_uri": uri, "experiment": EXPERIMENT, "parent_run_id": parent}
    params = {k: doc[k] for k in ("budget", "command", "commit", "hardware", "device", "test")}
    tracking.log_params(
        client, parent, tracking.flatten({**params, "seed": args.seed, "families": families, "settings": args.settings})
    )
    say(
        f"omniglot table, {args.budget} budget: {len(families)} families x {len(args.settings)} settings = "
        f"{len(jobs)} cells on {device}; MLflow parent run {parent} in {uri}"
    )
    trained: dict[str, tuple[Learner, dict[str, Any]]] = {}
    uses = Counter(job.recipe for job in jobs)
    status = "FAILED"
    try:
        for number, job in enumerate(jobs, start=1):
            say(f"[{number}/{len(jobs)}] {job.cell.family} {job.cell.setting}: {job.cell.cut()}")
            kept = finished.get((job.cell.family, job.cell.setting))
            if kept is not None and _same(kept, cell_record(job, doc["commit"])):
                say(f"  kept from the previous run (commit {kept['commit']}, MLflow run {kept['run_id']})")
                record = kept
                doc["kept_cells"] += 1
            else:
                record = run_cell(job, device, args.seed, trained, client, experiment_id, parent, say, doc["commit"])
            uses[job.recipe] -= 1
            if not uses[job.recipe]:
                trained.pop(job.recipe, None)  # no later cell shares this model
            doc["cells"].append(record)
            doc["status"], doc["wall_seconds"] = f"running: {number} of {len(jobs)} cells done", time.time() - started
            _write(doc, args.out)
            if record["error"] is None and record is not kept:
                key = f"{record['family']}_{record['setting']}"
                tracking.log_metrics(
                    client, parent, {f"test_accuracy_{key}": record["accuracy"], f"test_ci95_{key}": record["ci95"]}
                )
        failed = [c for c in doc["cells"] if c["error"]]
        status = "FINISHED"
        doc["status"] = f"complete: {len(jobs)} cells" + (f", {len(failed)} failed" if failed else "")
    except KeyboardInterrupt:
        status = "KILLED"
        doc["status"] = f"interrupted after {len(doc['cells'])} of {len(jobs)} cells"
        raise
    except Exception as exc:
        doc["status"] = f"stopped after {len(doc['cells'])} of {len(jobs)} cells by {type(exc).__name__}: {exc}"
        raise
    finally:
        doc["wall_seconds"] = time.time() - started
        paths = _write(doc, args.out)
        for path in paths:
            client.log_artifact(parent, str(path))
        client.set_terminated(parent, status)
        say(f"wrote {paths[0]} and {paths[1]} ({doc['status']}; wall time {report.duration(doc['wall_seconds'])})")
    return 1 if failed else 0


def _document(
    args: argparse.Namespace,
    argv: list[str],
    device: torch.device,
    plans: dict[str, FamilyPlan],
    dataset: dict[str, Any],
    episodes: int,
    tuned: dict[str, Any] | None,
    started: float,
) -> dict[str, Any]:
    """The results document before any cell: what the table header states (see :func:`report.render`)."""
    return {
        "budget": args.budget,
        "budget_note": BUDGET_NOTES[args.budget],
        "command": shlex.join(["learn2tune", "bench", "omniglot", *argv]),
        "commit": report.commit(REPO),
        "hardware": report.hardware(device),
        "device": str(device),
        "started": time.strftime("%Y-%m-%d %H:%M:%S %Z", time.localtime(started)),
        "wall_seconds": 0.0,
        "status": "running",
        "dataset": dataset,
        "test": {
            "episodes": episodes,
            "seed": args.seed,
            "query": TEST_QUERY["full" if args.budget == "full" else "cpu"],
        },
        "families": {f: {"paper": p.paper, "note": p.note, "config": shown(p.path)} for f, p in plans.items()},
        "notes": [
            "paper – : the paper publishes no figure for that setting; the cell is run all the same.",
            "'model of X' in the train column: the cell reuses the model trained for setting X (same recipe).",
            *_foreign_tuned(tuned, dataset),
        ],
        "tuned": tuned,
        "cells": [],
        "kept_cells": 0,  # finished cells taken from the previous run (--resume)
    }


# What makes two cells the same experiment: a finished cell equal in all of these is kept by --resume.
CELL_IDENTITY = (
    "family", "setting", "budget", "iterations", "meta_batch", "hparams", "image_size", "train", "test", "episodes"
)  # fmt: skip


def cell_record(job: Job, commit: str) -> dict[str, Any]:
    """The record of ``job`` before it runs: what it trains and tests, and at which commit."""
    cell = job.cell
    return {
        "family": cell.family,
        "setting": cell.setting,
        "budget": cell.budget,
        "paper": cell.paper,
        "cut": cell.cut(),
        "iterations": cell.iterations,
        "full_iterations": cell.full_iterations,
        "meta_batch": cell.meta_batch,
        "hparams": dataclasses.asdict(make_hparams(cell.family, cell.hparams)),
        "image_size": cell.image_size,
        "train": dataclasses.asdict(job.train),
        "test": dataclasses.asdict(job.test),
        "episodes": job.episodes,
        "commit": commit,
        "shared_with": None,
        "error": None,
    }


def _finished_cells(out: Path, doc: dict[str, Any]) -> dict[tuple[str, str], dict[str, Any]]:
    """(family, setting) -> the finished cells of the previous run's JSON beside ``out``, if that run
    used the same datasets, test episodes and seed as ``doc``; empty when there is none."""
    path = out.with_suffix(".json")
    if not path.is_file():
        return {}
    previous = read_json(path, "the previous table's data")
    now = _as_stored({"fingerprints": doc["dataset"]["fingerprints"], "test": doc["test"]})
    if previous.get("dataset", {}).get("fingerprints") != now["fingerprints"] or previous.get("test") != now["test"]:
        return {}
    return {
        (cell["family"], cell["setting"]): {"commit": previous["commit"], **cell}
        for cell in previous.get("cells", [])
        if cell.get("error") is None
    }


def _same(kept: dict[str, Any], planned: dict[str, Any]) -> bool:
    """Whether a kept cell ran exactly what ``planned`` would."""
    planned = _as_stored({key: planned[key] for key in CELL_IDENTITY})
    return all(kept.get(key) == value for key, value in planned.items())


def _as_stored(data: Any) -> Any:
    """``data`` as it reads back from the JSON file (string keys, lists for tuples)."""
    return json.loads(json.dumps(data))


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


def _train(job: Job, device: torch.device, seed: int, say: Say) -> tuple[Learner, dict[str, Any]]:
    cell = job.cell
    torch.manual_seed(seed)
    np.random.seed(seed)
    learner = build_learner(_learner_spec(cell, job.store), device)
    sampler = EpisodeSampler(job.store.split("train"), job.train, tasks=cell.meta_batch, seed=seed)
    say(
        f"  training {job.train.ways}-way {job.train.shots}-shot {job.train.query}-query episodes, "
        f"meta-batch {cell.meta_batch}, {cell.iterations:,} meta-iterations"
    )
    curves: dict[str, list[tuple[int, float]]] = {"loss": [], "train_accuracy": []}
    every = max(1, cell.iterations // CURVE_POINTS)
    window: list[dict[str, float]] = []
    synchronize(device)
    start = time.perf_counter()
    next_report = start + PROGRESS_SECONDS
    for iteration in range(1, cell.iterations + 1):
        metrics = learner.meta_train_step(sampler.sample().to(device))
        if not math.isfinite(metrics["loss"]):
            raise FloatingPointError(f"training loss became {metrics['loss']} at meta-iteration {iteration}")
        window.append(metrics)
        if iteration % every == 0 or iteration == cell.iterations:
            curves["loss"].append((iteration, float(np.mean([m["loss"] for m in window]))))
            curves["train_accuracy"].append((iteration, float(np.mean([m["accuracy"] for m in window]))))
            window = []
        now = time.perf_counter()
        if now >= next_report:
            next_report = now + PROGRESS_SECONDS
            recent = window or [metrics]  # since the last curve point
            loss, accuracy = (float(np.mean([m[k] for m in recent])) for k in ("loss", "accuracy"))
            say(
                f"    {iteration:,}/{cell.iterations:,}: loss {loss:.3f}, train accuracy {accuracy:.3f}, "
                f"{iteration / (now - start):.2f} it/s"
            )
    synchronize(device)
    seconds = time.perf_counter() - start
    rate = cell.iterations / seconds
    say(f"  trained in {report.duration(seconds)} ({rate:.2f} meta-it/s, final loss {curves['loss'][-1][1]:.3f})")
    stats = {
        "train_seconds": seconds,
        "meta_iterations_per_s": rate,
        "episodes_per_s": rate * cell.meta_batch,
        "final_loss": curves["loss"][-1][1],
        "curves": curves,
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


def _learner_spec(cell: Cell, store: DatasetStore) -> dict[str, Any]:
    return {
        "family": cell.family,
        "hparams": cell.hparams,
        "image_shape": list(store.image_shape),
        "ways": cell.train.ways,
    }


def _jobs(args: argparse.Namespace, plans: dict[str, FamilyPlan], stores: dict[int, DatasetStore]) -> list[Job]:
    """Every cell resolved for the budget, its episodes checked against the dataset up front."""
    budget = "cpu" if args.budget == "smoke" else args.budget
    episodes = SMOKE_EPISODES if args.budget == "smoke" else TEST_EPISODES
    jobs = []
    for family, plan in plans.items():
        for name in args.settings:
            cell = resolve(plan, name, budget)
            if args.budget == "smoke":
                cell = dataclasses.replace(
                    cell, budget="smoke", iterations=SMOKE_ITERATIONS, meta_batch=min(cell.meta_batch, SMOKE_META_BATCH)
                )
            store = stores[cell.image_size]
            learner = build_learner(_learner_spec(cell, store))  # on the CPU, for its training episodes
            wanted = learner.training_spec(cell.train)
            train_split, test_split = store.split("train"), store.split("test")
            # A family that trains with more ways than tested (ProtoNet) gets at most every class.
            train = dataclasses.replace(wanted, ways=min(wanted.ways, train_split.num_classes))
            ways, shots = setting_spec(name)
            test = EpisodeSpec(ways, shots, TEST_QUERY[budget][ways])
            check_episode(train_split, train)
            check_episode(test_split, test)
            recipe = json.dumps(
                [
                    family,
                    cell.hparams,
                    dataclasses.asdict(train),
                    cell.meta_batch,
                    cell.iterations,
                    cell.image_size,
                    ways if learner.fixed_ways else None,
                ],
                sort_keys=True,
            )
            jobs.append(Job(cell, store, train, test, episodes, recipe))
    return jobs


def check_omniglot(args: argparse.Namespace) -> None:
    """A PipelineError unless ``--data`` holds the Omniglot zips (the smoke budget needs none)."""
    if args.budget != "smoke" and not all(
        (args.data / name).exists() or (args.data / f"{name}.zip").is_file() for name in ZIPS
    ):
        raise PipelineError(
            f"no Omniglot in {args.data}: expected images_background.zip and images_evaluation.zip (or their "
            "extracted folders); pass --data DIR (or --budget smoke, which needs no Omniglot)"
        )


def _datasets(
    args: argparse.Namespace, plans: dict[str, FamilyPlan], say: Say
) -> tuple[dict[int, DatasetStore], dict[str, Any]]:
    """The dataset of every image size the families use, built (or found) once each."""
    smoke = args.budget == "smoke"
    check_omniglot(args)
    stores, fingerprints, manifest = {}, {}, {}
    start = time.perf_counter()
    for size in sorted({plan.image_size for plan in plans.values()}):
        if smoke:
            spec = BuildSpec(source="synthetic", image_size=size, seed=args.seed, **SMOKE_DATA)
        else:
            spec = BuildSpec(
                source="omniglot", path=str(args.data), split="random", rotations=True, image_size=size, seed=args.seed
            )
        directory = dataset_dir(args.workdir, args.budget, size, args.seed)
        say(f"dataset {size}x{size}: {directory}")
        manifest = build_dataset(spec, directory, overwrite=True, progress=lambda line: say(f"  {line}"))
        stores[size] = DatasetStore.open(directory)
        fingerprints[size] = manifest["fingerprint"]
    counts = {name: split["classes"] for name, split in manifest["splits"].items()}
    if smoke:
        description = (
            f"synthetic glyphs ({SMOKE_DATA['synthetic_classes']} classes of "
            f"{SMOKE_DATA['synthetic_images_per_class']} images), random class split"
        )
    else:
        characters = {name: n // 4 for name, n in counts.items()}
        description = (
            f"Omniglot from the upstream zips ({shown(args.data)}), random character split "
            f"{characters['train'] + characters['val']} training characters ({characters['train']} train + "
            f"{characters['val']} held out for validation) / {characters['test']} test, each rotated by 90/180/270° "
            f"into new classes"
        )
    description += ": " + " / ".join(f"{n} {name}" for name, n in counts.items()) + " classes"
    sizes = sorted(stores)
    description += "; " + ", ".join(f"{s}x{s}" for s in sizes) + " images"
    if len(sizes) > 1:
        description += (
            " (" + ", ".join(f"{f} {p.image_size}x{p.image_size}" for f, p in plans.items() if p.image_size != 28) + ")"
        )
    doc = {
        "description": description,
        "seed": args.seed,
        "fingerprints": fingerprints,
        "build_seconds": time.perf_counter() - start,
    }
    return stores, doc


def read_tuned(paths: list[Path]) -> dict[str, Any]:
    """The best evaluated trial of each family (by validation accuracy) in the evaluate stage's results.

    ``paths``: experiment directories (holding ``evaluation.json``) or ``evaluation.json`` files of
    ``learn2tune evaluate``/``run`` on ``configs/omniglot-search.yaml``, or the summary of ``learn2tune bench
    omniglot-search`` (``runs/tune/omniglot-search.json``), which stands for each family's evaluation.
    """
    families: dict[str, dict[str, Any]] = {}
    sources: list[str] = []
    protocols: set[str] = set()
    scored: set[str] = set()
    for path in paths:
        file = path / EVALUATION_FILE if path.is_dir() else path
        data = read_json(
            file, "run `learn2tune bench omniglot-search` or `learn2tune run configs/omniglot-search.yaml`"
        )
        if "models" in data or not isinstance(data.get("families"), dict):
            files, paper_points = [file], set()
        else:  # a bench omniglot-search summary: each family's evaluation.json and paper-point trial
            records = data["families"].values()
            files = [Path(record["evaluation"]) for record in records if record.get("evaluation")]
            paper_points = {(record.get("paper_point") or {}).get("trial_id") for record in records}
        sources.append(shown(file))
        for file in files:
            _read_evaluation(file, families, protocols, scored)
        for best in families.values():
            best["paper_point"] = best.get("paper_point") or best["trial_id"] in paper_points
    description = (
        f"each family's best trial by validation accuracy (validation split only) in {', '.join(sources)}, scored "
        f"by the evaluate stage on the test split ({'; '.join(sorted(protocols))}; settings "
        f"{', '.join(s for s in SETTINGS if s in scored)}). The search trains on its episodes.train shape, so "
        "fixed-head families have no rows of other ways."
    )
    if any(best["paper_point"] for best in families.values()):
        description += " \"paper's\": the best trial was the paper's configuration, trained again with its own seed."
    return {"description": description, "families": families}


def _read_evaluation(file: Path, families: dict[str, Any], protocols: set[str], scored: set[str]) -> None:
    """Fold one evaluation.json into ``families`` (best by validation accuracy), ``protocols`` and ``scored``."""
    evaluation = read_json(file, "run the evaluate stage of the search first")
    try:
        models, test = evaluation["models"], evaluation["test_episodes"]
        fingerprint = evaluation["dataset"]["fingerprint"]
        for model in models:
            best = families.get(model["family"])
            if best is None or (model["val_accuracy"] or 0.0) > (best["val_accuracy"] or 0.0):
                families[model["family"]] = {
                    **{k: model[k] for k in ("trial_id", "val_accuracy", "params", "results")},
                    "source": str(file),
                    "fingerprint": fingerprint,
                }
            scored.update(model["results"])
    except (KeyError, TypeError) as exc:
        raise PipelineError(f"{file} is not an evaluation.json of `learn2tune evaluate` (no {exc})") from None
    protocols.add(f"{test['episodes']} episodes, {test['query']} queries per class, seed {test['seed']}")


def _foreign_tuned(tuned: dict[str, Any] | None, dataset: dict[str, Any]) -> list[str]:
    """A note for each tuned family evaluated on another dataset than this table's."""
    ours = set(dataset["fingerprints"].values())
    return [
        f"tuned {family}: evaluated on another dataset (fingerprint {best['fingerprint'][:12]}) than this table's."
        for family, best in (tuned or {}).get("families", {}).items()
        if best["fingerprint"] not in ours
    ]


def dataset_dir(workdir: Path, budget: str, image_size: int, seed: int) -> Path:
    """Where the table (and ``bench omniglot-search``) builds its dataset of one image size."""
    return (
        workdir / "datasets" / f"omniglot-table-{'smoke' if budget == 'smoke' else 'omniglot'}-{image_size}-seed{seed}"
    )


def _write(doc: dict[str, Any], out: Path) -> tuple[Path, Path]:
    """The Markdown table and the JSON of ``doc``, each written atomically."""
    table, data = out, out.with_suffix(".json")
    write_json_atomic(data, doc)
    write_text_atomic(table, report.render(doc))
    return table, data


def tracking_uri(given: str | None) -> str:
    """``--tracking-uri``, else ``MLFLOW_TRACKING_URI``, else ``sqlite:///mlflow.db``; SQLite paths made absolute."""
    uri = given or os.environ.get("MLFLOW_TRACKING_URI") or "sqlite:///mlflow.db"
    if uri.startswith("sqlite:///") and not Path(uri.removeprefix("sqlite:///")).is_absolute():
        uri = "sqlite:///" + str(Path.cwd() / uri.removeprefix("sqlite:///"))
    return uri


def shown(path: Path) -> str:
    """``path`` relative to the repository when inside it (stable across checkouts)."""
    path = Path(path).resolve()
    for base, prefix in ((REPO, ""), (REPO.parent, "../")):
        if path.is_relative_to(base):
            return prefix + str(path.relative_to(base))
    return str(path)


def comma_list(
    allowed: list[str] | tuple[str, ...], what: str, extra: tuple[str, ...] = ()
) -> Callable[[str], list[str]]:
    def parse(text: str) -> list[str]:
        items = [item.strip() for item in text.split(",") if item.strip()]
        bad = [item for item in items if item not in (*allowed, *extra)]
        if bad or not items:
            raise argparse.ArgumentTypeError(
                f"unknown {what} {', '.join(bad) or text!r}; choose from {', '.join((*extra, *allowed))}"
            )
        return items

    return parse


def shared_arguments(parser: argparse.ArgumentParser, budget_help: str, workdir_help: str) -> None:
    """The options ``bench omniglot`` and ``bench omniglot-search`` share."""
    parser.add_argument("--budget", choices=("full", "cpu", "smoke"), default="cpu", help=budget_help)
    parser.add_argument(
        "--families",
        type=comma_list(family_names(), "family", ("all",)),
        default=["all"],
        help="comma-separated families, or all (default)",
    )
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto", help="default auto (CUDA if any)")
    parser.add_argument(
        "--data",
        type=Path,
        default=DEFAULT_DATA,
        help="directory with the Omniglot zips (default ../shared/data/omniglot)",
    )
    parser.add_argument("--tracking-uri", help="MLflow store (default MLFLOW_TRACKING_URI, else sqlite:///mlflow.db)")
    parser.add_argument("--workdir", type=Path, default=Path("runs"), help=workdir_help)
    parser.add_argument("--configs", type=Path, default=DEFAULT_CONFIGS, help="the per-family configuration files")
    parser.add_argument("--seed", type=int, default=0, help="class split, initial weights, training and test episodes")


def _parser() -> argparse.ArgumentParser:
    parser = Parser(
        prog="learn2tune bench omniglot",
        description="Train and test every learner family on Omniglot (5/20-way, 1/5-shot) and write the table "
        "of ours vs the papers (configs/omniglot/<family>.yaml).",
    )
    shared_arguments(parser, "iteration budget (default cpu)", "where the datasets are built (default runs)")
    parser.add_argument(
        "--settings",
        type=comma_list(SETTINGS, "setting"),
        default=list(SETTINGS),
        help=f"comma-separated settings (default {','.join(SETTINGS)})",
    )
    parser.add_argument(
        "--out",
        type=Path,
        default=Path("docs/omniglot-table.md"),
        help="the Markdown table; the JSON goes beside it (default docs/omniglot-table.md)",
    )
    parser.add_argument(
        "--tuned",
        type=Path,
        action="append",
        help="runs/tune/omniglot-search.json of bench omniglot-search, or an experiment directory or evaluation.json "
        "of configs/omniglot-search.yaml (repeatable)",
    )
    parser.add_argument(
        "--resume",
        action="store_true",
        help="keep the finished cells of the JSON beside --out that this run would repeat exactly",
    )
    return parser


if __name__ == "__main__":
    raise SystemExit(main())
