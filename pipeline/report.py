"""The closing summary of ``learn2tune run``: what won, how it scored, where it is registered."""

from __future__ import annotations

from pipeline.records import Evaluation, RegisteredVersion
from pipeline.table import format_params, format_table


def run_summary(evaluation: Evaluation, registered: RegisteredVersion, alias: str) -> str:
    """A table of the evaluated models (the winner marked) and the registered model's coordinates."""
    primary = evaluation.primary
    rows = []
    for model in evaluation.models:
        result = model.results.get(primary)
        test = f"{result.accuracy:.4f} ± {result.ci95:.4f}" if result else "skipped"
        won = model.trial_id == evaluation.winner
        rows.append(
            (
                "*" if won else "",
                model.family,
                format_params(model.params),
                model.val_accuracy,
                test,
                f"{registered.name} v{registered.number} @{alias}" if won else "",
            )
        )
    headers = ("", "family", "params", "val acc", f"test acc {primary} (95% CI)", "registered")
    return format_table(headers, rows) + f"\nmodel: {registered.model_uri(alias)}"
