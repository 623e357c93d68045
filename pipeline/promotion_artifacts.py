"""What ``promote`` records: an MLflow run per gate, the version tags, and the version's description.

Each promote is one run (``promote-<model>-v<N>``, ``learn2tune.role: promote``) in the
config's experiment holding ``promotion.json`` (the whole record: decision, time, episodes,
fingerprints, both scores, the paired difference) and, when the two versions were compared,
``promotion/comparison.json`` (``log_table``: each episode's accuracy for both and their
difference) and ``promotion/comparison.png``. The candidate version keeps only the tags a
registry search needs (decision, the accuracies, the difference, the run); its description
gains a line saying, with the numbers, why the alias moved or stayed.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import numpy as np

from pipeline import tracking
from pipeline.evaluation_plots import paired_comparison_figure

if TYPE_CHECKING:
    from mlflow import MlflowClient

RECORD_ARTIFACT = "promotion.json"
TABLE_ARTIFACT = "promotion/comparison.json"
PLOT_ARTIFACT = "promotion/comparison.png"
VERSION_TAGS = (
    "decision", "champion_version", "candidate_accuracy", "champion_accuracy", "paired_difference",
    "paired_difference_ci95", "run_id",
)  # fmt: skip


def log_promotion(
    client: MlflowClient,
    experiment_id: str,
    name: str,
    record: Mapping[str, Any],
    candidate: np.ndarray,
    champion: np.ndarray | None,
) -> str:
    """The promote run: its record, and the paired comparison when there was one; returns its id."""
    version = record["candidate_version"]
    tags = {tracking.ROLE_TAG: "promote", "learn2tune.model": f"{name} version {version}"}
    run_id = tracking.start_run(client, experiment_id, f"promote-{name}-v{version}", tags)
    tracking.set_tags(client, run_id, {"decision": record["decision"]})
    client.log_dict(run_id, dict(record), RECORD_ARTIFACT)
    if champion is not None:
        client.log_table(run_id, comparison_table(candidate, champion), TABLE_ARTIFACT)
        labels = (f"candidate v{version}", f"champion v{record['champion_version']}")
        client.log_figure(run_id, paired_comparison_figure(candidate, champion, labels), PLOT_ARTIFACT)
    client.set_terminated(run_id, "FINISHED")
    return run_id


def comparison_table(candidate: np.ndarray, champion: np.ndarray) -> dict[str, list[Any]]:
    return {
        "episode": list(range(len(candidate))),
        "candidate_accuracy": [float(a) for a in candidate],
        "champion_accuracy": [float(a) for a in champion],
        "difference": [float(a) for a in candidate - champion],
    }


def version_tags(record: Mapping[str, Any]) -> dict[str, str]:
    """The record's fields the candidate version carries as ``promotion.*`` tags."""
    return {f"promotion.{key}": str(record[key]) for key in VERSION_TAGS if key in record}


def description(record: Mapping[str, Any], promoted: bool) -> str:
    """One line: what promote decided about the candidate and why, with the numbers."""
    own = f"test accuracy {record['candidate_accuracy']} ± {record['candidate_ci95']}"
    episodes = f"test episodes ({record['episodes']})"
    when = f"promote {record['time']} (run {record['run_id']})"
    if "champion_accuracy" not in record:
        if "champion_version" not in record:
            return f"First champion, {when}: {own} on {episodes}; there was no champion to compare with."
        return f"Made champion with --force without a comparison, {when}: {record['decision']}; {own} on {episodes}."
    paired = (
        f"{own} against champion version {record['champion_version']}'s {record['champion_accuracy']} ± "
        f"{record['champion_ci95']} on the same {episodes}; paired difference {record['paired_difference']} ± "
        f"{record['paired_difference_ci95']}"
    )
    if record["decision"] == "promoted":
        return f"Promoted to champion, {when}: {paired} (higher wins)."
    if promoted:
        return f"Made champion with --force, {when}: {paired}."
    return f"Kept out, {when}: {paired}, not higher, so champion stays version {record['champion_version']}."
