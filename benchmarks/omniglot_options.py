"""What ``bench omniglot`` and ``bench omniglot-search`` share on their command line: options, defaults,
the MLflow store they default to and how they show paths."""

from __future__ import annotations

import argparse
import os
from collections.abc import Callable
from pathlib import Path

from learners.registry import family_names
from pipeline import tracking

REPO = Path(__file__).resolve().parents[1]
DEFAULT_DATA = REPO.parent / "shared" / "data" / "omniglot"
DEFAULT_CONFIGS = REPO / "configs" / "omniglot"


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


def tracking_uri(given: str | None) -> str:
    """``--tracking-uri``, else ``MLFLOW_TRACKING_URI``, else ``sqlite:///mlflow.db``; SQLite paths made absolute."""
    return tracking.resolve_uri(given, os.environ, Path.cwd())


def shown(path: Path) -> str:
    """``path`` relative to the repository when inside it (stable across checkouts)."""
    path = Path(path).resolve()
    for base, prefix in ((REPO, ""), (REPO.parent, "../")):
        if path.is_relative_to(base):
            return prefix + str(path.relative_to(base))
    return str(path)
