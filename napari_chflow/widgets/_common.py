"""Shared pieces of the dock widgets: the per-viewer hub, notifications, small form helpers.

The widgets are docked separately, so they talk through one :class:`Hub` per viewer
(:func:`hub_for`): "Evolve and compare" announces runs and per-frame metrics, "Traces" plots
them, "Train surrogate" publishes new checkpoints that "Evolve and compare" offers.
"""

from __future__ import annotations

import threading
import time
import weakref
from pathlib import Path

import numpy as np
from napari.layers import Image
from napari.utils import notifications
from qtpy.QtCore import QObject, QTimer, Signal
from qtpy.QtGui import QImage, QPainter
from qtpy.QtWidgets import (
    QComboBox,
    QDoubleSpinBox,
    QFileDialog,
    QHBoxLayout,
    QLineEdit,
    QPushButton,
    QSpinBox,
    QWidget,
)

from napari_chflow.plots import DRAW_LOCK

DEVICES = ("cpu", "cuda")
ISO = {"rendering": "iso", "iso_threshold": 0.5}
_HUBS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


class Hub(QObject):
    """Signals shared by the widgets of one viewer (all emitted on the GUI thread)."""

    run_started = Signal(dict)  # {"n_tau": int, "seed": layer name, "solver": solver name}
    frame_ready = Signal(dict)  # one row of per-frame metrics, see widgets._compare.FrameMetrics
    run_finished = Signal(dict)  # {"frames", "status": done|cancelled|failed, "solver_layer", ...}
    checkpoints_changed = Signal()

    def __init__(self) -> None:
        super().__init__()
        self.checkpoints: list[str] = []

    def add_checkpoint(self, path: str | Path) -> None:
        """Offer a checkpoint file in every "Evolve and compare" widget of this viewer."""
        path = str(Path(path).resolve())
        if path not in self.checkpoints:
            self.checkpoints.append(path)
        self.checkpoints_changed.emit()


def hub_for(viewer) -> Hub:
    """The :class:`Hub` of ``viewer`` (created on first use, dropped with the viewer)."""
    hub = _HUBS.get(viewer)
    if hub is None:
        hub = _HUBS[viewer] = Hub()
    return hub


def show_error(message: str) -> None:
    """A red napari notification (also logged); use for input the user must fix."""
    notifications.show_error(message)


def show_warning(message: str) -> None:
    notifications.show_warning(message)


def show_info(message: str) -> None:
    notifications.show_info(message)


def connect_while_alive(widget: QWidget, emitter, callback) -> None:
    """Connect a napari event to ``callback`` until ``widget`` is destroyed (dock closed), so the
    viewer never calls into a deleted Qt object."""
    emitter.connect(callback)
    widget.destroyed.connect(lambda *_: emitter.disconnect(callback))


def check_device(name: str) -> str | None:
    """``None`` when ``name`` is usable, else the message to show (e.g. CUDA chosen but absent)."""
    from napari_chflow.physics import resolve_device

    try:
        resolve_device(name)
    except ValueError as exc:
        return str(exc)
    return None


def is_volume(layer) -> bool:
    """A napari Image layer ``(Z, Y, X)`` or ``(T, Z, Y, X)``: something that can seed a run."""
    return (isinstance(layer, Image) and layer.ndim in (3, 4) and not layer.rgb
            and not layer.multiscale)


def volume_data(layer, viewer) -> tuple[np.ndarray, int | None]:
    """``(phi (Z, Y, X) float32, frame)``: the layer's volume, for a sequence the frame at the
    viewer's current time (``frame`` is None for 3D layers). Copied, so edits do not leak in."""
    if layer.ndim == 3:
        return np.array(layer.data, dtype=np.float32, copy=True), None
    t = layer.world_to_data(viewer.dims.point[-4:])[0]
    frame = int(np.clip(round(float(t)), 0, layer.data.shape[0] - 1))
    return np.array(layer.data[frame], dtype=np.float32, copy=True), frame


class LayerCombo(QComboBox):
    """Names of the viewer's layers that pass ``accept``; kept in sync with the layer list."""

    def __init__(self, viewer, accept=is_volume, parent=None) -> None:
        super().__init__(parent)
        self._viewer, self._accept = viewer, accept
        for emitter in (viewer.layers.events.inserted, viewer.layers.events.removed):
            connect_while_alive(self, emitter, self.refresh)
        connect_while_alive(self, viewer.layers.events.inserted, self._watch_name)
        for layer in viewer.layers:
            connect_while_alive(self, layer.events.name, self.refresh)
        self.refresh()

    def _watch_name(self, event) -> None:
        connect_while_alive(self, event.value.events.name, self.refresh)

    def refresh(self, *_args) -> None:
        current = self.currentText()
        names = [layer.name for layer in self._viewer.layers if self._accept(layer)]
        self.blockSignals(True)
        self.clear()
        self.addItems(names)
        if current in names:
            self.setCurrentText(current)
        elif self._viewer.layers.selection.active is not None:
            active = self._viewer.layers.selection.active.name
            if active in names:
                self.setCurrentText(active)
        self.blockSignals(False)

    def layer(self):
        """The chosen layer, or ``None`` when the viewer has none that qualifies."""
        name = self.currentText()
        return next((layer for layer in self._viewer.layers if layer.name == name), None)


def spin(value: int, lo: int, hi: int, step: int = 1) -> QSpinBox:
    box = QSpinBox()
    box.setRange(lo, hi)
    box.setSingleStep(step)
    box.setValue(value)
    return box


def dspin(value: float, lo: float, hi: float, step: float = 0.1, decimals: int = 2
          ) -> QDoubleSpinBox:
    box = QDoubleSpinBox()
    box.setDecimals(decimals)
    box.setRange(lo, hi)
    box.setSingleStep(step)
    box.setValue(value)
    return box


def combo(items, current: str | None = None) -> QComboBox:
    box = QComboBox()
    box.addItems(list(items))
    if current is not None:
        box.setCurrentText(current)
    return box


class PathEdit(QWidget):
    """A line edit with a "..." browse button; ``mode`` is "file", "save" or "dir"."""

    def __init__(self, mode: str = "file", text: str = "", filter: str = "", parent=None) -> None:
        super().__init__(parent)
        self.mode, self.filter = mode, filter
        self.edit = QLineEdit(text)
        button = QPushButton("...")
        button.setFixedWidth(32)
        button.clicked.connect(self._browse)
        row = QHBoxLayout(self)
        row.setContentsMargins(0, 0, 0, 0)
        row.addWidget(self.edit)
        row.addWidget(button)

    def _browse(self) -> None:
        if self.mode == "dir":
            path = QFileDialog.getExistingDirectory(self, "Choose a folder", self.text())
        elif self.mode == "save":
            path, _ = QFileDialog.getSaveFileName(self, "Save as", self.text(), self.filter)
        else:
            path, _ = QFileDialog.getOpenFileName(self, "Choose a file", self.text(), self.filter)
        if path:
            self.edit.setText(path)

    def text(self) -> str:
        return self.edit.text().strip()

    def setText(self, text: str) -> None:
        self.edit.setText(str(text))


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
            self._fire()
        else:
            self._timer.start(int(wait * 1000) + 1)

    def _fire(self) -> None:
        self._timer.stop()
        self._last = time.monotonic()
        self.func()

    def flush(self) -> None:
        if self._timer.isActive():
            self._fire()


class _Relay(QObject):
    """Lives on the GUI thread: a signal emitted from another thread is queued to it."""

    done = Signal(object)


class _RenderState:
    """What the GUI thread and the render thread share, guarded by ``cond``."""

    def __init__(self, figure, draw, relay: _Relay) -> None:
        self.figure, self.draw, self.relay = figure, draw, relay
        self.cond = threading.Condition()
        self.job: tuple | None = None  # (serial, payload, width_px, height_px, pixel_ratio)
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
    while True:
        with state.cond:
            while not state.closed and (state.job is None or time.monotonic() < rest_until):
                state.cond.wait(None if state.job is None else rest_until - time.monotonic())
            if state.closed:
                return
            (serial, payload, width, height, ratio), state.job = state.job, None
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
    as it drew before taking the next, so drawing takes at most half of one core; rate-limit
    requests upstream too (e.g. :class:`Throttle`). :attr:`idle` tells whether the last request
    is on screen.
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

    def request(self, payload) -> int:
        """Draw ``payload`` in the background (at the widget's current size); returns its serial."""
        self.requested += 1
        self._payload = payload
        ratio = float(self.devicePixelRatioF())
        width, height = max(self.width(), 50), max(self.height(), 50)
        job = (self.requested, payload, round(width * ratio), round(height * ratio), ratio)
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
