"""The pipeline configuration: a YAML file plus command-line overrides, validated once, up front.

Every field has a default, so a file can be three lines long. :func:`load_config` returns a
resolved :class:`Config`: derived defaults filled in (dataset dir, tracking URI, experiment
and model names) and every path absolute, so stages and Ray workers (which run in other
directories) all see the same locations.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from pipeline import tracking as mlflow_tracking
from pipeline.errors import ConfigError
from pipeline.schema import (
    Boolean,
    Integer,
    ListOf,
    Number,
    OneOf,
    Optional,
    Table,
    Text,
    parse,
    section,
    setting,
)
from tasks import sources, storage
from tasks.storage import Location

DEFAULT_GRACE_FRACTION = 0.25  # of search.max_iterations (100 of the default 400)
NAME = Text(r"[A-Za-z0-9][A-Za-z0-9._-]*", "a name of letters, digits, '.', '_' or '-'")
ENV_NAME = Text(r"[A-Za-z_][A-Za-z0-9_]*", "an environment variable name (letters, digits, '_')")


@dataclass(frozen=True)
class DataConfig:
    """How to build the episodic dataset (``tasks.build.BuildSpec``) and where it lives."""

    source: str = setting("synthetic", Text())  # a name in tasks.sources, checked by _validate
    path: str | None = setting(None, Optional(Text()))
    split: str = setting("random", OneOf(("random", "by-alphabet")))
    # a class count, or a fraction of the classes; null: the source's default
    val_classes: float | None = setting(None, Optional(Number(0, positive=True)))
    test_classes: float | None = setting(None, Optional(Number(0, positive=True)))
    rotations: bool = setting(False, Boolean())
    image_size: int = setting(28, Integer(4))
    # 1 (grey), 3 (RGB), auto (1 when every image is grey); null: auto for folders, else 1
    channels: int | str | None = setting(None, Optional(OneOf((1, 3, "auto"))))
    seed: int | None = setting(None, Optional(Integer(0)))  # null: the top-level seed
    synthetic_classes: int = setting(400, Integer(3))
    synthetic_images_per_class: int = setting(20, Integer(2))
    skip_unreadable: bool = setting(False, Boolean())  # folder: skip and count files Pillow cannot read
    dir: str = setting("", Optional(Text(), null=""))  # "" (or null): <workdir>/datasets/<name>


@dataclass(frozen=True)
class TrainEpisodes:
    ways: int = setting(5, Integer(2))
    shots: int = setting(1, Integer(1))
    query: int = setting(15, Integer(1))


@dataclass(frozen=True)
class ValEpisodes:
    episodes: int = setting(100, Integer(1))


@dataclass(frozen=True)
class TestEpisodes:
    ways: tuple[int, ...] = setting((5,), ListOf(Integer(2)))
    shots: tuple[int, ...] = setting((1,), ListOf(Integer(1)))
    query: int = setting(15, Integer(1))
    episodes: int = setting(600, Integer(1))

    def settings(self) -> list[tuple[int, int]]:
        """Every (ways, shots) pair to evaluate; the first is the primary one."""
        return [(w, s) for w in self.ways for s in self.shots]


@dataclass(frozen=True)
class EpisodesConfig:
    train: TrainEpisodes = section(TrainEpisodes)
    meta_batch: int = setting(8, Integer(1))
    val: ValEpisodes = section(ValEpisodes)
    test: TestEpisodes = section(TestEpisodes)


@dataclass(frozen=True)
class Resources:
    cpu: float = setting(1, Number(0, positive=True))
    gpu: float = setting(0, Number(0))


@dataclass(frozen=True)
class SearchConfig:
    families: tuple[str, ...] = setting(("protonet", "maml"), ListOf(Text()))
    trials: int = setting(8, Integer(1))
    max_iterations: int = setting(400, Integer(1))
    # ASHA's grace period: meta-iterations, or a fraction of max_iterations; null: a quarter of them
    grace_iterations: int | float | None = setting(None, Optional(Number(0, positive=True)))
    eval_every: int = setting(50, Integer(1))
    checkpoint_every: int = setting(50, Integer(1))
    max_concurrent: int | None = setting(None, Optional(Integer(1)))
    fixed: dict = setting({}, Table())
    # per family, searched knobs' values for its first trial (e.g. the paper's): {maml: {inner_lr: 0.4}}
    points_to_evaluate: dict = setting({}, Table())
    resources: Resources = section(Resources)
    max_failures: int = setting(1, Integer(0))
    # how trials get the dataset: one shared object-store copy per node, or each its own (pipeline/trial_data.py)
    data: str = setting("object-store", OneOf(("object-store", "storage")))


@dataclass(frozen=True)
class RayConfig:
    address: str | None = setting(None, Optional(Text()))
    # driver environment variables the trials get (runtime_env env_vars), by name; values are never logged
    env_vars: tuple[str, ...] = setting((), ListOf(ENV_NAME, empty=True))
    # seconds the search waits for nodes that can hold one trial (0: refuse at once unless an autoscaler can add them)
    wait_for_resources: float = setting(0, Number(0))


@dataclass(frozen=True)
class TrackingConfig:
    # "" (or null) until load_config fills them in: MLFLOW_TRACKING_URI or sqlite:///mlflow.db; the config's name
    uri: str = setting("", Optional(Text(), null=""))
    experiment: str = setting("", Optional(Text(), null=""))


@dataclass(frozen=True)
class StorageConfig:
    """Where remote ``workdir``/``data.dir`` URIs live: an S3-compatible endpoint (MinIO, moto...)."""

    # null: AWS_ENDPOINT_URL_S3, else AWS_ENDPOINT_URL, else AWS itself
    endpoint_url: str | None = setting(None, Optional(Text()))


@dataclass(frozen=True)
class RegistryConfig:
    model_name: str = setting("", Optional(NAME, null=""))  # "" (or null): load_config uses the config's name
    top_k: int = setting(1, Integer(1))
    best_per_family: bool = setting(False, Boolean())  # also evaluate each family's best trial


@dataclass(frozen=True)
class Config:
    name: str = setting("quickstart", NAME)
    seed: int = setting(0, Integer(0))
    workdir: str = setting("runs", Text())
    data: DataConfig = section(DataConfig)
    episodes: EpisodesConfig = section(EpisodesConfig)
    search: SearchConfig = section(SearchConfig)
    ray: RayConfig = section(RayConfig)
    tracking: TrackingConfig = section(TrackingConfig)
    registry: RegistryConfig = section(RegistryConfig)
    storage: StorageConfig = section(StorageConfig)
    device: str = setting("auto", OneOf(("auto", "cpu", "cuda")))

    @property
    def dataset_dir(self) -> str:
        """The dataset directory as given: a local path or a storage URI."""
        return self.data.dir

    @property
    def dataset_location(self) -> Location:
        return storage.resolve(self.data.dir, self.storage.endpoint_url)

    @property
    def tune_location(self) -> Location:
        """Where Tune keeps its experiments: ``<workdir>/tune``."""
        return storage.resolve(self.workdir, self.storage.endpoint_url).child("tune")

    @property
    def experiment_location(self) -> Location:
        """The Tune experiment directory: ``<workdir>/tune/<name>``."""
        return self.tune_location.child(self.name)

    @property
    def experiment_dir(self) -> Path:
        """The Tune experiment directory of a local ``workdir`` (a remote one has no Path:
        use :attr:`experiment_location`)."""
        if storage.is_remote(self.workdir):
            raise ValueError(f"workdir {self.workdir} is remote; use Config.experiment_location")
        return Path(self.workdir) / "tune" / self.name

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


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
        _assign(raw, key, value)
    config = parse(Config, raw)
    _validate(config)
    return _resolve(config, cwd, environ)


def parse_assignment(text: str) -> tuple[str, Any]:
    """``section.key=value`` from ``--set`` as a (key, value) pair; the value is a YAML scalar."""
    key, sep, value = text.partition("=")
    if not sep or not key.strip():
        raise ConfigError(f"--set expects section.key=value, got {text!r}")
    return key.strip(), parse_scalar(value)


class _Loader(yaml.SafeLoader):
    """PyYAML's safe loader, reading ``1e-3`` and ``1.0e30`` as floats as YAML 1.2 does.

    YAML 1.1 (PyYAML's default) wants a dot and a signed exponent, so a learning rate written
    ``1e-3`` would arrive as the string "1e-3".
    """


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:[0-9][0-9_]*(?:\.[0-9_]*)?|\.[0-9_]+)[eE][-+]?[0-9]+$"),
    list("-+0123456789."),
)


def parse_scalar(text: str) -> Any:
    """A command-line value read as YAML (``5`` -> 5, ``true`` -> True, ``[1, 5]`` -> list)."""
    try:
        return yaml.load(text, Loader=_Loader) if text.strip() else None
    except yaml.YAMLError:
        return text


def parse_list(text: str) -> list[Any]:
    """A comma-separated command-line list, each item a YAML scalar (``5,20`` -> [5, 20])."""
    return [parse_scalar(item) for item in text.split(",")]


def read_yaml(path: Path) -> dict:
    """The mapping in YAML file ``path`` (YAML 1.2 floats); ConfigError naming the file otherwise."""
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise ConfigError(f"config file {path} does not exist") from None
    except OSError as exc:
        raise ConfigError(f"cannot read config file {path}: {exc.strerror}") from None
    try:
        data = yaml.load(text, Loader=_Loader)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" (line {mark.line + 1})" if mark is not None else ""
        raise ConfigError(f"{path} is not valid YAML{where}: {getattr(exc, 'problem', exc)}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path} must hold a mapping of sections, got {type(data).__name__}")
    return data


def _assign(raw: dict, dotted: str, value: Any) -> None:
    parts = dotted.split(".")
    if not all(parts):
        raise ConfigError(f"--set key {dotted!r} is not a dotted field name")
    node = raw
    for depth, part in enumerate(parts[:-1]):
        child = node.setdefault(part, {})
        if child is None:
            child = node[part] = {}
        if not isinstance(child, dict):
            raise ConfigError(f"cannot set {dotted}: {'.'.join(parts[: depth + 1])} is not a section")
        node = child
    node[parts[-1]] = value


def _validate(config: Config) -> None:
    """Checks that involve more than one field, or the source and learner registries."""
    try:
        sources.check_source_name(config.data.source)
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    search = config.search
    grace = search.grace_iterations
    if isinstance(grace, float) and not grace < 1:
        raise ConfigError(
            f"search.grace_iterations must be a count of meta-iterations (an integer) or a fraction of "
            f"search.max_iterations in (0, 1), got {grace!r}"
        )
    if grace_iterations(search) > search.max_iterations:
        raise ConfigError(
            f"search.grace_iterations ({grace}) must be <= search.max_iterations ({search.max_iterations}); "
            "lower it, give it as a fraction of max_iterations (0.25) or leave it unset (a quarter)"
        )
    if search.eval_every > search.max_iterations:
        raise ConfigError(
            f"search.eval_every ({search.eval_every}) must be <= search.max_iterations ({search.max_iterations})"
        )
    if search.checkpoint_every % search.eval_every:
        raise ConfigError(
            f"search.checkpoint_every ({search.checkpoint_every}) must be a multiple of "
            f"search.eval_every ({search.eval_every}): checkpoints are saved with val reports"
        )
    for field, uri in (("workdir", config.workdir), ("data.dir", config.data.dir)):
        try:
            storage.check_scheme(uri or "", field)
        except storage.StorageError as exc:
            raise ConfigError(str(exc)) from None
    if search.resources.gpu > 0 and config.device == "cpu":
        raise ConfigError(f"search.resources.gpu is {search.resources.gpu:g} but device is 'cpu'")
    _validate_families(search)


def grace_iterations(search: SearchConfig) -> int:
    """ASHA's grace period in meta-iterations: as given, a fraction of ``max_iterations``, or a quarter."""
    grace = DEFAULT_GRACE_FRACTION if search.grace_iterations is None else search.grace_iterations
    return max(1, round(grace * search.max_iterations)) if isinstance(grace, float) else grace


def _validate_families(search: SearchConfig) -> None:
    from learners.registry import HyperparamError, UnknownFamilyError, family_names, make_hparams

    known = family_names()
    names = known if search.families == ("all",) else search.families
    for name in names:
        if name not in known:
            raise ConfigError(
                f"search.families: unknown learner family {name!r}; choose from: 'all', {', '.join(known)}"
            )
    for family, values in search.fixed.items():
        if family not in known:
            raise ConfigError(
                f"search.fixed.{family}: unknown learner family {family!r}; choose from: {', '.join(known)}"
            )
        if not isinstance(values, dict):
            raise ConfigError(f"search.fixed.{family} must be a mapping of hyperparameters, got {values!r}")
        try:
            make_hparams(family, values)
        except (HyperparamError, UnknownFamilyError) as exc:
            raise ConfigError(f"search.fixed.{family}: {exc}") from None
    _validate_points(search, tuple(names))


def _validate_points(search: SearchConfig, families: tuple[str, ...]) -> None:
    """Each point names a searched family and values its search space can draw."""
    from pipeline.space import contains, searched_space

    for family, values in search.points_to_evaluate.items():
        field = f"search.points_to_evaluate.{family}"
        if family not in families:
            raise ConfigError(f"{field}: {family!r} is not searched; search.families is {', '.join(families)}")
        if not isinstance(values, dict):
            raise ConfigError(f"{field} must be a mapping of searched hyperparameters, got {values!r}")
        space = searched_space(family, search.fixed)
        for param, value in values.items():
            if param not in space:
                raise ConfigError(
                    f"{field}.{param}: not a searched hyperparameter of {family} (fixed ones are left out); "
                    f"choose from: {', '.join(space)}"
                )
            if not contains(space[param], value):
                raise ConfigError(f"{field}.{param}: {value!r} is outside its search space {space[param]}")


def _resolve(config: Config, cwd: Path, environ: Mapping[str, str]) -> Config:
    """Fill derived defaults and make every path absolute."""
    from learners.registry import family_names

    workdir = _absolute_storage(config.workdir, cwd)
    data = config.data
    data = dataclasses.replace(
        data,
        path=str(_absolute(data.path, cwd)) if data.path is not None else None,
        dir=_absolute_storage(data.dir, cwd) if data.dir else f"{workdir}/datasets/{config.name}",
        seed=config.seed if data.seed is None else data.seed,
    )
    families = tuple(family_names()) if config.search.families == ("all",) else config.search.families
    search = dataclasses.replace(
        config.search, families=tuple(dict.fromkeys(families)), grace_iterations=grace_iterations(config.search)
    )
    tracking = dataclasses.replace(
        config.tracking,
        uri=mlflow_tracking.resolve_uri(config.tracking.uri, environ, cwd),
        experiment=config.tracking.experiment or config.name,
    )
    registry = dataclasses.replace(config.registry, model_name=config.registry.model_name or config.name)
    # Resolved on the driver, so trials on nodes without these variables reach the same endpoint.
    endpoint = storage.endpoint(config.storage.endpoint_url, environ)
    return dataclasses.replace(
        config,
        workdir=workdir,
        data=data,
        search=search,
        tracking=tracking,
        registry=registry,
        storage=dataclasses.replace(config.storage, endpoint_url=endpoint),
    )


def _absolute(path: str, cwd: Path) -> Path:
    p = Path(path).expanduser()
    return p if p.is_absolute() else cwd / p


def _absolute_storage(where: str, cwd: Path) -> str:
    """A storage URI as is (without a trailing ``/``), a local path made absolute."""
    return where.rstrip("/") if storage.is_remote(where) else str(_absolute(where, cwd))
