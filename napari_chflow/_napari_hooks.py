"""npe2 reader, writer and sample data of the napari plugin (no Qt here).

Reader: a chflow zarr sequence store (``*.zarr`` folder, see :mod:`napari_chflow.io`) opens as
one lazy ``(T, Z, Y, X)`` Image layer with ``scale = (tau, d, d, d)`` (``d`` the grid spacing,
the attribute ``downscale`` when present), axis labels ``t, z, y, x`` and the store's attributes
in ``layer.metadata["chflow"]``. Writer: an Image layer ``(T, Z, Y, X)`` or ``(Z, Y, X)`` back to
such a store, with ``tau`` from the layer's time scale and the ``chflow`` metadata as attributes.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from napari_chflow import __version__, io

LAYER_STYLE = {"contrast_limits": (0.0, 1.0), "rendering": "iso", "iso_threshold": 0.5}
SAMPLE_SHAPE = (64, 64, 64)


def _single_path(path) -> str | None:
    if isinstance(path, (list, tuple)):
        if len(path) != 1:
            return None
        path = path[0]
    return str(path)


def get_reader(path):
    """The reader for ``path`` if it is a chflow sequence store, else ``None`` (for napari)."""
    path = _single_path(path)
    if path is None or not io.is_sequence_store(path):
        return None
    return read_sequence_layers


def read_sequence_layers(path) -> list[tuple[Any, dict, str]]:
    """Open a sequence store lazily as an Image layer tuple (``SequenceFormatError`` if broken)."""
    path = Path(_single_path(path))
    seq = io.open_sequence(path)
    attrs = dict(seq.attrs)
    tau = float(attrs.get("tau") or 0.5)
    spacing = float(attrs.get("downscale") or 1)
    name = path.name.removesuffix(".zarr")
    kwargs = {
        "name": name,
        "scale": (tau, spacing, spacing, spacing),
        "axis_labels": ("t", "z", "y", "x"),
        "metadata": {"chflow": attrs, "source": str(path)},
        **LAYER_STYLE,
    }
    return [(seq.phi, kwargs, "image")]


def write_sequence_layer(path: str, data, attributes: dict) -> list[str]:
    """Write one Image layer as a sequence store at ``path`` (replacing an existing store)."""
    data = data if getattr(data, "ndim", 0) == 4 else np.asarray(data)[None]
    if data.ndim != 4:
        raise ValueError(f"layer {attributes.get('name')!r} has shape {data.shape}: the chflow "
                         "writer saves (Z, Y, X) volumes or (T, Z, Y, X) sequences; pick one")
    meta = dict((attributes.get("metadata") or {}).get("chflow") or {})
    attrs = {k: v for k, v in meta.items() if k not in io.RESERVED_ATTRS}
    scale = attributes.get("scale")
    if scale is not None and len(scale) == 4:
        attrs["tau"] = float(scale[0])
        spacing = float(scale[1])
        attrs["downscale"] = int(spacing) if spacing.is_integer() else spacing
    frames = (np.asarray(data[i], dtype=np.float32) for i in range(data.shape[0]))
    io.write_sequence(path, frames, attrs=attrs, overwrite=True)
    return [str(path)]


# --------------------------------------------------------------------------- sample data


def _sample(phi: np.ndarray, name: str, seed: dict) -> list[tuple[np.ndarray, dict, str]]:
    return [(phi, {"name": name, "metadata": {"chflow": {"seed": seed}}, **LAYER_STYLE}, "image")]


def sample_perlin():
    """Periodic Perlin noise on 64^3 with mean phi 0.5 (the paper's kind of initial condition)."""
    from napari_chflow.seeds import perlin

    seed = {"kind": "perlin", "shape": list(SAMPLE_SHAPE), "mean": 0.5, "seed": 0}
    return _sample(perlin(SAMPLE_SHAPE, mean=0.5, seed=0), "Perlin 64^3", seed)


def _cache_dir() -> Path:
    import pooch

    return Path(pooch.os_cache("napari-chflow")) / "samples"


def _cached(key: str, make) -> np.ndarray:
    """``make()`` computed once per package version and kept as ``.npy`` in the user cache
    (voxelising the bunny takes seconds; napari loads samples on the GUI thread)."""
    path = _cache_dir() / f"{key}-{__version__}.npy"
    if path.is_file():
        try:
            return np.load(path)
        except (OSError, ValueError):
            pass  # damaged cache file: recompute and replace it
    phi = make()
    try:
        io.atomic_write(path, lambda tmp: np.save(tmp, phi))
    except OSError:
        pass  # read-only cache: just do not keep it
    return phi


def sample_bunny():
    """The Stanford bunny voxelised on 64^3 (phi = 1 inside, tanh interface), cached after the
    first call."""
    from napari_chflow.seeds import stanford_bunny

    source = Path(os.environ.get("CHFLOW_BUNNY_PATH") or "download").name
    key = f"bunny-{'x'.join(map(str, SAMPLE_SHAPE))}-{source}"
    phi = _cached(key, lambda: stanford_bunny(SAMPLE_SHAPE))
    seed = {"kind": "stanford_bunny", "shape": list(SAMPLE_SHAPE)}
    return _sample(phi, "Stanford bunny 64^3", seed)


def sample_two_spheres():
    """Two unequal spheres one grid unit apart on 64^3: a neck forms, the small one is absorbed."""
    from napari_chflow.seeds import two_spheres

    seed = {"kind": "two_spheres", "shape": list(SAMPLE_SHAPE)}
    return _sample(two_spheres(SAMPLE_SHAPE), "Two spheres", seed)
