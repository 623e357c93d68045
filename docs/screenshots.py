"""Screenshots of the MLflow views a learn2tune user sees, taken from a real run, for the README.

    .venv/bin/python docs/screenshots.py        # writes docs/screenshots/*.png

Runs a small real pipeline (build, a 4-trial search with nested trial runs, evaluate, register,
promote) in a temporary workdir, starts ``learn2tune ui`` there on a free 127.0.0.1 port, opens
the link it prints, and drives a headless Chromium through :func:`views`. Needs the
``screenshots`` extra (``pip install -e '.[screenshots]'``: Playwright for Python) and a system
Chromium (``apt-get install chromium``, or ``CHROMIUM=/path/to/chrome``); Playwright's own browser
download is not used. ``--workdir DIR --reuse`` photographs a run already in DIR again.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from mlflow import MlflowClient
    from playwright.sync_api import Page

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
CONFIG = ROOT / "configs" / "quickstart.yaml"
PIPELINE = [
    ["run", str(CONFIG), "--trials", "4", "--max-iterations", "200", "--set", "episodes.test.episodes=100"],
    ["promote", str(CONFIG), "--set", "episodes.test.episodes=100"],
]
QUIET = {"RAY_USAGE_STATS_ENABLED": "0", "RAY_AUTH_MODE": "disabled", "MLFLOW_DISABLE_TELEMETRY": "true"}
WIDTH, HEIGHT = 1600, 900  # the viewport
RUNS_TABLE_COLUMNS = (
    "attributes.`Dataset`", "attributes.`Source`", "attributes.`Models`",
    "metrics.`val_accuracy_best`", "params.`family`",
)  # fmt: skip
# The UI's own first-visit extras (assistant panel, feature tips) stay closed; the workflow switch
# (GenAI / Model training) is left alone, so the runs table shows what the printed link opens.
CLOSED_PANELS = {
    "mlflow.assistant.panelOpen_v1": "false",
    "mlflow.assistant.fab.autoOpenedOnFirstLoad_v1": "true",
    "mlflow.detectIssues.guidanceShown_v1": "true",
}
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".svg")
UI_READY_S = 300.0  # `mlflow ui` takes 20-90 s to answer on a busy 2-core machine
STOP_S = 60.0
READY_MS = 60_000  # for a page's data to show
SETTLE_S = 3.0  # charts animate in after their data arrives


@dataclass(frozen=True)
class Targets:
    """What the views show, read from the tracking store after the pipeline."""

    experiment_id: str
    parent_run_id: str
    parent_run_name: str
    trial_run_id: str  # the registered version's trial
    trial_run_name: str
    model_name: str
    version: str
    search_images: list[str]  # image artifacts of the parent run, e.g. the search's plots
    trial_images: list[str]


@dataclass(frozen=True)
class View:
    """One screenshot: a UI page (a path after ``#/``, or a full URL) and what to do there first."""

    name: str
    page: str
    ready_text: str  # shown once the page has its data
    prepare: Callable[[Page], None] | None = None


def views(targets: Targets, runs_table_url: str) -> list[View]:
    """The views of the README's tour, in order. Add a view here to photograph another page."""
    run = f"experiments/{targets.experiment_id}/runs"
    parent, trial = f"{run}/{targets.parent_run_id}", f"{run}/{targets.trial_run_id}"
    return [
        View("runs-table", runs_table_url, targets.parent_run_name, expand_nested_runs(targets.trial_run_name)),
        View("trial-charts", f"{trial}/model-metrics", "Model metrics", filter_charts("accuracy")),
        *artifact_views("trial", trial, targets.trial_images),
        *artifact_views("search", parent, targets.search_images or ["search_result.json"]),
        View("registered-version", f"models/{targets.model_name}/versions/{targets.version}", "Aliases"),
    ]


def artifact_views(prefix: str, run_page: str, paths: list[str]) -> list[View]:
    """One view per artifact: the run page's artifact browser with that file open."""
    return [View(f"{prefix}-{_slug(path)}", f"{run_page}/artifacts/{path}", Path(path).name) for path in paths]


def runs_table_state(experiment_id: str) -> dict[str, str]:
    """The runs table's columns, as its Columns menu would save them in the browser: the trial's
    validation accuracy and family beside MLflow's own columns."""
    state = {"selectedColumns": [*RUNS_TABLE_COLUMNS]}
    return {f'MLflowLocalStorage-1.1-ExperimentPage-["{experiment_id}"]-ReactComponentState': json.dumps(state)}


def expand_nested_runs(trial_run_name: str) -> Callable[[Page], None]:
    """Unfold the newest parent run (its expand button) until its trial ``trial_run_name`` shows."""

    def prepare(page: Page) -> None:
        page.locator("button[data-component-id*='runnamecellrenderer']").first.click()
        page.get_by_text(trial_run_name, exact=True).first.wait_for(timeout=READY_MS)

    return prepare


def filter_charts(text: str) -> Callable[[Page], None]:
    """Show only the charts whose metric name holds ``text`` (the page's chart search box)."""

    def prepare(page: Page) -> None:
        page.get_by_placeholder("Search metric charts").fill(text)

    return prepare


def _slug(path: str) -> str:
    """An artifact path as a file-name part: ``plots/val_history.png`` -> ``plots-val-history``."""
    return str(Path(path).with_suffix("")).replace("/", "-").replace("_", "-")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "screenshots", help="where the PNGs go")
    parser.add_argument("--workdir", type=Path, help="run the pipeline here and keep it (default: a temp dir)")
    parser.add_argument("--reuse", action="store_true", help="photograph the run already in --workdir")
    args = parser.parse_args(argv)
    if args.reuse and args.workdir is None:
        parser.error("--reuse needs --workdir")
    chromium = os.environ.get("CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        parser.error("no chromium on PATH: apt-get install chromium, or set CHROMIUM=/path/to/chrome")
    started = time.perf_counter()
    with _workdir(args.workdir) as workdir:
        if not args.reuse:
            run_pipeline(workdir)
        pipeline_s = time.perf_counter() - started
        targets = read_targets(workdir)
        with ui_server(workdir) as runs_table_url:
            shown = views(targets, runs_table_url)
            written = capture(shown, targets.experiment_id, runs_table_url, chromium, args.out)
    for stale in sorted(set(args.out.glob("*.png")) - set(written)):
        stale.unlink()
        print(f"  removed {stale.name} (no such view now)")
    for path in written:
        print(f"  {path.relative_to(ROOT) if path.is_relative_to(ROOT) else path} ({path.stat().st_size // 1024} KiB)")
    print(f"{len(written)} screenshots in {time.perf_counter() - started:.0f} s (pipeline {pipeline_s:.0f} s)")
    return 0


@contextmanager
def _workdir(given: Path | None) -> Iterator[Path]:
    if given is not None:
        given.mkdir(parents=True, exist_ok=True)
        yield given.resolve()
        return
    with tempfile.TemporaryDirectory(prefix="learn2tune-screens-") as temp:
        yield Path(temp)


def _environment() -> dict[str, str]:
    path = f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}"
    pythonpath = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))
    return {**os.environ, **QUIET, "PATH": path, "PYTHONPATH": pythonpath}


def run_pipeline(workdir: Path) -> None:
    """The pipeline's commands in ``workdir`` (its tracking store and runs land there); stops on a failure."""
    log = workdir / "pipeline.log"
    for command in PIPELINE:
        print(f"learn2tune {' '.join(command)}", flush=True)
        with log.open("a") as sink:
            done = subprocess.run(
                [str(BIN / "learn2tune"), *command],
                cwd=workdir,
                env=_environment(),
                stdout=sink,
                stderr=subprocess.STDOUT,
            )
        if done.returncode != 0:
            tail = "\n".join(log.read_text().splitlines()[-20:])
            raise SystemExit(f"learn2tune {command[0]} failed ({done.returncode}); the end of {log}:\n{tail}")


def read_targets(workdir: Path) -> Targets:
    """The experiment, its newest search run, the champion version and its trial, from the store."""
    from mlflow import MlflowClient

    from pipeline.config import load_config
    from pipeline.tracking import ROLE_TAG

    config = load_config(CONFIG, cwd=workdir, environ={})
    client = MlflowClient(tracking_uri=config.tracking.uri, registry_uri=config.tracking.uri)
    experiment = client.get_experiment_by_name(config.tracking.experiment)
    if experiment is None:
        raise SystemExit(f"no experiment {config.tracking.experiment!r} in {config.tracking.uri}: run the pipeline")
    parents = client.search_runs(
        [experiment.experiment_id], f"tags.`{ROLE_TAG}` = 'search'", order_by=["attributes.start_time DESC"]
    )
    version = client.get_model_version_by_alias(config.registry.model_name, "champion")
    return Targets(
        experiment_id=experiment.experiment_id,
        parent_run_id=parents[0].info.run_id,
        parent_run_name=parents[0].info.run_name,
        trial_run_id=str(version.run_id),
        trial_run_name=client.get_run(str(version.run_id)).info.run_name,
        model_name=config.registry.model_name,
        version=str(version.version),
        search_images=_images(client, parents[0].info.run_id),
        trial_images=_images(client, str(version.run_id)),
    )


def _images(client: MlflowClient, run_id: str, folder: str | None = None) -> list[str]:
    """The image artifacts of ``run_id``, sub-folders included, in path order."""
    found: list[str] = []
    for entry in client.list_artifacts(run_id, folder):
        if entry.is_dir:
            found += _images(client, run_id, entry.path)
        elif entry.path.lower().endswith(IMAGE_SUFFIXES):
            found.append(entry.path)
    return sorted(found)


@contextmanager
def ui_server(workdir: Path) -> Iterator[str]:
    """``learn2tune ui`` on a free port in ``workdir``; yields the runs-table link it prints."""
    port = _free_port()
    log = workdir / "ui.log"
    with log.open("w") as sink:
        process = subprocess.Popen(
            [str(BIN / "learn2tune"), "ui", str(CONFIG), "--port", str(port)],
            cwd=workdir, env=_environment(), stdout=sink, stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip
    try:
        yield _wait_for_ui(process, log, f"http://127.0.0.1:{port}")
    finally:
        _stop(process)


def _stop(process: subprocess.Popen[bytes]) -> None:
    """Stop the UI and the worker and job processes it started (its own process group): SIGTERM,
    then SIGKILL for what is left after :data:`STOP_S`."""
    deadline = time.monotonic() + STOP_S
    _signal_group(process.pid, signal.SIGTERM)
    while time.monotonic() < deadline:
        process.poll()  # reaps the leader, so only live members keep the group
        if not _signal_group(process.pid, 0):
            return
        time.sleep(0.5)
    _signal_group(process.pid, signal.SIGKILL)
    process.wait()


def _signal_group(group: int, sig: int) -> bool:
    """Send ``sig`` to process group ``group``; whether any member was there to get it."""
    try:
        os.killpg(group, sig)
    except ProcessLookupError:
        return False
    return True


def _wait_for_ui(process: subprocess.Popen[bytes], log: Path, base: str) -> str:
    """The link ``learn2tune ui`` printed, once the UI at ``base`` answers."""
    deadline = time.monotonic() + UI_READY_S
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise SystemExit(f"learn2tune ui exited with {process.returncode}:\n{log.read_text()[-2000:]}")
        try:
            with urllib.request.urlopen(f"{base}/health", timeout=2):
                break
        except OSError:
            time.sleep(1)
    else:
        raise SystemExit(f"the MLflow UI at {base} did not answer within {UI_READY_S:.0f} s; see {log}")
    printed = log.read_text().splitlines()[0]
    _, _, url = printed.partition("# then open ")
    if not url.startswith(base):
        raise SystemExit(f"learn2tune ui printed no link to {base}: {printed!r}")
    return url.strip()


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def capture(shown: list[View], experiment_id: str, runs_table_url: str, chromium: str, out: Path) -> list[Path]:
    """Each view as ``out/NAME.png``; views of the runs-table view's workflow (its query string)."""
    from playwright.sync_api import TimeoutError as PlaywrightTimeout
    from playwright.sync_api import sync_playwright

    base, _, query = runs_table_url.partition("/#/")
    workflow = query.partition("?")[2]
    out.mkdir(parents=True, exist_ok=True)
    written = []
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=chromium, args=["--no-sandbox"])
        context = browser.new_context(viewport={"width": WIDTH, "height": HEIGHT})
        stored = {**CLOSED_PANELS, **runs_table_state(experiment_id)}
        context.add_init_script(
            "".join(f"localStorage.setItem({json.dumps(k)}, {json.dumps(v)});" for k, v in stored.items())
        )
        for view in shown:
            url = view.page if "://" in view.page else f"{base}/#/{view.page}?{workflow}"
            print(f"{view.name}: {url}", flush=True)
            # A page of its own per view: the single-page UI keeps the artifact it first opened
            # when only the URL's fragment changes.
            page = context.new_page()
            page.goto(url)
            try:
                page.get_by_text(view.ready_text).first.wait_for(timeout=READY_MS)
            except PlaywrightTimeout:
                page.screenshot(path=out / f"{view.name}.timeout.png")
                raise SystemExit(f"{view.name}: no {view.ready_text!r} on {url} within {READY_MS // 1000} s") from None
            if view.prepare is not None:
                view.prepare(page)
            page.evaluate("document.activeElement?.blur()")  # no focus ring on what prepare clicked
            page.wait_for_timeout(SETTLE_S * 1000)
            path = out / f"{view.name}.png"
            page.screenshot(path=path)
            _optimise(path)
            written.append(path)
            page.close()
        browser.close()
    return written


def _optimise(path: Path) -> None:
    """A 256-colour palette PNG: UI screenshots keep their look at a fraction of the size."""
    from PIL import Image

    with Image.open(path) as image:
        small = image.convert("RGB").quantize(colors=256, method=Image.Quantize.MEDIANCUT, dither=Image.Dither.NONE)
    small.save(path, optimize=True)


if __name__ == "__main__":
    sys.exit(main())
