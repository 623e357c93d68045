"""The benchmarks' memory and FLOP/s columns are produced and sane (tiny sizes; the figures
belong to the benchmarks)."""

from __future__ import annotations

import pytest
import torch

from benchmarks import flops
from benchmarks.maml import parse_settings, run_setting
from learners.peak_memory import format_size, parse_size, peak_bytes

pytestmark = pytest.mark.usefixtures("single_thread")

CPU = torch.device("cpu")


def test_cpu_peak_counts_what_a_call_holds_at_once_not_what_it_allocates_in_all():
    def four_mib_twice() -> None:
        first = torch.ones(2**20)  # 4 MiB of float32
        del first
        second = torch.ones(2**20)
        assert second.sum() > 0

    def both_at_once() -> None:
        first, second = torch.ones(2**20), torch.ones(2**20)
        assert (first + second).sum() > 0  # and a third 4 MiB for the sum

    assert 4 * 2**20 <= peak_bytes(four_mib_twice, CPU) < 5 * 2**20
    assert 12 * 2**20 <= peak_bytes(both_at_once, CPU) < 13 * 2**20


def test_sizes_parse_and_print():
    assert (
        parse_size("2GiB") == 2 * 2**30
        and parse_size("512 MiB") == 512 * 2**20
        and parse_size("1.5GB") == 1_500_000_000
    )
    assert parse_size("4096") == 4096 and format_size(3 * 2**29) == "1.50 GiB" and format_size(2**20) == "1.0 MiB"
    with pytest.raises(ValueError, match="expected a size such as 2GiB"):
        parse_size("lots")


def test_bench_maml_reports_time_memory_and_flop_fractions_for_baseline_and_paths(capsys):
    rows = run_setting(False, 2, 2, ["split"], 1, CPU, width=4)
    assert set(rows) == {"baseline", "split"}
    assert rows["baseline"].peak > 0 and rows["baseline"].memory_ratio == 1.0
    for row in rows.values():
        assert row.ms > 0 and row.peak > 0 and 0 < row.mm_fraction < 1.5
    printed = capsys.readouterr().out
    assert "second order, 2 inner step(s), meta-batch 2" in printed and "peak MiB" in printed and "of mm" in printed


def test_flop_count_and_settings():
    a = torch.ones(64, 32)
    assert flops.count_flops(lambda: a @ a.T) == 2 * 64 * 32 * 64
    assert parse_settings("1x32,5x4") == ((1, 32), (5, 4))
    with pytest.raises(ValueError, match="--settings: expected STEPSxTASKS"):
        parse_settings("5by32")
