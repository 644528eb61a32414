"""The work behind "Evolve and compare", Qt-free so it runs in a worker thread (and in tests).

:func:`compare_frames` steps the physics solver (:func:`napari_chflow.physics.iter_simulate`) and
the CRNN (:func:`napari_chflow.model.iter_rollout`) in lockstep, one ``tau`` at a time, and
computes the per-frame metrics as ``chflow compare`` does
(:func:`napari_chflow.compare.paired_traces`). :func:`prepare_run` loads the model and allocates
the frame buffers; :func:`fill_buffers` writes every frame into them and publishes its progress
in a :class:`RunState`, so the GUI thread only shows what is there.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import numpy as np

SHIPPED = " (shipped)"
"""Suffix of a bundled model's name in the model lists (``resources/<name>.pt``)."""
DEFAULT_MODEL = "default" + SHIPPED
# one row of metrics per frame: the CRNN against the solver (suffix _ref: the solver's own value)
COLUMNS = ("t", "rmse", "interface_displacement", "free_energy_density", "free_energy_density_ref",
           "mass", "mass_ref")


@dataclass(frozen=True)
class ComparedFrame:
    """Frame ``index`` (time ``t = index * tau``) of both runs.

    ``solver``: ``(Z, Y, X) float32`` on the seed grid; ``crnn``: ``(Z/d, Y/d, X/d) float32`` on
    the model grid (``downscale`` d); ``diff``: ``|upsample(crnn) - solver|`` on the seed grid;
    ``metrics``: one row keyed like :data:`COLUMNS` (the solver is the reference, suffix ``_ref``).
    """

    index: int
    t: float
    tau: float
    downscale: int
    solver: np.ndarray
    crnn: np.ndarray
    diff: np.ndarray
    metrics: dict


def shipped_choices() -> list[str]:
    """The bundled models as the model lists show them, the default first."""
    from napari_chflow.model import available_pretrained

    names = sorted(available_pretrained(), key=lambda name: name != "default")
    return [name + SHIPPED for name in names]


def is_shipped(spec: str) -> bool:
    return str(spec).endswith(SHIPPED)


def load_model(spec: str, device: str | None = None):
    """``spec`` is a bundled model (:func:`shipped_choices`, e.g. :data:`DEFAULT_MODEL`) or a
    checkpoint path; raises :class:`napari_chflow.model.CheckpointError` with the reason when it
    cannot be used."""
    from napari_chflow.model import load_checkpoint, load_pretrained

    if is_shipped(spec):
        return load_pretrained(spec[:-len(SHIPPED)], device=device)
    return load_checkpoint(spec, device=device)


def paired_rows(ref: np.ndarray, pred: np.ndarray, downscale: int, eps: float = 3.0,
                tau: float = 0.5) -> dict[str, np.ndarray]:
    """Columns :data:`COLUMNS` for a solver sequence ``ref`` ``(T, Z, Y, X)`` and a CRNN sequence
    ``pred`` on its x1/``downscale`` grid, by :func:`napari_chflow.compare.paired_traces` (errors
    on the full grid, F/V and mass of each run on its own grid, as ``chflow compare``)."""
    from napari_chflow.compare import paired_traces

    gt, nn = paired_traces(ref, pred, downscale, eps=eps, tau=tau)
    return {"t": gt["t"], "rmse": nn["rmse"],
            "interface_displacement": nn["interface_displacement"],
            "free_energy_density": nn["free_energy_density"],
            "free_energy_density_ref": gt["free_energy_density"],
            "mass": nn["mass"], "mass_ref": gt["mass"]}


def frame_metrics(index: int, tau: float, solver: np.ndarray, crnn: np.ndarray, downscale: int,
                  eps: float) -> dict[str, float]:
    """One row of :data:`COLUMNS` for frame ``index`` (solver ``(Z, Y, X)``, CRNN on its grid)."""
    rows = paired_rows(solver[None], crnn[None], downscale, eps=eps, tau=tau)
    return {**{k: float(v[0]) for k, v in rows.items()}, "t": index * tau}


def compare_frames(phi0: np.ndarray, n_tau: int, solver: str = "explicit", model=DEFAULT_MODEL,
                   device: str | None = None) -> Iterator[ComparedFrame]:
    """Yield ``n_tau + 1`` :class:`ComparedFrame` (frame 0 = the seed), solver and CRNN in lockstep.

    ``model`` is a loaded :class:`~napari_chflow.model.CRNN` or a spec for :func:`load_model`.
    The solver uses the model's physics (``tau``, ``eps``, ``mobility``). Errors propagate
    (``CheckpointError``, ``SimulationDiverged``, ``RolloutDiverged``, ``ValueError``); stopping
    the iteration cancels both runs.
    """
    from napari_chflow.model import iter_rollout, upsample
    from napari_chflow.physics import iter_simulate

    if isinstance(model, str):
        model = load_model(model, device)
    info = model.info
    f = int(info.downscale)
    sim = iter_simulate(phi0, n_tau, tau=info.tau, solver=solver, eps=info.eps,
                        mobility=info.mobility, device=device)
    net = iter_rollout(model, phi0, n_tau, device=device)
    for k, (a, b) in enumerate(zip(sim, net)):
        full = upsample(b, f) if f > 1 else b
        yield ComparedFrame(k, k * info.tau, info.tau, f, a, b, np.abs(full - a),
                            frame_metrics(k, info.tau, a, b, f, info.eps))


class SeedGridError(ValueError):
    """The seed's grid is not a multiple of the CRNN's ``downscale`` (``shape``, ``factor``)."""

    def __init__(self, shape: tuple[int, ...], factor: int) -> None:
        super().__init__(f"seed grid {shape} is not a multiple of the CRNN's downscale {factor}")
        self.shape, self.factor = tuple(shape), int(factor)


@dataclass(frozen=True)
class PreparedRun:
    """A loaded model and the frame buffers of one run.

    ``buffers``: ``{"solver": (T, Z, Y, X), "crnn": (T, Z/d, Y/d, X/d), "diff": (T, Z, Y, X)}``
    float32, frame 0 filled with the seed (``np.zeros`` maps memory lazily: only computed frames
    take RAM); ``tau``, ``eps``: the model's physics; ``downscale``: its grid factor ``d``;
    ``coarse``: how the seed maps to its grid (``ModelInfo.coarse``).
    """

    model: object
    buffers: dict
    tau: float
    eps: float
    downscale: int
    coarse: str = "nearest"


def prepare_run(phi0: np.ndarray, n_tau: int, model=DEFAULT_MODEL, device: str | None = None
                ) -> PreparedRun:
    """Load ``model`` (see :func:`load_model`), check that ``phi0``'s grid suits it
    (:class:`SeedGridError`) and allocate ``n_tau + 1`` frames for each buffer."""
    from napari_chflow.model import to_model_grid, upsample

    if isinstance(model, str):
        model = load_model(model, device)
    f = int(model.info.downscale)
    if any(n % f for n in phi0.shape):
        raise SeedGridError(phi0.shape, f)
    crnn0 = to_model_grid(phi0, model.info)  # as the rollout maps it
    first = {"solver": phi0, "crnn": crnn0, "diff": np.abs(upsample(crnn0, f) - phi0)}
    buffers = {}
    for key, volume in first.items():
        buffers[key] = np.zeros((n_tau + 1, *volume.shape), np.float32)
        buffers[key][0] = volume
    return PreparedRun(model, buffers, float(model.info.tau), float(model.info.eps), f,
                       model.info.coarse)


@dataclass
class RunState:
    """Progress of a run, written by the compute thread and read by the GUI thread: frames
    ``0 .. n_frames - 1`` of the buffers are complete; ``rows`` holds their metrics (one dict
    per frame, keys :data:`COLUMNS`)."""

    n_frames: int = 0
    rows: list = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def publish(self, index: int, row: dict) -> None:
        with self.lock:
            self.rows.append(row)
            self.n_frames = index + 1

    def snapshot(self, start: int = 0) -> tuple[int, list]:
        """``(n_frames, rows[start:])``."""
        with self.lock:
            return self.n_frames, self.rows[start:]


def fill_buffers(prepared: PreparedRun, phi0: np.ndarray, n_tau: int, solver: str,
                 device: str | None, state: RunState, should_stop: Callable[[], bool],
                 notify: Callable[[], None] = lambda: None) -> bool:
    """Run solver and CRNN (:func:`compare_frames`), writing frame ``k`` into
    ``prepared.buffers[...][k]`` and then publishing it in ``state`` and calling ``notify()``.
    Returns False when ``should_stop()`` ended the run early (checked between frames). Errors
    propagate as in :func:`compare_frames`; the frames published before them are complete."""
    buffers = prepared.buffers
    for frame in compare_frames(phi0, n_tau, solver, prepared.model, device):
        k = frame.index
        if k > 0:
            buffers["solver"][k], buffers["crnn"][k], buffers["diff"][k] = (
                frame.solver, frame.crnn, frame.diff)
        state.publish(k, frame.metrics)
        notify()
        if k < n_tau and should_stop():
            return False
    return True
