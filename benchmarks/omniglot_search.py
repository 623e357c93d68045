"""Tune every family on Omniglot at its table cell's budget: ``learn2tune bench omniglot-search``.

    learn2tune bench omniglot-search --budget cpu          # 11 small searches on 2 CPU cores
    learn2tune bench omniglot-search --budget full --device cuda --trials 32
    learn2tune bench omniglot --budget cpu --resume --tuned runs/tune/omniglot-search.json

The "tuned" column of the Omniglot table asks whether the search beats the papers' hand-tuned
configurations. For a fair answer each family gets its own search (``configs/omniglot-search.yaml``
with ``search.families: [family]``) that trains exactly as the family's table cell does (the same
setting's training episodes, meta-batch, meta-iterations, image size and every hyperparameter the
search does not tune, from ``configs/omniglot/<family>.yaml``) and tunes only the family's learning
rates and architecture (its ``search_space``). The first trial after the sampler's opening draw is
the cell's own configuration (``search.points_to_evaluate``), so the search starts from the paper.
ASHA stops weak trials at a quarter of the iterations; trials are ranked on the validation split
(172 characters held out of the 1200 training ones) and only the best trial of each family is
scored on the test split, on the table's test protocol for that setting (600 fixed-seed episodes).
The searches share the table's dataset directories, so both score the same test characters.

Each family is a real ``learn2tune`` search and evaluate stage: its Tune experiment is
``<workdir>/tune/omniglot-search-<family>`` and its runs are in the MLflow experiment
``omniglot-search``. A summary (``<workdir>/tune/omniglot-search.json``) is rewritten after every
family; ``--resume`` keeps the families it finished with the same plan and resumes an interrupted one.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import json
import os
import shlex
import sys
import time
from pathlib import Path
from typing import Any

import torch

from benchmarks import omniglot_report as report
from benchmarks.omniglot_config import Cell, load_families, resolve, select_families, setting_spec
from benchmarks.omniglot_datasets import SMOKE_DATA, check_omniglot, dataset_dir
from benchmarks.omniglot_jobs import SMOKE_EPISODES, SMOKE_ITERATIONS, SMOKE_META_BATCH, TEST_EPISODES, TEST_QUERY
from benchmarks.omniglot_options import shared_arguments, tracking_uri
from learners.registry import make_hparams
from pipeline.cli import Parser
from pipeline.config import Config, load_config
from pipeline.errors import SearchInterrupted
from pipeline.io import read_json, write_json_atomic, write_text_atomic
from pipeline.space import searched_space
from pipeline.table import format_params
from tasks.say import Say

REPO = Path(__file__).resolve().parents[1]
SEARCH_CONFIG = REPO / "configs" / "omniglot-search.yaml"
EXPERIMENT = "omniglot-search"
SUMMARY_FILE = "omniglot-search.json"
DEFAULT_TRIALS = {"full": 32, "cpu": 8, "smoke": 2}
VAL_EPISODES = {"full": 200, "cpu": 100, "smoke": 4}
SETTING = "5w1s"  # the setting searched and tested: the table's headline
ASHA_RUNGS = 4  # reports per trial; ASHA's grace period is the first


def main(argv: list[str] | None = None, say: Say | None = None) -> int:
    """Search every family; ``say`` receives the progress lines (default: print them)."""
    argv = sys.argv[1:] if argv is None else list(argv)
    args = _parser().parse_args(argv)
    say = say or functools.partial(print, flush=True)
    check_omniglot(args)
    families = select_families(args.configs, args.families, say)
    plans = load_families(args.configs, families)
    base_fixed = load_config(SEARCH_CONFIG, cwd=REPO, environ=os.environ).search.fixed
    configs = {family: family_config(resolve_cell(plans[family], args), args, base_fixed) for family in families}
    summary_path = args.workdir.resolve() / "tune" / SUMMARY_FILE
    previous = _previous(summary_path) if args.resume else {}
    summary: dict[str, Any] = {
        "budget": args.budget,
        "setting": SETTING,
        "command": shlex.join(["learn2tune", "bench", "omniglot-search", *argv]),
        "commit": report.commit(REPO),
        "hardware": report.hardware(torch.device("cuda" if _on_gpus(args.device) else "cpu")),
        "families": {},
        "kept": [],  # families taken from the previous run (--resume)
    }
    started = time.time()
    say(
        f"omniglot search, {args.budget} budget: {len(families)} families x "
        f"{args.trials or DEFAULT_TRIALS[args.budget]} "
        f"trials at {SETTING}; summary {summary_path}"
    )
    for number, (family, config) in enumerate(configs.items(), start=1):
        plan = _plan(config)
        kept = previous.get(family)
        say(f"\n[{number}/{len(configs)}] {family}: {config.search.trials} trials of {config.search.max_iterations} it")
        if kept is not None and kept["plan"] == plan and kept.get("evaluation"):
            say(f"  kept from the previous run: {kept['evaluation']}")
            record = kept
            summary["kept"].append(family)
        else:
            try:
                record = tune_family(config, plan, resume=args.resume, say=say)
            except SearchInterrupted:
                again = summary["command"] if args.resume else f"{summary['command']} --resume"
                raise SearchInterrupted(
                    f"the search of {family} was interrupted; `{again}` keeps the finished families and finishes it"
                ) from None
        summary["families"][family] = record
        summary["wall_seconds"] = time.time() - started
        write_json_atomic(summary_path, summary)
        write_text_atomic(args.out, render(summary, configs))
    say(f"\nwrote {args.out} and {summary_path} (wall time {report.duration(summary['wall_seconds'])})")
    say("\n".join(_rows(summary)))
    say(
        "\nfill the table's tuned column with:\n  "
        f"learn2tune bench omniglot --budget {args.budget} --resume --tuned {shown_dir(str(summary_path))}"
    )
    return 0


def resolve_cell(plan: Any, args: argparse.Namespace) -> Cell:
    """The table cell a family's search trains like (the smoke budget shrinks the cpu one)."""
    cell = resolve(plan, SETTING, "cpu" if args.budget == "smoke" else args.budget)
    if args.budget == "smoke":
        cell = dataclasses.replace(
            cell, budget="smoke", iterations=2 * SMOKE_ITERATIONS, meta_batch=min(cell.meta_batch, SMOKE_META_BATCH)
        )
    return cell


def family_config(cell: Cell, args: argparse.Namespace, base_fixed: dict[str, dict[str, Any]]) -> Config:
    """``configs/omniglot-search.yaml`` (whose ``search.fixed`` is ``base_fixed``) narrowed to one family
    trained as its table cell."""
    family = cell.family
    ways, shots = setting_spec(cell.setting)
    space = searched_space(family, {})
    fixed = {**base_fixed.get(family, {}), **{k: v for k, v in cell.hparams.items() if k not in space}}
    paper_point = {k: v for k, v in dataclasses.asdict(make_hparams(family, cell.hparams)).items() if k in space}
    rung = max(1, cell.iterations // ASHA_RUNGS)
    budget = "cpu" if args.budget == "smoke" else args.budget
    if args.budget == "smoke":
        data: dict[str, Any] = {"source": "synthetic", **SMOKE_DATA}
    else:
        data = {"source": "omniglot", "path": str(args.data.resolve()), "split": "random", "rotations": True}
    overrides: dict[str, Any] = {
        "name": f"{EXPERIMENT}-{family}",
        "seed": args.seed,
        "workdir": str(args.workdir.resolve()),
        "device": args.device,
        "data": {
            **data,
            "image_size": cell.image_size,
            "seed": args.seed,
            "dir": str(dataset_dir(args.workdir.resolve(), args.budget, cell.image_size, args.seed)),
        },
        "episodes.train": dataclasses.asdict(cell.train),
        "episodes.meta_batch": cell.meta_batch,
        "episodes.val.episodes": VAL_EPISODES[args.budget],
        "episodes.test": {
            "ways": [ways],
            "shots": [shots],
            "query": TEST_QUERY[budget][ways],
            "episodes": SMOKE_EPISODES if args.budget == "smoke" else TEST_EPISODES,
        },
        "search.families": [family],
        "search.trials": args.trials or DEFAULT_TRIALS[args.budget],
        "search.max_iterations": cell.iterations,
        "search.grace_iterations": rung,
        "search.eval_every": rung,
        "search.checkpoint_every": rung,
        "search.fixed": {family: fixed} if fixed else {},
        "search.points_to_evaluate": {family: paper_point},
        "tracking.uri": tracking_uri(args.tracking_uri),
        "tracking.experiment": EXPERIMENT,
        "registry.top_k": 1,
        "registry.best_per_family": True,
    }
    if args.address:
        overrides["ray.address"] = args.address
    if not _on_gpus(args.device):  # else the search config's GPU share per trial
        overrides["search.resources"] = {"cpu": 1, "gpu": 0}
    return load_config(SEARCH_CONFIG, overrides.items(), cwd=Path.cwd(), environ=os.environ)


def _on_gpus(device: str) -> bool:
    """Trials get GPUs for ``--device cuda`` (a cluster's GPUs may be on other nodes) or ``auto`` with one here."""
    return device == "cuda" or (device == "auto" and torch.cuda.is_available())


def tune_family(config: Config, plan: dict[str, Any], resume: bool, say: Say) -> dict[str, Any]:
    """Build (or find) the dataset, search, and evaluate the best trial; returns the summary record."""
    from pipeline import datasets
    from pipeline.evaluate import EVALUATION_FILE, evaluate, read_search_result
    from pipeline.ray_runtime import connect
    from pipeline.search import RESULT_FILE, STATE_FILE, search

    started = time.time()
    datasets.build(config, lambda line: say(f"  {line}"))
    connect(config.ray.address, os.environ)
    experiment = config.experiment_dir
    plan_file = experiment.with_name(f"{experiment.name}.plan.json")  # beside it: a new search moves it aside
    same_plan = resume and plan_file.is_file() and read_json(plan_file, "") == plan
    if same_plan and (experiment / RESULT_FILE).is_file():
        say(f"  the search in {experiment} already finished: going on to evaluate")
    else:
        write_json_atomic(plan_file, plan)
        search(config, say, os.environ, resume=same_plan and (experiment / STATE_FILE).is_file())
    evaluation = evaluate(config, say)
    result = read_search_result(config)
    best = evaluation.winning_model()
    point = config.search.points_to_evaluate[config.search.families[0]]
    paper_trial = next((t for t in result.trials if all(t.params.get(k) == v for k, v in point.items())), None)
    return {
        "plan": plan,
        "experiment_dir": str(experiment),
        "evaluation": str(experiment / EVALUATION_FILE),
        "trials": len(result.trials),
        "failed": sum(1 for t in result.trials if t.error),
        "best": {
            "trial_id": best.trial_id,
            "val_accuracy": best.val_accuracy,
            "params": best.params,
            "test": dataclasses.asdict(best.results[evaluation.primary]),
        },
        "paper_point": None
        if paper_trial is None
        else {
            "trial_id": paper_trial.trial_id,
            "val_accuracy": paper_trial.val_accuracy,
            "iterations": paper_trial.iterations,
        },
        "wall_seconds": time.time() - started,
        "commit": report.commit(REPO),
    }


def shown_dir(path: str) -> str:
    """``path`` relative to the working directory when inside it."""
    try:
        return str(Path(path).relative_to(Path.cwd()))
    except ValueError:
        return path


def _plan(config: Config) -> dict[str, Any]:
    """What decides a family's search (JSON-comparable); a finished one with the same plan is kept."""
    raw = config.as_dict()
    return json.loads(json.dumps({k: raw[k] for k in ("seed", "data", "episodes", "search", "device")}, default=str))


def _previous(path: Path) -> dict[str, Any]:
    return read_json(path, "").get("families", {}) if path.is_file() else {}


def render(summary: dict[str, Any], configs: dict[str, Config]) -> str:
    """The Markdown report of the searches: each family's paper point and best trial."""
    records = summary["families"]
    kept = len(summary["kept"])
    total = sum(r["wall_seconds"] for r in records.values())
    config = next(iter(configs.values()))
    lines = [
        f"# Omniglot: each family's search from its paper's configuration ({summary['budget']} budget, "
        f"{summary['setting']})",
        "",
        f"- Command: `{summary['command']}`",
        f"- Commit: `{summary['commit']}`"
        + (f" ({kept} famil{'y' if kept == 1 else 'ies'} kept from an earlier run)" if kept else "")
        + f"; hardware: {report.describe_hardware(summary['hardware'])}; trials get "
        f"{config.search.resources.cpu:g} CPU and {config.search.resources.gpu:g} GPU each.",
        f"- Searches: {report.duration(total)} in all "
        f"(wall time of this run {report.duration(summary['wall_seconds'])}).",
        f"- Each family: {config.search.trials} trials (Optuna TPE, ASHA with the grace period at a quarter of the "
        "iterations) that train as the family's table cell does (its episodes, meta-batch, meta-iterations, image "
        "size and every hyperparameter outside the family's search space); only the searched learning rates and "
        "architecture vary. The trial after the sampler's first draw is the paper's configuration as the cell "
        'trains it ("paper point").',
        f"- Selection on the validation split only ({config.episodes.val.episodes} fixed episodes); the best trial "
        f"alone is scored on the test split ({config.episodes.test.episodes} fixed-seed episodes, "
        f"{config.episodes.test.query} queries per class) from its best checkpoint.",
        f"- MLflow: experiment `{EXPERIMENT}` in `{config.tracking.uri}`, one parent run per family.",
        "",
        *_rows(summary),
        "",
        'The test column is the Omniglot table\'s "tuned" column (`docs/omniglot-table.md`).',
    ]
    return "\n".join(lines) + "\n"


def _rows(summary: dict[str, Any]) -> list[str]:
    rows = [
        "| family | trials | paper point: val (%) | best: val (%) | best: test (%) ± 95% CI | best's searched values | "
        "search wall time |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for family, record in summary["families"].items():
        point, best = record["paper_point"], record["best"]
        space = searched_space(family, {})
        searched = {k: v for k, v in best["params"].items() if k in space}
        winner = "the paper point" if point and point["trial_id"] == best["trial_id"] else format_params(searched)
        rows.append(
            f"| {family} | {record['trials']}" + (f" ({record['failed']} failed)" if record["failed"] else "") + " | "
            f"{report.percent(point['val_accuracy']) if point else '–'} | {report.percent(best['val_accuracy'])} | "
            f"{report.percent(best['test']['accuracy'], best['test']['ci95'])} | {winner} | "
            f"{report.duration(record['wall_seconds'])} |"
        )
    return rows


def _positive(text: str) -> int:
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"expected a positive whole number, got {text!r}")
    return int(text)


def _parser() -> argparse.ArgumentParser:
    parser = Parser(
        prog="learn2tune bench omniglot-search",
        description="Search each family's learning rates and architecture at its Omniglot table cell's budget "
        "(validation split only), then score each family's best trial on the test split: the table's tuned column.",
    )
    shared_arguments(parser, "the cells' budget (default cpu)", "datasets and Tune experiments (default runs)")
    parser.add_argument(
        "--trials",
        type=_positive,
        help=f"trials per family (default {', '.join(f'{b} {n}' for b, n in DEFAULT_TRIALS.items())})",
    )
    parser.add_argument("--address", help="Ray cluster address (default: a local Ray)")
    parser.add_argument(
        "--out",
        type=Path,
        default=Path("docs/omniglot-search.md"),
        help="the Markdown report (default docs/omniglot-search.md); the JSON state is <workdir>/tune/" + SUMMARY_FILE,
    )
    parser.add_argument(
        "--resume", action="store_true", help="keep families finished with the same plan; resume an interrupted one"
    )
    return parser


if __name__ == "__main__":
    raise SystemExit(main())
