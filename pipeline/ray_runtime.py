"""Starting or joining Ray, and checking that a trial's resource request can ever be scheduled.

A wrong address, a forwarded variable missing on the driver and a request no node can hold are
each one line before any trial starts: ``ray.init`` itself would retry an unreachable head for
many minutes, and Tune would leave unschedulable trials PENDING forever.
"""

from __future__ import annotations

import logging
import os
import socket
import time
from collections.abc import Mapping, Sequence
from urllib.parse import urlsplit

from deploy.packages import PROJECT_PACKAGES
from pipeline.config import Resources
from pipeline.errors import PipelineError
from tasks.say import Say as Out

# Keep Ray (and MLflow in Ray workers) from writing or phoning home outside the project.
QUIET_ENV = {
    "RAY_USAGE_STATS_ENABLED": "0",
    "RAY_AUTH_MODE": "disabled",
    "MLFLOW_DISABLE_TELEMETRY": "true",
    "RAY_AIR_NEW_OUTPUT": "0",  # the classic reporter stays silent at verbose=0 (we print our own lines)
    "TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S": "0",  # frequent small checkpoints are fine
}
GCS_PORT, CLIENT_PORT = 6379, 10001  # Ray's defaults for host[:port] and ray://host[:port]
PROBE_TIMEOUT_S = 5.0
# An HTTP/2 client preface and an empty SETTINGS frame (9-byte header: length 0, type 4).
HTTP2_PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + b"\x00\x00\x00\x04\x00\x00\x00\x00\x00"
HTTP2_SETTINGS = 0x04  # frame type in byte 3 of a frame header
WAIT_POLL_S, WAIT_REPORT_S = 1.0, 15.0
KINDS = (("CPU", "cpu", "--cpus-per-trial"), ("GPU", "gpu", "--gpus-per-trial"))
# MLflow client settings a trial on another node lacks unless forwarded (the tracking URI
# itself travels in the config the trials get).
MLFLOW_CLIENT_SETTINGS = (
    "MLFLOW_TRACKING_TOKEN", "MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD",
    "MLFLOW_TRACKING_INSECURE_TLS", "MLFLOW_TRACKING_SERVER_CERT_PATH", "MLFLOW_TRACKING_CLIENT_CERT_PATH",
)  # fmt: skip


def connect(
    address: str | None, environ: Mapping[str, str], env_vars: Sequence[str] = (), out: Out | None = None
) -> None:
    """Join the Ray cluster at ``address`` (or ``RAY_ADDRESS``), else start a local one.

    The driver variables named in ``env_vars`` reach every trial through ``runtime_env``; only
    those, and their values are never printed. Joining a cluster, ``out`` gets a note for each
    MLflow client setting the driver has but does not forward. A Ray already initialised in
    this process (a test session, a notebook) is used as is, after the same checks.
    """
    forwarded = forwarded_env(env_vars, environ)
    address = address or environ.get("RAY_ADDRESS")
    if address:
        probe_address(address)
    for key, value in QUIET_ENV.items():
        os.environ.setdefault(key, value)
    import ray

    if ray.is_initialized():
        return
    kept_back = [name for name in MLFLOW_CLIENT_SETTINGS if name in environ and name not in forwarded]
    if address and kept_back and out is not None:
        out(f"note: {', '.join(kept_back)} set here but not in ray.env_vars: trials on other nodes do not get it")
    runtime_env: dict = {"env_vars": forwarded} if forwarded else {}
    try:
        if address:
            import importlib

            runtime_env["py_modules"] = [importlib.import_module(name) for name in PROJECT_PACKAGES]
            ray.init(address=address, runtime_env=runtime_env, logging_level=logging.WARNING)
        else:
            ray.init(include_dashboard=False, logging_level=logging.WARNING, runtime_env=runtime_env or None)
    except ConnectionError as exc:  # e.g. address "auto" with no cluster running here
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise PipelineError(
            f"cannot join a Ray cluster at {address} (ray.address / --address / RAY_ADDRESS): {reason}"
        ) from None


def forwarded_env(names: Sequence[str], environ: Mapping[str, str]) -> dict[str, str]:
    """``{name: value}`` of the named driver variables; an error naming the ones that are not set."""
    missing = [name for name in names if name not in environ]
    if missing:
        raise PipelineError(
            f"ray.env_vars names {', '.join(missing)}, not set in this environment; "
            "set it before starting learn2tune or remove it from ray.env_vars"
        )
    return {name: environ[name] for name in names}


def probe_address(address: str) -> None:
    """Make sure a Ray head answers at ``address``, within seconds where ``ray.init`` would retry
    for minutes: a TCP connection, then (for a GCS address) an HTTP/2 greeting, as the GCS
    speaks gRPC, and one call to the GCS.

    ``auto`` and ``local`` are left to Ray (it looks for a cluster started on this machine).
    """
    if address in ("auto", "local"):
        return
    host, port = _host_port(address)
    client = address.startswith("ray://")  # the Ray Client server, not the GCS
    where = f"the Ray cluster at {address} (ray.address / --address / RAY_ADDRESS)"
    try:
        with socket.create_connection((host, port), timeout=PROBE_TIMEOUT_S) as connection:
            grpc = client or _answers_http2(connection)
    except OSError as exc:
        reason = f"no answer within {PROBE_TIMEOUT_S:g} s" if isinstance(exc, TimeoutError) else _os_reason(exc)
        raise PipelineError(
            f"cannot reach {where}: {host}:{port} {reason}; is the head running (`ray start --head`) and the port open?"
        ) from None
    if client:
        return
    refusal = _gcs_refusal(f"{host}:{port}") if grpc else "it does not speak gRPC"
    if refusal:
        raise PipelineError(
            f"{where} is not a Ray head: {host}:{port} answers, but not as Ray's GCS ({refusal}); give the "
            "port of `ray start --head --port` (default 6379), not the dashboard's (8265)"
        )


def _answers_http2(connection: socket.socket) -> bool:
    """Whether the server answers an HTTP/2 client preface with a SETTINGS frame (gRPC servers
    do; HTTP/1 servers such as Ray's dashboard or MLflow answer otherwise or hang up)."""
    connection.sendall(HTTP2_PREFACE)
    header = b""
    try:
        while len(header) < 9 and (chunk := connection.recv(9 - len(header))):
            header += chunk
    except TimeoutError:
        return False
    return len(header) == 9 and header[3] == HTTP2_SETTINGS


def _gcs_refusal(address: str) -> str | None:
    """Why the GCS at ``address`` did not answer one call, or None when it did.

    Ray's C++ client logs a failed attempt straight to file descriptor 2: that line is kept out
    of the user's terminal (the error says it in one line).
    """
    import ray._raylet
    from ray.exceptions import RpcError

    saved = os.dup(2)
    try:
        with open(os.devnull, "w") as devnull:
            os.dup2(devnull.fileno(), 2)
            # Cython class, not in ray/_raylet.pyi: the one call that probes a GCS once, with a timeout.
            ray._raylet.InnerGcsClient.standalone(address, None, int(PROBE_TIMEOUT_S * 1000))  # type: ignore[attr-defined]
    except RpcError as exc:
        return str(exc).removeprefix("RPC error: ")
    finally:
        os.dup2(saved, 2)
        os.close(saved)
    return None


def _host_port(address: str) -> tuple[str, int]:
    """(host, port) of ``host[:port]`` (the GCS) or ``ray://host[:port]`` (the Ray Client server)."""
    scheme, _, rest = address.rpartition("://")
    parts = urlsplit(f"//{rest}")
    try:
        host, port = parts.hostname, parts.port
    except ValueError:  # a port that is not a number
        host = port = None
    if scheme not in ("", "ray") or not host or parts.path not in ("", "/"):
        raise PipelineError(f"ray.address must be host:port, ray://host:port or auto, got {address!r}")
    return host, port or (CLIENT_PORT if scheme == "ray" else GCS_PORT)


def _os_reason(exc: OSError) -> str:
    if isinstance(exc, socket.gaierror):
        return "is not a known host name"
    return (exc.strerror or str(exc)).lower()


def check_trial_resources(resources: Resources, out: Out = print, wait_seconds: float = 0) -> None:
    """Make sure some node can hold one trial: one now, one the autoscaler can add, or one that
    joins within ``wait_seconds``; otherwise an error (such trials would stay PENDING forever)."""
    shortfall = _shortfall(resources, _alive_nodes())
    if shortfall is None:
        return
    text, flag = shortfall
    groups = _autoscaler_groups()
    if groups:  # an autoscaler that publishes its node groups: is there one that fits?
        fitting = [name for name, group in groups.items() if _shortfall(resources, [group]) is None]
        if fitting:
            out(f"note: {text}; the autoscaler can add {fitting[0]} nodes, so the trials wait for them")
            return
        text += f", nor does any node group the autoscaler can add ({', '.join(groups)})"
    if wait_seconds <= 0:
        raise PipelineError(
            f"{text}; lower it ({flag}), join a cluster that has them (--address) "
            "or wait for such a node to join (--wait-for-resources SECONDS)"
        )
    _wait_for_node(resources, wait_seconds, out)


def _alive_nodes() -> list[dict[str, float]]:
    import ray

    return [node["Resources"] for node in ray.nodes() if node.get("Alive")]


def _shortfall(resources: Resources, nodes: list[dict[str, float]]) -> tuple[str, str] | None:
    """What no node offers (``search.resources.gpu asks for 1 GPU(s) per trial but ...``) and the
    flag that lowers it; None when some node holds one trial."""
    for kind, field, flag in KINDS:
        requested = getattr(resources, field)
        largest = max((node.get(kind, 0.0) for node in nodes), default=0.0)
        if requested > largest:
            total = sum(node.get(kind, 0.0) for node in nodes)
            text = (
                f"search.resources.{field} asks for {requested:g} {kind}(s) per trial but the largest "
                f"Ray node has {largest:g} (cluster total {total:g})"
            )
            return text, flag
    return None


def _autoscaler_groups() -> dict[str, dict[str, float]]:
    """Node groups the cluster's autoscaler can start (max count not 0) and their resources.

    Read from the cluster config an autoscaler publishes in the GCS (as Ray Data does to decide
    whether a cluster can scale); empty without one, or from an autoscaler that does not publish
    it (Ray 2.60's v1 autoscaler, the default of the cluster launcher and KubeRay): such a
    cluster needs ``wait_seconds``, during which the autoscaler is asked for a node.
    """
    import ray._private.state

    config = ray._private.state.state.get_cluster_config()
    groups = config.node_group_configs if config is not None else ()
    return {group.name or "unnamed": dict(group.resources) for group in groups if group.max_count != 0}


def _wait_for_node(resources: Resources, wait_seconds: float, out: Out) -> None:
    """Poll the cluster until a node that holds one trial is alive, with a progress line now and
    then; ask an autoscaler (if one listens) for such a node meanwhile."""
    from ray.autoscaler.sdk import request_resources

    bundle = {kind: getattr(resources, field) for kind, field, _ in KINDS if getattr(resources, field) > 0}
    start = time.monotonic()
    request_resources(bundles=[bundle])
    try:
        reported = -WAIT_REPORT_S
        while (shortfall := _shortfall(resources, _alive_nodes())) is not None:
            waited = time.monotonic() - start
            if waited >= wait_seconds:
                raise PipelineError(
                    f"{shortfall[0]} after waiting {wait_seconds:g} s for a node that can hold one trial "
                    "(--wait-for-resources / ray.wait_for_resources)"
                )
            if waited - reported >= WAIT_REPORT_S:
                out(f"waiting for a Ray node with {_bundle_text(bundle)}: {waited:.0f} of {wait_seconds:g} s")
                reported = waited
            time.sleep(WAIT_POLL_S)
        out(f"a Ray node with {_bundle_text(bundle)} joined after {time.monotonic() - start:.0f} s")
    finally:
        request_resources(bundles=[])


def _bundle_text(bundle: Mapping[str, float]) -> str:
    return " and ".join(f"{amount:g} {kind}" for kind, amount in bundle.items())
