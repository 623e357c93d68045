"""Starting or joining Ray, and checking that a trial's resource request can ever be scheduled."""

from __future__ import annotations

import logging
import os
from typing import Mapping

from pipeline.config import Resources
from pipeline.errors import PipelineError

# Keep Ray (and MLflow in Ray workers) from writing or phoning home outside the project.
QUIET_ENV = {
    "RAY_USAGE_STATS_ENABLED": "0",
    "RAY_AUTH_MODE": "disabled",
    "MLFLOW_DISABLE_TELEMETRY": "true",
    "RAY_AIR_NEW_OUTPUT": "0",  # the classic reporter stays silent at verbose=0 (we print our own lines)
    "TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S": "0",  # frequent small checkpoints are fine
}
PROJECT_PACKAGES = ("pipeline", "learners", "tasks", "deploy")


def connect(address: str | None, environ: Mapping[str, str]) -> None:
    """Join the Ray cluster at ``address`` (or ``RAY_ADDRESS``), else start a local one.

    A Ray already initialised in this process (a test session, a notebook) is used as is.
    """
    for key, value in QUIET_ENV.items():
        os.environ.setdefault(key, value)
    import ray

    if ray.is_initialized():
        return
    address = address or environ.get("RAY_ADDRESS")
    if address:
        import importlib

        modules = [importlib.import_module(name) for name in PROJECT_PACKAGES]
        ray.init(address=address, runtime_env={"py_modules": modules}, logging_level=logging.WARNING)
    else:
        ray.init(include_dashboard=False, logging_level=logging.WARNING)


def check_trial_resources(resources: Resources) -> None:
    """Refuse a per-trial request no alive node can satisfy: such trials would stay PENDING forever."""
    import ray

    nodes = [node["Resources"] for node in ray.nodes() if node.get("Alive")]
    for kind, field, flag in (("CPU", "cpu", "--cpus-per-trial"), ("GPU", "gpu", "--gpus-per-trial")):
        requested = getattr(resources, field)
        largest = max((node.get(kind, 0.0) for node in nodes), default=0.0)
        if requested > largest:
            total = sum(node.get(kind, 0.0) for node in nodes)
            raise PipelineError(
                f"search.resources.{field} asks for {requested:g} {kind}(s) per trial but the largest "
                f"Ray node has {largest:g} (cluster total {total:g}); lower it ({flag}) or join a "
                f"cluster that has them (--address)"
            )
