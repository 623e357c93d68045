"""The user's command line, as the next command needs it.

A hint that names another command (``run `learn2tune evaluate` first``, the next step a stage
prints, the ``--resume`` command after Ctrl+C) must point at the same experiment: it keeps the
config file as the user typed it, ``--experiment``, every ``--set`` and the registered model's
``--name``. Stages write such hints as ```learn2tune STAGE [--flag ...]``` in backticks, knowing
nothing of the command line; :meth:`Invocation.complete` fills them in where they are printed.
"""

from __future__ import annotations

import argparse
import re
import shlex
from collections.abc import Sequence
from dataclasses import dataclass

STAGES = ("build", "search", "evaluate", "register", "promote", "serve", "run", "ui")
NAMED_STAGES = ("register", "promote", "serve", "run")  # the commands with --name
HINT = re.compile(rf"`learn2tune ({'|'.join(STAGES)})((?: --[a-z][\w-]*)*)`")


@dataclass(frozen=True)
class Invocation:
    """What of one ``learn2tune`` command line the commands after it need."""

    argv: tuple[str, ...]  # as typed, without the program name
    config: str | None  # the config file as the user gave it; None: the default
    carried: tuple[str, ...]  # --experiment and the overrides, as flags every stage takes
    model_name: str | None

    @classmethod
    def of(cls, argv: Sequence[str], args: argparse.Namespace) -> Invocation:
        carried: list[str] = []
        if getattr(args, "experiment", None):
            carried += ["--experiment", args.experiment]
        for assignment in getattr(args, "set", []):
            carried += ["--set", assignment]
        if getattr(args, "dataset_dir", None):  # build's --out is data.dir for the stages after it
            carried += ["--set", f"data.dir={args.dataset_dir}"]
        return cls(tuple(argv), getattr(args, "config", None), tuple(carried), getattr(args, "model_name", None))

    def command(self, stage: str, *flags: str) -> str:
        """``learn2tune STAGE [CONFIG] --experiment ... FLAGS``, quoted for a POSIX shell."""
        words = ["learn2tune", stage, *([self.config] if self.config else []), *self.carried]
        if self.model_name and stage in NAMED_STAGES:
            words += ["--name", self.model_name]
        return shlex.join([*words, *flags])

    def again(self, *flags: str) -> str:
        """This very command line with ``flags`` added (those it has already are not repeated)."""
        return shlex.join(["learn2tune", *self.argv, *(flag for flag in flags if flag not in self.argv)])

    def complete(self, text: str) -> str:
        """``text`` with each ```learn2tune STAGE [--flags]``` hint made this invocation's command."""
        return HINT.sub(lambda hint: f"`{self.command(hint[1], *hint[2].split())}`", text)
