"""What the model was trained on (:func:`training_spec`) and held-out initial conditions drawn by
the same recipe with seeds it never saw (:func:`heldout_ics`)."""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np

from ..dataset import DatasetConfig, initial_condition, sequence_params
from .config import ValidationError


@dataclass(frozen=True)
class TrainingSpec:
    """What the model saw in training: box ``size``, ``frames`` per sequence, ``tau`` between
    them; ``known`` is False when the checkpoint has no data description (defaults: the paper)."""

    size: int
    frames: int
    tau: float
    known: bool
    dataset: DatasetConfig | None = None
    train_seeds: frozenset = frozenset()

    @property
    def n_tau(self) -> int:
        """Training sequence length in tau (frames - 1)."""
        return max(self.frames - 1, 1)


def training_spec(model) -> TrainingSpec:
    """Read the training box, sequence length and Perlin seeds from ``model.info.data`` /
    ``model.info.recipe`` (a ``frames`` limit or a ``window`` in the train config shortens the
    sequences the model saw; a ``stride`` keeps every stride-th frame, ``tau`` apart)."""
    data, recipe = model.info.data or {}, model.info.recipe or {}
    cfg = None
    if isinstance(data.get("config"), dict):
        try:
            cfg = DatasetConfig.from_dict(data["config"])
        except (TypeError, ValueError):
            cfg = None
    if cfg is None:
        return TrainingSpec(64, 50, model.info.tau, False)
    tc = recipe.get("train_config") or {}
    stride = int(tc.get("stride") or 1)
    frames = min(cfg.frames, int(tc.get("frames") or cfg.frames))  # first frames,
    frames = len(range(0, frames, stride))  # every stride-th of them, then sampled windows
    frames = min(frames, int(tc.get("window") or frames))
    params = (sequence_params(cfg, i) for i in range(cfg.n_seq))
    seeds = frozenset(p["seed"] for p in params if p["kind"] == "perlin")  # not the sphere seeds
    return TrainingSpec(cfg.size, frames, cfg.tau * stride, True, cfg, seeds)


def heldout_ics(spec: TrainingSpec, n: int, size: int, offset: int = 10_000,
                start: int = 0, mean: float = 0.5) -> list[tuple[np.ndarray, dict]]:
    """``n`` Perlin ICs ``(size, size, size) float32`` drawn by the training recipe with dataset
    seed ``training seed + offset`` and mean phi ``mean``, skipping any whose Perlin seed was used
    in training. Returns ``(phi0, params)`` pairs; ``start`` shifts the recipe indices."""
    base = spec.dataset or DatasetConfig(n_seq=1)
    cfg = replace(base, n_seq=start + 4 * n + 16, size=int(size), seed=base.seed + offset,
                  mean_phi=float(mean), mean_phi_std=0.0, mean_phi_range=(0.25, 0.75), shapes_fraction=0.0)
    out: list[tuple[np.ndarray, dict]] = []
    for i in range(start, cfg.n_seq):
        p = sequence_params(cfg, i)
        if p["seed"] in spec.train_seeds:
            continue
        out.append((initial_condition(cfg, i), {**p, "dataset_seed": cfg.seed, "index": i}))
        if len(out) == n:
            return out
    raise ValidationError(f"could not draw {n} held-out ICs: use a different heldout_seed_offset")
