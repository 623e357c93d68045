"""The GPU check runs as a plain file on a CPU at tiny sizes, imports no pipeline dependency, and
prints its one table: every family agreeing with the CPU, every MAML formulation against the loop,
MAML's meta-iterations/s beside TorchBench's, the packing check."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from learners.meta_gradient import PATHS
from learners.registry import family_names

ROOT = Path(__file__).resolve().parent.parent
NOT_ON_A_GPU_MACHINE = ("ray", "mlflow", "optuna", "pydantic", "yaml", "pipeline")


@pytest.mark.slow  # ~11 s of a benchmark's wiring
def test_gpu_check_runs_on_cpu_at_tiny_sizes_with_torch_alone(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"} | {"OMP_NUM_THREADS": "1"}
    done = subprocess.run(
        [sys.executable, "-X", "importtime", str(ROOT / "benchmarks" / "gpu_check.py"), "--device", "cpu", "--tiny"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stdout + done.stderr[-3000:]
    lines = [line for line in done.stderr.splitlines() if line.startswith("import time:")]
    imported = {line.split("|")[-1].strip().split(".")[0] for line in lines}
    assert "torch" in imported, done.stderr[-3000:]
    assert not imported & set(NOT_ON_A_GPU_MACHINE), sorted(imported & set(NOT_ON_A_GPU_MACHINE))

    out = done.stdout
    assert out.startswith("GPU check on CPU") and re.search(r"^check\s+setting\s+result\s+reference$", out, re.M), out
    agree = dict(re.findall(r"^family vs CPU\s+(\w+)\s+(ok|DIFFERS)", out, re.M))
    assert agree == dict.fromkeys(family_names(), "ok"), out
    first_row = r"^MAML path vs loop\s+second order, 1 inner step: ([\w-]+)\s+[\d.]+ ms, time ([\d.]+)x"
    timed = re.findall(first_row, out, re.M)
    assert [path for path, _ in timed] == [p for p in PATHS if p != "split-compiled"], out
    assert dict(timed)["loop"] == "1.00"
    assert re.search(r"^MAML path vs loop\s+first order, 1 inner step: split\s", out, re.M), out
    speed_row = r"^MAML meta-iter/s\s+.*meta-batch 2.*?([\d.]+) it/s.*TorchBench functorch MAML ~9 it/s"
    speed = re.search(speed_row, out, re.M)
    assert speed and float(speed.group(1)) > 0, out
    packing = re.search(r"^fractional packing\s+4 protonet learners.*ok: aggregate speed-up ([\d.]+)x", out, re.M)
    assert packing and float(packing.group(1)) > 0, out
