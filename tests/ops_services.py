"""Services of the cluster-ops tests, on 127.0.0.1, each stopped by the process group it was
started in: an ``mlflow server`` that allows only ``localhost:PORT`` as Host (so its 127.0.0.1 URL
gets MLflow's real 403) and a GPU-less ``ray start`` head that tests add workers to. The
three-node cluster with S3 storage of the storage tests is tests/services.py's. Registered once
for the whole session through ``pytest_plugins`` in tests/conftest.py.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from services import BIN, QUIET, answers, free_port, port_open, wait_until


def stop_group(process: subprocess.Popen, grace_s: float = 5.0) -> None:
    """SIGTERM every process of the session ``process`` leads (``start_new_session``: Ray's workers
    move to process groups of their own, but stay in the session); SIGKILL what is left after
    ``grace_s``."""
    for sig, wait_s in ((signal.SIGTERM, grace_s), (signal.SIGKILL, 5.0)):
        for pid in _session_members(process.pid):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, sig)
        deadline = time.monotonic() + wait_s
        while time.monotonic() < deadline and _session_members(process.pid):
            process.poll()  # reap the leader once it has exited
            time.sleep(0.2)
    process.poll()


def _session_members(session: int) -> list[int]:
    """PIDs of the live (not zombie) processes in session ``session``, from /proc."""
    members = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if fields[0] != "Z" and int(fields[3]) == session:
            members.append(int(stat.parent.name))
    return members


@dataclass
class MlflowServer:
    """``mlflow server`` that allows only the Host ``localhost:PORT``: ``url`` works, ``refusing_url``
    (the same server as 127.0.0.1) gets MLflow's 403 for a Host header it does not allow."""

    port: int
    root: Path

    @property
    def url(self) -> str:
        return f"http://localhost:{self.port}"

    @property
    def refusing_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def database(self) -> Path:
        return self.root / "mlflow.db"


@pytest.fixture(scope="session")
def ops_mlflow_server(tmp_path_factory) -> Iterator[MlflowServer]:
    """A real tracking server (one worker, SQLite backend, proxied artifacts) for the session."""
    root = tmp_path_factory.mktemp("mlflow-server")
    server = MlflowServer(free_port(), root)
    log = root / "server.log"
    command = [
        str(BIN / "mlflow"), "server", "--host", "127.0.0.1", "--port", str(server.port), "--workers", "1",
        "--backend-store-uri", f"sqlite:///{server.database}", "--artifacts-destination", str(root / "artifacts"),
        "--allowed-hosts", f"localhost:{server.port}",
    ]  # fmt: skip
    env = {**os.environ, **QUIET, "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}"}
    with log.open("wb") as sink:
        process = subprocess.Popen(command, stdout=sink, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    try:
        wait_until(lambda: answers(f"{server.url}/health"), "mlflow server", process, log, timeout=120)
        yield server
    finally:
        stop_group(process)


@dataclass
class RayNodes:
    """A Ray head (no GPUs) on 127.0.0.1 and the worker nodes a test adds with ``add_worker``."""

    port: int
    root: Path
    processes: list[subprocess.Popen] = field(default_factory=list)
    temp_dirs: list[str] = field(default_factory=list)

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self, name: str, *args: str, env: dict[str, str] | None = None) -> subprocess.Popen:
        """``ray start --block ARGS`` in its own process group, with its own temp dir and cwd."""
        workdir = Path(tempfile.mkdtemp(prefix=f"{name}-", dir=self.root))
        temp_dir = tempfile.mkdtemp(prefix="r", dir="/tmp")  # short: Ray's socket paths have a length limit
        self.temp_dirs.append(temp_dir)
        log = workdir / "ray.log"
        command = [str(BIN / "ray"), "start", "--block", "--disable-usage-stats", f"--temp-dir={temp_dir}", *args]
        base = env if env is not None else dict(os.environ)
        environment = {**base, **QUIET, "PATH": f"{BIN}{os.pathsep}{base.get('PATH', '')}"}
        with log.open("wb") as sink:
            process = subprocess.Popen(
                command, stdout=sink, stderr=subprocess.STDOUT, cwd=workdir, env=environment, start_new_session=True
            )
        process.log = log  # type: ignore[attr-defined]
        self.processes.append(process)
        return process

    def add_worker(self, *args: str, env: dict[str, str] | None = None) -> subprocess.Popen:
        return self.start("worker", f"--address={self.address}", "--num-cpus=1", *args, env=env)

    def alive_nodes(self) -> list[dict]:
        """The cluster's alive nodes, read by a separate ``ray`` CLI-free Python (not this process's Ray)."""
        import json

        script = (
            f"import json, ray; ray.init(address={self.address!r}, logging_level='ERROR');"
            "print(json.dumps([n for n in ray.nodes() if n['Alive']], default=str))"
        )
        done = subprocess.run(
            [sys.executable, "-c", script], capture_output=True, text=True, timeout=120, env={**os.environ, **QUIET}
        )
        assert done.returncode == 0, done.stderr[-2000:]
        return json.loads(done.stdout.strip().splitlines()[-1])

    def stop(self) -> None:
        import shutil

        for process in reversed(self.processes):
            stop_group(process)
        for temp_dir in self.temp_dirs:
            shutil.rmtree(temp_dir, ignore_errors=True)


@pytest.fixture(scope="module")
def ops_ray_nodes(tmp_path_factory) -> Iterator[RayNodes]:
    """A real Ray head started with ``ray start --head`` (1 CPU, no GPU); tests add workers."""
    nodes = RayNodes(free_port(), tmp_path_factory.mktemp("ray-nodes"))
    head = nodes.start(
        "head", "--head", f"--port={nodes.port}", "--node-ip-address=127.0.0.1", "--num-cpus=1", "--num-gpus=0",
        "--include-dashboard=false",
    )  # fmt: skip
    try:
        wait_until(lambda: port_open(nodes.port), "ray head", head, head.log, timeout=90)  # type: ignore[attr-defined]  # set by start()
        yield nodes
    finally:
        nodes.stop()
