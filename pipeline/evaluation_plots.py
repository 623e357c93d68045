"""The figures of the evaluate and promote stages (Agg backend, no pyplot state).

Test episodes draw their classes afresh, and a query's label is its class's place in the
episode (0 .. ways-1), so a confusion matrix over episode labels shows whether a model favours
some output positions (a fixed head, a label offset), not which test classes it mixes up.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from pipeline.scoring import mean_ci95

ANNOTATED_WAYS = 10  # the confusion diagonal carries its numbers up to this size
FIXED_MARGINS = {"left": 0.07, "right": 0.97, "bottom": 0.13, "top": 0.88, "wspace": 0.25}


def setting_figure(accuracies: np.ndarray, confusion: np.ndarray, title: str) -> Figure:
    """Left: the distribution of episode accuracies with the mean and its 95% CI (and chance);
    right: the confusion matrix over episode labels, each row as fractions of its queries."""
    figure = Figure(figsize=(10, 4))
    FigureCanvasAgg(figure)
    figure.subplots_adjust(**FIXED_MARGINS)  # a layout engine would double the time to draw
    dist_ax, conf_ax = figure.subplots(1, 2, width_ratios=(3, 2))
    ways = confusion.shape[0]
    _distribution(dist_ax, accuracies, chance=1 / ways if ways else None)
    dist_ax.set(xlabel="episode accuracy", ylabel="episodes")
    rows = confusion.sum(axis=1, keepdims=True)
    shares = np.divide(confusion, rows, out=np.zeros(confusion.shape), where=rows > 0)
    image = conf_ax.imshow(shares, vmin=0, vmax=1, cmap="Blues")
    if ways <= ANNOTATED_WAYS:  # the diagonal only: each text costs as much to draw as the rest of a cell row
        for label in range(min(confusion.shape)):
            share = shares[label, label]
            colour = "white" if share > 0.5 else "black"
            conf_ax.text(label, label, f"{share:.2f}", ha="center", va="center", color=colour)
    conf_ax.set(xlabel="predicted episode label", ylabel="true episode label", title="confusion (row fractions)")
    figure.colorbar(image, ax=conf_ax, shrink=0.8)
    figure.suptitle(title)
    return figure


def test_accuracy_figure(models: Mapping[str, Mapping[str, tuple[float, float]]], settings: Sequence[str]) -> Figure:
    """One panel per setting: each model's test accuracy with its 95% CI.

    ``models``: label -> setting -> (accuracy, ci95); a model may lack a setting (skipped).
    """
    figure = Figure(figsize=(4 * max(1, len(settings)), 1.2 + 0.45 * max(1, len(models))), layout="constrained")
    FigureCanvasAgg(figure)
    axes = np.atleast_1d(figure.subplots(1, max(1, len(settings)), sharey=True))
    labels = list(models)
    for ax, setting in zip(axes, settings, strict=False):
        for row, label in enumerate(labels):
            if setting in models[label]:
                accuracy, ci95 = models[label][setting]
                ax.errorbar(accuracy, row, xerr=ci95, fmt="o", capsize=4, color="tab:blue")
        ax.set(title=f"test {setting}", xlabel="accuracy (95% CI)", xlim=(0, 1), yticks=range(len(labels)))
        ax.set_yticklabels(labels)
        ax.set_ylim(len(labels) - 0.5, -0.5)  # the first model on top
    return figure


def paired_comparison_figure(candidate: np.ndarray, champion: np.ndarray, labels: tuple[str, str]) -> Figure:
    """Left: each episode's accuracy, champion against candidate (above the diagonal: the candidate
    did better); right: the per-episode differences with their mean and 95% CI."""
    figure = Figure(figsize=(10, 4))
    FigureCanvasAgg(figure)
    figure.subplots_adjust(**FIXED_MARGINS)
    pair_ax, diff_ax = figure.subplots(1, 2)
    pair_ax.scatter(champion, candidate, alpha=0.4, s=12)
    pair_ax.plot([0, 1], [0, 1], color="gray", linestyle="--", linewidth=1)
    pair_ax.set(xlabel=f"{labels[1]} episode accuracy", ylabel=f"{labels[0]} episode accuracy")
    pair_ax.set(xlim=(0, 1), ylim=(0, 1))
    pair_ax.set_aspect("equal")
    _distribution(diff_ax, candidate - champion, chance=None, low=-1.0)
    diff_ax.axvline(0, color="black", linewidth=1)
    diff_ax.set(xlabel=f"{labels[0]} - {labels[1]} per episode", ylabel="episodes")
    figure.suptitle(f"{labels[0]} vs {labels[1]} on the same {len(candidate)} episodes")
    return figure


def _distribution(ax: Axes, values: np.ndarray, chance: float | None, low: float = 0.0) -> None:
    """A histogram of ``values`` in [low, 1] with the mean, its 95% CI band and the chance level."""
    mean, ci95 = mean_ci95(values)
    ax.hist(values, bins=list(np.linspace(low, 1, 21)), color="tab:blue", alpha=0.6)
    ax.axvspan(mean - ci95, mean + ci95, color="tab:red", alpha=0.25, label=f"95% CI ± {ci95:.4f}")
    ax.axvline(mean, color="tab:red", label=f"mean {mean:.4f}")
    if chance is not None:
        ax.axvline(chance, color="gray", linestyle="--", linewidth=1, label="chance")
    ax.legend(loc="upper left")
