"""Settings of the validation report: :class:`ValidationConfig`, the scale presets and
``--set KEY=VALUE`` overrides."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, fields, replace

from .. import physics

SCALES = ("tiny", "cpu", "full")


class ValidationError(ValueError):
    """A validation setting cannot be used (message names the setting and the fix)."""


@dataclass(frozen=True)
class ValidationConfig:
    """Sizes (grid points per side) and lengths (in tau) of the seven experiments.

    ``size`` / ``train_n_tau`` None: the model's training box size and sequence length (from its
    checkpoint). ``long_solver`` is the ground truth of the long runs (1, 4, 5), ``short_solver``
    of the short ones (2, 3). ``n_record``: log-spaced frames at which metrics are evaluated (plus
    the first ten and the reported times). ``memory``: time each method in a fresh process and
    record its peak memory (else: in this process, no memory). ``threads``: torch CPU threads for
    everything (None: leave as is).
    """

    scale: str = "cpu"
    size: int | None = None
    train_n_tau: int | None = None
    time_factors: tuple[int, ...] = (2, 10, 100)
    time_n_ics: int = 5
    long_solver: str = "spectral"
    short_solver: str = "explicit"
    domain_factor: int = 2
    domain_time_factor: int = 2
    domain_n_ics: int = 2
    bunny_size: int | None = 64
    bunny_n_tau: int = 100
    bunny_path: str | None = None
    coarsen_size: int = 128
    coarsen_n_tau: int = 3000
    ensemble_n: int = 20
    ensemble_size: int | None = None
    ensemble_n_tau: int = 500
    long_size: int = 64
    long_n_tau: int = 1000
    long_means: tuple[float, ...] = (0.5, 0.4)
    rest_size: int = 32
    rest_steps: int = 1000
    bench_sizes: tuple[int, ...] = (32, 64, 128)
    memory: bool = True
    n_record: int = 60
    heldout_seed_offset: int = 10_000
    device: str | None = None
    threads: int | None = None

    def __post_init__(self) -> None:
        checks = [
            (self.scale in SCALES or self.scale == "custom",
             f"scale={self.scale!r}: use one of {', '.join(SCALES)}"),
            (self.long_solver in physics.SOLVERS and self.short_solver in physics.SOLVERS,
             f"solvers must be one of {', '.join(physics.SOLVERS)}"),
            (min(self.time_factors, default=0) >= 1, "time_factors must be integers >= 1"),
            (min(self.time_n_ics, self.domain_n_ics, self.ensemble_n) >= 1,
             "time_n_ics, domain_n_ics and ensemble_n must be >= 1"),
            (min(self.bunny_n_tau, self.coarsen_n_tau, self.ensemble_n_tau, self.domain_time_factor,
                 self.domain_factor, self.long_n_tau, self.rest_steps) >= 1,
             "run lengths and factors must be >= 1"),
            (len(self.long_means) >= 1 and all(0 < m < 1 for m in self.long_means),
             "long_means must hold mean phi values in (0, 1)"),
            (len(self.bench_sizes) >= 1 and min(self.bench_sizes) >= 4,
             "bench_sizes must hold grid sizes >= 4"),
            (self.n_record >= 2, "n_record must be >= 2"),
        ]
        for ok, message in checks:
            if not ok:
                raise ValidationError(f"invalid ValidationConfig: {message}")


PRESETS: dict[str, ValidationConfig] = {
    # seconds: for tests and a smoke check of the whole pipeline
    "tiny": ValidationConfig(
        scale="tiny", size=16, train_n_tau=2, time_n_ics=2, domain_n_ics=1, bunny_size=16,
        bunny_n_tau=4, coarsen_size=16, coarsen_n_tau=100, ensemble_n=3, ensemble_size=16,
        ensemble_n_tau=20, long_size=16, long_n_tau=40, rest_size=16, rest_steps=20,
        bench_sizes=(8, 16), n_record=20),
    # on a 2-core CPU: 51 min with the `fast` model on 2 threads, 2.5 h with `default` (4 lattice
    # images and a fine-grid relaxation per step) on 1 thread, of which the 128^3 coarsening 80 min
    # and the time extrapolation 49 min (measured, docs/validation.md). Spectral ground truth for
    # the long runs (it agrees with the explicit solver, see experiment 1), explicit elsewhere
    "cpu": ValidationConfig(scale="cpu"),
    # the paper's sizes for a GPU: 128^3 coarsening, 100-run ensemble on the training box
    "full": ValidationConfig(
        scale="full", time_n_ics=5, domain_n_ics=3, bunny_size=None, coarsen_size=128,
        coarsen_n_tau=20_000, ensemble_n=100, bench_sizes=(32, 64, 128, 256), device="cuda"),
}


def parse_overrides(items: Iterable[str]) -> dict:
    """``["coarsen_n_tau=2000", "time_factors=(2, 10)"]`` -> a dict of :class:`ValidationConfig`
    fields, values read as Python literals (bare words as strings)."""
    import ast

    known = {f.name for f in fields(ValidationConfig)}
    out = {}
    for item in items:
        key, sep, text = item.partition("=")
        key = key.strip().replace("-", "_")
        if not sep or key not in known:
            raise ValidationError(f"bad setting {item!r}: use KEY=VALUE with KEY one of "
                                  f"{', '.join(sorted(known))}")
        try:
            value = ast.literal_eval(text.strip())
        except (ValueError, SyntaxError):
            value = text.strip()
        out[key] = tuple(value) if isinstance(value, list) else value
    return out


def preset(scale: str, **overrides) -> ValidationConfig:
    """The :data:`PRESETS` entry ``scale`` with ``overrides`` (None values are ignored)."""
    if scale not in PRESETS:
        raise ValidationError(f"unknown scale {scale!r}: use one of {', '.join(SCALES)}")
    known = {f.name for f in fields(ValidationConfig)}
    bad = sorted(set(overrides) - known)
    if bad:
        raise ValidationError(f"unknown validation settings {bad}: use fields of ValidationConfig")
    return replace(PRESETS[scale], **{k: v for k, v in overrides.items() if v is not None})
