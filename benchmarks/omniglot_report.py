"""The Omniglot table as Markdown, and the facts its header states (commit, hardware).

:func:`render` turns the results document that ``learn2tune bench omniglot`` keeps (and writes
as JSON beside the table) into the Markdown table; it is re-rendered after every cell, so an
interrupted run still leaves a table of what it finished.
"""

from __future__ import annotations

import os
import platform
import subprocess
from collections import Counter
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

DASH = "–"


def commit(repo: Path) -> str:
    """``git rev-parse --short HEAD``, with ``-dirty`` when tracked files outside ``docs/`` differ from it."""
    try:
        sha = _git(repo, "rev-parse", "--short", "HEAD")
        # the generated reports under docs/ do not make the code that generates them dirty
        dirty = _git(repo, "--no-optional-locks", "status", "--porcelain", "--untracked-files=no", "--", ".", ":!docs")
    except (OSError, subprocess.CalledProcessError):
        return "unknown (not a git checkout)"
    return sha + ("-dirty" if dirty else "")


def _git(repo: Path, *args: str) -> str:
    return subprocess.run(["git", *args], cwd=repo, capture_output=True, text=True, check=True).stdout.strip()


def hardware(device: torch.device) -> dict[str, Any]:
    """The CPU model, cores, torch threads, the GPU in use (if any) and the torch version."""
    return {
        "cpu": _cpu_model(),
        "cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "gpu": torch.cuda.get_device_name(device) if device.type == "cuda" else None,
        "torch": torch.__version__,
    }


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def describe_hardware(hw: Mapping[str, Any]) -> str:
    gpu = f"GPU {hw['gpu']}" if hw["gpu"] else "no GPU"
    threads = f"{hw['torch_threads']} torch thread{'s' if hw['torch_threads'] != 1 else ''}"
    return f"{hw['cpu']}, {hw['cores']} cores ({threads}), {gpu}, torch {hw['torch']}"


def percent(value: float | None, ci95: float | None = None) -> str:
    if value is None:
        return DASH
    return f"{100 * value:.2f}" + (f" ± {100 * ci95:.2f}" if ci95 is not None else "")


def signed(points: float | None) -> str:
    return DASH if points is None else f"{points:+.2f}"


def duration(seconds: float) -> str:
    if seconds < 60:
        return f"{seconds:.1f} s"
    minutes, secs = divmod(round(seconds), 60)
    if minutes < 60:
        return f"{minutes} min {secs:02d} s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes:02d} min"


COLUMNS = (
    "family",
    "setting",
    "ours (%) ± 95% CI",
    "paper (%)",
    "diff (points)",
    "tuned (%) ± 95% CI",
    "budget (full in brackets)",
    "meta-it/s",
    "episodes/s",
    "train",
    "test",
)


def render(doc: Mapping[str, Any]) -> str:
    """The Markdown table of results document ``doc`` (see ``benchmarks.omniglot_table``)."""
    lines = [f"# Omniglot: every learner family against its paper ({doc['budget']} budget)", ""]
    lines += [f"- {line}" for line in _header(doc)]
    lines += ["", "| " + " | ".join(COLUMNS) + " |", "|" + " --- |" * len(COLUMNS)]
    lines += ["| " + " | ".join(_row(cell, doc)) + " |" for cell in doc["cells"]]
    lines += ["", "## Notes", ""]
    lines += [
        f"- **{name}** ({note['paper']}){': ' + note['note'] if note['note'] else ''}; configuration: "
        f"`{note['config']}`."
        for name, note in doc["families"].items()
    ]
    lines += [f"- {line}" for line in doc["notes"]]
    return "\n".join(lines) + "\n"


def _header(doc: Mapping[str, Any]) -> list[str]:
    data, test = doc["dataset"], doc["test"]
    queries = ", ".join(f"{ways}-way {query}" for ways, query in test["query"].items())
    lines = [
        f"Status: {doc['status']}.",
        f"Budget: **{doc['budget']}**: {doc['budget_note']}",
        f"Command: `{doc['command']}`",
        f"Commit: `{doc['commit']}`{_kept_note(doc)}; hardware: {describe_hardware(doc['hardware'])}; "
        f"device `{doc['device']}`.",
        f"Started {doc['started']}; wall time {duration(doc['wall_seconds'])} (dataset builds "
        f"{duration(data['build_seconds'])}){_cells_time(doc)}.",
        f"Dataset: {data['description']}; split seed {data['seed']}; fingerprints "
        + ", ".join(f"{size}x{size} `{fp[:12]}`" for size, fp in data["fingerprints"].items())
        + ".",
        f"Test: {test['episodes']} fixed-seed episodes per setting from the test split (seed {test['seed']}), the "
        f"same for every family; queries per class: {queries}; mean accuracy ± 1.96·std/√{test['episodes']}.",
        "diff = ours − paper, in points. Throughput: meta-iterations (and training episodes) per second over "
        "the whole training loop, sampling included.",
        f"MLflow: experiment `{doc['mlflow']['experiment']}`, parent run `{doc['mlflow']['parent_run_id']}` "
        f"in `{doc['mlflow']['tracking_uri']}`.",
    ]
    lines.append(f"Tuned: {doc['tuned']['description']}" if doc["tuned"] else f"Tuned: {DASH} (no `--tuned` given).")
    return lines


def _cells_time(doc: Mapping[str, Any]) -> str:
    """ "; the N cells trained and tested in T" (each model counted once), when some were kept from earlier runs."""
    if not doc.get("kept_cells"):
        return ""  # the wall time covers every cell
    cells = [cell for cell in doc["cells"] if not cell.get("error")]
    seconds = sum(cell["eval_seconds"] + (0 if cell["shared_with"] else cell["train_seconds"]) for cell in cells)
    return f"; all {len(cells)} cells, kept ones included, trained and tested in {duration(seconds)}"


def _kept_note(doc: Mapping[str, Any]) -> str:
    """ " (N cells kept from commit X, ...)" for cells an earlier run made (``--resume``); else empty."""
    earlier = Counter(cell["commit"] for cell in doc["cells"] if cell.get("commit", doc["commit"]) != doc["commit"])
    if not earlier:
        return ""
    return " (" + ", ".join(f"{n} cell(s) kept from commit `{commit}`" for commit, n in earlier.items()) + ")"


def _row(cell: Mapping[str, Any], doc: Mapping[str, Any]) -> list[str]:
    tuned = ((doc["tuned"] or {}).get("families", {}).get(cell["family"]) or {}).get("results", {}).get(cell["setting"])
    tuned_text = percent(tuned["accuracy"], tuned["ci95"]) if tuned else DASH
    if tuned and doc["tuned"]["families"][cell["family"]].get("paper_point"):
        tuned_text += " (paper's)"
    head = [cell["family"], cell["setting"]]
    if cell.get("error"):
        return head + [f"failed: {cell['error']}", _paper(cell), DASH, tuned_text, cell["cut"]] + [DASH] * 4
    diff = None if cell["paper"] is None else 100 * cell["accuracy"] - cell["paper"]
    trained = duration(cell["train_seconds"]) + (f" (model of {cell['shared_with']})" if cell["shared_with"] else "")
    return head + [
        percent(cell["accuracy"], cell["ci95"]),
        _paper(cell),
        signed(diff),
        tuned_text,
        cell["cut"],
        f"{cell['meta_iterations_per_s']:.2f}",
        f"{cell['episodes_per_s']:.1f}",
        trained,
        duration(cell["eval_seconds"]),
    ]


def _paper(cell: Mapping[str, Any]) -> str:
    return DASH if cell["paper"] is None else f"{cell['paper']:g}"
