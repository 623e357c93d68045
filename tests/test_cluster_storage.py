"""Scale out for real: learn2tune on a 3-node Ray cluster whose nodes share nothing but Ray, an
S3 bucket and an MLflow server, all real and on 127.0.0.1 (tests/services.py).

The head (no CPUs) and two worker nodes (1 CPU, 2 fake GPUs each) are started with
``ray start``, each in its own temp dir and working directory; the driver runs in a third
directory with its workdir on ``s3://``. ``learn2tune run`` completes with its trials on both
workers, nothing of the dataset on the driver's disk, and every run, artifact and registered
model on the server and in the bucket; a search killed with SIGKILL finishes with
``search --resume`` against the same cluster; ``serve`` loads the model from the bucket
through the server and answers a real request.
"""

from __future__ import annotations

import json
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from services import QUIET, S3, RayCluster, free_port, start, stop, tail, wait_until

REPO = Path(__file__).resolve().parents[1]
CONFIG = """\
name: cluster
workdir: s3://{bucket}/l2t
tracking: {{uri: "{tracking}"}}
ray: {{env_vars: [AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_DEFAULT_REGION]}}  # the nodes have none
data: {{synthetic_classes: 30, synthetic_images_per_class: 6}}
episodes:
  train: {{ways: 3, shots: 1, query: 2}}
  meta_batch: 2
  val: {{episodes: 4}}
  test: {{ways: [3], shots: [1], query: 2, episodes: 4}}
search:
  families: [protonet]
  fixed: {{protonet: {{width: 8, train_ways: 0}}}}
  trials: 2
  max_iterations: 4
  grace_iterations: 4
  eval_every: 2
  checkpoint_every: 2
  resources: {{cpu: 1, gpu: 0}}
"""
RESUMED = ["--experiment", "resumed", "--trials", "2", "--max-iterations", "60",
           "--set", "data.dir=s3://{bucket}/l2t/datasets/cluster", "--set", "search.grace_iterations=60",
           "--set", "search.eval_every=5", "--set", "search.checkpoint_every=5",
           "--set", "episodes.val.episodes=20"]  # fmt: skip


@dataclass(frozen=True)
class Driver:
    """Where and how the driver runs: its own directory, the AWS variables, the project's code."""

    directory: Path
    config: Path
    s3: S3
    tracking: str
    cluster: RayCluster

    def environment(self) -> dict[str, str]:
        # With a searcher Tune keeps one trial pending at a time, and trials this short end before
        # a second node's worker has imported torch: the first node's reused actor would take
        # them all. Two pending trials start on both workers at once.
        pending = {"TUNE_MAX_PENDING_TRIALS_PG": "2"}  # = the trials: one on each worker
        return {**os.environ, **QUIET, **self.s3.environment(), **pending, "PYTHONPATH": str(REPO)}

    def command(self, *args: str) -> list[str]:
        return [sys.executable, "-m", "pipeline.cli", *args]

    def run(self, *args: str, timeout: float = 420) -> str:
        """``learn2tune ARGS`` to completion; its output (the test fails with it on a non-zero exit)."""
        log = self.directory / f"{args[0]}-{time.monotonic_ns()}.log"
        process = start(self.command(*args), log, self.environment(), cwd=self.directory)
        try:
            code = process.wait(timeout)
        finally:
            stop(process)
        assert code == 0, f"learn2tune {' '.join(args)} exited {code}:\n{tail(log, 60)}"
        return log.read_text()

    def search_result(self, experiment: str) -> dict:
        return json.loads(self.s3.read(f"l2t/tune/{experiment}/search_result.json"))


@pytest.fixture(scope="module")
def driver(tmp_path_factory, s3_server, mlflow_tracking_server, ray_nodes) -> Driver:
    """``learn2tune run`` on the cluster, from a directory of its own."""
    directory = tmp_path_factory.mktemp("driver")
    config = directory / "cluster.yaml"
    config.write_text(CONFIG.format(bucket=s3_server.bucket, tracking=mlflow_tracking_server))
    driver = Driver(directory, config, s3_server, mlflow_tracking_server, ray_nodes)
    driver.run("run", str(config), "--address", ray_nodes.address)
    return driver


def test_run_spreads_trials_over_both_workers_and_keeps_everything_in_the_bucket(driver: Driver):
    result = driver.search_result("cluster")
    trials = result["trials"]
    assert len(trials) == 2 and not any(t["error"] for t in trials)
    assert {t["node_id"] for t in trials} == set(driver.cluster.worker_node_ids)
    assert all(t["checkpoint"].startswith(f"s3://{driver.s3.bucket}/l2t/tune/cluster/trial_") for t in trials)

    # Nothing of the dataset (nor of Tune) on the driver's disk or in the nodes' working directories.
    for directory in (driver.directory, *driver.cluster.worker_dirs):
        found = [p.name for p in directory.rglob("*") if p.suffix in (".parquet", ".pkl") or p.name == "manifest.json"]
        assert not found, f"{directory} holds {found}"
    keys = driver.s3.keys()
    dataset = {k.rsplit("/", 1)[1] for k in keys if k.startswith("l2t/datasets/cluster/")}
    assert dataset == {"manifest.json", "train.parquet", "val.parquet", "test.parquet"}
    assert any(k.startswith("l2t/tune/cluster/experiment_state-") for k in keys)
    assert {"evaluation.json", "search_state.json", "search_result.json"} <= {
        k.rsplit("/", 1)[1] for k in keys if k.startswith("l2t/tune/cluster/")
    }

    # Every run on the server, every artifact in the bucket (the server proxies them there).
    from mlflow import MlflowClient

    client = MlflowClient(driver.tracking)
    experiment = client.get_experiment_by_name("cluster")
    assert experiment is not None
    runs = client.search_runs([experiment.experiment_id])
    assert len(runs) == 3 and {r.info.status for r in runs} == {"FINISHED"}  # the parent and 2 trials
    artifacts = [k for k in keys if k.startswith("mlartifacts/")]
    for trial in trials:
        run_files = [k for k in artifacts if f"/{trial['run_id']}/artifacts/" in k]
        assert any(k.endswith("/trial.json") for k in run_files), trial["run_id"]
        assert any("/artifacts/checkpoint/" in k for k in run_files), trial["run_id"]
    version = client.get_model_version("cluster", "1")  # registered from the trial run's logged model
    assert version.source is not None and version.source.startswith("models:/m-")
    model_id = version.source.removeprefix("models:/")
    assert client.get_logged_model(model_id).source_run_id == version.run_id
    assert any(k.endswith(f"/models/{model_id}/artifacts/MLmodel") for k in artifacts)


def test_a_search_killed_with_sigkill_resumes_on_the_same_cluster(driver: Driver):
    args = ["search", str(driver.config), "--address", driver.cluster.address,
            *(a.format(bucket=driver.s3.bucket) for a in RESUMED)]  # fmt: skip
    log = driver.directory / "killed-search.log"
    process = start(driver.command(*args), log, driver.environment(), cwd=driver.directory)
    try:

        def checkpointed() -> bool:
            keys = driver.s3.keys("l2t/tune/resumed/")
            return any("/checkpoint_" in k for k in keys) and any("/experiment_state-" in k for k in keys)

        wait_until(checkpointed, "the search's first checkpoint", process, log, timeout=300)
        time.sleep(2)  # Tune saves its experiment state every 2 s: let it record the checkpoint
    finally:
        process.kill()  # SIGKILL: no handler runs
        process.wait()
    assert "search_result.json" not in {k.rsplit("/", 1)[1] for k in driver.s3.keys("l2t/tune/resumed/")}
    killed = json.loads(driver.s3.read("l2t/tune/resumed/search_state.json"))
    driver.run(*args, "--resume")
    result = driver.search_result("resumed")
    assert result["mlflow"]["parent_run_id"] == killed["parent_run_id"]  # the same search, finished
    assert len(result["trials"]) == 2 and not any(t["error"] for t in result["trials"])
    assert all(t["iterations"] == 60 for t in result["trials"])
    assert {t["node_id"] for t in result["trials"]} <= set(driver.cluster.worker_node_ids)


def test_serve_loads_the_registered_model_from_the_bucket_and_answers(driver: Driver):
    from deploy.client import FewShotClient

    port = free_port()
    log = driver.directory / "serve.log"
    serve = ["serve", str(driver.config), "--version", "1", "--port", str(port)]
    process = start(driver.command(*serve), log, driver.environment(), cwd=driver.directory)
    try:
        client = FewShotClient(f"http://127.0.0.1:{port}", timeout=30)
        wait_until(client.ping, "learn2tune serve", process, log, timeout=180)
        rng = np.random.default_rng(0)
        images = [rng.integers(0, 256, (28, 28), dtype=np.uint8) for _ in range(3)]
        predictions = client.predict(support=[(f"c{i}", image) for i, image in enumerate(images)], query=images[:2])
        assert [p.label for p in predictions] == ["c0", "c1"], tail(log)
        assert all(abs(sum(p.probabilities.values()) - 1) < 1e-4 for p in predictions)
    finally:
        stop(process)


def test_promote_reads_the_registered_model_back_through_the_server(driver: Driver):
    output = driver.run("promote", str(driver.config))
    assert "first champion: cluster@champion is version 1" in output, output
