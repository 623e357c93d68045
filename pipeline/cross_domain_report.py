"""``learn2tune report cross-domain``: a families x datasets table from the evaluation records.

For each experiment, each family's best trial by validation accuracy (never by test scores):
its in-domain score (``evaluation.json``) and its score on every target in ``cross_domain/``,
accuracy ± 95% CI per (ways, shots) setting. Markdown, and the same cells as JSON beside it.
Needs no MLflow: the records hold everything.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pipeline.config import Config
from pipeline.cross_domain import RECORD_DIR
from pipeline.errors import PipelineError
from pipeline.evaluate import EVALUATION_FILE
from pipeline.io import write_json_atomic, write_text_atomic
from pipeline.records import Evaluation, ScoredModel, read_record


def _best_per_family(evaluation: Evaluation) -> dict[str, ScoredModel]:
    best: dict[str, ScoredModel] = {}
    for model in evaluation.models:
        if model.family not in best or model.val_accuracy > best[model.family].val_accuracy:
            best[model.family] = model
    return best


def _dataset_name(evaluation: Evaluation) -> str:
    return Path(evaluation.dataset.dir.rstrip("/")).name


def collect(config: Config, experiments: list[str]) -> list[dict[str, Any]]:
    """One row per (experiment, family): ``{"experiment", "family", "trial", "source", "scores"}``,
    ``scores`` mapping ``(dataset, setting)`` text ``"<dataset> <W>w<S>s"`` to ``[accuracy, ci95]``."""
    rows = []
    for name in experiments:
        directory = config.tune_location.child(name)
        in_domain = read_record(
            Evaluation,
            directory.child(EVALUATION_FILE),
            f"experiment {name!r} has not been evaluated; run `learn2tune evaluate --experiment {name}` first",
        )
        records = directory.child(RECORD_DIR)
        targets = [
            (file.removesuffix(".json"), read_record(Evaluation, records.child(file), ""))
            for file in sorted(records.names())
            if file.endswith(".json")
        ]
        if not targets:
            raise PipelineError(f"experiment {name!r} has no cross-domain scores; run `learn2tune evaluate --on` first")
        source = _dataset_name(in_domain)
        for family, model in sorted(_best_per_family(in_domain).items()):
            scores = {f"{source} {k}": [r.accuracy, r.ci95] for k, r in model.results.items()}
            for target, evaluation in targets:
                found = next((m for m in evaluation.models if m.trial_id == model.trial_id), None)
                for key, result in found.results.items() if found else []:
                    scores[f"{target} {key}"] = [result.accuracy, result.ci95]
            rows.append(
                {"experiment": name, "family": family, "trial": model.trial_id, "source": source, "scores": scores}
            )
    return rows


def markdown(rows: list[dict[str, Any]]) -> str:
    """The table: a row per (family, source), a column per (dataset, setting); in-domain cells in bold."""
    columns = list(dict.fromkeys(c for row in rows for c in row["scores"]))
    lines = [
        "| family | trained on | " + " | ".join(columns) + " |",
        "|---|---|" + "---|" * len(columns),
    ]
    for row in rows:
        cells = []
        for column in columns:
            score = row["scores"].get(column)
            text = f"{score[0]:.4f} ± {score[1]:.4f}" if score else "-"
            cells.append(f"**{text}**" if score and column.startswith(row["source"] + " ") else text)
        lines.append(f"| {row['family']} | {row['source']} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n\nBold: in-domain (the source's own test split).\n"


def report(config: Config, experiments: list[str], out_path: Path | None) -> str:
    """The markdown table; with ``out_path``, written there and its JSON beside it (``.json``)."""
    rows = collect(config, experiments)
    text = markdown(rows)
    if out_path is not None:
        out_path.parent.mkdir(parents=True, exist_ok=True)
        write_text_atomic(out_path, text)
        write_json_atomic(out_path.with_suffix(".json"), {"rows": rows})
    return text
