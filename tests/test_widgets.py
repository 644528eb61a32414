"""End-to-end flows of the napari dock widgets on 16^3 grids (Qt + OpenGL: run under xvfb-run -a).

seed -> evolve solver and CRNN side by side -> layers with frames and iso rendering -> traces ->
cancel -> the GUI thread never blocks during a run -> errors the user can cause -> train one
epoch on a tiny dataset -> checkpoint selectable -> screenshot of the two isosurfaces.
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


def _evolve(viewer, phi0, checkpoint, n_tau, solver="spectral"):
    from napari_chflow.widgets.evolve import EvolveWidget
    from napari_chflow.widgets.traces import TracesWidget

    viewer.add_image(phi0, name="seed")
    evolve, traces = EvolveWidget(viewer), TracesWidget(viewer)
    viewer.window.add_dock_widget(evolve, name="Evolve and compare")
    viewer.window.add_dock_widget(traces, name="Traces")
    evolve.select_checkpoint(checkpoint)
    evolve.n_tau.setValue(n_tau)
    evolve.solver_combo.setCurrentText(solver)
    return evolve, traces


def _errors(notes) -> list[str]:
    return [m for s, m in notes if s == "error"]


# --------------------------------------------------------------------------- seed


def test_seed_widget_adds_perlin_layer_with_its_recipe(make_napari_viewer, qtbot):
    from napari_chflow.widgets.seed import SeedWidget

    viewer = make_napari_viewer()
    widget = SeedWidget(viewer)
    viewer.window.add_dock_widget(widget)
    widget.size.setValue(16)
    p = widget.params["Perlin noise"]
    p["scale"].setValue(8.0)
    p["mean"].setValue(0.4)
    p["seed"].setValue(3)
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


def test_seed_widget_shapes_and_bad_mesh(make_napari_viewer, qtbot, notes, tmp_path):
    from napari_chflow.widgets.seed import SeedWidget

    viewer = make_napari_viewer()
    widget = SeedWidget(viewer)
    widget.size.setValue(16)
    widget.kind_combo.setCurrentText("Slab")
    widget.params["Slab"]["width"].setValue(6.0)
    widget.params["Slab"]["axis"].setCurrentText("y")
    widget.add_seed()
    qtbot.waitUntil(lambda: not widget.running, timeout=WAIT_MS)
    expected = seeds.slab((16, 16, 16), width=6.0, axis=1)
    np.testing.assert_array_equal(viewer.layers[-1].data, expected)
    widget.kind_combo.setCurrentText("Mesh file")
    widget.params["Mesh file"]["path"].setText(str(tmp_path / "missing.ply"))
    widget.add_seed()
    qtbot.waitUntil(lambda: not widget.running, timeout=WAIT_MS)
    assert len(viewer.layers) == 1 and _errors(notes)  # no layer, a clear message instead


# --------------------------------------------------------------------------- evolve + traces


def test_evolve_streams_solver_and_crnn_side_by_side(make_napari_viewer, qtbot, perlin16,
                                                     tiny_checkpoint, tmp_path):
    viewer = make_napari_viewer()
    evolve, traces = _evolve(viewer, perlin16, tiny_checkpoint, n_tau=3, solver="explicit")
    frames_seen = []
    evolve.hub.frame_ready.connect(lambda row: frames_seen.append(row["t"]))
    assert evolve.run()
    # the layers are made when Run is pressed, before any frame: full length, frame 0 = the seed
    assert evolve.running and set(evolve.layers) == {"solver", "crnn"} and viewer.dims.ndisplay == 3
    assert evolve.layers["solver"].data.shape == (4, 16, 16, 16)
    np.testing.assert_array_equal(evolve.layers["solver"].data[0], perlin16)
    np.testing.assert_array_equal(evolve.layers["crnn"].data[0], perlin16[::2, ::2, ::2])
    added = []
    viewer.layers.events.inserted.connect(lambda event: added.append(event.value.name))
    qtbot.waitUntil(lambda: not evolve.running, timeout=WAIT_MS)
    assert evolve.status == "done" and frames_seen == [0.0, 0.5, 1.0, 1.5]  # streamed one by one
    assert added == []  # no layer was created while frames arrived

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

    # traces, computed in the worker: errors on the full grid (CRNN upsampled), F/V and mass of
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
    picked = (traces.seq_combo.currentText(), traces.ref_combo.currentText())
    assert picked == (crnn.name, solver.name)  # offered for "Compute from layers"
    traces.export_csv(tmp_path / "traces.csv")
    table = np.genfromtxt(tmp_path / "traces.csv", delimiter=",", names=True)
    np.testing.assert_allclose(table["crnnrmse"], expected["rmse"])
    traces.export_png(tmp_path / "traces.png")
    assert (tmp_path / "traces.png").stat().st_size > 1000
    viewer.dims.set_current_step(0, 2)  # the viewer's time is marked on every panel
    qtbot.waitUntil(lambda: all(any(list(line.get_xdata()) == [1.0, 1.0] for line in ax.lines)
                                for ax in traces.axes), timeout=WAIT_MS)

    # difference layer on demand: |upsampled CRNN - solver|, same time axis
    evolve.diff_check.setChecked(True)
    diff = evolve.layers["diff"]
    np.testing.assert_allclose(diff.data, np.abs(full - solver.data), atol=1e-7)
    evolve.layout_combo.setCurrentText("grid")
    assert viewer.canvas.grid.enabled and crnn.translate[-1] == 0


def test_cancel_keeps_the_frames_computed_so_far(make_napari_viewer, qtbot, perlin16,
                                                 tiny_checkpoint):
    viewer = make_napari_viewer()
    evolve, _ = _evolve(viewer, perlin16, tiny_checkpoint, n_tau=10_000)
    assert evolve.run()
    qtbot.waitUntil(lambda: evolve.n_frames >= 2, timeout=WAIT_MS)
    evolve.cancel()
    qtbot.waitUntil(lambda: not evolve.running, timeout=WAIT_MS)
    n = evolve.n_frames
    assert evolve.status == "cancelled" and 2 <= n < 100
    solver = evolve.layers["solver"]
    assert solver.data.shape[0] == n and evolve.layers["crnn"].data.shape[0] == n
    np.testing.assert_array_equal(solver.data, physics.simulate(perlin16, n - 1, solver="spectral"))


GUI_LIMIT_S = 0.1  # longest callback allowed on the GUI thread during a run


def _time_gui_callbacks(monkeypatch, targets) -> list[tuple[str, float, float, float]]:
    """Wrap methods (class level, before the widgets connect them) to record, for every outermost
    call, ``(name, start, wall seconds, GUI-thread CPU seconds)``."""
    calls, depth = [], [0]

    def wrap(cls, name):
        func = getattr(cls, name)

        def timed(self, *args, **kwargs):
            depth[0] += 1
            t0, c0 = time.perf_counter(), time.thread_time()
            try:
                return func(self, *args, **kwargs)
            finally:
                depth[0] -= 1
                if depth[0] == 0:  # nested calls count in their caller
                    calls.append((f"{cls.__name__}.{name}", t0, time.perf_counter() - t0,
                                  time.thread_time() - c0))

        monkeypatch.setattr(cls, name, functools.wraps(func)(timed))

    for cls, names in targets:
        for name in names:
            wrap(cls, name)
    return calls


def test_gui_thread_never_blocks_during_a_run(make_napari_viewer, qtbot, perlin32,
                                              tiny_checkpoint, monkeypatch):
    """Every callback the GUI thread runs while a 32^3 run streams 41 frames (frames into the
    layers, traces rows, plot requests and display, the end of the run) costs < 0.1 s of GUI-thread
    CPU (< 0.25 s wall), and a 5 ms QTimer is never held up for 0.5 s; the plots are drawn in
    another thread. Layer creation at Run, before the worker starts, is excluded."""
    from qtpy.QtCore import QTimer

    from napari_chflow.widgets import _common
    from napari_chflow.widgets.evolve import EvolveWidget
    from napari_chflow.widgets.traces import TracesWidget

    calls = _time_gui_callbacks(monkeypatch, [
        (EvolveWidget, ("_on_frame", "_on_returned", "_on_finished")),
        (TracesWidget, ("add_row", "redraw", "_on_point", "_on_run_finished")),
        (_common.Throttle, ("_fire",)),
        (_common.BackgroundFigure, ("_show", "paintEvent", "resizeEvent")),
    ])
    render_threads = set()
    draw = TracesWidget._draw
    monkeypatch.setattr(TracesWidget, "_draw", lambda self, job: (
        render_threads.add(threading.get_ident()), draw(self, job)))
    viewer = make_napari_viewer()
    evolve, traces = _evolve(viewer, perlin32, tiny_checkpoint, n_tau=40)
    ticks = []
    watchdog = QTimer()
    watchdog.timeout.connect(lambda: ticks.append(time.perf_counter()))
    watchdog.start(5)
    pressed = time.perf_counter()
    assert evolve.run()  # checks, loads the CRNN, makes the layers, then starts the worker
    start = time.perf_counter()  # the worker runs from here on
    shown_before = traces.view.shown
    qtbot.waitUntil(lambda: not evolve.running, timeout=WAIT_MS)
    qtbot.waitUntil(lambda: traces.view.idle, timeout=WAIT_MS)
    end = time.perf_counter()
    watchdog.stop()

    assert evolve.status == "done" and evolve.n_frames == 41
    during = [c for c in calls if c[1] >= start]
    frames = [c for c in during if c[0] == "EvolveWidget._on_frame"]
    renders = traces.view.shown - shown_before
    assert len(frames) == 41 and renders >= 2, (len(frames), renders)  # streamed and redrawn
    assert render_threads and threading.get_ident() not in render_threads  # drawn off the GUI
    # lines updated in place 40 times show what a fresh drawing of the final traces shows
    from matplotlib.figure import Figure

    from napari_chflow.plots import TracePlot

    fresh = Figure().subplots(3, 1)
    TracePlot(fresh, fontsize=7, minor_ticks=False).update(traces.traces(), traces.current_time())
    for live, ref in zip(traces.axes, fresh):
        assert [line.get_label() for line in live.lines] == [line.get_label() for line in ref.lines]
        for a, b in zip(live.lines, ref.lines):
            np.testing.assert_array_equal(a.get_xydata(), b.get_xydata())
        np.testing.assert_allclose([live.get_xlim(), live.get_ylim()],
                                   [ref.get_xlim(), ref.get_ylim()], rtol=1e-12)
    assert len(traces.axes[2].lines[0].get_xdata()) == 41
    slowest = max(during, key=lambda c: c[2])
    slowest_cpu = max(during, key=lambda c: c[3])
    gaps = np.diff([t for t in ticks if start <= t <= end])
    print(f"\nRun pressed: {(start - pressed) * 1e3:.0f} ms before the worker started; "
          f"{len(during)} GUI callbacks during the run ({end - start:.1f} s, {renders} plot "
          f"renders): slowest {slowest[0]} {slowest[2] * 1e3:.0f} ms wall, most CPU "
          f"{slowest_cpu[0]} {slowest_cpu[3] * 1e3:.0f} ms; watchdog max gap "
          f"{gaps.max() * 1e3:.0f} ms")
    # the GUI thread's CPU time is what our callbacks cost; their wall time also counts waits for
    # the GIL (render thread, compute worker) and for a core of a loaded shared machine (measured
    # here: CPU <= 35 ms, wall 60-115 ms), hence the slack on wall time and on the event loop
    assert slowest_cpu[3] < GUI_LIMIT_S, slowest_cpu
    assert slowest[2] < 2.5 * GUI_LIMIT_S, slowest
    assert gaps.max() < 5 * GUI_LIMIT_S  # before the fix: 1.9 s (layers made mid-run, plots)


def test_evolve_refuses_bad_input_with_clear_messages(make_napari_viewer, qtbot, notes, tmp_path,
                                                      perlin16, tiny_checkpoint):
    from napari_chflow.widgets.evolve import EvolveWidget

    viewer = make_napari_viewer()
    evolve = EvolveWidget(viewer)
    evolve.select_checkpoint(tiny_checkpoint)
    assert not evolve.run() and "No 3D image layer" in _errors(notes)[-1]

    viewer.add_image(perlin16, name="seed")
    if not torch.cuda.is_available():
        evolve.device_combo.setCurrentText("cuda")
        assert not evolve.run() and "cuda" in _errors(notes)[-1].lower()
        evolve.device_combo.setCurrentText("cpu")

    viewer.add_image(perlin16[:15], name="odd")  # 15 x 16 x 16: not a multiple of downscale 2
    evolve.seed_combo.setCurrentText("odd")
    assert not evolve.run() and "multiple of the downscale" in _errors(notes)[-1]
    evolve.seed_combo.setCurrentText("seed")

    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a checkpoint")
    evolve.select_checkpoint(bad)
    assert not evolve.run()  # the CRNN is loaded when Run is pressed: refused at once
    assert "checkpoint" in _errors(notes)[-1] and not evolve.layers and not evolve.running
    assert [layer.name for layer in viewer.layers] == ["seed", "odd"]


def test_seed_from_the_current_frame_of_a_sequence(make_napari_viewer, qtbot, perlin16,
                                                   tiny_checkpoint):
    viewer = make_napari_viewer()
    evolve, _ = _evolve(viewer, np.stack([perlin16, 1 - perlin16]), tiny_checkpoint, n_tau=1)
    viewer.dims.set_current_step(0, 1)
    assert evolve.run()
    qtbot.waitUntil(lambda: not evolve.running, timeout=WAIT_MS)
    np.testing.assert_array_equal(evolve.layers["solver"].data[0], 1 - perlin16)
    assert evolve.layers["solver"].metadata["chflow"]["seed"]["frame"] == 1


def test_diverged_run_is_reported_and_keeps_its_frames(make_napari_viewer, qtbot, notes,
                                                        perlin16, tmp_path):
    viewer = make_napari_viewer()
    torch.manual_seed(0)
    model = CRNN(CRNNConfig(hidden=2, n_layers=1))
    with torch.no_grad():  # a broken model: its first step is NaN (an IC outside [0, 1] is
        model.to_flux[-1].weight.fill_(float("nan"))  # refused before running, not diverged)
    broken = save_checkpoint(tmp_path / "broken.pt", model, recipe={}, data={})
    evolve, _ = _evolve(viewer, perlin16, broken, n_tau=3, solver="explicit")
    assert evolve.run()
    qtbot.waitUntil(lambda: not evolve.running, timeout=WAIT_MS)
    assert evolve.status == "failed" and "diverged" in _errors(notes)[-1]
    assert evolve.layers["solver"].data.shape[0] == evolve.n_frames >= 1
    np.testing.assert_array_equal(evolve.layers["solver"].data[0], perlin16)


def test_traces_from_two_sequence_layers(make_napari_viewer, qtbot, notes, perlin16):
    from napari_chflow.widgets.traces import TracesWidget

    viewer = make_napari_viewer()
    ref = physics.simulate(perlin16, 2, solver="spectral")
    pred = np.clip(ref + 0.01, 0, 1).astype(np.float32)
    viewer.add_image(ref, name="ref", scale=(0.5, 1, 1, 1))
    viewer.add_image(pred, name="pred", scale=(0.5, 1, 1, 1))
    widget = TracesWidget(viewer)
    widget.seq_combo.setCurrentText("pred")
    widget.ref_combo.setCurrentText("ref")
    widget._on_run_started({"solver": "spectral"})  # rows streaming from a run: refused
    assert not widget.compute_from_layers() and "streaming" in _errors(notes)[-1]
    widget._on_run_finished({"frames": 0, "status": "failed"})
    assert widget.compute_from_layers()
    qtbot.waitUntil(lambda: widget._worker is None, timeout=WAIT_MS)
    runs = widget.traces()
    np.testing.assert_allclose(runs["pred"]["rmse"], metrics.traces(pred, ref)["rmse"])
    np.testing.assert_allclose(runs["ref"]["free_energy_density"],
                               metrics.traces(ref)["free_energy_density"])
    # a prediction on the x1/2 grid (a CRNN sequence) is compared on the full grid
    viewer.add_image(pred[:, ::2, ::2, ::2], name="coarse", scale=(0.5, 2, 2, 2))
    widget.seq_combo.setCurrentText("coarse")
    assert widget.compute_from_layers()
    qtbot.waitUntil(lambda: widget._worker is None, timeout=WAIT_MS)
    expected = metrics.traces(upsample(pred[:, ::2, ::2, ::2], 2), ref)["rmse"]
    np.testing.assert_allclose(widget.traces()["coarse"]["rmse"], expected)


# --------------------------------------------------------------------------- train


def test_train_one_epoch_cancel_resume_and_checkpoint_is_selectable(make_napari_viewer, qtbot,
                                                                     notes, tmp_path):
    from napari_chflow.widgets.evolve import EvolveWidget
    from napari_chflow.widgets.train import TrainWidget

    viewer = make_napari_viewer()
    train, evolve = TrainWidget(viewer), EvolveWidget(viewer)
    data, out = tmp_path / "data", tmp_path / "run"
    train.dataset_edit.setText(str(data))
    for key, value in {"n_seq": 2, "size": 8, "frames": 3}.items():
        train.small[key].setValue(value)
    assert train.generate_dataset()
    qtbot.waitUntil(lambda: not train.running, timeout=WAIT_MS)
    assert len(list((data / "sequences").iterdir())) == 2

    train.out_edit.setText(str(out))
    train.epochs.setValue(1)
    assert train.start()
    train.cancel()  # polled before the first batch: nothing trained, nothing written
    qtbot.waitUntil(lambda: not train.running, timeout=WAIT_MS)
    assert train.checkpoint is None and not (out / "last.pt").exists()

    assert train.start()
    qtbot.waitUntil(lambda: not train.running, timeout=WAIT_MS)
    assert not _errors(notes), notes
    assert [h["epoch"] for h in train.history] == [0] and np.isfinite(train.history[0]["val_loss"])
    qtbot.waitUntil(lambda: train.view.idle, timeout=WAIT_MS)  # the curve is drawn off the GUI
    curve = {line.get_label(): line for line in train.ax.lines}
    np.testing.assert_allclose(curve["train"].get_ydata(), [train.history[0]["train_loss"]])
    assert train.checkpoint == str((out / "best.pt").resolve())
    models = [evolve.model_combo.itemText(i) for i in range(evolve.model_combo.count())]
    assert train.checkpoint in models  # offered in "Evolve and compare"

    train.epochs.setValue(2)
    assert train.start(resume=True)
    qtbot.waitUntil(lambda: not train.running, timeout=WAIT_MS)
    assert [h["epoch"] for h in train.history] == [0, 1]
    assert load_checkpoint(out / "last.pt").extra["train_state"]["epoch"] == 1


# --------------------------------------------------------------------------- rendering


def test_screenshot_shows_both_isosurfaces(make_napari_viewer, qtbot, tiny_checkpoint):
    viewer = make_napari_viewer(show=True)
    phi0 = seeds.two_spheres((32, 32, 32))
    evolve, _ = _evolve(viewer, phi0, tiny_checkpoint, n_tau=1)
    viewer.layers["seed"].visible = False
    assert evolve.run()
    qtbot.waitUntil(lambda: not evolve.running, timeout=WAIT_MS)
    viewer.scene.camera.angles = (0, 0, 90)  # look down z: the volumes sit left and right
    viewer.reset_view()
    image = viewer.screenshot(canvas_only=True, flash=False)
    rgb = image[..., :3].astype(int)
    lit = rgb.sum(axis=-1) > 60  # the background is black
    assert lit.mean() > 0.01, "blank screenshot: nothing rendered"
    columns = np.flatnonzero(lit.any(axis=0))
    half = image.shape[1] // 2
    left, right = lit[:, :half], lit[:, half:]
    assert left.sum() > 100 and right.sum() > 100, (columns.min(), columns.max())
    # solver in blue, CRNN in orange
    assert rgb[:, :half][left][:, 2].mean() > rgb[:, :half][left][:, 0].mean()
    assert rgb[:, half:][right][:, 0].mean() > rgb[:, half:][right][:, 2].mean()
