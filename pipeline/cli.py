"""``learn2tune``: build | search | evaluate | register | promote | serve | run | bench | ui.

Heavy libraries (torch, ray, mlflow, optuna) are imported inside the commands, so ``--help``
answers at once. Bad input ends with one line ``learn2tune: error: ...`` and exit status 2,
before anything is written. Every command ends by printing the next one, and every command a
line names keeps the user's config, ``--experiment`` and overrides (:mod:`pipeline.invocation`).
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn

from pipeline.console import Console
from pipeline.invocation import Invocation
from tasks.sources import source_names

if TYPE_CHECKING:
    from pipeline.config import Config

DEFAULT_CONFIG = Path("configs/quickstart.yaml")
# name -> module; `learn2tune bench` alone runs the speed benchmarks, not the hour-long Omniglot table
BENCHMARKS = {
    "sampler": "benchmarks.sampler",
    "maml": "benchmarks.maml",
    "families": "benchmarks.families",
    "serving": "benchmarks.serving",
    "omniglot": "benchmarks.omniglot_table",
    "omniglot-search": "benchmarks.omniglot_search",
    "data-sharing": "benchmarks.data_sharing",
    "fomaml-reference": "benchmarks.fomaml_reference",
    "gpu": "benchmarks.gpu_check",
    "cross-domain": "benchmarks.cross_domain",
    "warm-start": "benchmarks.warm_start",
}
SPEED_BENCHMARKS = ("sampler", "maml", "families", "serving")
EXIT_USER_ERROR, EXIT_FAILED, EXIT_INTERRUPTED = 2, 1, 130


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    try:
        args = _parser().parse_args(argv)
    except SystemExit as exc:  # --help, --version, or a usage error already reported in one line
        return int(exc.code or 0)
    invocation = Invocation.of(argv, args)
    console = Console.for_stdout(invocation)
    os.environ.setdefault("MLFLOW_LOGGING_LEVEL", "WARNING")  # no INFO lines about database setup
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    errors = _user_errors()
    from pipeline.errors import SearchFailed, SearchInterrupted

    try:
        return args.handler(args, console) or 0
    except errors as exc:
        print(f"learn2tune: error: {invocation.complete(str(exc))}", file=sys.stderr)
        return EXIT_USER_ERROR
    except SearchFailed as exc:
        print(f"learn2tune: error: {invocation.complete(str(exc))}", file=sys.stderr)
        return EXIT_FAILED
    except SearchInterrupted:
        print(
            f"learn2tune: the search was interrupted and its state saved; finish it with "
            f"`{invocation.again('--resume')}`",
            file=sys.stderr,
        )
        return EXIT_INTERRUPTED
    except KeyboardInterrupt:
        print("learn2tune: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED


def _version() -> str:
    try:
        return version("learn2tune")
    except PackageNotFoundError:  # run from a checkout that was never installed
        return "unknown (not installed)"


def _user_errors() -> tuple[type[Exception], ...]:
    from learners.registry import HyperparamError, UnknownFamilyError
    from pipeline.errors import PipelineError
    from tasks.errors import DatasetError, EpisodeError
    from tasks.storage import StorageError

    return (PipelineError, DatasetError, EpisodeError, StorageError, UnknownFamilyError, HyperparamError)


# ---------------------------------------------------------------- commands


def cmd_build(args: argparse.Namespace, out: Console) -> int:
    from pipeline import datasets

    config = _config(args)
    datasets.build(config, out, overwrite=args.overwrite, stream=out.terminal)
    out.next_step("search learner families and their hyperparameters on it", "search")
    return 0


def cmd_search(args: argparse.Namespace, out: Console) -> int:
    from pipeline.search import search

    search(_config(args), out, os.environ, resume=args.resume)
    out.next_step("score the best trials on the test split", "evaluate")
    return 0


def cmd_evaluate(args: argparse.Namespace, out: Console) -> int:
    from pipeline.evaluate import evaluate

    if args.on:  # cross-domain: another dataset's test split
        from pipeline.cross_domain import evaluate_on

        config = _config(args)
        evaluate_on(config, args.on, out, stream=out.terminal)
        report = f"learn2tune report cross-domain --experiments {config.name}"
        out(f"\nnext, tabulate in-domain and cross-domain scores:\n  {report}")
        return 0
    untrained = [name.strip() for name in args.untrained.split(",") if name.strip()] if args.untrained else []
    evaluate(_config(args), out, untrained=untrained, stream=out.terminal)
    out.next_step("register the winner in the MLflow Model Registry (alias candidate)", "register")
    return 0


def cmd_report(args: argparse.Namespace, out: Console) -> int:
    from pipeline.cross_domain_report import report

    experiments = [name.strip() for name in args.experiments.split(",") if name.strip()]
    text = report(_config(args), experiments, Path(args.out) if args.out else None)
    out(f"wrote {args.out} and {Path(args.out).with_suffix('.json')}" if args.out else text)
    return 0


def cmd_register(args: argparse.Namespace, out: Console) -> int:
    from pipeline.register import register

    register(_config(args), out)
    out.next_step("gate the candidate against the champion on the same test episodes", "promote")
    return 0


def cmd_promote(args: argparse.Namespace, out: Console) -> int:
    from pipeline.preflight import check_registry_exists
    from pipeline.promote import promote
    from pipeline.promote_limits import Limits

    config = _config(args)
    limits = Limits.of(config, args.max_latency_ms, args.max_params)
    check_registry_exists(config.tracking.uri, config.registry.model_name)
    promote(config, out, candidate=args.candidate, force=args.force, stream=out.terminal, limits=limits)
    out.next_step("serve the champion over HTTP", "serve")
    return 0


def cmd_serve(args: argparse.Namespace, out: Console) -> int:
    from pipeline.preflight import check_port_free, check_registry_exists
    from pipeline.serve import resolve, serve_command, server_environment

    config = _config(args)
    check_registry_exists(config.tracking.uri, config.registry.model_name)
    target = resolve(config, args.version, args.alias)
    command = serve_command(target, args.host, args.port, args.workers)
    check_port_free(args.host, args.port)  # else the server fails after loading the model, in a traceback
    out(f"serving {target.model_uri} (version {target.version}, {target.family}) from {config.tracking.uri}")
    out(f"  POST http://{args.host}:{args.port}/invocations  (health: GET /ping; Ctrl-C stops)")
    os.execve(command[0], command, server_environment(config, dict(os.environ)))
    return 0  # not reached: execve replaces this process


def cmd_run(args: argparse.Namespace, out: Console) -> int:
    from pipeline import datasets
    from pipeline.evaluate import evaluate
    from pipeline.ray_runtime import check_trial_resources, connect
    from pipeline.register import ALIAS, register
    from pipeline.report import run_summary
    from pipeline.search import RESULT_FILE, search
    from pipeline.tracking import check_server
    from pipeline.ui import ui_hint

    config = _config(args)
    check_server(config.tracking.uri)
    connect(config.ray.address, os.environ, config.ray.env_vars, out)
    check_trial_resources(config.search.resources, out, config.ray.wait_for_resources)
    out(f"== build: {config.data.source} -> {config.dataset_dir}")
    datasets.build(config, out, overwrite=args.overwrite, stream=out.terminal)
    store = datasets.open_dataset(config)
    datasets.check_search_episodes(store, config)
    datasets.check_test_episodes(store, config)
    out("\n== search")
    if args.resume and config.experiment_location.child(RESULT_FILE).is_file():
        out(f"the search in {config.experiment_location} already finished: going on to evaluate")
    else:
        search(config, out, os.environ, resume=args.resume)
    out("\n== evaluate")
    evaluation = evaluate(config, out, stream=out.terminal)
    out("\n== register")
    registered = register(config, out)
    out("\n" + run_summary(evaluation, registered, ALIAS))
    out.next_step("make it the champion and serve it", "promote", "serve")
    out("\nbrowse runs, curves and the registry with:\n  " + ui_hint(config))
    return 0


def cmd_bench(args: argparse.Namespace, out: Console) -> int:
    import importlib

    from pipeline.errors import PipelineError

    status = 0
    for name in [args.benchmark] if args.benchmark else SPEED_BENCHMARKS:
        try:
            module = importlib.import_module(BENCHMARKS[name])
        except ModuleNotFoundError as exc:
            if exc.name not in ("benchmarks", BENCHMARKS[name]):
                raise
            raise PipelineError(f"benchmark {name!r} is not available (no module {BENCHMARKS[name]})") from None
        try:
            status = status or (module.main(args.bench_args) or 0)
        except SystemExit as exc:  # its own --help, or a usage error it reported in one line
            return int(exc.code or 0)
    return status


def cmd_ui(args: argparse.Namespace, out: Console) -> int:
    from pipeline.preflight import check_port_free
    from pipeline.tracking import check_server, is_server
    from pipeline.ui import ui_command, ui_hint

    config = _config(args)
    if is_server(config.tracking.uri):
        check_server(config.tracking.uri)
        out(ui_hint(config))
        return 0
    check_port_free("127.0.0.1", args.port)  # `mlflow ui` on a busy port gives up, and exits 0
    command = ui_command(config, args.port)
    out(ui_hint(config, args.port))
    env = dict(os.environ, PATH=f"{Path(command[0]).parent}{os.pathsep}{os.environ.get('PATH', '')}")
    os.execve(command[0], command, env)
    return 0  # not reached: execve replaces this process


# ---------------------------------------------------------------- config from arguments


def _config(args: argparse.Namespace) -> Config:
    from pipeline.config import load_config, parse_assignment

    path = args.config
    if path is None and DEFAULT_CONFIG.is_file():
        path = DEFAULT_CONFIG
    overrides = [parse_assignment(text) for text in args.set] + _flag_overrides(args)
    config = load_config(path, overrides + _lifted_trial_cap(args, path, overrides), cwd=Path.cwd(), environ=os.environ)
    check_storage(config)
    return config


def _lifted_trial_cap(args: argparse.Namespace, path: Any, overrides: list[tuple[str, Any]]) -> list[tuple[str, Any]]:
    """``--time-budget`` without ``--trials``: no cap on trials (noted when the config had one)."""
    from pipeline.config import load_config
    from pipeline.time_budget import lifted_cap_note

    if getattr(args, "time_budget", None) is None or args.trials is not None:
        return []
    note = lifted_cap_note(load_config(path, overrides, cwd=Path.cwd(), environ=os.environ).search.trials)
    if note:
        print(note, flush=True)
    return [("search.trials", None)]


def check_storage(config: Config) -> None:
    """A missing bucket (or an unreachable endpoint) of ``workdir`` or ``data.dir``, before any stage writes."""
    from tasks import storage

    workdir = storage.resolve(config.workdir, config.storage.endpoint_url)
    for field, location in (("workdir", workdir), ("data.dir", config.dataset_location)):
        storage.check_bucket(location, field)


def _flag_overrides(args: argparse.Namespace) -> list[tuple[str, Any]]:
    """The dedicated flags as (dotted.key, value) pairs, values read like ``--set`` values."""
    from pipeline.config import parse_list, parse_scalar

    pairs = []
    for flag, (key, parse) in FLAG_FIELDS.items():
        value = getattr(args, flag, None)
        if value is None or value is False:
            continue
        parsers: dict[str, Callable[[Any], Any]] = {
            "scalar": parse_scalar,
            "list": parse_list,
            "text": str,
            "true": bool,
        }
        pairs.append((key, parsers[parse](value)))
    return pairs


# attribute -> (config field, how to read the flag's text)
FLAG_FIELDS: dict[str, tuple[str, str]] = {
    "experiment": ("name", "text"),
    "source": ("data.source", "text"),
    "path": ("data.path", "text"),
    "split": ("data.split", "text"),
    "rotations": ("data.rotations", "true"),
    "dataset_dir": ("data.dir", "text"),  # build --out
    "families": ("search.families", "list"),
    "backbones": ("search.backbones", "list"),
    "trials": ("search.trials", "scalar"),
    "time_budget": ("search.time_budget", "scalar"),
    "max_iterations": ("search.max_iterations", "scalar"),
    "cpus_per_trial": ("search.resources.cpu", "scalar"),
    "gpus_per_trial": ("search.resources.gpu", "scalar"),
    "address": ("ray.address", "text"),
    "wait_for_resources": ("ray.wait_for_resources", "scalar"),
    "ways": ("episodes.test.ways", "list"),
    "shots": ("episodes.test.shots", "list"),
    "episodes": ("episodes.test.episodes", "scalar"),
    "model_name": ("registry.model_name", "text"),
    "warm_start": ("search.warm_start", "list"),
}


# ---------------------------------------------------------------- argument parser


class Parser(argparse.ArgumentParser):
    """Reports a usage error (an unknown flag, a missing value) in one line, like all bad input."""

    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_USER_ERROR, f"learn2tune: error: {message} (see {self.prog} --help)\n")


def _parser() -> argparse.ArgumentParser:
    parser = Parser(
        prog="learn2tune",
        description="AutoML for few-shot meta-learning: build episodic datasets, search learner "
        "families with Ray Tune, evaluate on meta-test episodes, register the winner in MLflow.",
        epilog="Every command reads a YAML config (default: configs/quickstart.yaml when present) "
        "and --set section.key=value overrides.",
    )
    parser.add_argument("--version", action="version", version=f"learn2tune {_version()}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    build = _command(commands, "build", cmd_build, "build the episodic Parquet dataset", positional_config=False)
    build.add_argument(
        "words",
        nargs="*",
        action=ConfigAndSource,
        metavar="CONFIG|SOURCE",
        help=f"YAML config file (default: configs/quickstart.yaml) and image source: {', '.join(source_names())} "
        "(default: data.source); either or both, in any order",
    )
    build.add_argument(
        "-c",
        "--config",
        action=ConfigAndSource,
        help="deprecated: give the config file positionally, as other commands do",
    )
    build.set_defaults(source=None, config=None)
    build.add_argument("--path", help="source location (Omniglot zips or directory, image folder)")
    build.add_argument("--split", help="class split: random | by-alphabet | csv (default: the source's)")
    build.add_argument("--rotations", action="store_true", help="add 90/180/270-degree rotations as new classes")
    build.add_argument("--out", dest="dataset_dir", help="dataset directory (default: <workdir>/datasets/<name>)")
    build.add_argument("--overwrite", action="store_true", help="replace a dataset built with other settings")

    search = _command(commands, "search", cmd_search, "search learner families and hyperparameters with Ray Tune")
    _search_flags(search)
    search.add_argument("--resume", action="store_true", help="finish an interrupted search of this experiment")

    evaluate = _command(commands, "evaluate", cmd_evaluate, "score the best trials on fixed meta-test episodes")
    _evaluate_flags(evaluate)
    evaluate.add_argument(
        "--untrained",
        metavar="FAMILY[,FAMILY]",
        help="also score each family's best trial as the network it started from, before meta-training",
    )

    evaluate.add_argument(
        "--on", metavar="EXPERIMENT|DATASET_DIR", help="score on another dataset's test split (cross-domain)"
    )
    report = _command(
        commands, "report", cmd_report, "tabulate scores: cross-domain (families x datasets)", positional_config=False
    )
    report.add_argument("kind", choices=["cross-domain"], help="the table to write")
    report.add_argument("config", nargs="?", help="YAML config file (default: configs/quickstart.yaml)")
    report.add_argument("--experiments", required=True, metavar="A,B,...", help="experiments to tabulate")
    report.add_argument("--out", help="markdown file to write (JSON beside it); default: print")

    register = _command(commands, "register", cmd_register, "register the winner in the MLflow Model Registry")
    _register_flags(register)

    promote = _command(
        commands, "promote", cmd_promote, "move the champion alias to the candidate if it scores higher (paired)"
    )
    _register_flags(promote)
    promote.add_argument("--candidate", metavar="VERSION", help="version to promote (default: alias candidate)")
    promote.add_argument("--force", action="store_true", help="move the champion alias whatever the comparison says")
    promote.add_argument("--episodes", help="test episodes to compare on (default: episodes.test.episodes)")
    promote.add_argument(
        "--max-latency-ms", type=float, metavar="MS", help="refuse a candidate whose p95 latency is above MS"
    )
    promote.add_argument("--max-params", type=int, metavar="N", help="refuse a candidate with more than N parameters")

    serve = _command(commands, "serve", cmd_serve, "serve a registered version over HTTP (MLflow scoring server)")
    _register_flags(serve)
    which = serve.add_mutually_exclusive_group()
    which.add_argument("--version", help="model version to serve")
    which.add_argument("--alias", help="alias to serve (default: champion)")
    serve.add_argument("--host", default="127.0.0.1", help="interface to bind (default 127.0.0.1; 0.0.0.0 for all)")
    serve.add_argument("--port", type=int, default=5001, help="port (default 5001)")
    serve.add_argument("--workers", type=int, default=1, help="server worker processes (default 1)")

    run = _command(commands, "run", cmd_run, "build, search, evaluate and register in one go")
    run.add_argument("--overwrite", action="store_true", help="replace a dataset built with other settings")
    run.add_argument("--resume", action="store_true", help="finish an interrupted run (its search, then the rest)")
    _search_flags(run)
    _evaluate_flags(run)
    _register_flags(run)

    bench = commands.add_parser("bench", help="run the speed benchmarks", description="run the speed benchmarks")
    bench.add_argument(
        "benchmark", nargs="?", choices=BENCHMARKS, help=f"one benchmark (default: {', '.join(SPEED_BENCHMARKS)})"
    )
    bench.add_argument("bench_args", nargs=argparse.REMAINDER, help="arguments passed to the benchmark")
    bench.set_defaults(handler=cmd_bench)

    ui = _command(commands, "ui", cmd_ui, "start the MLflow UI on this config's tracking store (127.0.0.1)")
    ui.add_argument("--port", type=int, default=5000, help="port (default 5000)")
    return parser


class ConfigAndSource(argparse.Action):
    """``build``'s positional words (and the deprecated ``-c CONFIG``): a registered source name is the
    source unless a file has that name; an existing file or a ``.yaml``/``.yml`` name is the config;
    any other word is taken as a source, so a misspelt one gets the registry's "did you mean". At most
    one of each."""

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace, values: Any, option=None):
        for word in [values] if option is not None else values:
            exists = Path(word).exists()
            if option is not None or (exists or Path(word).suffix in (".yaml", ".yml")) and word not in source_names():
                field = "config"
            else:
                field = "config" if exists else "source"
            if getattr(namespace, field, None) is not None:
                parser.error(f"two {field}s given: {getattr(namespace, field)!r} and {word!r}")
            setattr(namespace, field, word)


def _command(
    commands: Any, name: str, handler: Callable, help: str, positional_config: bool = True
) -> argparse.ArgumentParser:
    parser = commands.add_parser(name, help=help, description=help)
    if positional_config:
        parser.add_argument("config", nargs="?", help="YAML config file (default: configs/quickstart.yaml)")
    parser.add_argument(
        "--set", action="append", default=[], metavar="KEY=VALUE", help="override a config field, e.g. search.trials=4"
    )
    parser.add_argument("--experiment", metavar="NAME", help="experiment name (config field 'name')")
    parser.set_defaults(handler=handler)
    return parser


def _search_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--families", help="comma-separated learner families, or 'all'")
    parser.add_argument("--backbones", help="comma-separated backbones the searched families draw from, or 'all'")
    parser.add_argument("--trials", help="number of trials (with --time-budget and no --trials: no cap)")
    parser.add_argument(
        "--time-budget", metavar="DURATION", help="the search's wall time (90s, 30m, 2h, 1h30m or seconds)"
    )
    parser.add_argument("--max-iterations", help="meta-iterations per trial (ASHA max_t)")
    parser.add_argument("--cpus-per-trial", help="CPUs per trial")
    parser.add_argument("--gpus-per-trial", help="GPUs per trial (fractions share a GPU)")
    parser.add_argument("--address", help="Ray cluster address (default: RAY_ADDRESS, else a local Ray)")
    parser.add_argument(
        "--wait-for-resources", metavar="SECONDS", help="wait this long for a node that can hold one trial to join"
    )
    parser.add_argument(
        "--warm-start", metavar="EXP[,EXP...]|auto", help="seed the study with these experiments' past searches"
    )


def _evaluate_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--ways", help="comma-separated test ways, e.g. 5,20")
    parser.add_argument("--shots", help="comma-separated test shots, e.g. 1,5")
    parser.add_argument("--episodes", help="test episodes per setting")


def _register_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--name", dest="model_name", help="registered model name (default: the experiment name)")


if __name__ == "__main__":
    sys.exit(main())
