"""End-to-end flows of the napari dock widgets on 16^3-32^3 grids (Qt + OpenGL: run under
xvfb-run -a).

`napari -w napari-chflow` docks the four panels -> seed -> evolve solver and CRNN side by side
(seed hidden, camera fitted, runs replaced or placed beside) -> traces -> cancel -> the GUI thread
never blocks during a run, closing mid-run returns at once -> input refused before anything is
made, with messages in GUI terms -> train on a tiny dataset -> movie export -> screenshot.
"""

from __future__ import annotations

import functools
import os
import threading
import time

import numpy as np
import pytest

if not (os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY")):
    os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")  # no screen: skip below instead of abort

pytest.importorskip("napari")
pytest.importorskip("pytestqt")
torch = pytest.importorskip("torch")

from napari_chflow import metrics, physics, seeds
from napari_chflow.model import (
    CRNN,
    CRNNConfig,
    load_checkpoint,
    rollout,
    save_checkpoint,
    upsample,
)

pytestmark = pytest.mark.gui
WAIT_MS = 60_000
CLI_TERMS = ("--", "`", "chflow ", "=True", "resume=")  # never in a message the GUI shows


@pytest.fixture(scope="module")
def gl_context(qapp) -> bool:
    """Whether Qt can make an OpenGL context current (napari's canvas needs one)."""
    from qtpy.QtGui import QOffscreenSurface, QOpenGLContext

    if qapp.platformName() in ("offscreen", "minimal"):
        return False
    ctx, surface = QOpenGLContext(), QOffscreenSurface()
    surface.create()
    ok = ctx.create() and ctx.makeCurrent(surface)
    if ok:
        ctx.doneCurrent()
    return bool(ok)


@pytest.fixture(autouse=True)
def _needs_gl(gl_context):
    if not gl_context:
        pytest.skip("no OpenGL context: napari's canvas needs one; run the tests under "
                    "`xvfb-run -a` (Xvfb + Mesa) or on a desktop session")


@pytest.fixture(autouse=True)
def _own_settings(tmp_path, monkeypatch):
    """The widgets' remembered choices go to a file of this test, not the user's settings."""
    from qtpy.QtCore import QSettings

    from napari_chflow.widgets import evolve

    path = str(tmp_path / "napari-chflow.ini")
    monkeypatch.setattr(evolve, "settings", lambda: QSettings(path, QSettings.Format.IniFormat))


@pytest.fixture
def notes():
    """Messages of the napari notifications (errors, warnings, infos) emitted during the test."""
    from napari.utils.notifications import notification_manager

    seen: list[tuple[str, str]] = []

    def record(notification):
        seen.append((str(notification.severity), str(notification.message)))

    notification_manager.notification_ready.connect(record)
    yield seen
    notification_manager.notification_ready.disconnect(record)


@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory):
    """An untrained, small CRNN (downscale 2) saved as a checkpoint: behaviour, not accuracy."""
    torch.manual_seed(0)
    model = CRNN(CRNNConfig(hidden=2, n_layers=1))
    path = tmp_path_factory.mktemp("ckpt") / "tiny.pt"
    return save_checkpoint(path, model, recipe={"test": True}, data={})


def _evolve(viewer, phi0, checkpoint, n_tau, solver="spectral", traces=True):
    from napari_chflow.widgets.evolve import EvolveWidget
    from napari_chflow.widgets.traces import TracesWidget

    viewer.add_image(phi0, name="seed")
    evolve = EvolveWidget(viewer)
    viewer.window.add_dock_widget(evolve, name="Evolve and compare")
    trace = None
    if traces:
        trace = TracesWidget(viewer)
        viewer.window.add_dock_widget(trace, name="Traces")
    evolve.select_checkpoint(checkpoint)
    evolve.n_tau.value = n_tau
    evolve.solver.value = solver
    return evolve, trace


def _errors(notes) -> list[str]:
    return [m for s, m in notes if s == "error"]


def _gui_terms(message: str) -> bool:
    return not any(term in message for term in CLI_TERMS)


def _run(qtbot, evolve) -> None:
    assert evolve.run()
    qtbot.waitUntil(lambda: not evolve.running, timeout=WAIT_MS)


# --------------------------------------------------------------------------- the workflow


def test_one_command_docks_the_four_panels_once(make_napari_viewer, qtbot, tmp_path):
    """`napari -w napari-chflow` adds the plugin's first widget; that docks the whole workflow
    (widgets made by napari get a proxy of the viewer: they must still share one hub)."""
    from napari.plugins import _initialize_plugins

    from napari_chflow.widgets.workflow import dock_name

    _initialize_plugins()
    viewer = make_napari_viewer(show=True)
    viewer.window.add_plugin_dock_widget("napari-chflow")  # what `-w napari-chflow` runs
    names = [dock_name(n) for n in ("Seed volume", "Train surrogate", "Evolve and compare",
                                    "Traces")]
    qtbot.waitUntil(lambda: sorted(viewer.window.dock_widgets) == sorted(names), timeout=5000)
    panels = {name: viewer.window.dock_widgets[name] for name in names}
    viewer.window.add_plugin_dock_widget("napari-chflow")  # again: nothing is duplicated
    viewer.window.add_plugin_dock_widget("napari-chflow", "Traces")  # the menu entry: same dock
    qtbot.wait(50)
    assert sorted(viewer.window.dock_widgets) == sorted(names)
    assert all(viewer.window.dock_widgets[n] is panels[n] for n in names)
    train, evolve = panels[names[1]], panels[names[2]]
    train.hub.add_checkpoint(tmp_path / "best.pt")  # as a finished training does
    assert str((tmp_path / "best.pt").resolve()) in evolve.model.choices


# --------------------------------------------------------------------------- seed


def test_seed_widget_adds_perlin_layer_with_its_recipe(make_napari_viewer, qtbot):
    from napari_chflow.widgets.seed import SeedWidget

    viewer = make_napari_viewer()
    widget = SeedWidget(viewer)
    viewer.window.add_dock_widget(widget)
    widget.size.value = 16
    p = widget.params["Perlin noise"]
    p["scale"].value = 8.0
    p["mean"].value = 0.4
    p["seed"].value = 3
    assert widget.add_seed()
    qtbot.waitUntil(lambda: not widget.running and len(viewer.layers) == 1, timeout=WAIT_MS)
    layer = viewer.layers[0]
    expected = seeds.perlin((16, 16, 16), scale=8.0, octaves=4, layers=1, mean=0.4,
                            amplitude=0.25, seed=3)
    np.testing.assert_array_equal(layer.data, expected)
    assert layer.data.dtype == np.float32 and abs(float(layer.data.mean()) - 0.4) < 1e-5
    recipe = layer.metadata["chflow"]["seed"]
    assert recipe["kind"] == "perlin" and recipe["shape"] == [16, 16, 16]
    assert recipe["seed"] == 3 and recipe["mean"] == 0.4
    assert layer.rendering == "iso" and layer.iso_threshold == 0.5


def test_seed_widget_shapes_and_messages_in_gui_terms(make_napari_viewer, qtbot, notes, tmp_path,
                                                      monkeypatch, caplog):
    from napari_chflow.widgets.seed import SeedWidget

    viewer = make_napari_viewer()
    widget = SeedWidget(viewer)
    widget.size.value = 16
    widget.kind.value = "Slab"
    assert not widget.pages["Slab"].native.isHidden()  # one page of parameters per kind
    assert widget.pages["Perlin noise"].native.isHidden()
    widget.params["Slab"]["width"].value = 6.0
    widget.params["Slab"]["axis"].value = "y"
    widget.add_seed()
    qtbot.waitUntil(lambda: not widget.running, timeout=WAIT_MS)
    np.testing.assert_array_equal(viewer.layers[-1].data, seeds.slab((16,) * 3, width=6.0, axis=1))

    def add_and_message() -> str:
        before = len(_errors(notes))
        widget.add_seed()
        qtbot.waitUntil(lambda: not widget.running, timeout=WAIT_MS)
        assert len(_errors(notes)) == before + 1
        return _errors(notes)[-1]

    widget.kind.value = "Mesh file"
    assert add_and_message().startswith("Pick a mesh")  # no file chosen
    widget.params["Mesh file"]["path"].value = tmp_path / "missing.ply"
    assert add_and_message().startswith("Pick an existing file in 'mesh file'")
    # no internet: a short message naming the fix; pooch's long error goes to the log only
    import pooch

    def offline(*args, **kwargs):
        raise ConnectionError("HTTPSConnectionPool(host='graphics.stanford.edu'): " + "x" * 400)

    monkeypatch.delenv("CHFLOW_BUNNY_PATH", raising=False)
    monkeypatch.setattr(pooch, "retrieve", offline)
    widget.kind.value = "Stanford bunny"
    with caplog.at_level("WARNING", logger="napari_chflow"):
        message = add_and_message()
    assert message == "No internet: choose 'Mesh file' as the kind and pick a .ply"
    assert "HTTPSConnectionPool" in caplog.text
    assert len(viewer.layers) == 1 and all(_gui_terms(m) for m in _errors(notes))


# --------------------------------------------------------------------------- evolve + traces


def test_evolve_streams_solver_and_crnn_side_by_side(make_napari_viewer, qtbot, perlin16,
                                                     tiny_checkpoint, tmp_path):
    viewer = make_napari_viewer()
    evolve, traces = _evolve(viewer, perlin16, tiny_checkpoint, n_tau=3, solver="explicit")
    frames_seen, added = [], []
    evolve.hub.frame_ready.connect(lambda row: frames_seen.append(row["t"]))
    viewer.layers.events.inserted.connect(lambda event: added.append(event.value.name))
    assert evolve.run()
    assert evolve.running and not added  # Run only starts the job: no layer made on the click
    qtbot.waitUntil(lambda: not evolve.running, timeout=WAIT_MS)
    assert evolve.status == "done" and frames_seen == [0.0, 0.5, 1.0, 1.5]  # streamed one by one
    assert added == [evolve.layers["solver"].name, evolve.layers["crnn"].name]  # made once
    assert not viewer.layers["seed"].visible  # the seed no longer pokes through the solver

    solver, crnn = evolve.layers["solver"], evolve.layers["crnn"]
    np.testing.assert_array_equal(solver.data, physics.simulate(perlin16, 3))
    model = load_checkpoint(tiny_checkpoint)
    np.testing.assert_allclose(crnn.data, rollout(model, perlin16, 3), atol=1e-6)
    assert crnn.data.shape == (4, 8, 8, 8)
    # same physical size: the 8^3 CRNN grid carries scale 2; time axis in model units
    assert tuple(solver.scale) == (0.5, 1, 1, 1) and tuple(crnn.scale) == (0.5, 2, 2, 2)
    size = [np.array(layer.data.shape[1:]) * layer.scale[1:] for layer in (solver, crnn)]
    np.testing.assert_array_equal(size[0], size[1])
    assert crnn.translate[-1] > 16  # side by side along x
    assert viewer.dims.ndisplay == 3 and viewer.dims.current_step[0] == 3  # followed the last frame
    for layer in (solver, crnn):
        assert layer.rendering == "iso" and layer.iso_threshold == 0.5

    # traces, computed in the job: errors on the full grid (CRNN upsampled), F/V and mass of
    # each run on its own grid (CRNN voxels of size 2), as `chflow compare`; mass conserved
    runs = traces.traces()
    full = upsample(np.asarray(crnn.data), 2)
    expected = metrics.traces(full, ref=np.asarray(solver.data))
    for key in ("rmse", "interface_displacement", "free_energy_density_ref"):
        np.testing.assert_allclose(runs["crnn"][key], expected[key], rtol=1e-10)
    coarse = metrics.traces(np.asarray(crnn.data), spacing=2)
    for key in ("free_energy_density", "mass"):
        np.testing.assert_allclose(runs["crnn"][key], coarse[key], rtol=1e-10)
    np.testing.assert_allclose(runs["explicit"]["t"], [0, 0.5, 1.0, 1.5])
    for run in runs.values():
        assert np.max(np.abs(run["mass"] / run["mass"][0] - 1)) < 1e-5
    assert np.all(np.diff(runs["explicit"]["free_energy_density"]) < 0)  # the solver dissipates F
    picked = (traces.prediction.value, traces.reference.value)
    assert picked == (crnn, solver)  # offered for "Compute from layers"
    traces.export_csv(tmp_path / "traces.csv")
    table = np.genfromtxt(tmp_path / "traces.csv", delimiter=",", names=True)
    np.testing.assert_allclose(table["crnnrmse"], expected["rmse"])
    traces.export_png(tmp_path / "traces.png")
    assert (tmp_path / "traces.png").stat().st_size > 1000
    viewer.dims.set_current_step(0, 2)  # the viewer's time is marked on every panel
    qtbot.waitUntil(lambda: all(any(list(line.get_xdata()) == [1.0, 1.0] for line in ax.lines)
                                for ax in traces.axes), timeout=WAIT_MS)
    assert evolve.status_label.value == "done: 4 frames"


def test_a_block_mean_model_starts_from_its_own_mapping_of_the_seed(make_napari_viewer, qtbot,
                                                                    perlin16, tmp_path):
    """A model on block means (the shipped ``default``) shows, from frame 0 on, the states its
    rollout computes (the seed's block means, not its nearest samples), each voxel at the centre
    of its block."""
    from napari_chflow.model import downsample

    torch.manual_seed(0)
    path = save_checkpoint(tmp_path / "mean.pt", CRNN(CRNNConfig(hidden=2, n_layers=1),
                                                      coarse="mean"), recipe={}, data={})
    viewer = make_napari_viewer()
    evolve, _ = _evolve(viewer, perlin16, path, n_tau=2, traces=False)
    _run(qtbot, evolve)
    crnn = np.asarray(evolve.layers["crnn"].data)
    np.testing.assert_allclose(crnn, rollout(load_checkpoint(path), perlin16, 2), atol=1e-6)
    np.testing.assert_allclose(crnn[0], downsample(perlin16, 2, "mean"), atol=1e-6)
    assert np.abs(crnn[0] - downsample(perlin16, 2)).max() > 0.01  # the two mappings differ
    # each block mean stands for its block's centre: the layer sits half a grid unit in
    solver, layer = evolve.layers["solver"], evolve.layers["crnn"]
    assert layer.translate[1] - solver.translate[1] == 0.5  # z: no side-by-side offset
    assert layer.metadata["chflow"]["coarse"] == "mean"
    evolve.layout_choice.value = "grid"
    evolve.apply_layout()
    assert tuple(layer.translate[1:]) == (0.5, 0.5, 0.5)


def _visible_world_box(viewer) -> tuple[np.ndarray, np.ndarray]:
    """(min, max) corner of the displayed (z, y, x) world extent of the visible layers."""
    boxes = [layer.extent.world[:, -3:] for layer in viewer.layers if layer.visible]
    return np.min([b[0] for b in boxes], axis=0), np.max([b[1] for b in boxes], axis=0)


def _assert_fitted(viewer, evolve_module) -> None:
    """The camera looks at the middle of the visible layers, tilted, after a fit."""
    lo, hi = _visible_world_box(viewer)
    camera = viewer.scene.camera
    np.testing.assert_allclose(camera.center, (lo + hi) / 2, atol=1.0)
    assert tuple(camera.angles) == pytest.approx(evolve_module.TILT)


def test_every_shipped_model_is_offered_and_the_chosen_one_runs(make_napari_viewer, qtbot,
                                                                perlin16, tmp_path, monkeypatch):
    """Bundled models (``resources/<name>.pt``) are offered by name, the default first; a run
    uses the one chosen (here "fast", a model on the full grid, against the default's x1/2)."""
    import shutil

    from napari_chflow import model as model_module
    from napari_chflow.widgets.evolve import EvolveWidget

    torch.manual_seed(0)
    for name, downscale in (("default", 2), ("fast", 1)):
        save_checkpoint(tmp_path / f"{name}.pt", CRNN(CRNNConfig(hidden=2, n_layers=1),
                                                      downscale=downscale), recipe={}, data={})
    shutil.copy(tmp_path / "fast.pt", tmp_path / "a-model.pt")
    monkeypatch.setattr(model_module, "_resources", lambda: tmp_path)
    viewer = make_napari_viewer()
    viewer.add_image(perlin16, name="seed")
    evolve = EvolveWidget(viewer)
    assert list(evolve.model.choices) == ["default (shipped)", "a-model (shipped)",
                                          "fast (shipped)"]
    evolve.model.value, evolve.n_tau.value = "fast (shipped)", 1
    _run(qtbot, evolve)
    crnn = evolve.layers["crnn"]
    assert evolve.status == "done" and crnn.data.shape[1:] == perlin16.shape  # full grid
    assert crnn.metadata["chflow"]["model"] == "fast (shipped)"


def test_runs_replace_or_go_beside_and_the_camera_is_fitted(make_napari_viewer, qtbot, perlin16,
                                                             tiny_checkpoint):
    from napari_chflow.widgets import evolve as evolve_module

    viewer = make_napari_viewer()
    evolve, _ = _evolve(viewer, perlin16, tiny_checkpoint, n_tau=1, traces=False)
    viewer.dims.ndisplay = 3
    viewer.scene.camera.center, viewer.scene.camera.zoom = (500.0, -300.0, 900.0), 40.0
    _run(qtbot, evolve)
    _assert_fitted(viewer, evolve_module)
    first = dict(evolve.layers)
    evolve.solver.value = "explicit"
    _run(qtbot, evolve)  # default: the new run replaces the last one (in the same layers)
    assert evolve.layers == first and len(viewer.layers) == 3
    assert evolve.layers["solver"].name == "seed solver (explicit)"
    np.testing.assert_array_equal(evolve.layers["solver"].data, physics.simulate(perlin16, 1))
    assert evolve.layers["solver"].translate[-2] == 0

    evolve.placement.value = evolve_module.PLACEMENTS[1]  # beside: a row of its own
    assert evolve_module.settings().value("evolve/new_run") == evolve_module.PLACEMENTS[1]
    second = dict(evolve.layers)
    _run(qtbot, evolve)
    assert all(layer in viewer.layers for layer in second.values())
    rows = {evolve.layers[k].translate[-2] for k in ("solver", "crnn")}
    assert rows == {16 * (1 + evolve_module.GAP)}  # one box below the previous run
    _assert_fitted(viewer, evolve_module)
    offsets = {layer.name: tuple(layer.translate) for layer in viewer.layers}
    evolve.layout_choice.value = "grid"  # napari's grid places the layers: no offsets
    assert viewer.canvas.grid.enabled
    assert not any(np.any(layer.translate) for layer in viewer.layers)
    evolve.layout_choice.value = "side by side"  # and back: every run where it was
    assert not viewer.canvas.grid.enabled
    assert {layer.name: tuple(layer.translate) for layer in viewer.layers} == offsets
    # the choice is remembered: a new widget starts with it
    from napari_chflow.widgets.evolve import EvolveWidget

    assert EvolveWidget(viewer).placement.value == evolve_module.PLACEMENTS[1]

    # a difference layer on demand: |upsampled CRNN - solver| beside them, camera refitted
    viewer.scene.camera.center = (500.0, -300.0, 900.0)
    evolve.difference.value = True
    diff, solver, crnn = evolve.layers["diff"], evolve.layers["solver"], evolve.layers["crnn"]
    np.testing.assert_allclose(diff.data, np.abs(upsample(np.asarray(crnn.data), 2) - solver.data),
                               atol=1e-7)
    assert diff.translate[-1] > crnn.translate[-1]
    _assert_fitted(viewer, evolve_module)
    # grid layout: napari's grid, no offsets, camera refitted for the cells
    viewer.scene.camera.center, viewer.scene.camera.zoom = (500.0, -300.0, 900.0), 40.0
    evolve.layout_choice.value = "grid"
    assert viewer.canvas.grid.enabled and crnn.translate[-1] == 0 and solver.translate[-2] == 0
    assert tuple(viewer.scene.camera.angles) == pytest.approx(evolve_module.TILT)
    assert viewer.scene.camera.zoom < 40.0 and abs(viewer.scene.camera.center[-1]) < 100


def test_cancel_keeps_the_frames_computed_so_far(make_napari_viewer, qtbot, perlin16,
                                                 tiny_checkpoint):
    viewer = make_napari_viewer()
    evolve, _ = _evolve(viewer, perlin16, tiny_checkpoint, n_tau=10_000, traces=False)
    assert evolve.run()
    qtbot.waitUntil(lambda: evolve.n_frames >= 2, timeout=WAIT_MS)
    evolve.cancel()
    qtbot.waitUntil(lambda: not evolve.running, timeout=WAIT_MS)
    n = evolve.n_frames
    assert evolve.status == "cancelled" and 2 <= n < 100
    solver = evolve.layers["solver"]
    assert solver.data.shape[0] == n and evolve.layers["crnn"].data.shape[0] == n
    np.testing.assert_array_equal(solver.data, physics.simulate(perlin16, n - 1, solver="spectral"))


OWN_LIMIT_S = 0.1  # the plugin's own work per GUI-thread callback during a run


def _time_gui_callbacks(monkeypatch, targets):
    """Wrap methods (class level, before the widgets connect them) to record every outermost
    GUI-thread callback as ``(name, start, wall s, CPU s, napari wall s, napari CPU s,
    renders)``, where "napari" is the time spent inside it in napari's own work: 3D renders
    (vispy's canvas draw), adding or removing layers, and re-making its layer controls for a 2D/3D
    switch (showing their 3D widgets can paint the canvas at once); ``renders`` counts the renders
    that the plugin's code forced (not those napari does inside its own work)."""
    from napari._qt.layer_controls.qt_layer_controls_container import QtLayerControlsContainer
    from napari.components import LayerList, ViewerModel
    from vispy.scene import SceneCanvas

    calls, depth, inside, in_napari = [], [0], [0.0, 0.0, 0], [0]
    gui = threading.get_ident()

    def wrap(cls, name):
        func = getattr(cls, name)

        def timed(self, *args, **kwargs):
            if threading.get_ident() != gui:
                return func(self, *args, **kwargs)
            depth[0] += 1
            if depth[0] == 1:
                inside[:] = [0.0, 0.0, 0]
            t0, c0 = time.perf_counter(), time.thread_time()
            try:
                return func(self, *args, **kwargs)
            finally:
                depth[0] -= 1
                if depth[0] == 0:  # nested calls count in their caller
                    calls.append((f"{cls.__name__}.{name}", t0, time.perf_counter() - t0,
                                  time.thread_time() - c0, *inside))

        monkeypatch.setattr(cls, name, functools.wraps(func)(timed))

    def napari_own(cls, name, render: bool):
        func = getattr(cls, name)

        def timed(self, *args, **kwargs):
            counted = depth[0] > 0 and threading.get_ident() == gui and not in_napari[0]
            in_napari[0] += counted
            t0, c0 = time.perf_counter(), time.thread_time()
            try:
                return func(self, *args, **kwargs)
            finally:
                if counted:  # the outermost piece of napari's work inside a callback
                    in_napari[0] -= 1
                    inside[0] += time.perf_counter() - t0
                    inside[1] += time.thread_time() - c0
                    inside[2] += render

        monkeypatch.setattr(cls, name, functools.wraps(func)(timed))

    napari_own(SceneCanvas, "on_draw", True)
    napari_own(ViewerModel, "add_image", False)
    napari_own(LayerList, "remove", False)
    napari_own(QtLayerControlsContainer, "_on_ndisplay_changed", False)
    for cls, names in targets:
        for name in names:
            wrap(cls, name)
    return calls


def test_gui_thread_never_blocks_during_a_run(make_napari_viewer, qtbot, perlin32,
                                              tiny_checkpoint, monkeypatch):
    """With the viewer on screen (napari renders the 3D scene on the GUI thread), every callback
    of the plugin during a 32^3 run of 21 frames, the Run click included, costs < 0.1 s of its
    own (CPU; < 0.5 s wall), napari's own work (renders, adding layers) separated; no
    callback forces a render; the frame updates are coalesced; the plots are drawn in another
    thread; the final traces are shown when the run ends. A second run reuses the layers."""
    from napari_chflow.widgets import _common
    from napari_chflow.widgets.evolve import EvolveWidget
    from napari_chflow.widgets.traces import TracesWidget

    calls = _time_gui_callbacks(monkeypatch, [
        (EvolveWidget, ("run", "_on_ready", "_on_change", "_refresh_view", "_on_done")),
        (TracesWidget, ("add_row", "redraw", "_on_point", "_on_run_started", "_on_run_finished")),
        (_common.BackgroundFigure, ("_show", "paintEvent", "resizeEvent")),
    ])
    render_threads = set()
    draw = TracesWidget._draw
    monkeypatch.setattr(TracesWidget, "_draw", lambda self, job: (
        render_threads.add(threading.get_ident()), draw(self, job)))
    viewer = make_napari_viewer(show=True)
    evolve, traces = _evolve(viewer, perlin32, tiny_checkpoint, n_tau=20)
    qtbot.wait(100)  # first paint of the docks
    start = time.perf_counter()
    assert evolve.run()
    qtbot.waitUntil(lambda: not evolve.running, timeout=WAIT_MS)
    ended = time.perf_counter()
    qtbot.waitUntil(lambda: traces.view.idle, timeout=WAIT_MS)
    shown = time.perf_counter() - ended

    assert evolve.status == "done" and evolve.n_frames == 21
    during = [c for c in calls if c[1] >= start]
    assert during[0][0] == "EvolveWidget.run"
    changes = sum(c[0] == "EvolveWidget._on_change" for c in during)
    follows = sum(c[0] == "EvolveWidget._refresh_view" for c in during)
    assert 1 <= changes <= 22 and 1 <= follows <= (ended - start) / 0.2 + 3  # coalesced
    assert render_threads and threading.get_ident() not in render_threads  # drawn off the GUI
    assert len(traces.axes[-1].lines[0].get_xdata()) == 21  # the final traces are drawn
    own = [(name, wall - nw, cpu - nc, renders, nw)
           for name, _, wall, cpu, nw, nc, renders in during]
    slowest = max(own, key=lambda c: c[1])
    slowest_cpu = max(own, key=lambda c: c[2])
    napari_max = max(own, key=lambda c: c[4])
    print(f"\n{len(during)} GUI callbacks in {ended - start:.1f} s ({changes} frame updates, "
          f"{follows} view updates); own work: slowest {slowest[0]} {slowest[1] * 1e3:.0f} ms "
          f"wall, most CPU {slowest_cpu[0]} {slowest_cpu[2] * 1e3:.0f} ms; napari's work inside "
          f"a callback: at most {napari_max[4] * 1e3:.0f} ms ({napari_max[0]}); final traces "
          f"shown {shown * 1e3:.0f} ms after the run")
    for name in sorted({c[0] for c in own}):
        mine = [c for c in own if c[0] == name]
        print(f"  {name}: {len(mine)} calls, own wall max {max(c[1] for c in mine) * 1e3:.0f} ms, "
              f"CPU max {max(c[2] for c in mine) * 1e3:.0f} ms, napari max "
              f"{max(c[4] for c in mine) * 1e3:.0f} ms")
    assert sum(c[3] for c in own) == 0, [c for c in own if c[3]]  # no render forced inside
    assert slowest_cpu[2] < OWN_LIMIT_S, slowest_cpu
    # wall time also counts waits for the GIL (render and compute threads), for Mesa's render
    # threads and for a core of a loaded 2-core machine (measured here: own CPU <= 60 ms, own
    # wall 70-230 ms), hence the slack; the original freezes were 1-7 s
    assert slowest[1] < 5 * OWN_LIMIT_S, slowest
    assert shown < 2.0

    added = []  # a second run replaces the first: its layers are reused, none is made
    viewer.layers.events.inserted.connect(lambda event: added.append(event.value))
    before = len(calls)
    _run(qtbot, evolve)
    ready = [c for c in calls[before:] if c[0] == "EvolveWidget._on_ready"]
    assert not added and evolve.n_frames == 21 and len(ready) == 1
    assert ready[0][3] - ready[0][5] < OWN_LIMIT_S and ready[0][2] - ready[0][4] < 0.5, ready


def test_a_slow_3d_render_does_not_queue_up_frames(make_napari_viewer, qtbot, perlin16,
                                                   tiny_checkpoint, monkeypatch):
    """Every 3D render made 0.4 s slow: the run's last frame is on screen within a few renders
    after the compute thread finished (no backlog of per-frame updates: 30 frames forcing a
    render each would lag 12 s)."""
    from vispy.scene import SceneCanvas

    from napari_chflow.widgets import _compare

    draw = SceneCanvas.on_draw
    monkeypatch.setattr(SceneCanvas, "on_draw",
                        lambda self, event: (time.sleep(0.4), draw(self, event)))
    finished = []
    fill = _compare.fill_buffers
    from napari_chflow.widgets import evolve as evolve_module

    def timed_fill(*args, **kwargs):
        try:
            return fill(*args, **kwargs)
        finally:
            finished.append(time.perf_counter())

    monkeypatch.setattr(evolve_module, "fill_buffers", timed_fill)
    viewer = make_napari_viewer(show=True)
    evolve, _ = _evolve(viewer, perlin16, tiny_checkpoint, n_tau=30, traces=False)
    _run(qtbot, evolve)
    lag = time.perf_counter() - finished[0]
    print(f"\nlast frame shown {lag * 1e3:.0f} ms after the compute thread finished")
    assert evolve.n_frames == 31 and viewer.dims.current_step[0] == 30
    assert lag < 2.0, lag


def test_closing_napari_mid_run_returns_at_once(make_napari_viewer, qtbot, perlin16,
                                                tiny_checkpoint, monkeypatch):
    """Each frame made to take 3 s: closing the window and quitting (napari waits for its
    workers at quit) return while the compute thread is still inside its frame - nothing waits
    for it (napari's own teardown takes 0.5-1.5 s here); the thread ends by itself after it."""
    from napari._qt.qthreading import wait_for_workers_to_quit

    from napari_chflow.widgets import _compare

    frames = _compare.compare_frames

    def slow_frames(*args, **kwargs):
        for frame in frames(*args, **kwargs):
            if frame.index >= 2:
                time.sleep(3.0)
            yield frame

    monkeypatch.setattr(_compare, "compare_frames", slow_frames)
    viewer = make_napari_viewer(show=True)
    evolve, _ = _evolve(viewer, perlin16, tiny_checkpoint, n_tau=50)
    assert evolve.run()
    qtbot.waitUntil(lambda: evolve.n_frames >= 2, timeout=WAIT_MS)
    job = evolve.job
    start = time.perf_counter()
    viewer.close()
    wait_for_workers_to_quit()
    took = time.perf_counter() - start
    assert job.thread.is_alive() and took < 3.0, took  # returned before the frame ended
    assert job.stopped.is_set()  # the window's widgets are gone: the job was told to stop
    job.thread.join(timeout=10)
    assert not job.thread.is_alive()


def test_bad_input_is_refused_before_anything_is_made(make_napari_viewer, qtbot, notes, tmp_path,
                                                      perlin16, tiny_checkpoint):
    from napari_chflow.widgets.evolve import EvolveWidget

    viewer = make_napari_viewer()
    evolve = EvolveWidget(viewer)
    evolve.select_checkpoint(tiny_checkpoint)

    def refused(message_start: str) -> str:
        layers = [layer.name for layer in viewer.layers]
        assert not evolve.run()
        qtbot.waitUntil(lambda: not evolve.running, timeout=WAIT_MS)
        message = _errors(notes)[-1]
        assert message.startswith(message_start), message
        assert [layer.name for layer in viewer.layers] == layers and not evolve.layers
        assert evolve.status_label.value == f"not started: {message}"  # not the last run's text
        return message

    refused("Add a seed with 'Seed volume'")
    viewer.add_image(perlin16, name="seed")
    if not torch.cuda.is_available():
        evolve.device.value = "cuda"
        refused("Choose 'cpu' as the device")
        evolve.device.value = "cpu"
    bad = perlin16.copy()
    bad[3, 4, 5] = np.nan
    viewer.add_image(bad, name="holes")
    evolve.seed.value = viewer.layers["holes"]
    refused("Replace the NaN/inf values of 'holes'")
    viewer.add_image(perlin16 * 255, name="bytes")
    evolve.seed.value = viewer.layers["bytes"]
    assert "0 to 255" in refused("Rescale the seed layer to [0, 1]")

    # checked in the job, still before any layer: grid vs the CRNN's downscale, the checkpoint
    viewer.add_image(perlin16[:15], name="odd")  # 15 x 16 x 16: not a multiple of downscale 2
    evolve.seed.value = viewer.layers["odd"]
    assert evolve.run()
    qtbot.waitUntil(lambda: not evolve.running, timeout=WAIT_MS)
    assert _errors(notes)[-1].startswith("Pick a seed layer whose size is a multiple of 2")
    assert not evolve.layers and len(viewer.layers) == 4
    evolve.seed.value = viewer.layers["seed"]
    bad_file = tmp_path / "bad.pt"
    bad_file.write_bytes(b"not a checkpoint")
    evolve.select_checkpoint(bad_file)
    assert evolve.run()
    qtbot.waitUntil(lambda: not evolve.running, timeout=WAIT_MS)
    assert _errors(notes)[-1].startswith("Choose another CRNN")
    assert not evolve.layers and len(viewer.layers) == 4
    assert str(bad_file.resolve()) not in evolve.model.choices  # no longer offered
    assert all(_gui_terms(m) for m in _errors(notes)), _errors(notes)


def test_seed_from_the_current_frame_of_a_sequence(make_napari_viewer, qtbot, perlin16,
                                                   tiny_checkpoint):
    viewer = make_napari_viewer()
    evolve, _ = _evolve(viewer, np.stack([perlin16, 1 - perlin16]), tiny_checkpoint, n_tau=1,
                        traces=False)
    viewer.dims.set_current_step(0, 1)
    _run(qtbot, evolve)
    np.testing.assert_array_equal(evolve.layers["solver"].data[0], 1 - perlin16)
    assert evolve.layers["solver"].metadata["chflow"]["seed"]["frame"] == 1
    assert evolve.status_label.value == "done: 2 frames"


def test_diverged_run_is_reported_and_keeps_its_frames(make_napari_viewer, qtbot, notes,
                                                        perlin16, tiny_checkpoint, monkeypatch):
    from napari_chflow.physics import SimulationDiverged
    from napari_chflow.widgets import _compare

    frames = _compare.compare_frames

    def diverging(*args, **kwargs):
        for frame in frames(*args, **kwargs):
            if frame.index == 2:
                raise SimulationDiverged("explicit solver diverged (NaN/inf) by step 800: use a "
                                         "smaller dt or the default settings", [], 800)
            yield frame

    monkeypatch.setattr(_compare, "compare_frames", diverging)
    viewer = make_napari_viewer()
    evolve, _ = _evolve(viewer, perlin16, tiny_checkpoint, n_tau=5, solver="explicit",
                        traces=False)
    _run(qtbot, evolve)
    assert evolve.status == "failed"
    assert _errors(notes)[-1] == ("Try the spectral solver or another seed: the explicit solver "
                                  "diverged (2 frames kept)")
    assert evolve.layers["solver"].data.shape[0] == evolve.n_frames == 2
    np.testing.assert_array_equal(evolve.layers["solver"].data[0], perlin16)


def test_movie_export_gif_mp4_and_cancel(make_napari_viewer, qtbot, notes, perlin16,
                                         tiny_checkpoint, tmp_path):
    import imageio.v3 as iio

    from napari_chflow.widgets._movie import has_mp4

    viewer = make_napari_viewer(show=True)
    evolve, _ = _evolve(viewer, perlin16, tiny_checkpoint, n_tau=5, traces=False)
    assert not evolve.export_movie(tmp_path / "early.gif")  # no run yet
    assert _errors(notes)[-1].startswith("Press Run first")
    _run(qtbot, evolve)
    viewer.dims.set_current_step(0, 2)
    overlay = viewer.canvas.overlays.text
    assert not evolve.export_movie(tmp_path / "run.avi")
    assert _errors(notes)[-1].startswith("Save the movie as .gif or .mp4")
    progress = []
    evolve.progress.changed.connect(progress.append)
    assert evolve.export_movie(tmp_path / "run.gif", width=160)
    assert evolve.cancel_button.enabled and not evolve.run_button.enabled
    qtbot.waitUntil(lambda: evolve.movie is None, timeout=WAIT_MS)
    movie = iio.imread(tmp_path / "run.gif", index=None)
    assert movie.shape[0] == 6 and movie.shape[2] == 160  # every frame, at the asked width
    assert movie[0].std() > 0 and not np.array_equal(movie[0], movie[-1])  # it moves
    assert viewer.dims.current_step[0] == 2 and not overlay.visible  # the view is put back
    if has_mp4():
        assert evolve.export_movie(tmp_path / "run.mp4", width=160)
        qtbot.waitUntil(lambda: evolve.movie is None, timeout=WAIT_MS)
        assert iio.imread(tmp_path / "run.mp4", index=None).shape[0] == 6
    assert evolve.export_movie(tmp_path / "cancelled.gif", width=160)
    evolve.cancel()
    qtbot.waitUntil(lambda: evolve.movie is None, timeout=WAIT_MS)
    assert not (tmp_path / "cancelled.gif").exists()
    assert not list(tmp_path.glob(".cancelled*"))  # no partial file left
    assert evolve.status_label.value.startswith("movie cancelled")


def test_traces_from_two_sequence_layers(make_napari_viewer, qtbot, notes, perlin16):
    from napari_chflow.widgets.traces import TracesWidget

    viewer = make_napari_viewer()
    ref = physics.simulate(perlin16, 2, solver="spectral")
    pred = np.clip(ref + 0.01, 0, 1).astype(np.float32)
    viewer.add_image(ref, name="ref", scale=(0.5, 1, 1, 1))
    viewer.add_image(pred, name="pred", scale=(0.5, 1, 1, 1))
    widget = TracesWidget(viewer)
    widget.prediction.value = viewer.layers["pred"]
    widget.reference.value = viewer.layers["ref"]
    widget._on_run_started({"solver": "spectral"})  # rows streaming from a run: refused
    assert not widget.compute_from_layers() and _errors(notes)[-1].startswith("Wait for the run")
    widget._on_run_finished({"frames": 0, "status": "failed"})
    assert widget.compute_from_layers()
    qtbot.waitUntil(lambda: widget._job is None, timeout=WAIT_MS)
    runs = widget.traces()
    np.testing.assert_allclose(runs["pred"]["rmse"], metrics.traces(pred, ref)["rmse"])
    np.testing.assert_allclose(runs["ref"]["free_energy_density"],
                               metrics.traces(ref)["free_energy_density"])
    # a prediction on the x1/2 grid (a CRNN sequence) is compared on the full grid
    viewer.add_image(pred[:, ::2, ::2, ::2], name="coarse", scale=(0.5, 2, 2, 2))
    widget.prediction.value = viewer.layers["coarse"]
    assert widget.compute_from_layers()
    qtbot.waitUntil(lambda: widget._job is None, timeout=WAIT_MS)
    expected = metrics.traces(upsample(pred[:, ::2, ::2, ::2], 2), ref)["rmse"]
    np.testing.assert_allclose(widget.traces()["coarse"]["rmse"], expected)
    viewer.layers["coarse"].name = "renamed"  # the pickers follow the layer list
    assert "renamed" in [layer.name for layer in widget.prediction.choices]


# --------------------------------------------------------------------------- train


def test_train_one_epoch_cancel_resume_and_checkpoint_is_selectable(make_napari_viewer, qtbot,
                                                                     notes, tmp_path,
                                                                     figure_problems,
                                                                     monkeypatch):
    import threading

    import napari_chflow.training as training_module
    from napari_chflow.widgets.evolve import EvolveWidget
    from napari_chflow.widgets.train import TrainWidget

    viewer = make_napari_viewer()
    train, evolve = TrainWidget(viewer), EvolveWidget(viewer)
    data, out = tmp_path / "data", tmp_path / "run"
    train.dataset.value = data
    for key, value in {"n_seq": 2, "size": 8, "frames": 3}.items():
        train.small[key].value = value
    assert train.generate_dataset()
    qtbot.waitUntil(lambda: not train.running, timeout=WAIT_MS)
    assert len(list((data / "sequences").iterdir())) == 2

    train.out.value = out
    train.epochs.value = 1
    assert not train.start(resume=True)  # nothing to resume yet: said, not silently restarted
    assert _errors(notes)[-1].startswith("Press Train to start a run")
    real_train, pressed = training_module.train, threading.Event()

    def after_cancel(*args, **kwargs):  # the run starts once Cancel is pressed: no race with it
        pressed.wait(WAIT_MS / 1000)
        return real_train(*args, **kwargs)

    monkeypatch.setattr(training_module, "train", after_cancel)
    assert train.start()
    train.cancel()  # polled before the first batch: nothing trained, nothing written
    pressed.set()
    qtbot.waitUntil(lambda: not train.running, timeout=WAIT_MS)
    assert train.checkpoint is None and not (out / "last.pt").exists()
    monkeypatch.setattr(training_module, "train", real_train)

    assert train.start()
    qtbot.waitUntil(lambda: not train.running, timeout=WAIT_MS)
    assert not _errors(notes)[1:], notes
    assert [h["epoch"] for h in train.history] == [0] and np.isfinite(train.history[0]["val_loss"])
    qtbot.waitUntil(lambda: train.view.idle, timeout=WAIT_MS)  # the curve is drawn off the GUI
    curve = {line.get_label(): line for line in train.ax.lines}
    np.testing.assert_allclose(curve["train (epoch)"].get_ydata(),
                               [train.history[0]["train_loss"]])
    train.figure.set_size_inches(3.5, 2.4)  # the dock's ~350 px: labels and legend readable
    assert figure_problems(train.figure) == []
    assert train.checkpoint == str((out / "best.pt").resolve())
    assert train.checkpoint in evolve.model.choices  # offered in "Evolve and compare"

    assert not train.start()  # Train again into the same folder: Resume is named
    assert _errors(notes)[-1] == (f"Press Resume to continue the run in '{out}', or choose "
                                  "another output folder")
    train.epochs.value = 2
    assert train.start(resume=True)
    qtbot.waitUntil(lambda: not train.running, timeout=WAIT_MS)
    assert [h["epoch"] for h in train.history] == [0, 1]
    assert load_checkpoint(out / "last.pt").extra["train_state"]["epoch"] == 1

    train.dataset.value = out  # a folder holding a training run is no place for a dataset
    assert not train.generate_dataset()
    assert _errors(notes)[-1].startswith("Choose an empty or new dataset folder")
    assert not train.start(resume=True)  # ... and no dataset either
    assert _errors(notes)[-1].startswith("Press 'Generate small dataset'")
    assert all(_gui_terms(m) for m in _errors(notes)), _errors(notes)


# --------------------------------------------------------------------------- rendering


def test_screenshot_shows_both_isosurfaces(make_napari_viewer, qtbot, tiny_checkpoint):
    viewer = make_napari_viewer(show=True)
    phi0 = seeds.two_spheres((32, 32, 32))
    evolve, _ = _evolve(viewer, phi0, tiny_checkpoint, n_tau=1, traces=False)
    _run(qtbot, evolve)
    assert not viewer.layers["seed"].visible
    image = viewer.screenshot(canvas_only=True, flash=False)  # the fitted, tilted view
    rgb = image[..., :3].astype(int)
    lit = rgb.sum(axis=-1) > 60  # the background is black
    assert lit.mean() > 0.01, "blank screenshot: nothing rendered"
    half = image.shape[1] // 2
    left, right = lit[:, :half], lit[:, half:]
    assert left.sum() > 100 and right.sum() > 100
    # solver in blue, CRNN in orange
    assert rgb[:, :half][left][:, 2].mean() > rgb[:, :half][left][:, 0].mean()
    assert rgb[:, half:][right][:, 0].mean() > rgb[:, half:][right][:, 2].mean()
