"""The per-family configurations of ``learn2tune bench omniglot``: ``configs/omniglot/<family>.yaml``.

A file states one family's published configuration for each of the four settings and the two
budgets. Its shape::

    family: maml                       # must match the file name and a registered family
    paper: Finn, Abbeel & Levine 2017  # the citation printed in the table
    image_size: 28                     # the Omniglot build the family trains on
    note: ...                          # optional: why a figure may differ from the paper's
    hparams: {...}                     # learner hyperparameters shared by every setting
    budget_hparams: {cpu: {...}}       # optional: per-budget changes shared by every setting
    settings:                          # all four of 5w1s, 5w5s, 20w1s, 20w5s
      5w1s:
        paper: 98.7                    # published accuracy (%), null when the paper has none
        train: {shots: 1, query: 1}    # training episodes (ways are the setting's); shots default to the setting's
        meta_batch: 32                 # tasks per meta-iteration
        hparams: {...}                 # this setting's hyperparameters
        budget:
          full: {iterations: 60000}    # the paper's count
          cpu: {iterations: 300, meta_batch: 8, hparams: {...}}  # the 2-core cut

A cell's hyperparameters are ``hparams``, then the setting's, then ``budget_hparams`` of the
budget, then the setting's budget ``hparams`` (later ones win). Every value is checked when the
file is loaded (each mapping, then each cell's merged values, by the family's hyperparameter
dataclass), so a bad value stops the run before any training with an error naming the file and
the field.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

from pydantic import Field

from learners.registry import HyperparamError, UnknownFamilyError, family_names, make_hparams
from pipeline.config import read_yaml
from pipeline.errors import ConfigError
from pipeline.schema import Count, Integer, Number, Section, Table, Text, parse
from tasks.episodes import EpisodeSpec
from tasks.say import Say

SETTINGS = ("5w1s", "5w5s", "20w1s", "20w5s")
BUDGETS = ("full", "cpu")


class BudgetPlan(Section):
    iterations: Count = 1
    meta_batch: Count | None = None  # null: the setting's
    hparams: Table = {}


class SettingBudgets(Section):
    full: BudgetPlan = BudgetPlan()
    cpu: BudgetPlan = BudgetPlan()


class TrainEpisodes(Section):
    shots: Count | None = None  # null: the setting's shots
    query: Count = 15


class SettingPlan(Section):
    paper: Annotated[Number, Field(ge=0)] | None = None
    train: TrainEpisodes = TrainEpisodes()
    meta_batch: Count = 1
    hparams: Table = {}
    budget: SettingBudgets = SettingBudgets()


class BudgetHparams(Section):
    full: Table = {}
    cpu: Table = {}


class FamilyFile(Section):
    family: Text = ""
    paper: Text = ""
    image_size: Annotated[Integer, Field(ge=4)] = 28
    note: Text | None = None
    hparams: Table = {}
    budget_hparams: BudgetHparams = BudgetHparams()
    settings: Table = {}


@dataclass(frozen=True)
class FamilyPlan:
    """One family's validated file: its settings parsed."""

    path: Path
    family: str
    paper: str
    image_size: int
    note: str | None
    hparams: dict
    budget_hparams: BudgetHparams
    settings: dict[str, SettingPlan]


@dataclass(frozen=True)
class Cell:
    """One (family, setting) of the table under one budget, everything resolved."""

    family: str
    setting: str
    budget: str
    paper: float | None
    image_size: int
    train: EpisodeSpec  # as configured; a family may train with more ways (ProtoNet's train_ways)
    meta_batch: int
    iterations: int
    hparams: dict
    full_iterations: int
    full_meta_batch: int
    full_hparams: dict

    def cut(self) -> str:
        """What this budget changes from the full one, e.g. ``300 of 60,000 it; meta-batch 8 (32)``."""
        parts = [f"{self.iterations:,} of {self.full_iterations:,} it"]
        if self.meta_batch != self.full_meta_batch:
            parts.append(f"meta-batch {self.meta_batch} ({self.full_meta_batch})")
        ours = dataclasses.asdict(make_hparams(self.family, self.hparams))
        full = dataclasses.asdict(make_hparams(self.family, self.full_hparams))
        parts += [f"{key} {ours[key]} ({full[key]})" for key in ours if ours[key] != full[key]]
        return "; ".join(parts)


def setting_spec(name: str) -> tuple[int, int]:
    """``"20w5s"`` -> ``(20, 5)``."""
    ways, _, shots = name.removesuffix("s").partition("w")
    return int(ways), int(shots)


def load_family(path: Path) -> FamilyPlan:
    """The validated configuration in ``path``; ConfigError naming the file and the field otherwise."""
    raw = read_yaml(path)  # its errors name the file
    try:
        return _parse(path, raw)
    except ConfigError as exc:
        raise ConfigError(f"{path}: {exc.args[0]}") from None


def select_families(directory: Path, requested: Sequence[str], say: Say) -> list[str]:
    """The families to run: those ``requested`` by name, or for ``["all"]`` every registered family
    with a file in ``directory``. A family's file is optional: ``say`` gets why each one without is
    skipped."""
    if list(requested) != ["all"]:
        return list(requested)
    chosen = []
    for family in family_names():
        path = directory / f"{family}.yaml"
        if path.is_file():
            chosen.append(family)
        else:
            say(f"skipping {family}: no Omniglot configuration {path} (add one to give it a row)")
    if not chosen:
        raise ConfigError(f"{directory}: no family has a configuration here (expected {directory}/<family>.yaml)")
    return chosen


def load_families(directory: Path, families: list[str]) -> dict[str, FamilyPlan]:
    """``directory/<family>.yaml`` for each of ``families``, all validated before any is used."""
    plans = {}
    for family in families:
        path = directory / f"{family}.yaml"
        if not path.is_file():
            raise ConfigError(f"{path}: no configuration for family {family!r} (expected {directory}/<family>.yaml)")
        plans[family] = load_family(path)
    return plans


def resolve(plan: FamilyPlan, setting_name: str, budget: str) -> Cell:
    """The cell of ``plan`` for ``setting_name`` under ``budget`` (``full`` or ``cpu``)."""
    ways, shots = setting_spec(setting_name)
    chosen = plan.settings[setting_name]
    train = EpisodeSpec(ways, chosen.train.shots or shots, chosen.train.query)

    def run(name: str) -> tuple[int, int, dict]:
        step: BudgetPlan = getattr(chosen.budget, name)
        hparams = {**plan.hparams, **chosen.hparams, **getattr(plan.budget_hparams, name), **step.hparams}
        return step.iterations, step.meta_batch or chosen.meta_batch, hparams

    iterations, meta_batch, hparams = run(budget)
    full_iterations, full_meta_batch, full_hparams = run("full")
    return Cell(
        family=plan.family,
        setting=setting_name,
        budget=budget,
        paper=chosen.paper,
        image_size=plan.image_size,
        train=train,
        meta_batch=meta_batch,
        iterations=iterations,
        hparams=hparams,
        full_iterations=full_iterations,
        full_meta_batch=full_meta_batch,
        full_hparams=full_hparams,
    )


def _parse(path: Path, raw: dict[str, Any]) -> FamilyPlan:
    for key in ("family", "paper", "settings"):
        if key not in raw:
            raise ConfigError(f"{key} is required")
    parsed = parse(FamilyFile, raw)
    if parsed.family not in family_names():
        raise ConfigError(f"family: unknown learner family {parsed.family!r}; choose from: {', '.join(family_names())}")
    if parsed.family != path.stem:
        raise ConfigError(f"family is {parsed.family!r} but the file is named for {path.stem!r}")
    settings = {}
    for name in SETTINGS:
        if name not in parsed.settings:
            raise ConfigError(f"settings.{name} is required (the table has {', '.join(SETTINGS)})")
    for name, data in parsed.settings.items():
        if name not in SETTINGS:
            raise ConfigError(f"settings.{name} is not a setting; allowed: {', '.join(SETTINGS)}")
        settings[name] = parse(SettingPlan, data, f"settings.{name}")
        budgets = (data or {}).get("budget") or {}  # mappings or null: parse checked them
        for budget in BUDGETS:
            if "iterations" not in (budgets.get(budget) or {}):
                raise ConfigError(f"settings.{name}.budget.{budget}.iterations is required")
    plan = FamilyPlan(
        path=path,
        family=parsed.family,
        paper=parsed.paper,
        image_size=parsed.image_size,
        note=parsed.note,
        hparams=parsed.hparams,
        budget_hparams=parsed.budget_hparams,
        settings=settings,
    )
    _check_hparams(plan)
    return plan


def _check_hparams(plan: FamilyPlan) -> None:
    """Every hyperparameter mapping on its own (naming its field), then every cell's merged values:
    the family's dataclass checks its ranges and choices (its ``validate``), so no learner is built."""
    mappings: dict[str, Mapping[str, Any]] = {"hparams": plan.hparams}
    mappings.update({f"budget_hparams.{b}": getattr(plan.budget_hparams, b) for b in BUDGETS})
    for name, chosen in plan.settings.items():
        mappings[f"settings.{name}.hparams"] = chosen.hparams
        mappings.update({f"settings.{name}.budget.{b}.hparams": getattr(chosen.budget, b).hparams for b in BUDGETS})
    for name in plan.settings:
        mappings.update({f"settings.{name} ({b} budget)": resolve(plan, name, b).hparams for b in BUDGETS})
    for field, values in mappings.items():
        try:
            make_hparams(plan.family, values)
        except (HyperparamError, UnknownFamilyError) as exc:
            raise ConfigError(f"{field}: {exc}") from None
