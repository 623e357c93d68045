"""The promote stage: a champion gate between the ``candidate`` and the ``champion`` alias.

Both model versions are scored on the same fixed-seed test-split episodes (the evaluate stage's
episodes: ``episodes.test`` settings and ``seed``), so the comparison is paired: the decision
rests on the mean per-episode difference, reported with its 95% confidence interval. The
``champion`` alias moves to the candidate only when the candidate's accuracy is higher (or with
``force``); versions are never deleted. Each promote is an MLflow run with the paired
comparison (:mod:`pipeline.promotion_artifacts`); the decision and both accuracies are tags
on the versions, and the candidate's description says why the alias moved or stayed.

Models built on different datasets (fingerprints) or for a different primary (ways, shots)
setting are not compared: that is refused with the reason, and ``force`` moves the alias
without a comparison, saying so in the tags. A candidate over a serving bound (latency,
parameters: :mod:`pipeline.promote_limits`) is refused before anything is scored.
"""

from __future__ import annotations

import datetime
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TextIO

import numpy as np

from pipeline import datasets, promotion_artifacts, tracking
from pipeline.config import Config
from pipeline.device import pick_device
from pipeline.errors import PipelineError
from pipeline.evaluate import setting_key, tasks_per_batch
from pipeline.promote_limits import Limits, check_limits
from pipeline.records import RegisteredVersion
from pipeline.register import ALIAS as CANDIDATE
from pipeline.scoring import episode_accuracies, mean_ci95
from pipeline.scoring_progress import ScoringProgress
from tasks.episodes import EpisodeSpec
from tasks.sampler import fixed_episodes
from tasks.say import Say as Out

if TYPE_CHECKING:
    from mlflow import MlflowClient
    from mlflow.entities.model_registry import ModelVersion

    from learners.base import Learner

CHAMPION = "champion"
TAG_PREFIX = "promotion."


@dataclass(frozen=True)
class Setting:
    """What two versions must share to be compared: the data and the primary episode shape."""

    fingerprint: str
    ways: int
    shots: int

    @classmethod
    def of(cls, version: RegisteredVersion) -> Setting:
        return cls(version.tags.dataset_fingerprint, version.tags.ways, version.tags.shots)

    def differences(self, other: Setting) -> list[str]:
        return [
            f"{what} {mine} vs {theirs}"
            for what, mine, theirs in (
                ("dataset fingerprint", self.fingerprint, other.fingerprint),
                ("ways", self.ways, other.ways),
                ("shots", self.shots, other.shots),
            )
            if mine != theirs
        ]


def promote(
    config: Config,
    out: Out,
    candidate: str | None = None,
    force: bool = False,
    stream: TextIO | None = None,
    limits: Limits | None = None,
) -> dict[str, Any]:
    """Gate ``candidate`` (a version number; default: the ``candidate`` alias) against the champion.
    ``stream`` (a terminal) shows each version's scoring as a progress bar; a candidate that breaks
    ``limits`` (default: the config's) is refused first."""
    client = tracking.make_client(config.tracking.uri)
    name = config.registry.model_name
    tracking.check_registered_model(client, name, config.tracking.uri)
    challenger = _version(client, name, candidate)
    check_limits(client, config, challenger, limits or Limits.of(config, None, None), out)
    champion = _alias_version(client, name, CHAMPION)
    if champion is not None and champion.number == challenger.number:
        out(f"{name} version {challenger.number} is already the champion; nothing to do")
        return {"name": name, "decision": "already champion", "champion": challenger.number}

    setting = Setting.of(challenger)
    differences = setting.differences(Setting.of(champion)) if champion is not None else []
    if champion is not None and differences and not force:  # differences need a champion
        raise PipelineError(
            f"cannot compare {name} version {challenger.number} with champion version {champion.number}: "
            f"{'; '.join(differences)}. Compare models of one dataset and setting, or pass --force to move "
            "the champion alias without a comparison"
        )
    comparable = not differences
    versions = [challenger] + ([champion] if champion and comparable else [])
    scores = _score(config, client, name, setting, versions, out, stream)
    challenger_acc = scores[challenger.number]
    champion_acc = scores.get(champion.number) if champion is not None else None

    if champion is None:
        decision, promoted = "first champion", True
    elif champion_acc is None:
        decision, promoted = f"forced; not compared ({'; '.join(differences)})", True
    else:
        better = challenger_acc.mean() > champion_acc.mean()
        promoted = better or force
        decision = "promoted" if better else ("forced" if force else f"kept version {champion.number}")

    record = _record(setting, config, challenger, challenger_acc, champion, champion_acc, decision)
    experiment_id = tracking.ensure_experiment(client, config.tracking.experiment, config.tracking.uri)
    record["run_id"] = promotion_artifacts.log_promotion(
        client, experiment_id, name, record, challenger_acc, champion_acc
    )
    for key, value in promotion_artifacts.version_tags(record).items():
        client.set_model_version_tag(name, challenger.number, key, value)
    _describe(client, name, challenger.number, promotion_artifacts.description(record, promoted))
    if champion is not None:
        role = "replaced_by" if promoted else "defended_against"
        client.set_model_version_tag(name, champion.number, f"{TAG_PREFIX}{role}", challenger.number)
    if promoted:
        client.set_registered_model_alias(name, CHAMPION, challenger.number)
    _report(name, challenger, champion, record, promoted, out)
    holder = challenger.number if promoted or champion is None else champion.number
    return {"name": name, "champion": holder, **record}


def _describe(client: MlflowClient, name: str, version: str, line: str) -> None:
    """Add ``line`` to the version's description (each promote of a version adds one)."""
    earlier = client.get_model_version(name, version).description or ""
    client.update_model_version(name, version, description=f"{earlier}\n\n{line}".strip())


def _version(client: MlflowClient, name: str, version: str | None) -> RegisteredVersion:
    from mlflow.exceptions import MlflowException

    if version is None:
        candidate = _alias_version(client, name, CANDIDATE)
        if candidate is None:
            raise PipelineError(
                f"model {name!r} has no version with alias {CANDIDATE!r}; run `learn2tune register` first"
            )
        return candidate
    try:
        found = client.get_model_version(name, str(version))
    except MlflowException:
        raise PipelineError(f"model {name!r} has no version {version}") from None
    return _record_of(found)


def _alias_version(client: MlflowClient, name: str, alias: str) -> RegisteredVersion | None:
    from mlflow.exceptions import MlflowException

    try:
        found = client.get_model_version_by_alias(name, alias)
    except MlflowException:
        return None
    return _record_of(found)


def _record_of(version: ModelVersion) -> RegisteredVersion:
    return RegisteredVersion.from_tags(version.name, version.version, version.tags)


def _score(
    config: Config,
    client: MlflowClient,
    name: str,
    setting: Setting,
    versions: list[RegisteredVersion],
    out: Out,
    stream: TextIO | None,
) -> dict[str, np.ndarray]:
    """Per-episode test accuracies of every version on one list of fixed-seed episodes."""
    store = datasets.open_dataset(config)
    if store.fingerprint != setting.fingerprint:
        raise PipelineError(
            f"the dataset in {config.dataset_dir} (fingerprint {store.fingerprint}) is not the one {name} "
            f"version {versions[0].number} was trained on ({setting.fingerprint}); point the config at that dataset"
        )
    spec = EpisodeSpec(setting.ways, setting.shots, config.episodes.test.query)
    datasets.check_episode(store, "test", spec, f"{name} version {versions[0].number}'s setting")
    episodes = list(  # every version scores the same list
        fixed_episodes(
            store.split("test"),
            spec,
            config.episodes.test.episodes,
            seed=config.seed,
            batch_tasks=tasks_per_batch(spec),
        )
    )
    out(
        f"promote {name}: scoring version(s) {', '.join(v.number for v in versions)} on the same "
        f"{config.episodes.test.episodes} test episodes "
        f"({setting_key(setting.ways, setting.shots)}, seed {config.seed})"
    )
    device = pick_device(config.device)
    scores = {}
    for version in versions:
        learner = _load_version_learner(client, config.tracking.uri, version, device)
        progress = ScoringProgress(f"version {version.number}", config.episodes.test.episodes, out, stream)
        scores[version.number] = episode_accuracies(learner, progress.count(episodes, lambda b: b.tasks), device)
    return scores


def _load_version_learner(client: MlflowClient, tracking_uri: str, version: RegisteredVersion, device) -> Learner:
    """The learner inside a registered version, loaded as the scoring server loads the model."""
    from mlflow.exceptions import MlflowException

    from deploy.model_format import NotAFewShotModel, load_model_learner

    source = client.get_model_version_download_uri(version.name, version.number)
    try:
        return load_model_learner(source, tracking_uri, device)
    except (MlflowException, OSError, NotAFewShotModel) as exc:
        raise PipelineError(f"cannot read {version.model_uri()}'s learner from {source}: {exc}") from None


def _record(
    setting: Setting,
    config: Config,
    challenger: RegisteredVersion,
    challenger_acc: np.ndarray,
    champion: RegisteredVersion | None,
    champion_acc: np.ndarray | None,
    decision: str,
) -> dict[str, Any]:
    accuracy, ci95 = mean_ci95(challenger_acc)
    record: dict[str, Any] = {
        "decision": decision,
        "time": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "episodes": f"{len(challenger_acc)} x {setting_key(setting.ways, setting.shots)}, "
        f"query {config.episodes.test.query}, seed {config.seed}",
        "dataset_fingerprint": setting.fingerprint,
        "candidate_version": challenger.number,
        "candidate_accuracy": f"{accuracy:.4f}",
        "candidate_ci95": f"{ci95:.4f}",
    }
    if champion is not None:
        record["champion_version"] = champion.number
        record["champion_dataset_fingerprint"] = champion.tags.dataset_fingerprint
    if champion_acc is not None:
        champion_mean, champion_ci = mean_ci95(champion_acc)
        difference, difference_ci = mean_ci95(challenger_acc - champion_acc)
        record.update(
            champion_accuracy=f"{champion_mean:.4f}",
            champion_ci95=f"{champion_ci:.4f}",
            paired_difference=f"{difference:+.4f}",
            paired_difference_ci95=f"{difference_ci:.4f}",
        )
    return record


def _report(
    name: str, challenger: RegisteredVersion, champion: RegisteredVersion | None, record: dict, promoted: bool, out: Out
) -> None:
    out(f"  candidate version {challenger.number}: {record['candidate_accuracy']} ± {record['candidate_ci95']}")
    if champion is not None and "champion_accuracy" in record:
        out(f"  champion  version {champion.number}: {record['champion_accuracy']} ± {record['champion_ci95']}")
        out(f"  paired difference: {record['paired_difference']} ± {record['paired_difference_ci95']}")
    holder = challenger.number if promoted or champion is None else champion.number
    out(f"{record['decision']}: {name}@{CHAMPION} is version {holder}")
