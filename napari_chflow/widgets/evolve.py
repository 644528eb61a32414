"""Dock widget "Evolve and compare": physics solver and CRNN side by side, streamed into layers.

Run checks the inputs, loads the CRNN and creates the ``solver``/``CRNN`` layers (iso rendering,
scale, side-by-side translate, 3D view) on full-length ``(T, Z, Y, X)`` buffers holding the seed
as frame 0 (frames not computed yet are 0, so nothing is drawn for them) before the worker
starts. Both evolutions and the metrics then run in a napari ``thread_worker``
(:func:`napari_chflow.widgets._compare.compare_frames`); per frame the GUI thread only copies
the frame into the buffers and moves the time slider along, so the viewer stays responsive.
When the run ends early (Cancel, divergence) the layers keep the frames computed so far.
"""

from __future__ import annotations

import threading

import numpy as np
from napari.qt.threading import thread_worker
from qtpy.QtWidgets import (
    QCheckBox,
    QFileDialog,
    QFormLayout,
    QHBoxLayout,
    QLabel,
    QProgressBar,
    QPushButton,
    QVBoxLayout,
    QWidget,
)

from ._common import (
    DEVICES,
    ISO,
    LayerCombo,
    Throttle,
    check_device,
    combo,
    hub_for,
    show_error,
    spin,
    volume_data,
)
from ._compare import DEFAULT_MODEL, compare_frames, load_model

GAP = 0.3  # gap between the side-by-side volumes, as a fraction of the box width
MAX_BUFFER_BYTES = 16 * 2**30  # frames are kept in memory: refuse runs that cannot fit
IN_FLIGHT = 3  # frames the worker may compute ahead of the GUI
FOLLOW_INTERVAL = 0.1  # s: the viewer moves to the newest frame at most ten times a second


@thread_worker(ignore_errors=True)
def _compare_worker(phi0, n_tau, solver, model, device, window: threading.Semaphore,
                    stop: threading.Event):
    """Yield :class:`ComparedFrame` objects; return ``None`` or the message of a known failure.

    ``window`` bounds the frames yielded but not yet shown (the GUI releases one per frame), so a
    fast solver cannot flood the GUI thread; ``stop`` ends the run while waiting on it.
    """
    from napari_chflow.model import RolloutDiverged
    from napari_chflow.physics import SimulationDiverged

    try:
        for frame in compare_frames(phi0, n_tau, solver, model, device):
            while not window.acquire(timeout=0.05):
                if stop.is_set():
                    return None
            yield frame
    except (SimulationDiverged, RolloutDiverged) as exc:
        return f"{exc}. The frames computed before are kept"
    except ValueError as exc:  # includes CheckpointError: bad checkpoint, grid, input
        return str(exc)
    return None


class EvolveWidget(QWidget):
    """Run the solver and the CRNN from a seed layer; streams ``solver``/``CRNN`` layers."""

    def __init__(self, napari_viewer, parent=None) -> None:
        super().__init__(parent)
        self.viewer, self.hub = napari_viewer, hub_for(napari_viewer)
        self.worker = None
        self.layers: dict = {}
        self.buffers: dict[str, np.ndarray] = {}
        self.n_frames = 0
        self.status = ""
        self._followed = 0  # the time step the viewer was last moved to
        self._follow = Throttle(self._show_latest, FOLLOW_INTERVAL, self)
        self._stop = threading.Event()
        self.destroyed.connect(lambda *_: self._stop.set())  # closing napari ends a running worker

        self.seed_combo = LayerCombo(napari_viewer)
        from napari_chflow.physics import SOLVERS

        self.solver_combo = combo(SOLVERS, "spectral")
        self.model_combo = combo([DEFAULT_MODEL])
        browse = QPushButton("Checkpoint...")
        browse.clicked.connect(self._browse_checkpoint)
        model_row = QHBoxLayout()
        model_row.addWidget(self.model_combo, 1)
        model_row.addWidget(browse)
        self.device_combo = combo(DEVICES, "cpu")
        self.n_tau = spin(20, 1, 1_000_000)
        self.layout_combo = combo(("side by side", "grid"))
        self.layout_combo.currentTextChanged.connect(lambda _t: self.apply_layout())
        self.diff_check = QCheckBox("difference layer |CRNN - solver|")
        self.diff_check.toggled.connect(self._toggle_difference)
        self.run_button, self.cancel_button = QPushButton("Run"), QPushButton("Cancel")
        self.run_button.clicked.connect(self.run)
        self.cancel_button.clicked.connect(self.cancel)
        self.cancel_button.setEnabled(False)
        self.progress = QProgressBar()
        self.status_label = QLabel("")
        self.status_label.setWordWrap(True)

        form = QFormLayout()
        form.addRow("seed layer", self.seed_combo)
        form.addRow("solver", self.solver_combo)
        form.addRow("CRNN", model_row)
        form.addRow("device", self.device_combo)
        form.addRow("n tau", self.n_tau)
        form.addRow("layout", self.layout_combo)
        buttons = QHBoxLayout()
        buttons.addWidget(self.run_button)
        buttons.addWidget(self.cancel_button)
        layout = QVBoxLayout(self)
        layout.addLayout(form)
        layout.addWidget(self.diff_check)
        layout.addLayout(buttons)
        layout.addWidget(self.progress)
        layout.addWidget(self.status_label)
        layout.addStretch(1)
        self.hub.checkpoints_changed.connect(self._refresh_models)
        self._refresh_models()

    # ------------------------------------------------------------------ models
    def _refresh_models(self) -> None:
        """List the shipped model and the hub's checkpoints; without a shipped model, a new
        checkpoint (e.g. just trained) becomes the selection."""
        from napari_chflow.model import available_pretrained

        current = self.model_combo.currentText()
        self.model_combo.clear()
        self.model_combo.addItems([DEFAULT_MODEL, *self.hub.checkpoints])
        shipped = "default" in available_pretrained()
        if current == DEFAULT_MODEL and self.hub.checkpoints and not shipped:
            current = self.hub.checkpoints[-1]
        self.model_combo.setCurrentText(current)

    def _browse_checkpoint(self) -> None:
        path, _ = QFileDialog.getOpenFileName(self, "CRNN checkpoint", "", "Checkpoints (*.pt)")
        if path:
            self.select_checkpoint(path)

    def select_checkpoint(self, path) -> None:
        """Offer ``path`` in every "Evolve and compare" widget and select it here."""
        self.hub.add_checkpoint(path)
        self.model_combo.setCurrentText(self.hub.checkpoints[-1])

    # ------------------------------------------------------------------ run
    @property
    def running(self) -> bool:
        return self.worker is not None

    def run(self) -> bool:
        """Check the inputs (notifying what to fix) and start the worker; False if refused."""
        if self.running:
            show_error("A run is already going: wait for it or press Cancel first")
            return False
        layer = self.seed_combo.layer()
        if layer is None:
            show_error("No 3D image layer selected: add a seed with 'Seed volume' (or open a "
                       "volume or a zarr sequence) and pick it as the seed layer")
            return False
        device = self.device_combo.currentText()
        problem = check_device(device)
        if problem:
            show_error(problem)
            return False
        model = self.model_combo.currentText()
        if model == DEFAULT_MODEL:
            from napari_chflow.model import available_pretrained

            if "default" not in available_pretrained():
                show_error("No shipped CRNN model is installed yet: train one in 'Train surrogate' "
                           "or choose a checkpoint file with 'Checkpoint...'")
                return False
        n_tau = self.n_tau.value()
        phi0, frame = volume_data(layer, self.viewer)
        if 3 * (n_tau + 1) * phi0.nbytes > MAX_BUFFER_BYTES:
            show_error(f"{n_tau} frames of {phi0.shape} do not fit in memory: lower n tau, or run "
                       "long evolutions with the `chflow` command line, which writes them to disk")
            return False
        from napari_chflow.model import downsample

        try:  # on the GUI thread: the layers need the model's grid and tau before the run
            crnn = load_model(model, device)
            crnn0 = downsample(phi0, crnn.info.downscale)
        except ValueError as exc:  # CheckpointError (unreadable file), grid not divisible
            show_error(str(exc))
            return False
        seed_meta = dict(layer.metadata.get("chflow", {}))
        if frame is not None:  # seeded from a frame of a sequence
            seed_meta = {"seed": {"layer": layer.name, "frame": frame,
                                  "sequence_seed": seed_meta.get("seed")}}
        self._seed = {"name": layer.name, "meta": seed_meta,
                      "solver": self.solver_combo.currentText(), "model": model, "device": device}
        self.n_frames, self.status, self._followed = 0, "running", 0
        self._allocate(phi0, crnn0, n_tau + 1, crnn.info.downscale)
        self._create_layers(crnn.info.tau, crnn.info.downscale)
        self.progress.setRange(0, n_tau + 1)
        self.progress.setValue(0)
        self.status_label.setText(f"starting {n_tau} tau ...")
        self.run_button.setEnabled(False)
        self.cancel_button.setEnabled(True)
        self._window = threading.Semaphore(IN_FLIGHT)
        self._stop.clear()
        self.worker = _compare_worker(phi0, n_tau, self._seed["solver"], crnn, device,
                                      self._window, self._stop)
        self.worker.yielded.connect(self._on_frame)
        self.worker.returned.connect(self._on_returned)
        self.worker.errored.connect(lambda exc: setattr(self, "status", "failed"))
        self.worker.finished.connect(self._on_finished)
        self.hub.run_started.emit({"n_tau": n_tau, "seed": layer.name,
                                   "solver": self._seed["solver"]})
        self.worker.start()
        return True

    def cancel(self) -> None:
        """Stop after the frame being computed; the frames so far stay in the layers."""
        if self.worker is not None:
            self.status_label.setText("cancelling after the current frame ...")
            self._stop.set()
            self.worker.quit()

    def _on_returned(self, message) -> None:
        self.status = "done" if message is None else "failed"
        if message:
            show_error(f"{message} ({self.n_frames} frames kept)" if self.n_frames else message)

    def _on_finished(self) -> None:
        if self.status == "running":  # neither returned nor errored: the run was cancelled
            self.status = "cancelled"
        self.worker = None
        self._follow.flush()
        self._trim_layers()
        self.run_button.setEnabled(True)
        self.cancel_button.setEnabled(False)
        self.status_label.setText(f"{self.status}: {self.n_frames} frames")
        names = {f"{key}_layer": layer.name for key, layer in self.layers.items()}
        self.hub.run_finished.emit({"frames": self.n_frames, "status": self.status, **names})

    # ------------------------------------------------------------------ layers
    def _allocate(self, phi0: np.ndarray, crnn0: np.ndarray, n: int, downscale: int) -> None:
        """Buffers ``(n, ...)`` for the solver, the CRNN (model grid) and the difference; frame 0
        is the seed. ``np.zeros`` maps memory lazily: only computed frames take RAM."""
        from napari_chflow.model import upsample

        first = {"solver": phi0, "crnn": crnn0, "diff": np.abs(upsample(crnn0, downscale) - phi0)}
        self.buffers = {}
        for key, volume in first.items():
            self.buffers[key] = np.zeros((n, *volume.shape), np.float32)
            self.buffers[key][0] = volume

    def _shown(self, key: str) -> np.ndarray:
        """What a layer shows: the whole buffer while running, else the computed frames."""
        buffer = self.buffers[key]
        return buffer if self.status == "running" else buffer[: max(self.n_frames, 1)]

    def _on_frame(self, frame) -> None:
        """GUI thread: copy one frame into the buffers (the layers show them); the viewer follows
        the newest frame (throttled: one re-slice per :data:`FOLLOW_INTERVAL` however fast)."""
        k = frame.index
        for key, buffer in self.buffers.items():
            buffer[k] = getattr(frame, key)
        self.n_frames = k + 1
        if k > 0:
            self._follow()
        self.progress.setValue(k + 1)
        self.status_label.setText(f"t = {frame.t:g} ({k} of {self.progress.maximum() - 1} tau)")
        self.hub.frame_ready.emit(frame.metrics)
        self._window.release()

    def _show_latest(self) -> None:
        """Move the time slider to the newest frame unless the user went back to an earlier one."""
        k = self.n_frames - 1
        step = self.viewer.dims.current_step[0]
        if k <= 0 or step < self._followed or not self.layers:
            return
        if step == k:  # already there (the user stepped ahead): show the new data
            for layer in self.layers.values():
                layer.refresh()
        else:
            self.viewer.dims.set_current_step(0, k)  # re-slices every layer once
        self._followed = k

    def _trim_layers(self) -> None:
        """After the run: layers keep exactly the computed frames (none: they are removed)."""
        if self.n_frames == 0:
            for layer in self.layers.values():
                if layer in self.viewer.layers:
                    self.viewer.layers.remove(layer)
            self.layers = {}
            return
        for key, layer in self.layers.items():
            if layer.data.shape[0] != self.n_frames:
                layer.data = self._shown(key)

    def _create_layers(self, tau: float, f: int) -> None:
        """Solver and CRNN layers on the full buffers, iso surfaces side by side, in 3D."""
        s = self._seed
        meta = {"tau": tau, "solver": s["solver"], "model": s["model"], "device": s["device"],
                "seed": s["meta"].get("seed", {"layer": s["name"]})}
        common = dict(contrast_limits=(0.0, 1.0), axis_labels=("t", "z", "y", "x"), **ISO)
        self.layers = {}
        self.layers["solver"] = self.viewer.add_image(
            self.buffers["solver"], name=f"{s['name']} solver ({s['solver']})",
            scale=(tau, 1, 1, 1), colormap="bop blue",
            metadata={"chflow": {**meta, "downscale": 1}}, **common)
        self.layers["crnn"] = self.viewer.add_image(
            self.buffers["crnn"], name=f"{s['name']} CRNN", scale=(tau, f, f, f),
            colormap="bop orange", metadata={"chflow": {**meta, "downscale": f}}, **common)
        if self.diff_check.isChecked():
            self._add_difference_layer()
        self.viewer.dims.ndisplay = 3
        self.viewer.dims.set_current_step(0, 0)
        self.apply_layout()
        self.viewer.reset_view()

    def _add_difference_layer(self) -> None:
        tau = self.layers["solver"].scale[0]
        self.layers["diff"] = self.viewer.add_image(
            self._shown("diff"), name="|CRNN - solver|",
            scale=(tau, 1, 1, 1), colormap="inferno", rendering="mip", contrast_limits=(0.0, 1.0),
            blending="additive", axis_labels=("t", "z", "y", "x"),
            metadata={"chflow": {"tau": tau, "difference": True}})
        self.apply_layout()

    def _toggle_difference(self, on: bool) -> None:
        layer = self.layers.get("diff")
        if on and layer is None and "solver" in self.layers:
            self._add_difference_layer()
        elif layer is not None:
            layer.visible = on

    def apply_layout(self) -> None:
        """Side by side: the CRNN (and difference) volumes shifted along x; grid: napari's grid."""
        grid = self.layout_combo.currentText() == "grid"
        self.viewer.canvas.grid.enabled = grid
        if "solver" not in self.layers:
            return
        width = self.layers["solver"].data.shape[-1]
        for slot, key in enumerate(("solver", "crnn", "diff")):
            if key in self.layers:
                self.layers[key].translate = (0, 0, 0, 0 if grid else slot * width * (1 + GAP))
