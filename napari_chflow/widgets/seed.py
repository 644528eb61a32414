"""Dock widget "Seed volume": initial conditions phi from :mod:`napari_chflow.seeds`.

Perlin noise, the Stanford bunny, any mesh file, spheres and slabs on an N^3 grid. The volume
is computed in a worker thread and added as a ``(Z, Y, X) float32`` Image layer whose
``metadata["chflow"]["seed"]`` records how it was made (kind, shape and every parameter).
"""

from __future__ import annotations

import numpy as np
from napari.qt.threading import thread_worker
from qtpy.QtWidgets import (
    QComboBox,
    QDoubleSpinBox,
    QFormLayout,
    QHBoxLayout,
    QLabel,
    QPushButton,
    QSpinBox,
    QStackedWidget,
    QVBoxLayout,
    QWidget,
)

from ._common import ISO, PathEdit, combo, dspin, show_error, spin

# menu entry -> the napari_chflow.seeds function (recorded as the seed's "kind")
KINDS = {"Perlin noise": "perlin", "Stanford bunny": "stanford_bunny", "Mesh file": "from_mesh",
         "Sphere": "sphere", "Two spheres": "two_spheres", "Slab": "slab",
         "Random spheres": "random_spheres"}


def make_seed(kind: str, size: int, params: dict) -> np.ndarray:
    """phi ``(size, size, size) float32`` for ``kind`` (one of :data:`KINDS`) and its parameters."""
    from napari_chflow import seeds

    shape = (size,) * 3
    p = dict(params)
    if kind == "Perlin noise":
        return seeds.perlin(shape, **p)  # scale None: use octaves
    if kind == "Stanford bunny":
        return seeds.stanford_bunny(shape, fill=p["fill"], rotation=p["rotation"])
    if kind == "Mesh file":
        if not p["path"]:
            raise ValueError("no mesh file chosen: pick a mesh (.ply, .stl, .obj, ...) with '...'")
        return seeds.from_mesh(p["path"], shape, fill=p["fill"], rotation=p["rotation"])
    if kind == "Sphere":
        return seeds.sphere(shape, radius=p["radius"])
    if kind == "Two spheres":
        return seeds.two_spheres(shape)
    if kind == "Slab":
        return seeds.slab(shape, width=p["width"], axis="zyx".index(p["axis"]))
    if kind == "Random spheres":
        return seeds.random_spheres(shape, n=p["n"], radius_range=(p["r_min"], p["r_max"]),
                                    seed=p["seed"])
    raise ValueError(f"unknown seed kind {kind!r}: use one of {', '.join(KINDS)}")


@thread_worker(ignore_errors=True)
def _seed_worker(kind: str, size: int, params: dict):
    """Return ``(phi, None)`` or ``(None, message)`` for input the user must fix."""
    try:
        return make_seed(kind, size, params), None
    except (ValueError, OSError) as exc:  # SeedError, MeshError, missing files
        return None, str(exc)


class _Rotation(QWidget):
    """Three Euler angles in degrees (extrinsic x, y, z)."""

    def __init__(self) -> None:
        super().__init__()
        row = QHBoxLayout(self)
        row.setContentsMargins(0, 0, 0, 0)
        self.angles = [dspin(0.0, -360.0, 360.0, 15.0, 1) for _ in range(3)]
        for axis, box in zip("xyz", self.angles):
            row.addWidget(QLabel(axis))
            row.addWidget(box)

    def value(self) -> tuple[float, float, float]:
        return tuple(box.value() for box in self.angles)


def _value(widget):
    if isinstance(widget, (QSpinBox, QDoubleSpinBox, _Rotation)):
        return widget.value()
    if isinstance(widget, QComboBox):
        return widget.currentText()
    return widget.text()  # PathEdit


class SeedWidget(QWidget):
    """Choose a kind of initial condition and its parameters; "Add seed layer" computes it."""

    def __init__(self, napari_viewer, parent=None) -> None:
        super().__init__(parent)
        self.viewer = napari_viewer
        self.worker = None
        self.kind_combo = combo(KINDS)
        self.size = spin(64, 8, 512, 8)
        scale = dspin(16.0, 0.0, 512.0, 1.0, 1)
        scale.setSpecialValueText("use octaves")
        self.params: dict[str, dict] = {
            "Perlin noise": {"scale": scale, "octaves": spin(4, 1, 64), "layers": spin(1, 1, 6),
                             "mean": dspin(0.5, 0.01, 0.99, 0.05),
                             "amplitude": dspin(0.25, 0.0, 2.0, 0.05),
                             "seed": spin(0, 0, 2**31 - 1)},
            "Stanford bunny": {"fill": dspin(0.6, 0.05, 1.0, 0.05), "rotation": _Rotation()},
            "Mesh file": {"path": PathEdit("file", filter="Meshes (*.ply *.stl *.obj *.off *.glb)"),
                          "fill": dspin(0.6, 0.05, 1.0, 0.05), "rotation": _Rotation()},
            "Sphere": {"radius": dspin(16.0, 1.0, 256.0, 1.0, 1)},
            "Two spheres": {},
            "Slab": {"width": dspin(32.0, 1.0, 511.0, 1.0, 1), "axis": combo("zyx", "z")},
            "Random spheres": {"n": spin(8, 1, 1000), "r_min": dspin(4.0, 1.0, 128.0, 1.0, 1),
                               "r_max": dspin(10.0, 1.0, 128.0, 1.0, 1),
                               "seed": spin(0, 0, 2**31 - 1)},
        }
        tips = {"scale": "Perlin feature size in grid units (overrides octaves)",
                "octaves": "Perlin lattice cells per box length", "layers": "fractal layers",
                "fill": "fraction of the box the mesh spans", "rotation": "Euler angles in degrees"}
        self.pages = QStackedWidget()
        for kind in KINDS:
            page, form = QWidget(), QFormLayout()
            page.setLayout(form)
            form.setContentsMargins(0, 0, 0, 0)
            for name, widget in self.params[kind].items():
                widget.setToolTip(tips.get(name, ""))
                form.addRow(name.replace("_", " "), widget)
            self.pages.addWidget(page)
        self.kind_combo.currentIndexChanged.connect(self.pages.setCurrentIndex)
        self.add_button = QPushButton("Add seed layer")
        self.add_button.clicked.connect(self.add_seed)

        form = QFormLayout()
        form.addRow("kind", self.kind_combo)
        form.addRow("size N (N^3 grid)", self.size)
        layout = QVBoxLayout(self)
        layout.addLayout(form)
        layout.addWidget(self.pages)
        layout.addWidget(self.add_button)
        layout.addStretch(1)

    @property
    def running(self) -> bool:
        return self.worker is not None

    def values(self) -> tuple[str, int, dict]:
        """The chosen kind, grid size and parameters (as passed to :func:`make_seed`)."""
        kind = self.kind_combo.currentText()
        params = {k: _value(w) for k, w in self.params[kind].items()}
        if "scale" in params:
            params["scale"] = params["scale"] or None  # 0 is shown as "use octaves"
        return kind, self.size.value(), params

    def add_seed(self) -> bool:
        """Compute the seed in a worker; the layer is added when it is ready."""
        if self.running:
            show_error("A seed is already being computed: wait for it to appear")
            return False
        kind, size, params = self.values()
        self.add_button.setEnabled(False)
        self.add_button.setText("computing ...")
        self.worker = _seed_worker(kind, size, params)
        self.worker.returned.connect(lambda result: self._add_layer(kind, size, params, *result))
        self.worker.finished.connect(self._done)
        self.worker.start()
        return True

    def _done(self) -> None:
        self.worker = None
        self.add_button.setEnabled(True)
        self.add_button.setText("Add seed layer")

    def _add_layer(self, kind: str, size: int, params: dict, phi, message) -> None:
        if message:
            show_error(message)
            return
        seed = {"kind": KINDS[kind], "shape": [size] * 3,
                **{k: list(v) if isinstance(v, tuple) else v for k, v in params.items()}}
        name = f"{kind.lower()} {size}^3"
        self.viewer.add_image(phi, name=name, contrast_limits=(0.0, 1.0), colormap="gray",
                              metadata={"chflow": {"seed": seed}}, **ISO)
