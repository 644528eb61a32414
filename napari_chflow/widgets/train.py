"""Dock widget "Train surrogate": train a CRNN off the GUI thread with a live loss curve.

The form is made of magicgui widgets. Train / Resume check the folders on the GUI thread (cheap
file tests, so the common mistakes are named before anything starts), then call
:func:`napari_chflow.training.train` in a :class:`._common.Job`; its ``callback`` events are
relayed to the GUI (the loss curve is drawn by a background thread,
:class:`._common.BackgroundFigure`), ``should_stop`` implements Cancel (the last completed epoch
stays in ``last.pt``; Resume continues from it) and closing napari. The resulting ``best.pt`` is
offered in "Evolve and compare". "Generate small dataset" runs
:func:`napari_chflow.dataset.generate_dataset` with a tiny configuration, also in a job.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

from magicgui.widgets import (
    ComboBox,
    Container,
    FileEdit,
    FloatSpinBox,
    Label,
    ProgressBar,
    PushButton,
    SpinBox,
)
from matplotlib.figure import Figure
from qtpy.QtWidgets import QVBoxLayout, QWidget

from ._common import (
    DEVICES,
    BackgroundFigure,
    Job,
    Throttle,
    check_device,
    hub_for,
    plural,
    problem_only,
    set_progress,
    show_error,
    show_info,
)

RUN_FILES = ("last.pt", "best.pt")  # what a training run leaves in its output folder


def small_dataset_config(n_seq: int = 6, size: int = 16, frames: int = 6):
    """A :class:`~napari_chflow.dataset.DatasetConfig` (the ``chflow dataset`` recipe) small enough
    to generate in seconds on a CPU: ``n_seq`` sequences of ``frames`` frames on ``size^3``."""
    from napari_chflow.dataset import DatasetConfig

    return DatasetConfig(n_seq=n_seq, frames=frames, size=size, max_burn_in_tau=10)


def _generate_job(job: Job, out_dir: str, config) -> bool:
    """Returns True when the dataset is complete, False when cancelled."""
    from napari_chflow.dataset import generate_dataset

    result = generate_dataset(out_dir, config, progress=False, should_stop=job.stopped.is_set)
    return not result["stopped"]


def _train_job(job: Job, dataset_dir: str, out_dir: str, epochs: int, lr: float, device: str,
               resume: bool):
    """Returns the path of ``best.pt`` (None if no epoch completed)."""
    from napari_chflow.training import TrainConfig, stored_config, train

    stored = stored_config(out_dir) if resume else None  # a resumed run keeps its recipe
    if stored is not None:
        job.post({"event": "config", "lr": stored.lr})
    base = stored or TrainConfig(lr=lr)
    config = dataclasses.replace(base, epochs=epochs, device=device)
    job.post({"event": "epochs", "epochs": config.epochs})
    best = train(dataset_dir, out_dir, config, resume=resume, progress=False,
                 callback=job.post, should_stop=job.stopped.is_set)
    return str(best) if Path(best).is_file() else None


def _is_dataset(folder: Path) -> bool:
    from napari_chflow.dataset import DATASET_FILE

    return (folder / DATASET_FILE).is_file()


def train_failure(exc: BaseException, out: str, resume: bool) -> str:
    """A training exception as a GUI message: the fix first, naming the field or button."""
    from napari_chflow.model import CheckpointError

    text = str(exc)
    if isinstance(exc, CheckpointError):
        return (f"Choose another output folder (or press Train there): the run in '{out}' "
                "cannot be loaded")
    if "already holds a training run" in text:
        return f"Press Resume to continue the run in '{out}', or choose another output folder"
    if "diverged" in text:
        return ("Lower the learning rate and press Resume: training diverged (last.pt keeps the "
                "last good epoch)")
    if text.startswith("cannot resume:"):
        field = text.removeprefix("cannot resume:").split("=")[0].strip()
        return (f"Choose a new output folder and press Train: the run in '{out}' was made with "
                f"another {field}")
    if "validation" in text and "sequences" in text:
        return "Generate a dataset with more sequences ('sequences' field): too few to train"
    if "differ in shape" in text:
        return "Choose a dataset made in one go: its sequences differ in size"
    return f"Check the dataset and the fields: training failed ({problem_only(text)})"


def dataset_failure(exc: BaseException, folder: str) -> str:
    """A dataset-generation exception as a GUI message."""
    if "different settings" in str(exc):
        return (f"Choose a new dataset folder (or set the fields to the ones '{folder}' was made "
                "with): it holds a dataset made with other settings")
    return f"Choose another dataset folder: generating failed ({problem_only(exc)})"


class TrainWidget(QWidget):
    """Dataset folder, epochs, learning rate, device, output folder; Train / Cancel / Resume."""

    def __init__(self, napari_viewer, parent=None) -> None:
        super().__init__(parent)
        import napari_chflow.dataset  # noqa: F401 - imported now, not on the first click
        from napari_chflow.training import TrainConfig

        self.viewer, self.hub = napari_viewer, hub_for(napari_viewer)
        self.job: Job | None = None
        self.checkpoint: str | None = None
        self.history: list[dict] = []
        self.batch_losses: list[tuple[float, float]] = []  # (fractional epoch, loss)

        d = TrainConfig()
        self.dataset = FileEdit(mode="d", nullable=True, label="dataset folder",
                                tooltip="a folder made by 'Generate small dataset' (or the "
                                "chflow command line)")
        self.small = {
            "n_seq": SpinBox(value=6, min=2, max=1000, label="sequences",
                             tooltip="sequences in the small dataset"),
            "size": SpinBox(value=16, min=8, max=128, step=8, label="grid N (N^3)",
                            tooltip="grid of the small dataset's sequences"),
            "frames": SpinBox(value=6, min=2, max=100, label="frames each",
                              tooltip="frames per sequence, tau = 0.5 apart")}
        self.generate_button = PushButton(text="Generate small dataset",
                                          tooltip="writes into the dataset folder")
        self.generate_button.changed.connect(lambda: self.generate_dataset())
        self.epochs = SpinBox(value=10, min=1, max=100_000, label="epochs")
        self.lr = FloatSpinBox(value=d.lr, min=1e-7, max=1.0, step=1e-4, label="learning rate")
        self.lr.native.setDecimals(7)
        self.device = ComboBox(choices=DEVICES, value="cpu", label="device")
        self.out = FileEdit(mode="d", nullable=True, label="output folder",
                            tooltip="where last.pt, best.pt and the loss log are written")
        self.form = Container(widgets=[
            self.dataset, Label(value="small dataset (written into the dataset folder):"),
            *self.small.values(), self.generate_button, self.epochs, self.lr, self.device,
            self.out])
        self.train_button, self.cancel_button = PushButton(text="Train"), PushButton(text="Cancel")
        self.resume_button = PushButton(text="Resume",
                                        tooltip="continue the run in the output folder")
        self.train_button.changed.connect(lambda: self.start(resume=False))
        self.resume_button.changed.connect(lambda: self.start(resume=True))
        self.cancel_button.changed.connect(self.cancel)
        self.cancel_button.enabled = False
        self.progress = ProgressBar(value=0, min=0, max=1)
        self.status_label = Label(value="")
        self.status_label.native.setWordWrap(True)
        buttons = Container(widgets=[self.train_button, self.cancel_button, self.resume_button],
                            layout="horizontal", labels=False)
        buttons.margins = (0, 0, 0, 0)
        self.controls = Container(widgets=[buttons, self.progress, self.status_label],
                                  labels=False)
        self.figure = Figure(figsize=(3.5, 2.6), layout="constrained")
        self.ax = self.figure.add_subplot()
        self.view = BackgroundFigure(self.figure, self._draw)
        self.view.setMinimumHeight(200)
        self._redraw = Throttle(self.redraw, 0.5, self)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addWidget(self.form.native)
        layout.addWidget(self.controls.native)
        layout.addWidget(self.view, 1)
        self.redraw()

    # ------------------------------------------------------------------ state
    @property
    def running(self) -> bool:
        return self.job is not None

    def _busy(self, busy: bool) -> None:
        for b in (self.train_button, self.resume_button, self.generate_button):
            b.enabled = not busy
        self.cancel_button.enabled = busy

    def _refuse(self, message: str) -> bool:
        show_error(message)
        self.status_label.value = f"not started: {message}"
        return False

    @staticmethod
    def _folder(edit: FileEdit) -> Path | None:
        value = edit.value
        return Path(value) if value is not None and str(edit.line_edit.value).strip() else None

    # ------------------------------------------------------------------ dataset
    def generate_dataset(self) -> bool:
        """Write a small dataset (``chflow dataset`` recipe, sizes from the form) into the dataset
        folder, in a job; Cancel stops between frames and a second press resumes."""
        if self.running:
            return self._refuse("Wait for the running task, or press Cancel")
        folder = self._folder(self.dataset)
        if folder is None:
            return self._refuse("Choose a dataset folder (an empty or new one), then press "
                                "'Generate small dataset'")
        if any((folder / name).exists() for name in RUN_FILES):
            return self._refuse(f"Choose an empty or new dataset folder: '{folder}' holds a "
                                "training run")
        if folder.is_dir() and any(folder.iterdir()) and not _is_dataset(folder):
            return self._refuse(f"Choose an empty or new dataset folder: '{folder}' holds other "
                                "files")
        try:
            config = small_dataset_config(**{k: int(w.value) for k, w in self.small.items()})
        except ValueError as exc:
            return self._refuse(f"Change the small-dataset fields: {exc}")
        self._busy(True)
        set_progress(self.progress, 0, 0)  # busy indicator: the generator reports no progress
        self.status_label.value = f"generating {plural(config.n_seq, 'sequence')} in {folder} ..."
        self.job = Job(self, _generate_job, str(folder), config, name="napari-chflow dataset",
                       on_done=lambda ok, error: self._on_generated(ok, error, folder)).start()
        return True

    def _on_generated(self, complete, error, folder: Path) -> None:
        self.job = None
        self._busy(False)
        set_progress(self.progress, 1 if complete else 0, 1)
        if error is not None:
            message = dataset_failure(error, str(folder))
            show_error(message, error)
            self.status_label.value = f"dataset not generated: {message}"
        elif complete:
            self.status_label.value = f"dataset ready in {folder}"
        else:
            self.status_label.value = "cancelled: press 'Generate small dataset' again to finish it"

    # ------------------------------------------------------------------ training
    def start(self, resume: bool = False) -> bool:
        """Train (or resume) in a job; False (with a notification) when the inputs are wrong."""
        if self.running:
            return self._refuse("Wait for the running task, or press Cancel")
        dataset, out = self._folder(self.dataset), self._folder(self.out)
        if dataset is None or out is None:
            return self._refuse("Choose a dataset folder (or generate a small one) and an output "
                                "folder first")
        if not _is_dataset(dataset):
            return self._refuse(f"Press 'Generate small dataset' (or choose a dataset folder): "
                                f"'{dataset}' holds no dataset")
        problem = check_device(self.device.value)
        if problem:
            return self._refuse(problem)
        has_run = (out / "last.pt").exists()
        if has_run and not resume:
            return self._refuse(f"Press Resume to continue the run in '{out}', or choose another "
                                "output folder")
        if resume and not has_run:
            return self._refuse(f"Press Train to start a run: '{out}' holds none to resume")
        self.history, self.batch_losses = [], []
        self._busy(True)
        set_progress(self.progress, 0, int(self.epochs.value))
        self.status_label.value = "resuming ..." if resume else "loading the dataset ..."
        self.job = Job(self, _train_job, str(dataset), str(out), int(self.epochs.value),
                       float(self.lr.value), self.device.value, resume, on_event=self._on_event,
                       on_done=lambda best, error: self._on_trained(best, error, out, resume),
                       name="napari-chflow train").start()
        self._redraw()
        return True

    def cancel(self) -> None:
        """Stop before the next batch; completed epochs are kept (press Resume to continue)."""
        if self.job is not None:
            self.job.stop()
            self.status_label.value = "cancelling ..."

    def _on_event(self, event: dict) -> None:
        kind = event.get("event")
        if kind == "config":
            self.lr.value = event["lr"]
        elif kind == "epochs":
            set_progress(self.progress, 0, event["epochs"])
        elif kind == "start":
            self.history = list(event.get("history", []))
            set_progress(self.progress, len(self.history))
        elif kind == "batch":
            epoch, batch, n = event["epoch"], event["batch"], event["n_batches"]
            loss = event["train_loss"]
            self.batch_losses.append((epoch + (batch + 1) / n, loss))  # at fractional epochs
            self.status_label.value = f"epoch {epoch + 1}, batch {batch + 1}/{n}: loss {loss:.3g}"
        elif kind == "epoch":
            self.history.append(event)
            set_progress(self.progress, event["epoch"] + 1)
            train, val = event["train_loss"], event["val_loss"]
            self.status_label.value = (f"epoch {event['epoch'] + 1}: train {train:.3g}, "
                                       f"validation {val:.3g}")
        self._redraw()

    def _on_trained(self, best, error, out: Path, resume: bool) -> None:
        stopped = self.job is not None and self.job.stopped.is_set()
        self.job = None
        self._busy(False)
        self._redraw.flush()
        self.redraw(urgent=True)
        if error is not None:
            message = train_failure(error, str(out), resume)
            show_error(message, error)
            self.status_label.value = f"training failed: {message}"
            return
        if best is None:
            show_info("Training stopped before its first epoch completed: no checkpoint written")
            self.status_label.value = "cancelled (no checkpoint)"
            return
        self.checkpoint = self.hub.add_checkpoint(best)
        self.status_label.value = (f"{'cancelled' if stopped else 'done'}: {best} "
                                   "(selectable in 'Evolve and compare')")
        show_info(f"New CRNN selectable in 'Evolve and compare': {Path(best).parent.name}/best.pt")

    def redraw(self, urgent: bool = False) -> None:
        """Queue a redraw of the loss curve (drawn in the background)."""
        self.view.request((list(self.batch_losses), [dict(h) for h in self.history]), urgent)

    def _draw(self, job) -> None:
        """Render thread: the loss per batch, and train/validation loss per epoch (log y); one
        legend above the axes, never over the curve."""
        batch_losses, history = job
        ax, fig = self.ax, self.figure
        ax.clear()
        for legend in fig.legends:
            legend.remove()
        if batch_losses:
            x, y = zip(*batch_losses)
            ax.plot(x, y, color="0.7", lw=0.8, label="batch")
        if history:
            x = [h["epoch"] + 1 for h in history]
            ax.plot(x, [h["train_loss"] for h in history], "o-", ms=3, label="train (epoch)")
            ax.plot(x, [h["val_loss"] for h in history], "s-", ms=3, label="validation")
        if batch_losses or history:
            from napari_chflow.plots import readable_log_axis

            ax.set_yscale("log")
            readable_log_axis(ax.yaxis)
            fig.legend(loc="outside upper center", ncols=3, fontsize=7, frameon=False)
        else:
            ax.text(0.5, 0.5, "press Train", ha="center", va="center", transform=ax.transAxes,
                    color="0.4", fontsize=7)
        ax.set_xlabel("epoch", fontsize=7)
        ax.set_ylabel("MSE loss", fontsize=7)
        ax.tick_params(labelsize=6.5)
        ax.grid(True, which="both", alpha=0.3)
