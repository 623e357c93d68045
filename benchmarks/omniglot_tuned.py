"""The Omniglot table's "tuned" column: each family's best searched trial, read from the evaluate
stage's results (``bench omniglot --tuned``)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from benchmarks.omniglot_config import SETTINGS
from benchmarks.omniglot_options import shown
from pipeline.errors import PipelineError
from pipeline.evaluate import EVALUATION_FILE
from pipeline.io import read_json


def read_tuned(paths: list[Path]) -> dict[str, Any]:
    """The best evaluated trial of each family (by validation accuracy) in the evaluate stage's results.

    ``paths``: experiment directories (holding ``evaluation.json``) or ``evaluation.json`` files of
    ``learn2tune evaluate``/``run`` on ``configs/omniglot-search.yaml``, or the summary of ``learn2tune bench
    omniglot-search`` (``runs/tune/omniglot-search.json``), which stands for each family's evaluation.
    """
    families: dict[str, dict[str, Any]] = {}
    sources: list[str] = []
    protocols: set[str] = set()
    scored: set[str] = set()
    for path in paths:
        file = path / EVALUATION_FILE if path.is_dir() else path
        data = read_json(
            file, "run `learn2tune bench omniglot-search` or `learn2tune run configs/omniglot-search.yaml`"
        )
        if "models" in data or not isinstance(data.get("families"), dict):
            files, paper_points = [file], set()
        else:  # a bench omniglot-search summary: each family's evaluation.json and paper-point trial
            records = data["families"].values()
            files = [Path(record["evaluation"]) for record in records if record.get("evaluation")]
            paper_points = {(record.get("paper_point") or {}).get("trial_id") for record in records}
        sources.append(shown(file))
        for file in files:
            _read_evaluation(file, families, protocols, scored)
        for best in families.values():
            best["paper_point"] = best.get("paper_point") or best["trial_id"] in paper_points
    description = (
        f"each family's best trial by validation accuracy (validation split only) in {', '.join(sources)}, scored "
        f"by the evaluate stage on the test split ({'; '.join(sorted(protocols))}; settings "
        f"{', '.join(s for s in SETTINGS if s in scored)}). The search trains on its episodes.train shape, so "
        "fixed-head families have no rows of other ways."
    )
    if any(best["paper_point"] for best in families.values()):
        description += " \"paper's\": the best trial was the paper's configuration, trained again with its own seed."
    return {"description": description, "families": families}


def _read_evaluation(file: Path, families: dict[str, Any], protocols: set[str], scored: set[str]) -> None:
    """Fold one evaluation.json into ``families`` (best by validation accuracy), ``protocols`` and ``scored``."""
    evaluation = read_json(file, "run the evaluate stage of the search first")
    try:
        models, test = evaluation["models"], evaluation["test_episodes"]
        fingerprint = evaluation["dataset"]["fingerprint"]
        for model in models:
            best = families.get(model["family"])
            if best is None or (model["val_accuracy"] or 0.0) > (best["val_accuracy"] or 0.0):
                families[model["family"]] = {
                    **{k: model[k] for k in ("trial_id", "val_accuracy", "params", "results")},
                    "source": str(file),
                    "fingerprint": fingerprint,
                }
            scored.update(model["results"])
    except (KeyError, TypeError) as exc:
        raise PipelineError(f"{file} is not an evaluation.json of `learn2tune evaluate` (no {exc})") from None
    protocols.add(f"{test['episodes']} episodes, {test['query']} queries per class, seed {test['seed']}")


def foreign_tuned(tuned: dict[str, Any] | None, dataset: dict[str, Any]) -> list[str]:
    """A note for each tuned family evaluated on another dataset than this table's."""
    ours = set(dataset["fingerprints"].values())
    return [
        f"tuned {family}: evaluated on another dataset (fingerprint {best['fingerprint'][:12]}) than this table's."
        for family, best in (tuned or {}).get("families", {}).items()
        if best["fingerprint"] not in ours
    ]
