"""The ``chflow`` command line, run in-process on small grids."""

from __future__ import annotations

import numpy as np
import pytest

from napari_chflow.cli import main
from napari_chflow.io import read_sequence
from napari_chflow.physics import simulate


def test_seed_then_simulate_matches_library(tmp_path):
    ic, run = tmp_path / "ic.zarr", tmp_path / "run.zarr"
    assert main(["seed", "perlin", "--size", "16", "--seed", "2", "--mean", "0.45", "-o", str(ic)]) == 0
    phi0, attrs = read_sequence(ic)
    assert phi0.shape == (1, 16, 16, 16) and attrs["seed"]["kind"] == "perlin"
    assert phi0.mean() == pytest.approx(0.45, abs=0.02)
    assert main(["simulate", str(ic), "--n-tau", "3", "--solver", "spectral", "-o", str(run)]) == 0
    frames, attrs = read_sequence(run)
    np.testing.assert_array_equal(frames, simulate(phi0[0], 3, solver="spectral"))
    assert attrs["solver"] == "spectral" and attrs["tau"] == 0.5 and attrs["seed"]["seed"] == 2


def test_seed_bunny_from_local_copy(tmp_path, bunny_path):
    out = tmp_path / "bunny.zarr"
    assert main(["seed", "bunny", "--size", "24", "--path", str(bunny_path), "-o", str(out)]) == 0
    phi, _ = read_sequence(out)
    assert 0.02 < (phi > 0.5).mean() < 0.5


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["simulate", "{ic}", "--dt", "0.01", "-o", "{tmp}/r.zarr"], "stability bound"),
        (["simulate", "{tmp}/missing.zarr", "-o", "{tmp}/r.zarr"], "does not exist"),
        (["seed", "mesh", "--path", "{tmp}/none.ply", "-o", "{tmp}/m.zarr"], "does not exist"),
        (["seed", "perlin", "--size", "2", "-o", "{tmp}/p.zarr"], "too small"),
        (["dataset", "--n-seq", "2", "--shard", "3", "-o", "{tmp}/d"], "shard"),
        (["rollout", "{ic}", "-o", "{tmp}/r.npy"], "r.npy: a chflow sequence is a folder"),
        (["rollout", "{ic}", "--model", "nosuch", "-o", "{tmp}/r.zarr"],
         "--model nosuch: no such bundled model or file; use one of default, fast or a checkpoint"),
    ],
)
def test_bad_input_is_one_line_naming_the_fix(tmp_path, capsys, argv, message):
    ic = tmp_path / "ic.zarr"
    main(["seed", "spheres", "--size", "16", "-o", str(ic)])
    capsys.readouterr()
    code = main([a.format(ic=ic, tmp=tmp_path) for a in argv])
    err = capsys.readouterr().err.strip()
    assert code == 2
    assert len(err.splitlines()) == 1 and message in err


def test_existing_output_is_not_overwritten(tmp_path, capsys):
    ic = tmp_path / "ic.zarr"
    assert main(["seed", "slab", "--size", "8", "-o", str(ic)]) == 0
    before = read_sequence(ic)[0]
    assert main(["seed", "perlin", "--size", "8", "-o", str(ic)]) == 2
    assert "overwrite" in capsys.readouterr().err
    np.testing.assert_array_equal(read_sequence(ic)[0], before)


def test_simulate_from_a_npy_initial_condition(tmp_path):
    phi0 = np.random.default_rng(3).uniform(0.4, 0.6, (16, 16, 16))
    np.save(tmp_path / "ic.npy", phi0)
    run = tmp_path / "run.zarr"
    assert main(["simulate", str(tmp_path / "ic.npy"), "--n-tau", "2", "--solver", "spectral",
                 "-o", str(run)]) == 0
    frames, attrs = read_sequence(run)
    np.testing.assert_array_equal(frames, simulate(phi0.astype(np.float32), 2, solver="spectral"))
    assert frames.shape == (3, 16, 16, 16) and attrs["source"].endswith("ic.npy")
    assert not (tmp_path / "run.npy").exists()


def test_rollout_of_a_block_mean_model_opens_where_its_blocks_are(tmp_path):
    """`chflow rollout` records the model's grid mapping; napari then centres the frames on
    their blocks (half a grid unit in), and with --upsample on the IC's own grid."""
    import torch

    from napari_chflow import _napari_hooks as hooks
    from napari_chflow.model import CRNN, CRNNConfig, load_checkpoint, rollout, save_checkpoint

    torch.manual_seed(0)
    ckpt = save_checkpoint(tmp_path / "mean.pt", CRNN(CRNNConfig(hidden=2, n_layers=1),
                                                      coarse="mean"), recipe={}, data={})
    phi0 = np.random.default_rng(4).uniform(0.3, 0.7, (16, 16, 16)).astype(np.float32)
    np.save(tmp_path / "ic.npy", phi0)
    for name, extra, origin in (("r.zarr", [], 0.5), ("up.zarr", ["--upsample"], 0.0)):
        assert main(["rollout", str(tmp_path / "ic.npy"), "--model", str(ckpt), "--n-tau", "1",
                     *extra, "-o", str(tmp_path / name)]) == 0
        [(_, kwargs, _)] = hooks.read_sequence_layers(str(tmp_path / name))
        assert kwargs["translate"] == (0.0, origin, origin, origin)
    frames, attrs = read_sequence(tmp_path / "r.zarr")
    assert (attrs["coarse"], attrs["downscale"]) == ("mean", 2)
    np.testing.assert_allclose(frames, rollout(load_checkpoint(ckpt), phi0, 1), atol=1e-6)
