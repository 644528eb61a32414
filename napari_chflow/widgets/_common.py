"""Shared pieces of the dock widgets: the per-viewer hub, background jobs, notifications, layer
pickers, progress without repaint, background-rendered figures.

The widgets are docked separately, so they talk through one :class:`Hub` per viewer
(:func:`hub_for`): "Evolve and compare" announces runs and per-frame metrics, "Traces" plots
them, "Train surrogate" publishes new checkpoints that "Evolve and compare" offers.

Everything slow runs in a :class:`Job` (a daemon thread): the GUI thread only collects
parameters, creates layers and shows results, and closing napari never waits for a computation.
"""

from __future__ import annotations

import atexit
import logging
import math
import threading
import time
import weakref
from pathlib import Path

import numpy as np
from magicgui.widgets import ComboBox
from napari.layers import Image
from napari.utils import notifications
from qtpy.QtCore import QObject, QTimer, Signal
from qtpy.QtGui import QImage, QPainter
from qtpy.QtWidgets import QApplication, QWidget

from napari_chflow.plots import DRAW_LOCK

DEVICES = ("cpu", "cuda")
ISO = {"rendering": "iso", "iso_threshold": 0.5}
PHI_MARGIN = 0.25  # phi may leave [0, 1] by this much (tanh profiles, CRNN frames) before refusal
LOG = logging.getLogger("napari_chflow")
EXIT_WAIT_S = 60.0  # at interpreter exit, how long a stopped job may take to end its step
_HUBS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
_JOBS: weakref.WeakSet = weakref.WeakSet()  # jobs whose thread may still run


class Hub(QObject):
    """Signals shared by the widgets of one viewer (all emitted on the GUI thread)."""

    run_started = Signal(dict)  # {"n_tau": int, "seed": layer name, "solver": solver name}
    frame_ready = Signal(dict)  # one row of per-frame metrics, see widgets._compare.COLUMNS
    run_finished = Signal(dict)  # {"frames", "status": done|cancelled|failed, "solver_layer", ...}
    checkpoints_changed = Signal()

    def __init__(self) -> None:
        super().__init__()
        self.checkpoints: list[str] = []

    def add_checkpoint(self, path: str | Path) -> str:
        """Offer a checkpoint file in every "Evolve and compare" widget of this viewer; returns
        the absolute path as listed."""
        path = str(Path(path).resolve())
        if path not in self.checkpoints:
            self.checkpoints.append(path)
        self.checkpoints_changed.emit()
        return path

    def remove_checkpoint(self, path: str) -> None:
        """Stop offering ``path`` (e.g. it failed to load)."""
        if path in self.checkpoints:
            self.checkpoints.remove(path)
            self.checkpoints_changed.emit()


def _unwrapped(viewer):
    """napari hands plugins a proxy of the viewer (one per widget): key on the viewer itself."""
    return getattr(viewer, "__wrapped__", viewer)


def hub_for(viewer) -> Hub:
    """The :class:`Hub` of ``viewer`` (created on first use, dropped with the viewer)."""
    viewer = _unwrapped(viewer)
    hub = _HUBS.get(viewer)
    if hub is None:
        hub = _HUBS[viewer] = Hub()
    return hub


# --------------------------------------------------------------------------- messages


def show_error(message: str, details: str | BaseException | None = None) -> None:
    """A red napari notification (short: the fix first); ``details`` (e.g. the library's full
    message) go to the log only."""
    if details is not None:
        LOG.warning("%s (details: %s)", message, details)
    notifications.show_error(message)


def show_warning(message: str) -> None:
    notifications.show_warning(message)


def show_info(message: str) -> None:
    notifications.show_info(message)


def problem_only(error: BaseException | str) -> str:
    """The problem part of a library message ("problem: fix" or "problem; fix"): the library's
    fixes are written for the command line and Python, the GUI names its own (the whole message
    goes to the log)."""
    text = str(error).strip()
    for separator in ("; ", ": "):
        text = text.split(separator)[0]
    return text


def plural(n: int, word: str) -> str:
    """``"1 frame"``, ``"2 frames"``."""
    return f"{n} {word}{'' if n == 1 else 's'}"


def check_device(name: str) -> str | None:
    """``None`` when ``name`` is usable, else the message to show (e.g. CUDA chosen but absent)."""
    from napari_chflow.physics import resolve_device

    try:
        resolve_device(name)
    except ValueError:
        return f"Choose 'cpu' as the device: {name} is not available on this machine"
    return None


def check_phi(phi: np.ndarray, name: str) -> str | None:
    """``None`` when ``phi`` can seed a run, else the message to show: finite, within [0, 1]
    (up to :data:`PHI_MARGIN`), at least 2 voxels along each axis."""
    if min(phi.shape) < 2:
        return f"Pick a 3D volume as the seed layer: '{name}' has shape {phi.shape}"
    if not np.isfinite(phi).all():
        return (f"Replace the NaN/inf values of '{name}' (or pick another seed layer): phi must be "
                "finite")
    lo, hi = float(phi.min()), float(phi.max())
    if lo < -PHI_MARGIN or hi > 1 + PHI_MARGIN:
        return (f"Rescale the seed layer to [0, 1]: '{name}' has values from {lo:.3g} to "
                f"{hi:.3g} (phi is a volume fraction)")
    return None


# --------------------------------------------------------------------------- layers


def connect_while_alive(widget: QWidget, emitter, callback) -> None:
    """Connect a napari event to ``callback`` until ``widget`` is destroyed (dock closed), so the
    viewer never calls into a deleted Qt object."""
    emitter.connect(callback)
    widget.destroyed.connect(lambda *_: emitter.disconnect(callback))


def is_volume(layer) -> bool:
    """A napari Image layer ``(Z, Y, X)`` or ``(T, Z, Y, X)``: something that can seed a run."""
    return (isinstance(layer, Image) and layer.ndim in (3, 4) and not layer.rgb
            and not layer.multiscale)


def is_sequence(layer) -> bool:
    """A napari Image layer ``(T, Z, Y, X)``."""
    return is_volume(layer) and layer.ndim == 4


def volume_data(layer, viewer) -> tuple[np.ndarray, int | None]:
    """``(phi (Z, Y, X) float32, frame)``: the layer's volume, for a sequence the frame at the
    viewer's current time (``frame`` is None for 3D layers). Copied, so edits do not leak in."""
    if layer.ndim == 3:
        return np.array(layer.data, dtype=np.float32, copy=True), None
    t = layer.world_to_data(viewer.dims.point[-4:])[0]
    frame = int(np.clip(round(float(t)), 0, layer.data.shape[0] - 1))
    return np.array(layer.data[frame], dtype=np.float32, copy=True), frame


def layer_picker(owner: QWidget, viewer, accept=is_volume, **kwargs) -> ComboBox:
    """A magicgui ComboBox of the viewer's Image layers that pass ``accept`` (value: the layer),
    kept in sync with the layer list (added, removed, renamed) while ``owner`` lives; a new
    choice defaults to the viewer's selected layer."""
    viewer = _unwrapped(viewer)

    def choices(_widget):
        return [(layer.name, layer) for layer in viewer.layers if accept(layer)]

    picker = ComboBox(choices=choices, annotation=Image, nullable=False, **kwargs)

    def refresh(*_args) -> None:
        before = picker.value
        picker.reset_choices()
        active = viewer.layers.selection.active
        if before is None and active is not None and accept(active):
            picker.value = active

    for name in ("inserted", "removed", "reordered", "renamed"):
        connect_while_alive(owner, getattr(viewer.layers.events, name), refresh)
    refresh()
    return picker


# --------------------------------------------------------------------------- progress


def set_progress(bar, value: int, maximum: int | None = None) -> None:
    """Set a magicgui ProgressBar (or QProgressBar) without the synchronous repaint that
    ``QProgressBar.setValue`` does: that repaint makes Qt compose the window at once, which
    renders napari's 3D canvas inside the caller. The bar is repainted with the next frame."""
    native = getattr(bar, "native", bar)
    native.setUpdatesEnabled(False)
    try:
        if maximum is not None:
            native.setRange(0, maximum)
        native.setValue(int(value))
    finally:
        native.setUpdatesEnabled(True)  # schedules an ordinary (deferred) update


class Throttle:
    """Call ``func`` at most once per ``interval`` seconds: a call inside the interval is
    deferred to its end (one QTimer, owned by ``parent``); :meth:`flush` runs it now."""

    def __init__(self, func, interval: float = 0.25, parent: QObject | None = None) -> None:
        self.func, self.interval = func, interval
        self._last = -np.inf
        self._timer = QTimer(parent)
        self._timer.setSingleShot(True)
        self._timer.timeout.connect(self._fire)

    def __call__(self) -> None:
        if self._timer.isActive():
            return
        wait = self.interval - (time.monotonic() - self._last)
        if wait <= 0:
            self._timer.start(0)  # from the event loop: after the paint events already queued
        else:
            self._timer.start(int(wait * 1000) + 1)

    def _fire(self) -> None:
        self._timer.stop()
        self._last = time.monotonic()
        self.func()

    def flush(self) -> None:
        if self._timer.isActive():
            self._fire()


# --------------------------------------------------------------------------- jobs


class _JobRelay(QObject):
    """Lives on the GUI thread: signals emitted from the job's thread are queued to it."""

    event = Signal(object)
    changed = Signal()
    done = Signal(object)


class Job:
    """``func(job, *args)`` in a daemon thread, talking to the GUI thread through queued signals.

    Inside ``func``: :meth:`post` sends one event (every one is delivered, to ``on_event``);
    :meth:`notify` says "new state" (coalesced: at most one is queued, ``on_change`` then reads
    the latest state itself, so a slow GUI never accumulates a backlog); :attr:`stopped` is set by
    :meth:`stop`, by closing the owner widget and by quitting the application: poll it. When
    ``func`` returns, ``on_done(result, error)`` runs on the GUI thread (``error`` the exception
    it raised, or None).

    The thread is a daemon and the GUI never waits for it: closing napari returns at once, a
    running computation ends at its next check of :attr:`stopped`. Only the interpreter's exit
    (after the windows are gone) waits for that (:func:`_end_jobs`), so that no computation is
    cut off inside a library call.
    """

    def __init__(self, owner: QWidget, func, *args, on_event=None, on_change=None,
                 on_done=None, name: str = "napari-chflow job") -> None:
        self.func, self.args, self.name = func, args, name
        self.stopped = threading.Event()
        self._pending = threading.Event()
        self._relay = _JobRelay(owner)
        if on_event is not None:
            self._relay.event.connect(on_event)
        if on_change is not None:
            self._relay.changed.connect(lambda: (self._pending.clear(), on_change()))
        self._relay.done.connect(lambda outcome: self._finish(on_done, outcome))
        owner.destroyed.connect(lambda *_: self.stopped.set())
        self._app = QApplication.instance()
        if self._app is not None:
            self._app.aboutToQuit.connect(self.stopped.set)
        self.thread: threading.Thread | None = None
        self.finished = False

    def start(self) -> Job:
        self.thread = threading.Thread(target=self._run, daemon=True, name=self.name)
        _JOBS.add(self)
        self.thread.start()
        return self

    def stop(self) -> None:
        self.stopped.set()

    def post(self, payload) -> None:
        self._emit("event", payload)

    def notify(self) -> None:
        if not self._pending.is_set():
            self._pending.set()
            self._emit("changed")

    def _emit(self, signal: str, *args) -> None:
        try:
            getattr(self._relay, signal).emit(*args)
        except RuntimeError:  # the widget (and its relay) was deleted: nobody listens
            self.stopped.set()

    def _run(self) -> None:
        try:
            outcome = (self.func(self, *self.args), None)
        except Exception as exc:  # noqa: BLE001 - handed to on_done on the GUI thread
            outcome = (None, exc)
        self._emit("done", outcome)

    def _finish(self, on_done, outcome) -> None:
        self.finished = True
        if self._app is not None:
            try:
                self._app.aboutToQuit.disconnect(self.stopped.set)
            except (TypeError, RuntimeError):
                pass
        if on_done is not None:
            on_done(*outcome)


@atexit.register
def _end_jobs(timeout: float = EXIT_WAIT_S) -> None:
    """At interpreter exit: stop every job and let it end its current step (torch and friends
    abort the process if a thread is still inside them while the interpreter shuts down)."""
    jobs = [job for job in list(_JOBS) if job.thread is not None and job.thread.is_alive()]
    for job in jobs:
        job.stop()
    deadline = time.monotonic() + timeout
    for job in jobs:
        job.thread.join(max(0.0, deadline - time.monotonic()))


# --------------------------------------------------------------------------- figures


class _Relay(QObject):
    """Lives on the GUI thread: a signal emitted from another thread is queued to it."""

    done = Signal(object)


class _RenderState:
    """What the GUI thread and the render thread share, guarded by ``cond``."""

    def __init__(self, figure, draw, relay: _Relay) -> None:
        self.figure, self.draw, self.relay = figure, draw, relay
        self.cond = threading.Condition()
        self.job: tuple | None = None  # (serial, payload, width_px, height_px, ratio, urgent)
        self.closed = False

    def close(self) -> None:
        with self.cond:
            self.closed = True
            self.cond.notify()


def _render_loop(state: _RenderState) -> None:
    """Render thread: draw the latest job, send ``(serial, rgba, pixel_ratio)`` or an exception."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    canvas = FigureCanvasAgg(state.figure)
    rest_until = 0.0

    def resting() -> bool:
        return not state.job[5] and time.monotonic() < rest_until

    while True:
        with state.cond:
            while not state.closed and (state.job is None or resting()):
                state.cond.wait(None if state.job is None else rest_until - time.monotonic())
            if state.closed:
                return
            (serial, payload, width, height, ratio, _), state.job = state.job, None
        started = time.monotonic()
        try:
            dpi = 100.0 * ratio
            state.figure.set_dpi(dpi)
            state.figure.set_size_inches(width / dpi, height / dpi, forward=False)
            with DRAW_LOCK:
                state.draw(payload)
                canvas.draw()
            result = (serial, np.asarray(canvas.buffer_rgba()).copy(), ratio)
        except Exception as exc:  # noqa: BLE001 - any failure is re-raised on the GUI thread
            result = (serial, exc, ratio)
        rest_until = 2 * time.monotonic() - started  # draw at most half of the time
        try:
            state.relay.done.emit(result)
        except RuntimeError:  # the widget was deleted meanwhile
            return


class BackgroundFigure(QWidget):
    """A matplotlib ``figure`` drawn by a background thread and shown as an image.

    :meth:`request` queues ``payload`` for ``draw(payload)``, which runs in the render thread (it
    updates the figure's artists), followed by the Agg render at the widget's size; the GUI thread
    only shows the finished pixels, so however slow matplotlib is, a redraw never blocks it. The
    figure belongs to the render thread once requests start: read it, never change it, from the
    GUI thread. Pending requests are merged (the latest payload wins) and the thread rests as long
    as it drew before taking the next (``urgent`` requests skip the rest), so drawing takes at
    most half of one core; rate-limit requests upstream too (e.g. :class:`Throttle`).
    :attr:`idle` tells whether the last request is on screen.
    """

    rendered = Signal(int)  # serial of the render just shown

    def __init__(self, figure, draw, parent=None) -> None:
        super().__init__(parent)
        self.figure = figure
        self.requested = self.shown = 0
        self._payload = None
        self._image: QImage | None = None
        self._relay = _Relay(self)
        self._relay.done.connect(self._show)
        self._state = state = _RenderState(figure, draw, self._relay)
        self.destroyed.connect(lambda *_: state.close())
        self._thread = threading.Thread(target=_render_loop, args=(state,), daemon=True,
                                        name="napari-chflow figure")
        self._thread.start()

    @property
    def idle(self) -> bool:
        """True when the latest request has been drawn and shown."""
        return self.shown == self.requested

    def request(self, payload, urgent: bool = False) -> int:
        """Draw ``payload`` in the background (at the widget's current size); returns its serial.
        ``urgent``: draw it without the usual rest (e.g. the final state of a run)."""
        self.requested += 1
        self._payload = payload
        ratio = float(self.devicePixelRatioF())
        width, height = max(self.width(), 50), max(self.height(), 50)
        job = (self.requested, payload, round(width * ratio), round(height * ratio), ratio, urgent)
        with self._state.cond:
            self._state.job = job
            self._state.cond.notify()
        return self.requested

    def close_renderer(self) -> None:
        """Stop the render thread (also done when the widget is destroyed)."""
        self._state.close()

    def _show(self, result) -> None:
        serial, rgba, ratio = result
        if isinstance(rgba, BaseException):
            self.shown = serial
            raise rgba
        height, width = rgba.shape[:2]
        image = QImage(rgba.data, width, height, 4 * width, QImage.Format.Format_RGBA8888).copy()
        image.setDevicePixelRatio(ratio)
        self._image, self.shown = image, serial
        self.update()
        self.rendered.emit(serial)

    def paintEvent(self, event) -> None:
        if self._image is not None:
            painter = QPainter(self)
            painter.drawImage(self.rect(), self._image)
            painter.end()

    def resizeEvent(self, event) -> None:
        super().resizeEvent(event)
        if self._payload is not None:  # redraw at the new size
            self.request(self._payload)


def fmt_time(t: float) -> str:
    """Model time for labels: ``"t = 12.5"``."""
    return f"t = {t:.4g}" if math.isfinite(t) else "t = ?"
