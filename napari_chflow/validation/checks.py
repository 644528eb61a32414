"""The paper's numbers, one comparison of ours against them (:class:`Check`), and the markdown
formatting of numbers and tables used across the report."""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np

PAPER_DELTA_BOUND = 3.0  # "comparable to eps = 3 for most of the evolution" (sec. 3.3)
PAPER_REL_F_ERROR = 0.055  # "stays below 5.5% for the whole evolution" (sec. 3.3, fig. 6b)
PAPER_GT_EXPONENT = -1 / 3
PAPER_CRNN_LATE_EXPONENT = -0.44
PAPER_SPEEDUP = 1e3  # CRNN on an RTX A4000 vs the (non-optimised) explicit code (sec. 3.2)


@dataclass(frozen=True)
class Check:
    """One comparison: ``ours`` passes if ``ours <= limit`` (``kind="max"``) or ``ours >= limit``
    (``kind="min"``). ``paper`` is the paper's statement the limit comes from, or, with
    ``from_paper=False``, the reason for a sanity limit the paper has no number for.
    ``percent`` shows values as percentages."""

    experiment: str
    quantity: str
    ours: float
    paper: str
    limit: float
    kind: str = "max"
    unit: str = ""
    percent: bool = False
    from_paper: bool = True

    @property
    def ok(self) -> bool:
        if not math.isfinite(self.ours):
            return False
        return self.ours <= self.limit if self.kind == "max" else self.ours >= self.limit

    def show(self, value: float) -> str:
        """``value`` formatted like this check's numbers (with unit or as a percentage)."""
        if self.percent and math.isfinite(value):
            return f"{100 * value:.3g}%"
        return num(value) + self.unit

    def shortfall(self) -> str | None:
        """None if the check passes, else one sentence saying by how much it misses."""
        if self.ok:
            return None
        head = f"{self.experiment}: {self.quantity}"
        source = f"paper: {self.paper}" if self.from_paper else self.paper
        if not math.isfinite(self.ours):
            return f"{head} could not be measured (run diverged or no data); {source}"
        if self.kind == "max":
            ratio = self.ours / self.limit if self.limit > 0 else float("inf")
            by = (f"{_pct(ratio - 1)} above" if ratio < 2 else f"{ratio:.3g} times" if
                  math.isfinite(ratio) else f"{num(self.ours - self.limit)} above")
        else:
            by = (f"a factor {self.limit / self.ours:.3g} below" if self.ours > 0
                  else f"{num(self.limit - self.ours)} below")
        return f"{head} = {self.show(self.ours)}, {by} the limit {self.show(self.limit)} ({source})"

    def verdict(self) -> str:
        return "meets" if self.ok else "**falls short**"


def _pct(x: float) -> str:
    return f"{x:.0%}" if abs(x) >= 0.01 else f"{100 * x:.2g}%"


def shortfalls(checks: Iterable[Check]) -> list[str]:
    """The :meth:`Check.shortfall` sentences of the failing checks, in order."""
    return [s for s in (c.shortfall() for c in checks) if s]


# --------------------------------------------------------------------------- formatting


def num(x: float, digits: int = 3) -> str:
    """``x`` with ``digits`` significant digits (exponent form outside [1e-3, 1e5)), "n/a" if
    not finite."""
    if x is None or not np.isfinite(x):
        return "n/a"
    if x == 0:
        return "0"
    if 1e-3 <= abs(x) < 1e5:
        return f"{x:.{digits}g}"
    return f"{x:.{max(digits - 1, 1)}e}"


def pm(mean: float, std: float) -> str:
    """``"mean ± std"`` (the mean alone when the std is zero or not finite)."""
    return f"{num(mean)} ± {num(std, 2)}" if np.isfinite(std) and std > 0 else num(mean)


def table(header: Sequence[str], rows: Iterable[Sequence]) -> str:
    """Markdown table; ``|`` inside cells is escaped."""
    def cells(row) -> str:
        return "| " + " | ".join(str(c).replace("|", "\\|") for c in row) + " |"

    return "\n".join([cells(header), "|" + "---|" * len(header), *(cells(r) for r in rows)])
