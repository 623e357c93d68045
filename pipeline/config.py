"""The pipeline configuration: a YAML file plus command-line overrides, validated once, up front.

:func:`load_config` reads the file (:mod:`pipeline.config_text`), applies the overrides,
parses the sections (:mod:`pipeline.config_model`, on pydantic), runs the checks that span
fields (:mod:`pipeline.config_checks`) and returns a resolved :class:`Config`: derived defaults
filled in (dataset dir, tracking URI, experiment and model names) and every path absolute, so
stages and Ray workers (which run in other directories) all see the same locations.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from pipeline import config_checks, study, tracking
from pipeline.config_model import Config, DataConfig, Resources, grace_iterations
from pipeline.config_text import assign, parse_assignment, parse_list, parse_scalar, read_yaml
from pipeline.schema import parse
from tasks import storage

__all__ = [
    "Config",
    "DataConfig",
    "Resources",
    "load_config",
    "parse_assignment",
    "parse_list",
    "parse_scalar",
    "read_yaml",
]


def load_config(
    path: str | Path | None,
    overrides: Iterable[tuple[str, Any]] = (),
    *,
    cwd: Path,
    environ: Mapping[str, str],
) -> Config:
    """The validated, resolved config from ``path`` (None: all defaults) and ``overrides``.

    ``overrides`` are ``(dotted.key, value)`` pairs applied on top of the file.
    """
    raw = read_yaml(Path(path)) if path is not None else {}
    for key, value in overrides:
        assign(raw, key, value)
    config = parse(Config, raw)
    config_checks.validate(config)
    return _resolve(config, cwd, environ)


def _resolve(config: Config, cwd: Path, environ: Mapping[str, str]) -> Config:
    """Fill derived defaults and make every path absolute (the values are checked already)."""
    from learners.registry import family_names

    workdir = _absolute_storage(config.workdir, cwd)
    data = config.data
    from learners.backbones import backbone_names

    families = tuple(family_names()) if config.search.families == ("all",) else config.search.families
    backbones = backbone_names() if config.search.backbones == ("all",) else config.search.backbones
    # Resolved on the driver, so trials on nodes without these variables reach the same endpoint.
    endpoint = storage.endpoint(config.storage.endpoint_url, environ)
    changes = {
        "workdir": workdir,
        "data": data.model_copy(
            update={
                "path": str(_absolute(data.path, cwd)) if data.path is not None else None,
                "dir": _absolute_storage(data.dir, cwd) if data.dir else f"{workdir}/datasets/{config.name}",
                "seed": config.seed if data.seed is None else data.seed,
            }
        ),
        "search": config.search.model_copy(
            update={
                "families": tuple(dict.fromkeys(families)),
                "backbones": tuple(dict.fromkeys(backbones)),
                "grace_iterations": grace_iterations(config.search),
                "study_storage": study.resolve_storage(config.search.study_storage, workdir, config.name, cwd),
            }
        ),
        "tracking": config.tracking.model_copy(
            update={
                "uri": tracking.resolve_uri(config.tracking.uri, environ, cwd),
                "experiment": config.tracking.experiment or config.name,
            }
        ),
        "registry": config.registry.model_copy(update={"model_name": config.registry.model_name or config.name}),
        "storage": config.storage.model_copy(update={"endpoint_url": endpoint}),
    }
    return config.model_copy(update=changes)


def _absolute(path: str, cwd: Path) -> Path:
    p = Path(path).expanduser()
    return p if p.is_absolute() else cwd / p


def _absolute_storage(where: str, cwd: Path) -> str:
    """A storage URI as is (without a trailing ``/``), a local path made absolute."""
    return where.rstrip("/") if storage.is_remote(where) else str(_absolute(where, cwd))
