"""Plain-text tables for the summaries the CLI prints."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any


def format_table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """Left-aligned columns separated by two spaces, with a rule under the header."""
    cells = [[str(h) for h in headers]] + [[_cell(v) for v in row] for row in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip() for row in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def format_params(params: Mapping[str, Any]) -> str:
    """``key=value`` pairs, sorted, floats to 4 significant digits."""
    return " ".join(f"{k}={_cell(v) if isinstance(v, float) else v}" for k, v in sorted(params.items()))


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)
