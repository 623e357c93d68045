"""What the evaluate stage logs to MLflow besides the ``test_acc_*`` / ``test_ci95_*`` metrics.

On each scored model's trial run, when the model is scored (``untrained_`` in front for the
network a trial started from):

- ``evaluation/episodes.json``: a table (``log_table``) of every test episode's accuracy, one row
  per (setting, episode), with the protocol (query, seed) it was scored under;
- ``evaluation/<W>w<S>s.png`` per setting: the distribution of its episode accuracies with the
  mean and 95% CI, beside the confusion matrix over episode labels.

On the parent run once the evaluation is complete: ``evaluation.json`` and
``evaluation/test_accuracy.png`` (every model's accuracy and CI per setting, models kept from an
earlier evaluate included).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from pipeline.evaluation_plots import setting_figure, test_accuracy_figure
from pipeline.records import Evaluation, EvaluationEpisodes, ScoredModel

if TYPE_CHECKING:
    from mlflow import MlflowClient

EPISODES_TABLE = "evaluation/{prefix}episodes.json"
SETTING_PLOT = "evaluation/{prefix}{setting}.png"
EVALUATION_ARTIFACT = "evaluation.json"
SUMMARY_PLOT = "evaluation/test_accuracy.png"


@dataclass(frozen=True)
class SettingEpisodes:
    """One model's scores on one setting's episodes: accuracy per episode and confusion counts."""

    accuracies: np.ndarray
    confusion: np.ndarray


def log_model_episodes(
    client: MlflowClient, model: ScoredModel, scored: Mapping[str, SettingEpisodes], protocol: EvaluationEpisodes
) -> None:
    """The per-episode table and one figure per setting ``scored`` holds, on ``model``'s trial run."""
    if not scored:
        return
    prefix = "untrained_" if model.untrained else ""
    client.log_table(model.run_id, episodes_table(model, scored, protocol), EPISODES_TABLE.format(prefix=prefix))
    label = f"{model.family} trial {model.trial_id}{' (untrained)' if model.untrained else ''}"
    for setting, episodes in scored.items():
        score = model.results[setting]
        title = f"{label}, test {setting}: {score.accuracy:.4f} ± {score.ci95:.4f} over {score.episodes} episodes"
        figure = setting_figure(episodes.accuracies, episodes.confusion, title)
        client.log_figure(model.run_id, figure, SETTING_PLOT.format(prefix=prefix, setting=setting))


def episodes_table(
    model: ScoredModel, scored: Mapping[str, SettingEpisodes], protocol: EvaluationEpisodes
) -> dict[str, list[Any]]:
    rows = [
        (setting, model.results[setting].ways, model.results[setting].shots, episode, float(accuracy))
        for setting, episodes in scored.items()
        for episode, accuracy in enumerate(episodes.accuracies)
    ]
    columns = ("setting", "ways", "shots", "episode", "accuracy")
    table: dict[str, list[Any]] = {name: [row[i] for row in rows] for i, name in enumerate(columns)}
    table["query"] = [protocol.query] * len(rows)
    table["seed"] = [protocol.seed] * len(rows)
    return table


def log_evaluation(client: MlflowClient, run_id: str, evaluation: Evaluation) -> None:
    """``evaluation.json`` and the per-setting comparison of every model, on the parent run ``run_id``."""
    client.log_dict(run_id, evaluation.to_json(), EVALUATION_ARTIFACT)
    models = {
        f"{m.family} {m.trial_id}{' (untrained)' if m.untrained else ''}": {
            key: (result.accuracy, result.ci95) for key, result in m.results.items()
        }
        for m in evaluation.models + evaluation.untrained
    }
    settings = list(dict.fromkeys(key for results in models.values() for key in results))
    client.log_figure(run_id, test_accuracy_figure(models, settings), SUMMARY_PLOT)
