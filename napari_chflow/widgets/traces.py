"""Dock widget "Traces": RMSE and interface displacement, F/V (log-log, t^-1/3 guide) and mass vs t.

Rows arrive live from "Evolve and compare" through the viewer's hub (the metrics are computed in
its worker thread), or are computed on demand from two sequence layers with
:func:`napari_chflow.metrics.traces` in a worker. The panels are drawn by
:class:`napari_chflow.plots.TracePlot` (the same figures as ``chflow compare``), which creates
the lines once and then only updates their data; the figure is rendered by a background thread
(:class:`._common.BackgroundFigure`) at most five times a second, so plotting never stalls the
viewer. The viewer's current time is marked. PNG and CSV exports match the CLI's.
"""

from __future__ import annotations

import numpy as np
from matplotlib.figure import Figure
from napari.qt.threading import thread_worker
from qtpy.QtWidgets import QFileDialog, QFormLayout, QHBoxLayout, QPushButton, QVBoxLayout, QWidget

from napari_chflow import plots

from ._common import (
    BackgroundFigure,
    LayerCombo,
    Throttle,
    connect_while_alive,
    hub_for,
    show_error,
    show_info,
)
from ._compare import COLUMNS, paired_rows

REDRAW_INTERVAL = 0.2  # s: at most five redraws per second
PLACEHOLDER = "run 'Evolve and compare'"  # shown before any data
WAITING = "waiting for the first frames ..."  # shown when a run started


def _is_sequence(layer) -> bool:
    return getattr(layer, "ndim", 0) == 4 and getattr(layer, "rgb", False) is False


def split_runs(rows: dict, ref_name: str = "solver", name: str = "crnn") -> dict[str, dict]:
    """Flat columns (:data:`COLUMNS`) -> ``{ref_name: traces, name: traces}`` as
    :func:`napari_chflow.metrics.traces` returns them (the second one with the ``ref`` keys)."""
    a = {k: np.asarray(v, dtype=np.float64) for k, v in rows.items()}
    ref = {"t": a["t"], "free_energy_density": a["free_energy_density_ref"], "mass": a["mass_ref"]}
    run = {k: a[k] for k in ("t", "free_energy_density", "mass", "rmse", "interface_displacement",
                             "free_energy_density_ref")}
    return {ref_name: ref, name: run}


@thread_worker(ignore_errors=True)
def _traces_from_layers(seq: np.ndarray, ref: np.ndarray, downscale: int, eps: float,
                        tau: float) -> dict:
    n = min(len(seq), len(ref))
    return paired_rows(ref[:n], seq[:n], downscale, eps=eps, tau=tau)


class TracesWidget(QWidget):
    """Live comparison plots of a solver run (the reference) and a CRNN rollout."""

    def __init__(self, napari_viewer, parent=None) -> None:
        super().__init__(parent)
        self.viewer = napari_viewer
        self.rows: dict[str, list[float]] = {k: [] for k in COLUMNS}
        self.names = ("solver", "crnn")
        self.figure = Figure(figsize=(3.6, 5))
        self.figure.subplots_adjust(left=0.17, right=0.97, top=0.95, bottom=0.07, hspace=0.5)
        self.axes = self.figure.subplots(3, 1)
        self.plot = plots.TracePlot(self.axes, fontsize=7, minor_ticks=False)
        self.view = BackgroundFigure(self.figure, self._draw)
        self.view.setMinimumHeight(300)
        self._redraw = Throttle(self.redraw, REDRAW_INTERVAL, self)
        self._message = PLACEHOLDER
        self._live = False  # a run of "Evolve and compare" is streaming rows
        self._worker = None

        self.seq_combo = LayerCombo(napari_viewer, _is_sequence)
        self.ref_combo = LayerCombo(napari_viewer, _is_sequence)
        compute = QPushButton("Compute from layers")
        compute.clicked.connect(self.compute_from_layers)
        png, csv = QPushButton("Export PNG..."), QPushButton("Export CSV...")
        png.clicked.connect(lambda: self._export("PNG image (*.png)", self.export_png))
        csv.clicked.connect(lambda: self._export("CSV table (*.csv)", self.export_csv))

        form = QFormLayout()
        form.addRow("prediction", self.seq_combo)
        form.addRow("reference", self.ref_combo)
        buttons = QHBoxLayout()
        for b in (compute, png, csv):
            buttons.addWidget(b)
        layout = QVBoxLayout(self)
        layout.addWidget(self.view, 1)
        layout.addLayout(form)
        layout.addLayout(buttons)

        hub = hub_for(napari_viewer)
        hub.run_started.connect(self._on_run_started)
        hub.frame_ready.connect(self.add_row)
        hub.run_finished.connect(self._on_run_finished)
        connect_while_alive(self, napari_viewer.dims.events.point, self._on_point)
        self.redraw()

    # ------------------------------------------------------------------ data
    def _on_run_started(self, info: dict) -> None:
        self._message, self._live = WAITING, True
        self.clear((info.get("solver", "solver"), "crnn"))

    def _on_run_finished(self, info: dict) -> None:
        self._message, self._live = PLACEHOLDER, False
        if "crnn_layer" in info:  # offer the run's layers for "Compute from layers"
            self.seq_combo.setCurrentText(info["crnn_layer"])
            self.ref_combo.setCurrentText(info["solver_layer"])
        self._redraw()
        self._redraw.flush()  # the final rows now

    def _on_point(self, _event=None) -> None:
        self._redraw()  # moves the time marker

    def clear(self, names: tuple[str, str] = ("solver", "crnn")) -> None:
        self.names = tuple(names)
        for values in self.rows.values():
            values.clear()
        self.redraw()

    def add_row(self, row: dict) -> None:
        """Append one frame's metrics (keys of :data:`COLUMNS`); redraws at most 5 times a second."""
        for key in COLUMNS:
            self.rows[key].append(float(row[key]))
        self._redraw()

    def set_rows(self, rows: dict, names: tuple[str, str] | None = None) -> None:
        """Replace everything with whole traces (arrays keyed like :data:`COLUMNS`)."""
        self.names, self._message = tuple(names or self.names), PLACEHOLDER
        for key in COLUMNS:
            self.rows[key] = [float(v) for v in rows[key]]
        self.redraw()

    def traces(self) -> dict[str, dict[str, np.ndarray]]:
        """``{solver: traces, crnn: traces}`` as :func:`napari_chflow.metrics.traces` gives them."""
        return split_runs(self.rows, *self.names)

    def compute_from_layers(self) -> bool:
        """Traces of the "prediction" layer against the "reference" layer, in a worker."""
        if self._live:
            show_error("A run is streaming into these traces: wait for it to finish (or Cancel "
                       "it in 'Evolve and compare'), then compute from layers")
            return False
        seq, ref = self.seq_combo.layer(), self.ref_combo.layer()
        if seq is None or ref is None:
            show_error("Traces need two (T, Z, Y, X) layers: run 'Evolve and compare' or open two "
                       "zarr sequences, then pick the prediction and the reference")
            return False
        fine, coarse = ref.data.shape[1:], seq.data.shape[1:]
        f = fine[-1] // max(coarse[-1], 1)
        if f < 1 or any(a != f * b for a, b in zip(fine, coarse)):
            show_error(f"grids do not match: prediction {coarse} vs reference {fine}; pick a "
                       "prediction on the reference grid or on its x1/d grid (a CRNN sequence)")
            return False
        names, eps = (ref.name, seq.name), float(ref.metadata.get("chflow", {}).get("eps", 3.0))
        self._worker = _traces_from_layers(np.asarray(seq.data), np.asarray(ref.data), f, eps,
                                           float(ref.scale[0]))
        self._worker.returned.connect(lambda rows: self.set_rows(rows, names))
        self._worker.finished.connect(lambda: setattr(self, "_worker", None))
        self._worker.start()
        return True

    # ------------------------------------------------------------------ plots
    def current_time(self) -> float | None:
        """The viewer's time ``t`` (its first world axis when 4D), or None for 3D views."""
        point = self.viewer.dims.point
        return float(point[0]) if len(point) == 4 else None

    def redraw(self) -> None:
        """Queue a redraw of the current rows and time marker (drawn in the background)."""
        if len(self.rows["t"]) > 1:
            self.view.request((self.traces(), self.current_time()))
        else:
            self.view.request(self._message)

    def _draw(self, job) -> None:
        """Render thread: update the lines of :attr:`plot` (the figure belongs to that thread);
        ``job`` is ``(traces, t_mark)`` or a message to show instead."""
        if isinstance(job, str):
            self.plot.show_message(job)
        else:
            runs, t_mark = job
            self.plot.update(runs, t_mark)

    # ------------------------------------------------------------------ export
    def _export(self, filter: str, save) -> None:
        path, _ = QFileDialog.getSaveFileName(self, "Export traces", "", filter)
        if path:
            save(path)
            show_info(f"traces saved to {path}")

    def export_png(self, path) -> None:
        """The three panels as a PNG (same drawing as ``chflow compare``)."""
        plots.save_traces_png(path, self.traces())

    def export_csv(self, path) -> None:
        """One row per frame, one column per (run, metric), as ``chflow compare`` writes."""
        plots.save_traces_csv(path, self.traces())
