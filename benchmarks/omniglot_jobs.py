"""The Omniglot table's cells as jobs: each family file resolved for a setting and a budget, with the
episodes it trains and tests on, checked against the dataset before anything trains.

Cells with the same training recipe (ProtoNet trains 60-way for both its 5-way and 20-way tests) share
one trained model; a family that trains on no episodes (``finetune``) shares one across its settings.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
from typing import Any

from benchmarks.omniglot_config import Cell, FamilyPlan, resolve, setting_spec
from learners.checkpoint import build_learner
from pipeline.meta_training import training_spec
from tasks.episodes import EpisodeSpec
from tasks.sampler import check_episode
from tasks.store import DatasetStore

TEST_EPISODES = 600
# Test queries per class by ways. The full budget uses the usual 15; the cpu budget 20-25 queries
# per episode, which costs CI width, not bias (the mean estimates the same accuracy), and most of
# the test time of the families that score each query on its own (Reptile).
TEST_QUERY = {"full": {5: 15, 20: 15}, "cpu": {5: 5, 20: 1}}
SMOKE_ITERATIONS, SMOKE_META_BATCH, SMOKE_EPISODES = 2, 2, 10


@dataclasses.dataclass(frozen=True)
class Job:
    """A cell with what it runs on: its dataset, test episodes and training recipe."""

    cell: Cell
    store: DatasetStore
    train: EpisodeSpec  # what the sampler draws (ProtoNet: its train_ways)
    test: EpisodeSpec
    episodes: int
    recipe: str  # cells with equal recipes share one trained model


def learner_spec(cell: Cell, store: DatasetStore) -> dict[str, Any]:
    """What :func:`learners.checkpoint.build_learner` builds ``cell``'s learner from."""
    return {
        "family": cell.family,
        "hparams": cell.hparams,
        "image_shape": list(store.image_shape),
        "ways": cell.train.ways,
    }


def plan_jobs(args: argparse.Namespace, plans: dict[str, FamilyPlan], stores: dict[int, DatasetStore]) -> list[Job]:
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
            learner = build_learner(learner_spec(cell, store))  # on the CPU, for its training episodes
            train_split, test_split = store.split("train"), store.split("test")
            train = training_spec(learner, cell.train, train_split)
            ways, shots = setting_spec(name)
            test = EpisodeSpec(ways, shots, TEST_QUERY[budget][ways])
            check_episode(train_split, train)
            check_episode(test_split, test)
            recipe = json.dumps(
                [
                    family,
                    cell.hparams,
                    dataclasses.asdict(train) if learner.trains_on_episodes else None,  # finetune: one model
                    cell.meta_batch,
                    cell.iterations,
                    cell.image_size,
                    ways if learner.fixed_ways else None,
                ],
                sort_keys=True,
            )
            jobs.append(Job(cell, store, train, test, episodes, recipe))
    return jobs
