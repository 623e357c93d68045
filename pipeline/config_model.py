"""The pipeline configuration's sections, as pydantic models: every field, its type, range and default.

Every field has a default, so a file can be three lines long. Checks that span fields or need
the learner registry are in :mod:`pipeline.config_checks`; the ``data`` section's are
``tasks.build.validate_build_spec``'s (one place, shared with the build stage).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import Field, SkipValidation

from pipeline.schema import Boolean, Count, Derived, Integer, ListOf, ListOrEmpty, Number, Section, Table, Text
from pipeline.time_budget import FORMS
from tasks import storage
from tasks.build import BuildSpec
from tasks.storage import Location

DEFAULT_GRACE_FRACTION = 0.25  # of search.max_iterations (100 of the default 400)

Name = Annotated[
    str, Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$", description="a name of letters, digits, '.', '_' or '-'")
]
EnvName = Annotated[
    str, Field(pattern=r"^[A-Za-z_][A-Za-z0-9_]*$", description="an environment variable name (letters, digits, '_')")
]
Ways = Annotated[Integer, Field(ge=2)]


class DataConfig(Section):
    """How to build the episodic dataset (``tasks.build.BuildSpec``) and where it lives.

    The build fields are taken as given and checked by ``validate_build_spec`` when the config
    loads; only ``seed`` and ``dir``, which are the config's own, are checked here.
    """

    source: SkipValidation[str] = "synthetic"  # synthetic | omniglot | folder
    path: SkipValidation[str | None] = None
    split: SkipValidation[str | None] = None  # random | by-alphabet | csv; null: the source's own (csv-split: csv)
    # a class count, or a fraction of the classes; null: the source's default
    val_classes: SkipValidation[int | float | None] = None
    test_classes: SkipValidation[int | float | None] = None
    rotations: SkipValidation[bool] = False
    image_size: SkipValidation[int] = 28
    # 1 (grey), 3 (RGB), auto (1 when every image is grey); null: auto for folders, else 1
    channels: SkipValidation[int | str | None] = None
    seed: Annotated[Integer, Field(ge=0)] | None = None  # null: the top-level seed
    synthetic_classes: SkipValidation[int] = 400
    synthetic_images_per_class: SkipValidation[int] = 20
    skip_unreadable: SkipValidation[bool] = False  # folder: skip and count files Pillow cannot read
    dir: Derived = ""  # unset: <workdir>/datasets/<name>

    def build_spec(self, default_seed: int = 0) -> BuildSpec:
        """The ``BuildSpec`` of this section (every field but ``dir``); ``default_seed`` when ``seed`` is null."""
        values = {f.name: getattr(self, f.name) for f in dataclasses.fields(BuildSpec)}
        return BuildSpec(**{**values, "seed": default_seed if self.seed is None else self.seed})


class TrainEpisodes(Section):
    ways: Ways = 5
    shots: Count = 1
    query: Count = 15


class ValEpisodes(Section):
    episodes: Count = 100


class TestEpisodes(Section):
    ways: ListOf[Ways] = (5,)
    shots: ListOf[Count] = (1,)
    query: Count = 15
    episodes: Count = 600

    def settings(self) -> list[tuple[int, int]]:
        """Every (ways, shots) pair to evaluate; the first is the primary one."""
        return [(w, s) for w in self.ways for s in self.shots]


class EpisodesConfig(Section):
    train: TrainEpisodes = TrainEpisodes()
    meta_batch: Count = 8
    val: ValEpisodes = ValEpisodes()
    test: TestEpisodes = TestEpisodes()


class Resources(Section):
    cpu: Annotated[Number, Field(gt=0)] = 1
    gpu: Annotated[Number, Field(ge=0)] = 0


class SearchConfig(Section):
    families: ListOf[Text] = ("protonet", "maml")
    # the backbones the families that search `backbone` draw from (learners/backbones), or all
    backbones: ListOf[Text] = ("conv4",)
    trials: Count | None = 8  # null: no cap (needs search.time_budget)
    max_iterations: Count = 400
    # ASHA's grace period: meta-iterations, or a fraction of max_iterations; null: a quarter of them
    grace_iterations: Annotated[Number, Field(gt=0)] | None = None
    eval_every: Count = 50
    checkpoint_every: Count = 50
    max_concurrent: Count | None = None
    fixed: Table = {}
    # per family, searched knobs' values for its first trial (e.g. the paper's): {maml: {inner_lr: 0.4}}
    points_to_evaluate: Table = {}
    resources: Resources = Resources()
    max_failures: Annotated[Integer, Field(ge=0)] = 1
    # how trials get the dataset: one shared object-store copy per node, or each its own (pipeline/trial_data.py)
    data: Literal["object-store", "storage"] = "object-store"
    # the Optuna study's database (a SQLAlchemy URL); null: <workdir>/tune/<name>/optuna.db (pipeline/study.py)
    study_storage: Text | None = None
    # past searches seeding this one: MLflow experiment names, or auto (every finished search); null: none
    warm_start: Literal["auto"] | ListOf[Text] | None = None
    # the search's wall time: 90s, 30m, 2h, 1h30m or seconds; then no new trial, running ones checkpoint and end
    time_budget: Annotated[Text | Number | None, Field(description=FORMS)] = None


class RayConfig(Section):
    address: Text | None = None
    # driver environment variables the trials get (runtime_env env_vars), by name; values are never logged
    env_vars: ListOrEmpty[EnvName] = ()
    # seconds the search waits for nodes that can hold one trial (0: refuse at once unless an autoscaler can add them)
    wait_for_resources: Annotated[Number, Field(ge=0)] = 0


class TrackingConfig(Section):
    uri: Derived = ""
    experiment: Derived = ""
    # MLflow's system/... metrics (CPU, memory, disk, network) on each trial run; needs psutil
    system_metrics: Boolean = False


class StorageConfig(Section):
    """Where remote ``workdir``/``data.dir`` URIs live: an S3-compatible endpoint (MinIO, moto...)."""

    # null: AWS_ENDPOINT_URL_S3, else AWS_ENDPOINT_URL, else AWS itself
    endpoint_url: Text | None = None


class RegistryConfig(Section):
    model_name: Annotated[
        Derived,
        Field(
            pattern=r"^([A-Za-z0-9][A-Za-z0-9._-]*)?$",
            description="null or a name of letters, digits, '.', '_' or '-'",
        ),
    ] = ""  # unset: the config's name
    top_k: Count = 1
    best_per_family: Boolean = False  # also evaluate each family's best trial
    max_latency_ms: Annotated[Number, Field(gt=0)] | None = None  # promote refuses a slower p95; null: no bound
    max_params: Annotated[Integer, Field(ge=1)] | None = None  # promote refuses a bigger model; null: no bound
    latency_calls: Annotated[Integer, Field(ge=5)] = 50  # timed calls of register's latency measurement


class Config(Section):
    name: Name = "quickstart"
    seed: Annotated[Integer, Field(ge=0)] = 0
    workdir: Text = "runs"
    data: DataConfig = DataConfig()
    episodes: EpisodesConfig = EpisodesConfig()
    search: SearchConfig = SearchConfig()
    ray: RayConfig = RayConfig()
    tracking: TrackingConfig = TrackingConfig()
    registry: RegistryConfig = RegistryConfig()
    storage: StorageConfig = StorageConfig()
    device: Literal["auto", "cpu", "cuda"] = "auto"

    @property
    def dataset_dir(self) -> str:
        """The dataset directory as given: a local path or a storage URI."""
        return self.data.dir or ""

    @property
    def dataset_location(self) -> Location:
        return storage.resolve(self.dataset_dir, self.storage.endpoint_url)

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
        return self.model_dump()


def grace_iterations(search: SearchConfig) -> int:
    """ASHA's grace period in meta-iterations: as given, a fraction of ``max_iterations``, or a quarter."""
    grace = DEFAULT_GRACE_FRACTION if search.grace_iterations is None else search.grace_iterations
    return max(1, round(grace * search.max_iterations)) if isinstance(grace, float) else grace
