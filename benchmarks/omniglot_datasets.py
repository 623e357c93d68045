"""The Omniglot benchmarks' datasets: one build per image size (the smoke budget's on synthetic glyphs).

The random character split of the MAML/ProtoNet papers (1200 training characters, 172 of them held out
for validation, and 423 test characters; the seed fixes it), rotated by 90/180/270 degrees into new classes.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

from benchmarks.omniglot_config import FamilyPlan
from benchmarks.omniglot_options import shown
from pipeline.errors import PipelineError
from tasks.build import BuildSpec, build_dataset
from tasks.say import Say
from tasks.store import DatasetStore

ZIPS = ("images_background", "images_evaluation")
SMOKE_DATA: dict[str, Any] = {
    "synthetic_classes": 120,
    "synthetic_images_per_class": 20,
    "val_classes": 24,
    "test_classes": 24,
}


def check_omniglot(args: argparse.Namespace) -> None:
    """A PipelineError unless ``--data`` holds the Omniglot zips (the smoke budget needs none)."""
    if args.budget != "smoke" and not all(
        (args.data / name).exists() or (args.data / f"{name}.zip").is_file() for name in ZIPS
    ):
        raise PipelineError(
            f"no Omniglot in {args.data}: expected images_background.zip and images_evaluation.zip (or their "
            "extracted folders); pass --data DIR (or --budget smoke, which needs no Omniglot)"
        )


def dataset_dir(workdir: Path, budget: str, image_size: int, seed: int) -> Path:
    """Where the table (and ``bench omniglot-search``) builds its dataset of one image size."""
    return (
        workdir / "datasets" / f"omniglot-table-{'smoke' if budget == 'smoke' else 'omniglot'}-{image_size}-seed{seed}"
    )


def build_datasets(
    args: argparse.Namespace, plans: dict[str, FamilyPlan], say: Say
) -> tuple[dict[int, DatasetStore], dict[str, Any]]:
    """The dataset of every image size the families use, built (or found) once each, and the
    table's description of them."""
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
