"""The one type of the callback through which every stage reports a line of progress or output.

``print`` is one; so is a test's ``list.append``. Defined here, in the lowest layer that reports,
so that tasks, learners, pipeline and benchmarks all name the same type.
"""

from __future__ import annotations

from collections.abc import Callable

Say = Callable[[str], None]

Tally = Callable[[int, int], None]
"""Told ``(done, total)`` as a long step advances (a progress bar on a terminal)."""
