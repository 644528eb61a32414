"""Side-by-side speed measurements: seconds per tau of physical time for each method, measured in
one run so that the ratios to the explicit reference are meaningful on a noisy machine.

:func:`solver_timings` times in this process. :func:`isolated_timings` runs every (method, size)
in a fresh spawned process and also records its peak memory: on CPU the growth of the process's
resident set (sampled every millisecond from /proc) over the idle process after imports
and setup, on CUDA ``torch.cuda.max_memory_allocated`` over what was allocated before the run.
:func:`cost_exponent` fits cost ~ N^alpha, N = size^3 collocation points of the full grid.
"""

from __future__ import annotations

import math
import multiprocessing
import os
import tempfile
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from . import physics
from .seeds import perlin


def default_n_tau(method: str, size: int) -> int:
    """Tau per measurement: explicit 1 at >= 128^3 (about 4 s on 2 CPU cores), else 2; spectral
    24 (its first tau, a 4-substep start while phi is near 1/2, costs about 3 later ones, so
    a run of a few tau would mostly time the start); others 8."""
    if method == "explicit":
        return 1 if size >= 128 else 2
    return 24 if method == "spectral" else 8


@dataclass(frozen=True)
class Timing:
    """One method at one grid size: ``seconds_per_tau`` of wall time per tau of physical time."""

    method: str
    size: int
    seconds_per_tau: float
    n_tau: int
    peak_bytes: int | None = None  # peak extra memory of the run, when measured (isolated_timings)
    rounds: int = 1  # interleaved timing rounds; seconds_per_tau is their median


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
    rounds: int = 1,
) -> list[Timing]:
    """Time the explicit and spectral solvers (and any ``extra`` methods) on Perlin ICs.

    ``n_tau(method, size)`` picks how many tau each measurement runs (default:
    :func:`default_n_tau`). Each method is warmed up for 1 tau at each size, then timed in
    ``rounds`` interleaved rounds (all methods once per round) and the median round is kept:
    a burst of load on a shared machine then hits one round of every method, not one method.
    """
    if rounds < 1:
        raise ValueError(f"rounds={rounds}: use rounds >= 1")
    n_tau = n_tau or default_n_tau
    methods: dict[str, Callable[[np.ndarray, int], Iterator[np.ndarray]]] = {
        s: (lambda phi0, k, s=s: physics.iter_simulate(phi0, k, solver=s, device=device))
        for s in physics.SOLVERS
    }
    methods.update(extra or {})
    out = []
    for size in sizes:
        phi0 = perlin((size,) * 3, mean=0.5, seed=1)
        for run in methods.values():
            seconds_per_tau(run(phi0, 1), 1)  # warm-up (allocations, FFT plans, kernels)
        samples: dict[str, list[float]] = {name: [] for name in methods}
        for _ in range(rounds):
            for name, run in methods.items():
                k = n_tau(name, size)
                samples[name].append(seconds_per_tau(run(phi0, k), k))
        out += [Timing(name, size, float(np.median(v)), n_tau(name, size), rounds=rounds)
                for name, v in samples.items()]
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


# --------------------------------------------------------------------------- isolated runs + memory


def _runner(method: str, device, model=None) -> Callable[[np.ndarray, int], Iterator[np.ndarray]]:
    """``run(phi0, n_tau)`` -> frame iterator for a solver name or ``"crnn"`` (needs ``model``)."""
    if method in physics.SOLVERS:
        return lambda phi0, k: physics.iter_simulate(phi0, k, solver=method, device=device)
    if method == "crnn":
        from .model import iter_rollout

        return lambda phi0, k: iter_rollout(model, phi0, k, device=device)
    raise ValueError(f"unknown method {method!r}: use one of {', '.join((*physics.SOLVERS, 'crnn'))}")


def _rss_bytes() -> int:
    """Current resident set size of this process (Linux /proc; else the lifetime maximum)."""
    try:
        with open("/proc/self/statm") as fh:
            return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except OSError:
        import resource
        import sys

        rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return int(rss if sys.platform == "darwin" else rss * 1024)  # Linux reports KiB


class _PeakRss:
    """Samples the resident set every millisecond in a thread; ``peak`` is the largest seen.
    (``ru_maxrss`` cannot be reset, so a transient peak during imports would hide the run's.)"""

    def __init__(self) -> None:
        self.peak = _rss_bytes()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._poll, daemon=True)

    def _poll(self) -> None:
        while not self._stop.wait(0.001):
            self.peak = max(self.peak, _rss_bytes())

    def __enter__(self) -> "_PeakRss":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, _rss_bytes())


def _measure(method: str, size: int, n_tau: int, device, threads: int,
             checkpoint: str | None) -> Timing:
    """Body of one isolated measurement (runs in a fresh process): setup, baseline memory,
    1-tau warm-up, ``n_tau`` timed tau, peak memory."""
    import gc

    import torch

    torch.set_num_threads(threads)
    model = None
    if method == "crnn":
        from .model import load_checkpoint

        model = load_checkpoint(checkpoint, device=device)
    dev = physics.resolve_device(device)
    run = _runner(method, device, model)
    phi0 = perlin((size,) * 3, mean=0.5, seed=1)
    gc.collect()
    cuda = dev.type == "cuda"
    if cuda:
        torch.cuda.synchronize(dev)
        torch.cuda.reset_peak_memory_stats(dev)
        base = torch.cuda.memory_allocated(dev)
    else:
        base = _rss_bytes()
    with _PeakRss() as rss:
        seconds_per_tau(run(phi0, 1), 1)
        sec = seconds_per_tau(run(phi0, n_tau), n_tau)
    peak = (torch.cuda.max_memory_allocated(dev) if cuda else rss.peak) - base
    return Timing(method, size, sec, n_tau, max(int(peak), 0))


def isolated_timings(
    sizes: Iterable[int] = (32, 64, 128),
    methods: Iterable[str] = ("explicit", "spectral", "crnn"),
    model=None,
    n_tau: Callable[[str, int], int] | None = None,
    device: str | None = None,
    threads: int | None = None,
) -> list[Timing]:
    """Seconds per tau and peak memory of each method and size, each in a fresh spawned process
    (so one method's allocations and caches do not count against the next).

    ``"crnn"`` needs ``model`` (a :class:`~napari_chflow.model.CRNN`); it is handed over as a
    temporary checkpoint. ``threads`` (default: this process's torch thread count) is set in
    every child. Returns :class:`Timing` with ``peak_bytes`` filled in.
    """
    import torch

    from .model import save_checkpoint

    methods = list(methods)
    if "crnn" in methods and model is None:
        raise ValueError("timing 'crnn' needs a model: pass model=load_pretrained() or drop 'crnn'")
    for m in methods:
        if m not in (*physics.SOLVERS, "crnn"):
            raise ValueError(f"unknown method {m!r}: use explicit, spectral or crnn")
    physics.resolve_device(device)
    n_tau = n_tau or default_n_tau
    threads = int(threads or torch.get_num_threads())
    ctx = multiprocessing.get_context("spawn")
    out = []
    with tempfile.TemporaryDirectory(prefix="chflow-bench-") as tmp:
        ckpt = None
        if model is not None and "crnn" in methods:
            ckpt = str(save_checkpoint(Path(tmp) / "model.pt", model, recipe=model.info.recipe,
                                       data=model.info.data))
        for size in sizes:
            for m in methods:
                with ProcessPoolExecutor(1, mp_context=ctx) as pool:
                    out.append(pool.submit(_measure, m, int(size), n_tau(m, int(size)), device,
                                           threads, ckpt).result())
    return out


# --------------------------------------------------------------------------- analysis + tables


def cost_exponent(timings: list[Timing], method: str) -> float:
    """Least-squares ``alpha`` in ``seconds_per_tau ~ N^alpha`` over the sizes timed for
    ``method`` (N = size^3, the full-grid collocation points). NaN with fewer than 2 sizes."""
    pts = sorted((t.size, t.seconds_per_tau) for t in timings if t.method == method)
    if len({n for n, _ in pts}) < 2:
        return float("nan")
    n = np.array([3 * math.log(s) for s, _ in pts])
    y = np.array([math.log(v) for _, v in pts])
    return float(np.polyfit(n, y, 1)[0])


def ratios(timings: list[Timing],
           reference: str = "explicit") -> dict[tuple[str, int], dict[str, float]]:
    """Per ``(method, size)``: ``speedup`` = reference s/tau / method s/tau and ``memory`` =
    method peak / reference peak (NaN where not measured), both from the same run."""
    by = {(t.method, t.size): t for t in timings}
    out = {}
    for (m, n), t in by.items():
        ref = by.get((reference, n))
        speed = ref.seconds_per_tau / t.seconds_per_tau if ref else float("nan")
        mem = (t.peak_bytes / ref.peak_bytes if ref and ref.peak_bytes and t.peak_bytes is not None
               else float("nan"))
        out[(m, n)] = {"speedup": speed, "memory": mem}
    return out


def format_memory_table(timings: list[Timing], reference: str = "explicit") -> str:
    """Markdown table: peak extra memory (MiB) per method and size, and the ratio to ``reference``."""
    sizes = sorted({t.size for t in timings})
    methods = list(dict.fromkeys(t.method for t in timings))
    by = {(t.method, t.size): t for t in timings}
    r = ratios(timings, reference)
    lines = ["| method | " + " | ".join(f"{n}^3 peak MiB (x vs {reference})" for n in sizes) + " |"]
    lines.append("|---|" + "---|" * len(sizes))
    for m in methods:
        cells = []
        for n in sizes:
            t = by.get((m, n))
            if t is None or t.peak_bytes is None:
                cells.append("-")
                continue
            ratio = r[(m, n)]["memory"]
            cells.append(f"{t.peak_bytes / 2**20:.1f} ({ratio:.2f}x)" if math.isfinite(ratio)
                         else f"{t.peak_bytes / 2**20:.1f}")
        lines.append(f"| {m} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def format_scaling(timings: list[Timing]) -> str:
    """One line: the fitted cost exponent alpha (s/tau ~ N^alpha) of each method."""
    methods = list(dict.fromkeys(t.method for t in timings))
    parts = [f"{m} N^{cost_exponent(timings, m):.2f}" for m in methods]
    return "cost growth with N = size^3 (s/tau ~ N^alpha): " + ", ".join(parts)


def format_report(timings: list[Timing], device: str | None = None, threads: int | None = None) -> str:
    """What ``chflow bench`` prints: a header line (device, threads), the speed table, the cost
    exponents and, when measured, the memory table."""
    import torch

    head = f"device {device or 'cpu'}, torch threads {threads or torch.get_num_threads()}"
    rounds = max((t.rounds for t in timings), default=1)
    if rounds > 1:
        head += f", median of {rounds} interleaved rounds"
    parts = [head, format_table(timings), format_scaling(timings)]
    if any(t.peak_bytes is not None for t in timings):
        parts.append(format_memory_table(timings))
    return "\n\n".join(parts)
