"""Validation report (``chflow validate``): the paper's tests of the CRNN, rerun with our model and
solvers, written to ``docs/validation.md`` with PNG figures in ``docs/validation/``.

Experiments (Lanzoni et al. 2024, sec. 3 and appendix A), each beside the paper's number:

1. time extrapolation: held-out Perlin ICs rolled out 2x, 10x, 100x the training length;
2. domain extrapolation: a box twice as large as in training, for twice the training length;
3. the Stanford bunny: ground truth vs CRNN isosurfaces and metric traces;
4. coarsening: F/V vs t (log-log), fitted exponents, relative F/V error;
5. an ensemble of random ICs: mean and std of F/V;
6. speed and memory of the explicit solver, the spectral solver and the CRNN;
7. long horizon (not a figure of the paper; its claim of thermodynamic consistency): F/V error,
   the fraction of CRNN steps in which F/V rises, the coarsening exponent and the bulk/gradient
   energy split over a long run from two held-out ICs, and an equilibrium slab at rest.

Conventions. RMSE and interface displacement (paper eq. 4) are evaluated on the full-resolution
grid with the CRNN frame upsampled (nearest), the stricter of the paper's two conventions (sec.
3.3); the RMSE on the model grid (appendix B: ground truth downsampled) is given beside it. F/V is
compared like for like on the model grid, the ground truth mapped to it as the model maps its
input (:func:`napari_chflow.model.to_model_grid`: nearest sampling or block mean) with grid
spacing ``downscale`` (the CRNN's target is exactly the mapped ground truth): a nearest upsampled
CRNN frame has staircase interfaces whose gradient energy is far too large. Held-out
ICs come from the training recipe (:func:`napari_chflow.dataset.sequence_params`) with the
training dataset seed + ``heldout_seed_offset`` and mean phi 0.5; their Perlin seeds are checked
against the training ones. Times are in model units, lengths in grid units of the full grid.

Modules: ``config`` (settings, presets), ``heldout`` (training description, held-out ICs),
``paired`` (solver and CRNN side by side, per-frame metrics), ``checks`` (the paper's numbers,
formatting), ``figures``, ``context`` (what an experiment gets and returns), one module per
experiment, and ``report`` (header, summary, :func:`validate`).
"""

from .checks import Check, shortfalls
from .config import PRESETS, SCALES, ValidationConfig, ValidationError, parse_overrides, preset
from .context import Context, Section
from .figures import MAX_PNG_BYTES, isosurface_figure, save_png
from .heldout import TrainingSpec, heldout_ics, training_spec
from .paired import METRIC_KEYS, frame_metrics, overshoot, paired_run, record_frames
from .report import EXPERIMENTS, environment, model_summary, render_report, validate

__all__ = [
    "EXPERIMENTS", "MAX_PNG_BYTES", "METRIC_KEYS", "PRESETS", "SCALES", "Check", "Context",
    "Section", "TrainingSpec", "ValidationConfig", "ValidationError", "environment",
    "frame_metrics", "heldout_ics", "isosurface_figure", "model_summary", "overshoot",
    "paired_run", "parse_overrides", "preset", "record_frames", "render_report", "save_png",
    "shortfalls", "training_spec", "validate",
]
