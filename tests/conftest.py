"""Shared fixtures: small grids, fixed seeds, and the ../shared folder beside the repo."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"
BUNNY_DIR = SHARED / "data" / "stanford_bunny"


@pytest.fixture(scope="session")
def shared_dir() -> Path:
    """The read-only ``../shared`` folder (paper, bunny meshes) laid beside the repository."""
    if not SHARED.is_dir():
        pytest.skip(f"{SHARED} is missing: clone the repo next to the project's shared/ folder")
    return SHARED


@pytest.fixture(scope="session")
def bunny_path(shared_dir) -> Path:
    """Local copy of the coarsest Stanford bunny mesh (tests never download)."""
    path = BUNNY_DIR / "bun_zipper_res3.ply"
    if not path.is_file():
        pytest.skip(f"{path} missing")
    return path


@pytest.fixture(autouse=True, scope="session")
def _local_bunny_env():
    """Point the bunny loader at the local copy so no test reaches the network."""
    if BUNNY_DIR.is_dir():
        os.environ.setdefault("CHFLOW_BUNNY_PATH", str(BUNNY_DIR / "bun_zipper_res3.ply"))
    yield


@pytest.fixture(scope="session")
def perlin32() -> np.ndarray:
    """A 32^3 periodic Perlin initial condition, mean 0.5, fixed seed."""
    from napari_chflow.seeds import perlin

    return perlin((32, 32, 32), mean=0.5, seed=3)


@pytest.fixture(scope="session")
def perlin16() -> np.ndarray:
    """A 16^3 periodic Perlin initial condition, mean 0.5, fixed seed."""
    from napari_chflow.seeds import perlin

    return perlin((16, 16, 16), mean=0.5, seed=5)


@pytest.fixture(scope="session")
def tiny_dataset_factory(tmp_path_factory):
    """``make(n_seq, seed) -> Path``: a Cahn-Hilliard dataset of ``n_seq`` sequences of 5 frames
    on 16^3 (8^3 after downscale), spectral solver, all starting from noise; cached per arguments."""
    from napari_chflow.dataset import DatasetConfig, generate_dataset

    made: dict[tuple[int, int], Path] = {}

    def make(n_seq: int, seed: int) -> Path:
        if (n_seq, seed) not in made:
            out = tmp_path_factory.mktemp("dataset")
            config = DatasetConfig(n_seq=n_seq, frames=5, size=16, solver="spectral",
                                   later_start_fraction=0, perlin_scales=(8.0,),
                                   perlin_layers=(1,), seed=seed)
            generate_dataset(out, config, progress=False)
            made[(n_seq, seed)] = out
        return made[(n_seq, seed)]

    return make


@pytest.fixture(scope="session")
def figure_problems():
    """``check(fig) -> list[str]``: what makes a drawn matplotlib figure hard to read: text
    outside the figure (clipped), a label or legend over another axes, a legend over data, an
    axis with fewer than two tick labels."""

    def check(fig) -> list[str]:
        from matplotlib.backends.backend_agg import FigureCanvasAgg

        canvas = FigureCanvasAgg(fig)
        canvas.draw()
        renderer = canvas.get_renderer()
        box = fig.bbox
        problems = []
        axes = [ax for ax in fig.axes if ax.get_visible()]
        legends = list(fig.legends) + [ax.get_legend() for ax in axes if ax.get_legend()]
        drawn = [(f"axes {ax.get_ylabel()!r}", ax.get_tightbbox(renderer)) for ax in axes]
        drawn += [("legend", legend.get_window_extent(renderer)) for legend in legends]
        drawn += [(repr(t.get_text()), t.get_window_extent(renderer)) for t in fig.texts
                  if t.get_visible() and t.get_text()]
        for name, b in drawn:
            if b.x0 < box.x0 - 1 or b.y0 < box.y0 - 1 or b.x1 > box.x1 + 1 or b.y1 > box.y1 + 1:
                problems.append(f"clipped: {name}")
        for ax in axes:
            own = ax.get_tightbbox(renderer)
            for other in axes:
                apart = not other.bbox.overlaps(ax.bbox)
                if other is not ax and apart and own.overlaps(other.bbox):
                    problems.append(f"labels of {ax.get_ylabel()!r} reach into "
                                    f"{other.get_ylabel()!r}")
            labels = [t for t in ax.get_yticklabels() if t.get_text() and ax.bbox.y0 - 1
                      <= t.get_window_extent(renderer).y0 <= ax.bbox.y1 + 1]
            if len(labels) < 2:
                problems.append(f"{ax.get_ylabel()!r} has {len(labels)} y tick label(s)")
        for legend in legends:
            lb = legend.get_window_extent(renderer)
            for ax in axes:
                if lb.overlaps(ax.bbox):
                    problems.append(f"legend over the axes {ax.get_ylabel()!r}")
        return problems

    return check
