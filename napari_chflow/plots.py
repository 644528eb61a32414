"""Matplotlib figures shared by the CLI, the validation report and the napari Traces widget.

What is drawn is defined once, by :func:`panel_lines` (every line of a panel: label, style and
data). :class:`TracePlot` creates those lines once on four axes, one quantity per axis, with one
figure legend above them, and afterwards only updates their data (``set_data``, ``relim``,
``autoscale_view``), which is what a live view needs; :func:`draw_all` (PNG export, CLI) is the
same drawing done in one go. Figures use constrained layout, so labels and the legend are never
clipped, down to a dock ~350 px wide. Inputs are the dicts of :func:`napari_chflow.metrics.traces`.
Qt-free: the caller owns the canvas and decides when to draw.
"""

from __future__ import annotations

import threading
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

TRACE_PANELS = ("rmse", "displacement", "free_energy", "mass")
#: y-axis label of each panel, with its unit
YLABELS = {"rmse": "RMSE [phi]", "displacement": "interface shift [grid]",
           "free_energy": "F/V", "mass": "mass drift"}
LOG_PANELS = ("free_energy",)  # log-log axes (the t^(-1/3) coarsening law is a straight line)
GUIDE = "t^(-1/3)"

Traces = Mapping[str, Mapping[str, np.ndarray]]

# Matplotlib's text layout (the mathtext parser behind log-axis tick labels, a pyparsing grammar
# with a global packrat cache) is process-wide state and not thread-safe: two figures rendered
# at once in two threads (the Traces widget's render thread and a PNG export, or training's
# loss.png beside the Train widget's plot) corrupt each other's parses ("ParseException ... at
# char 0"). Every render that can run beside another thread holds this lock.
DRAW_LOCK = threading.RLock()


def readable_log_axis(axis) -> None:
    """Tick labels of a log-scaled ``axis`` in plain numbers, at least two of them however
    narrow the range: 1-2-5 ticks over a decade or more, else a few evenly spaced ones (F/V and
    losses often span less than a decade, where plain log ticks leave a single label)."""
    from matplotlib.ticker import FormatStrFormatter, LogLocator, MaxNLocator, NullFormatter

    class Locator(LogLocator):
        def tick_values(self, vmin, vmax):
            lo, hi = sorted((vmin, vmax))
            if lo > 0 and hi / lo < 10:
                return MaxNLocator(nbins=3, min_n_ticks=2).tick_values(lo, hi)
            return LogLocator(base=10, subs=(1.0, 2.0, 5.0), numticks=6).tick_values(lo, hi)

    axis.set_major_locator(Locator())
    axis.set_major_formatter(FormatStrFormatter("%.3g"))
    axis.set_minor_formatter(NullFormatter())


def panel_lines(panel: str, traces: Traces) -> list[tuple[str, str, np.ndarray, np.ndarray]]:
    """``(label, fmt, t, y)`` of every line of ``panel`` (one of :data:`TRACE_PANELS`), in order.

    Each run keeps one colour (``C0``, ``C1``, ... in the order of ``traces``) and its name as
    the label in every panel:

    - "rmse": RMSE vs t (phi units) of each run that has a reference (t > 0);
    - "displacement": interface displacement vs t (grid units) of those runs (t > 0);
    - "free_energy": F/V vs t of each run (t > 0) and a t^(-1/3) guide through the last point of
      the first run with more than two frames;
    - "mass": relative mass drift (M(t) - M(0)) / M(0) of each run.
    """
    lines = []
    runs = [(name, tr, f"C{i}") for i, (name, tr) in enumerate(traces.items())]
    if panel in ("rmse", "displacement"):
        key = "rmse" if panel == "rmse" else "interface_displacement"
        for name, tr, color in runs:
            if "rmse" in tr:
                lines.append((name, f"{color}-", tr["t"][1:], tr[key][1:]))
    elif panel == "free_energy":
        guide = None
        for name, tr, color in runs:
            t, f = tr["t"], tr["free_energy_density"]
            lines.append((name, f"{color}-", t[1:], f[1:]))
            if guide is None and len(t) > 2:
                guide = (t[1:], f[-1])
        if guide is not None:
            t, f_end = guide
            lines.append((GUIDE, "k:", t, f_end * (t / t[-1]) ** (-1 / 3)))
    elif panel == "mass":
        for name, tr, color in runs:
            m = np.asarray(tr["mass"], dtype=np.float64)
            lines.append((name, f"{color}-", tr["t"], (m - m[0]) / m[0] if len(m) else m))
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

    def _decorate(self) -> None:
        ax = self.ax
        ax.set_xlabel("t", **self._font(1.0), labelpad=1)
        ax.set_ylabel(YLABELS[self.panel], **self._font(1.0))
        ax.grid(True, which="both", alpha=0.3)
        if self.fontsize is not None:
            ax.tick_params(labelsize=self.fontsize * 0.857, pad=2)
        if self.panel in LOG_PANELS and ax.get_yscale() == "log":
            for axis in (ax.xaxis, ax.yaxis):
                readable_log_axis(axis)
        else:
            ax.ticklabel_format(axis="y", style="sci", scilimits=(-3, 4))
            if self.fontsize is not None:
                ax.yaxis.get_offset_text().set_fontsize(self.fontsize * 0.857)
        if not self.minor_ticks:  # no minor ticks: about halves the drawing time
            from matplotlib.ticker import NullLocator

            ax.xaxis.set_minor_locator(NullLocator())
            ax.yaxis.set_minor_locator(NullLocator())

    def _build(self, lines, clear: bool) -> None:
        ax = self.ax
        if clear:
            ax.clear()
        plot = ax.loglog if self.panel in LOG_PANELS and lines else ax.plot
        self.lines = [plot(t, y, fmt, label=label, lw=1.2)[0] for label, fmt, t, y in lines]
        self.mark = None  # created when a time is first marked
        self._decorate()
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
            self.mark = self.ax.axvline(t_mark, color="0.5", lw=1, label="_time")
        elif self.mark is not None:
            self.mark.set_visible(shown)
            if shown:
                self.mark.set_xdata([t_mark, t_mark])
        if self.lines or shown:
            self.ax.relim(visible_only=True)  # a hidden marker does not count
            self.ax.autoscale_view()
        return rebuilt

    def show_message(self, text: str) -> None:
        """An empty panel with its labels and ``text`` in the middle (lines are recreated later)."""
        ax = self.ax
        ax.clear()
        self._decorate()
        if text:
            ax.text(0.5, 0.5, text, ha="center", va="center", transform=ax.transAxes,
                    color="0.4", **self._font(1.0))
        self.lines, self.mark, self.key = [], None, None


class TracePlot:
    """The trace panels (:data:`TRACE_PANELS`) on ``axes``, drawn once, then updated in place.

    :meth:`update` creates the lines of :func:`panel_lines` the first time (and whenever the set
    of lines changes, e.g. another run name), otherwise only sets their data and rescales: cheap
    enough for a live view. One legend for all panels sits above them (a figure legend: one
    entry per run and the t^(-1/3) guide), never over the data. ``fontsize`` (points) scales
    labels, ticks and the legend (None: matplotlib's defaults); ``minor_ticks=False`` skips minor
    ticks, which draws faster. The caller draws the canvas; give the figure
    ``layout="constrained"`` so that nothing is clipped.
    """

    def __init__(self, axes: Sequence, fontsize: float | None = None,
                 minor_ticks: bool = True, legend_columns: int = 3,
                 legend_loc: str = "outside upper center") -> None:
        self.axes = list(axes)
        self.figure = self.axes[0].figure
        self.fontsize, self.legend_columns, self.legend_loc = fontsize, legend_columns, legend_loc
        self.panels = [_Panel(ax, panel, fontsize, minor_ticks)
                       for ax, panel in zip(self.axes, TRACE_PANELS)]
        self.legend = None
        self._legend_key: tuple | None = None

    def update(self, traces: Traces, t_mark: float | None = None) -> bool:
        """Show ``traces`` with a marker at time ``t_mark`` (None or <= 0: no marker); returns
        True when lines were (re)created."""
        rebuilt = [panel.update(traces, t_mark) for panel in self.panels]  # every panel
        self._update_legend()
        return any(rebuilt)

    def _update_legend(self) -> None:
        handles = {}
        order = sorted(self.panels, key=lambda p: p.panel != "free_energy")  # all runs, in order
        for panel in order:
            for line in panel.lines:
                handles.setdefault(line.get_label(), line)
        key = tuple(handles)
        if key == self._legend_key:
            return
        if self.legend is not None:
            self.legend.remove()
            self.legend = None
        if handles:
            size = {} if self.fontsize is None else {"fontsize": self.fontsize}
            self.legend = self.figure.legend(
                list(handles.values()), list(handles), loc=self.legend_loc,
                ncols=min(len(handles), self.legend_columns), frameon=False, **size)
        self._legend_key = key

    def show_message(self, text: str) -> None:
        """Empty panels, ``text`` on the first (e.g. before any data); the next update recreates
        the lines."""
        for i, panel in enumerate(self.panels):
            panel.show_message(text if i == 0 else "")
        self._update_legend()


def trace_figure(width_in: float, height_in: float, rows: int = 4, fontsize: float | None = None,
                 minor_ticks: bool = True, dpi: float = 100,
                 legend_loc: str = "outside upper center"):
    """A constrained-layout figure with the trace panels in ``rows`` rows (4: a column, for a
    dock; 2: a 2 x 2 grid, for a page) and its :class:`TracePlot`."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width_in, height_in), dpi=dpi, layout="constrained")
    fig.get_layout_engine().set(h_pad=0.02, w_pad=0.02, hspace=0.04, wspace=0.04)
    axes = fig.subplots(rows, len(TRACE_PANELS) // rows, squeeze=False).ravel()
    return fig, TracePlot(axes, fontsize=fontsize, minor_ticks=minor_ticks,
                          legend_columns=4 if rows < 4 else 3, legend_loc=legend_loc)


def draw_all(axes: Sequence, traces: Traces, t_mark: float | None = None) -> None:
    """Clear four axes and draw the trace panels on them (one figure legend above)."""
    TracePlot(axes).update(traces, t_mark)


def save_traces_png(path: str | Path, traces: Traces, title: str = "") -> Path:
    """Write the four trace panels (2 x 2) as a PNG (Agg backend, no display needed)."""
    fig, plot = trace_figure(9.0, 6.5, rows=2, dpi=80, legend_loc="outside lower center")
    plot.update(traces)
    if title:
        fig.suptitle(title)
    with DRAW_LOCK:
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
