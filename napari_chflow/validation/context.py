"""What every experiment receives (:class:`Context`) and returns (:class:`Section`)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .checks import Check
from .config import ValidationConfig
from .heldout import TrainingSpec, heldout_ics


@dataclass
class Section:
    """One experiment's part of the report: markdown ``body``, its ``checks`` against the paper,
    ``problems`` (sentences for the shortfall list that are not numeric checks), run time;
    ``ran = False`` for an experiment that could not run (a missing input): reported, but not
    kept for a resumed run, so that the next run tries it again."""

    key: str
    title: str
    body: str = ""
    checks: list[Check] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    seconds: float = 0.0
    ran: bool = True


@dataclass(frozen=True)
class Context:
    """The model, the settings, what the model was trained on, the figure folder and a logger."""

    model: object
    config: ValidationConfig
    spec: TrainingSpec
    fig_dir: Path
    log: Callable[[str], None]

    @property
    def size(self) -> int:
        return int(self.config.size or self.spec.size)

    @property
    def train_n_tau(self) -> int:
        return int(self.config.train_n_tau or self.spec.n_tau)

    @property
    def eps(self) -> float:
        return self.model.info.eps

    @property
    def val_loss(self) -> float:
        v = (self.model.info.recipe or {}).get("best_val_loss_full")
        return float(v) if isinstance(v, (int, float)) else float("nan")

    def ics(self, n: int, size: int, start: int = 0,
            mean: float = 0.5) -> list[tuple[np.ndarray, dict]]:
        return heldout_ics(self.spec, n, size, self.config.heldout_seed_offset, start, mean)

    def fig(self, name: str) -> tuple[Path, str]:
        """``(path to write, link relative to the report)`` of figure ``name``."""
        return self.fig_dir / name, f"{self.fig_dir.name}/{name}"
