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

This module is the command and the run; the parts live beside it: :mod:`benchmarks.omniglot_datasets`
(the builds), :mod:`benchmarks.omniglot_jobs` (cells resolved into jobs), :mod:`benchmarks.omniglot_cell`
(training, testing and logging one cell), :mod:`benchmarks.omniglot_resume` (``--resume``),
:mod:`benchmarks.omniglot_tuned` (``--tuned``) and :mod:`benchmarks.omniglot_options` (options shared with
``bench omniglot-search``).
"""

from __future__ import annotations

import argparse
import functools
import shlex
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

import torch

from benchmarks import omniglot_report as report
from benchmarks.omniglot_cell import run_cell
from benchmarks.omniglot_config import SETTINGS, FamilyPlan, load_families, select_families
from benchmarks.omniglot_datasets import build_datasets
from benchmarks.omniglot_jobs import SMOKE_EPISODES, SMOKE_ITERATIONS, TEST_QUERY, plan_jobs
from benchmarks.omniglot_options import REPO, comma_list, shared_arguments, shown, tracking_uri
from benchmarks.omniglot_resume import cell_record, finished_cells, same_cell
from benchmarks.omniglot_tuned import foreign_tuned, read_tuned
from learners.base import Learner
from pipeline import tracking
from pipeline.cli import Parser
from pipeline.device import pick_device
from pipeline.io import write_json_atomic, write_text_atomic
from tasks.say import Say

EXPERIMENT = "omniglot-table"
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


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    args = _parser().parse_args(argv)
    say: Say = functools.partial(print, flush=True)
    started = time.time()
    device = pick_device(args.device)
    families = select_families(args.configs, args.families, say)
    plans = load_families(args.configs, families)  # every file checked before anything runs
    tuned = read_tuned(args.tuned) if args.tuned else None
    stores, dataset = build_datasets(args, plans, say)
    jobs = plan_jobs(args, plans, stores)
    uri = tracking_uri(args.tracking_uri)
    client = tracking.make_client(uri)
    experiment_id = tracking.ensure_experiment(client, EXPERIMENT, uri)
    doc = _document(args, argv, device, plans, dataset, jobs[0].episodes, tuned, started)
    finished = finished_cells(args.out, doc) if args.resume else {}
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
            if kept is not None and same_cell(kept, cell_record(job, doc["commit"])):
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
            *foreign_tuned(tuned, dataset),
        ],
        "tuned": tuned,
        "cells": [],
        "kept_cells": 0,  # finished cells taken from the previous run (--resume)
    }


def _write(doc: dict[str, Any], out: Path) -> tuple[Path, Path]:
    """The Markdown table and the JSON of ``doc``, each written atomically."""
    table, data = out, out.with_suffix(".json")
    write_json_atomic(data, doc)
    write_text_atomic(table, report.render(doc))
    return table, data


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
