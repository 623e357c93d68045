"""The build report: what came in, what was stored, and every conversion on the way.

A plain JSON-able dict, kept in the manifest under ``report`` and printed by the build:
files seen, images read, files skipped by reason (with up to :data:`EXAMPLES` paths each),
per-split class counts and the smallest/largest class, the stored image shape and channel
count (and why that many), and how many images each conversion was applied to.
"""

from __future__ import annotations

from typing import Any

from tasks.source import Survey

EXAMPLES = 5


def choose_channels(setting: int | str, survey: Survey | None) -> tuple[int, str]:
    """The channel count to store and why: ``setting`` 1 or 3 as given; ``auto`` 1 when every
    image is grey (or the source is grey by nature), else 3."""
    if setting != "auto":
        return int(setting), f"data.channels: {setting}"
    if survey is None:
        return 1, "data.channels auto: the source is grey"
    if not survey.colour:
        return 1, f"data.channels auto: all {survey.images_read} images are grey"
    return 3, (
        f"data.channels auto: {len(survey.colour)} of {survey.images_read} images are colour "
        f"(first: {survey.colour[0]})"
    )


def build_report(
    survey: Survey | None,
    splits: dict[str, dict[str, Any]],
    image_shape: tuple[int, int, int],
    channels_reason: str,
    conversions: dict[str, int],
    rotations: bool,
) -> dict[str, Any]:
    """The report of one build (see the module docstring); ``splits`` are the manifest entries."""
    stored = sum(split["images"] for split in splits.values())
    return {
        "files_seen": survey.files_seen if survey else None,
        "images_read": survey.images_read if survey else stored // (4 if rotations else 1),
        "skipped": {reason: len(paths) for reason, paths in sorted((survey.skipped if survey else {}).items())},
        "skipped_examples": {
            reason: paths[:EXAMPLES] for reason, paths in sorted((survey.skipped if survey else {}).items())
        },
        "images_stored": stored,
        "classes": {name: _class_counts(split) for name, split in splits.items()},
        "image_shape": list(image_shape),
        "channels": image_shape[0],
        "channels_reason": channels_reason,
        "conversions": dict(sorted({**(survey.conversions if survey else {}), **conversions}.items())),
        "rotations": rotations,
    }


def report_lines(report: dict[str, Any]) -> list[str]:
    """The report as a few lines for the build's output."""
    seen = f"{report['files_seen']} files seen, " if report["files_seen"] is not None else ""
    skipped = ", ".join(f"{count} {reason}" for reason, count in report["skipped"].items() if count)
    lines = [f"{seen}{report['images_read']} images read" + (f"; skipped {skipped}" if skipped else "")]
    for reason, paths in report["skipped_examples"].items():
        more = report["skipped"][reason] - len(paths)
        lines.append(f"  {reason}: {', '.join(paths)}" + (f" and {more} more" if more > 0 else ""))
    c, h, w = report["image_shape"]
    lines.append(f"stored {report['images_stored']} images as {c}x{h}x{w} ({report['channels_reason']})")
    lines.append(
        "images per class: "
        + ", ".join(
            f"{name} {entry['min']}-{entry['max']} (smallest {entry['smallest']!r})"
            for name, entry in report["classes"].items()
        )
    )
    if report["conversions"]:
        lines.append("conversions: " + ", ".join(f"{note} x{count}" for note, count in report["conversions"].items()))
    return lines


def _class_counts(split: dict[str, Any]) -> dict[str, Any]:
    counts, names = split["class_counts"], split["class_names"]
    smallest = min(range(len(counts)), key=lambda i: (counts[i], names[i]))
    largest = max(range(len(counts)), key=lambda i: (counts[i], names[i]))
    return {
        "classes": len(counts),
        "min": counts[smallest],
        "max": counts[largest],
        "smallest": names[smallest],
        "largest": names[largest],
    }
