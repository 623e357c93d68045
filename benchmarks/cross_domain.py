"""``learn2tune bench cross-domain``: protonet, maml and finetune trained on synthetic glyphs and
scored on Omniglot, and the reverse (BSCD-FSL protocol), with the in-domain scores beside.

Every number comes from the pipeline's own stages: ``build`` both datasets (28x28 grey), one
``search`` per (source, family) with the family's hyperparameters fixed (``configs/omniglot/<family>.yaml``,
its cpu budget's widths) and one trial, ``evaluate`` on the source's test split and
``evaluate --on`` the other dataset's, 5-way 1-shot and 5-shot over 600 fixed-seed episodes, then
``report cross-domain``. Each family trains one model (5-way 1-shot episodes; protonet 20-way;
finetune class mini-batches) that scores both settings. The budgets are meta-iterations per trial.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import sys
import time
from pathlib import Path
from typing import Any

import torch
import yaml

from benchmarks import omniglot_report
from benchmarks.omniglot_options import DEFAULT_CONFIGS, DEFAULT_DATA
from pipeline.cli import Parser
from pipeline.cli import main as learn2tune
from pipeline.config import load_config
from pipeline.cross_domain_report import collect, markdown
from pipeline.io import write_text_atomic

REPO = Path(__file__).resolve().parents[1]
FAMILIES = ("protonet", "maml", "finetune")
# meta-iterations per trial; cpu: the whole table in about 20 minutes on 2 shared CPU cores
BUDGETS = {
    "smoke": {"protonet": 20, "maml": 10, "finetune": 40},
    "cpu": {"protonet": 300, "maml": 200, "finetune": 1000},
    "full": {"protonet": 20000, "maml": 60000, "finetune": 25700},
}
EPISODES = {"smoke": 30, "cpu": 600, "full": 600}
TRAIN_OVERRIDES = {  # cpu and smoke: the cpu budget's hparams of the family's Omniglot config, and these
    "protonet": {"train_ways": 20},
    "maml": {"meta_batch": 4},
    "finetune": {},
}


def family_hparams(configs: Path, family: str, budget: str) -> tuple[dict[str, Any], int]:
    """The fixed hyperparameters of ``family`` (its 5w1s paper settings) and its meta-batch."""
    spec = yaml.safe_load((configs / f"{family}.yaml").read_text())
    setting = spec["settings"]["5w1s"]
    hparams = {**spec["hparams"], **setting.get("hparams", {})}
    meta_batch = int(setting.get("meta_batch", 1))
    if budget != "full":
        hparams.update(spec.get("budget_hparams", {}).get("cpu", {}))
        overrides = dict(TRAIN_OVERRIDES[family])
        meta_batch = int(overrides.pop("meta_batch", meta_batch))
        hparams.update(overrides)
    return hparams, meta_batch


def experiment_config(name: str, dataset: Path, family: str, args: argparse.Namespace) -> dict[str, Any]:
    hparams, meta_batch = family_hparams(args.configs, family, args.budget)
    iterations = BUDGETS[args.budget][family]
    return {
        "name": name,
        "seed": args.seed,
        "workdir": str(args.workdir),
        "device": args.device,
        "tracking": {"uri": f"sqlite:///{args.workdir / 'mlflow.db'}"},
        "data": {"dir": str(dataset)},
        "episodes": {
            "train": {"ways": 5, "shots": 1, "query": 5},
            "meta_batch": meta_batch,
            "val": {"episodes": 50},
            "test": {"ways": [5], "shots": [1, 5], "query": 15, "episodes": EPISODES[args.budget]},
        },
        "search": {
            "families": [family],
            "trials": 1,
            "max_iterations": iterations,
            "grace_iterations": iterations,
            "eval_every": iterations,
            "checkpoint_every": iterations,
            "fixed": {family: hparams},
        },
        "registry": {"top_k": 1},
    }


def _run(*argv: str) -> None:
    status = learn2tune(list(argv))
    if status != 0:
        raise SystemExit(f"bench cross-domain: `learn2tune {shlex.join(argv)}` failed (exit {status})")


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    args = _parser().parse_args(argv)
    if not all((args.data / f"{n}.zip").is_file() for n in ("images_background", "images_evaluation")):
        print(
            f"bench cross-domain: skipped: no Omniglot zips in {args.data} (images_background.zip, "
            "images_evaluation.zip); give --data DIR"
        )
        return 0
    args.workdir = args.workdir.resolve()
    args.workdir.mkdir(parents=True, exist_ok=True)
    started = time.time()
    datasets = {name: args.workdir / "datasets" / name for name in ("synthetic", "omniglot")}
    builds = {
        "synthetic": ["--set", "data.source=synthetic"],
        "omniglot": ["--set", "data.source=omniglot", "--set", f"data.path={args.data}"],
    }
    experiments = []
    for source, other in (("synthetic", "omniglot"), ("omniglot", "synthetic")):
        for family in args.families:
            name = f"xd-{source}-{family}"
            config = args.workdir / f"{name}.yaml"
            config.write_text(yaml.safe_dump(experiment_config(name, datasets[source], family, args)))
            for dataset in (source, other):
                if not (datasets[dataset] / "manifest.json").is_file():
                    print(f"== build {dataset}", flush=True)
                    _run("build", str(config), "--out", str(datasets[dataset]), *builds[dataset])
            print(f"== {name}: search, evaluate, evaluate --on {other}", flush=True)
            if not (args.workdir / "tune" / name / "search_result.json").is_file():
                _run("search", str(config))
            _run("evaluate", str(config))
            _run("evaluate", str(config), "--on", str(datasets[other]))
            experiments.append(name)
    loaded = load_config(args.workdir / f"{experiments[0]}.yaml", cwd=Path.cwd(), environ=os.environ)
    table = markdown(collect(loaded, experiments))
    minutes = (time.time() - started) / 60
    hardware = omniglot_report.hardware(torch.device("cuda" if args.device == "cuda" else "cpu"))
    budget = ", ".join(f"{f} {BUDGETS[args.budget][f]}" for f in args.families)
    text = "\n".join(
        [
            "# Cross-domain evaluation (BSCD-FSL protocol)",
            "",
            "Trained on one dataset, scored on the TEST split of the other (never seen), 5-way, "
            f"{EPISODES[args.budget]} fixed-seed episodes of 15 queries per class per setting; accuracy ± 95% CI. "
            "Bold: in-domain. One trial per family with fixed hyperparameters (configs/omniglot/<family>.yaml, "
            f"{'paper' if args.budget == 'full' else 'cpu-budget'} widths), trained on 5-way 1-shot episodes "
            "(protonet 20-way; finetune: class mini-batches); one model per family scores both shots.",
            "",
            f"Budget `{args.budget}` (meta-iterations per trial): {budget}. "
            "Omniglot: the omniglot source's default class split, no rotations; synthetic: 400 classes of "
            "generated glyphs, 20 images each (the build's default split).",
            "",
            table,
            f"Regenerate: `{shlex.join(['nice', '-n', '10', 'learn2tune', 'bench', 'cross-domain', *argv])}`",
            "",
            f"Machine: {json.dumps(hardware)}; commit {omniglot_report.commit(REPO)}; {minutes:.1f} minutes wall.",
            "",
        ]
    )
    if args.out:
        write_text_atomic(args.out, text)
        print(f"wrote {args.out}")
    print(text)
    return 0


def _parser() -> argparse.ArgumentParser:
    parser = Parser(prog="learn2tune bench cross-domain", description=__doc__.split("\n\n")[0])
    parser.add_argument("--budget", choices=tuple(BUDGETS), default="cpu", help="meta-iterations (default cpu)")
    parser.add_argument("--families", type=lambda t: [f for f in t.split(",") if f], default=list(FAMILIES))
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA, help="the Omniglot zips' directory")
    parser.add_argument("--workdir", type=Path, default=Path("runs/cross-domain"), help="datasets, runs, MLflow store")
    parser.add_argument("--configs", type=Path, default=DEFAULT_CONFIGS, help="the per-family Omniglot configs")
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default="cpu")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, help="markdown file to write (e.g. docs/cross-domain.md)")
    return parser


if __name__ == "__main__":
    sys.exit(main())
