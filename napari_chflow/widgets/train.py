"""Dock widget "Train surrogate": train a CRNN off the GUI thread with a live loss curve.

Calls :func:`napari_chflow.training.train` in a napari ``thread_worker``; its ``callback`` runs in
that thread and is relayed to the GUI through a queued Qt signal (the loss curve is drawn by a
background thread, :class:`._common.BackgroundFigure`), ``should_stop`` implements
Cancel (the last completed epoch stays in ``last.pt``; Resume continues from it). The resulting
``best.pt`` is offered in "Evolve and compare". "Generate small dataset" runs
:func:`napari_chflow.dataset.generate_dataset` with a tiny configuration, also in a worker.
"""

from __future__ import annotations

import dataclasses
import threading
from pathlib import Path

from matplotlib.figure import Figure
from napari.qt.threading import thread_worker
from qtpy.QtCore import QObject, Signal
from qtpy.QtWidgets import (
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
    BackgroundFigure,
    PathEdit,
    Throttle,
    check_device,
    combo,
    dspin,
    hub_for,
    show_error,
    show_info,
    spin,
)


class _Relay(QObject):
    """Lives on the GUI thread; emitting from the worker thread queues the call there."""

    event = Signal(dict)


def small_dataset_config(n_seq: int = 6, size: int = 16, frames: int = 6):
    """A :class:`~napari_chflow.dataset.DatasetConfig` (the ``chflow dataset`` recipe) small enough
    to generate in seconds on a CPU: ``n_seq`` sequences of ``frames`` frames on ``size^3``."""
    from napari_chflow.dataset import DatasetConfig

    return DatasetConfig(n_seq=n_seq, frames=frames, size=size, max_burn_in_tau=10)


@thread_worker(ignore_errors=True)
def _generate_worker(out_dir: str, config, should_stop) -> str | None:
    from napari_chflow.dataset import generate_dataset

    try:
        result = generate_dataset(out_dir, config, progress=False, should_stop=should_stop)
    except ValueError as exc:
        return str(exc)
    if result["stopped"]:
        return "cancelled: press 'Generate small dataset' again to finish it"
    return None


@thread_worker(ignore_errors=True)
def _train_worker(dataset_dir, out_dir, config, resume, callback, should_stop):
    """Return ``(best.pt path or None, error message or None)``."""
    from napari_chflow.training import train

    try:
        best = train(dataset_dir, out_dir, config, resume=resume, progress=False,
                     callback=callback, should_stop=should_stop)
    except ValueError as exc:  # TrainingError, CheckpointError, dataset errors: they name the fix
        return None, str(exc)
    return (str(best) if Path(best).is_file() else None), None


class TrainWidget(QWidget):
    """Dataset folder, epochs, learning rate, device, output folder; Train / Cancel / Resume."""

    def __init__(self, napari_viewer, parent=None) -> None:
        super().__init__(parent)
        from napari_chflow.training import TrainConfig

        self.viewer, self.hub = napari_viewer, hub_for(napari_viewer)
        self.worker = None
        self.checkpoint: str | None = None
        self.history: list[dict] = []
        self.batch_losses: list[tuple[float, float]] = []  # (fractional epoch, loss)
        self._stop = threading.Event()
        self.destroyed.connect(lambda *_: self._stop.set())  # closing napari stops training
        self._relay = _Relay()
        self._relay.event.connect(self._on_event)

        d = TrainConfig()
        self.dataset_edit = PathEdit("dir")
        self.generate_button = QPushButton("Generate small dataset")
        self.generate_button.clicked.connect(self.generate_dataset)
        self.small = {"n_seq": spin(6, 2, 1000), "size": spin(16, 8, 128, 8),
                      "frames": spin(6, 2, 100)}
        small_row = QHBoxLayout()
        tips = ("sequences", "grid size N (N^3)", "frames per sequence")
        for box, prefix, tip in zip(self.small.values(), ("seq ", "N ", "T "), tips):
            box.setPrefix(prefix)
            box.setToolTip(tip)
            small_row.addWidget(box)
        self.epochs = spin(10, 1, 100_000)
        self.lr = dspin(d.lr, 1e-7, 1.0, 1e-4, decimals=6)
        self.device_combo = combo(DEVICES, "cpu")
        self.out_edit = PathEdit("dir")
        self.train_button, self.cancel_button = QPushButton("Train"), QPushButton("Cancel")
        self.resume_button = QPushButton("Resume")
        self.train_button.clicked.connect(lambda: self.start(resume=False))
        self.resume_button.clicked.connect(lambda: self.start(resume=True))
        self.cancel_button.clicked.connect(self.cancel)
        self.cancel_button.setEnabled(False)
        self.progress = QProgressBar()
        self.status_label = QLabel("")
        self.status_label.setWordWrap(True)
        self.figure = Figure(figsize=(3.2, 2.4))
        self.figure.subplots_adjust(left=0.2, right=0.96, top=0.88, bottom=0.2)
        self.ax = self.figure.add_subplot()
        self.view = BackgroundFigure(self.figure, self._draw)
        self.view.setMinimumHeight(150)
        self._redraw = Throttle(self.redraw, 0.5, self)

        form = QFormLayout()
        form.addRow("dataset folder", self.dataset_edit)
        form.addRow("", self.generate_button)
        form.addRow("small dataset", small_row)
        form.addRow("epochs", self.epochs)
        form.addRow("learning rate", self.lr)
        form.addRow("device", self.device_combo)
        form.addRow("output folder", self.out_edit)
        buttons = QHBoxLayout()
        for b in (self.train_button, self.cancel_button, self.resume_button):
            buttons.addWidget(b)
        layout = QVBoxLayout(self)
        layout.addLayout(form)
        layout.addLayout(buttons)
        layout.addWidget(self.progress)
        layout.addWidget(self.status_label)
        layout.addWidget(self.view, 1)
        self.redraw()

    # ------------------------------------------------------------------ state
    @property
    def running(self) -> bool:
        return self.worker is not None

    def _busy(self, busy: bool) -> None:
        for b in (self.train_button, self.resume_button, self.generate_button):
            b.setEnabled(not busy)
        self.cancel_button.setEnabled(busy)

    def _done(self) -> None:
        self.worker = None
        self._busy(False)

    # ------------------------------------------------------------------ dataset
    def generate_dataset(self) -> bool:
        """Write a small dataset (``chflow dataset`` recipe, sizes from the form) into the dataset
        folder, in a worker; Cancel stops between frames and a second press resumes."""
        folder = self.dataset_edit.text()
        if self.running or not folder:
            show_error("Choose an (empty or new) dataset folder first, then press "
                       "'Generate small dataset'")
            return False
        try:
            config = small_dataset_config(**{k: box.value() for k, box in self.small.items()})
        except ValueError as exc:
            show_error(str(exc))
            return False
        self._stop.clear()
        self._busy(True)
        self.progress.setRange(0, 0)  # busy indicator: the generator reports no progress
        self.status_label.setText(f"generating {config.n_seq} sequences in {folder} ...")
        self.worker = _generate_worker(folder, config, self._stop.is_set)
        self.worker.returned.connect(self._on_generated)
        self.worker.finished.connect(self._done)
        self.worker.start()
        return True

    def _on_generated(self, message) -> None:
        self.progress.setRange(0, 1)
        self.progress.setValue(1 if message is None else 0)
        if message is None:
            self.status_label.setText(f"dataset ready in {self.dataset_edit.text()}")
        elif self._stop.is_set():
            self.status_label.setText(message)
        else:
            show_error(message)
            self.status_label.setText("dataset generation failed")

    # ------------------------------------------------------------------ training
    def _config(self, resume: bool):
        from napari_chflow.training import TrainConfig, stored_config

        device = self.device_combo.currentText()
        stored = stored_config(self.out_edit.text()) if resume else None
        if stored is not None:  # a resumed run keeps its recipe; only epochs and device change
            self.lr.setValue(stored.lr)
        base = stored or TrainConfig(lr=self.lr.value())
        return dataclasses.replace(base, epochs=self.epochs.value(), device=device)

    def start(self, resume: bool = False) -> bool:
        """Train (or resume) in a worker; False (with a notification) when the inputs are wrong."""
        dataset, out = self.dataset_edit.text(), self.out_edit.text()
        if self.running:
            show_error("Training is already running: wait for it or press Cancel")
            return False
        if not dataset or not out:
            show_error("Choose a dataset folder (or generate a small one) and an output folder "
                       "first")
            return False
        problem = check_device(self.device_combo.currentText())
        if problem:
            show_error(problem)
            return False
        try:
            config = self._config(resume)
        except ValueError as exc:  # unreadable last.pt
            show_error(str(exc))
            return False
        self._stop.clear()
        self.history, self.batch_losses = [], []
        self._busy(True)
        self.progress.setRange(0, config.epochs)
        self.status_label.setText("resuming ..." if resume else "loading the dataset ...")
        self.worker = _train_worker(dataset, out, config, resume, self._relay.event.emit,
                                    self._stop.is_set)
        self.worker.returned.connect(self._on_trained)
        self.worker.finished.connect(self._done)
        self.worker.start()
        return True

    def cancel(self) -> None:
        """Stop before the next batch; completed epochs are kept (press Resume to continue)."""
        self._stop.set()
        self.status_label.setText("cancelling ...")

    def _on_event(self, event: dict) -> None:
        kind = event.get("event")
        if kind == "start":
            self.history = list(event.get("history", []))
            self.progress.setValue(len(self.history))
        elif kind == "batch":
            epoch, batch, n = event["epoch"], event["batch"], event["n_batches"]
            loss = event["train_loss"]
            self.batch_losses.append((epoch + (batch + 1) / n, loss))  # at fractional epochs
            self.status_label.setText(f"epoch {epoch + 1}, batch {batch + 1}/{n}: loss {loss:.3g}")
        elif kind == "epoch":
            self.history.append(event)
            self.progress.setValue(event["epoch"] + 1)
            train, val = event["train_loss"], event["val_loss"]
            self.status_label.setText(f"epoch {event['epoch'] + 1}: train {train:.3g}, "
                                      f"validation {val:.3g}")
        self._redraw()

    def _on_trained(self, result) -> None:
        best, message = result
        self._redraw.flush()
        if message:
            show_error(message)
            self.status_label.setText("training failed")
            return
        stopped = self._stop.is_set()
        if best is None:
            show_info("Training stopped before its first epoch completed: no checkpoint written")
            self.status_label.setText("cancelled (no checkpoint)")
            return
        self.checkpoint = best
        self.hub.add_checkpoint(best)
        self.status_label.setText(f"{'cancelled' if stopped else 'done'}: {best} "
                                  "(selectable in 'Evolve and compare')")
        show_info(f"CRNN checkpoint saved: {best}")

    def redraw(self) -> None:
        """Queue a redraw of the loss curve (drawn in the background)."""
        self.view.request((list(self.batch_losses), [dict(h) for h in self.history]))

    def _draw(self, job) -> None:
        """Render thread: the loss per batch, and train/validation loss per epoch (log y)."""
        batch_losses, history = job
        ax = self.ax
        ax.clear()
        if batch_losses:
            x, y = zip(*batch_losses)
            ax.plot(x, y, color="0.75", lw=0.8, label="batch")
        if history:
            x = [h["epoch"] + 1 for h in history]
            ax.plot(x, [h["train_loss"] for h in history], "o-", label="train")
            ax.plot(x, [h["val_loss"] for h in history], "s-", label="validation")
        if batch_losses or history:
            ax.set_yscale("log")
            ax.legend(fontsize="small")
        ax.set(xlabel="epoch", ylabel="MSE loss", title="training loss")
