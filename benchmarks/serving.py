"""Serving latency: a 5-way 5-shot request with 75 query images through MLflow's scoring server.

    .venv/bin/python -m benchmarks.serving [--requests 200] [--family protonet]

Builds small synthetic glyphs, saves a freshly initialised learner of ``--family`` (Conv-4 at
its default width; latency does not depend on training) as the project's pyfunc model, starts
``mlflow models serve --env-manager local`` on a free 127.0.0.1 port (one worker), and sends
``--requests`` requests, each a different test-split episode: 25 support images and 75 queries
as base64 PNGs (100 rows). Reports p50 / p95 / mean latency and requests/s. The baseline,
measured in the same run on the same requests, is ``mlflow.pyfunc.load_model(...).predict``
in process (decoding, adaptation and prediction without HTTP and JSON): the ratio is what the
server adds. Ten warm-up requests each are not timed.
"""

from __future__ import annotations

import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from deploy.client import encode_image, request_body
from deploy.local_server import free_port, local_server
from deploy.model_format import save_model
from learners.checkpoint import build_learner, save_learner
from learners.registry import family_names
from pipeline.cli import Parser
from pipeline.serve import with_scripts_on_path
from tasks.build import BuildSpec, build_dataset
from tasks.episodes import EpisodeSpec
from tasks.sampler import fixed_episodes
from tasks.store import DatasetStore

SPEC = EpisodeSpec(ways=5, shots=5, query=15)
WARMUP = 10


def requests_from_glyphs(root: Path, count: int) -> list[dict]:
    """``count`` request bodies, one fixed-seed test episode each, images as base64 PNGs."""
    build_dataset(BuildSpec(synthetic_classes=60, synthetic_images_per_class=20, seed=0), root / "glyphs")
    split = DatasetStore.open(root / "glyphs").split("test")
    bodies = []
    for batch in fixed_episodes(split, SPEC, count, seed=0, batch_tasks=50):
        for task in range(batch.support_x.shape[0]):
            support = [
                (f"class-{y}", encode_image(x.numpy()))
                for x, y in zip(batch.support_x[task], batch.support_y[task].tolist(), strict=True)
            ]
            bodies.append(request_body(support, [encode_image(x.numpy()) for x in batch.query_x[task]]))
    return bodies


def latencies(call, bodies: list[dict]) -> np.ndarray:
    """Seconds per call of ``call(body)``, after :data:`WARMUP` untimed calls."""
    for body in bodies[:WARMUP]:
        call(body)
    times = []
    for body in bodies:
        start = time.perf_counter()
        call(body)
        times.append(time.perf_counter() - start)
    return np.array(times)


def summary(name: str, seconds: np.ndarray) -> str:
    p50, p95 = np.percentile(seconds, [50, 95]) * 1000
    return f"{name:<28} {p50:8.1f} {p95:8.1f} {seconds.mean() * 1000:8.1f} {1 / seconds.mean():8.1f}"


def main(argv: list[str] | None = None) -> int:
    parser = Parser(prog="python -m benchmarks.serving", description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=200, help="timed requests per path (default 200)")
    parser.add_argument(
        "--family", choices=family_names(), default="protonet", help="learner family (default protonet)"
    )
    args = parser.parse_args(argv)
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    import mlflow.pyfunc

    with tempfile.TemporaryDirectory(prefix="learn2tune-serving-bench-") as tmp:
        root = Path(tmp)
        bodies = requests_from_glyphs(root, args.requests)
        torch.manual_seed(0)
        learner = build_learner({"family": args.family, "hparams": {}, "image_shape": [1, 28, 28], "ways": SPEC.ways})
        save_learner(learner, root / "checkpoint")
        save_model(root / "checkpoint", root / "model")
        print(
            f"serving {args.family} (default hyperparameters): {SPEC.ways}-way {SPEC.shots}-shot, "
            f"{SPEC.ways * SPEC.query} queries per request, {args.requests} requests; "
            f"{os.cpu_count()} CPUs, torch {torch.__version__}, {torch.get_num_threads()} threads"
        )
        model = mlflow.pyfunc.load_model(str(root / "model"))
        columns = bodies[0]["dataframe_split"]["columns"]
        in_process = latencies(
            lambda body: model.predict(pd.DataFrame(body["dataframe_split"]["data"], columns=columns)), bodies
        )
        port = free_port()
        mlflow_bin = str(Path(sys.executable).parent / "mlflow")
        command = [mlflow_bin, "models", "serve", "-m", str(root / "model"), "--env-manager", "local",
                   "--host", "127.0.0.1", "--port", str(port), "--workers", "1"]  # fmt: skip
        with local_server(command, port, env=with_scripts_on_path(dict(os.environ))) as client:
            over_http = latencies(client.invoke, bodies)
    print(f"\n{'path':<28} {'p50 ms':>8} {'p95 ms':>8} {'mean ms':>8} {'req/s':>8}")
    print(summary("pyfunc predict (baseline)", in_process))
    print(summary("HTTP scoring server", over_http))
    ratio = np.median(over_http) / np.median(in_process)
    print(f"\nthe server's p50 is {ratio:.2f}x the in-process p50 (HTTP, JSON and the server add "
          f"{(np.median(over_http) - np.median(in_process)) * 1000:.1f} ms)")  # fmt: skip
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
