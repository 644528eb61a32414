"""Matplotlib figures shared by the CLI, the validation report and the napari Traces widget.

What is drawn is defined once, by :func:`panel_lines` (every line of a panel: label, style and
data). :class:`TracePlot` creates those lines once on three axes and afterwards only updates their
data (``set_data``, ``relim``, ``autoscale_view``), which is what a live view needs;
:func:`draw_all` (PNG export, CLI) is the same drawing done in one go. Inputs are the dicts of
:func:`napari_chflow.metrics.traces`. Qt-free: the caller owns the canvas and decides when to draw.
"""

from __future__ import annotations

import threading
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

TRACE_PANELS = ("error", "free_energy", "mass")
TITLES = {"error": "error vs ground truth", "free_energy": "free energy density",
          "mass": "relative mass drift"}
LOG_PANELS = ("error", "free_energy")  # log-log axes

Traces = Mapping[str, Mapping[str, np.ndarray]]

# Matplotlib's text layout (the mathtext parser behind log-axis tick labels, a pyparsing grammar
# with a global packrat cache) is process-wide state and not thread-safe: two figures rendered
# at once in two threads (the Traces widget's render thread and a PNG export, or training's
# loss.png beside the Train widget's plot) corrupt each other's parses ("ParseException ... at
# char 0"). Every render that can run beside another thread holds this lock.
DRAW_LOCK = threading.RLock()


def panel_lines(panel: str, traces: Traces) -> list[tuple[str, str, np.ndarray, np.ndarray]]:
    """``(label, fmt, t, y)`` of every line of ``panel`` (one of :data:`TRACE_PANELS`), in order.

    - "error": RMSE and interface displacement vs t for each run that has a reference (t > 0);
    - "free_energy": F/V vs t for each run (t > 0) and a t^(-1/3) guide through the last point of
      the first run with more than two frames;
    - "mass": relative mass drift (M(t) - M(0)) / M(0) for each run.
    """
    lines = []
    if panel == "error":
        for name, tr in traces.items():
            if "rmse" in tr:
                t = tr["t"]
                lines.append((f"{name} RMSE", "-", t[1:], tr["rmse"][1:]))
                lines.append((f"{name} delta [grid units]", "--", t[1:],
                              tr["interface_displacement"][1:]))
    elif panel == "free_energy":
        guide = None
        for name, tr in traces.items():
            t, f = tr["t"], tr["free_energy_density"]
            lines.append((f"{name} F/V", "-", t[1:], f[1:]))
            if guide is None and len(t) > 2:
                guide = (t[1:], f[-1])
        if guide is not None:
            t, f_end = guide
            lines.append(("t^(-1/3)", "k:", t, f_end * (t / t[-1]) ** (-1 / 3)))
    elif panel == "mass":
        for name, tr in traces.items():
            m = np.asarray(tr["mass"], dtype=np.float64)
            lines.append((name, "-", tr["t"], (m - m[0]) / m[0] if len(m) else m))
    else:
        raise ValueError(f"unknown trace panel {panel!r}: use one of {', '.join(TRACE_PANELS)}")
    return lines


class _Panel:
    """One panel on ``ax``: lines created by :meth:`update` when the set of lines changes, else
    only their data is replaced; a vertical marker at the viewer's time ``t_mark``."""

    def __init__(self, ax, panel: str, fontsize: float | None = None,
                 minor_ticks: bool = True) -> None:
        self.ax, self.panel = ax, panel
        self.fontsize, self.minor_ticks = fontsize, minor_ticks
        self.lines: list = []
        self.mark = None
        self.key: tuple | None = None

    def _font(self, scale: float) -> dict:
        """``fontsize`` keyword for text ``scale`` times the base size (none: rc defaults)."""
        return {} if self.fontsize is None else {"fontsize": self.fontsize * scale}

    def _build(self, lines, clear: bool) -> None:
        ax = self.ax
        if clear:
            ax.clear()
        plot = ax.loglog if self.panel in LOG_PANELS and lines else ax.plot
        self.lines = [plot(t, y, fmt, label=label)[0] for label, fmt, t, y in lines]
        ax.set_xlabel("t", **self._font(1.0))
        ax.set_title(TITLES[self.panel], **self._font(1.2))
        self.mark = None  # created when a time is first marked
        if self.lines:
            ax.legend(**(self._font(0.833) or {"fontsize": "small"}))
        ax.grid(True, which="both", alpha=0.3)
        if self.fontsize is not None:
            ax.tick_params(labelsize=self.fontsize * 0.833)
        if not self.minor_ticks:  # no minor ticks: about halves the drawing time
            from matplotlib.ticker import NullLocator

            ax.xaxis.set_minor_locator(NullLocator())
            ax.yaxis.set_minor_locator(NullLocator())
        self.key = tuple((label, fmt) for label, fmt, _, _ in lines)

    def update(self, traces: Traces, t_mark: float | None = None, clear: bool = True) -> bool:
        """Show ``traces``; True when the lines were (re)created, False when only data changed."""
        lines = panel_lines(self.panel, traces)
        rebuilt = tuple((label, fmt) for label, fmt, _, _ in lines) != self.key
        if rebuilt:
            self._build(lines, clear)
        else:
            for artist, (_, _, t, y) in zip(self.lines, lines):
                artist.set_data(t, y)
        shown = t_mark is not None and t_mark > 0
        if shown and self.mark is None:
            self.mark = self.ax.axvline(t_mark, color="0.5", lw=1)
        elif self.mark is not None:
            self.mark.set_visible(shown)
            if shown:
                self.mark.set_xdata([t_mark, t_mark])
        if self.lines or shown:
            self.ax.relim(visible_only=True)  # a hidden marker does not count
            self.ax.autoscale_view()
        return rebuilt

    def show_message(self, text: str) -> None:
        """An empty panel with its title and ``text`` in the middle (lines are recreated later)."""
        ax = self.ax
        ax.clear()
        ax.set_title(TITLES[self.panel], **self._font(1.2))
        ax.text(0.5, 0.5, text, ha="center", va="center", transform=ax.transAxes, color="0.5",
                **self._font(1.0))
        if self.fontsize is not None:
            ax.tick_params(labelsize=self.fontsize * 0.833)
        self.lines, self.mark, self.key = [], None, None


class TracePlot:
    """The three trace panels (:data:`TRACE_PANELS`) on ``axes``, drawn once, then updated in place.

    :meth:`update` creates the lines of :func:`panel_lines` the first time (and whenever the set
    of lines changes, e.g. another run name), otherwise only sets their data and rescales: cheap
    enough for a live view. ``fontsize`` (points) scales titles, labels, ticks and legends
    (None: matplotlib's defaults); ``minor_ticks=False`` skips minor ticks, which draws faster.
    The caller draws the canvas.
    """

    def __init__(self, axes: Sequence, fontsize: float | None = None,
                 minor_ticks: bool = True) -> None:
        self.axes = list(axes)
        self.panels = [_Panel(ax, panel, fontsize, minor_ticks)
                       for ax, panel in zip(self.axes, TRACE_PANELS)]

    def update(self, traces: Traces, t_mark: float | None = None) -> bool:
        """Show ``traces`` with a marker at time ``t_mark`` (None or <= 0: no marker); returns
        True when lines were (re)created."""
        rebuilt = [panel.update(traces, t_mark) for panel in self.panels]  # every panel
        return any(rebuilt)

    def show_message(self, text: str) -> None:
        """Empty panels with ``text`` (e.g. before any data); the next update recreates lines."""
        for panel in self.panels:
            panel.show_message(text)


def draw_error(ax, traces: Traces, t_mark: float | None = None) -> None:
    """RMSE and interface displacement vs t (log-log) for each named run that has a reference."""
    _Panel(ax, "error").update(traces, t_mark, clear=False)


def draw_free_energy(ax, traces: Traces, t_mark: float | None = None) -> None:
    """F/V vs t on log-log axes with a t^(-1/3) guide line through the late part of the first run."""
    _Panel(ax, "free_energy").update(traces, t_mark, clear=False)


def draw_mass(ax, traces: Traces, t_mark: float | None = None) -> None:
    """Relative mass drift (M(t) - M(0)) / M(0) vs t."""
    _Panel(ax, "mass").update(traces, t_mark, clear=False)


def draw_all(axes: Sequence, traces: Traces, t_mark: float | None = None) -> None:
    """Clear three axes and draw the error, free-energy and mass panels on them."""
    TracePlot(axes).update(traces, t_mark)


def save_traces_png(path: str | Path, traces: Traces, title: str = "") -> Path:
    """Write the three trace panels side by side as a PNG (Agg backend, no display needed)."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(13, 3.8), dpi=80)
    axes = fig.subplots(1, 3)
    draw_all(axes, traces)
    if title:
        fig.suptitle(title)
    with DRAW_LOCK:
        fig.tight_layout()
        fig.savefig(path)
    return Path(path)


def save_traces_csv(path: str | Path, traces: Traces) -> Path:
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
