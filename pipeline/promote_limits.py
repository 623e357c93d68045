"""Serving constraints on a promotion: a candidate slower or bigger than allowed is refused before
any scoring, with one line that says which bound it breaks and by how much.

The latency bound is on the p95 of the standard request (:mod:`pipeline.model_cost`), not the
p50: a latency budget is what most requests, the slow ones included, must meet; a median hides
the tail a serving system is judged by. A version registered before the cost tags existed is
measured now, in-process on this machine, and tagged with the figures (so it is measured once).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from pipeline.config import Config
from pipeline.errors import PipelineError
from pipeline.model_cost import ModelCost, measure_model, test_split
from pipeline.records import RegisteredVersion
from tasks.say import Say as Out

if TYPE_CHECKING:
    from mlflow import MlflowClient


@dataclass(frozen=True)
class Limits:
    """The bounds a candidate must meet (None: no bound) and where each was set, for the message."""

    max_latency_ms: float | None = None
    max_params: int | None = None
    latency_source: str = "--max-latency-ms"
    params_source: str = "--max-params"

    @classmethod
    def of(cls, config: Config, max_latency_ms: float | None, max_params: int | None) -> Limits:
        """The flags' bounds, else the config's (``registry.max_latency_ms``, ``registry.max_params``)."""
        for flag, value in (("--max-latency-ms", max_latency_ms), ("--max-params", max_params)):
            if value is not None and value <= 0:
                raise PipelineError(f"{flag} must be a positive number, got {value:g}")
        registry = config.registry
        return cls(
            max_latency_ms if max_latency_ms is not None else registry.max_latency_ms,
            max_params if max_params is not None else registry.max_params,
            "--max-latency-ms" if max_latency_ms is not None else "registry.max_latency_ms",
            "--max-params" if max_params is not None else "registry.max_params",
        )

    @property
    def any(self) -> bool:
        return self.max_latency_ms is not None or self.max_params is not None


def check_limits(client: MlflowClient, config: Config, version: RegisteredVersion, limits: Limits, out: Out) -> None:
    """Refuse ``version`` (a PipelineError) when it breaks one of ``limits``; nothing is changed then."""
    if not limits.any:
        return
    cost = version_cost(client, config, version, out)
    where = f"{version.name} version {version.number}"
    if limits.max_latency_ms is not None and cost.p95_ms > limits.max_latency_ms:
        raise PipelineError(
            f"{where} breaks {limits.latency_source} {limits.max_latency_ms:g}: its p95 is {cost.p95_ms:.2f} ms "
            f"({cost.request}, {cost.calls} calls on {cost.machine})"
        )
    if limits.max_params is not None and cost.params > limits.max_params:
        raise PipelineError(
            f"{where} breaks {limits.params_source} {limits.max_params}: it has {cost.params:,} parameters"
        )
    out(f"{where} is within the bounds: {cost.describe()}")


def version_cost(client: MlflowClient, config: Config, version: RegisteredVersion, out: Out) -> ModelCost:
    """The cost tagged on ``version``; measured now (and tagged) when it was registered without one."""
    found = client.get_model_version(version.name, version.number)
    cost = ModelCost.from_tags(dict(found.tags))
    if cost is not None:
        return cost
    out(f"{version.name} version {version.number} has no size or latency tags (registered before they were "
        "recorded): measuring it now on this machine")  # fmt: skip
    source = client.get_model_version_download_uri(version.name, version.number)
    cost = measure_model(source, config.tracking.uri, test_split(config), config.registry.latency_calls)
    for key, value in cost.to_tags().items():
        client.set_model_version_tag(version.name, version.number, key, value)
    return cost
