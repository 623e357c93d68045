"""Real services on 127.0.0.1 for integration tests, each a context manager that starts it,
waits until it answers, and stops it by the PIDs it started (never a machine-wide stop).

- :func:`moto_s3`: an S3-compatible server (``moto_server``) with one bucket;
- :func:`mlflow_server`: ``mlflow server --workers 1`` on SQLite, artifacts proxied to that bucket;
- :func:`ray_cluster`: a Ray head plus worker nodes started with ``ray start``, each with its
  own temp dir and working directory, workers with fake GPUs.

Every process writes its log into the directory given; a service that does not come up
fails with the end of its log.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path

BIN = Path(sys.executable).parent
HOST = "127.0.0.1"
QUIET = {"RAY_USAGE_STATS_ENABLED": "0", "RAY_AUTH_MODE": "disabled", "MLFLOW_DISABLE_TELEMETRY": "true"}


def free_port() -> int:
    """A TCP port nothing listens on right now (the kernel's pick)."""
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return sock.getsockname()[1]


def wait_until(ready, what: str, process: subprocess.Popen, log: Path, timeout: float = 120) -> None:
    """Poll ``ready()`` until true; fail with the log's tail if ``process`` dies or time runs out."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"{what} exited with {process.returncode}:\n{tail(log)}")
        with contextlib.suppress(Exception):
            if ready():
                return
        time.sleep(0.3)
    raise TimeoutError(f"{what} not ready after {timeout:.0f} s:\n{tail(log)}")


def tail(log: Path, lines: int = 30) -> str:
    return "\n".join(log.read_text(errors="replace").splitlines()[-lines:]) if log.is_file() else "(no log)"


def start(command: list[str], log: Path, env: Mapping[str, str], cwd: Path | None = None) -> subprocess.Popen:
    """``command`` in its own session (so :func:`stop` reaches every process it starts), output to ``log``."""
    with open(log, "ab") as out:
        return subprocess.Popen(
            command, stdout=out, stderr=subprocess.STDOUT, env=dict(env), cwd=cwd, start_new_session=True
        )


def stop(*processes: subprocess.Popen, grace: float = 8) -> None:
    """SIGTERM the process groups of ``processes`` (all at once), then SIGKILL what is left."""
    for sig, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, 5)):
        for process in processes:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, sig)
        deadline = time.monotonic() + wait
        for process in processes:
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.wait(max(0.1, deadline - time.monotonic()))
    for process in processes:  # a group may outlive its leader
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)


def answers(url: str) -> bool:
    with urllib.request.urlopen(url, timeout=2) as response:
        return response.status < 500


# ---------------------------------------------------------------- S3


@dataclass(frozen=True)
class S3:
    endpoint: str
    bucket: str

    def environment(self) -> dict[str, str]:
        """The standard AWS variables that point clients (pyarrow, boto3, MLflow) at this server."""
        return {
            "AWS_ACCESS_KEY_ID": "testing",
            "AWS_SECRET_ACCESS_KEY": "testing",
            "AWS_DEFAULT_REGION": "us-east-1",
            "AWS_ENDPOINT_URL": self.endpoint,
            "MLFLOW_S3_ENDPOINT_URL": self.endpoint,
        }

    def client(self):
        import boto3

        env = self.environment()
        return boto3.client(
            "s3",
            endpoint_url=self.endpoint,
            aws_access_key_id=env["AWS_ACCESS_KEY_ID"],
            aws_secret_access_key=env["AWS_SECRET_ACCESS_KEY"],
            region_name=env["AWS_DEFAULT_REGION"],
        )

    def keys(self, prefix: str = "") -> list[str]:
        """Every object key in the bucket under ``prefix``."""
        pages = self.client().get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=prefix)
        return [item["Key"] for page in pages for item in page.get("Contents", [])]

    def read(self, key: str) -> bytes:
        return self.client().get_object(Bucket=self.bucket, Key=key)["Body"].read()


@contextlib.contextmanager
def moto_s3(log_dir: Path, bucket: str = "l2t-bucket") -> Iterator[S3]:
    """``moto_server`` on a free port with ``bucket`` created."""
    port = free_port()
    log = log_dir / "moto.log"
    process = start([str(BIN / "moto_server"), "-H", HOST, "-p", str(port)], log, os.environ)
    try:
        s3 = S3(f"http://{HOST}:{port}", bucket)
        wait_until(lambda: answers(f"{s3.endpoint}/moto-api/"), "moto_server", process, log, timeout=60)
        s3.client().create_bucket(Bucket=bucket)
        yield s3
    finally:
        stop(process)


# ---------------------------------------------------------------- MLflow


@contextlib.contextmanager
def mlflow_server(root: Path, s3: S3) -> Iterator[str]:
    """``mlflow server --workers 1``: SQLite in ``root``, artifacts proxied to ``s3://<bucket>/mlartifacts``."""
    port = free_port()
    log = root / "mlflow-server.log"
    command = [
        str(BIN / "mlflow"), "server", "--workers", "1", "--host", HOST, "--port", str(port),
        "--backend-store-uri", f"sqlite:///{root}/mlflow.db",
        "--artifacts-destination", f"s3://{s3.bucket}/mlartifacts",
    ]  # fmt: skip
    env = {**os.environ, **QUIET, **s3.environment(), "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}"}
    process = start(command, log, env, cwd=root)
    try:
        url = f"http://{HOST}:{port}"
        wait_until(lambda: answers(f"{url}/health"), "mlflow server", process, log, timeout=180)
        yield url
    finally:
        stop(process)


# ---------------------------------------------------------------- Ray


@dataclass
class RayCluster:
    """A running cluster: the address to join, and each worker's node id and directories."""

    address: str
    worker_node_ids: list[str] = field(default_factory=list)
    worker_dirs: list[Path] = field(default_factory=list)


def worker_environment() -> dict[str, str]:
    """The environment every worker node (and so every trial) runs with: the machine's, less the
    project's code (it reaches the trials through the driver's ``runtime_env``) and less every AWS
    variable: the bucket's credentials reach the trials only as ``ray.env_vars`` forwarded by the
    driver, as on a cluster whose nodes share nothing but Ray."""
    base = {key: value for key, value in os.environ.items() if key != "PYTHONPATH" and not key.startswith("AWS_")}
    return {**base, **QUIET, "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}"}


@contextlib.contextmanager
def ray_cluster(root: Path, node_env: Mapping[str, str], workers: int = 2, gpus: int = 2) -> Iterator[RayCluster]:
    """A head (no CPUs: trials run on the workers only) and ``workers`` nodes of 1 CPU and
    ``gpus`` fake GPUs, each with its own ``--temp-dir`` and working directory under ``root``."""
    port = free_port()
    address = f"{HOST}:{port}"
    ray = str(BIN / "ray")
    processes: list[subprocess.Popen] = []
    temp_dirs: list[Path] = []  # short paths: Ray's unix sockets live there (108-byte limit)
    cluster = RayCluster(address)
    try:
        for index in range(workers + 1):
            name = "head" if index == 0 else f"worker{index}"
            node_dir = root / name
            node_dir.mkdir()
            temp_dirs.append(Path(tempfile.mkdtemp(prefix=f"l2t-{name}-", dir="/tmp")))
            common = ["--block", f"--temp-dir={temp_dirs[-1]}", "--node-ip-address", HOST, "--disable-usage-stats"]
            if index == 0:
                command = [ray, "start", "--head", f"--port={port}", "--num-cpus=0", "--num-gpus=0",
                           "--include-dashboard=false", *common]  # fmt: skip
            else:
                command = [ray, "start", f"--address={address}", "--num-cpus=1", f"--num-gpus={gpus}",
                           f"--resources={json.dumps({name: 1})}", *common]  # fmt: skip
                cluster.worker_dirs.append(node_dir)
            processes.append(start(command, root / f"ray-{name}.log", node_env, cwd=node_dir))
            if index == 0:
                wait_until(lambda: port_open(port), "ray head", processes[0], root / "ray-head.log", timeout=90)
        nodes = _wait_for_nodes(address, workers + 1, root, node_env)
        cluster.worker_node_ids = [
            next(n["NodeID"] for n in nodes if f"worker{i}" in n["Resources"]) for i in range(1, workers + 1)
        ]
        yield cluster
    finally:
        stop(*processes, grace=3)  # the nodes hold nothing to save
        for directory in temp_dirs:
            shutil.rmtree(directory, ignore_errors=True)


def port_open(port: int) -> bool:
    """Whether something accepts TCP connections on ``port`` of 127.0.0.1."""
    with socket.create_connection((HOST, port), timeout=1):
        return True


def _wait_for_nodes(address: str, count: int, root: Path, env: Mapping[str, str], timeout: float = 120) -> list[dict]:
    """The cluster's alive nodes once there are ``count`` of them (asked from a short-lived driver)."""
    probe = (
        "import json, ray, time\n"
        f"ray.init(address={address!r}, logging_level='ERROR')\n"
        f"deadline = time.monotonic() + {timeout}\n"
        f"while len([n for n in ray.nodes() if n['Alive']]) < {count} and time.monotonic() < deadline:\n"
        "    time.sleep(0.5)\n"
        "print(json.dumps([n for n in ray.nodes() if n['Alive']], default=str))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", probe], env=dict(env), cwd=root, capture_output=True, text=True, timeout=timeout + 60
    )
    if done.returncode != 0:
        raise RuntimeError(f"cannot list the Ray nodes at {address}:\n{done.stderr[-3000:]}")
    nodes = json.loads(done.stdout.strip().splitlines()[-1])
    if len(nodes) < count:
        raise RuntimeError(f"only {len(nodes)} of {count} Ray nodes joined {address}")
    return nodes
