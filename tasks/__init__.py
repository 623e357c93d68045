"""Task datasets: sources, class splits, the Parquet dataset builder and store, episode sampling.

The names below are imported on first use, so ``import tasks`` stays cheap.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from tasks.build import BuildSpec, build_dataset
    from tasks.episodes import EpisodeBatch, EpisodeSpec
    from tasks.errors import DatasetError, EpisodeError
    from tasks.sampler import EpisodeSampler, fixed_episodes
    from tasks.store import DatasetStore, SplitStore

_EXPORTS = {
    "BuildSpec": "tasks.build",
    "build_dataset": "tasks.build",
    "DatasetStore": "tasks.store",
    "SplitStore": "tasks.store",
    "EpisodeSampler": "tasks.sampler",
    "fixed_episodes": "tasks.sampler",
    "EpisodeSpec": "tasks.episodes",
    "EpisodeBatch": "tasks.episodes",
    "DatasetError": "tasks.errors",
    "EpisodeError": "tasks.errors",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'tasks' has no attribute {name!r}")
    return getattr(importlib.import_module(_EXPORTS[name]), name)
