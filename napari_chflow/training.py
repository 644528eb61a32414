"""Curriculum training of the CRNN (Lanzoni et al. 2024, sec. 2.2), resumable and DDP-ready.

Recipe: the sequences of a ``chflow dataset`` folder, held in memory downscaled x1/``downscale``
(nearest), voxel-wise MSE over every predicted frame, Adam, and per sample and step a random one of
the 96 symmetries of periodic Cahn-Hilliard on a cube (48 axis permutations x reflections, times
``phi -> 1 - phi``). Curriculum: at epoch 0 the model generates only the last frame (teacher forcing
on the previous ``T - 1``); over the next ``curriculum_epochs`` epochs the generated tail grows
linearly until the whole sequence is generated from the initial condition. The paper trains with
``lr = 1e-5`` for ~50 h on a GPU; the default ``1e-3`` suits the short runs on small datasets.

Files in ``out_dir`` (rank 0 writes them, each atomically, after every epoch):
- ``best.pt``: checkpoint (:func:`napari_chflow.model.load_checkpoint`) of the epoch chosen by
  :func:`select_best_epoch`;
- ``last.pt``: checkpoint of the last completed epoch; ``extra["train_state"]`` holds the optimizer,
  RNG states and metrics, so ``train(..., resume=True)`` continues exactly after a kill;
- ``metrics.jsonl`` (one line per epoch) and ``loss.png`` (loss curves).

Several processes: ``torchrun --nproc_per_node N -m napari_chflow.training DATASET -o OUT`` (gloo
on CPU, nccl on CUDA). Each global batch is split across ranks; the result equals one process.
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import json
import math
import os
import platform
import random
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist

from .dataset import load_dataset
from .io import (
    SequenceFormatError,
    atomic_write,
    atomic_write_text,
    file_sha256,
    read_sequence,
)
from .model import (
    COARSE_MODES,
    CRNN,
    LATTICE_IMAGES,
    CRNNConfig,
    downsample,
    load_checkpoint,
    option_problem,
    save_checkpoint,
    split_problem,
)
from .physics import EPS, free_energy_parts, resolve_device
from .plots import DRAW_LOCK


class TrainingError(ValueError):
    """A training run cannot start as asked (the message names the problem and the fix)."""


# --------------------------------------------------------------------------- symmetries


@dataclass(frozen=True)
class Symmetry:
    """Output axis ``i`` is input axis ``perm[i]`` (of the last three), flipped if ``flip[i]``;
    then ``phi -> 1 - phi`` if ``invert``."""

    perm: tuple[int, int, int]
    flip: tuple[bool, bool, bool]
    invert: bool


SYMMETRIES: list[Symmetry] = [
    Symmetry(perm, flip, invert)
    for invert in (False, True)
    for perm in itertools.permutations(range(3))
    for flip in itertools.product((False, True), repeat=3)
]
"""The 96 symmetries of periodic Cahn-Hilliard on a cube; index 0 is the identity."""


def allowed_symmetries(shape: tuple[int, ...]) -> list[int]:
    """Indices of :data:`SYMMETRIES` that keep a grid of ``shape`` (last three dims): all 96 on a
    cube, otherwise only those permuting axes of equal length."""
    zyx = tuple(shape[-3:])
    return [i for i, s in enumerate(SYMMETRIES)
            if all(zyx[p] == zyx[a] for a, p in enumerate(s.perm))]


def augment(seq: np.ndarray | torch.Tensor, index: int) -> np.ndarray | torch.Tensor:
    """Apply ``SYMMETRIES[index]`` to the last three dims of ``seq`` ``(..., Z, Y, X)``
    (numpy or torch in, same type out)."""
    s = SYMMETRIES[index]
    lead = seq.ndim - 3
    axes = (*range(lead), *(lead + p for p in s.perm))
    dims = [lead + i for i, f in enumerate(s.flip) if f]
    if isinstance(seq, torch.Tensor):
        out = seq.permute(*axes)
        out = out.flip(dims) if dims else out
        return (1 - out) if s.invert else out.contiguous()
    out = np.flip(np.transpose(seq, axes), dims) if dims else np.transpose(seq, axes)
    return (1 - out) if s.invert else np.ascontiguousarray(out)


# --------------------------------------------------------------------------- config, schedule


@dataclass(frozen=True)
class TrainConfig:
    """Training recipe. ``batch_size`` is global (split across ranks); ``frames``: use only the
    first ``frames`` frames of each sequence (None = all); ``grad_clip``: max gradient norm (None
    = off); ``device``: None = CPU, "cuda" (under torchrun: ``cuda:LOCAL_RANK``); ``num_threads``:
    torch CPU threads (None = torch's default); ``lr_schedule``: "constant" or "cosine" (from
    ``lr`` at the first epoch down to ``lr / 20`` at the last); ``init``: a checkpoint whose
    weights start the run (fine-tuning; same architecture, downscale and physics), None =
    random weights; ``input_noise``: std of the zero-mean noise added to every model input
    while training (not in the paper; teaches the model to damp perturbations), 0 = off;
    ``coarse``: how full-grid data maps to the model grid ("nearest" as in the paper, or the
    block "mean"). Not in the paper, for long-horizon fidelity (see :func:`loss_terms`):
    ``window``: each epoch every sequence contributes one window of ``window`` consecutive frames
    at a random start (None = the whole sequence), so long late-time sequences are sampled
    uniformly in time; ``bptt``: truncate backpropagation every ``bptt`` steps (0 = off);
    ``energy_weight``, ``split_weight``, ``descent_weight``, ``bounds_weight``: weights of the
    free-energy and phi-range terms added to the voxel-wise MSE; ``guard_iters``: the model's energy guard
    (:meth:`napari_chflow.model.CRNN.guard`), on in training and in the saved model, 0 = off;
    ``flux_limit``: the model's flux limiter margin (phi kept within ``[-m, 1 + m]``,
    :func:`napari_chflow.model.limited_divergence`), None = off; ``rest_weight``: weight of
    :func:`rest_losses`, slabs at rest at random sub-cell positions that the model must keep
    where they are over ``rest_steps`` free-running steps, 0 = off; ``stride``: one model step
    spans ``stride`` frames of the dataset (the model's tau is ``stride`` times the dataset's:
    fewer steps per unit of time), 1 = the paper's; ``lattice_average``: the model's average over
    lattice images (:data:`napari_chflow.model.LATTICE_IMAGES`), in training and in the saved
    model, 1 = off; ``relax_dt``: the model's fine-grid relaxation after each step
    (:meth:`napari_chflow.model.CRNN.relax`, model time units), in training and in the saved
    model, 0 = off; ``relax_limit``: the margin that relaxation keeps phi within
    (``[-r, 1 + r]``), None = the flux limiter's; ``relax_split``: the relaxation's time is
    taken out of the network's step (``ModelInfo.relax_split``; needs ``0 < relax_dt < tau``),
    in training and in the saved model; ``stop_after``: end the run
    after this many epochs in total while the lr schedule still spans ``epochs`` (a staged run
    continued later with ``resume``), None = run all ``epochs``."""

    epochs: int = 100
    lr: float = 1e-3
    batch_size: int = 4
    curriculum_epochs: int = 25
    downscale: int = 2
    augment: bool = True
    frames: int | None = None
    grad_clip: float | None = 1.0
    seed: int = 0
    device: str | None = None
    num_threads: int | None = None
    lr_schedule: str = "constant"
    init: str | None = None
    input_noise: float = 0.0
    coarse: str = "nearest"
    window: int | None = None
    bptt: int = 0
    energy_weight: float = 0.0
    split_weight: float = 0.0
    descent_weight: float = 0.0
    bounds_weight: float = 0.0
    guard_iters: int = 0
    flux_limit: float | None = None
    rest_weight: float = 0.0
    rest_steps: int = 32
    stride: int = 1
    lattice_average: int = 1
    relax_dt: float = 0.0
    relax_limit: float | None = None
    relax_split: bool = False
    stop_after: int | None = None
    model: CRNNConfig = CRNNConfig()


LR_SCHEDULES = ("constant", "cosine")
LR_FINAL_FRACTION = 0.05
MODEL_OPTION_FLAGS = {"coarse": "--coarse", "guard_iters": "--energy-guard",
                      "flux_limit": "--flux-limit", "lattice_average": "--lattice-average",
                      "relax_dt": "--relax-dt", "relax_limit": "--relax-limit",
                      "relax_split": "--relax-split"}
"""The command-line flag of each model option of the recipe (:func:`model.option_problem`)."""

RESUMABLE_FIELDS = ("epochs", "lr", "lr_schedule", "grad_clip", "device", "num_threads",
                    "stop_after")
"""Fields that may change when a run is resumed; all others must match the stored run."""


def config_from_dict(d: dict) -> TrainConfig:
    """Inverse of ``dataclasses.asdict`` for :class:`TrainConfig` (as stored in checkpoints)."""
    d = dict(d)
    model = CRNNConfig(**d.pop("model", {}))
    return TrainConfig(**d, model=model)


def stored_config(out_dir: str | Path) -> TrainConfig | None:
    """The :class:`TrainConfig` of the run in ``out_dir`` (from its ``last.pt``), or None."""
    path = Path(out_dir) / "last.pt"
    if not path.exists():
        return None
    return config_from_dict(load_checkpoint(path).extra["train_state"]["config"])


def curriculum_length(epoch: int, n_frames: int, curriculum_epochs: int) -> int:
    """Frames the model generates autoregressively at ``epoch`` (0-based): 1 at epoch 0 (the last
    frame, from the previous ``n_frames - 1``), growing linearly to ``n_frames - 1`` (the whole
    sequence from the initial condition) at epoch ``curriculum_epochs`` and after."""
    full = n_frames - 1
    if curriculum_epochs <= 0:
        return full
    return 1 + (full - 1) * min(epoch, curriculum_epochs) // curriculum_epochs


def learning_rate(config: TrainConfig, epoch: int) -> float:
    """Adam learning rate of ``epoch`` (0-based) under ``config.lr_schedule``."""
    if config.lr_schedule == "constant" or config.epochs <= 1:
        return config.lr
    frac = min(epoch, config.epochs - 1) / (config.epochs - 1)
    low = config.lr * LR_FINAL_FRACTION
    return low + (config.lr - low) * 0.5 * (1 + math.cos(math.pi * frac))


def select_best_epoch(history: list[dict]) -> int:
    """The epoch (0-based) whose weights go to ``best.pt``: among the epochs trained at full
    curriculum length, the one with the lowest full-sequence validation loss (the first on ties);
    while the curriculum has not reached full length, the latest epoch."""
    full = [h for h in history if h["curriculum_length"] == h["full_length"]]
    if not full:
        return history[-1]["epoch"]
    return min(full, key=lambda h: h["val_loss_full"])["epoch"]


def best_epoch_number(recipe: dict) -> int | str:
    """The best epoch of a checkpoint's ``recipe`` counted from 1, as the progress bar, the run
    summary and the loss curve count it (``recipe["best_epoch"]`` is 0-based, like metrics.jsonl);
    ``"?"`` when unknown."""
    best = recipe.get("best_epoch")
    return best + 1 if isinstance(best, int) else "?"


# --------------------------------------------------------------------------- data and loss


def load_sequences(paths: list, downscale: int = 2, frames: int | None = None,
                   coarse: str = "nearest", stride: int = 1) -> torch.Tensor:
    """Read sequence stores into one ``(N, T, Z/d, Y/d, X/d) float32`` tensor (downscaled by
    ``d = downscale`` with :func:`napari_chflow.model.downsample` mode ``coarse``; of the first
    ``frames`` frames every ``stride``-th, from frame 0); ``(0,)`` for no paths."""
    seqs = []
    for path in paths:
        try:
            phi = np.asarray(read_sequence(path)[0][:frames:stride], dtype=np.float32)
        except SequenceFormatError as err:  # corrupted on disk: the dataset command redoes it
            raise TrainingError(f"{err} (rerun the `chflow dataset` command that made this "
                                "dataset: it regenerates damaged sequences)") from None
        seqs.append(torch.from_numpy(downsample(phi, downscale, coarse)))
    shapes = sorted({tuple(s.shape) for s in seqs})
    if len(shapes) > 1:
        raise TrainingError(f"dataset sequences differ in shape {shapes}: "
                            "train on a dataset generated with one grid size and length")
    return torch.stack(seqs) if seqs else torch.empty(0)


@dataclass(frozen=True)
class LossWeights:
    """Weights of the terms of the training loss (see :func:`loss_terms`); ``spacing`` is the
    model grid's voxel size (the downscale factor) and ``eps`` the interface parameter, both in
    grid units of the full grid."""

    energy: float = 0.0
    split: float = 0.0
    descent: float = 0.0
    bounds: float = 0.0
    spacing: float = 2.0
    eps: float = EPS


def _mse(pred: torch.Tensor, seq: torch.Tensor) -> torch.Tensor:
    """Voxel-wise MSE per sample ``(B,)`` of ``pred`` against frames ``1..T-1`` of ``seq``."""
    return ((pred - seq[:, 1:]) ** 2).mean(dim=tuple(range(1, seq.ndim)))


def loss_terms(pred: torch.Tensor, seq: torch.Tensor, spacing: float = 2.0,
               eps: float = EPS) -> dict[str, torch.Tensor]:
    """Per-sample loss terms ``(B,)`` of predicted frames ``pred`` ``(B, T-1, Z, Y, X)`` against
    the sequence ``seq`` ``(B, T, Z, Y, X)`` (frame 0 the input): all are 0 on the ground truth.

    - ``mse``: voxel-wise mean squared error of phi (the paper's loss).
    - ``energy``: mean over frames of the squared relative error of F/V (position-blind: it sees
      the slow late-time decay of F that the MSE barely feels).
    - ``split``: mean squared error of ``(bulk - gradient) / (bulk + gradient)`` energy, which is
      ~0 for equilibrium interfaces (equipartition); broadened interfaces and phases drifting
      off the wells move it.
    - ``descent``: mean over steps of ``relu(dF_pred/F_pred - dF/F)`` (relative change of F per
      step): zero while the prediction's F falls at least as fast as the truth's; penalises a
      stalled or rising free energy.
    - ``bounds``: mean squared excursion of phi beyond the frame's true range widened to [0, 1]
      (``relu(phi - max(1, max phi_true))^2`` and below): overshoots at interfaces.
    """
    parts = free_energy_parts(torch.cat([seq[:, :1], pred], 1), eps, spacing)  # (B, T, 2)
    true = free_energy_parts(seq, eps, spacing)
    f, f_true = parts.sum(-1), true.sum(-1)
    split = (parts[..., 0] - parts[..., 1]) / f
    split_true = (true[..., 0] - true[..., 1]) / f_true
    rel = (f[:, 1:] - f[:, :-1]) / f[:, :-1]
    rel_true = (f_true[:, 1:] - f_true[:, :-1]) / f_true[:, :-1]
    dims = tuple(range(1, seq.ndim))
    frames = tuple(range(2, seq.ndim))
    hi = seq[:, 1:].amax(dim=frames, keepdim=True).clamp(min=1.0)
    lo = seq[:, 1:].amin(dim=frames, keepdim=True).clamp(max=0.0)
    return {
        "mse": _mse(pred, seq),
        "energy": ((f[:, 1:] / f_true[:, 1:] - 1) ** 2).mean(1),
        "split": ((split[:, 1:] - split_true[:, 1:]) ** 2).mean(1),
        "descent": torch.relu(rel - rel_true).mean(1),
        "bounds": (torch.relu(pred - hi) ** 2 + torch.relu(lo - pred) ** 2).mean(dim=dims),
    }


def sample_losses(model: torch.nn.Module, seq: torch.Tensor, n_gen: int,
                  input_noise: float = 0.0, weights: LossWeights | None = None,
                  bptt: int = 0) -> torch.Tensor:
    """Training loss per sample ``(B,)`` over frames ``1..T-1`` of ``seq`` ``(B, T, Z, Y, X)``:
    teacher forcing on the first ``T - n_gen`` frames, then ``n_gen`` generated ones (inputs
    perturbed by ``input_noise``, targets clean; backpropagation truncated every ``bptt``
    steps). The voxel-wise MSE plus the weighted free-energy terms of :func:`loss_terms`."""
    pred = model(seq[:, : seq.shape[1] - n_gen], n_gen, input_noise=input_noise,
                 detach_every=bptt)
    if weights is None or not (weights.energy or weights.split or weights.descent
                               or weights.bounds):
        return _mse(pred, seq)
    terms = loss_terms(pred, seq, weights.spacing, weights.eps)
    return (terms["mse"] + weights.energy * terms["energy"] + weights.split * terms["split"]
            + weights.descent * terms["descent"] + weights.bounds * terms["bounds"])


def rest_states(rng: np.random.Generator, n: int, size: int, downscale: int = 2,
                coarse: str = "nearest", eps: float = EPS) -> np.ndarray:
    """``n`` equilibrium slabs on the model grid, ``(n, size/downscale, ...) float32``: the
    full-grid ``size``^3 tanh slab (:func:`napari_chflow.seeds.slab`) with a random axis, a width
    in [1/4, 3/4] of the box and a centre uniform in the box (so its interfaces sit anywhere
    between the model grid's nodes), mapped by ``coarse``. The physics keeps each one where it
    is."""
    from .seeds import slab

    out = []
    for _ in range(n):
        axis, width = int(rng.integers(3)), rng.uniform(0.25, 0.75) * size
        center = rng.uniform(0, size)
        out.append(downsample(slab((size,) * 3, width, axis, center, eps), downscale, coarse))
    return np.stack(out)


def _first_mode(x: torch.Tensor, axis: int) -> torch.Tensor:
    """Real and imaginary part ``(..., 2)`` of the first Fourier mode of ``x``'s profile along
    ``axis`` (one of the last three; the mean over the other two)."""
    n = x.shape[axis]
    angle = torch.arange(n, dtype=x.dtype, device=x.device) * (2 * math.pi / n)
    profile = x.mean(dim=tuple(a for a in (-3, -2, -1) if a != axis))
    return profile @ torch.stack([torch.cos(angle), -torch.sin(angle)]).T


def slab_shift(phi: torch.Tensor, ref: torch.Tensor) -> torch.Tensor:
    """How far (cells) the slabs ``ref`` ``(B, Z, Y, X)`` have moved in ``phi`` ``(B, K, Z, Y,
    X)`` along their normals: ``(B, K)``, from the phase of the first Fourier mode of the profile
    along the axis where ``ref`` varies most: exact for whole cells, about 13% short for
    sub-cell distances (the one-cell-wide profile aliases on the model grid); a change of the
    profile's shape that keeps it symmetric does not count. Differentiable."""
    shifts = []
    for b in range(ref.shape[0]):
        axis = max((-3, -2, -1), key=lambda a: float(_first_mode(ref[b], a).norm()))
        r, p = _first_mode(ref[b], axis), _first_mode(phi[b], axis)
        # phase of p * conj(r); a translation by s multiplies the mode by exp(-2 pi i s / n)
        cross = torch.stack([p[..., 0] * r[0] + p[..., 1] * r[1],
                             p[..., 1] * r[0] - p[..., 0] * r[1]], -1)
        cells_per_radian = ref.shape[axis] / (2 * math.pi)
        shifts.append(-torch.atan2(cross[..., 1], cross[..., 0]) * cells_per_radian)
    return torch.stack(shifts)


def rest_losses(model: torch.nn.Module, phi_rest: torch.Tensor, n_steps: int) -> torch.Tensor:
    """Squared drift (model grid cells^2, :func:`slab_shift`) of the slabs at rest
    ``phi_rest`` ``(B, Z, Y, X)`` over ``n_steps`` free-running steps, mean over the steps:
    ``(B,)``; 0 for a model that keeps them where they are (whatever it does to their profile).
    A lattice-pinned model (interfaces snapping to preferred sub-cell positions) pays for every
    step of its drift."""
    return (slab_shift(model(phi_rest[:, None], n_steps), phi_rest) ** 2).mean(1)


def loss_weights(config: "TrainConfig", eps: float = EPS) -> LossWeights:
    """The :class:`LossWeights` of a training recipe."""
    return LossWeights(config.energy_weight, config.split_weight, config.descent_weight,
                       config.bounds_weight, float(config.downscale), float(eps))


def split_windows(seqs: torch.Tensor, window: int) -> torch.Tensor:
    """Cut ``(N, T, Z, Y, X)`` into the ``(N * (T // window), window, Z, Y, X)`` consecutive
    non-overlapping windows (a leftover tail shorter than ``window`` is dropped)."""
    n, t = seqs.shape[:2]
    k = t // window
    return seqs[:, : k * window].reshape(n * k, window, *seqs.shape[2:])


def window_starts(config: "TrainConfig", epoch: int, n: int, n_frames: int) -> np.ndarray:
    """First frame of each sample's window ``(n,) int`` at ``epoch``: uniform in
    ``0..n_frames - window`` (all 0 without ``window``), a function of (seed, epoch) only."""
    if not config.window or config.window >= n_frames:
        return np.zeros(n, dtype=int)
    rng = np.random.default_rng([config.seed, epoch, 0x57494E])  # "WIN"
    return rng.integers(0, n_frames - config.window + 1, size=n)


def _epoch_plan(config: TrainConfig, epoch: int, n: int, allowed: list[int]):
    """Sample order and symmetry index per position of ``epoch``: a function of (seed, epoch)
    only, hence the same on every rank, for any world size and after a resume."""
    rng = np.random.default_rng([config.seed, epoch])
    order = rng.permutation(n)
    return order, (rng.choice(allowed, size=n) if config.augment else np.zeros(n, dtype=int))


# --------------------------------------------------------------------------- state, ranks


def _rng_state() -> dict:
    name, keys, *rest = np.random.get_state()
    return {"torch": torch.get_rng_state(), "python": random.getstate(),
            "numpy": (name, torch.from_numpy(keys.astype(np.int64)), *rest)}


def _set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate(state["python"])
    name, keys, *rest = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), *rest))


@dataclass(frozen=True)
class _Ranks:
    rank: int
    world: int
    device: torch.device

    def sum(self, values: list[float]) -> list[float]:
        """Sum of ``values`` over all ranks."""
        if self.world == 1:
            return values
        t = torch.tensor(values, dtype=torch.float64, device=self.device)
        dist.all_reduce(t)
        return t.tolist()


def _setup_ranks(device: str | None) -> tuple[_Ranks, bool]:
    """Ranks from torchrun's environment (``WORLD_SIZE``, ``LOCAL_RANK``); the bool tells whether
    this call created the process group (and must destroy it)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    dev = resolve_device(device)
    if world > 1 and dev.type == "cuda":
        dev = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        torch.cuda.set_device(dev)
    created = world > 1 and not dist.is_initialized()
    if created:
        dist.init_process_group("nccl" if dev.type == "cuda" else "gloo")
    return _Ranks(dist.get_rank() if world > 1 else 0, world, dev), created


def _hardware(ranks: _Ranks) -> dict:
    dev = ranks.device
    cpu = platform.processor() or platform.machine()
    name = torch.cuda.get_device_name(dev) if dev.type == "cuda" else cpu
    return {"device": str(dev), "name": name, "world_size": ranks.world,
            "threads": torch.get_num_threads(), "torch": str(torch.__version__)}


def _refuse(problems: list[tuple[bool, str]]) -> None:
    """Raise :class:`TrainingError` with the message of the first true condition."""
    for bad, message in problems:
        if bad:
            raise TrainingError(message)


def _check_config(config: TrainConfig, stored: TrainConfig | None) -> None:
    """Refuse a recipe that is wrong on its own (before any data is read), or that differs from
    the stored run's when resuming."""
    for f in dataclasses.fields(TrainConfig) if stored else ():  # resuming: same recipe
        old, new = getattr(stored, f.name), getattr(config, f.name)
        if f.name not in RESUMABLE_FIELDS and old != new:
            raise TrainingError(f"cannot resume: {f.name}={new!r} differs from the stored run's "
                                f"{old!r}: keep the stored value or train into a new folder")
    problems = [
        (config.epochs < 1, f"epochs={config.epochs}: use epochs >= 1"),
        (config.stop_after is not None and not 1 <= config.stop_after <= config.epochs,
         f"stop_after={config.stop_after}: use 1 <= stop_after <= epochs ({config.epochs}) "
         "(--stop-after)"),
        (config.batch_size < 1, f"batch_size={config.batch_size}: use batch_size >= 1"),
        (config.lr <= 0, f"lr={config.lr}: use a positive learning rate"),
        (config.input_noise < 0, f"input_noise={config.input_noise}: use a std >= 0 (--input-noise)"),
        (config.bptt < 0, f"bptt={config.bptt}: use 0 (off) or a positive step count (--bptt)"),
        (config.stride < 1, f"stride={config.stride}: use a whole number of frames >= 1 "
         "(--stride)"),
        (config.rest_weight < 0 or config.rest_steps < 1,
         f"rest_weight={config.rest_weight}, rest_steps={config.rest_steps}: use a weight >= 0 "
         "and at least 1 step (--rest-weight, --rest-steps)"),
        (min(config.energy_weight, config.split_weight, config.descent_weight,
             config.bounds_weight) < 0, "loss weights must be >= 0: check --energy-weight, "
         "--split-weight, --descent-weight, --bounds-weight"),
        (config.lr_schedule not in LR_SCHEDULES, f"lr_schedule={config.lr_schedule!r}: use one "
         f"of {', '.join(LR_SCHEDULES)}"),
        (config.window is not None and config.window < 2,
         f"window={config.window}: use 2 <= window <= the sequence length (--window)"),
    ]
    for name, flag in MODEL_OPTION_FLAGS.items():
        problem = option_problem(name, getattr(config, name))
        problems.append((problem is not None, f"{problem} ({flag})"))
    _refuse(problems)


def _check_data(config: TrainConfig, n_train: int, n_val: int, n_frames: int,
                tau: float) -> None:
    """Refuse a recipe that does not fit the loaded dataset (``tau``: the model's step)."""
    split = split_problem(config.relax_split, config.relax_dt, tau)
    problems = [
        (split is not None, f"{split} (--relax-split, --relax-dt)"),
        (config.window is not None and config.window > max(n_frames, 2),
         f"window={config.window}: use 2 <= window <= {n_frames}, the sequence length (--window)"),
        (n_train == 0 or n_val == 0, f"the dataset has {n_train} training and {n_val} validation "
         "sequences: generate one with at least 2 sequences and val_fraction > 0"),
        (n_frames < 2, f"sequences have {n_frames} frame(s) for training: use frames >= 2 (or "
         "None for all) and a stride shorter than the sequences (--frames, --stride)"),
    ]
    _refuse(problems)


def _check_training_memory(config: TrainConfig, data, device: torch.device) -> None:
    """Refuse a run whose dataset or batch activations cannot fit, before loading anything."""
    from .memory import check_memory, train_bytes

    c = data.config
    frames = math.ceil(min(c.frames, config.frames or c.frames) / config.stride)
    held, batch = train_bytes(len(data.train) + len(data.val), frames, c.size, config.downscale,
                              config.batch_size, config.model.hidden, config.model.n_layers,
                              config.window, config.lattice_average, config.relax_dt > 0)
    fix = "use fewer frames or sequences, a smaller batch size or a larger downscale"
    n = len(data.train) + len(data.val)
    what = f"training on {n} sequences of {frames} frames at {c.size}^3"
    if device.type == "cpu":
        check_memory(held + batch, what, None, fix)
    else:
        check_memory(held, f"holding the dataset for {what}", None, fix)
        check_memory(batch, f"a batch of {config.batch_size} for {what}", device, fix)


def _write_logs(out: Path, history: list[dict]) -> None:
    """Rewrite ``metrics.jsonl`` and ``loss.png`` from the whole history (idempotent)."""
    from matplotlib.figure import Figure

    atomic_write_text(out / "metrics.jsonl", "".join(json.dumps(h) + "\n" for h in history))
    fig = Figure(figsize=(6, 4))
    ax = fig.add_axes((0.15, 0.12, 0.81, 0.84))
    epochs = [h["epoch"] + 1 for h in history]
    for key, style, label in [("train_loss", "o-", "train (curriculum)"),
                              ("val_loss", "s-", "validation (curriculum)"),
                              ("val_loss_full", "^--", "validation (full sequence)")]:
        ax.semilogy(epochs, [h[key] for h in history], style, label=label)
    best = select_best_epoch(history) + 1
    ax.axvline(best, color="0.6", lw=0.8, label=f"best.pt (epoch {best})")
    ax.set(xlabel="epoch", ylabel="loss: MSE of phi + weighted terms")
    ax.xaxis.get_major_locator().set_params(integer=True)
    ax.legend()
    with DRAW_LOCK:
        atomic_write(out / "loss.png", lambda tmp: fig.savefig(tmp, format="png", dpi=80))


# --------------------------------------------------------------------------- training


def _initial_weights(model: CRNN, init: str | None) -> dict | None:
    """Load the weights of checkpoint ``init`` into ``model`` (fine-tuning); returns the
    parent's provenance for the new recipe (None without ``init``). The parent may step by
    another tau (a run with another ``stride`` starts from its weights)."""
    if init is None:
        return None
    parent = load_checkpoint(init)
    theirs, ours = parent.info, model.info
    for name in ("config", "downscale", "eps", "mobility"):
        if getattr(theirs, name) != getattr(ours, name):
            raise TrainingError(
                f"cannot start from {init}: its {name} {getattr(theirs, name)!r} differs from this "
                f"run's {getattr(ours, name)!r}: train on a dataset and recipe that match it, or "
                "start from random weights (no --init)")
    model.load_state_dict(parent.state_dict())
    return {"path": str(init), "sha256": file_sha256(init), "recipe": theirs.recipe,
            "data": theirs.data}


def _dataset_mismatch(stored: dict, data) -> str | None:
    """Why the dataset ``data`` is not the one a stored run was trained on (its recorded
    ``describe()``), or None. Same recipe and split = same data, wherever the folder is."""
    now = data.describe()
    keys = ("config", "train_indices", "val_indices")
    if not stored or not all(k in stored for k in keys):
        return None  # a run from before datasets were recorded: nothing to compare
    if all(stored[k] == now[k] for k in keys):
        return None
    old_cfg, new_cfg = stored["config"], now["config"]
    diff = [f"{k}={old_cfg.get(k)!r} vs {new_cfg.get(k)!r}" for k in new_cfg
            if old_cfg.get(k) != new_cfg.get(k)][:4]
    return (f"it was trained on the dataset {stored.get('path')}, not {now['path']} ("
            + (", ".join(diff) if diff else "same settings, different train/val split") + ")")


@torch.no_grad()
def _validate(model, val: torch.Tensor, n_gen: int, batch_size: int, ranks: _Ranks,
              weights: LossWeights | None = None) -> float:
    """Mean per-sample loss over the validation set (each rank evaluates a shard)."""
    model.eval()
    mine = list(range(ranks.rank, len(val), ranks.world))
    total = 0.0
    for i in range(0, len(mine), batch_size):
        batch = val[mine[i : i + batch_size]].to(ranks.device)
        total += float(sample_losses(model, batch, n_gen, weights=weights).sum())
    return ranks.sum([total])[0] / len(val)


def _train_epoch(net, optimizer, data: torch.Tensor, config: TrainConfig, epoch: int, n_gen: int,
                 allowed: list[int], ranks: _Ranks, on_batch, should_stop,
                 weights: LossWeights) -> float | None:
    """One epoch of Adam steps; returns the summed per-sample loss, or None if stopped."""
    order, syms = _epoch_plan(config, epoch, len(data), allowed)
    starts = window_starts(config, epoch, len(data), data.shape[1])
    length = min(config.window or data.shape[1], data.shape[1])
    size, n_batches = config.batch_size, math.ceil(len(data) / config.batch_size)
    net.train()
    loss_sum = 0.0
    for b in range(n_batches):
        if should_stop is not None and ranks.sum([float(bool(should_stop()))])[0]:
            return None
        positions = list(range(b * size, min((b + 1) * size, len(data))))
        mine = positions[ranks.rank :: ranks.world]
        weight = len(mine) * ranks.world / len(positions)  # DDP's gradient average = global mean
        mine = mine or positions[:1]  # an idle rank still joins the all-reduce, with weight 0
        batch = torch.stack([augment(data[order[p], starts[p] : starts[p] + length], int(syms[p]))
                             for p in mine]).to(ranks.device)
        losses = sample_losses(net, batch, n_gen, config.input_noise, weights, config.bptt)
        total = losses.mean()
        if config.rest_weight:  # a function of (seed, epoch, batch): the same after a resume
            rng = np.random.default_rng([config.seed, epoch, b, 0x52455354])  # "REST"
            rest = rest_states(rng, len(mine), data.shape[-1] * config.downscale,
                               config.downscale, config.coarse, weights.eps)
            total = total + config.rest_weight * rest_losses(
                net, torch.from_numpy(rest).to(ranks.device), config.rest_steps).mean()
        if not bool(torch.isfinite(losses).all() and torch.isfinite(total)):
            raise TrainingError(f"training diverged (non-finite loss) in epoch {epoch + 1}: lower "
                                "--lr or --grad-clip and resume; last.pt holds the last good epoch")
        optimizer.zero_grad(set_to_none=True)
        (total * weight).backward()
        if config.grad_clip:
            torch.nn.utils.clip_grad_norm_(net.parameters(), config.grad_clip)
        optimizer.step()
        loss_sum += float(losses.detach().sum()) if weight > 0 else 0.0
        on_batch(b, n_batches, float(losses.detach().mean()))
    return ranks.sum([loss_sum])[0]


def train(
    dataset_dir: str | Path,
    out_dir: str | Path,
    config: TrainConfig | None = None,
    resume: bool = False,
    progress: bool = True,
    callback: Callable[[dict], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
) -> Path:
    """Train a CRNN on the ``chflow dataset`` folder ``dataset_dir``; returns ``out_dir/best.pt``.

    ``config=None``: the stored config when resuming, else ``TrainConfig()``. ``resume=True``
    continues the run in ``out_dir`` after its last completed epoch (bitwise as if uninterrupted,
    on the same hardware and thread count), or starts one if there is none. ``callback(event)``
    gets dicts with ``event`` "start", "batch" or "epoch" and the losses (rank 0 only).
    ``should_stop()`` is polled before each batch: the partial epoch is dropped, ``last.pt`` keeps
    the last completed one. ``best.pt`` exists once an epoch has completed.
    """
    out = Path(out_dir)
    last_path, best_path = out / "last.pt", out / "best.pt"
    resumed = state = stored = None
    if last_path.exists():  # read before the rendezvous: no rank can have written yet
        if not resume:
            raise TrainingError(f"{out} already holds a training run (last.pt): pass resume=True "
                                "(--resume) to continue it, or choose another output folder")
        resumed = load_checkpoint(last_path)
        state = resumed.extra["train_state"]
        stored = config_from_dict(state["config"])
    if config is None and stored is not None:  # a resumed staged run goes on to the end
        config = dataclasses.replace(stored, stop_after=None)
    config = config or TrainConfig()
    if config.num_threads:
        torch.set_num_threads(config.num_threads)
    ranks, created = _setup_ranks(config.device)
    try:
        _check_config(config, stored)
        data = load_dataset(dataset_dir)
        mismatch = _dataset_mismatch(resumed.info.data, data) if resumed is not None else None
        if mismatch:
            raise TrainingError(f"cannot resume the run in {out}: {mismatch}: resume with its "
                                "dataset, or train on this one into a new output folder")
        _check_training_memory(config, data, ranks.device)
        train_set = load_sequences(data.train, config.downscale, config.frames, config.coarse,
                                   config.stride)
        val_set = load_sequences(data.val, config.downscale, config.frames, config.coarse,
                                 config.stride)
        n_frames = train_set.shape[1] if train_set.ndim == 5 else 0
        _check_data(config, len(train_set), len(val_set), n_frames,
                    data.config.tau * config.stride)
        if config.window and config.window < n_frames:  # validate on consecutive windows
            n_frames = config.window
            val_set = split_windows(val_set, n_frames)
        weights = loss_weights(config, data.config.eps)
        allowed = allowed_symmetries(train_set.shape)

        torch.manual_seed(config.seed)
        physics = {k: getattr(data.config, k) for k in ("eps", "mobility")}
        physics["tau"] = data.config.tau * config.stride
        model = CRNN(config.model, downscale=config.downscale, coarse=config.coarse,
                     guard_iters=config.guard_iters, flux_limit=config.flux_limit,
                     lattice_average=config.lattice_average, relax_dt=config.relax_dt,
                     relax_limit=config.relax_limit, relax_split=config.relax_split,
                     **physics).to(ranks.device)
        parent = _initial_weights(model, config.init) if state is None else state.get("parent")
        optimizer = torch.optim.Adam(model.parameters(), lr=config.lr)
        history, wall, start = [], 0.0, 0
        if state is not None:
            model.load_state_dict(resumed.state_dict())
            optimizer.load_state_dict(state["optimizer"])
            _set_rng_state(state["rng"])
            history, wall, start = state["history"], state["wall_seconds"], state["epoch"] + 1
        net = model
        if ranks.world > 1:
            from torch.nn.parallel import DistributedDataParallel

            cuda = ranks.device.type == "cuda"
            net = DistributedDataParallel(model, device_ids=[ranks.device] if cuda else None)
        writer = ranks.rank == 0
        if writer and history:
            _write_logs(out, history)  # the kill may have come between last.pt and the logs
        emit = callback if (callback is not None and writer) else (lambda event: None)
        emit({"event": "start", "history": list(history), "epochs": config.epochs,
              "n_frames": n_frames})

        from tqdm.auto import tqdm

        full = n_frames - 1
        n_batches = math.ceil(len(train_set) / config.batch_size)
        end = config.stop_after or config.epochs
        bar = tqdm(total=max(end - start, 0) * n_batches, desc="train", unit="batch",
                   disable=not progress or not writer)
        for epoch in range(start, end):
            t0 = time.perf_counter()
            n_gen = curriculum_length(epoch, n_frames, config.curriculum_epochs)
            lr = optimizer.param_groups[0]["lr"] = learning_rate(config, epoch)

            def on_batch(b: int, n: int, loss: float) -> None:
                bar.update()
                bar.set_postfix(epoch=epoch + 1, gen=n_gen, loss=f"{loss:.3g}")
                emit({"event": "batch", "epoch": epoch, "batch": b, "n_batches": n,
                      "train_loss": loss, "curriculum_length": n_gen})

            loss_sum = _train_epoch(net, optimizer, train_set, config, epoch, n_gen, allowed,
                                    ranks, on_batch, should_stop, weights)
            if loss_sum is None:
                break
            val_loss = val_full = _validate(model, val_set, n_gen, config.batch_size, ranks,
                                            weights)
            if n_gen < full:
                val_full = _validate(model, val_set, full, config.batch_size, ranks, weights)
            seconds = time.perf_counter() - t0
            wall += seconds
            history.append({"epoch": epoch, "train_loss": loss_sum / len(train_set),
                            "val_loss": val_loss, "val_loss_full": val_full,
                            "curriculum_length": n_gen, "full_length": full, "seconds": seconds,
                            "lr": lr})
            best = select_best_epoch(history)
            if writer:
                recipe = {"train_config": dataclasses.asdict(config), "epochs_done": epoch + 1,
                          "wall_seconds": wall, "hardware": _hardware(ranks), "best_epoch": best,
                          "best_val_loss_full": history[best]["val_loss_full"]}
                if parent is not None:
                    recipe["init_from"] = parent
                description = data.describe()
                if best == epoch:  # best.pt before last.pt: a kill in between re-runs this epoch
                    save_checkpoint(best_path, model, recipe=recipe, data=description)
                train_state = {"config": dataclasses.asdict(config), "epoch": epoch,
                               "history": history, "optimizer": optimizer.state_dict(),
                               "rng": _rng_state(), "wall_seconds": wall, "parent": parent}
                save_checkpoint(last_path, model, recipe=recipe, data=description,
                                extra={"train_state": train_state})
                _write_logs(out, history)
            emit({"event": "epoch", **history[-1], "best_epoch": best})
        bar.close()
        return best_path
    finally:
        if created:
            dist.destroy_process_group()


# --------------------------------------------------------------------------- command line


def add_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Add the training options (for ``chflow train`` and ``python -m``) to ``parser``. Unset
    options are None: :func:`config_from_args` fills them from the defaults or the stored run."""
    d = TrainConfig()
    add = parser.add_argument
    add("dataset", help="dataset folder written by `chflow dataset`")
    add("-o", "--out", required=True, help="output folder (best.pt, last.pt, metrics, loss.png)")
    add("--epochs", type=int, help=f"total number of epochs (default {d.epochs})")
    add("--lr", type=float, help=f"Adam learning rate (default {d.lr:g}; the paper: 1e-5)")
    add("--batch-size", type=int, help=f"global batch size (default {d.batch_size})")
    add("--curriculum-epochs", type=int,
        help=f"epochs from last-frame to whole-sequence training (default {d.curriculum_epochs})")
    add("--downscale", type=int, help=f"nearest grid downscale factor (default {d.downscale})")
    add("--frames", type=int, help="use only the first N frames of each sequence (default: all)")
    add("--no-augment", dest="augment", action="store_false", default=None,
        help="turn off the random 96-symmetry augmentation")
    add("--lr-schedule", choices=LR_SCHEDULES,
        help=f"constant, or cosine decay to lr*{LR_FINAL_FRACTION:g} (default {d.lr_schedule})")
    add("--init", metavar="CHECKPOINT",
        help="start from this checkpoint's weights (fine-tune) instead of random ones")
    add("--input-noise", type=float,
        help=f"std of zero-mean noise added to model inputs in training (default {d.input_noise:g})")
    add("--coarse", choices=COARSE_MODES,
        help=f"full grid -> model grid: nearest sampling (the paper) or block mean "
             f"(default {d.coarse})")
    add("--window", type=int, help="train on one random window of N consecutive frames per "
        "sequence and epoch (long late-time sequences; default: whole sequences)")
    add("--bptt", type=int, help="truncate backpropagation through time every N steps (default: "
        "off)")
    add("--energy-weight", type=float, help="weight of the squared relative F/V error per frame "
        f"(default {d.energy_weight:g})")
    add("--split-weight", type=float, help="weight of the bulk/gradient energy split error "
        f"(equilibrium interfaces: equipartition; default {d.split_weight:g})")
    add("--descent-weight", type=float, help="weight of the penalty on F falling slower than the "
        f"ground truth's, or rising (default {d.descent_weight:g})")
    add("--bounds-weight", type=float, help="weight of the squared excursion of phi beyond "
        f"[0, 1] (or the true range if wider; default {d.bounds_weight:g})")
    add("--rest-weight", type=float, help="weight of the drift of slabs at rest (random sub-cell "
        "positions) over --rest-steps free-running steps; against lattice pinning (default "
        f"{d.rest_weight:g})")
    add("--rest-steps", type=int, help=f"steps of each rest rollout (default {d.rest_steps})")
    add("--stride", type=int, metavar="N", help="frames of the dataset per model step: the "
        f"model's tau is N times the dataset's (default {d.stride}, the paper's)")
    add("--energy-guard", dest="guard_iters", type=int, metavar="N",
        help="energy guard: after each CRNN step, up to N Cahn-Hilliard relaxation steps on the "
             "model grid while the free energy rose (in training and in the saved model; "
             f"default {d.guard_iters} = off, the paper's CRNN)")
    add("--flux-limit", type=float, metavar="M",
        help="flux limiter: keep phi within [-M, 1 + M] by limiting the divergence layer's "
             "fluxes, mass still exact (in training and in the saved model; default: off, the "
             "paper's CRNN)")
    add("--lattice-average", type=int, metavar="K", choices=sorted(LATTICE_IMAGES),
        help="average each step over K lattice images of the state (1, 4, 6, 8 or 12; K times "
             "the cost per step; in training and in the saved model): 4 and 8 shift by half "
             "cells, so interfaces stop snapping to the model grid; 6 and 12 also rotate the "
             "axes (cubic grids), so settled arrangements stop drifting (default 1 = off, the "
             "paper's CRNN)")
    add("--relax-dt", type=float, metavar="H",
        help="fine-grid relaxation: end each step with a semi-implicit Cahn-Hilliard step of H "
             "(model time units) on the solvers' grid, Fourier-interpolated; no lattice pinning "
             "(in training and in the saved model; default 0 = off, the paper's CRNN)")
    add("--relax-limit", type=float, metavar="R",
        help="keep the fine-grid relaxation's change within [-R, 1 + R], applied as limited "
             "fluxes with mass exact (in training and in the saved model; default: the "
             "--flux-limit bounds)")
    add("--relax-split", action="store_true", default=None,
        help="take the fine-grid relaxation's time out of the network's step (its flux scaled "
             "by 1 - H / tau), so that network and relaxation together span tau; without it a "
             "step spans about tau + H and the model runs ahead of the solver (needs "
             "0 < --relax-dt < tau; in training and in the saved model)")
    add("--grad-clip", type=float, help=f"max gradient norm, 0 = off (default {d.grad_clip})")
    add("--seed", type=int, help=f"seed of weights, data order, augmentation (default {d.seed})")
    add("--device", help="cpu (default) or cuda")
    add("--threads", dest="num_threads", type=int, help="torch CPU threads per process")
    add("--stop-after", type=int, metavar="N", help="end after epoch N of --epochs; the lr "
        "schedule still spans --epochs, and --resume continues it (default: all epochs)")
    add("--resume", action="store_true", help="continue the run in --out after its last epoch")
    add("--quiet", action="store_true", help="no progress bar")
    return parser


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    """:class:`TrainConfig` from :func:`add_arguments` options; options left unset come from the
    stored run when resuming, else from the defaults."""
    stored = stored_config(args.out) if args.resume else None
    base = dataclasses.replace(stored, stop_after=None) if stored else TrainConfig()
    names = [f.name for f in dataclasses.fields(TrainConfig) if f.name != "model"]
    given = {k: getattr(args, k) for k in names if getattr(args, k, None) is not None}
    if given.get("grad_clip") == 0:
        given["grad_clip"] = None
    return dataclasses.replace(base, **given)


def run_from_args(args: argparse.Namespace) -> Path:
    """Run :func:`train` from parsed :func:`add_arguments` options; returns the best.pt path."""
    return train(args.dataset, args.out, config_from_args(args), resume=args.resume,
                 progress=not args.quiet)


def main(argv: list[str] | None = None, prog: str = "python -m napari_chflow.training") -> int:
    """``python -m napari_chflow.training DATASET -o OUT [options]`` (also under ``torchrun``);
    returns the exit status (2 with a one-line message for user errors)."""
    parser = argparse.ArgumentParser(prog=prog, description=__doc__.split("\n")[0])
    args = add_arguments(parser).parse_args(argv)
    try:
        best = run_from_args(args)
    except ValueError as err:  # user errors: TrainingError, dataset / checkpoint / grid problems
        print(f"error: {err}", file=sys.stderr)
        return 2
    if int(os.environ.get("RANK", "0")) == 0:
        print(best)
    return 0


if __name__ == "__main__":
    sys.exit(main())
