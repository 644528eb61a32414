"""Dock widget "Evolve and compare": physics solver and CRNN side by side, streamed into layers.

Run checks the seed on the GUI thread (cheap: finite, within [0, 1]) and starts a
:class:`._common.Job`; the job loads the CRNN, checks the grid, allocates the frame buffers
(:func:`._compare.prepare_run`) and only then asks the GUI to create the ``solver``/``CRNN``
layers on them, so a refused run creates nothing. The job writes every frame into the buffers
(:func:`._compare.fill_buffers`); the GUI thread, woken at most once per pending update, passes
the metrics to "Traces" and, throttled, moves the time slider and the progress bar (without
forcing a repaint, so napari's 3D render never runs inside the plugin's callbacks). Cancel keeps
the frames so far; closing napari does not wait for the run. "Export movie" records the run as
shown (:mod:`._movie`).
"""

from __future__ import annotations

import threading

import numpy as np
from magicgui.widgets import (
    CheckBox,
    ComboBox,
    Container,
    FileEdit,
    Label,
    ProgressBar,
    PushButton,
    SpinBox,
)
from qtpy.QtCore import QSettings
from qtpy.QtWidgets import QFileDialog, QVBoxLayout, QWidget

from ._common import (
    DEVICES,
    ISO,
    Job,
    Throttle,
    check_device,
    check_phi,
    hub_for,
    layer_picker,
    plural,
    problem_only,
    set_progress,
    show_error,
    show_info,
    volume_data,
)
from ._compare import (
    RunState,
    SeedGridError,
    fill_buffers,
    is_shipped,
    prepare_run,
    shipped_choices,
)

GAP = 0.3  # gap between volumes placed side by side, as a fraction of the box size
MAX_BUFFER_BYTES = 16 * 2**30  # frames are kept in memory: refuse runs that cannot fit
FOLLOW_INTERVAL = 0.2  # s: slider, progress bar and label follow the run at most 5 times a second
TILT = (0.0, 20.0, -15.0)  # camera angles (degrees) after a fit: the volumes read as 3D
PLACEMENTS = ("replace the last run", "beside the earlier runs")
LAYOUTS = ("side by side", "grid")
MOVIE_FILTER = "Movie (*.gif *.mp4)"


def settings() -> QSettings:
    """Where the widget remembers the user's choices between sessions."""
    return QSettings("napari-chflow", "napari-chflow")


def _evolve_job(job: Job, phi0, n_tau, solver, model, device, state: RunState,
                shown: threading.Event):
    """The compute thread: prepare (model, grid check, buffers), hand the buffers to the GUI,
    wait until it shows them (``shown``: no competition for the GIL while napari makes the
    layers), then fill them. Returns ``"done"`` or ``"cancelled"``; errors go to ``on_done``."""
    prepared = prepare_run(phi0, n_tau, model, device)
    import scipy.spatial.transform  # noqa: F401 - napari's 3D camera imports it lazily: not on the GUI
    if job.stopped.is_set():
        return "cancelled"
    job.post(prepared)
    while not shown.wait(0.05):
        if job.stopped.is_set():
            return "cancelled"
    done = fill_buffers(prepared, phi0, n_tau, solver, device, state, job.stopped.is_set,
                        job.notify)
    return "done" if done else "cancelled"


def _failure_message(exc: BaseException, solver: str, frames: int) -> str:
    """A library exception as a GUI message: the fix first, short, no command-line terms."""
    from napari_chflow.model import CheckpointError, RolloutDiverged
    from napari_chflow.physics import SimulationDiverged

    kept = f" ({plural(frames, 'frame')} kept)" if frames else ""
    if isinstance(exc, CheckpointError):
        return ("Choose another CRNN (or add a checkpoint file, or train one in 'Train "
                "surrogate'): this one cannot be loaded")
    if isinstance(exc, SeedGridError):
        shape = " x ".join(map(str, exc.shape))
        return (f"Pick a seed layer whose size is a multiple of {exc.factor} (the CRNN's grid "
                f"factor): this one is {shape}")
    if isinstance(exc, SimulationDiverged):
        other = "spectral" if solver == "explicit" else "explicit"
        return f"Try the {other} solver or another seed: the {solver} solver diverged{kept}"
    if isinstance(exc, RolloutDiverged):
        return f"Choose another CRNN: this one diverged (phi became NaN){kept}"
    if isinstance(exc, MemoryError):
        return f"Lower 'n tau' or use a smaller seed: out of memory{kept}"
    return f"Check the seed and the CRNN: the run failed ({problem_only(exc)}){kept}"


class EvolveWidget(QWidget):
    """Run the solver and the CRNN from a seed layer; streams ``solver``/``CRNN`` layers."""

    def __init__(self, napari_viewer, parent=None) -> None:
        super().__init__(parent)
        from napari_chflow.physics import SOLVERS

        self.viewer, self.hub = napari_viewer, hub_for(napari_viewer)
        self.job: Job | None = None
        self.layers: dict = {}  # the current (last) run's layers: solver, crnn, diff
        # every run shown: {"layers": {...}, "row": int, "size": (Y, X), "origin": float}
        self.runs: list[dict] = []
        self.buffers: dict[str, np.ndarray] = {}
        self.state = RunState()
        self.n_frames = 0
        self.status = ""
        self.movie = None  # a running _movie.MovieExport
        self._seed: dict = {}  # what the last run was started with
        self._specs: dict = {}  # name, scale, colormap, metadata of the last run's layers
        self._rows_sent = 0
        self._followed = 0  # the time step the viewer was last moved to
        self._follow = Throttle(self._refresh_view, FOLLOW_INTERVAL, self)

        remembered = settings().value("evolve/new_run", PLACEMENTS[0])
        self.seed = layer_picker(self, napari_viewer, label="seed layer")
        self.solver = ComboBox(choices=SOLVERS, value="spectral", label="solver")
        self.model = ComboBox(choices=self._model_choices, label="CRNN")
        self.checkpoint = FileEdit(mode="r", filter="CRNN checkpoints (*.pt)", nullable=True,
                                   label="add checkpoint",
                                   tooltip="a best.pt or last.pt written by 'Train surrogate'")
        self.checkpoint.changed.connect(self._on_checkpoint_chosen)
        self.device = ComboBox(choices=DEVICES, value="cpu", label="device")
        self.n_tau = SpinBox(value=20, min=1, max=1_000_000, label="n tau",
                             tooltip="frames to compute, tau = 0.5 model time apart")
        self.placement = ComboBox(choices=PLACEMENTS, label="new run",
                                  value=remembered if remembered in PLACEMENTS else PLACEMENTS[0])
        self.placement.changed.connect(
            lambda value: settings().setValue("evolve/new_run", value))
        self.layout_choice = ComboBox(choices=LAYOUTS, label="layout")
        self.layout_choice.changed.connect(lambda _v: self.apply_layout(fit=True))
        self.difference = CheckBox(text="difference layer |CRNN - solver|", label="")
        self.difference.changed.connect(self._toggle_difference)
        self.form = Container(widgets=[self.seed, self.solver, self.model, self.checkpoint,
                                       self.device, self.n_tau, self.placement,
                                       self.layout_choice, self.difference])
        self.run_button = PushButton(text="Run")
        self.cancel_button = PushButton(text="Cancel", enabled=False)
        self.movie_button = PushButton(text="Export movie...", enabled=False,
                                       tooltip="the run as shown, solver and CRNN side by side, "
                                       "as .gif or .mp4")
        self.run_button.changed.connect(lambda: self.run())
        self.cancel_button.changed.connect(self.cancel)
        self.movie_button.changed.connect(self._choose_movie_file)
        self.progress = ProgressBar(value=0, min=0, max=1, label="")
        self.status_label = Label(value="")
        self.status_label.native.setWordWrap(True)
        buttons = Container(widgets=[self.run_button, self.cancel_button], layout="horizontal",
                            labels=False)
        buttons.margins = (0, 0, 0, 0)
        self.controls = Container(widgets=[buttons, self.movie_button, self.progress,
                                           self.status_label], labels=False)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addWidget(self.form.native)
        layout.addWidget(self.controls.native)
        layout.addStretch(1)
        self.hub.checkpoints_changed.connect(self.model.reset_choices)

    # ------------------------------------------------------------------ models
    def _model_choices(self, _widget=None) -> list[str]:
        return [*shipped_choices(), *self.hub.checkpoints]

    def _on_checkpoint_chosen(self, path) -> None:
        if path is not None and str(path).strip() and path.is_file():
            self.select_checkpoint(path)

    def select_checkpoint(self, path) -> None:
        """Offer ``path`` in every "Evolve and compare" widget and select it here."""
        self.model.value = self.hub.add_checkpoint(path)

    # ------------------------------------------------------------------ run
    @property
    def running(self) -> bool:
        return self.job is not None

    def _refuse(self, message: str, details=None) -> bool:
        show_error(message, details)
        self.status_label.value = f"not started: {message}"
        return False

    def run(self) -> bool:
        """Check the inputs (notifying what to fix) and start the job; False if refused."""
        if self.running or self.movie is not None:
            return self._refuse("Wait for the run (or movie) to finish, or press Cancel")
        layer = self.seed.value
        if layer is None:
            return self._refuse("Add a seed with 'Seed volume' (or open a volume), then pick it "
                                "as the seed layer")
        device = self.device.value
        problem = check_device(device)
        if problem:
            return self._refuse(problem)
        model = self.model.value
        if model is None:
            return self._refuse("Add a checkpoint file (or train a CRNN in 'Train surrogate'): "
                                "no CRNN is installed")
        n_tau = int(self.n_tau.value)
        if 3 * (n_tau + 1) * np.prod(layer.data.shape[-3:]) * 4 > MAX_BUFFER_BYTES:
            return self._refuse(f"Lower 'n tau': {n_tau} frames of {layer.data.shape[-3:]} do "
                                "not fit in memory")
        phi0, frame = volume_data(layer, self.viewer)
        problem = check_phi(phi0, layer.name)
        if problem:
            return self._refuse(problem)
        seed_meta = dict(layer.metadata.get("chflow", {}))
        if frame is not None:  # seeded from a frame of a sequence
            seed_meta = {"seed": {"layer": layer.name, "frame": frame,
                                  "sequence_seed": seed_meta.get("seed")}}
        self._seed = {"layer": layer, "name": layer.name, "meta": seed_meta,
                      "solver": self.solver.value, "model": model, "device": device,
                      "n_tau": n_tau}
        self.status = "starting"  # the last run's layers and frames stay until the new ones
        self.state = RunState()
        set_progress(self.progress, 0, n_tau + 1)
        self.status_label.value = "loading the CRNN ..."
        self.run_button.enabled, self.cancel_button.enabled = False, True
        self.movie_button.enabled = False
        self._shown_event = threading.Event()
        self.job = Job(self, _evolve_job, phi0, n_tau, self._seed["solver"], model, device,
                       self.state, self._shown_event, on_event=self._on_ready,
                       on_change=self._on_change,
                       on_done=self._on_done, name="napari-chflow evolve").start()
        return True

    def cancel(self) -> None:
        """Stop after the frame being computed (the frames so far stay), or stop the movie."""
        if self.movie is not None:
            self.movie.cancel()
        elif self.job is not None:
            self.status_label.value = "cancelling after the current frame ..."
            self.job.stop()

    # ------------------------------------------------------------------ job events (GUI thread)
    def _on_ready(self, prepared) -> None:
        """The CRNN is loaded and the buffers exist: make the layers and show them."""
        self.buffers = prepared.buffers
        self.status, self.n_frames, self._followed, self._rows_sent = "running", 0, 0, 0
        self._create_layers(prepared.tau, prepared.downscale, prepared.coarse)
        self.status_label.value = f"computing {plural(self._seed['n_tau'], 'tau')} ..."
        self.hub.run_started.emit({"n_tau": self._seed["n_tau"], "seed": self._seed["name"],
                                   "solver": self._seed["solver"]})
        self._shown_event.set()  # the job may compute frames now
        self._on_change()

    def _on_change(self) -> None:
        """New frames are complete: pass their metrics on; slider and progress follow
        (throttled)."""
        if self.status != "running":
            return
        n, rows = self.state.snapshot(self._rows_sent)
        self.n_frames = n
        self._rows_sent += len(rows)
        for row in rows:
            self.hub.frame_ready.emit(row)
        self._follow()

    def _refresh_view(self) -> None:
        """Progress bar, label and time slider at the newest frame (unless the user went back)."""
        k, total = self.n_frames - 1, self._seed["n_tau"]
        set_progress(self.progress, self.n_frames)
        if self.status == "running" and k >= 0:
            t = k * float(self.layers["solver"].scale[0]) if self.layers else 0.0
            self.status_label.value = f"t = {t:g} ({k} of {total} tau)"
        if k <= 0 or not self.layers or "solver" not in self.layers:
            return
        step = self.viewer.dims.current_step[0]
        if step < self._followed:
            return  # the user went back in time: stay there
        if step == k:  # already there (the user stepped ahead): show the new data
            for layer in self.layers.values():
                layer.refresh()
        else:
            self.viewer.dims.set_current_step(0, k)  # re-slices every layer once
        self._followed = k

    def _on_done(self, result, error) -> None:
        self.job = None
        started = self.status != "starting"
        if not started:  # refused before any layer was made
            self.status = "refused"
            self.run_button.enabled, self.cancel_button.enabled = True, False
            self.movie_button.enabled = self.n_frames > 1
            if error is not None:
                self._refuse(_failure_message(error, self._seed["solver"], 0), error)
                if isinstance(error, _checkpoint_error()) and not is_shipped(self._seed["model"]):
                    self.hub.remove_checkpoint(self._seed["model"])  # not selectable any more
            else:
                self.status_label.value = "cancelled"
            return
        self._on_change()
        n_frames, _ = self.state.snapshot()
        self.n_frames = n_frames
        if error is not None:
            self.status = "failed"
            show_error(_failure_message(error, self._seed["solver"], n_frames), error)
        else:
            self.status = result
        self._follow.flush()
        self._refresh_view()
        self._trim_layers()
        self.run_button.enabled, self.cancel_button.enabled = True, False
        self.movie_button.enabled = self.n_frames > 1
        self.status_label.value = f"{self.status}: {plural(self.n_frames, 'frame')}"
        names = {f"{key}_layer": layer.name for key, layer in self.layers.items()}
        self.hub.run_finished.emit({"frames": self.n_frames, "status": self.status, **names})

    # ------------------------------------------------------------------ layers
    def _shown(self, key: str) -> np.ndarray:
        """What a layer shows: the whole buffer while running, else the computed frames."""
        buffer = self.buffers[key]
        return buffer if self.status == "running" else buffer[: max(self.n_frames, 1)]

    def _trim_layers(self) -> None:
        """After the run: layers keep exactly the computed frames (none: they are removed)."""
        if self.n_frames == 0:
            self._remove_run(self.layers)
            self.layers = {}
            return
        for key, layer in self.layers.items():
            if layer.data.shape[0] != self.n_frames:
                layer.data = self._shown(key)

    def _remove_run(self, layers: dict) -> None:
        for layer in layers.values():
            if layer in self.viewer.layers and layer is not self._seed.get("layer"):
                self.viewer.layers.remove(layer)
        self.runs = [run for run in self.runs if run["layers"] is not layers]

    def _live_runs(self) -> list[dict]:
        """Runs of this widget with at least one layer still in the viewer."""
        self.runs = [run for run in self.runs
                     if any(layer in self.viewer.layers for layer in run["layers"].values())]
        return self.runs

    def _create_layers(self, tau: float, f: int, coarse: str = "nearest") -> None:
        """Solver and CRNN layers on the buffers, iso surfaces side by side, in 3D; the seed is
        hidden; the previous run replaced (its layers reused: cheaper than new ones) or kept
        beside (the "new run" choice); camera fitted."""
        from napari_chflow.model import model_grid_origin  # loaded with the model by now

        s = self._seed
        runs = self._live_runs()
        reuse = {}
        if self.placement.value == PLACEMENTS[0] and runs:
            last = runs.pop()
            row = last["row"]
            reuse = {k: layer for k, layer in last["layers"].items()
                     if layer in self.viewer.layers and layer is not s["layer"]}
            self._remove_run({k: v for k, v in last["layers"].items() if k not in reuse})
        else:
            row = max((run["row"] for run in runs), default=-1) + 1
        if s["layer"] in self.viewer.layers:
            s["layer"].visible = False
        if self.viewer.dims.ndisplay != 3:  # before the layers: they are made in 3D at once
            self.viewer.dims.ndisplay = 3
        self._specs = self._layer_specs(tau, f, coarse)
        specs = dict(self._specs)
        if not (self.difference.value or "diff" in reuse):
            del specs["diff"]  # made when the box is ticked
        self.layers = {}
        run = {"layers": self.layers, "row": row, "size": self.buffers["solver"].shape[-2:],
               "origin": model_grid_origin(f, coarse)}
        for key, spec in specs.items():
            layer = reuse.pop(key, None)
            if layer is None:  # made where it belongs (apply_layout moves the reused ones)
                layer = self.viewer.add_image(self.buffers[key], **spec, **self._style(key),
                                              translate=self._position(run, key))
            else:  # each change re-slices the layer: change only what differs
                layer.data = self.buffers[key]
                layer.name, layer.metadata = spec["name"], spec["metadata"]
                if not np.array_equal(layer.scale, spec["scale"]):
                    layer.scale = spec["scale"]
                visible = key != "diff" or bool(self.difference.value)
                if layer.visible != visible:
                    layer.visible = visible
            self.layers[key] = layer
        self._remove_run(reuse)  # reused run's layers that this run does not have
        self.runs.append(run)
        self.viewer.dims.set_current_step(0, 0)
        self.apply_layout(fit=True)

    def _layer_specs(self, tau: float, f: int, coarse: str = "nearest") -> dict[str, dict]:
        """Name, scale, colormap and metadata of the solver, CRNN and difference layers."""
        s = self._seed
        meta = {"tau": tau, "solver": s["solver"], "model": s["model"], "device": s["device"],
                "seed": s["meta"].get("seed", {"layer": s["name"]})}
        return {
            "solver": {"name": f"{s['name']} solver ({s['solver']})", "scale": (tau, 1, 1, 1),
                       "colormap": "bop blue", "metadata": {"chflow": {**meta, "downscale": 1}}},
            "crnn": {"name": f"{s['name']} CRNN", "scale": (tau, f, f, f),
                     "colormap": "bop orange",
                     "metadata": {"chflow": {**meta, "downscale": f, "coarse": coarse}}},
            "diff": {"name": f"{s['name']} |CRNN - solver|", "scale": (tau, 1, 1, 1),
                     "colormap": "inferno",
                     "metadata": {"chflow": {"tau": tau, "difference": True}}}}

    @staticmethod
    def _style(key: str) -> dict:
        """How a new layer is rendered: phi >= 0.5 surfaces; the difference as a glow (MIP)."""
        style = {"contrast_limits": (0.0, 1.0), "axis_labels": ("t", "z", "y", "x")}
        if key == "diff":
            return {**style, "rendering": "mip", "blending": "additive"}
        return {**style, **ISO}

    def _add_difference_layer(self) -> None:
        self.layers["diff"] = self.viewer.add_image(self._shown("diff"), **self._specs["diff"],
                                                    **self._style("diff"))
        self.apply_layout(fit=True)

    def _toggle_difference(self, on: bool) -> None:
        layer = self.layers.get("diff")
        if on and layer is None and "solver" in self.layers and self.buffers:
            self._add_difference_layer()
        elif layer is not None:
            layer.visible = on
            if on:
                self.fit_camera()

    def apply_layout(self, fit: bool = True) -> None:
        """Side by side or napari's grid (see ``_position``), then the camera is fitted."""
        self.viewer.canvas.grid.enabled = self.layout_choice.value == "grid"
        for run in self._live_runs():
            for key, layer in run["layers"].items():
                where = self._position(run, key)
                if not np.array_equal(layer.translate, where):  # a change re-slices the layer
                    layer.translate = where
        if fit:
            self.fit_camera()

    def _position(self, run: dict, key: str) -> tuple[float, float, float, float]:
        """Offset (t, z, y, x) in grid units of a run's layer: side by side, the solver, CRNN and
        difference in a row along x, runs in rows along y; grid: none (napari's grid places
        one layer per cell). The CRNN's adds where its grid's voxel 0 sits on the seed's
        (``model_grid_origin``: half a grid unit for block means, at downscale 2)."""
        o = run["origin"] if key == "crnn" else 0.0
        if self.layout_choice.value == "grid":
            return (0.0, o, o, o)
        (height, width), slot = run["size"], ("solver", "crnn", "diff").index(key)
        return (0.0, o, o + run["row"] * height * (1 + GAP), o + slot * width * (1 + GAP))

    def fit_camera(self) -> None:
        """Fit the visible layers into the canvas, seen from a slight tilt (3D view)."""
        visible = [layer for layer in self.viewer.layers if layer.visible]
        if not visible:
            return
        if self.viewer.dims.ndisplay == 3:
            self.viewer.scene.camera.angles = TILT  # first: the fit accounts for the tilt
        self.viewer.reset_view(layers=visible, margin=0.1, reset_camera_angle=False)

    # ------------------------------------------------------------------ movie
    def _choose_movie_file(self) -> None:
        path, _ = QFileDialog.getSaveFileName(self, "Export movie", "evolution.gif", MOVIE_FILTER)
        if path:
            self.export_movie(path)

    def export_movie(self, path, fps: float = 8.0, width: int = 640) -> bool:
        """Record the last run as shown (every frame, ``t`` in the corner) into ``path`` (.gif or
        .mp4) in the background; progress bar and Cancel work as for a run. False if refused."""
        from ._movie import MovieExport, check_movie_path

        if self.running or self.movie is not None:
            return self._refuse("Wait for the run (or movie) to finish, or press Cancel")
        if self.n_frames < 2 or "solver" not in self.layers:
            return self._refuse("Press Run first: a movie needs a run with at least 2 frames")
        problem = check_movie_path(path)
        if problem:
            return self._refuse(problem)
        self.run_button.enabled, self.movie_button.enabled = False, False
        self.cancel_button.enabled = True
        tau = float(self.layers["solver"].scale[0])
        label = f"solver ({self._seed['solver']}, blue) | CRNN (orange)"
        self.movie = MovieExport(self, self.viewer, path, self.n_frames, tau, label, fps=fps,
                                 width=width, on_progress=self._on_movie_progress,
                                 on_done=self._on_movie_done)
        set_progress(self.progress, 0, self.n_frames)
        self.status_label.value = f"recording {path} ..."
        self.movie.start()
        return True

    def _on_movie_progress(self, done: int) -> None:
        set_progress(self.progress, done)

    def _on_movie_done(self, path, error) -> None:
        self.movie = None
        self.run_button.enabled, self.cancel_button.enabled = True, False
        self.movie_button.enabled = self.n_frames > 1
        if error is not None:
            self.status_label.value = "movie not saved"
            show_error(f"Choose another file or format for the movie: {error}", error)
        elif path is None:
            self.status_label.value = "movie cancelled (nothing saved)"
        else:
            self.status_label.value = f"movie saved: {path}"
            show_info(f"movie saved to {path}")


def _checkpoint_error():
    from napari_chflow.model import CheckpointError

    return CheckpointError
