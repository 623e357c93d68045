"""Where a trial actually ran: node, resources held, device, as MLflow tags on its run.

Tags rather than params: a trial restarted after a failure may land on another node, and an
MLflow param cannot change once logged.
"""

from __future__ import annotations

import socket
from collections.abc import Mapping, Sequence

from pipeline.device import TrialDevice

TAG = "learn2tune."
DEVICE_WARNING_TAG = f"{TAG}device_warning"
DEVICE_ERROR_TAG = f"{TAG}device_error"


def gpu_ids() -> list[str]:
    """The GPU ids Ray assigned to this worker (empty outside Ray or without GPUs)."""
    import ray

    return [str(gpu) for gpu in ray.get_gpu_ids()] if ray.is_initialized() else []


def placement_tags(held_gpus: Sequence[str], env_names: Sequence[str], environ: Mapping[str, str]) -> dict[str, str]:
    """Node id/IP/host, the resources and GPU ids this worker holds, and which forwarded
    variables its environment has (names only, never values)."""
    import ray

    context = ray.get_runtime_context()
    held = {kind: amount for kind, amount in context.get_assigned_resources().items() if "_group_" not in kind}
    tags = {
        f"{TAG}node_id": context.get_node_id(),
        f"{TAG}node_ip": ray.util.get_node_ip_address(),
        f"{TAG}hostname": socket.gethostname(),
        f"{TAG}resources": ",".join(f"{kind}={amount:g}" for kind, amount in sorted(held.items())) or "none",
        f"{TAG}gpu_ids": ",".join(held_gpus) or "none",
    }
    if env_names:
        tags[f"{TAG}env_vars_present"] = ",".join(name for name in env_names if name in environ) or "none"
    return tags


def device_tags(device: TrialDevice) -> dict[str, str]:
    """The device trained on (``cuda:0`` / ``cpu``), its name, and the warning when a GPU held
    could not be used."""
    tags = {f"{TAG}device": str(device.device), f"{TAG}device_name": device.name}
    if device.warning:
        tags[DEVICE_WARNING_TAG] = device.warning
    return tags
