"""The deployment files in deploy/: they parse, follow the formats their tools read, and agree
with each other and with the project.

- ``ray-cluster.yaml``: valid against the autoscaler schema bundled with the installed Ray
  (with ``jsonschema`` when importable, else the schema's required and allowed keys by hand),
  plus the cross-field rules ``ray up`` adds; a GPU worker type that fits one trial of
  configs/omniglot.yaml and stays up or is waited for; torch pinned before the project is
  installed; a tracking server on the head; the workdir on S3.
- ``kuberay-raycluster.yaml``: a ``ray.io/v1`` RayCluster whose head and workers share one
  image and a Ray version; a GPU worker group; the cluster config (a ConfigMap) valid for the
  project, with its workdir on S3, its forwarded variables set on the head and its tracking
  URI a Host the MLflow server allows (MLflow's own check); the tracking server's database and
  Services; a serving Deployment.
- ``Dockerfile``: FROM first, torch==2.13.0 (the Makefile's pin) installed before the project,
  the default command ``learn2tune serve`` on 0.0.0.0 and the exposed port.
- Every ``learn2tune COMMAND`` mentioned in these files and deploy/README.md is a subcommand
  of the CLI, and every full command line there parses with the CLI's parser.

No cluster, Docker daemon or network is needed; Ray is not imported.
"""

from __future__ import annotations

import contextlib
import importlib.util
import io
import json
import re
import shlex
from pathlib import Path
from typing import Any

import pytest
import yaml
from packaging.specifiers import SpecifierSet
from packaging.version import Version

from pipeline.cli import _parser
from pipeline.config import Config, Resources, load_config

ROOT = Path(__file__).resolve().parents[1]
DEPLOY = ROOT / "deploy"
LAUNCHER = DEPLOY / "ray-cluster.yaml"
KUBERAY = DEPLOY / "kuberay-raycluster.yaml"
DOCKERFILE = DEPLOY / "Dockerfile"
README = DEPLOY / "README.md"
GPU_CONFIG = ROOT / "configs" / "omniglot.yaml"  # the config the deploy docs run on GPUs


# ---------------------------------------------------------------- helpers


def _load_yaml(path: Path) -> Any:
    return yaml.safe_load(path.read_text())


def _kuberay_docs() -> list[dict[str, Any]]:
    return [doc for doc in yaml.safe_load_all(KUBERAY.read_text()) if doc]


def _one(docs: list[dict[str, Any]], kind: str, name: str | None = None) -> dict[str, Any]:
    found = [doc for doc in docs if doc.get("kind") == kind and name in (None, doc["metadata"]["name"])]
    assert len(found) == 1, f"{KUBERAY.name}: expected one {kind} {name or ''}, found {len(found)}"
    return found[0]


def _documented_lines(path: Path, command: str) -> list[list[str]]:
    """The argv (after ``learn2tune``) of every full ``learn2tune COMMAND ... --flag ...`` line in ``path``."""
    lines = [shlex.split(match.group(1)) for match in COMMAND_LINE.finditer(path.read_text())]
    return [argv for argv in lines if argv and argv[0] == command and any(arg.startswith("--") for arg in argv)]


def _flag_values(argv: list[str], name: str) -> list[str]:
    return [argv[i + 1] for i, arg in enumerate(argv[:-1]) if arg == name]


def _trial_resources() -> Resources:
    return load_config(GPU_CONFIG, cwd=ROOT, environ={}).search.resources


def _torch_pin() -> str:
    """The torch requirement the Makefile installs first (``TORCH := torch==X``)."""
    match = re.search(r"^TORCH\s*:?=\s*(\S+)", (ROOT / "Makefile").read_text(), re.MULTILINE)
    assert match, "Makefile defines no TORCH pin"
    return match.group(1)


def _ray_specifier() -> SpecifierSet:
    """The ray version range pyproject.toml allows (``ray[...]>=A,<B``)."""
    match = re.search(r'"ray\[[^\]]*\]([^"]+)"', (ROOT / "pyproject.toml").read_text())
    assert match, "pyproject.toml has no ray requirement"
    return SpecifierSet(match.group(1))


def _cpu_quantity(value: str | float) -> float:
    """A Kubernetes CPU quantity ("8", 8, "500m") in CPUs."""
    text = str(value)
    return float(text[:-1]) / 1000 if text.endswith("m") else float(text)


# ---------------------------------------------------------------- ray cluster launcher


def _ray_schema() -> dict[str, Any]:
    """Ray's autoscaler schema, from the installed package (found without importing Ray)."""
    spec = importlib.util.find_spec("ray")
    assert spec is not None and spec.submodule_search_locations, "ray is not installed"
    path = Path(next(iter(spec.submodule_search_locations))) / "autoscaler" / "ray-schema.json"
    return json.loads(path.read_text())


def _schema_errors_by_hand(config: dict[str, Any], schema: dict[str, Any]) -> list[str]:
    """The schema rules a launcher config most often breaks, for when jsonschema is missing."""
    errors = [f"missing required key {key!r}" for key in schema["required"] if key not in config]
    errors += [f"unknown top-level key {key!r}" for key in config if key not in schema["properties"]]
    provider = config.get("provider", {})
    provider_required = schema["properties"]["provider"]["required"]
    errors += [f"provider: missing {key!r}" for key in provider_required if key not in provider]
    node_schema = schema["properties"]["available_node_types"]["patternProperties"][".*"]
    for name, node in config.get("available_node_types", {}).items():
        errors += [f"{name}: missing {key!r}" for key in node_schema["required"] if key not in node]
        errors += [f"{name}: unknown key {key!r}" for key in node if key not in node_schema["properties"]]
        for resource, amount in node.get("resources", {}).items():
            if not isinstance(amount, int) or isinstance(amount, bool) or amount < 0:
                errors.append(f"{name}: resources.{resource} must be an integer >= 0, got {amount!r}")
    for key, value in config.items():
        if key.endswith("_commands") and not (isinstance(value, list) and all(isinstance(c, str) for c in value)):
            errors.append(f"{key} must be a list of strings")
    return errors


def test_launcher_config_is_valid_for_the_installed_ray() -> None:
    config, schema = _load_yaml(LAUNCHER), _ray_schema()
    try:
        import jsonschema
    except ImportError:
        errors = _schema_errors_by_hand(config, schema)
    else:
        validator = jsonschema.Draft7Validator(schema)
        errors = [
            f"{'/'.join(map(str, error.absolute_path)) or '<root>'}: {error.message}"
            for error in validator.iter_errors(config)
        ]
    assert not errors, f"{LAUNCHER.name} breaks Ray's ray-schema.json:\n" + "\n".join(errors)


def test_launcher_node_types_follow_ray_up_rules() -> None:
    """The checks ``ray up`` makes beyond the schema (ray.autoscaler._private.util.validate_config)."""
    config = _load_yaml(LAUNCHER)
    types = config["available_node_types"]
    assert config.get("head_node_type") in types, "head_node_type must name one of available_node_types"
    min_total = sum(node.get("min_workers", 0) for node in types.values())
    assert min_total <= config["max_workers"], "max_workers is below the sum of the node types' min_workers"


def test_launcher_gpu_workers_fit_a_trial_and_are_waited_for() -> None:
    config, trial = _load_yaml(LAUNCHER), _trial_resources()
    workers = {name: node for name, node in config["available_node_types"].items() if name != config["head_node_type"]}
    gpu_types = {name: node for name, node in workers.items() if node["resources"].get("GPU", 0) >= 1}
    assert gpu_types, "no worker node type advertises a GPU in its resources"
    for name, node in gpu_types.items():
        resources = node["resources"]
        assert resources.get("CPU", 0) >= trial.cpu and resources["GPU"] >= trial.gpu, (
            f"{name} ({resources}) cannot hold one trial of {GPU_CONFIG.name} ({trial})"
        )
        assert node.get("max_workers", config["max_workers"]) >= 1
    # With no GPU node up at the start, the documented runs must wait for the autoscaler.
    if not any(node.get("min_workers", 0) >= 1 for node in gpu_types.values()):
        runs = _documented_lines(LAUNCHER, "run")
        assert runs and all(_flag_values(argv, "--wait-for-resources") for argv in runs), (
            "GPU workers start at 0 but a documented `learn2tune run` does not pass --wait-for-resources"
        )


def test_launcher_keeps_the_workdir_on_s3_and_runs_a_tracking_server_on_the_head() -> None:
    config = _load_yaml(LAUNCHER)
    for argv in _documented_lines(LAUNCHER, "run"):
        workdirs = [value.split("=", 1)[1] for value in _flag_values(argv, "--set") if value.startswith("workdir=")]
        assert workdirs and all(w.startswith("s3://") for w in workdirs), f"workdir not on S3 in {argv}"
    servers = [command for command in config["head_start_ray_commands"] if "mlflow server" in command]
    assert len(servers) == 1, "the head does not start the MLflow tracking server"
    argv = shlex.split(servers[0].split("nohup", 1)[1])
    assert _flag(argv, "--artifacts-destination").startswith("s3://"), "artifacts are not on object storage"
    assert _flag(argv, "--backend-store-uri") == "$MLFLOW_BACKEND_STORE_URI"
    assert _flag(argv, "--port") == "5000" and ":5000" in _flag(argv, "--allowed-hosts")
    head_env = "\n".join(config["head_setup_commands"])
    assert "MLFLOW_BACKEND_STORE_URI=postgresql://" in head_env and "MLFLOW_TRACKING_URI=http://" in head_env
    node_configs = [node["node_config"] for node in config["available_node_types"].values()]
    assert all("IamInstanceProfile" in node for node in node_configs), "a node type cannot reach the bucket"


def test_launcher_setup_installs_torch_then_the_mounted_project() -> None:
    config = _load_yaml(LAUNCHER)
    commands: list[str] = config["setup_commands"]
    pin = _torch_pin()
    torch_at = [i for i, command in enumerate(commands) if pin in command and "pip install" in command]
    project_dirs = [remote for remote, local in config["file_mounts"].items() if local in (".", "./")]
    assert project_dirs, "file_mounts does not copy the project ('.') to the nodes"
    project_at = [
        i
        for i, command in enumerate(commands)
        if "pip install" in command and any(re.search(rf"(^|\s){re.escape(d)}/?(\s|$)", command) for d in project_dirs)
    ]
    assert torch_at, f"no setup command installs {pin}"
    assert project_at, f"no setup command installs the mounted project ({project_dirs})"
    assert torch_at[0] < project_at[0], f"{pin} must be installed before the project"
    assert ".venv" in config.get("rsync_exclude", []), "the local .venv would be copied to every node"
    environment = "\n".join(commands + config.get("head_setup_commands", []))
    for variable in ("RAY_USAGE_STATS_ENABLED=0", "MLFLOW_TRACKING_URI="):
        assert variable in environment, f"the setup commands do not set {variable}"


# ---------------------------------------------------------------- kuberay


def _ray_pods(cluster: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Pod specs by group: 'head' and each worker group's name."""
    spec = cluster["spec"]
    pods = {"head": spec["headGroupSpec"]["template"]["spec"]}
    pods.update({group["groupName"]: group["template"]["spec"] for group in spec.get("workerGroupSpecs", [])})
    return pods


def _ray_container(pod: dict[str, Any]) -> dict[str, Any]:
    return pod["containers"][0]  # KubeRay runs Ray in the first container


def test_kuberay_cluster_shares_one_image_and_ray_version() -> None:
    cluster = _one(_kuberay_docs(), "RayCluster")
    assert cluster["apiVersion"] == "ray.io/v1"
    images = {group: _ray_container(pod)["image"] for group, pod in _ray_pods(cluster).items()}
    assert len(images) >= 2, "the RayCluster has no worker group"
    assert len(set(images.values())) == 1, f"head and workers must run the same image: {images}"
    ray_version = str(cluster["spec"]["rayVersion"])
    assert Version(ray_version) in _ray_specifier(), f"rayVersion {ray_version} is outside pyproject's ray range"
    groups = [cluster["spec"]["headGroupSpec"], *cluster["spec"]["workerGroupSpecs"]]
    for group in groups:  # KubeRay's CRD types rayStartParams as map[string]string
        for key, value in group.get("rayStartParams", {}).items():
            assert isinstance(value, str), f"rayStartParams.{key} must be a string, got {value!r}"
    head_env = {item["name"] for item in _ray_container(_ray_pods(cluster)["head"]).get("env", [])}
    assert "MLFLOW_TRACKING_URI" in head_env, "the driver (head) needs MLFLOW_TRACKING_URI"


def _cluster_config_map() -> tuple[dict[str, Any], str, str]:
    """The ConfigMap with the cluster's learn2tune config: (document, key, path in the head pod)."""
    docs = _kuberay_docs()
    config_map = _one(docs, "ConfigMap")
    (key,) = config_map["data"]
    head = _ray_pods(_one(docs, "RayCluster"))["head"]
    name = config_map["metadata"]["name"]
    volumes = {v["name"] for v in head.get("volumes", []) if v.get("configMap", {}).get("name") == name}
    mounts = [m for m in _ray_container(head).get("volumeMounts", []) if m["name"] in volumes]
    assert mounts, "the head does not mount the cluster config"
    return config_map, key, f"{mounts[0]['mountPath']}/{key}"


def _cluster_config(tmp_path: Path) -> Config:
    """The cluster config, through the project's own validation."""
    document, key, _ = _cluster_config_map()
    path = tmp_path / key
    path.write_text(document["data"][key])
    return load_config(path, cwd=Path("/app"), environ={})


def test_kuberay_gpu_worker_group_fits_a_trial_and_is_waited_for(tmp_path) -> None:
    cluster, config = _one(_kuberay_docs(), "RayCluster"), _cluster_config(tmp_path)
    trial = config.search.resources
    gpu_groups = [
        group
        for group in cluster["spec"]["workerGroupSpecs"]
        if int(_ray_container(group["template"]["spec"])["resources"].get("limits", {}).get("nvidia.com/gpu", 0)) >= 1
    ]
    assert gpu_groups, "no worker group requests nvidia.com/gpu in its limits"
    for group in gpu_groups:
        name, pod = group["groupName"], group["template"]["spec"]
        limits = _ray_container(pod)["resources"]["limits"]
        assert _cpu_quantity(limits["cpu"]) >= trial.cpu, f"{name}: {limits['cpu']} CPUs cannot hold a trial ({trial})"
        assert int(limits["nvidia.com/gpu"]) >= trial.gpu, f"{name}: too few GPUs for a trial ({trial})"
        assert group["minReplicas"] <= group["replicas"] <= group["maxReplicas"], f"{name}: replicas out of range"
        assert group["maxReplicas"] >= 1, f"{name} can never start a pod"
        if group["minReplicas"] == 0:  # the search must wait for the autoscaler's first GPU pod
            assert config.ray.wait_for_resources > 0, f"{name} starts at 0 pods but ray.wait_for_resources is 0"
        tolerated = {toleration.get("key") for toleration in pod.get("tolerations", [])}
        assert "nvidia.com/gpu" in tolerated, f"{name}: no toleration for GPU nodes' nvidia.com/gpu taint"


def test_kuberay_cluster_config_is_on_s3_and_forwards_what_the_head_has(tmp_path) -> None:
    docs = _kuberay_docs()
    config = _cluster_config(tmp_path)
    document, key, mounted_at = _cluster_config_map()
    assert yaml.safe_load(document["data"][key])["workdir"].startswith("s3://"), "the workdir is not on S3"
    head = _ray_container(_ray_pods(_one(docs, "RayCluster"))["head"])
    head_env = {item["name"] for item in head.get("env", [])}
    for source in head.get("envFrom", []):
        head_env |= set(_one(docs, "Secret", source["secretRef"]["name"])["stringData"])
    missing = set(config.ray.env_vars) - head_env
    assert config.ray.env_vars and not missing, f"ray.env_vars names {sorted(missing)}, which the head does not have"
    for group in _one(docs, "RayCluster")["spec"]["workerGroupSpecs"]:  # the trials get them forwarded
        assert not _ray_container(group["template"]["spec"]).get("envFrom"), f"{group['groupName']} pods hold secrets"
    for path in (KUBERAY, README):
        for argv in _documented_lines(path, "run") + _documented_lines(path, "promote"):
            if len(argv) > 1 and argv[1].startswith("/app/cluster"):
                assert argv[1] == mounted_at, f"{path.name}: `learn2tune {' '.join(argv)}` is not the mounted config"


def test_kuberay_tracking_server_allows_the_uri_clients_use(tmp_path) -> None:
    from urllib.parse import urlsplit

    from mlflow.server.security_utils import is_allowed_host_header

    docs = _kuberay_docs()
    uri = urlsplit(_cluster_config(tmp_path).tracking.uri)
    pod = _one(docs, "Deployment", "mlflow")["spec"]["template"]
    container = pod["spec"]["containers"][0]
    assert container["command"][:2] == ["mlflow", "server"]
    options = dict(arg.removeprefix("--").split("=", 1) for arg in container["command"][2:])
    hosts = options["allowed-hosts"].split(",")
    assert is_allowed_host_header(hosts, uri.netloc), f"the server would answer 403 to Host {uri.netloc}"
    assert options["artifacts-destination"].startswith("s3://"), "artifacts are not on object storage"
    service = _one(docs, "Service", uri.hostname)
    selects = service["spec"]["selector"].items() <= pod["metadata"]["labels"].items()
    assert selects, f"Service {uri.hostname} selects no pod"
    assert uri.port in [port["port"] for port in service["spec"]["ports"]]
    assert int(options["port"]) in [port["containerPort"] for port in container["ports"]]
    database = urlsplit(options["backend-store-uri"])
    assert database.scheme == "postgresql", "the backend store should be a database server"
    db_pod = _one(docs, "Deployment", database.hostname)["spec"]["template"]
    db_service = _one(docs, "Service", database.hostname)
    assert db_service["spec"]["selector"].items() <= db_pod["metadata"]["labels"].items()
    assert database.port in [port["port"] for port in db_service["spec"]["ports"]]
    installed = " ".join(arguments for keyword, arguments in _dockerfile() if keyword == "RUN")
    for package in ("psycopg2", "boto3"):  # what `mlflow server` needs for this store and these artifacts
        assert package in installed, f"{DOCKERFILE.name} does not install {package}"
    ray_image = _ray_container(_ray_pods(_one(docs, "RayCluster"))["head"])["image"]
    assert container["image"].rsplit(":", 1)[0] == ray_image.rsplit(":", 1)[0], "not a build of deploy/Dockerfile"


def test_kuberay_serving_deployment_serves_on_its_port() -> None:
    docs = _kuberay_docs()
    deployment, service = _one(docs, "Deployment", "learn2tune-serve"), _one(docs, "Service", "learn2tune-serve")
    pod = deployment["spec"]["template"]
    container = pod["spec"]["containers"][0]
    argv = [*container.get("command", []), *container.get("args", [])]
    assert argv[:2] == ["learn2tune", "serve"], argv
    if "serve" in _cli_commands():
        assert _parse_error(argv[1:]) is None, _parse_error(argv[1:])
    assert _flag(argv, "--host") == "0.0.0.0", "the server must listen on all interfaces in a pod"
    ports = {port.get("name"): port["containerPort"] for port in container["ports"]}
    assert int(_flag(argv, "--port")) in ports.values(), f"--port is not a containerPort ({ports})"
    ray_image = _ray_container(_ray_pods(_one(docs, "RayCluster"))["head"])["image"]
    same_repository = container["image"].rsplit(":", 1)[0] == ray_image.rsplit(":", 1)[0]
    assert same_repository, f"serving ({container['image']}) and Ray ({ray_image}) should be builds of one Dockerfile"
    assert deployment["spec"]["selector"]["matchLabels"].items() <= pod["metadata"]["labels"].items()
    assert service["spec"]["selector"].items() <= pod["metadata"]["labels"].items(), "the Service selects no pod"
    for port in service["spec"]["ports"]:
        target = port.get("targetPort", port["port"])
        assert target in ports or target in ports.values(), f"Service targetPort {target} is not a container port"


def _flag(argv: list[str], name: str) -> str:
    assert name in argv, f"{name} missing from {argv}"
    return argv[argv.index(name) + 1]


def _parse_error(argv: list[str]) -> str | None:
    """The CLI parser's complaint about ``learn2tune ARGV``, or None when it parses."""
    stderr = io.StringIO()
    try:
        with contextlib.redirect_stderr(stderr):
            _parser().parse_args(argv)
    except SystemExit:
        return stderr.getvalue().strip().splitlines()[-1]
    return None


# ---------------------------------------------------------------- dockerfile


def parse_dockerfile(text: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs: ``\\`` continuations joined, comment lines dropped."""
    instructions: list[tuple[str, str]] = []
    pending = ""
    for line in text.splitlines():
        stripped = line.strip()
        if stripped.startswith("#") or (not stripped and not pending):
            continue  # comments (also inside a continuation) and blank lines
        if stripped.endswith("\\"):
            pending += stripped[:-1].rstrip() + " "
            continue
        logical = (pending + stripped).strip()
        pending = ""
        if logical:
            keyword, _, arguments = logical.partition(" ")
            instructions.append((keyword.upper(), arguments.strip()))
    assert not pending, "the Dockerfile ends inside a line continuation"
    return instructions


def _dockerfile() -> list[tuple[str, str]]:
    return parse_dockerfile(DOCKERFILE.read_text())


def _dockerfile_workdir() -> str:
    workdirs = [arguments for keyword, arguments in _dockerfile() if keyword == "WORKDIR"]
    assert workdirs, "the Dockerfile sets no WORKDIR"
    return workdirs[-1]


def _exec_form(keyword: str, arguments: str) -> list[str]:
    try:
        argv = json.loads(arguments)
    except json.JSONDecodeError:
        pytest.fail(f"{keyword} should use the exec form (JSON list) so signals reach the server: {arguments}")
    assert isinstance(argv, list) and all(isinstance(item, str) for item in argv), arguments
    return argv


def test_parse_dockerfile_joins_continuations_and_drops_comments() -> None:
    text = '# c\nFROM a:1\nRUN x \\\n  # inside\n  && y\n\nCMD ["z"]\n'
    assert parse_dockerfile(text) == [("FROM", "a:1"), ("RUN", "x && y"), ("CMD", '["z"]')]


def test_dockerfile_installs_torch_before_the_project() -> None:
    instructions = _dockerfile()
    keywords = [keyword for keyword, _ in instructions]
    assert "FROM" in keywords, "no FROM"
    assert set(keywords[: keywords.index("FROM")]) <= {"ARG"}, "only ARG may come before FROM"
    runs = [(i, arguments) for i, (keyword, arguments) in enumerate(instructions) if keyword == "RUN"]
    pin = _torch_pin()
    torch_at = [i for i, command in runs if "pip install" in command and pin in shlex.split(command)]
    project_at = [i for i, command in runs if "pip install" in command and "." in shlex.split(command)]
    assert torch_at, f"no RUN installs {pin} (the Makefile's pin)"
    assert project_at, "no RUN installs the project (pip install .)"
    assert torch_at[0] < project_at[0], f"{pin} must be installed before the project"
    copies = [i for i, (keyword, _) in enumerate(instructions) if keyword in ("COPY", "ADD")]
    assert copies and min(copies) < project_at[0], "the project is installed before it is copied in"


def test_dockerfile_default_command_serves_on_all_interfaces() -> None:
    instructions = _dockerfile()
    last = dict(instructions)  # the last of each wins
    argv = _exec_form("ENTRYPOINT", last["ENTRYPOINT"]) if "ENTRYPOINT" in last else []
    argv += _exec_form("CMD", last["CMD"]) if "CMD" in last else []
    assert argv[:2] == ["learn2tune", "serve"], f"default command {argv} does not run learn2tune serve"
    if "serve" in _cli_commands():
        assert _parse_error(argv[1:]) is None, _parse_error(argv[1:])
    assert _flag(argv, "--host") == "0.0.0.0", "a server bound to 127.0.0.1 is unreachable from outside the container"
    exposed = {port.split("/")[0] for keyword, ports in instructions if keyword == "EXPOSE" for port in ports.split()}
    assert _flag(argv, "--port") in exposed, f"--port {_flag(argv, '--port')} is not EXPOSEd ({exposed})"


def test_dockerignore_keeps_local_state_out_of_the_build_context() -> None:
    patterns = {line.strip().rstrip("/") for line in (ROOT / ".dockerignore").read_text().splitlines()}
    for pattern in (".venv", ".git", "runs"):
        assert pattern in patterns, f".dockerignore does not exclude {pattern}"


# ---------------------------------------------------------------- learn2tune commands in the docs

# `learn2tune COMMAND ...` in shell text, or "learn2tune", "COMMAND" in an exec-form list; not
# path components (~/learn2tune) or names such as learn2tune:latest.
MENTION = re.compile(r"""(?<![\w/~.-])learn2tune["']?(?:[ \t]+|[ \t]*,[ \t]*["'])([a-z][a-z-]*)""")
# A full command line: `learn2tune ...` up to the end of its shell segment.
COMMAND_LINE = re.compile(r"""(?<![\w/~.-])learn2tune[ \t]+([^`'"\n;|&#\\]*)""")
DOC_FILES = [LAUNCHER, KUBERAY, DOCKERFILE, README]


def _cli_commands() -> set[str]:
    import argparse

    parser = _parser()
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return set(action.choices)
    raise AssertionError("the learn2tune parser has no subcommands")


@pytest.mark.parametrize("path", DOC_FILES, ids=lambda path: path.name)
def test_documented_commands_exist(path: Path) -> None:
    mentioned = set(MENTION.findall(path.read_text()))
    assert mentioned, f"{path.name} mentions no learn2tune command (has the pattern drifted?)"
    unknown = mentioned - _cli_commands()
    assert not unknown, f"{path.name} mentions learn2tune commands that do not exist: {sorted(unknown)}"


@pytest.mark.parametrize("path", DOC_FILES, ids=lambda path: path.name)
def test_documented_command_lines_parse(path: Path) -> None:
    """Full example lines (those with a --flag) parse with the CLI's own parser."""
    commands = _cli_commands()
    failures = []
    for match in COMMAND_LINE.finditer(path.read_text()):
        argv = shlex.split(match.group(1))
        if not argv or argv[0] not in commands or not any(arg.startswith("--") for arg in argv):
            continue  # prose (test_documented_commands_exist checks the command names)
        error = _parse_error(argv)
        if error:
            failures.append(f"learn2tune {' '.join(argv)}: {error}")
    assert not failures, f"{path.name}:\n" + "\n".join(failures)
