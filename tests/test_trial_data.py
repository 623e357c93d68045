"""Trials' data from Ray's object store (``search.data: object-store``), with real Ray and Parquet.

A Ray task (a worker process, as a trial is) maps the driver's one copy: the image array lies
in Ray's shared-memory mapping, is read-only, and a learner trains from it. A real search
trains with its dataset directory deleted once the driver has shared it; a dataset too big
for the object store is one line.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest

from pipeline import search as search_stage
from pipeline import trial_data
from pipeline.cli import main
from pipeline.config import load_config
from tasks.store import DatasetStore

SEARCH_CONFIG = """\
name: shared
workdir: {root}/runs
tracking: {{uri: "sqlite:///{root}/mlflow.db"}}
data: {{dir: {dataset}}}
episodes:
  train: {{ways: 3, shots: 1, query: 2}}
  meta_batch: 2
  val: {{episodes: 6}}
search:
  families: [protonet]
  trials: 1
  max_iterations: 10
  grace_iterations: 10
  eval_every: 5
  checkpoint_every: 5
  fixed: {{protonet: {{width: 8, train_ways: 0}}}}
  data: {data}
"""


def _mapping_of(address: int) -> str:
    """The /proc/self/maps line of the mapping that holds ``address``."""
    with open("/proc/self/maps") as maps:
        for line in maps:
            start, end = (int(x, 16) for x in line.split()[0].split("-"))
            if start <= address < end:
                return line.strip()
    raise AssertionError(f"address {address:#x} is in no mapping")


def _train_in_a_worker(shared: trial_data.SharedDataset, config) -> dict:
    """In a Ray worker: get the trial's dataset, report how its train images are held, train one step."""
    import torch

    from learners.checkpoint import build_learner
    from tasks.episodes import EpisodeSpec
    from tasks.sampler import EpisodeSampler

    dataset = trial_data.trial_dataset(config, shared)
    train = dataset.split("train")
    try:
        train.images[0, 0, 0, 0] = 1
        written = True
    except ValueError:
        written = False
    torch.manual_seed(0)
    hparams = {"width": 8, "train_ways": 0}
    spec = {"family": "protonet", "hparams": hparams, "image_shape": list(dataset.image_shape), "ways": 3}
    learner = build_learner(spec, torch.device("cpu"))
    sampler = EpisodeSampler(train, EpisodeSpec(3, 1, 2), tasks=2, seed=0)
    before = train.images.copy()
    metrics = [learner.meta_train_step(sampler.sample().to("cpu")) for _ in range(3)]
    return {
        "pid": os.getpid(),
        "writeable": bool(train.images.flags.writeable),
        "written": written,
        "mapping": _mapping_of(train.images.ctypes.data),
        "unchanged": bool(np.array_equal(before, train.images)),
        "losses": [m["loss"] for m in metrics],
        "images": int(train.images.shape[0]),
    }


def test_a_trial_trains_from_a_zero_copy_read_only_array_in_the_object_store(
    pipeline_ray, tasks_small_dataset, tmp_path
):
    ray = pipeline_ray
    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])  # workers cannot import test modules
    config = load_config(None, [("data.dir", str(tasks_small_dataset))], cwd=tmp_path, environ={})
    store = DatasetStore.open(tasks_small_dataset)
    shared = trial_data.share_dataset(store)
    assert set(shared.refs) == {"train", "val"}  # the test split stays with the driver
    reports = ray.get([ray.remote(num_cpus=1)(_train_in_a_worker).remote(shared, config) for _ in range(2)])
    for report in reports:
        assert report["pid"] != os.getpid()
        # the images lie in Ray's shared-memory mapping of the object store
        assert "/plasma" in report["mapping"] and " rw-s " in report["mapping"], report["mapping"]
        assert not report["writeable"] and not report["written"]
        assert report["unchanged"] and report["images"] == store.split("train").images.shape[0]
        assert all(np.isfinite(report["losses"]))


def test_the_storage_path_opens_the_dataset_in_the_trial(tasks_small_dataset, tmp_path):
    config = load_config(None, [("data.dir", str(tasks_small_dataset))], cwd=tmp_path, environ={})
    dataset = trial_data.trial_dataset(config, None)
    assert isinstance(dataset, DatasetStore) and dataset.path == tasks_small_dataset


def test_a_search_trains_from_the_object_store_without_the_dataset_directory(
    pipeline_ray, tasks_small_dataset, tmp_path, monkeypatch, capsys
):
    dataset = shutil.copytree(tasks_small_dataset, tmp_path / "dataset")
    config = tmp_path / "shared.yaml"
    config.write_text(SEARCH_CONFIG.format(root=tmp_path, dataset=dataset, data="object-store"))

    def share_then_delete(store):
        shared = trial_data.share_dataset(store)
        shutil.rmtree(dataset)  # from here on only the object store has the data
        return shared

    monkeypatch.setattr(search_stage, "share_dataset", share_then_delete)
    assert main(["search", str(config)]) == 0, capsys.readouterr().err
    assert not dataset.exists()
    result = json.loads((tmp_path / "runs/tune/shared/search_result.json").read_text())
    [trial] = result["trials"]
    assert trial["error"] is None and trial["iterations"] == 10 and trial["val_accuracy"] is not None


# A local Ray with an 80 MiB object store, then the real command line.
SMALL_OBJECT_STORE = """\
import sys
import ray
from pipeline.cli import main
ray.init(num_cpus=1, object_store_memory=80 << 20, include_dashboard=False)
sys.exit(main(sys.argv[1:]))
"""


@pytest.mark.slow
def test_a_dataset_larger_than_the_object_store_is_one_line_and_writes_nothing(tmp_path):
    from benchmarks.data_sharing import NoiseSource
    from tasks.build import BuildSpec, write_dataset

    dataset = tmp_path / "dataset"  # train + val: 17 classes x 300 images of 84x84x3 = 108 MB
    spec = BuildSpec(
        image_size=84, channels=3, val_classes=3, test_classes=3, synthetic_classes=20, synthetic_images_per_class=300
    )
    write_dataset(NoiseSource(20, 300), spec, dataset)
    config = tmp_path / "shared.yaml"
    config.write_text(SEARCH_CONFIG.format(root=tmp_path, dataset=dataset, data="object-store"))
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0", "RAY_AUTH_MODE": "disabled"}
    command = [sys.executable, "-c", SMALL_OBJECT_STORE, "search", str(config), "--set", "search.resources.cpu=1"]
    done = subprocess.run(command, capture_output=True, text=True, env=env, timeout=180)
    assert done.returncode == 2, done.stderr
    errors = [line for line in done.stderr.splitlines() if line.startswith("learn2tune: error:")]
    assert errors == [
        f"learn2tune: error: search.data is object-store but the trial splits of {dataset} (0.10 GiB) do not fit "
        "this node's Ray object store (0.08 GiB): use search.data=storage or start Ray with a larger "
        "--object-store-memory"
    ], done.stderr
    assert "Traceback" not in done.stderr
    assert not (tmp_path / "runs").exists() and not (tmp_path / "mlflow.db").exists()
