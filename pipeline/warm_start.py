"""Warm start: past searches' trials as completed Optuna trials of the new search's study.

``search.warm_start`` names MLflow experiments (or ``auto``: every finished search in the
tracking store). Each finished search parent run there has its trials in its
``search_result.json`` artifact (read through MLflow, so a remote tracking server is enough).
Each trial with a validation accuracy becomes an ``optuna.trial.create_trial`` in the CURRENT
search space (:func:`pipeline.space.define_by_run`); one whose family is not searched now, that
lacks a searched knob, whose values the current space cannot draw, or that ran with another value
of a knob the config now fixes (``search.fixed``) is skipped and counted.
The best past trial of each searched family is queued first, in order of its accuracy (a
config ``search.points_to_evaluate`` value for that family wins, knob by knob), so TPE starts
from what worked elsewhere and the first new trials re-run the best known configurations.
"""

from __future__ import annotations

import dataclasses
import json
import tempfile
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pipeline.errors import ConfigError
from pipeline.space import FAMILY_KEY, ConditionalSpace, contains, optuna_distribution
from pipeline.tracking import ROLE_TAG, log_metrics, set_tags

if TYPE_CHECKING:
    from mlflow import MlflowClient
    from optuna.distributions import BaseDistribution
    from optuna.trial import FrozenTrial

    from pipeline.config import Config

AUTO = "auto"
RESULT_ARTIFACT = "search_result.json"  # pipeline.search.RESULT_FILE, logged on every finished search's parent
WARM_START_TAG = "learn2tune.warm_start"
OUTSIDE, NO_KNOB, NOT_SEARCHED = "outside the current space", "lacks a searched knob", "family not searched"
FIXED_DIFFERS = "another value of a knob fixed now"


@dataclass(frozen=True)
class Source:
    """A past search: its MLflow experiment name and parent run id."""

    experiment: str
    run_id: str


@dataclass
class WarmStart:
    """What the past searches give the new one."""

    sources: list[Source]
    trials: list[FrozenTrial] = field(default_factory=list)  # to add to the study
    queued: list[dict[str, Any]] = field(default_factory=list)  # study params, best past accuracy first
    skipped: Counter[str] = field(default_factory=Counter)  # reason -> past trials


def find_sources(client: MlflowClient, names: Sequence[str] | str | None) -> list[Source]:
    """The finished search parent runs of the experiments ``names`` (``auto``: of every experiment).

    Called before the new search's parent run starts (so ``auto`` never finds the search being
    started); a name with no MLflow experiment is a ConfigError listing those that exist.
    """
    if not names:
        return []
    experiments = {e.name: e.experiment_id for e in client.search_experiments()}
    wanted = list(experiments) if names == AUTO or tuple(names) == (AUTO,) else list(names)
    unknown = [name for name in wanted if name not in experiments]
    if unknown:
        raise ConfigError(
            f"search.warm_start names {', '.join(map(repr, unknown))}, not an MLflow experiment in this tracking "
            f"store; it has: {', '.join(sorted(experiments)) or 'none'}"
        )
    by_id = {experiments[name]: name for name in wanted}
    if not by_id:
        return []
    runs = client.search_runs(
        list(by_id),
        filter_string=f"tags.`{ROLE_TAG}` = 'search' and attributes.status = 'FINISHED'",
        order_by=["attributes.start_time ASC"],
    )
    return [Source(by_id[run.info.experiment_id], run.info.run_id) for run in runs]


def past_trials(client: MlflowClient, source: Source) -> list[Mapping[str, Any]]:
    """The trials of ``source``'s ``search_result.json`` (none when the artifact is missing)."""
    with tempfile.TemporaryDirectory(prefix="learn2tune-warm-") as directory:
        try:
            path = client.download_artifacts(source.run_id, RESULT_ARTIFACT, directory)
        except Exception:  # MLflow raises its own and the store's errors for a missing artifact
            return []
        return list(json.loads(Path(path).read_text()).get("trials", []))


def prepare(
    sources: list[Source],
    history: Sequence[Mapping[str, Any]],
    space: ConditionalSpace,
    fixed: Mapping[str, Mapping[str, Any]] | None = None,
) -> WarmStart:
    """``history`` (the past trials of ``sources``) converted to ``space`` (``fixed``: the config's
    ``search.fixed``), and the best per family to queue."""
    warm = WarmStart(sources)
    best: dict[str, tuple[float, dict[str, Any]]] = {}
    for past in history:
        if past.get("val_accuracy") is None:  # failed or stopped before its first evaluation
            continue
        converted = convert(past, space, fixed)
        if isinstance(converted, str):
            warm.skipped[converted] += 1
            continue
        warm.trials.append(converted)
        family, value = past["family"], float(past["val_accuracy"])
        if family not in best or value > best[family][0]:
            best[family] = (value, dict(converted.params))
    for family, (_, params) in sorted(best.items(), key=lambda item: -item[1][0]):
        points = {f"{family}.{knob}": value for knob, value in space.points.get(family, {}).items()}
        warm.queued.append({**params, **points})
    return warm


def convert(
    past: Mapping[str, Any], space: ConditionalSpace, fixed: Mapping[str, Mapping[str, Any]] | None = None
) -> FrozenTrial | str:
    """``past`` (a ``search_result.json`` trial) as a completed trial of ``space``, or why it cannot be.

    ``fixed``: the knobs the new search sets per family; a past trial that ran another value of one
    scored a different model than the new search's trials would, so its accuracy is no evidence.
    """
    import optuna

    family = past.get("family")
    if family not in space.families:
        return NOT_SEARCHED
    given = dict(past.get("params") or {})
    params: dict[str, Any] = {FAMILY_KEY: family}
    distributions: dict[str, BaseDistribution] = {
        FAMILY_KEY: optuna.distributions.CategoricalDistribution(space.families)
    }
    for knob, distribution in space.spaces[family].items():
        if knob not in given:
            return NO_KNOB
        if not contains(distribution, given[knob]):
            return OUTSIDE
        params[f"{family}.{knob}"] = given[knob]
        distributions[f"{family}.{knob}"] = optuna_distribution(distribution)
    if any(knob in given and given[knob] != value for knob, value in space.constants[family].items()):
        return OUTSIDE  # e.g. another backbone than the one this search sets
    if any(knob in given and given[knob] != value for knob, value in (fixed or {}).get(family, {}).items()):
        return FIXED_DIFFERS
    return optuna.trial.create_trial(params=params, distributions=distributions, value=float(past["val_accuracy"]))


def seed_study(warm: WarmStart, storage: Any, study_name: str, seed: int) -> int:
    """Add the past trials to the (new) study and queue the best first; returns how many trials the
    study holds before the search's own first one (the space's ``offset``)."""
    import optuna

    study = optuna.create_study(
        storage=storage,
        study_name=study_name,
        direction="maximize",
        load_if_exists=True,
        sampler=optuna.samplers.TPESampler(seed=seed),
    )
    study.add_trials(warm.trials)
    for params in warm.queued:
        study.enqueue_trial(params)
    return len(warm.trials)


def record(client: MlflowClient, run_id: str, warm: WarmStart) -> None:
    """Tag and log on the parent run which searches seeded it and how many trials."""
    experiments = sorted({s.experiment for s in warm.sources})
    set_tags(
        client,
        run_id,
        {
            WARM_START_TAG: ",".join(s.run_id for s in warm.sources),
            f"{WARM_START_TAG}_experiments": ",".join(experiments),
        },
    )
    log_metrics(
        client,
        run_id,
        {
            "warm_start_trials": len(warm.trials),
            "warm_start_queued": len(warm.queued),
            "warm_start_skipped": sum(warm.skipped.values()),
        },
    )


def summary_line(warm: WarmStart) -> str:
    """``warm start: 23 past trials from 2 searches (exp-a, exp-b) seeded the study; ...``."""
    experiments = ", ".join(sorted({s.experiment for s in warm.sources}))
    skipped = sum(warm.skipped.values())
    reasons = ", ".join(f"{count} {reason}" for reason, count in warm.skipped.most_common())
    return (
        f"warm start: {len(warm.trials)} past trials from {len(warm.sources)} searches ({experiments or 'none'}) "
        f"seeded the study; {len(warm.queued)} queued first (best per family); {skipped} skipped"
        + (f" ({reasons})" if reasons else "")
    )


def begin(
    client: MlflowClient,
    sources: list[Source],
    space: ConditionalSpace,
    run_id: str,
    study_name: str,
    config: Config,
    out: Callable[[str], None],
) -> ConditionalSpace:
    """Seed a new search's study from ``sources``, record it on its parent run ``run_id`` and print
    one line; returns ``space`` counting its trials from the search's own first one."""
    from pipeline.study import open_storage

    history = [past for source in sources for past in past_trials(client, source)]
    warm = prepare(sources, history, space, config.search.fixed)
    offset = seed_study(warm, open_storage(config.search.study_storage or ""), study_name, config.seed)
    record(client, run_id, warm)
    out(summary_line(warm))
    queued = tuple(params[FAMILY_KEY] for params in warm.queued)
    return dataclasses.replace(space, offset=offset, warm_queued=queued)
