"""The search's Optuna study, kept in an RDB storage so it outlives the search.

By default the study lives in ``<workdir>/tune/<name>/optuna.db`` (SQLite, beside Tune's
experiment, so it moves aside with it when a new search of the same name starts); with a
remote ``workdir`` in ``./optuna.db``; ``search.study_storage`` names any SQLAlchemy URL
instead (``postgresql://...``: one database, many studies). The study is named after the
search's MLflow parent run, so ``optuna-dashboard <storage URL>`` shows the same searches the
MLflow experiment does. Only the driver touches the storage (Ray's searcher lives there).

After the search, trials the study still holds as RUNNING (asked by a search that was killed
before Tune saved them, so the resumed search never finished them) are marked FAIL, and a copy
of this study alone is logged on the parent run as ``optuna/study.db``.
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

from pipeline.errors import ConfigError, PipelineError
from tasks import storage

if TYPE_CHECKING:
    from mlflow import MlflowClient

STUDY_FILE = "optuna.db"
STUDY_ARTIFACT = "optuna/study.db"
STORAGE_TAG = "learn2tune.optuna_storage"
STUDY_TAG = "learn2tune.optuna_study"
LOST_NOTE = "asked by a search killed before Tune saved the trial; the resumed search ran another in its place"


def resolve_storage(given: str | None, workdir: str, name: str, cwd: Path) -> str:
    """The study's storage URL: ``given`` (a relative SQLite path made absolute against ``cwd``), else
    a SQLite file in the experiment directory, or in ``cwd`` when ``workdir`` is a storage URI."""
    if given:
        if given.startswith("sqlite:///"):
            path = Path(given.removeprefix("sqlite:///")).expanduser()
            return "sqlite:///" + str(path if path.is_absolute() else cwd / path)
        return given
    if storage.is_remote(workdir):
        return f"sqlite:///{cwd / STUDY_FILE}"
    return f"sqlite:///{Path(workdir) / 'tune' / name / STUDY_FILE}"


def check_storage_url(url: str) -> None:
    """A ConfigError unless ``url`` parses as a SQLAlchemy URL of a dialect this environment has."""
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError, NoSuchModuleError

    try:
        make_url(url).get_dialect()
    except (ArgumentError, NoSuchModuleError, ValueError) as exc:
        raise ConfigError(
            f"search.study_storage must be a database URL such as sqlite:///optuna.db or "
            f"postgresql://host/db, got {url!r} ({str(exc).splitlines()[0]})"
        ) from None


def shown_url(url: str) -> str:
    """``url`` with any password replaced by ``***`` (for tags and printed lines)."""
    from sqlalchemy.engine import make_url

    return make_url(url).render_as_string(hide_password=True)


def study_name(client: MlflowClient, parent_run_id: str) -> str:
    """The study's name: the search's MLflow parent run name (``<name>-<start time>``)."""
    return client.get_run(parent_run_id).info.run_name


def open_storage(url: str):
    """The Optuna RDB storage at ``url`` (created when new); one line naming it if it cannot be opened."""
    import optuna
    from sqlalchemy.exc import SQLAlchemyError

    if url.startswith("sqlite:///"):
        Path(url.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
    try:
        return optuna.storages.RDBStorage(url)
    except (SQLAlchemyError, ImportError, OSError) as exc:
        raise PipelineError(
            f"cannot open the Optuna study storage {shown_url(url)} (search.study_storage): {str(exc).splitlines()[0]}"
        ) from None


def check_reachable(url: str) -> None:
    """Open a configured database once before the search writes anything (a SQLite file is
    created where it belongs when the search starts)."""
    if not url.startswith("sqlite:///"):
        open_storage(url)


def has_study(url: str, name: str) -> bool:
    """Whether the storage at ``url`` holds study ``name`` (a search resumed from before studies
    were kept in a database continues its in-memory one)."""
    import optuna

    return name in optuna.get_all_study_names(url)


def settle_lost_trials(url: str, name: str) -> int:
    """Mark the study's RUNNING trials FAIL (with a note); returns how many there were.

    Called after the search has finished: every trial Tune knows has been told by then.
    """
    import optuna
    from optuna.trial import TrialState

    rdb = optuna.storages.RDBStorage(url)
    study_id = rdb.get_study_id_from_name(name)
    lost = [t for t in rdb.get_all_trials(study_id, deepcopy=False) if t.state == TrialState.RUNNING]
    for trial in lost:
        rdb.set_trial_user_attr(trial._trial_id, "learn2tune_note", LOST_NOTE)
        rdb.set_trial_state_values(trial._trial_id, TrialState.FAIL)
    return len(lost)


def log_study(client: MlflowClient, run_id: str, url: str, name: str) -> None:
    """Tag ``run_id`` with where the study lives and log a SQLite copy of this study alone."""
    import optuna

    client.set_tag(run_id, STORAGE_TAG, shown_url(url))
    client.set_tag(run_id, STUDY_TAG, name)
    with tempfile.TemporaryDirectory(prefix="learn2tune-study-") as directory:
        copy = Path(directory) / Path(STUDY_ARTIFACT).name
        if url.startswith("sqlite:///") and optuna.get_all_study_names(url) == [name]:
            shutil.copyfile(url.removeprefix("sqlite:///"), copy)  # the search's own file: 1-4 s faster
        else:
            optuna.copy_study(from_study_name=name, from_storage=url, to_storage=f"sqlite:///{copy}")
        client.log_artifact(run_id, str(copy), str(Path(STUDY_ARTIFACT).parent))


def dashboard_command(url: str) -> str:
    """The command that opens the study's storage in optuna-dashboard."""
    return f"optuna-dashboard {shown_url(url)}"
