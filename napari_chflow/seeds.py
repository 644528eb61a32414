"""Initial conditions ``phi`` for the Cahn-Hilliard runs: periodic Perlin noise, voxelised meshes
(the Stanford bunny), and simple shapes.

Every public function returns ``phi`` as a ``(Z, Y, X) float32`` array with values in ``[0, 1]``.
Positions and lengths are in grid units: voxel ``(k, j, i)`` sits at ``z = k, y = j, x = i``.
Sharp shapes get the equilibrium interface profile :func:`tanh_profile` across their surface.
"""

from __future__ import annotations

import os
import random
from pathlib import Path
from typing import Any, Sequence

import numpy as np

__all__ = [
    "perlin",
    "perlin_noise",
    "tanh_profile",
    "from_mesh",
    "stanford_bunny",
    "sphere",
    "spheres",
    "two_spheres",
    "slab",
    "random_spheres",
    "SeedError",
    "MeshError",
    "MeshNotFoundError",
    "ChecksumError",
    "BUNNY_URL",
    "BUNNY_SHA256",
]


class SeedError(ValueError):
    """A seed parameter or input file that cannot be used; the message names the fix."""


class MeshError(SeedError):
    """A mesh that cannot be read or voxelised."""


class MeshNotFoundError(MeshError, FileNotFoundError):
    """A mesh path that does not exist (also a ``FileNotFoundError``)."""


class ChecksumError(SeedError):
    """A file whose sha256 does not match the expected one."""


# --------------------------------------------------------------------------------------------
# validation helpers


def _shape3(shape: Sequence[int], kind: str | None = None) -> tuple[int, int, int]:
    """``shape`` as 3 positive ints; with ``kind`` ("perlin", "spheres", "slab", "mesh") also
    checks that making that seed fits in the available memory."""
    try:
        dims = tuple(shape)
    except TypeError:
        dims = None
    ok = (
        dims is not None
        and len(dims) == 3
        and all(isinstance(n, (int, np.integer)) and not isinstance(n, bool) for n in dims)
        and all(n > 0 for n in dims)
    )
    if not ok:
        raise SeedError(
            f"shape must be 3 positive integers (Z, Y, X), got {shape!r}; "
            "pass e.g. shape=(64, 64, 64)"
        )
    shape = (int(dims[0]), int(dims[1]), int(dims[2]))
    if kind is not None:
        from napari_chflow.memory import check_memory, seed_bytes

        check_memory(seed_bytes(shape, kind), f"a {kind} seed of {'x'.join(map(str, shape))}")
    return shape


def _positive(name: str, value: float) -> float:
    value = float(value)
    if not np.isfinite(value) or value <= 0:
        raise SeedError(f"{name} must be a positive number, got {value!r}; pass e.g. {name}=3.0")
    return value


def _axes(shape: tuple[int, int, int]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Voxel coordinates broadcastable to ``shape``: ``(Z,1,1)``, ``(1,Y,1)``, ``(1,1,X)``."""
    return tuple(  # type: ignore[return-value]
        np.arange(n, dtype=np.float64).reshape([n if a == b else 1 for b in range(3)])
        for a, n in enumerate(shape)
    )


def _min_image(delta: np.ndarray, n: int) -> np.ndarray:
    """Periodic minimum-image displacement in a box of length ``n``."""
    return (delta + n / 2.0) % n - n / 2.0


# --------------------------------------------------------------------------------------------
# interface profile


def tanh_profile(d: Any, eps: float = 3.0) -> np.ndarray:
    """Equilibrium Cahn-Hilliard profile ``phi = (1 + tanh(3 d / eps)) / 2``, float32.

    ``d`` is the signed distance to the interface in grid units, positive inside (``phi -> 1``);
    ``eps`` is the interface width parameter of the model (grid units). This is the single place
    where the profile is written down; everything else calls it.
    """
    eps = _positive("eps", eps)
    d = np.asarray(d, dtype=np.float64)
    return ((1.0 + np.tanh(3.0 * d / eps)) / 2.0).astype(np.float32)


# --------------------------------------------------------------------------------------------
# Perlin noise


def _fade(t: np.ndarray) -> np.ndarray:
    return 6.0 * t**5 - 15.0 * t**4 + 10.0 * t**3


def _gradients(octaves: tuple[int, int, int], package_seed: int) -> np.ndarray:
    """Lattice gradients ``(o0, o1, o2, 3)`` exactly as ``perlin-noise`` draws them.

    The package seeds Python's ``random`` with ``seed * hash(corner)`` where
    ``hash = max(1, |c0 + 10 c1 + 100 c2 + 1|)`` of the corner wrapped into the tile, then draws
    three ``uniform(-1, 1)`` components in axis order.
    """
    c0, c1, c2 = np.meshgrid(*(np.arange(o) for o in octaves), indexing="ij")
    hashes = np.maximum(1, np.abs(c0 + 10 * c1 + 100 * c2 + 1))
    unique, inverse = np.unique(hashes, return_inverse=True)
    table = np.empty((len(unique), 3))
    for n, h in enumerate(unique.tolist()):
        rng = random.Random(package_seed * h)
        table[n] = [rng.uniform(-1, 1) for _ in range(3)]
    return table[inverse.reshape(hashes.shape)]


def _perlin_layer(
    shape: tuple[int, int, int], octaves: tuple[int, int, int], package_seed: int
) -> np.ndarray:
    """One ``perlin-noise`` layer on the grid, ``(Z, Y, X) float64``."""
    grads = _gradients(octaves, package_seed)
    per_axis = []
    for n, o in zip(shape, octaves):
        u = (np.arange(n) / n % 1.0) * o  # same float operations as the package
        lower = np.floor(u).astype(np.int64)
        frac = u - lower
        per_axis.append([((lower + b) % o, frac - b, _fade(1.0 - np.abs(frac - b))) for b in (0, 1)])
    out = np.zeros(shape)
    for bz in (0, 1):
        iz, dz, wz = per_axis[0][bz]
        for by in (0, 1):
            iy, dy, wy = per_axis[1][by]
            for bx in (0, 1):
                ix, dx, wx = per_axis[2][bx]
                g = grads[np.ix_(iz, iy, ix)]
                dot = (
                    g[..., 0] * dz[:, None, None]
                    + g[..., 1] * dy[None, :, None]
                    + g[..., 2] * dx[None, None, :]
                )
                out += wz[:, None, None] * wy[None, :, None] * wx[None, None, :] * dot
    return out


def _octaves3(shape: tuple[int, int, int], octaves: Any, scale: float | None) -> tuple[int, ...]:
    if scale is not None:
        scale = _positive("scale", scale)
        return tuple(max(1, int(round(n / scale))) for n in shape)
    values = tuple(octaves) if isinstance(octaves, (tuple, list)) else (octaves,) * 3
    if len(values) != 3 or not all(
        isinstance(o, (int, np.integer)) and not isinstance(o, bool) and o > 0 for o in values
    ):
        raise SeedError(
            f"octaves must be a positive integer (lattice cells per box length, needed for "
            f"tiling), got {octaves!r}; pass e.g. octaves=4 or scale=16.0 (feature size)"
        )
    return tuple(int(o) for o in values)


def perlin_noise(
    shape: Sequence[int] = (64, 64, 64),
    octaves: int | Sequence[int] = 4,
    scale: float | None = None,
    seed: int = 0,
    layers: int = 1,
) -> np.ndarray:
    """Raw periodic Perlin noise, ``(Z, Y, X) float64`` (values roughly in ``[-1, 1]``).

    Vectorised re-implementation of the ``perlin-noise`` package: voxel ``(k, j, i)`` gets
    ``PerlinNoise(octaves=o, seed=seed + 1)([k/Z, j/Y, i/X], tile_sizes=[1, 1, 1])`` (the package
    reads seed 0 as "random", hence ``+ 1``). ``octaves`` is the package's parameter: lattice
    cells per box length, so features are ``shape / octaves`` grid units wide and the field tiles
    the periodic box. ``scale`` (feature size in grid units) overrides it per axis
    (``octaves = round(n / scale)``). ``layers > 1`` adds fractal layers: layer ``l`` has
    ``octaves * 2**l`` cells, weight ``0.5**l`` and package seed ``seed + 1 + l``.
    """
    shape = _shape3(shape, "perlin")
    octs = _octaves3(shape, octaves, scale)
    if not isinstance(seed, (int, np.integer)) or seed < 0:
        raise SeedError(f"seed must be a non-negative integer, got {seed!r}; pass e.g. seed=0")
    if not isinstance(layers, (int, np.integer)) or layers < 1:
        raise SeedError(f"layers must be a positive integer, got {layers!r}; pass e.g. layers=1")
    out = np.zeros(shape)
    for layer in range(int(layers)):
        cells = tuple(o * 2**layer for o in octs)
        out += 0.5**layer * _perlin_layer(shape, cells, int(seed) + 1 + layer)
    return out


def _shift_to_mean(z: np.ndarray, mean: float, amplitude: float) -> np.ndarray:
    """``clip(c + amplitude * z, 0, 1)`` with the offset ``c`` bisected so the mean is ``mean``."""
    spread = amplitude * float(np.abs(z).max()) + 1.0
    lo, hi = -spread, 1.0 + spread
    for _ in range(60):
        c = 0.5 * (lo + hi)
        if np.clip(c + amplitude * z, 0.0, 1.0).mean() < mean:
            lo = c
        else:
            hi = c
    return np.clip(0.5 * (lo + hi) + amplitude * z, 0.0, 1.0)


def perlin(
    shape: Sequence[int] = (64, 64, 64),
    octaves: int | Sequence[int] = 4,
    scale: float | None = None,
    mean: float | None = None,
    amplitude: float = 0.25,
    seed: int = 0,
    layers: int = 1,
) -> np.ndarray:
    """Periodic Perlin-noise initial condition ``phi``, ``(Z, Y, X) float32`` in ``[0, 1]``.

    Mapping: ``n = perlin_noise(shape, octaves, scale, seed, layers)`` is standardised,
    ``z = (n - mean(n)) / std(n)``, then ``phi = clip(c + amplitude * z, 0, 1)`` where the offset
    ``c`` is found by bisection so that ``phi.mean() == mean`` (to ~1e-7) even after clipping:
    the mean composition is the conserved quantity of Cahn-Hilliard. ``amplitude`` is the standard
    deviation of ``phi`` before clipping. ``mean=None`` draws it as in the paper from
    ``N(0.5, 0.1)`` with ``numpy.random.default_rng(seed)``, clipped to ``[0.05, 0.95]``.
    The field tiles the box in all three axes (see :func:`perlin_noise` for octaves/scale).
    """
    shape = _shape3(shape)
    if mean is None:
        mean = float(np.clip(np.random.default_rng(seed).normal(0.5, 0.1), 0.05, 0.95))
    mean = float(mean)
    if not 0.0 < mean < 1.0:
        raise SeedError(f"mean must be strictly between 0 and 1, got {mean!r}; pass e.g. mean=0.5")
    amplitude = float(amplitude)
    if not np.isfinite(amplitude) or amplitude < 0:
        raise SeedError(f"amplitude must be >= 0, got {amplitude!r}; pass e.g. amplitude=0.25")
    noise = perlin_noise(shape, octaves=octaves, scale=scale, seed=seed, layers=layers)
    std = float(noise.std())
    z = (noise - noise.mean()) / std if std > 0 else np.zeros_like(noise)
    return _shift_to_mean(z, mean, amplitude).astype(np.float32)


# --------------------------------------------------------------------------------------------
# simple shapes (periodic minimum-image distances)


def spheres(
    shape: Sequence[int],
    centers: Any,
    radii: Any,
    eps: float = 3.0,
) -> np.ndarray:
    """Union of spheres, ``(Z, Y, X) float32``: ``tanh_profile(max_i (r_i - |x - c_i|))``.

    ``centers`` is ``(n, 3)`` in ``(z, y, x)`` grid units, ``radii`` a number or ``(n,)``;
    distances use the periodic minimum image, so spheres crossing a face wrap around.
    """
    shape = _shape3(shape, "spheres")
    centers = np.atleast_2d(np.asarray(centers, dtype=np.float64))
    if centers.ndim != 2 or centers.shape[1] != 3 or len(centers) == 0:
        raise SeedError(
            f"centers must be an (n, 3) array of (z, y, x) positions, got shape {centers.shape}; "
            "pass e.g. centers=[(32, 32, 32)]"
        )
    radii = np.broadcast_to(np.asarray(radii, dtype=np.float64), (len(centers),))
    if not np.all(np.isfinite(radii)) or np.any(radii <= 0):
        raise SeedError(f"radii must be positive, got {radii.tolist()}; pass e.g. radii=10.0")
    grid = _axes(shape)
    best = np.full(shape, -np.inf)
    for c, r in zip(centers, radii):
        r2 = sum(_min_image(g - ca, n) ** 2 for g, ca, n in zip(grid, c, shape))
        np.maximum(best, r - np.sqrt(r2), out=best)
    return tanh_profile(best, eps)


def sphere(
    shape: Sequence[int] = (64, 64, 64),
    radius: float = 16.0,
    center: Sequence[float] | None = None,
    eps: float = 3.0,
) -> np.ndarray:
    """One sphere of ``radius`` (grid units) at ``center`` ``(z, y, x)``, default the box centre
    ``shape / 2``; ``(Z, Y, X) float32`` with the tanh profile, periodic minimum image."""
    shape = _shape3(shape)
    center = tuple(n / 2.0 for n in shape) if center is None else center
    return spheres(shape, [center], _positive("radius", radius), eps)


def two_spheres(shape: Sequence[int] = (64, 64, 64), eps: float = 3.0) -> np.ndarray:
    """Two unequal spheres side by side along X, one grid unit apart (a neck forms and the small
    one is absorbed: a classic Cahn-Hilliard check); radii ``0.2`` and ``0.14`` of ``min(shape)``."""
    shape = _shape3(shape)
    r1, r2, gap = 0.2 * min(shape), 0.14 * min(shape), 1.0
    left = shape[2] / 2.0 - (2 * r1 + gap + 2 * r2) / 2.0
    cz, cy = shape[0] / 2.0, shape[1] / 2.0
    centers = [(cz, cy, left + r1), (cz, cy, left + 2 * r1 + gap + r2)]
    return spheres(shape, centers, [r1, r2], eps)


def slab(
    shape: Sequence[int] = (64, 64, 64),
    width: float = 32.0,
    axis: int = 0,
    center: float | None = None,
    eps: float = 3.0,
) -> np.ndarray:
    """A periodic slab ``phi ~ 1`` of ``width`` grid units normal to ``axis``, centred at
    ``center`` (default ``shape[axis] / 2``), with two tanh interfaces; ``(Z, Y, X) float32``."""
    shape = _shape3(shape, "slab")
    if axis not in (0, 1, 2):
        raise SeedError(f"axis must be 0, 1 or 2 (Z, Y, X), got {axis!r}; pass e.g. axis=0")
    n = shape[axis]
    width = _positive("width", width)
    if width >= n:
        raise SeedError(f"width {width} must be smaller than the box length {n} along axis {axis}")
    center = n / 2.0 if center is None else float(center)
    d = width / 2.0 - np.abs(_min_image(_axes(shape)[axis] - center, n))
    return np.ascontiguousarray(np.broadcast_to(tanh_profile(d, eps), shape))


def random_spheres(
    shape: Sequence[int] = (64, 64, 64),
    n: int = 8,
    radius_range: tuple[float, float] = (4.0, 10.0),
    seed: int = 0,
    eps: float = 3.0,
) -> np.ndarray:
    """Union of ``n`` spheres with centres uniform in the periodic box and radii uniform in
    ``radius_range`` (grid units), drawn with ``numpy.random.default_rng(seed)``."""
    shape = _shape3(shape)
    if not isinstance(n, (int, np.integer)) or n < 1:
        raise SeedError(f"n must be a positive integer, got {n!r}; pass e.g. n=8")
    r_min, r_max = (float(r) for r in radius_range)
    if not 0 < r_min <= r_max:
        raise SeedError(
            f"radius_range must satisfy 0 < min <= max, got {radius_range!r}; "
            "pass e.g. radius_range=(4.0, 10.0)"
        )
    rng = np.random.default_rng(seed)
    centers = rng.uniform(0.0, 1.0, size=(int(n), 3)) * np.asarray(shape, dtype=np.float64)
    radii = rng.uniform(r_min, r_max, size=int(n))
    return spheres(shape, centers, radii, eps)


# --------------------------------------------------------------------------------------------
# mesh voxelisation

_SAMPLE_SPACING = 1.0  # grid units between surface samples used to find nearby triangles


def _load_mesh(mesh_or_path: Any) -> tuple[np.ndarray, np.ndarray, str]:
    """Vertices ``(n, 3) float64`` and faces ``(m, 3) int`` of a trimesh, (V, F) pair or file."""
    if isinstance(mesh_or_path, (str, os.PathLike)):
        import trimesh

        path = Path(mesh_or_path)
        if not path.is_file():
            raise MeshNotFoundError(
                f"mesh file {path} does not exist; pass the path of a .ply/.stl/.obj/.off file"
            )
        try:
            mesh = trimesh.load(path, force="mesh")
            vertices = np.asarray(getattr(mesh, "vertices", np.zeros((0, 3))))
            faces = np.asarray(getattr(mesh, "faces", np.zeros((0, 3), dtype=np.int64)))
        except Exception as exc:  # trimesh raises many types for bad files
            raise MeshError(
                f"could not read mesh file {path} ({type(exc).__name__}: {exc}); "
                "pass a triangle mesh in a format trimesh reads (.ply, .stl, .obj, .off, .glb)"
            ) from None
        name = str(path)
    elif isinstance(mesh_or_path, tuple) and len(mesh_or_path) == 2:
        vertices, faces = (np.asarray(a) for a in mesh_or_path)
        name = "the (vertices, faces) mesh"
    elif hasattr(mesh_or_path, "vertices") and hasattr(mesh_or_path, "faces"):
        vertices, faces = np.asarray(mesh_or_path.vertices), np.asarray(mesh_or_path.faces)
        name = "the given mesh"
    else:
        raise MeshError(
            f"cannot use {type(mesh_or_path).__name__} as a mesh; pass a trimesh.Trimesh, "
            "a (vertices, faces) pair or a mesh file path"
        )
    vertices = np.asarray(vertices, dtype=np.float64).reshape(-1, 3) if vertices.size else None
    faces = np.asarray(faces).reshape(-1, 3) if faces.size else None
    if vertices is None or faces is None or len(faces) == 0:
        raise MeshError(f"{name} has no triangles; pass a non-empty triangle mesh")
    if faces.min() < 0 or faces.max() >= len(vertices) or not np.all(np.isfinite(vertices)):
        raise MeshError(f"{name} has invalid faces or vertices; repair or re-export the mesh")
    return vertices, faces.astype(np.int64), name


def _rotation_matrix(rotation: Any) -> np.ndarray:
    """3x3 rotation from ``None``, Euler angles ``(ax, ay, az)`` in degrees or a 3x3 matrix."""
    if rotation is None:
        return np.eye(3)
    r = np.asarray(rotation, dtype=np.float64)
    if r.shape == (3,):
        from scipy.spatial.transform import Rotation

        return Rotation.from_euler("xyz", r, degrees=True).as_matrix()
    if r.shape == (3, 3) and np.allclose(r @ r.T, np.eye(3), atol=1e-6) and np.linalg.det(r) > 0:
        return r
    raise SeedError(
        f"rotation must be 3 Euler angles in degrees or a 3x3 rotation matrix, got {rotation!r}; "
        "pass e.g. rotation=(90, 0, 0)"
    )


def _surface_samples(tri: np.ndarray, spacing: float) -> tuple[np.ndarray, np.ndarray]:
    """Points on every triangle (barycentric lattice incl. vertices and edges) no farther than
    ~``spacing`` apart, with the index of the triangle each comes from."""
    edges = np.linalg.norm(tri - np.roll(tri, 1, axis=1), axis=2).max(axis=1)
    subdiv = np.maximum(1, np.ceil(edges / spacing)).astype(np.int64)
    points, owners = [], []
    for n in np.unique(subdiv):
        ids = np.nonzero(subdiv == n)[0]
        i, j = np.meshgrid(np.arange(n + 1), np.arange(n + 1), indexing="ij")
        keep = i + j <= n
        u, v = i[keep] / n, j[keep] / n
        a, b, c = tri[ids, 0], tri[ids, 1], tri[ids, 2]
        pts = a[:, None] + u[None, :, None] * (b - a)[:, None] + v[None, :, None] * (c - a)[:, None]
        points.append(pts.reshape(-1, 3))
        owners.append(np.repeat(ids, len(u)))
    return np.concatenate(points), np.concatenate(owners)


def _winding_numbers(points: np.ndarray, tri: np.ndarray) -> np.ndarray:
    """Generalised winding number ``sum(solid angles) / 4 pi`` of the triangle soup at ``points``
    (Van Oosterom-Strackee solid angle per triangle); ~1 inside, ~0 outside, even with holes."""
    t = tri.astype(np.float32)
    corners = [[np.ascontiguousarray(t[:, v, a]) for a in range(3)] for v in range(3)]
    out = np.empty(len(points))
    chunk = max(1, 2**17 // len(t))
    pts = points.astype(np.float32)
    for s in range(0, len(pts), chunk):
        q = pts[s : s + chunk]
        (ax, ay, az), (bx, by, bz), (cx, cy, cz) = (
            [corner[a][None, :] - q[:, a, None] for a in range(3)] for corner in corners
        )
        la = np.sqrt(ax * ax + ay * ay + az * az)
        lb = np.sqrt(bx * bx + by * by + bz * bz)
        lc = np.sqrt(cx * cx + cy * cy + cz * cz)
        det = ax * (by * cz - bz * cy) + ay * (bz * cx - bx * cz) + az * (bx * cy - by * cx)
        den = (
            la * lb * lc
            + (ax * bx + ay * by + az * bz) * lc
            + (ax * cx + ay * cy + az * cz) * lb
            + (bx * cx + by * cy + bz * cz) * la
        )
        out[s : s + chunk] = np.arctan2(det, den).sum(axis=1, dtype=np.float64) / (2 * np.pi)
    return out


def _film(inside: np.ndarray, dist: np.ndarray) -> np.ndarray:
    """Voxels next to an inside/outside change that no mesh surface explains: neighbours ``v, u``
    with different sides and ``D(v) + D(u) > 1`` (a surface crossing the unit segment between
    them would be closer). This is the winding-number "soap film" spanning a hole."""
    film = np.zeros(inside.shape, dtype=bool)
    for a in range(3):
        lo = tuple(slice(None, -1) if b == a else slice(None) for b in range(3))
        hi = tuple(slice(1, None) if b == a else slice(None) for b in range(3))
        pair = (inside[lo] != inside[hi]) & (dist[lo] + dist[hi] > 1.0)
        film[lo] |= pair
        film[hi] |= pair
    return film


def _inside(dist_lower: np.ndarray, origin: np.ndarray, tri: np.ndarray) -> np.ndarray:
    """Inside/outside (generalised winding number > 1/2) on a region grid of voxels.

    ``dist_lower`` is a lower bound of each voxel's distance to the surface, ``origin`` the
    index of the region's first voxel. The winding number is smooth off the surface, so a voxel
    takes the value at the coarsest lattice anchor (stride 16, 8, 4, 2) closer than its distance
    (the segment between them cannot cross the surface); voxels hugging the surface, and those
    next to a side change away from the surface (the film across a hole), are evaluated exactly.
    """
    from scipy import ndimage

    shape = dist_lower.shape
    voxels = np.indices(shape).reshape(3, -1).T + origin
    dist = dist_lower.ravel()
    anchors = voxels.copy()
    exact = np.ones(len(voxels), dtype=bool)
    for s in (16, 8, 4, 2):
        cand = s * np.round(voxels / s).astype(np.int64)
        ok = exact & (np.linalg.norm(cand - voxels, axis=1) < dist - 0.05)
        anchors[ok], exact[ok] = cand[ok], False
    orientation = np.sign(np.linalg.det(tri).sum()) or 1.0  # inward-facing meshes give w ~ -1
    base = anchors.min(axis=0)
    span = anchors.max(axis=0) - base + 1
    keys = np.ravel_multi_index(tuple((anchors - base).T), tuple(span))
    unique, inverse = np.unique(keys, return_inverse=True)
    points = np.stack(np.unravel_index(unique, tuple(span)), axis=1) + base
    w = orientation * _winding_numbers(points.astype(np.float64), tri)
    inside = (w[inverse.ravel()] > 0.5).reshape(shape)
    exact = exact.reshape(shape)
    for _ in range(8):  # re-evaluate exactly around film voxels decided by an anchor
        redo = ndimage.binary_dilation(_film(inside, dist_lower), iterations=2) & ~exact
        if not redo.any():
            break
        points = np.argwhere(redo) + origin
        inside[redo] = orientation * _winding_numbers(points.astype(np.float64), tri) > 0.5
        exact |= redo
    return inside


def _signed_distance_region(
    tri: np.ndarray, lo: np.ndarray, hi: np.ndarray, band: float
) -> np.ndarray:
    """Signed distance (positive inside, grid units) on the voxels ``lo..hi`` (inclusive),
    ``|d|`` exact up to ``band`` and capped just above it."""
    from scipy import ndimage
    from scipy.spatial import cKDTree
    from trimesh.triangles import closest_point

    shape = tuple(int(n) for n in hi - lo + 1)
    samples, owners = _surface_samples(tri, _SAMPLE_SPACING)
    # coarse distance: Euclidean distance transform to the voxels that hold a surface sample
    marked = np.zeros(shape, dtype=bool)
    # clipping a sample into the region only brings it closer to every region voxel
    cells = np.clip(np.round(samples).astype(np.int64), lo, hi) - lo
    marked[tuple(cells.T)] = True
    coarse = ndimage.distance_transform_edt(~marked)
    slack = np.sqrt(3.0) / 2.0 + _SAMPLE_SPACING  # |sample - its voxel| + |closest - sample|
    bound = band + 0.5
    dist = np.full(shape, bound)
    near = np.argwhere(coarse < bound + slack)
    if len(near):  # exact distances to the triangles owning the k nearest samples
        k = min(6, len(samples))
        points = (near + lo).astype(np.float64)
        _, idx = cKDTree(samples).query(points, k=k)
        cand = owners[np.asarray(idx).reshape(len(near), k)]
        pts = np.repeat(points, k, axis=0)
        gap = np.linalg.norm(closest_point(tri[cand.ravel()], pts) - pts, axis=1)
        dist[tuple(near.T)] = np.minimum(gap.reshape(len(near), k).min(axis=1), bound)
    dist_lower = np.where(dist < bound, dist, np.maximum(coarse - slack, band))
    inside = _inside(dist_lower, lo, tri)
    # across a hole the side changes far from the mesh: measure the distance to that film too,
    # so phi keeps a tanh profile there instead of jumping
    film = _film(inside, dist)
    if film.any():
        dist = np.minimum(dist, ndimage.distance_transform_edt(~film) + 0.5)
    return np.where(inside, dist, -dist)


def from_mesh(
    mesh_or_path: Any,
    shape: Sequence[int] = (64, 64, 64),
    fill: float = 0.6,
    rotation: Any = None,
    eps: float = 3.0,
) -> np.ndarray:
    """Voxelise a triangle mesh into ``phi``, ``(Z, Y, X) float32`` in ``[0, 1]``.

    ``mesh_or_path``: a ``trimesh.Trimesh``, a ``(vertices, faces)`` pair or a mesh file.
    The mesh is rotated by ``rotation`` (Euler angles ``(ax, ay, az)`` in degrees, extrinsic
    x-y-z about the mesh axes, or a 3x3 matrix), centred on the box centre ``shape / 2`` and
    scaled uniformly so that it spans at most ``fill`` of the box along every axis (its largest
    extent spans ``fill`` of a cubic box). Mesh axes map to array axes as ``x -> X`` (axis 2),
    ``y -> Y`` (axis 1), ``z -> Z`` (axis 0). ``phi = tanh_profile(d, eps)`` with ``d`` the
    signed distance to the surface (positive inside). Inside/outside is the generalised winding
    number > 1/2, so meshes with holes (not watertight) still come out solid. Cost grows with
    faces x surface voxels: use decimated meshes (a few thousand faces) for 64^3 boxes.
    Distances are not wrapped periodically: keep ``fill`` small enough that the surface stays
    ``~3 eps`` away from the box faces. Voxels farther than ``3 eps`` from the mesh's bounding
    box count as outside.
    """
    shape = _shape3(shape, "mesh")
    eps = _positive("eps", eps)
    fill = float(fill)
    if not 0.0 < fill <= 1.0:
        raise SeedError(f"fill must be in (0, 1], got {fill!r}; pass e.g. fill=0.6")
    vertices, faces, name = _load_mesh(mesh_or_path)
    vertices = vertices @ _rotation_matrix(rotation).T
    zyx = vertices[:, ::-1]  # mesh (x, y, z) -> array axes (Z, Y, X)
    vmin, vmax = zyx[faces].reshape(-1, 3).min(axis=0), zyx[faces].reshape(-1, 3).max(axis=0)
    extent = vmax - vmin
    if not np.any(extent > 0):
        raise MeshError(f"{name} has zero size; pass a mesh with a non-degenerate extent")
    box = np.asarray(shape, dtype=np.float64)
    scale = fill * np.min(box[extent > 0] / extent[extent > 0])
    tri = ((zyx - (vmin + vmax) / 2.0) * scale + box / 2.0)[faces]

    band = 3.0 * eps  # beyond it tanh(3 d / eps) rounds to +-1 in float32
    lo = np.maximum(np.floor(tri.reshape(-1, 3).min(axis=0) - band - 1), 0).astype(np.int64)
    hi = np.minimum(np.ceil(tri.reshape(-1, 3).max(axis=0) + band + 1), box - 1).astype(np.int64)
    d = np.full(shape, -band)
    d[lo[0] : hi[0] + 1, lo[1] : hi[1] + 1, lo[2] : hi[2] + 1] = _signed_distance_region(
        tri, lo, hi, band
    )
    return tanh_profile(d, eps)


# --------------------------------------------------------------------------------------------
# Stanford bunny

BUNNY_URL = "https://graphics.stanford.edu/pub/3Dscanrep/bunny.tar.gz"
#: sha256 of the reconstructed bunny meshes inside the Stanford tarball (``bunny/reconstruction``)
BUNNY_SHA256 = {
    "bun_zipper.ply": "e5bfa06a738e5c59e4c147c6edc17df99e09735daa3432391e841fba825a2a33",
    "bun_zipper_res2.ply": "8faa052bb08cf1625eec97b6508baceee11eec9cf28f83f6a9d4547ab15d7761",
    "bun_zipper_res3.ply": "d628625d14fbe5deecb123536b515405c522984d43488cc24f91980eb75edadc",
}
_BUNNY_DEFAULT = "bun_zipper_res3.ply"
#: the PLY is Y-up; +90 degrees about x turns mesh +y into +z (array axis 0)
_BUNNY_UPRIGHT = (90.0, 0.0, 0.0)


def _sha256(path: Path) -> str:
    from napari_chflow.io import file_sha256

    return file_sha256(path)


def _verified_bunny(path: Path) -> Path:
    if path.is_dir():
        path = path / _BUNNY_DEFAULT
    if not path.is_file():
        raise MeshNotFoundError(
            f"Stanford bunny file {path} does not exist; point path= or CHFLOW_BUNNY_PATH at "
            f"{_BUNNY_DEFAULT} (or its folder), or unset it to download from {BUNNY_URL}"
        )
    digest = _sha256(path)
    if digest not in BUNNY_SHA256.values():
        raise ChecksumError(
            f"checksum mismatch for {path}: sha256 {digest} is not that of any Stanford bunny "
            f"mesh ({', '.join(BUNNY_SHA256)}); replace it with an intact copy (delete a cached "
            "download to fetch it again), or use from_mesh() for other meshes"
        )
    return path


def _download_bunny() -> Path:
    """Fetch the Stanford tarball once into pooch's cache and return the verified res3 mesh.

    The tarball's own hash is not pinned (``known_hash=None``): the extracted mesh is verified
    against :data:`BUNNY_SHA256` instead, which pins the data actually used.
    """
    import pooch

    cache = pooch.os_cache("napari-chflow")
    try:
        files = pooch.retrieve(
            BUNNY_URL,
            known_hash=None,
            fname="bunny.tar.gz",
            path=cache,
            processor=pooch.Untar(),
        )
    except Exception as exc:
        raise MeshError(
            f"could not download the Stanford bunny from {BUNNY_URL} ({exc}); download it by "
            f"hand and set CHFLOW_BUNNY_PATH to its {_BUNNY_DEFAULT}"
        ) from None
    matches = [Path(f) for f in files if Path(f).name == _BUNNY_DEFAULT]
    if not matches:
        raise MeshError(
            f"the archive from {BUNNY_URL} (cached in {cache}) holds no {_BUNNY_DEFAULT}; "
            f"delete the cache folder and retry, or set CHFLOW_BUNNY_PATH to a local copy"
        )
    return _verified_bunny(matches[0])


def stanford_bunny(
    shape: Sequence[int] = (64, 64, 64),
    path: str | os.PathLike | None = None,
    fill: float = 0.6,
    rotation: Any = None,
    eps: float = 3.0,
) -> np.ndarray:
    """The Stanford bunny as ``phi``, ``(Z, Y, X) float32`` (paper, fig. 2b), via :func:`from_mesh`.

    Mesh source, first that applies: ``path``; the ``CHFLOW_BUNNY_PATH`` environment variable
    (a .ply file, or a folder holding ``bun_zipper_res3.ply``); else the Stanford 3D scanning
    repository tarball, downloaded once with pooch into its cache. The file must be one of the
    reconstructed Stanford meshes (``bun_zipper*.ply``, checked by sha256; any other content
    raises :class:`ChecksumError`). Orientation: the bunny stands upright along Z, its ears at
    high array index along axis 0 (the PLY is Y-up; it is turned by +90 degrees about x).
    ``rotation`` (Euler degrees or 3x3, see :func:`from_mesh`) is applied after that, e.g.
    ``(0, 0, 45)`` spins it about the vertical axis.
    """
    shape = _shape3(shape, "mesh")
    source = path if path is not None else os.environ.get("CHFLOW_BUNNY_PATH") or None
    ply = _verified_bunny(Path(source)) if source is not None else _download_bunny()
    upright = _rotation_matrix(_BUNNY_UPRIGHT)
    turn = _rotation_matrix(rotation) @ upright
    return from_mesh(ply, shape=shape, fill=fill, rotation=turn, eps=eps)
