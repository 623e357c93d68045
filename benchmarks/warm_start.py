"""What a warm start buys: trials to reach a cold search's best, cold vs warm-started, same budget.

    learn2tune bench warm-start [--out DIR] [--seeds N] [--budget smoke|small|default|medium|large] [--pairs P,P]

For each pair (source dataset -> target dataset) one search runs on the source; then, per seed,
a cold search and a search warm-started from the source search (``search.warm_start``) run on
the target with the same trial budget, and each is evaluated on the target's TEST split (its
top-1 trial, the evaluate stage). Printed per seed and in total: the trials each search needed
for its running best validation accuracy to reach the cold search's final best, and both test
accuracies. Pairs: ``synthetic`` (glyphs of data seed 1 -> data seed 2: the glyph classes are
drawn from ``(data.seed, class)``, so the two sets share no class) and ``omniglot`` (glyphs ->
Omniglot background + evaluation, when ``../shared/data/omniglot`` holds the zips; else skipped
with the reason). Every stage is the pipeline's own (``pipeline.cli.main``); each search has its
own experiment and workdir under ``--out``, all in one MLflow store there.
"""

from __future__ import annotations

import json
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from pipeline.cli import Parser
from pipeline.cli import main as learn2tune

OMNIGLOT = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "omniglot"
OMNIGLOT_ZIPS = ("images_background.zip", "images_evaluation.zip")
BUDGETS: dict[str, dict[str, int]] = {  # trials, iterations per trial, val and test episodes
    "smoke": {"trials": 2, "iterations": 10, "val": 10, "test": 20},
    "small": {"trials": 3, "iterations": 20, "val": 30, "test": 100},  # what ran under a load of ~15 on 2 cores
    "default": {"trials": 5, "iterations": 60, "val": 50, "test": 200},
    # 10 trials: the warm study holds 10 past ones, so TPE (10 startup trials) models from its first own draw
    "medium": {"trials": 10, "iterations": 100, "val": 50, "test": 600},
    "large": {"trials": 20, "iterations": 300, "val": 100, "test": 600},
}


# The source search's seed, none of the target searches' (0, 1, ...): a cold search with the
# source's seed would draw the source's very configurations, the warm start's knowledge for free.
SOURCE_SEED = 1000


@dataclass(frozen=True)
class Outcome:
    """One target search: its trials' val accuracies in the order drawn, and its test accuracy."""

    vals: list[float]
    test: float

    def trials_to_reach(self, target: float) -> int | None:
        """How many trials the running best needed to reach ``target`` (None: never)."""
        best = float("-inf")
        for count, value in enumerate(self.vals, start=1):
            best = max(best, value)
            if best >= target - 1e-9:
                return count
        return None


def main(argv: list[str] | None = None) -> int:
    parser = Parser(prog="learn2tune bench warm-start", description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=Path("runs/bench-warm-start"), help="output directory (replaced)")
    parser.add_argument("--seeds", type=int, default=3, help="seeds of the cold and warm searches")
    parser.add_argument("--budget", choices=BUDGETS, default="default", help="trials, iterations and episodes")
    parser.add_argument("--pairs", default="synthetic,omniglot", help="comma-separated: synthetic, omniglot")
    args = parser.parse_args(argv)
    budget = BUDGETS[args.budget]
    shutil.rmtree(args.out, ignore_errors=True)
    args.out.mkdir(parents=True)
    out = args.out.resolve()
    lines = [f"budget {args.budget}: {budget}; seeds {args.seeds}"]
    for pair in args.pairs.split(","):
        started = time.monotonic()
        if pair == "omniglot" and not all((OMNIGLOT / name).is_file() for name in OMNIGLOT_ZIPS):
            lines.append(f"\nomniglot: skipped (no {' and '.join(OMNIGLOT_ZIPS)} in {OMNIGLOT.resolve()})")
            continue
        source, target = _datasets(pair)
        lines += _pair(pair, source, target, budget, args.seeds, out)
        lines.append(f"({pair}: {time.monotonic() - started:.0f} s)")
        print("\n".join(lines), flush=True)
    print("\n".join(lines))
    return 0


def _datasets(pair: str) -> tuple[dict[str, Any], dict[str, Any]]:
    glyphs = {"source": "synthetic", "synthetic_classes": 200, "synthetic_images_per_class": 20, "seed": 1}
    if pair == "synthetic":
        return glyphs, {**glyphs, "seed": 2}
    if pair == "omniglot":
        return glyphs, {"source": "omniglot", "path": str(OMNIGLOT.resolve()), "split": "random", "seed": 0}
    raise SystemExit(f"learn2tune bench warm-start: error: unknown pair {pair!r} (synthetic, omniglot)")


def _pair(
    pair: str, source: dict[str, Any], target: dict[str, Any], budget: dict[str, int], seeds: int, out: Path
) -> list[str]:
    """Build both datasets, run the source search, then cold and warm searches per seed; the table lines."""
    datasets = {"source": out / pair / "datasets" / "source", "target": out / pair / "datasets" / "target"}
    source_name = f"{pair}-source"
    source_config = _config(out, pair, source_name, {**source, "dir": str(datasets["source"])}, budget, SOURCE_SEED)
    _stage(out, "build", source_config)
    _stage(out, "search", source_config)
    target_data = {**target, "dir": str(datasets["target"])}
    _stage(out, "build", _config(out, pair, f"{pair}-cold-0", target_data, budget, 0))
    rows = []
    for seed in range(seeds):
        cold = _search(out, pair, f"{pair}-cold-{seed}", target_data, budget, seed, None)
        warm = _search(out, pair, f"{pair}-warm-{seed}", target_data, budget, seed, [source_name])
        rows.append((seed, cold, warm))
    return _table(pair, rows)


def _search(
    out: Path, pair: str, name: str, data: dict[str, Any], budget: dict[str, int], seed: int, warm: list[str] | None
) -> Outcome:
    config = _config(out, pair, name, data, budget, seed, warm)
    _stage(out, "search", config)
    _stage(out, "evaluate", config)
    tune = out / pair / name / "tune" / name
    trials = json.loads((tune / "search_result.json").read_text())["trials"]
    vals = [t["val_accuracy"] or 0.0 for t in sorted(trials, key=lambda t: t["index"])]
    evaluation = json.loads((tune / "evaluation.json").read_text())
    winner = next(m for m in evaluation["models"] if m["trial_id"] == evaluation["winner"])
    return Outcome(vals, winner["results"][evaluation["primary"]]["accuracy"])


def _config(
    out: Path,
    pair: str,
    name: str,
    data: dict[str, Any],
    budget: dict[str, int],
    seed: int,
    warm: list[str] | None = None,
) -> Path:
    """A config like configs/quickstart.yaml's (ProtoNet and MAML, small fixed widths), sized by ``budget``."""
    iterations = budget["iterations"]
    config = {
        "name": name,
        "seed": seed,
        "workdir": str(out / pair / name),
        "tracking": {"uri": f"sqlite:///{out / 'mlflow.db'}"},
        "data": {"image_size": 28, **data},
        "episodes": {
            "train": {"ways": 5, "shots": 1, "query": 5},
            "meta_batch": 4,
            "val": {"episodes": budget["val"]},
            "test": {"ways": [5], "shots": [1], "query": 10, "episodes": budget["test"]},
        },
        "search": {
            "families": ["protonet", "maml"],
            "trials": budget["trials"],
            "max_iterations": iterations,
            "grace_iterations": 0.5,
            "eval_every": max(1, iterations // 2),
            "checkpoint_every": max(1, iterations // 2),
            "max_concurrent": 2,
            "fixed": {
                "protonet": {"width": 32, "train_ways": 0},
                "maml": {"width": 32, "inner_steps": 1, "path": "split"},
            },
            "resources": {"cpu": 1, "gpu": 0},
            "warm_start": warm,
        },
        "registry": {"top_k": 1},
        "device": "cpu",
    }
    path = out / pair / f"{name}.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def _stage(out: Path, stage: str, config: Path) -> None:
    print(f"bench warm-start: {stage} {config.stem}", flush=True)
    argv = ["build", "-c", str(config)] if stage == "build" else [stage, str(config)]
    started = time.monotonic()
    status = learn2tune(argv)
    if status != 0:
        raise SystemExit(f"learn2tune bench warm-start: error: `learn2tune {' '.join(argv)}` exited {status}")
    print(f"bench warm-start: {stage} {config.stem} took {time.monotonic() - started:.0f} s", flush=True)


def _table(pair: str, rows: list[tuple[int, Outcome, Outcome]]) -> list[str]:
    """Per seed and in total: trials to reach the cold best (cold, warm) and the test accuracies."""
    lines = [
        f"\n{pair}: trials to reach the cold search's final best val accuracy, and top-1 test accuracy",
        "| seed | cold best val | cold trials | warm trials | warm/cold | cold test acc | warm test acc |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    ratios, cold_tests, warm_tests = [], [], []
    for seed, cold, warm in rows:
        target = max(cold.vals)
        needed_cold, needed_warm = cold.trials_to_reach(target), warm.trials_to_reach(target)
        ratio = needed_warm / needed_cold if needed_warm and needed_cold else None
        if ratio is not None:
            ratios.append(ratio)
        cold_tests.append(cold.test)
        warm_tests.append(warm.test)
        shown = f"{needed_warm}" if needed_warm else f"not in {len(warm.vals)}"
        lines.append(
            f"| {seed} | {target:.3f} | {needed_cold} | {shown} | {f'{ratio:.2f}' if ratio else '-'} | "
            f"{cold.test:.3f} | {warm.test:.3f} |"
        )
    reached = f"{len(ratios)} of {len(rows)}"
    mean_ratio = f"{sum(ratios) / len(ratios):.2f}" if ratios else "-"
    lines.append(
        f"| all | | | warm reached in {reached} | mean {mean_ratio} | "
        f"mean {sum(cold_tests) / len(cold_tests):.3f} | mean {sum(warm_tests) / len(warm_tests):.3f} |"
    )
    return lines


if __name__ == "__main__":
    raise SystemExit(main())
