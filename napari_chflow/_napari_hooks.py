"""npe2 reader, writer, sample data and activation of the napari plugin (no Qt here).

Reader: a chflow zarr sequence store (``*.zarr`` folder, see :mod:`napari_chflow.io`) opens as
one lazy ``(T, Z, Y, X)`` Image layer with ``scale = (tau, d, d, d)`` (``d`` the grid spacing,
the attribute ``downscale`` when present), axis labels ``t, z, y, x``, the store's attributes in
``layer.metadata["chflow"]`` and the display it was saved with (colormap, translate, rendering,
...: attribute ``display``). Other ``.zarr`` folders are handed to napari's built-in reader, so
:func:`activate` can make the plugin napari's reader for ``.zarr`` folders (no "choose a reader"
dialog) without changing how other zarr stores open. Writer: an Image layer ``(T, Z, Y, X)`` or
``(Z, Y, X)`` back to such a store, with ``tau`` from the layer's time scale, the ``chflow``
metadata and the display as attributes; anything else is refused with a notification.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from napari_chflow import __version__, io

LAYER_STYLE = {"contrast_limits": (0.0, 1.0), "rendering": "iso", "iso_threshold": 0.5}
SAMPLE_SHAPE = (64, 64, 64)
PLUGIN = "napari-chflow"
ZARR_FOLDERS = "*.zarr" + os.sep  # napari matches reader preferences against "<folder>/"
#: layer properties saved with a sequence and restored when it is opened
DISPLAY_KEYS = ("colormap", "translate", "rendering", "iso_threshold", "contrast_limits",
                "blending", "opacity", "gamma")


def activate(context=None) -> None:
    """npe2 ``on_activate`` (the first time any command of the plugin runs): make the plugin
    napari's reader for ``.zarr`` folders unless the user already chose one for them."""
    prefer_for_zarr()


def prefer_for_zarr() -> bool:
    """Set napari's reader preference ``*.zarr/`` -> napari-chflow unless one exists; True if
    set. Non-chflow stores still open with napari's built-in reader (see :func:`get_reader`)."""
    from napari.settings import get_settings

    settings = get_settings().plugins
    prefs = dict(settings.extension2reader)
    if any(pattern.rstrip("/\\").endswith(".zarr") and not os.path.isabs(pattern)
           for pattern in prefs):
        return False
    settings.extension2reader = {**prefs, ZARR_FOLDERS: PLUGIN}
    return True


def _single_path(path) -> str | None:
    if isinstance(path, (list, tuple)):
        if len(path) != 1:
            return None
        path = path[0]
    return str(path)


def get_reader(path):
    """The reader for ``path`` if it is a chflow sequence store; for another ``.zarr`` folder
    napari's built-in reader (so preferring this plugin for ``.zarr`` loses nothing); else
    ``None``."""
    single = _single_path(path)
    if single is not None and io.is_sequence_store(single):
        return read_sequence_layers
    if single is not None and single.rstrip("/\\").endswith(".zarr") and os.path.isdir(single):
        try:
            from napari_builtins.io import napari_get_reader
        except ImportError:  # pragma: no cover - napari always ships its builtins
            return None
        return napari_get_reader(path)
    return None


def read_sequence_layers(path) -> list[tuple[Any, dict, str]]:
    """Open a sequence store lazily as an Image layer tuple (``SequenceFormatError`` if broken)."""
    path = Path(_single_path(path))
    seq = io.open_sequence(path)
    attrs = dict(seq.attrs)
    tau = float(attrs.get("tau") or 0.5)
    spacing = float(attrs.get("downscale") or 1)
    origin = 0.0  # where voxel 0 sits on the full grid: a CRNN's block means are centred
    if attrs.get("coarse") is not None:
        from .model import model_grid_origin

        try:
            origin = model_grid_origin(spacing, attrs["coarse"])
        except ValueError as err:
            raise io.SequenceFormatError(f"{path}: attribute 'coarse': {err}") from None
    name = path.name.removesuffix(".zarr")
    display = attrs.pop("display", None) or {}
    kwargs = {
        "name": name,
        "scale": (tau, spacing, spacing, spacing),
        "translate": (0.0, origin, origin, origin),
        "axis_labels": ("t", "z", "y", "x"),
        "metadata": {"chflow": attrs, "source": str(path)},
        **LAYER_STYLE,
        **{k: (tuple(v) if isinstance(v, list) else v) for k, v in display.items()
           if k in DISPLAY_KEYS},
    }
    return [(seq.phi, kwargs, "image")]


def _display(attributes: dict) -> dict:
    """The savable display properties of a layer (colormap by name)."""
    display = {}
    for key in DISPLAY_KEYS:
        value = attributes.get(key)
        if key == "colormap" and isinstance(value, dict):  # a layer's state: {"name": ...}
            value = value.get("name")
        elif key == "colormap" and not isinstance(value, str):
            value = getattr(value, "name", None)
        if value is None:
            continue
        if isinstance(value, np.ndarray | tuple):
            value = np.asarray(value).tolist()
        if hasattr(value, "value"):  # enums (rendering, blending)
            value = value.value
        display[key] = value
    return display


def refusal(attributes: dict, shape) -> str | None:
    """Why the chflow writer cannot save a layer (shown to the user), or None."""
    name = attributes.get("name", "this layer")
    ndim = len(shape)
    if attributes.get("rgb") or ndim not in (3, 4):
        return (f"Pick a 3D or (T, Z, Y, X) layer to save as a chflow .zarr: '{name}' is "
                f"{'RGB' if attributes.get('rgb') else f'{ndim}D'}; save it in another format")
    return None


def write_sequence_layer(path: str, data, attributes: dict) -> list[str]:
    """Write one Image layer as a sequence store at ``path`` (replacing an existing store), with
    its ``chflow`` metadata and display; a layer that is not 3D/4D is refused with a napari
    notification (napari itself would swallow the error) and nothing is written."""
    shape = tuple(getattr(data, "shape", np.shape(data)))
    problem = refusal(attributes, shape)
    if problem:
        from napari.utils.notifications import show_error

        show_error(problem)
        return []
    data = data if len(shape) == 4 else np.asarray(data)[None]
    meta = dict((attributes.get("metadata") or {}).get("chflow") or {})
    attrs = {k: v for k, v in meta.items() if k not in io.RESERVED_ATTRS}
    scale = attributes.get("scale")
    if scale is not None and len(scale) == 4:
        attrs["tau"] = float(scale[0])
        spacing = float(scale[1])
        attrs["downscale"] = int(spacing) if spacing.is_integer() else spacing
    display = _display(attributes)
    if len(shape) == 3 and "translate" in display:  # saved as one frame: add the time axis
        display["translate"] = [0.0, *display["translate"]]
    attrs["display"] = display
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
