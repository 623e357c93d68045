"""``learn2tune bench data-sharing`` at its tiny size, on the session's real Ray: both paths, both
trial counts and the memory ratio are printed, and the measured figures are consistent."""

from __future__ import annotations

import re

import pytest

from pipeline.cli import main


@pytest.mark.slow  # four searches, ~25 s: the benchmark, not the pipeline (tests/test_trial_data.py)
def test_bench_prints_both_paths_for_1_and_n_trials_and_the_ratio(pipeline_ray, tmp_path, capsys):
    assert main(["bench", "data-sharing", "--size", "tiny", "--trials", "2", "--workdir", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "--size tiny measures the small noise set only" in out
    rows = re.findall(
        r"^(storage \(per-trial copy\)|object-store \(shared\))\s+(\d)"
        r"\s+([\d.,]+) MB\s+([\d.,]+) MB\s+([\d.,]+) MB",
        out,
        re.M,
    )
    assert [(path, int(n)) for path, n, *_ in rows] == [
        ("storage (per-trial copy)", 1),
        ("storage (per-trial copy)", 2),
        ("object-store (shared)", 1),
        ("object-store (shared)", 2),
    ], out
    memory = {(path, int(n)): [float(v.replace(",", "")) for v in values] for path, n, *values in rows}
    data_size = re.search(r"images of 3x84x84, ([\d.]+) MB", out)
    assert data_size is not None, out
    data_mb = float(data_size.group(1))
    for (path, n), (private, shared, node) in memory.items():
        assert abs(private + shared - node) < 0.2
        if path.startswith("storage"):  # every trial holds its own copy
            assert shared == 0 and private >= n * data_mb
        else:  # the one copy, in the object store
            assert abs(shared - data_mb) < 0.1 * data_mb + 0.1
    ratios = re.search(
        r"memory\(2 trials\)/memory\(1 trial\): "
        r"storage \(per-trial copy\) ([\d.]+)x, object-store \(shared\) ([\d.]+)x",
        out,
    )
    assert ratios, out
    assert float(ratios.group(1)) > 1.5  # two private copies
    assert memory["object-store (shared)", 2][2] < memory["storage (per-trial copy)", 2][2]
    assert re.search(r"put the train and val splits into the object store once: [\d.]+ s", out)


def test_bench_refuses_a_single_trial(capsys):
    assert main(["bench", "data-sharing", "--trials", "1"]) == 2
    assert "learn2tune: error: --trials must be at least 2" in capsys.readouterr().err
