"""Initial conditions: Perlin noise (vs the perlin-noise package), tanh profiles, shapes, meshes,
and the Stanford bunny (local copy in ../shared, checksum, download path without network)."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
from scipy import ndimage

from napari_chflow import seeds

REPO = Path(__file__).resolve().parents[1]
BUNNY_DIR = REPO.parent / "shared" / "data" / "stanford_bunny"
BUNNY = BUNNY_DIR / "bun_zipper_res3.ply"
needs_bunny = pytest.mark.skipif(not BUNNY.is_file(), reason=f"no Stanford bunny at {BUNNY}")


def package_noise(shape, octaves, seed, layers=1, offset=(0, 0, 0)):
    """Reference: the perlin-noise package, point by point, as documented in seeds.perlin_noise."""
    from perlin_noise import PerlinNoise

    layers_ = [PerlinNoise(octaves=octaves * 2**n, seed=seed + 1 + n) for n in range(layers)]
    out = np.zeros(shape)
    for k, j, i in np.ndindex(*shape):
        coords = [k / shape[0] + offset[0], j / shape[1] + offset[1], i / shape[2] + offset[2]]
        out[k, j, i] = sum(0.5**n * p(coords, tile_sizes=[1, 1, 1]) for n, p in enumerate(layers_))
    return out


# ------------------------------------------------------------------------------ Perlin noise


@pytest.mark.parametrize(
    "shape, octaves, seed, layers",
    [((12, 12, 12), 3, 4, 1), ((8, 10, 6), 2, 0, 2), ((10, 10, 10), 11, 7, 1)],
)
def test_perlin_noise_equals_package_value_by_value(shape, octaves, seed, layers):
    ours = seeds.perlin_noise(shape, octaves=octaves, seed=seed, layers=layers)
    ref = package_noise(shape, octaves, seed, layers)
    assert ref.std() > 0.05  # a real field, not zeros
    np.testing.assert_allclose(ours, ref, rtol=0, atol=1e-12)


def test_perlin_scale_is_feature_size_in_grid_units():
    # scale=8 on a 16^3 box means 2 lattice cells per box length, i.e. the package's octaves=2
    np.testing.assert_allclose(
        seeds.perlin_noise((16, 16, 16), scale=8.0, seed=2),
        seeds.perlin_noise((16, 16, 16), octaves=2, seed=2),
        atol=0,
    )


def test_perlin_field_is_one_period_of_the_tiled_package_noise():
    ours = seeds.perlin_noise((8, 8, 8), octaves=2, seed=3)
    shifted = package_noise((8, 8, 8), 2, 3, offset=(1, -2, 3))  # whole periods away
    np.testing.assert_allclose(ours, shifted, atol=1e-9)


def test_perlin_wraps_smoothly_across_every_face():
    phi = seeds.perlin((32, 32, 32), octaves=4, mean=0.5, amplitude=0.1, seed=1)
    for axis in range(3):
        inner = np.abs(np.diff(phi, axis=axis)).mean()
        seam = np.abs(np.take(phi, 0, axis) - np.take(phi, -1, axis)).mean()
        cut = np.abs(np.take(phi, 0, axis) - np.take(phi, 15, axis)).mean()
        assert seam < 1.5 * inner  # the periodic neighbour is as close as any neighbour
        assert cut > 3 * inner  # ... while a non-neighbour is not (the check discriminates)


def test_perlin_mean_control_range_and_dtype():
    phi = seeds.perlin((24, 24, 24), octaves=3, mean=0.3, amplitude=0.3, seed=5)
    assert phi.shape == (24, 24, 24) and phi.dtype == np.float32
    assert phi.min() >= 0.0 and phi.max() <= 1.0
    assert (phi == 0.0).mean() > 0.01  # clipping happened, yet the mean is exact
    assert abs(float(phi.mean(dtype=np.float64)) - 0.3) < 1e-5


def test_perlin_default_mean_drawn_per_paper_and_seeded():
    for seed in (0, 1, 2):
        expected = float(np.clip(np.random.default_rng(seed).normal(0.5, 0.1), 0.05, 0.95))
        phi = seeds.perlin((16, 16, 16), seed=seed)
        assert abs(float(phi.mean(dtype=np.float64)) - expected) < 1e-5
    np.testing.assert_array_equal(seeds.perlin((16,) * 3, seed=4), seeds.perlin((16,) * 3, seed=4))
    assert not np.allclose(seeds.perlin((16,) * 3, seed=4), seeds.perlin((16,) * 3, seed=5))


def test_perlin_octaves_set_the_correlation_length():
    def corr(phi, lag):
        z = phi - phi.mean()
        return float((z * np.roll(z, lag, axis=2)).mean() / (z * z).mean())

    coarse = seeds.perlin((32, 32, 32), octaves=2, mean=0.5, amplitude=0.1, seed=0)
    fine = seeds.perlin((32, 32, 32), octaves=8, mean=0.5, amplitude=0.1, seed=0)
    assert corr(coarse, 4) > 0.6 > corr(fine, 4)


def test_perlin_rejects_bad_parameters():
    with pytest.raises(ValueError, match="mean"):
        seeds.perlin((8, 8, 8), mean=1.2)
    with pytest.raises(ValueError, match="octaves"):
        seeds.perlin((8, 8, 8), octaves=2.5)
    with pytest.raises(ValueError, match="amplitude"):
        seeds.perlin((8, 8, 8), amplitude=-1)


@pytest.mark.parametrize("bad", [(0, 4, 4), (4, 4), (4.0, 4, 4), "abc", (4, 4, -1), (True, 4, 4)])
@pytest.mark.parametrize(
    "make",
    [
        lambda s: seeds.perlin(s),
        lambda s: seeds.sphere(s, radius=2.0),
        lambda s: seeds.slab(s, width=2.0),
        lambda s: seeds.two_spheres(s),
        lambda s: seeds.random_spheres(s, n=2),
        lambda s: seeds.from_mesh((np.eye(3), [[0, 1, 2]]), shape=s),
    ],
)
def test_shape_must_be_three_positive_ints(make, bad):
    with pytest.raises(ValueError, match="shape must be 3 positive integers"):
        make(bad)


# ------------------------------------------------------------------------------ profiles, shapes


def test_tanh_profile_formula():
    d = np.array([-3.0, 0.0, 1.0, 3.0])
    phi = seeds.tanh_profile(d, eps=3.0)
    assert phi.dtype == np.float32
    np.testing.assert_allclose(phi, (1 + np.tanh(d)) / 2, rtol=1e-6)
    assert seeds.tanh_profile(0.0) == 0.5
    np.testing.assert_allclose(seeds.tanh_profile(2.0, eps=6.0), (1 + np.tanh(1.0)) / 2, rtol=1e-6)


def test_sphere_profile_matches_tanh_at_known_distances():
    phi = seeds.sphere((32, 32, 32), radius=10.0, center=(16, 16, 16), eps=3.0)
    assert phi.dtype == np.float32 and phi.shape == (32, 32, 32)
    for offset in range(4, 16):  # along +X from the centre: signed distance 10 - offset
        assert phi[16, 16, 16 + offset] == pytest.approx(
            float(seeds.tanh_profile(10.0 - offset)), abs=1e-6
        )
    # off-axis voxel: distance sqrt(6^2 + 8^2) = 10, right on the surface
    assert phi[16 + 6, 16 + 8, 16] == pytest.approx(0.5, abs=1e-6)


def test_sphere_wraps_periodically():
    phi = seeds.sphere((20, 20, 20), radius=5.0, center=(0, 0, 0))
    centred = seeds.sphere((20, 20, 20), radius=5.0, center=(10, 10, 10))
    np.testing.assert_allclose(np.roll(phi, (10, 10, 10), axis=(0, 1, 2)), centred, atol=1e-6)
    assert phi[1, 0, 0] == phi[-1, 0, 0] == phi[0, 1, 0] == phi[0, 0, -1]


def test_spheres_union_and_two_spheres():
    a = seeds.sphere((32, 32, 32), radius=6.0, center=(16, 16, 10))
    b = seeds.sphere((32, 32, 32), radius=4.0, center=(16, 16, 22))
    both = seeds.spheres((32, 32, 32), [(16, 16, 10), (16, 16, 22)], [6.0, 4.0])
    np.testing.assert_allclose(both, np.maximum(a, b), atol=1e-6)

    pair = seeds.two_spheres((32, 32, 32))
    labels, n = ndimage.label(pair > 0.5)
    sizes = sorted(np.bincount(labels.ravel())[1:])
    assert n == 2
    assert sizes[1] / sizes[0] == pytest.approx((0.2 / 0.14) ** 3, rel=0.1)
    assert 0.0 <= pair.min() and pair.max() <= 1.0


def test_slab_has_two_tanh_interfaces_and_wraps():
    phi = seeds.slab((8, 30, 8), width=10.0, axis=1, center=0.0)  # straddles the y = 0 face
    line = phi[0, :, 0]
    np.testing.assert_allclose(phi, np.broadcast_to(line[None, :, None], phi.shape))
    for j in range(30):
        dist = min(j, 30 - j)
        assert line[j] == pytest.approx(float(seeds.tanh_profile(5.0 - dist)), abs=1e-6)
    assert float(phi.mean()) == pytest.approx(10.0 / 30.0, abs=1e-3)
    with pytest.raises(ValueError, match="width"):
        seeds.slab((8, 8, 8), width=9.0)


def test_random_spheres_seeded_and_bounded():
    a = seeds.random_spheres((24, 24, 24), n=5, radius_range=(3.0, 5.0), seed=1)
    b = seeds.random_spheres((24, 24, 24), n=5, radius_range=(3.0, 5.0), seed=1)
    c = seeds.random_spheres((24, 24, 24), n=5, radius_range=(3.0, 5.0), seed=2)
    np.testing.assert_array_equal(a, b)
    assert not np.allclose(a, c)
    assert a.dtype == np.float32 and 0.0 <= a.min() and a.max() <= 1.0
    more = seeds.random_spheres((24, 24, 24), n=15, radius_range=(3.0, 5.0), seed=1)
    assert more.mean() > a.mean()  # more spheres, more phase-1 volume
    with pytest.raises(ValueError, match="radius_range"):
        seeds.random_spheres((8, 8, 8), radius_range=(5.0, 2.0))


# ------------------------------------------------------------------------------ meshes


def icosphere():
    import trimesh

    return trimesh.creation.icosphere(subdivisions=3)


def test_from_mesh_sphere_matches_analytic_sphere():
    # unit icosphere, fill 0.5 of a 32 box -> radius 8 at the centre (16, 16, 16)
    phi = seeds.from_mesh(icosphere(), shape=(32, 32, 32), fill=0.5)
    ref = seeds.sphere((32, 32, 32), radius=8.0, center=(16, 16, 16))
    assert phi.dtype == np.float32 and phi.shape == (32, 32, 32)
    assert np.abs(phi - ref).max() < 0.03


def test_from_mesh_fill_one_touches_the_faces():
    phi = seeds.from_mesh(icosphere(), shape=(16, 16, 16), fill=1.0)  # radius 8 in a 16 box
    ref = seeds.sphere((16, 16, 16), radius=8.0, center=(8, 8, 8))
    assert np.abs(phi - ref).max() < 0.03
    assert phi[0, 8, 8] == pytest.approx(0.5, abs=0.02)  # the surface sits on the box face
    with pytest.raises(ValueError, match="fill"):
        seeds.from_mesh(icosphere(), shape=(16, 16, 16), fill=1.5)


def test_from_mesh_ignores_face_orientation():
    mesh = icosphere()
    phi = seeds.from_mesh((mesh.vertices, mesh.faces), shape=(24, 24, 24))
    flipped = seeds.from_mesh((mesh.vertices, mesh.faces[:, ::-1]), shape=(24, 24, 24))
    np.testing.assert_allclose(phi, flipped, atol=1e-6)


def test_from_mesh_with_a_hole_is_solid_and_smooth():
    import trimesh

    mesh = icosphere()
    keep = mesh.triangles_center[:, 2] < 0.8  # cut a cap off: about 3.5 grid units across
    holed = trimesh.Trimesh(mesh.vertices, mesh.faces[keep], process=False)
    assert not holed.is_watertight
    phi = seeds.from_mesh(holed, shape=(32, 32, 32), fill=0.5)
    ref = seeds.sphere((32, 32, 32), radius=8.0, center=(16, 16, 16))
    solid = phi > 0.5
    assert phi[16, 16, 16] > 0.999
    assert (ndimage.binary_fill_holes(solid) ^ solid).sum() == 0
    assert float(phi.mean()) == pytest.approx(float(ref.mean()), rel=0.05)
    # across the hole phi keeps a tanh profile: no jump steeper than the profile allows
    steepest = float(seeds.tanh_profile(0.5) - seeds.tanh_profile(-0.5)) + 0.02
    assert max(np.abs(np.diff(phi, axis=a)).max() for a in range(3)) < steepest


def test_from_mesh_rotation_euler_and_matrix():
    import trimesh

    box = trimesh.creation.box(extents=(2.0, 1.0, 1.0))  # long along mesh x -> array X
    def extents(phi):
        idx = np.nonzero(phi > 0.5)
        return [int(np.ptp(i)) + 1 for i in idx]  # (Z, Y, X)

    assert extents(seeds.from_mesh(box, shape=(32, 32, 32), fill=0.5)) == [7, 7, 15]
    turned = seeds.from_mesh(box, shape=(32, 32, 32), fill=0.5, rotation=(0, 0, 90))
    assert extents(turned) == [7, 15, 7]  # 90 degrees about z: x -> y
    matrix = np.array([[0.0, 0.0, 1.0], [0.0, 1.0, 0.0], [-1.0, 0.0, 0.0]])  # x -> -z
    up = seeds.from_mesh(box, shape=(32, 32, 32), fill=0.5, rotation=matrix)
    assert extents(up) == [15, 7, 7]
    with pytest.raises(ValueError, match="rotation"):
        seeds.from_mesh(box, shape=(16, 16, 16), rotation=np.ones((3, 3)))


def test_from_mesh_errors_name_the_file(tmp_path):
    missing = tmp_path / "nope.ply"
    with pytest.raises(seeds.MeshNotFoundError, match="nope.ply") as info:
        seeds.from_mesh(missing, shape=(8, 8, 8))
    assert isinstance(info.value, ValueError) and isinstance(info.value, FileNotFoundError)

    garbage = tmp_path / "garbage.ply"
    garbage.write_text("this is not a mesh\n")
    with pytest.raises(seeds.MeshError, match="could not read mesh file .*garbage.ply"):
        seeds.from_mesh(garbage, shape=(8, 8, 8))

    empty = tmp_path / "empty.ply"
    empty.write_text("ply\nformat ascii 1.0\nelement vertex 0\nend_header\n")
    with pytest.raises(seeds.MeshError, match="no triangles"):
        seeds.from_mesh(empty, shape=(8, 8, 8))
    with pytest.raises(ValueError, match="no triangles"):
        seeds.from_mesh((np.zeros((0, 3)), np.zeros((0, 3), int)), shape=(8, 8, 8))


# ------------------------------------------------------------------------------ Stanford bunny


@pytest.fixture(scope="module")
def bunny32():
    return seeds.stanford_bunny((32, 32, 32), path=BUNNY)


@needs_bunny
def test_bunny_is_solid_upright_and_of_the_right_volume(bunny32):
    import trimesh

    phi = bunny32
    assert phi.shape == (32, 32, 32) and phi.dtype == np.float32
    assert 0.0 <= phi.min() and phi.max() <= 1.0
    solid = phi > 0.5
    com = np.array(ndimage.center_of_mass(solid))
    core = phi[tuple(slice(int(c) - 1, int(c) + 2) for c in np.round(com))]
    assert core.min() > 0.99  # the body around the centre of mass is bulk phase 1
    # no enclosed cavities although the mesh has holes in its bottom
    assert (ndimage.binary_fill_holes(solid) ^ solid).sum() < 0.01 * solid.sum()
    # volume: the mesh volume scaled like from_mesh does (largest extent -> 0.6 * 32)
    mesh = trimesh.load(BUNNY, force="mesh")
    scale = 0.6 * 32 / mesh.extents.max()
    expected = mesh.volume * scale**3 / 32**3
    assert float(phi.mean()) == pytest.approx(expected, rel=0.15)
    # upright along Z: the heavy body sits low, the ears reach high
    assert com[0] < 16 - 1.5
    top = np.nonzero(solid.any(axis=(1, 2)))[0].max()
    assert top - com[0] > com[0] - np.nonzero(solid.any(axis=(1, 2)))[0].min()


@needs_bunny
def test_bunny_from_env_var_folder(monkeypatch, bunny32):
    monkeypatch.setenv("CHFLOW_BUNNY_PATH", str(BUNNY_DIR))
    np.testing.assert_array_equal(seeds.stanford_bunny((32, 32, 32)), bunny32)


@needs_bunny
def test_bunny_with_a_changed_byte_is_refused(tmp_path, monkeypatch):
    data = bytearray(BUNNY.read_bytes())
    data[len(data) // 2] ^= 0x01
    bad = tmp_path / "bun_zipper_res3.ply"
    bad.write_bytes(bytes(data))
    with pytest.raises(seeds.ChecksumError, match="checksum mismatch for .*bun_zipper_res3.ply"):
        seeds.stanford_bunny((16, 16, 16), path=bad)
    monkeypatch.setenv("CHFLOW_BUNNY_PATH", str(tmp_path))
    with pytest.raises(ValueError, match="checksum mismatch"):
        seeds.stanford_bunny((16, 16, 16))


def test_bunny_missing_path_is_a_clear_error(tmp_path):
    with pytest.raises(seeds.MeshNotFoundError, match="CHFLOW_BUNNY_PATH"):
        seeds.stanford_bunny((16, 16, 16), path=tmp_path / "missing.ply")


@needs_bunny
def test_bunny_download_path_extracts_and_verifies(tmp_path, monkeypatch):
    """Without network: stand in for pooch.retrieve and check what stanford_bunny does with it."""
    import pooch

    extracted = tmp_path / "bunny.tar.gz.untar" / "bunny" / "reconstruction"
    extracted.mkdir(parents=True)
    shutil.copy(BUNNY, extracted / BUNNY.name)
    (extracted / "README").write_text("readme")
    calls = []

    def fake_retrieve(url, known_hash=None, fname=None, path=None, processor=None, **kwargs):
        calls.append((url, fname, type(processor).__name__))
        return [str(extracted / "README"), str(extracted / BUNNY.name)]

    monkeypatch.delenv("CHFLOW_BUNNY_PATH", raising=False)
    monkeypatch.setattr(pooch, "retrieve", fake_retrieve)
    phi = seeds.stanford_bunny((16, 16, 16))
    np.testing.assert_array_equal(phi, seeds.stanford_bunny((16, 16, 16), path=BUNNY))
    assert calls == [(seeds.BUNNY_URL, "bunny.tar.gz", "Untar")]

    data = bytearray((extracted / BUNNY.name).read_bytes())
    data[100] ^= 0x01
    (extracted / BUNNY.name).write_bytes(bytes(data))
    with pytest.raises(seeds.ChecksumError, match="delete a cached download"):
        seeds.stanford_bunny((16, 16, 16))


def test_bunny_checksums_are_those_of_the_shared_copies():
    import hashlib

    for name, digest in seeds.BUNNY_SHA256.items():
        path = BUNNY_DIR / name
        if path.is_file():
            assert hashlib.sha256(path.read_bytes()).hexdigest() == digest
