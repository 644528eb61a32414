"""Side-by-side speed measurements: seconds per tau of physical time for each method, measured in
one run so that the ratios to the explicit reference are meaningful on a noisy machine.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass

import numpy as np

from . import physics
from .seeds import perlin


@dataclass(frozen=True)
class Timing:
    """One method at one grid size: ``seconds_per_tau`` of wall time per tau of physical time."""

    method: str
    size: int
    seconds_per_tau: float
    n_tau: int


def seconds_per_tau(frames: Iterator[np.ndarray], n_tau: int) -> float:
    """Wall time per frame of an iterator that yields the initial frame first, then one per tau.

    The initial frame (setup) is excluded; the best of the per-frame times is not used, the total
    is, so that the figure is what a user waits for.
    """
    next(frames)
    start = time.perf_counter()
    for _ in range(n_tau):
        next(frames)
    return (time.perf_counter() - start) / n_tau


def solver_timings(
    sizes: Iterable[int] = (32, 64, 128),
    n_tau: Callable[[str, int], int] | None = None,
    device: str | None = None,
    extra: dict[str, Callable[[np.ndarray, int], Iterator[np.ndarray]]] | None = None,
) -> list[Timing]:
    """Time the explicit and spectral solvers (and any ``extra`` methods) on Perlin ICs.

    ``n_tau(method, size)`` picks how many tau each measurement runs (default: 1 tau for explicit
    at 128^3, 2 otherwise for explicit, 8 for the others). Each measurement is preceded by a
    1-tau warm-up at the same size.
    """
    n_tau = n_tau or (lambda m, n: (1 if n >= 128 else 2) if m == "explicit" else 8)
    methods: dict[str, Callable[[np.ndarray, int], Iterator[np.ndarray]]] = {
        s: (lambda phi0, k, s=s: physics.iter_simulate(phi0, k, solver=s, device=device))
        for s in physics.SOLVERS
    }
    methods.update(extra or {})
    out = []
    for size in sizes:
        phi0 = perlin((size,) * 3, mean=0.5, seed=1)
        for name, run in methods.items():
            k = n_tau(name, size)
            seconds_per_tau(run(phi0, 1), 1)  # warm-up (allocations, FFT plans, kernels)
            out.append(Timing(name, size, seconds_per_tau(run(phi0, k), k), k))
    return out


def format_table(timings: list[Timing], reference: str = "explicit") -> str:
    """Markdown table: seconds per tau per method and size, and the speed-up vs ``reference``."""
    sizes = sorted({t.size for t in timings})
    methods = list(dict.fromkeys(t.method for t in timings))
    by = {(t.method, t.size): t.seconds_per_tau for t in timings}
    lines = ["| method | " + " | ".join(f"{n}^3 s/tau (x vs {reference})" for n in sizes) + " |"]
    lines.append("|---|" + "---|" * len(sizes))
    for m in methods:
        cells = []
        for n in sizes:
            if (m, n) not in by:
                cells.append("-")
                continue
            ratio = by.get((reference, n), float("nan")) / by[(m, n)]
            cells.append(f"{by[(m, n)]:.4g} ({ratio:.1f}x)")
        lines.append(f"| {m} | " + " | ".join(cells) + " |")
    return "\n".join(lines)
