"""Where a run came from, as MLflow's own context tags, and optional system metrics.

``MlflowClient.create_run`` adds no context tags (only the fluent ``mlflow.start_run`` does), so
the search computes them once in the driver and every run it starts gets them: the stage as
``mlflow.source.name`` (``learn2tune search``), the user, and the project's git commit and
branch when the code runs from a git checkout (the runs table's Source column links them).

System metrics (``tracking.system_metrics: true``) are MLflow's ``system/...`` metrics (CPU,
memory, disk, network; GPU with ``nvidia-ml-py``) of the machine a trial runs on, sampled by
MLflow's monitor while the trial trains. They need ``psutil``.
"""

from __future__ import annotations

import contextlib
import getpass
import importlib.util
import subprocess
from collections.abc import Iterator
from pathlib import Path

from pipeline.errors import PipelineError

PROJECT_ROOT = Path(__file__).resolve().parents[1]
SOURCE_NAME, SOURCE_TYPE, USER = "mlflow.source.name", "mlflow.source.type", "mlflow.user"
GIT_COMMIT, GIT_BRANCH = "mlflow.source.git.commit", "mlflow.source.git.branch"
GIT_TIMEOUT_S = 5
SAMPLING_INTERVAL_S = 5.0


def context_tags(stage: str) -> dict[str, str]:
    """MLflow's context tags for a run of ``stage`` started from this code."""
    tags = {SOURCE_NAME: f"learn2tune {stage}", SOURCE_TYPE: "LOCAL"}
    with contextlib.suppress(KeyError, OSError):  # a uid with no passwd entry (some containers)
        tags[USER] = getpass.getuser()
    return {**tags, **git_tags(PROJECT_ROOT)}


def git_tags(root: Path) -> dict[str, str]:
    """The commit and branch of the git checkout whose top level is ``root``; none otherwise
    (an installed copy, no git, a checkout of some other project around it)."""
    try:
        done = subprocess.run(
            ["git", "-C", str(root), "rev-parse", "--show-toplevel", "HEAD", "--abbrev-ref", "HEAD"],
            capture_output=True, text=True, timeout=GIT_TIMEOUT_S, check=False,
        )  # fmt: skip
    except (OSError, subprocess.TimeoutExpired):
        return {}
    lines = done.stdout.split()
    if done.returncode != 0 or len(lines) != 3 or Path(lines[0]).resolve() != root.resolve():
        return {}
    top, commit, branch = lines
    return {GIT_COMMIT: commit} | ({GIT_BRANCH: branch} if branch != "HEAD" else {})


def check_system_metrics(enabled: bool) -> None:
    """A one-line error when system metrics are asked for and psutil is missing."""
    if enabled and importlib.util.find_spec("psutil") is None:
        raise PipelineError("tracking.system_metrics is true but psutil is not installed: pip install psutil")


@contextlib.contextmanager
def system_metrics(enabled: bool, tracking_uri: str, run_id: str) -> Iterator[None]:
    """MLflow's system metrics of this machine logged to ``run_id`` for the block, when ``enabled``
    (steps continue after the run's last one: a restarted trial resumes them)."""
    if not enabled:
        yield
        return
    from mlflow.system_metrics.system_metrics_monitor import SystemMetricsMonitor

    monitor = SystemMetricsMonitor(
        run_id, sampling_interval=SAMPLING_INTERVAL_S, resume_logging=True, tracking_uri=tracking_uri
    )
    monitor.start()
    try:
        yield
    finally:
        monitor.finish()
