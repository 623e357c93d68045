"""Cluster operations against real parts: ``ray start`` nodes with fake GPUs (Ray hands out
``CUDA_VISIBLE_DEVICES``; this machine's CPU torch sees no CUDA) and a real ``mlflow server``.

- A search that asks for a GPU waits (``--wait-for-resources``) on a head without GPUs, goes on
  when a fake-GPU worker joins, trains on CPU with ``device: auto``, says so in its progress
  output and in MLflow, and records the node, resources and device each trial really had.
- The variables named in ``ray.env_vars`` reach the trials on a node whose own environment
  lacks them, and their values appear nowhere: not in the output, the MLflow store or the workdir.
- ``device: cuda`` on that node fails the trial with one line saying why.

The two cluster tests are marked slow (about 3 minutes together with starting the services on a
shared 2-core machine). The one-line failures (wrong address, unreachable or refusing tracking server, missing forwarded
variable, a wait that times out) are rows of tests/test_bad_input.py.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from pipeline.cli import main
from pipeline.config import load_config
from pipeline.errors import PipelineError
from pipeline.ray_runtime import _host_port
from pipeline.tracking import ensure_experiment, make_client
from pipeline.ui import ui_hint

LEARN2TUNE = str(Path(sys.executable).parent / "learn2tune")
ROOT = Path(__file__).resolve().parents[1]
SECRET_NAME, SECRET = "L2T_OPS_TOKEN", "s3cr3t-value-7f1c9e"

CONFIG = """\
name: {name}
workdir: {root}/runs
device: {device}
tracking: {{uri: "{tracking}"}}
ray: {{env_vars: [{secret_name}]}}
data: {{synthetic_classes: 30, synthetic_images_per_class: 6, dir: "{root}/dataset"}}
episodes:
  train: {{ways: 3, shots: 1, query: 2}}
  val: {{episodes: 2}}
  test: {{ways: [3], shots: [1], query: 2, episodes: 2}}
search:
  families: [protonet]
  fixed: {{protonet: {{width: 8, depth: 2}}}}
  trials: 1
  max_iterations: 2
  grace_iterations: 1
  eval_every: 1
  checkpoint_every: 1
  max_failures: 0
  resources: {{cpu: 1, gpu: 1}}
"""


def write_config(root: Path, name: str, tracking: str, device: str) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    path = root / f"{name}.yaml"
    path.write_text(CONFIG.format(name=name, root=root, device=device, tracking=tracking, secret_name=SECRET_NAME))
    assert main(["build", "-c", str(path)]) == 0
    return path


class Driver:
    """``learn2tune ARGS`` in a subprocess (its own cwd), its output collected line by line."""

    def __init__(self, args: list[str], cwd: Path, env: dict[str, str]):
        cwd.mkdir(parents=True, exist_ok=True)
        self.lines: list[str] = []
        self.process = subprocess.Popen(
            [LEARN2TUNE, *args], cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
        )
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.process.stdout is not None  # stdout=PIPE
        for line in self.process.stdout:
            self.lines.append(line.rstrip("\n"))

    def wait_for_line(self, part: str, timeout_s: float) -> str:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            found = [line for line in self.lines if part in line]
            if found:
                return found[0]
            if self.process.poll() is not None and not self._reader.is_alive():
                break
            time.sleep(0.5)
        raise AssertionError(f"no line with {part!r} within {timeout_s} s:\n" + "\n".join(self.lines[-40:]))

    def finish(self, timeout_s: float) -> tuple[int, str]:
        try:
            code = self.process.wait(timeout_s)
        except subprocess.TimeoutExpired:
            self.process.kill()
            raise AssertionError("the driver did not finish:\n" + "\n".join(self.lines[-40:])) from None
        self._reader.join(10)
        return code, "\n".join(self.lines)


def driver_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "MLFLOW_TRACKING_URI", SECRET_NAME)}
    return {**env, "PYTHONPATH": str(ROOT), "RAY_USAGE_STATS_ENABLED": "0", "RAY_AUTH_MODE": "disabled", **extra}


def trial_of(config: Path) -> dict:
    parsed = load_config(config, cwd=config.parent, environ={})
    result = json.loads((Path(parsed.experiment_dir) / "search_result.json").read_text())
    (trial,) = result["trials"]
    return trial


def run_tags(server_url: str, run_id: str) -> dict[str, str]:
    from mlflow import MlflowClient

    return MlflowClient(tracking_uri=server_url).get_run(run_id).data.tags


def files_holding(root: Path, text: str) -> list[str]:
    needle = text.encode()
    return [str(p) for p in root.rglob("*") if p.is_file() and needle in p.read_bytes()]


@pytest.fixture(scope="module")
def gpu_worker(ops_ray_nodes):
    """Adds a fake-GPU worker (2 GPUs, 1 CPU) to ``ops_ray_nodes`` on first use: a test that needs it
    first may add it itself, at the moment it chooses, with ``add``."""

    class Worker:
        process = None

        def add(self):
            if self.process is None:
                # The worker's own environment lacks the forwarded variable: only runtime_env brings it.
                self.process = ops_ray_nodes.add_worker("--num-gpus=2", env=driver_env())
            return self.process

    return Worker()


@pytest.mark.slow  # ~80 s on a shared 2-core machine, plus ~45 s to start the server and the head
def test_search_waits_for_a_gpu_node_then_records_the_cpu_it_really_used(
    ops_ray_nodes, gpu_worker, ops_mlflow_server, tmp_path
):
    config = write_config(tmp_path, "wait-auto", ops_mlflow_server.url, "auto")
    driver = Driver(
        ["search", str(config), "--address", ops_ray_nodes.address, "--wait-for-resources", "240"],
        cwd=tmp_path / "driver",
        env=driver_env(**{SECRET_NAME: SECRET, "MLFLOW_TRACKING_INSECURE_TLS": "false"}),
    )
    driver.wait_for_line("waiting for a Ray node with 1 CPU and 1 GPU: 0 of 240 s", timeout_s=120)
    gpu_worker.add()
    code, output = driver.finish(timeout_s=420)
    assert code == 0, output
    assert "a Ray node with 1 CPU and 1 GPU joined after" in output
    note = "note: MLFLOW_TRACKING_INSECURE_TLS set here but not in ray.env_vars: trials on other nodes do not get it"
    assert note in output.splitlines()
    warnings = [line for line in output.splitlines() if "warning: training on CPU: torch sees no CUDA device" in line]
    assert len(warnings) == 1, output  # once, in the trial's progress lines
    assert "Ray gave this trial GPU(s)" in warnings[0] and "CPU-only build" in warnings[0]

    trial = trial_of(config)
    nodes = {node["NodeID"]: node["Resources"] for node in ops_ray_nodes.alive_nodes()}
    assert nodes[trial["node_id"]].get("GPU") == 2, f"the trial ran on {trial['node_id']}, not the GPU worker"
    assert trial["device"] == "cpu"
    tags = run_tags(ops_mlflow_server.url, trial["run_id"])
    assert tags["learn2tune.device"] == "cpu" and tags["learn2tune.device_name"] == "cpu"
    assert tags["learn2tune.device_warning"] == warnings[0].split("warning: ", 1)[1]
    assert tags["learn2tune.node_id"] == trial["node_id"] and tags["learn2tune.node_ip"]
    assert tags["learn2tune.resources"] == "CPU=1,GPU=1"
    assert tags["learn2tune.gpu_ids"] in ("0", "1")
    # Forwarded by name through runtime_env to a worker started without it; the value is nowhere.
    assert tags["learn2tune.env_vars_present"] == SECRET_NAME
    assert SECRET not in output
    assert not files_holding(ops_mlflow_server.root, SECRET), "the secret reached the MLflow server's files"
    assert not files_holding(tmp_path, SECRET), "the secret reached the workdir or the driver's files"


@pytest.mark.slow  # ~45 s
def test_device_cuda_without_cuda_fails_the_trial_with_one_line(ops_ray_nodes, gpu_worker, ops_mlflow_server, tmp_path):
    gpu_worker.add()
    config = write_config(tmp_path, "cuda", ops_mlflow_server.url, "cuda")
    driver = Driver(
        ["search", str(config), "--address", ops_ray_nodes.address, "--wait-for-resources", "240"],
        cwd=tmp_path / "driver",
        env=driver_env(**{SECRET_NAME: SECRET}),
    )
    code, output = driver.finish(timeout_s=420)
    assert code == 1, output
    reason = "device is 'cuda' but torch sees no CUDA device (Ray gave this trial GPU(s)"
    failed = [line for line in output.splitlines() if "FAILED after 1 attempt(s)" in line]
    assert len(failed) == 1 and reason in failed[0], output
    assert "install a CUDA build of torch on the GPU nodes or set device: auto" in failed[0]
    assert output.strip().splitlines()[-1] == "learn2tune: error: all 1 trials failed; see the errors above"
    tags = run_tags(ops_mlflow_server.url, trial_of(config)["run_id"])
    assert reason in tags["learn2tune.device_error"] and tags["learn2tune.resources"] == "CPU=1,GPU=1"
    assert "learn2tune.device" not in tags  # it never trained


def test_ui_links_the_experiment_runs_table_on_the_tracking_server(ops_mlflow_server, tmp_path, capsys):
    config = tmp_path / "ui.yaml"
    config.write_text(f"name: ui-link\ntracking: {{uri: {ops_mlflow_server.url}}}\n")
    loaded = load_config(config, cwd=tmp_path, environ={})
    served = "in a browser (the tracking server serves the MLflow UI)"
    no_experiment_yet = f"open {ops_mlflow_server.url}/#/experiments?workflowType=machine_learning {served}"
    assert ui_hint(loaded) == no_experiment_yet
    client = make_client(ops_mlflow_server.url)
    experiment_id = ensure_experiment(client, "ui-link", ops_mlflow_server.url)
    assert client.get_experiment(experiment_id).tags["mlflow.experimentKind"] == "custom_model_development"
    assert main(["ui", str(config)]) == 0
    hint = f"open {ops_mlflow_server.url}/#/experiments/{experiment_id}/runs?workflowType=machine_learning {served}"
    assert capsys.readouterr().out.strip() == hint
    assert ui_hint(loaded) == hint  # the end of `learn2tune run`
    local = load_config(None, cwd=tmp_path, environ={})
    command, link = ui_hint(local).split("   # then open ")
    assert command.split()[1:4] == ["ui", "--backend-store-uri", f"sqlite:///{tmp_path}/mlflow.db"]
    assert link == "http://127.0.0.1:5000/#/experiments?workflowType=machine_learning"
    assert not (tmp_path / "mlflow.db").exists(), "the hint opened (so created) a store that was not there"


@pytest.mark.parametrize(
    "address, host_port",
    [("10.0.0.5:6380", ("10.0.0.5", 6380)), ("head", ("head", 6379)), ("ray://head", ("head", 10001)),
     ("ray://[::1]:10002", ("::1", 10002))],
)  # fmt: skip
def test_addresses_name_the_port_ray_init_would_use(address, host_port):
    assert _host_port(address) == host_port


@pytest.mark.parametrize("address", ["http://head:8265", "head:port", "head:6379/x", ":6379"])
def test_addresses_ray_init_cannot_use_are_one_line(address):
    with pytest.raises(PipelineError, match="ray.address must be host:port, ray://host:port or auto"):
        _host_port(address)


# ---------------------------------------------------------------- the resource check, in-process
# Against the session's local Ray (2 CPUs, no GPU).


@pytest.fixture
def published_node_groups(pipeline_ray):
    """Publishes node groups in the GCS the way an autoscaler does (autoscaler v2, KubeRay) for
    one test: this machine cannot run a real autoscaler (it needs a cloud or Docker)."""
    import ray._raylet
    from ray.core.generated import autoscaler_pb2
    from ray.experimental.internal_kv import _internal_kv_del, _internal_kv_put

    # Cython constants, not in ray/_raylet.pyi.
    key = ray._raylet.GCS_AUTOSCALER_CLUSTER_CONFIG_KEY  # type: ignore[attr-defined]
    namespace = ray._raylet.GCS_AUTOSCALER_STATE_NAMESPACE  # type: ignore[attr-defined]

    def publish(**groups: tuple[dict[str, float], int]) -> None:
        config = autoscaler_pb2.ClusterConfig(
            node_group_configs=[
                autoscaler_pb2.NodeGroupConfig(name=name, resources=resources, min_count=0, max_count=count)
                for name, (resources, count) in groups.items()
            ]
        )
        _internal_kv_put(key, config.SerializeToString(), overwrite=True, namespace=namespace)

    yield publish
    _internal_kv_del(key, namespace=namespace)


def test_resource_check_accepts_what_the_autoscaler_can_add(published_node_groups):
    from pipeline.config import Resources
    from pipeline.ray_runtime import check_trial_resources

    lines: list[str] = []
    published_node_groups(cpu=({"CPU": 8}, 10), gpu=({"CPU": 8, "GPU": 1}, 4), retired=({"CPU": 8, "GPU": 8}, 0))
    check_trial_resources(Resources(cpu=2, gpu=0.5), lines.append)
    assert lines == [
        "note: search.resources.gpu asks for 0.5 GPU(s) per trial but the largest Ray node has 0 (cluster total 0); "
        "the autoscaler can add gpu nodes, so the trials wait for them"
    ]
    with pytest.raises(PipelineError, match=r"nor does any node group the autoscaler can add \(cpu, gpu\); lower it"):
        check_trial_resources(Resources(cpu=2, gpu=2), lines.append)


def test_resource_wait_reports_progress_then_gives_up_in_one_line(pipeline_ray):
    from pipeline.config import Resources
    from pipeline.ray_runtime import check_trial_resources

    lines: list[str] = []
    started = time.monotonic()
    with pytest.raises(PipelineError) as refused:
        check_trial_resources(Resources(cpu=1, gpu=1), lines.append, wait_seconds=3)
    assert 3 <= time.monotonic() - started < 10
    assert str(refused.value).endswith("after waiting 3 s for a node that can hold one trial "
                                       "(--wait-for-resources / ray.wait_for_resources)")  # fmt: skip
    assert lines == ["waiting for a Ray node with 1 CPU and 1 GPU: 0 of 3 s"]
    check_trial_resources(Resources(cpu=1, gpu=0), lines.append, wait_seconds=3)  # fits now: no wait, no line
    assert len(lines) == 1


@pytest.mark.skipif(__import__("torch").cuda.is_available(), reason="needs a torch that sees no CUDA device")
def test_trial_device_uses_cuda_only_for_a_gpu_it_holds_and_can_see(monkeypatch):
    from pipeline.device import trial_device

    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "3")  # what Ray sets for a trial given GPU 3
    assert trial_device("auto", []).device.type == "cpu" and trial_device("auto", []).warning is None
    assert trial_device("cpu", ["3"]).warning is None
    warned = trial_device("auto", ["3"])
    assert (str(warned.device), warned.name) == ("cpu", "cpu")
    assert warned.warning is not None
    assert warned.warning.startswith("training on CPU: torch sees no CUDA device (Ray gave this trial GPU(s) 3; "
                                     "CUDA_VISIBLE_DEVICES=3; torch ")  # fmt: skip
    with pytest.raises(PipelineError, match=r"^device is 'cuda' but torch sees no CUDA device \(Ray gave this trial"):
        trial_device("cuda", ["3"])
