"""Matplotlib figures shared by the CLI, the validation report and the napari Traces widget.

Functions draw onto axes they are given, so the same drawing serves a PNG (Agg) and a docked
Qt canvas. Inputs are the dicts of :func:`napari_chflow.metrics.traces`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

TRACE_PANELS = ("error", "free_energy", "mass")


def draw_error(ax, traces: Mapping[str, Mapping[str, np.ndarray]], t_mark: float | None = None) -> None:
    """RMSE and interface displacement vs t (log-log) for each named run that has a reference."""
    for name, tr in traces.items():
        if "rmse" not in tr:
            continue
        t = tr["t"]
        ax.loglog(t[1:], tr["rmse"][1:], label=f"{name} RMSE")
        ax.loglog(t[1:], tr["interface_displacement"][1:], "--", label=f"{name} delta [grid units]")
    ax.set_xlabel("t")
    ax.set_title("error vs ground truth")
    _finish(ax, t_mark)


def draw_free_energy(ax, traces: Mapping[str, Mapping[str, np.ndarray]], t_mark: float | None = None) -> None:
    """F/V vs t on log-log axes with a t^(-1/3) guide line through the late part of the first run."""
    t_all = None
    for name, tr in traces.items():
        t, f = tr["t"], tr["free_energy_density"]
        ax.loglog(t[1:], f[1:], label=f"{name} F/V")
        if t_all is None and len(t) > 2:
            t_all, f_end = t[1:], f[-1]
    if t_all is not None:
        ax.loglog(t_all, f_end * (t_all / t_all[-1]) ** (-1 / 3), "k:", label="t^(-1/3)")
    ax.set_xlabel("t")
    ax.set_title("free energy density")
    _finish(ax, t_mark)


def draw_mass(ax, traces: Mapping[str, Mapping[str, np.ndarray]], t_mark: float | None = None) -> None:
    """Relative mass drift (M(t) - M(0)) / M(0) vs t."""
    for name, tr in traces.items():
        m = tr["mass"]
        ax.plot(tr["t"], (m - m[0]) / m[0], label=name)
    ax.set_xlabel("t")
    ax.set_title("relative mass drift")
    _finish(ax, t_mark)


def _finish(ax, t_mark: float | None) -> None:
    if t_mark is not None and t_mark > 0:
        ax.axvline(t_mark, color="0.5", lw=1)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize="small")
    ax.grid(True, which="both", alpha=0.3)


def draw_all(axes: Sequence, traces, t_mark: float | None = None) -> None:
    """Fill three axes with :func:`draw_error`, :func:`draw_free_energy` and :func:`draw_mass`."""
    for ax, draw in zip(axes, (draw_error, draw_free_energy, draw_mass)):
        ax.clear()
        draw(ax, traces, t_mark)


def save_traces_png(path: str | Path, traces, title: str = "") -> Path:
    """Write the three trace panels side by side as a PNG (Agg backend, no display needed)."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(13, 3.8), dpi=80)
    axes = fig.subplots(1, 3)
    draw_all(axes, traces)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path)
    return Path(path)


def save_traces_csv(path: str | Path, traces: Mapping[str, Mapping[str, np.ndarray]]) -> Path:
    """One row per frame, one column per (run, metric)."""
    cols, names = [], []
    for run, tr in traces.items():
        for key, values in tr.items():
            if key == "t" and cols:
                continue
            cols.append(np.asarray(values, dtype=np.float64))
            names.append("t" if key == "t" else f"{run}:{key}")
    n = min(len(c) for c in cols)
    np.savetxt(path, np.stack([c[:n] for c in cols], axis=1), delimiter=",", header=",".join(names), comments="")
    return Path(path)
