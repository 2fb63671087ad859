"""The benchmark suite's arithmetic: ratios, the ceiling a copy sets, and runs combined (no timing)."""

from __future__ import annotations

import re

import pytest

from batchnorm.bench import Row, combine_runs, table

X_BYTES = 4 * 8 * 4  # a (4, 8) float32 input


def row(path: str, ours: float, torch: float | None, copy: float, moved: int, least: int) -> Row:
    return Row("core", (4, 8), "NC", path, ours, torch, copy, moved * X_BYTES, least * X_BYTES)


@pytest.mark.parametrize(
    ("path", "moved", "least", "ceiling"),
    [("inference", 2, 2, 3.0), ("training forward", 3, 2, 3.0), ("backward", 5, 3, 2.0)],
)
def test_the_ceiling_is_torchs_time_over_a_copy_of_the_bytes_no_implementation_avoids(
    path, moved, least, ceiling
):
    r = row(path, ours=4.0, torch=6.0, copy=2.0, moved=moved, least=least)
    assert r.speedup == pytest.approx(1.5)
    assert r.ceiling == pytest.approx(ceiling)
    assert r.copy_fraction == pytest.approx(moved / 2 * 2.0 / 4.0)


def test_no_ceiling_without_torch_or_without_the_least_bytes():
    assert row("inference", 4.0, None, 2.0, 2, 2).ceiling is None
    assert row("inference", 4.0, 6.0, 2.0, 2, 0).ceiling is None


def test_the_table_prints_the_ceiling_beside_the_ratio():
    lines = table([row("backward", 4.0, 6.0, 2.0, 5, 3), row("inference", 4.0, None, 2.0, 2, 2)]).splitlines()
    assert re.search(r"x torch +ceiling +GB/s", lines[0])
    assert lines[2].split()[4:7] == ["6.000", "1.50", "2.00"]
    assert lines[3].split()[4:7] == ["-", "-", "-"]


def test_runs_combine_into_medians_and_the_range_of_the_ratio():
    runs = [[row("inference", ours, 6.0, copy, 2, 2)] for ours, copy in ((2.0, 1.0), (3.0, 3.0), (4.0, 2.0))]
    (r,) = combine_runs(runs)
    assert (r.ours_ms, r.torch_ms, r.copy_ms) == (3.0, 6.0, 2.0)
    assert r.speedup_range == (1.5, 3.0)
    assert r.ceiling == pytest.approx(3.0)
