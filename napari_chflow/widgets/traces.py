"""Dock widget "Traces": RMSE, interface displacement, F/V (log-log, t^-1/3 guide) and mass vs t.

Rows arrive live from "Evolve and compare" through the viewer's hub (the metrics are computed in
its compute thread), or are computed on demand from two sequence layers (picked with magicgui
layer pickers) with :func:`napari_chflow.metrics.traces` in a :class:`._common.Job`. The panels
are drawn by :class:`napari_chflow.plots.TracePlot` (the same lines as ``chflow compare``), one
quantity per axis in a constrained layout made for a narrow dock, which creates the lines once
and then only updates their data; the figure is rendered by a background thread
(:class:`._common.BackgroundFigure`) at most five times a second, so plotting never stalls the
viewer, and the final traces of a run are drawn as soon as it ends. The viewer's current time is
marked. PNG and CSV exports match the CLI's.
"""

from __future__ import annotations

import numpy as np
from magicgui.widgets import Container, PushButton
from qtpy.QtWidgets import QFileDialog, QVBoxLayout, QWidget

from napari_chflow import plots

from ._common import (
    BackgroundFigure,
    Job,
    Throttle,
    connect_while_alive,
    hub_for,
    is_sequence,
    layer_picker,
    problem_only,
    show_error,
    show_info,
)
from ._compare import COLUMNS, paired_rows

REDRAW_INTERVAL = 0.2  # s: at most five redraws per second
PLACEHOLDER = "run 'Evolve and compare'"  # shown before any data
WAITING = "waiting for the first frames ..."  # shown when a run started


def split_runs(rows: dict, ref_name: str = "solver", name: str = "crnn") -> dict[str, dict]:
    """Flat columns (:data:`COLUMNS`) -> ``{ref_name: traces, name: traces}`` as
    :func:`napari_chflow.metrics.traces` returns them (the second one with the ``ref`` keys)."""
    a = {k: np.asarray(v, dtype=np.float64) for k, v in rows.items()}
    ref = {"t": a["t"], "free_energy_density": a["free_energy_density_ref"], "mass": a["mass_ref"]}
    run = {k: a[k] for k in ("t", "free_energy_density", "mass", "rmse", "interface_displacement",
                             "free_energy_density_ref")}
    return {ref_name: ref, name: run}


def _traces_from_layers(_job, seq: np.ndarray, ref: np.ndarray, downscale: int, eps: float,
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
        self.figure, self.plot = plots.trace_figure(3.5, 6.5, rows=4, fontsize=7,
                                                    minor_ticks=False)
        self.axes = self.plot.axes
        self.view = BackgroundFigure(self.figure, self._draw)
        self.view.setMinimumHeight(420)
        self._redraw = Throttle(self.redraw, REDRAW_INTERVAL, self)
        self._message = PLACEHOLDER
        self._live = False  # a run of "Evolve and compare" is streaming rows
        self._job: Job | None = None

        self.prediction = layer_picker(self, napari_viewer, is_sequence, label="prediction",
                                       tooltip="a (T, Z, Y, X) layer, e.g. a CRNN run")
        self.reference = layer_picker(self, napari_viewer, is_sequence, label="reference",
                                      tooltip="a (T, Z, Y, X) layer, e.g. a solver run")
        compute = PushButton(text="Compute from layers")
        compute.changed.connect(lambda: self.compute_from_layers())
        png, csv = PushButton(text="Export PNG..."), PushButton(text="Export CSV...")
        png.changed.connect(lambda: self._export("PNG image (*.png)", self.export_png))
        csv.changed.connect(lambda: self._export("CSV table (*.csv)", self.export_csv))
        self.form = Container(widgets=[self.prediction, self.reference])
        buttons = Container(widgets=[png, csv], layout="horizontal", labels=False)
        buttons.margins = (0, 0, 0, 0)
        self.controls = Container(widgets=[compute, buttons], labels=False)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addWidget(self.view, 1)
        layout.addWidget(self.form.native)
        layout.addWidget(self.controls.native)

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
            self._pick(self.prediction, info["crnn_layer"])
            self._pick(self.reference, info["solver_layer"])
        self.redraw(urgent=True)  # the final rows now, without the render thread's rest

    @staticmethod
    def _pick(picker, name: str) -> None:
        picker.reset_choices()
        for layer in picker.choices:
            if layer.name == name:
                picker.value = layer

    def _on_point(self, _event=None) -> None:
        self._redraw()  # moves the time marker

    def clear(self, names: tuple[str, str] = ("solver", "crnn")) -> None:
        self.names = tuple(names)
        for values in self.rows.values():
            values.clear()
        self.redraw()

    def add_row(self, row: dict) -> None:
        """Append one frame's metrics (keys of :data:`COLUMNS`); redraws at most 5 times a
        second."""
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
            show_error("Wait for the run to finish (or press Cancel in 'Evolve and compare'): "
                       "it is streaming into these traces")
            return False
        if self._job is not None:
            show_error("Wait for the traces being computed")
            return False
        seq, ref = self.prediction.value, self.reference.value
        if seq is None or ref is None:
            show_error("Pick a prediction and a reference (T, Z, Y, X) layer: run 'Evolve and "
                       "compare' or open two zarr sequences")
            return False
        fine, coarse = ref.data.shape[1:], seq.data.shape[1:]
        f = fine[-1] // max(coarse[-1], 1)
        if f < 1 or any(a != f * b for a, b in zip(fine, coarse)):
            show_error(f"Pick a prediction on the reference's grid (or a CRNN run of it): "
                       f"{coarse} does not match {fine}")
            return False
        names, eps = (ref.name, seq.name), float(ref.metadata.get("chflow", {}).get("eps", 3.0))
        self._job = Job(self, _traces_from_layers, np.asarray(seq.data), np.asarray(ref.data), f,
                        eps, float(ref.scale[0]), on_done=lambda rows, error: self._computed(
                            rows, error, names), name="napari-chflow traces").start()
        return True

    def _computed(self, rows, error, names) -> None:
        self._job = None
        if error is not None:
            show_error(f"Pick two runs of the same seed: the traces failed "
                       f"({problem_only(error)})", error)
            return
        self.set_rows(rows, names)

    # ------------------------------------------------------------------ plots
    def current_time(self) -> float | None:
        """The viewer's time ``t`` (its first world axis when 4D), or None for 3D views."""
        point = self.viewer.dims.point
        return float(point[0]) if len(point) == 4 else None

    def redraw(self, urgent: bool = False) -> None:
        """Queue a redraw of the current rows and time marker (drawn in the background);
        ``urgent``: without the render thread's rest."""
        if len(self.rows["t"]) > 1:
            self.view.request((self.traces(), self.current_time()), urgent)
        else:
            self.view.request(self._message, urgent)

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
        """The four panels as a PNG (same drawing as ``chflow compare``)."""
        plots.save_traces_png(path, self.traces())

    def export_csv(self, path) -> None:
        """One row per frame, one column per (run, metric), as ``chflow compare`` writes."""
        plots.save_traces_csv(path, self.traces())
