"""Where a command's lines go: stdout, every hint completed for the user's command line, and on a
terminal written above the progress bar being drawn (so a line never lands inside a bar)."""

from __future__ import annotations

import sys
from dataclasses import dataclass
from typing import TextIO

from pipeline.invocation import Invocation


@dataclass(frozen=True)
class Console:
    """A :data:`tasks.say.Say` for one command: ``console(line)``."""

    invocation: Invocation
    terminal: TextIO | None  # stdout when it is a terminal (progress bars are drawn there), else None

    @classmethod
    def for_stdout(cls, invocation: Invocation) -> Console:
        return cls(invocation, sys.stdout if sys.stdout.isatty() else None)

    def __call__(self, line: str) -> None:
        line = self.invocation.complete(line)
        if self.terminal is None:
            print(line, flush=True)
            return
        from tqdm import tqdm

        with tqdm.external_write_mode(file=self.terminal):
            print(line, file=self.terminal, flush=True)

    def next_step(self, what: str, *commands: str) -> None:
        """``next, WHAT:`` and the commands (each ``learn2tune STAGE [--flags]``), completed."""
        self(f"\nnext, {what}:" + "".join(f"\n  {self.invocation.command(*command.split())}" for command in commands))
