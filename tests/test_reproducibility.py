"""Reproducibility: one seed fixes the split, the episodes, the initial weights and, on CPU, the
metrics of a search to the last digit; another seed changes them. Real code paths throughout.

Seeding within one dataset is covered by test_tasks_splits/test_tasks_sampler; these tests
rebuild and rerun everything from scratch, as a second run on another day would.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import pytest
import torch

from learners.base import Learner
from learners.checkpoint import build_learner
from learners.registry import family_names, get_family
from pipeline.cli import main
from pipeline.search import CURVES, RESULT_FILE
from pipeline.tracking import make_client
from tasks.build import build_dataset
from tasks.episodes import EpisodeBatch, EpisodeSpec
from tasks.sampler import EpisodeSampler, fixed_episodes
from tasks.store import DatasetStore

SPEC = EpisodeSpec(ways=5, shots=1, query=3)


def _class_lists(manifest: dict[str, Any]) -> dict[str, list[str]]:
    return {name: split["class_names"] for name, split in manifest["splits"].items()}


def _batches(store: DatasetStore, seed: int) -> list[EpisodeBatch]:
    """Evaluation episodes of the test split and two training draws from the train split."""
    sampler = EpisodeSampler(store.split("train"), SPEC, tasks=3, seed=seed)
    return [*fixed_episodes(store.split("test"), SPEC, 6, seed=seed, batch_tasks=4), sampler.sample(), sampler.sample()]


def _same_batches(a: list[EpisodeBatch], b: list[EpisodeBatch]) -> bool:
    fields = ("support_x", "support_y", "query_x", "query_y")
    return len(a) == len(b) and all(
        torch.equal(getattr(x, f), getattr(y, f)) for x, y in zip(a, b, strict=True) for f in fields
    )


def test_same_seed_rebuilds_the_same_bytes_and_episodes(
    tmp_path, tasks_small_dataset, tasks_small_spec, tasks_snapshot
):
    again = build_dataset(tasks_small_spec, tmp_path / "again")
    assert tasks_snapshot(tmp_path / "again") == tasks_snapshot(tasks_small_dataset)  # every file, byte for byte
    original = DatasetStore.open(tasks_small_dataset)
    assert again["fingerprint"] == original.fingerprint
    rebuilt = DatasetStore.open(tmp_path / "again")
    assert _same_batches(_batches(rebuilt, seed=7), _batches(original, seed=7))
    other_seed = zip(_batches(rebuilt, seed=8), _batches(original, seed=7), strict=False)
    assert all(not torch.equal(x.query_x, y.query_x) for x, y in other_seed)  # fixed and sampled episodes alike

    other = build_dataset(dataclasses.replace(tasks_small_spec, seed=tasks_small_spec.seed + 1), tmp_path / "other")
    assert other["fingerprint"] != original.fingerprint
    lists, original_lists = _class_lists(other), _class_lists(original.manifest)
    assert all(lists[name] != original_lists[name] for name in lists)  # another split of the classes


def _state(learner: Learner) -> dict[str, Any]:
    return {"model": learner.state_dict(), "extra": learner.extra_state()}


def _same(a: Any, b: Any) -> bool:
    """Exact equality of nested dicts/lists of tensors and plain values."""
    if isinstance(a, torch.Tensor):
        return isinstance(b, torch.Tensor) and a.dtype == b.dtype and torch.equal(a, b)
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return type(a) is type(b) and len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b, strict=True))
    return a == b


@pytest.mark.parametrize("family", family_names())
def test_same_seed_gives_the_same_initial_weights(family, single_thread):
    fields = {f.name for f in dataclasses.fields(get_family(family).Hyperparams)}
    small = {k: v for k, v in {"width": 4, "depth": 2}.items() if k in fields}  # Conv-4's knobs, where it has them
    spec = {"family": family, "hparams": small, "image_shape": [1, 16, 16], "ways": 3}

    def initial(seed: int) -> dict[str, Any]:
        torch.rand(5)  # whatever ran before: the trial's seed alone decides
        torch.manual_seed(seed)
        return _state(build_learner(spec))

    first = initial(3)
    assert _same(initial(3), first)
    other = initial(4)["model"]
    assert any(not torch.equal(other[k], v) for k, v in first["model"].items() if v.is_floating_point())


SEARCH = """\
name: repro
seed: {seed}
workdir: {root}/runs
tracking: {{uri: "sqlite:///{root}/mlflow.db"}}
data: {{synthetic_classes: 30, synthetic_images_per_class: 6}}
episodes:
  train: {{ways: 3, shots: 1, query: 2}}
  meta_batch: 2
  val: {{episodes: 6}}
  test: {{ways: [3], shots: [1], query: 2, episodes: 4}}
search:
  families: [reptile, meta_lstm]  # path "auto", and reptile draws its inner minibatches from torch's generator
  trials: 2
  max_iterations: 4
  grace_iterations: 4
  eval_every: 2
  checkpoint_every: 2
  max_concurrent: 1
  fixed:
    reptile: {{width: 8, depth: 2, inner_steps: 2, inner_batch: 3, test_inner_steps: 2}}
    meta_lstm: {{width: 8, depth: 2, inner_steps: 2}}
"""


def _search(root: Path, seed: int) -> list[dict[str, Any]]:
    """Build and search in a fresh directory; per trial (by index): its config, scores, and logged histories."""
    root.mkdir()
    config = root / "repro.yaml"
    config.write_text(SEARCH.format(root=root, seed=seed))
    assert main(["build", "-c", str(config)]) == 0
    assert main(["search", str(config)]) == 0
    result = json.loads((root / "runs" / "tune" / "repro" / RESULT_FILE).read_text())
    client = make_client(f"sqlite:///{root}/mlflow.db")
    trials = []
    for trial in sorted(result["trials"], key=lambda t: t["index"]):
        histories = {
            key: sorted((m.step, m.value) for m in client.get_metric_history(trial["run_id"], key)) for key in CURVES
        }
        keep = ("index", "family", "params", "val_accuracy", "best_iteration", "iterations", "error")
        run_params = client.get_run(trial["run_id"]).data.params  # seed and every hyperparameter, as logged
        trials.append({**{k: trial[k] for k in keep}, "run_params": run_params, "histories": histories})
    return trials


def test_search_repeats_to_the_last_digit_on_cpu(tmp_path, pipeline_ray):
    first = _search(tmp_path / "first", seed=11)
    assert [t["family"] for t in first] and not any(t["error"] for t in first)
    assert all(t["iterations"] == 4 and len(t["histories"]["val_accuracy"]) == 2 for t in first)
    assert _search(tmp_path / "again", seed=11) == first  # exact floats: params, val accuracy, every curve point

    other = _search(tmp_path / "other", seed=12)
    for a, b in zip(other, first, strict=True):
        assert a["params"] != b["params"] and a["run_params"]["seed"] != b["run_params"]["seed"]
        assert a["histories"]["loss"] != b["histories"]["loss"]
