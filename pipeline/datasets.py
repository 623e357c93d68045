"""The build stage, and opening a built dataset with the episode checks every stage needs first."""

from __future__ import annotations

from typing import Any, TextIO

from pipeline.bar import BarTally
from pipeline.config import Config
from tasks.build import build_dataset
from tasks.episodes import EpisodeSpec
from tasks.errors import EpisodeError
from tasks.sampler import check_episode as check_split_episode
from tasks.say import Say
from tasks.split_check import EpisodeNeed
from tasks.store import DatasetStore


def build(config: Config, out: Say, overwrite: bool = False, stream: TextIO | None = None) -> dict[str, Any]:
    """Build (or find, when the fingerprint matches) the dataset in ``config.dataset_dir``; its
    settings were checked when the config loaded, and a split too small for the configured
    episodes is refused before anything is written. ``stream`` (a terminal) shows the classes
    written as a progress bar."""
    manifest = build_dataset(
        config.data.build_spec(),
        config.dataset_location,
        overwrite=overwrite,
        progress=out,
        needs=episode_needs(config),
        tally=BarTally("build", "classes", out, stream) if stream is not None else None,
    )
    out(f"dataset {config.dataset_dir} (fingerprint {manifest['fingerprint'][:12]})")
    return manifest


def episode_needs(config: Config) -> list[EpisodeNeed]:
    """What the search and evaluate stages will ask of each split (the checks below, at build time)."""
    train, test = config.episodes.train, config.episodes.test
    needs = [
        EpisodeNeed("train", train.ways, train.shots, train.query, "episodes.train"),
        EpisodeNeed("val", train.ways, train.shots, train.query, "episodes.train", "used for validation"),
    ]
    return needs + [EpisodeNeed("test", max(test.ways), max(test.shots), test.query, "episodes.test")]


def open_dataset(config: Config) -> DatasetStore:
    """The dataset in ``config.dataset_dir`` (a local path or a storage URI), as the driver and
    every trial open it; DatasetError when it is missing or not a dataset."""
    return DatasetStore.open(config.dataset_location)


def check_search_episodes(store: DatasetStore, config: Config) -> None:
    """Training and validation episodes must fit the train and val splits."""
    train = config.episodes.train
    spec = EpisodeSpec(train.ways, train.shots, train.query)
    check_episode(store, "train", spec, "episodes.train")
    check_episode(store, "val", spec, "episodes.train (used for validation)")


def check_test_episodes(store: DatasetStore, config: Config) -> None:
    """Every (ways, shots) test setting must fit the test split."""
    test = config.episodes.test
    for ways, shots in test.settings():
        check_episode(store, "test", EpisodeSpec(ways, shots, test.query), "episodes.test")


def check_episode(store: DatasetStore, split_name: str, spec: EpisodeSpec, field: str) -> None:
    """An EpisodeError naming ``field`` when ``spec`` cannot be drawn from split ``split_name``."""
    try:
        check_split_episode(store.split(split_name), spec)
    except EpisodeError as exc:
        raise EpisodeError(f"{field} ({store.path}): {exc}") from None
