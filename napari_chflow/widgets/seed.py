"""Dock widget "Seed volume": initial conditions phi from :mod:`napari_chflow.seeds`.

Perlin noise, the Stanford bunny, any mesh file, spheres and slabs on an N^3 grid; the form is
made of magicgui widgets, one page of parameters per kind. The volume is computed in a
:class:`._common.Job` and added as a ``(Z, Y, X) float32`` Image layer whose
``metadata["chflow"]["seed"]`` records how it was made (kind, shape and every parameter).
"""

from __future__ import annotations

import numpy as np
from magicgui.widgets import (
    ComboBox,
    Container,
    FileEdit,
    FloatSpinBox,
    PushButton,
    SpinBox,
    TupleEdit,
)
from qtpy.QtWidgets import QVBoxLayout, QWidget

from ._common import ISO, Job, problem_only, show_error

# menu entry -> the napari_chflow.seeds function (recorded as the seed's "kind")
KINDS = {"Perlin noise": "perlin", "Stanford bunny": "stanford_bunny", "Mesh file": "from_mesh",
         "Sphere": "sphere", "Two spheres": "two_spheres", "Slab": "slab",
         "Random spheres": "random_spheres"}
MESH_FILTER = "Meshes (*.ply *.stl *.obj *.off *.glb)"


class NoMeshChosen(ValueError):
    """"Mesh file" was chosen without a file."""


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
            raise NoMeshChosen("no mesh file chosen")
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


def _seed_job(_job, kind: str, size: int, params: dict) -> np.ndarray:
    return make_seed(kind, size, params)


def failure_message(kind: str, params: dict, exc: BaseException) -> str:
    """A library exception as a GUI message: the fix first (naming the field), short."""
    from napari_chflow.seeds import MeshError, MeshNotFoundError, SeedError

    if isinstance(exc, NoMeshChosen):
        return "Pick a mesh (.ply, .stl, .obj, .off, .glb) in 'mesh file' first"
    if kind == "Stanford bunny" and isinstance(exc, SeedError | OSError):
        if "download" in str(exc):
            return "No internet: choose 'Mesh file' as the kind and pick a .ply"
        return "Choose 'Mesh file' as the kind and pick a .ply: the bunny could not be loaded"
    if isinstance(exc, MeshNotFoundError | FileNotFoundError):
        return f"Pick an existing file in 'mesh file': {params.get('path')} does not exist"
    if isinstance(exc, MeshError | OSError):
        return f"Pick another file in 'mesh file': {params.get('path')} is not a usable mesh"
    if isinstance(exc, SeedError):
        return f"Change the {kind.lower()} settings: {problem_only(exc)}"
    return f"Change the settings: the seed failed ({problem_only(exc)})"


def _rotation() -> TupleEdit:
    return TupleEdit(value=(0.0, 0.0, 0.0), label="rotation x, y, z",
                     options={"min": -360.0, "max": 360.0, "step": 15.0},
                     tooltip="Euler angles in degrees (extrinsic x, y, z)")


class SeedWidget(QWidget):
    """Choose a kind of initial condition and its parameters; "Add seed layer" computes it."""

    def __init__(self, napari_viewer, parent=None) -> None:
        super().__init__(parent)
        self.viewer = napari_viewer
        self.job: Job | None = None
        self.kind = ComboBox(choices=list(KINDS), label="kind")
        self.size = SpinBox(value=64, min=8, max=512, step=8, label="size N (N^3 grid)")
        scale = FloatSpinBox(value=16.0, min=0.0, max=512.0, step=1.0, label="feature scale",
                             tooltip="Perlin feature size in grid units (0: use octaves)")
        scale.native.setSpecialValueText("use octaves")
        fill = {"value": 0.6, "min": 0.05, "max": 1.0, "step": 0.05, "label": "fill",
                "tooltip": "fraction of the box the mesh spans"}
        self.params: dict[str, dict] = {
            "Perlin noise": {
                "scale": scale,
                "octaves": SpinBox(value=4, min=1, max=64, label="octaves",
                                   tooltip="Perlin lattice cells per box length"),
                "layers": SpinBox(value=1, min=1, max=6, label="fractal layers"),
                "mean": FloatSpinBox(value=0.5, min=0.01, max=0.99, step=0.05, label="mean phi"),
                "amplitude": FloatSpinBox(value=0.25, min=0.0, max=2.0, step=0.05,
                                          label="amplitude"),
                "seed": SpinBox(value=0, min=0, max=2**31 - 1, label="random seed")},
            "Stanford bunny": {"fill": FloatSpinBox(**fill), "rotation": _rotation()},
            "Mesh file": {"path": FileEdit(mode="r", filter=MESH_FILTER, nullable=True,
                                           label="mesh file"),
                          "fill": FloatSpinBox(**fill), "rotation": _rotation()},
            "Sphere": {"radius": FloatSpinBox(value=16.0, min=1.0, max=256.0, step=1.0,
                                              label="radius")},
            "Two spheres": {},
            "Slab": {"width": FloatSpinBox(value=32.0, min=1.0, max=511.0, step=1.0,
                                           label="width"),
                     "axis": ComboBox(choices=list("zyx"), value="z", label="axis")},
            "Random spheres": {
                "n": SpinBox(value=8, min=1, max=1000, label="spheres"),
                "r_min": FloatSpinBox(value=4.0, min=1.0, max=128.0, step=1.0, label="r min"),
                "r_max": FloatSpinBox(value=10.0, min=1.0, max=128.0, step=1.0, label="r max"),
                "seed": SpinBox(value=0, min=0, max=2**31 - 1, label="random seed")},
        }
        self.pages = {kind: Container(widgets=list(p.values())) for kind, p in self.params.items()}
        for page in self.pages.values():
            page.margins = (0, 0, 0, 0)
        self.kind.changed.connect(self._show_page)
        self.add_button = PushButton(text="Add seed layer")
        self.add_button.changed.connect(lambda: self.add_seed())
        self.form = Container(widgets=[self.kind, self.size, *self.pages.values(),
                                       self.add_button])
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addWidget(self.form.native)
        layout.addStretch(1)
        self._show_page(self.kind.value)

    def _show_page(self, kind: str) -> None:
        for name, page in self.pages.items():
            page.visible = name == kind

    @property
    def running(self) -> bool:
        return self.job is not None

    def values(self) -> tuple[str, int, dict]:
        """The chosen kind, grid size and parameters (as passed to :func:`make_seed`)."""
        kind = self.kind.value
        params = {k: w.value for k, w in self.params[kind].items()}
        if "scale" in params:
            params["scale"] = params["scale"] or None  # 0 is shown as "use octaves"
        if "path" in params:
            params["path"] = str(params["path"]) if params["path"] else ""
        return kind, int(self.size.value), params

    def add_seed(self) -> bool:
        """Compute the seed in a job; the layer is added when it is ready."""
        if self.running:
            show_error("Wait for the seed being computed to appear")
            return False
        kind, size, params = self.values()
        self.add_button.enabled = False
        self.add_button.text = "computing ..."
        self.job = Job(self, _seed_job, kind, size, params, name="napari-chflow seed",
                       on_done=lambda phi, error: self._add_layer(kind, size, params, phi, error))
        self.job.start()
        return True

    def _add_layer(self, kind: str, size: int, params: dict, phi, error) -> None:
        self.job = None
        self.add_button.enabled = True
        self.add_button.text = "Add seed layer"
        if error is not None:
            show_error(failure_message(kind, params, error), error)
            return
        seed = {"kind": KINDS[kind], "shape": [size] * 3,
                **{k: list(v) if isinstance(v, tuple) else v for k, v in params.items()}}
        name = f"{kind.lower()} {size}^3"
        self.viewer.add_image(phi, name=name, contrast_limits=(0.0, 1.0), colormap="gray",
                              metadata={"chflow": {"seed": seed}}, **ISO)
