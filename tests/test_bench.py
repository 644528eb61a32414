"""Speed/memory measurements: ratios to the explicit solver, cost exponents, isolated runs, CLI."""

from __future__ import annotations

import math
import re

import pytest

from napari_chflow import bench
from napari_chflow.bench import Timing


def _synthetic(alpha: dict[str, float]) -> list[Timing]:
    """s/tau = c * N^alpha per method, peak memory proportional to N (explicit: 4 arrays)."""
    out = []
    for size in (16, 32, 64):
        n = size**3
        for m, a in alpha.items():
            c = {"explicit": 1e-5, "spectral": 1e-7, "crnn": 3e-7}[m]
            out.append(Timing(m, size, c * n**a, 2, peak_bytes=int({"explicit": 16, "spectral": 40,
                                                                       "crnn": 60}[m] * n)))
    return out


def test_cost_exponent_recovers_the_synthetic_power_law():
    t = _synthetic({"explicit": 1.0, "spectral": 1.1, "crnn": 0.9})
    assert bench.cost_exponent(t, "explicit") == pytest.approx(1.0, abs=1e-9)
    assert bench.cost_exponent(t, "spectral") == pytest.approx(1.1, abs=1e-9)
    assert bench.cost_exponent(t, "crnn") == pytest.approx(0.9, abs=1e-9)
    assert math.isnan(bench.cost_exponent([Timing("crnn", 16, 1.0, 1)], "crnn"))
    assert "crnn N^0.90" in bench.format_scaling(t)


def test_ratios_and_tables_are_relative_to_explicit_from_the_same_run():
    t = _synthetic({"explicit": 1.0, "spectral": 1.0, "crnn": 1.0})
    r = bench.ratios(t)
    for size in (16, 32, 64):
        assert r[("explicit", size)] == {"speedup": 1.0, "memory": 1.0}
        assert r[("spectral", size)]["speedup"] == pytest.approx(100.0)
        assert r[("crnn", size)]["memory"] == pytest.approx(60 / 16)
    table = bench.format_table(t)
    assert table.splitlines()[2].startswith("| explicit |") and table.count("(1.0x)") == 3
    mem = bench.format_memory_table(t)
    assert "| explicit | 0.1 (1.00x)" in mem and "(3.75x)" in mem


def test_spectral_is_faster_per_tau_than_explicit_in_process():
    # spectral over more tau and the median of 3 interleaved rounds: a 2-tau spectral run takes
    # ~2 ms, which one hiccup of a busy machine (another test's thread, GC) could double
    t = bench.solver_timings((16,), n_tau=lambda m, n: 2 if m == "explicit" else 20, rounds=3)
    by = {x.method: x for x in t}
    assert set(by) == {"explicit", "spectral"} and all(x.peak_bytes is None for x in t)
    # 400 explicit Euler steps per tau vs 3 ETD2 steps: clearly faster even at 16^3 on a busy
    # machine (the margin leaves room for timing noise; the real ratios are in docs/validation.md)
    assert bench.ratios(t)[("spectral", 16)]["speedup"] > 3


def test_isolated_timing_runs_in_a_fresh_process_and_reports_memory():
    (t,) = bench.isolated_timings((12,), methods=("spectral",), n_tau=lambda m, n: 1, threads=1)
    assert (t.method, t.size, t.n_tau) == ("spectral", 12, 1)
    assert 0 < t.seconds_per_tau < 10
    assert isinstance(t.peak_bytes, int) and 0 <= t.peak_bytes < 2**30
    with pytest.raises(ValueError, match="needs a model"):
        bench.isolated_timings((8,), methods=("crnn",))
    with pytest.raises(ValueError, match="unknown method"):
        bench.isolated_timings((8,), methods=("lbm",))


def test_cli_bench_prints_the_speed_table_with_explicit_at_one(capsys):
    from napari_chflow.cli import main

    assert main(["bench", "solvers", "--sizes", "8", "12", "--threads", "1"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("device cpu, torch threads 1")
    rows = {line.split("|")[1].strip(): line for line in out.splitlines() if line.startswith("| ")}
    assert re.search(r"\(1\.0x\).*\(1\.0x\)", rows["explicit"])
    assert "cost growth with N" in out


def test_isolated_peak_memory_sees_the_run_arrays():
    # explicit at 64^3 holds phi and three float32 work arrays (1 MiB each) plus the padded one
    (t,) = bench.isolated_timings((64,), methods=("explicit",), n_tau=lambda m, n: 1, threads=1)
    assert 3 * 2**20 < t.peak_bytes < 2**30
