"""Shared pytest fixtures. Ray starts once per pytest process (5-8 s; `make test` runs two)."""

from __future__ import annotations

import os

import pytest

# The cluster-ops starters (mlflow server, ray start nodes), until tests/services.py replaces them.
pytest_plugins = ["tests.ops_services"]

# What a file's tests start, most expensive first: `ray start` nodes and servers, then a local Ray.
SERVICE_FIXTURES = (
    {"ray_nodes", "ops_ray_nodes", "mlflow_tracking_server", "ops_mlflow_server"},
    {"pipeline_ray"},
)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """The files whose tests start services first, each file's tests still together and in order.

    `make test`'s two processes (pytest-xdist, ``--dist loadfile --no-loadscope-reorder``) take
    the next file as each finishes one: the longest files first let both end at about the same
    time (xdist's own order, by number of tests, ran the few-test cluster files last).
    """

    def cost_rank(item: pytest.Item) -> int:
        used = set(getattr(item, "fixturenames", ()))
        return next((rank for rank, names in enumerate(SERVICE_FIXTURES) if used & names), len(SERVICE_FIXTURES))

    rank_of_file: dict[object, int] = {}
    for item in items:
        rank_of_file[item.path] = min(rank_of_file.get(item.path, len(SERVICE_FIXTURES)), cost_rank(item))
    items.sort(key=lambda item: rank_of_file[item.path])  # stable: a file's own order is kept


@pytest.fixture(scope="session")
def pipeline_ray():
    """A real local Ray (2 CPUs, no dashboard) for the whole test session."""
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    import ray

    ray.init(num_cpus=2, include_dashboard=False)
    yield ray
    ray.shutdown()


# --- tasks/ fixtures -------------------------------------------------------------------------


@pytest.fixture(scope="session")
def tasks_omniglot_dir():
    """The real Omniglot zips (``<repo>/../shared/data/omniglot``); skips the test when absent."""
    from pathlib import Path

    path = (Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "omniglot").resolve()
    if not all((path / f"{name}.zip").is_file() for name in ("images_background", "images_evaluation")):
        pytest.skip(f"real Omniglot not found: {path} lacks images_background.zip / images_evaluation.zip")
    return path


@pytest.fixture(scope="session")
def tasks_small_spec():
    """A small synthetic build: 40 classes x 10 images of 28x28 (train 24 / val 8 / test 8)."""
    from tasks.build import BuildSpec

    return BuildSpec(synthetic_classes=40, synthetic_images_per_class=10, val_classes=8, test_classes=8, seed=3)


@pytest.fixture(scope="session")
def tasks_small_dataset(tmp_path_factory, tasks_small_spec):
    """That small synthetic dataset, built once per session; copy it before modifying it."""
    from tasks.build import build_dataset

    out = tmp_path_factory.mktemp("tasks") / "small"
    build_dataset(tasks_small_spec, out)
    return out


@pytest.fixture
def tasks_dataset_copy(tmp_path, tasks_small_dataset):
    """A private copy of the small dataset that a test may damage."""
    import shutil

    return shutil.copytree(tasks_small_dataset, tmp_path / "dataset")


@pytest.fixture
def tasks_snapshot():
    """A function mapping a directory to {relative path: sha256} of every file under it."""
    import hashlib
    from pathlib import Path

    def snapshot(root):
        root = Path(root)
        return {
            p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*"))
            if p.is_file()
        }

    return snapshot


# --- learner fixtures ------------------------------------------------------------------------


@pytest.fixture
def single_thread():
    """One intra-op thread: learner tests use tiny tensors, for which a second thread only adds
    synchronisation (seconds per test on a shared 2-core machine). Restored afterwards."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def glyph_store(tmp_path_factory):
    """A function building a small synthetic-glyph dataset and opening it: ``glyph_store(**spec)``."""
    from tasks.build import BuildSpec, build_dataset
    from tasks.store import DatasetStore

    def build(**spec):
        out = tmp_path_factory.mktemp("glyphs") / "dataset"
        build_dataset(BuildSpec(**spec), out)
        return DatasetStore.open(out)

    return build


# --- real services on 127.0.0.1 (tests/services.py), started once per session ----------------


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory):
    """A real S3-compatible server (moto_server) with one bucket: a ``services.S3``."""
    from services import moto_s3

    with moto_s3(tmp_path_factory.mktemp("moto")) as s3:
        yield s3


@pytest.fixture(scope="session")
def mlflow_tracking_server(tmp_path_factory, s3_server):
    """A real ``mlflow server`` (SQLite, artifacts in ``s3://<bucket>/mlartifacts``): its URL."""
    from services import mlflow_server

    with mlflow_server(tmp_path_factory.mktemp("mlflow-server"), s3_server) as url:
        yield url


@pytest.fixture(scope="session")
def ray_nodes(tmp_path_factory):
    """A Ray cluster started with ``ray start``: a head and two 1-CPU workers with 2 fake GPUs each,
    none of them with AWS credentials (trials get them through ``ray.env_vars``)."""
    from services import ray_cluster, worker_environment

    with ray_cluster(tmp_path_factory.mktemp("ray-nodes"), worker_environment()) as cluster:
        yield cluster
