"""CRNN model: conservation, symmetry, grid mapping, rollout and the checkpoint format."""

import dataclasses
from pathlib import Path

import numpy as np
import pytest
import torch

from napari_chflow import model as M
from napari_chflow.model import (
    CRNN,
    CheckpointError,
    LATTICE_IMAGES,
    RolloutDiverged,
    available_pretrained,
    downsample,
    fourier_resample,
    iter_rollout,
    lattice_image,
    load_checkpoint,
    load_pretrained,
    model_grid_origin,
    rollout,
    save_checkpoint,
    upsample,
)
from napari_chflow.metrics import interface_displacement
from napari_chflow.physics import explicit_dt_limit
from napari_chflow.seeds import slab, sphere


def make_model(seed: int = 0, **kwargs) -> CRNN:
    torch.manual_seed(seed)
    return CRNN(**kwargs).eval()


def field(shape, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).random(shape, dtype=np.float32)


def test_parameter_count_matches_paper():
    model = make_model()
    n = sum(p.numel() for p in model.parameters() if p.requires_grad)
    assert n == model.info.param_count == 28_970  # paper: ~2.9e4
    assert 2.0e4 <= n <= 3.8e4
    # the divergence is fixed arithmetic: no parameter, nothing in the state dict
    assert not any("div" in k for k in model.state_dict())


def test_divergence_is_periodic_central_difference():
    model = make_model().double()
    u = np.random.default_rng(1).standard_normal((2, 3, 6, 7, 5))
    expected = sum(
        (np.roll(u[:, d], -1, axis=d + 1) - np.roll(u[:, d], 1, axis=d + 1)) / 2 for d in range(3)
    )
    got = model.divergence(torch.from_numpy(u)).numpy()
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-13)
    assert np.abs(got.sum(axis=(1, 2, 3))).max() < 1e-12


@pytest.mark.parametrize("dtype, tol", [(torch.float32, 1e-6), (torch.float64, 1e-12)])
def test_mass_conserved_exactly(dtype, tol):
    model = make_model().to(dtype)
    phi0 = torch.from_numpy(field((2, 1, 12, 10, 14))).to(dtype)
    with torch.no_grad():
        out = model(phi0, n_steps=6)
    mass0 = phi0[:, 0].double().sum(dim=(1, 2, 3))
    mass = out.double().sum(dim=(2, 3, 4))
    assert (out - phi0).abs().max() > 1e-2  # the model really moves phi
    assert ((mass - mass0[:, None]).abs() / mass0[:, None]).max() < tol


def test_arbitrary_grid_sizes_and_shapes():
    model = make_model()
    for shape in [(12, 10, 14), (7, 5, 9), (4, 4, 4)]:
        seq = torch.rand(3, 4, *shape)
        with torch.no_grad():
            assert model(seq, n_steps=2).shape == (3, 5, *shape)
            assert model(seq, n_steps=0).shape == (3, 3, *shape)
    with pytest.raises(ValueError, match="at least 2 frames"):
        model(torch.rand(1, 1, 4, 4, 4), n_steps=0)
    with pytest.raises(ValueError, match=r"\(B, T, Z, Y, X\)"):
        model(torch.rand(1, 4, 4, 4), n_steps=1)


def paper_step(model: CRNN, phi: torch.Tensor, hidden: list[torch.Tensor] | None):
    """The paper's equations written plainly: (B, C, Z, Y, X) activations, circular F.pad,
    F.conv3d, tanh; hidden states (B, H, Z, Y, X)."""
    import torch.nn.functional as F

    def mapping(m, x):
        conv, tanh, point = m
        x = F.pad(x, (1,) * 6, mode="circular")
        return F.conv3d(torch.tanh(F.conv3d(x, conv.weight, conv.bias)), point.weight, point.bias)

    x, new = phi[:, None], []
    h = model.config.hidden
    hidden = hidden or [phi.new_zeros(phi.shape[0], h, *phi.shape[1:]) for _ in model.cells]
    for cell, h in zip(model.cells, hidden):
        r, z = torch.sigmoid(mapping(cell.gates, torch.cat([x, h], 1))).chunk(2, 1)
        n = torch.tanh(mapping(cell.candidate, torch.cat([x, r * h], 1)))
        x = (1 - z) * h + z * n
        new.append(x)
    u = mapping(model.to_flux, x)
    u = u - u.mean(dim=(2, 3, 4), keepdim=True)
    div = sum(torch.roll(u[:, d], -1, d + 1) - torch.roll(u[:, d], 1, d + 1) for d in range(3)) / 2
    return phi + div, new


def test_step_is_the_papers_convgru_and_its_gradients_match():
    # the fast path (channels-last, tanh folded into sigmoid, oneDNN) computes the same function
    model = make_model(3)
    phi0 = torch.from_numpy(field((2, 6, 7, 8), seed=4))
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.1 * torch.randn_like(p))  # move biases off zero so every term counts
    fast, ref = phi0.clone().requires_grad_(), phi0.clone().requires_grad_()
    a, ha = model.step(fast)
    b, hb = paper_step(model, ref, None)
    for _ in range(2):
        a, ha = model.step(a, ha)
        b, hb = paper_step(model, b, hb)
    torch.testing.assert_close(a, b, rtol=0, atol=2e-5)
    assert (a - phi0).abs().max() > 1e-2  # the comparison is not trivial
    weights = torch.from_numpy(field(a.shape, seed=5))
    grads_fast = torch.autograd.grad((a * weights).sum(), [fast, *model.parameters()])
    grads_ref = torch.autograd.grad((b * weights).sum(), [ref, *model.parameters()])
    for g1, g2 in zip(grads_fast, grads_ref):
        torch.testing.assert_close(g1, g2, rtol=1e-4, atol=1e-5)


def test_periodic_translation_equivariance():
    model = make_model()
    seq = torch.from_numpy(field((1, 3, 12, 10, 14)))
    shift, dims = (3, -4, 5), (-3, -2, -1)
    with torch.no_grad():
        out = model(seq, n_steps=3)
        out_shifted = model(torch.roll(seq, shift, dims), n_steps=3)
    torch.testing.assert_close(out_shifted, torch.roll(out, shift, dims), rtol=0, atol=2e-5)


def test_forward_is_teacher_forcing_then_free_running():
    model = make_model()
    seq = torch.from_numpy(field((2, 5, 6, 6, 6)))
    with torch.no_grad():
        out = model(seq[:, :3], n_steps=3)  # predicts frames 1..5
        hidden, expected = None, []
        for t in range(5):
            phi, hidden = model.step(seq[:, t] if t < 3 else expected[-1], hidden)
            expected.append(phi)
        torch.testing.assert_close(out, torch.stack(expected, 1), rtol=0, atol=0)
        # causal: changing given frame 2 leaves the predictions of frames 1, 2 untouched
        seq2 = seq.clone()
        seq2[:, 2] += 0.1
        out2 = model(seq2[:, :3], n_steps=3)
    torch.testing.assert_close(out2[:, :2], out[:, :2], rtol=0, atol=0)
    assert (out2[:, 2] - out[:, 2]).abs().max() > 1e-3


def test_training_input_noise_perturbs_every_input_but_keeps_mass():
    model = make_model()
    seq = torch.from_numpy(field((2, 3, 8, 8, 8)))
    with torch.no_grad():
        clean = model(seq[:, :2], n_steps=4)
        torch.manual_seed(0)
        noisy = model(seq[:, :2], n_steps=4, input_noise=0.05)
        torch.manual_seed(0)
        again = model(seq[:, :2], n_steps=4, input_noise=0.05)
    torch.testing.assert_close(noisy, again, rtol=0, atol=0)  # reproducible under the torch seed
    for t in range(clean.shape[1]):  # teacher-forced and free-running steps are both perturbed
        assert (noisy[:, t] - clean[:, t]).abs().max() > 1e-2
    mass_in = seq[:, :2].double().sum(dim=(2, 3, 4))  # frame t+1 has the mass of input t
    mass_in = torch.cat([mass_in, mass_in[:, 1:].expand(-1, 3)], 1)
    drift = (noisy.double().sum(dim=(2, 3, 4)) - mass_in).abs() / mass_in
    assert drift.max() < 1e-6


def test_autocast_bf16_keeps_mass_and_stays_close():
    model = make_model()
    seq = torch.from_numpy(field((1, 1, 8, 8, 8)))
    with torch.no_grad():
        ref = model(seq, n_steps=2)
        low = model(seq, n_steps=2, autocast="bf16")
    assert low.dtype == torch.float32
    mass0 = seq[0, 0].double().sum()
    assert ((low.double().sum(dim=(2, 3, 4)) - mass0).abs() / mass0).max() < 1e-6
    assert (low - ref).abs().max() < 0.05
    with pytest.raises(ValueError, match="autocast"):
        model(seq, n_steps=1, autocast="int8")


def test_downsample_upsample_semantics():
    a = field((2, 8, 6, 4))
    d = downsample(a, 2)
    np.testing.assert_array_equal(d, a[:, ::2, ::2, ::2])
    assert d.flags.c_contiguous
    u = upsample(d, 2)
    assert u.shape == a.shape
    np.testing.assert_array_equal(u[:, 1::2, ::2, 1::2], d)  # nearest: every voxel of a block
    np.testing.assert_array_equal(downsample(upsample(d, 3), 3), d)
    t = torch.from_numpy(a)
    np.testing.assert_array_equal(downsample(t, 2).numpy(), d)
    np.testing.assert_array_equal(upsample(downsample(t, 2), 2).numpy(), u)
    assert downsample(a, 1) is not a and np.array_equal(downsample(a, 1), a)
    with pytest.raises(ValueError, match="multiple of the downscale factor 2"):
        downsample(field((9, 8, 8)), 2)


def test_block_mean_grid_mapping_keeps_sub_cell_interface_positions():
    a = field((2, 8, 6, 4))
    d = downsample(a, 2, "mean")
    expected = a.reshape(2, 4, 2, 3, 2, 2, 2).mean(axis=(2, 4, 6))
    np.testing.assert_allclose(d, expected, rtol=1e-6)
    np.testing.assert_allclose(downsample(torch.from_numpy(a), 2, "mean").numpy(), d, rtol=1e-6)
    np.testing.assert_allclose(downsample(upsample(d, 2), 2, "mean"), d, rtol=1e-6)
    assert float(d.sum()) * 8 == pytest.approx(float(a.sum()), rel=1e-5)  # mass kept
    # an interface moved by one fine voxel (half a coarse cell): nearest sampling cannot tell
    # two such positions apart, the block mean can
    x = np.arange(16)
    step = [np.broadcast_to((x >= c).astype(np.float32), (4, 4, 16)) for c in (7, 8)]
    assert np.array_equal(downsample(step[0], 2), downsample(step[1], 2))
    assert not np.array_equal(downsample(step[0], 2, "mean"), downsample(step[1], 2, "mean"))
    with pytest.raises(ValueError, match="nearest, mean"):
        downsample(a, 2, "cubic")


@pytest.mark.parametrize("mode,factor", [("nearest", 2), ("mean", 2), ("mean", 4)])
def test_model_grid_origin_is_where_a_coarse_voxel_samples_the_full_grid(mode, factor):
    """A linear field mapped to the model grid: voxel i holds the field at
    ``factor * i + model_grid_origin`` (nearest: the voxel itself; block mean: its centre)."""
    z = np.broadcast_to(np.arange(16, dtype=np.float32)[:, None, None], (16, 8, 8))
    coarse = downsample(np.ascontiguousarray(z), factor, mode)[:, 0, 0]
    expected = factor * np.arange(16 // factor) + model_grid_origin(factor, mode)
    np.testing.assert_allclose(coarse, expected, rtol=1e-6)
    with pytest.raises(ValueError, match="nearest, mean"):
        model_grid_origin(2, "cubic")


@pytest.mark.parametrize("shape_of", ["slab", "sphere"])
def test_block_means_lower_the_displacement_floor_of_the_model_grid(shape_of):
    """An equilibrium interface sent to the x1/2 grid and back (nearest upsampling, as the CRNN's
    frames are compared on the full grid): nearest sampling moves it by up to a fine voxel
    (floor ~ 1/sqrt(2) grid units), the block mean by far less, wherever it sits in its cell."""
    floors = {"nearest": [], "mean": []}
    for offset in (0.0, 0.25, 0.5, 0.75):
        phi = (slab((16, 16, 32), width=12.3, axis=2, center=16 + offset) if shape_of == "slab"
               else sphere((32, 32, 32), radius=7 + offset, center=(15.3, 16.1, 16.6 + offset)))
        for mode, found in floors.items():
            found.append(interface_displacement(upsample(downsample(phi, 2, mode), 2), phi))
    assert min(floors["nearest"]) > 0.68  # measured 0.69-0.82
    assert max(floors["mean"]) < 0.6  # measured 0.49-0.58
    assert all(m < 0.75 * n for m, n in zip(floors["mean"], floors["nearest"]))  # ratio ~0.71


def test_energy_guard_stops_rises_of_the_free_energy_and_keeps_mass():
    from napari_chflow.physics import free_energy_parts
    from napari_chflow.seeds import perlin

    phi0 = torch.from_numpy(perlin((16, 16, 16), seed=4))[None]

    def energies(model):
        frames = model(phi0[:, None], n_steps=12)[0]
        f = [float(free_energy_parts(p, spacing=2).sum()) for p in torch.cat([phi0, frames])]
        return np.array(f), frames

    with torch.no_grad():
        free, _ = energies(make_model(seed=2))  # an untrained CRNN raises F
        guarded, frames = energies(make_model(seed=2, guard_iters=200))
    assert (np.diff(free) > 0).any()
    assert (np.diff(guarded) <= 0).all()
    mass = frames.double().sum(dim=(1, 2, 3))
    np.testing.assert_allclose(mass.numpy(), float(phi0.double().sum()), rtol=1e-6)
    with pytest.raises(ValueError, match="stability bound"):
        CRNN(guard_iters=5, guard_dt=1.0)
    with pytest.raises(ValueError, match="guard_iters"):
        CRNN(guard_iters=-1)


def test_rollout_frames_and_grid_mapping():
    model = make_model()
    phi0 = field((16, 12, 8), seed=3)
    frames = rollout(model, phi0, 4)
    assert frames.shape == (5, 8, 6, 4) and frames.dtype == np.float32
    np.testing.assert_array_equal(frames[0], downsample(phi0, 2))
    with torch.no_grad():
        expected = model(torch.from_numpy(downsample(phi0, 2))[None, None], n_steps=4)[0].numpy()
    np.testing.assert_allclose(frames[1:], expected, rtol=0, atol=1e-6)
    mass = frames.astype(np.float64).sum(axis=(1, 2, 3))
    assert np.abs(mass / mass[0] - 1).max() < 1e-6
    # upsampled output and the streaming variant agree with the collected one
    up = rollout(model, phi0, 4, upsample=True)
    assert up.shape == (5, 16, 12, 8)
    np.testing.assert_array_equal(up, upsample(frames, 2))
    streamed = list(iter_rollout(model, phi0, 4))
    np.testing.assert_array_equal(np.stack(streamed), frames)


def test_rollout_warmup_is_teacher_forced_history():
    model = make_model()
    seq = field((4, 8, 8, 8), seed=5)
    frames = rollout(model, seq[3], 2, warmup=seq[:3])
    with torch.no_grad():
        pred = model(torch.from_numpy(downsample(seq, 2))[None], n_steps=2)[0].numpy()
    np.testing.assert_array_equal(frames[0], downsample(seq[3], 2))
    np.testing.assert_allclose(frames[1:], pred[3:], rtol=0, atol=1e-6)
    # the warm hidden state matters
    assert np.abs(rollout(model, seq[3], 2)[1:] - frames[1:]).max() > 1e-4


def test_rollout_input_validation():
    model = make_model()
    with pytest.raises(ValueError, match="3D array"):
        rollout(model, np.zeros((8, 8)), 1)
    bad = field((8, 8, 8))
    bad[1, 2, 3] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        iter_rollout(model, bad, 1)  # raised at call time, before iterating
    with pytest.raises(ValueError, match="multiple of the downscale"):
        rollout(model, field((9, 8, 8)), 1)
    with pytest.raises(ValueError, match="warmup frames"):
        rollout(model, field((8, 8, 8)), 1, warmup=field((2, 8, 8, 4)))
    with pytest.raises(ValueError, match="n_tau"):
        rollout(model, field((8, 8, 8)), -1)


def test_rollout_divergence_reports_frames_and_step():
    model = make_model()
    with torch.no_grad():
        model.to_flux[-1].weight[0, 0, 0, 0, 0] = float("nan")
    with pytest.raises(RolloutDiverged) as info:
        rollout(model, field((8, 8, 8)), 3)
    assert info.value.step == 1
    assert len(info.value.frames) == 1 and np.isfinite(info.value.frames[0]).all()


# --------------------------------------------------------------------------- checkpoints


def save_default(path: Path, model: CRNN | None = None) -> CRNN:
    model = model or make_model(downscale=2, tau=0.5)
    save_checkpoint(path, model, recipe={"lr": 1e-3, "epochs": np.int64(3), "out": Path("/x")},
                    data={"n_sequences": 10, "grid": (64, 64, 64)},
                    extra={"train_state": {"step": 7, "rng": torch.arange(4)}})
    return model


def test_checkpoint_round_trip(tmp_path):
    path = tmp_path / "sub" / "m.pt"
    model = save_default(path, make_model(seed=1, tau=0.25, eps=2.5, downscale=1))
    assert sorted(p.name for p in path.parent.iterdir()) == ["m.pt"]  # no temp file left
    loaded = load_checkpoint(path)
    assert loaded.info.config == model.info.config
    assert (loaded.info.tau, loaded.info.eps, loaded.info.downscale) == (0.25, 2.5, 1)
    assert loaded.info.recipe == {"lr": 1e-3, "epochs": 3, "out": "/x"}
    assert loaded.info.data == {"n_sequences": 10, "grid": (64, 64, 64)}
    assert loaded.info.param_count == 28_970
    assert (loaded.info.coarse, loaded.info.guard_iters) == ("nearest", 0)
    assert loaded.extra["train_state"]["step"] == 7
    assert torch.equal(loaded.extra["train_state"]["rng"], torch.arange(4))
    seq = torch.from_numpy(field((1, 2, 6, 6, 6)))
    with torch.no_grad():
        assert torch.equal(loaded(seq, n_steps=2), model(seq, n_steps=2))


def test_flux_limiter_bounds_phi_conserves_mass_and_is_the_plain_layer_when_idle():
    from napari_chflow.model import limited_divergence

    torch.manual_seed(0)
    phi = torch.rand(2, 8, 8, 8, dtype=torch.float64)
    u = 0.4 * torch.randn(2, 3, 8, 8, 8, dtype=torch.float64)
    plain = make_model().divergence(u)
    assert float((phi + plain).max()) > 1.3 and float((phi + plain).min()) < -0.3
    limited = limited_divergence(phi, u, -0.05, 1.05)
    new = phi + limited
    assert float(new.max()) <= 1.05 + 1e-12 and float(new.min()) >= -0.05 - 1e-12
    torch.testing.assert_close(limited.sum(dim=(1, 2, 3)), torch.zeros(2, dtype=torch.float64),
                               atol=1e-12, rtol=0)
    # bounds far away: exactly the paper's central-difference divergence
    torch.testing.assert_close(limited_divergence(phi, u, -1e3, 1e3), plain)
    # in the model: a limited CRNN keeps phi in range over a rollout, the plain one does not
    phi0 = field((16, 16, 16), seed=7)
    free_model, bounded_model = make_model(seed=5), make_model(seed=5, flux_limit=0.05)
    with torch.no_grad():  # strong fluxes: an untrained CRNN barely moves phi
        for m in (free_model, bounded_model):
            m.to_flux[-1].weight.mul_(30)
    free, bounded = rollout(free_model, phi0, 6), rollout(bounded_model, phi0, 6)
    assert free.max() > 1.05 or free.min() < -0.05
    assert bounded.max() <= 1.05 + 1e-5 and bounded.min() >= -0.05 - 1e-5
    np.testing.assert_allclose(bounded.astype(np.float64).sum(axis=(1, 2, 3)),
                               bounded[0].astype(np.float64).sum(), rtol=1e-5)
    with pytest.raises(ValueError, match="flux_limit"):
        CRNN(flux_limit=-0.1)


def test_checkpoint_keeps_grid_mapping_and_energy_guard(tmp_path):
    model = save_default(tmp_path / "m.pt", make_model(seed=3, coarse="mean", guard_iters=7,
                                                        guard_dt=0.01, flux_limit=0.1))
    loaded = load_checkpoint(tmp_path / "m.pt")
    assert (loaded.info.coarse, loaded.info.guard_iters, loaded.info.guard_dt) == ("mean", 7, 0.01)
    assert loaded.info.flux_limit == 0.1
    phi0 = field((8, 8, 8), seed=5)
    np.testing.assert_array_equal(rollout(loaded, phi0, 2)[0], downsample(phi0, 2, "mean"))
    np.testing.assert_array_equal(rollout(loaded, phi0, 2), rollout(model, phi0, 2))


def test_checkpoint_refuses_foreign_and_broken_files(tmp_path):
    good = tmp_path / "good.pt"
    model = save_default(good)
    raw = good.read_bytes()

    cases = {}
    (tmp_path / "truncated.pt").write_bytes(raw[: len(raw) // 2])
    cases["truncated.pt"] = "cannot be read"
    torch.save(model.state_dict(), tmp_path / "plain.pt")
    cases["plain.pt"] = "plain state_dict"
    (tmp_path / "text.pt").write_text("hello, not a checkpoint\n")
    cases["text.pt"] = "cannot be read"
    payload = torch.load(good, weights_only=True)
    torch.save({**payload, "config": {**payload["config"], "hidden": 8}}, tmp_path / "arch.pt")
    cases["arch.pt"] = "another architecture"
    torch.save({**payload, "config": {**payload["config"], "n_heads": 2}}, tmp_path / "arch2.pt")
    cases["arch2.pt"] = "another architecture"
    state = {k: v.clone() for k, v in payload["state_dict"].items()}
    state[next(iter(state))] += 1.0
    torch.save({**payload, "state_dict": state}, tmp_path / "edited.pt")
    cases["edited.pt"] = "sha256"
    torch.save({**payload, "format_version": 99}, tmp_path / "future.pt")
    cases["future.pt"] = "upgrade"
    torch.save({**payload, "relax_split": "yes"}, tmp_path / "split.pt")
    cases["split.pt"] = "relax_split = 'yes'"
    torch.save({**payload, "relax_split": True}, tmp_path / "split0.pt")  # no relaxation to split
    cases["split0.pt"] = "relax_split needs a relaxation shorter than the step"
    torch.save({**payload, "early_steps": -3}, tmp_path / "early.pt")
    cases["early.pt"] = "early_steps = -3"
    torch.save({**payload, "early_relax_dt": 0.06}, tmp_path / "early0.pt")  # never acts
    cases["early0.pt"] = "early_relax_dt = 0.06 acts only in the early steps"
    torch.save({"format": "something-else"}, tmp_path / "other.pt")
    cases["other.pt"] = "not a napari-chflow"
    cases["missing.pt"] = "no such checkpoint"

    for name, problem in cases.items():
        with pytest.raises(CheckpointError, match=problem) as info:
            load_checkpoint(tmp_path / name)
        assert name in str(info.value)


def test_checkpoint_refuses_unsafe_metadata(tmp_path):
    with pytest.raises(ValueError, match=r"recipe\['f'\] is a function"):
        save_checkpoint(tmp_path / "m.pt", make_model(), recipe={"f": lambda: 0}, data={})
    assert not list(tmp_path.iterdir())


def test_load_pretrained(tmp_path, monkeypatch):
    monkeypatch.setattr(M, "_resources", lambda: tmp_path)
    assert available_pretrained() == []
    with pytest.raises(CheckpointError, match=r"no pretrained model 'default'.*available: none") as e:
        load_pretrained()
    assert "chflow train" in str(e.value)
    model = save_default(tmp_path / "default.pt")
    assert available_pretrained() == ["default"]
    loaded = load_pretrained("default")
    pairs = zip(loaded.state_dict().values(), model.state_dict().values())
    assert all(torch.equal(a, b) for a, b in pairs)
    with pytest.raises(CheckpointError, match="available: default"):
        load_pretrained("large")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_cuda_rollout_matches_cpu():
    model = make_model()
    phi0 = field((16, 16, 16))
    cpu = rollout(model, phi0, 3)
    gpu = rollout(model, phi0, 3, device="cuda")
    np.testing.assert_allclose(gpu, cpu, rtol=0, atol=1e-4)
    half = rollout(model, phi0, 3, device="cuda", autocast="bf16")
    mass = half.astype(np.float64).sum(axis=(1, 2, 3))
    assert np.abs(mass / mass[0] - 1).max() < 1e-6
    assert np.abs(half - cpu).max() < 0.05


def test_checkpoint_stores_str_subclasses_as_plain_str(tmp_path):
    path = tmp_path / "m.pt"
    save_checkpoint(path, CRNN(), recipe={"torch": torch.__version__}, data={})
    assert load_checkpoint(path).info.recipe["torch"] == str(torch.__version__)


def test_lattice_images_are_exact_symmetries_and_invert():
    rng = np.random.default_rng(4)
    phi = torch.from_numpy(rng.random((2, 8, 8, 8)))
    for image in {im for images in LATTICE_IMAGES.values() for im in images}:
        moved = lattice_image(phi, image)
        back = lattice_image(moved, image, inverse=True)
        torch.testing.assert_close(moved.sum(dim=(1, 2, 3)), phi.sum(dim=(1, 2, 3)))
        if not any(image[2]):  # whole-cell operations lose nothing
            torch.testing.assert_close(back, phi)
    # a band-limited field sampled at the moved nodes, exactly; inversion reverses the axes;
    # the axis order (1, 2, 0) puts Y first
    z = torch.arange(16, dtype=torch.float64)
    wave = torch.cos(2 * np.pi * 3 * z / 16)[None, :, None, None].expand(1, 16, 4, 4)
    moved = lattice_image(wave, ((0, 1, 2), False, (0.5, 0, 0)))
    torch.testing.assert_close(moved[0, :, 0, 0], torch.cos(2 * np.pi * 3 * (z + 0.5) / 16))
    torch.testing.assert_close(lattice_image(phi, ((0, 1, 2), True, (0, 0, 0))), phi.flip(1, 2, 3))
    torch.testing.assert_close(lattice_image(phi, ((1, 2, 0), False, (0, 0, 0))),
                               phi.permute(0, 2, 3, 1))


@pytest.mark.parametrize("k", [6, 12])
def test_rotated_lattice_average_makes_the_step_equivariant_under_rotation_and_inversion(k):
    """With random weights a step is not equivariant; averaged over the rotations by 120 degrees
    about the cube diagonal (and for 12 the inversion) it is, exactly: the step of the rotated
    state is the rotated step (the flux field's components turn with the axes), over several
    steps."""
    model = make_model(lattice_average=k)
    phi = torch.rand(1, 8, 8, 8, dtype=torch.float64) * 0.6 + 0.2
    model = model.double()
    # 6 holds the inversion only together with a half-cell shift (inexact at the Nyquist mode)
    rotate = (lambda x: x.permute(0, 2, 3, 1),) + ((lambda x: x.flip(1, 2, 3),) if k == 12 else ())
    with torch.no_grad():
        out = model(phi[:, None], 3)[:, -1]
        for op in rotate:
            torch.testing.assert_close(model(op(phi)[:, None], 3)[:, -1], op(out))
        # the body-centre shift without rotations (4 images) does not give the rotation
        plain = make_model(lattice_average=4).double()
        plain.load_state_dict(model.state_dict())
        turned = plain(rotate[0](phi)[:, None], 3)[:, -1]
        assert float((turned - rotate[0](plain(phi[:, None], 3)[:, -1])).abs().max()) > 1e-4
    with pytest.raises(ValueError, match="cubic grid"):
        model.step(torch.rand(1, 8, 8, 6, dtype=torch.float64))


def test_a_large_batch_runs_in_chunks_with_the_same_result(monkeypatch):
    from napari_chflow import model as model_module

    model = make_model(lattice_average=4)
    phi = torch.rand(3, 8, 8, 8)
    with torch.no_grad():
        whole = model(phi[:, None], 3)
        calls = []
        flux = CRNN._flux
        monkeypatch.setattr(model_module, "FLUX_CHUNK_VOXELS", 2 * 8**3)  # 2 images per pass
        monkeypatch.setattr(CRNN, "_flux", lambda self, x, *a: calls.append(len(x)) or flux(
            self, x, *a))
        chunked = model(phi[:, None], 3)
    torch.testing.assert_close(chunked, whole)
    assert calls[:7] == [12, 2, 2, 2, 2, 2, 2]  # 3 samples x 4 images, in passes of 2


@pytest.mark.parametrize("shape", [(16, 16, 16), (9, 10, 12)])
def test_fourier_resample_interpolates_and_round_trips(shape):
    rng = np.random.default_rng(5)
    phi = torch.from_numpy(rng.random((2, *shape)))
    fine = fourier_resample(phi, [2 * n for n in shape])
    torch.testing.assert_close(fine[:, ::2, ::2, ::2], phi)  # the old nodes keep their values
    torch.testing.assert_close(fourier_resample(fine, shape), phi)  # down after up: identity
    torch.testing.assert_close(fine.mean(dim=(1, 2, 3)), phi.mean(dim=(1, 2, 3)))
    # a band-limited wave is sampled exactly between the old nodes
    z = torch.arange(16, dtype=torch.float64)
    wave = torch.cos(2 * np.pi * 3 * z / 16)[None, :, None, None].expand(1, 16, 2, 2)
    torch.testing.assert_close(fourier_resample(wave, (32, 2, 2))[0, :, 0, 0],
                               torch.cos(2 * np.pi * 3 * torch.arange(32.0).double() / 32))


def test_relax_keeps_a_slab_where_the_model_grid_relaxation_pins_it(tmp_path):
    """A slab between the nodes of the model grid: once the first fine-grid relaxations have
    settled its profile (the model grid's crossing moves by ~0.13 grid units, once), further
    relaxations keep it where it is, and its mass, over 20 time units; Cahn-Hilliard relaxation
    on the model grid itself (the energy guard's) moves it on to a position its lattice
    prefers."""
    from napari_chflow.metrics import interface_displacement
    from napari_chflow.physics import gradient_flow_step
    from napari_chflow.seeds import slab

    save_checkpoint(tmp_path / "r.pt", CRNN(relax_dt=0.5), recipe={}, data={})
    model = load_checkpoint(tmp_path / "r.pt")
    assert model.info.relax_dt == 0.5
    start = downsample(slab((32, 32, 32), width=16, axis=0, center=16.5), 2)  # off the nodes
    fine = coarse = torch.from_numpy(start)[None].double()
    for _ in range(4):  # 2 time units each
        fine = model.relax(fine)
    dt = 0.6 * explicit_dt_limit(spacing=2)
    for _ in range(int(2 / dt)):
        coarse = gradient_flow_step(coarse, dt, spacing=2)
    settled = {"fine": fine[0].numpy(), "coarse": coarse[0].numpy()}
    for _ in range(40):  # 20 time units more each
        fine = model.relax(fine)
    for _ in range(int(20 / dt)):
        coarse = gradient_flow_step(coarse, dt, spacing=2)
    drift = {name: 2 * interface_displacement(x[0].numpy(), settled[name])
             for name, x in (("fine", fine), ("coarse", coarse))}
    assert drift["fine"] < 0.01 and drift["coarse"] > 0.1, drift  # measured 0.005, 0.14
    assert float(fine.sum()) == pytest.approx(float(start.astype(np.float64).sum()), rel=1e-12)
    for bad in (-0.1, 20.0, "0.1"):
        with pytest.raises(ValueError, match="relax_dt"):
            CRNN(relax_dt=bad)


def test_relax_with_a_flux_limit_keeps_phi_within_the_bounds_and_mass_exact():
    """Sharp interfaces on the model grid ring when Fourier-interpolated: the relaxation alone
    takes phi past the flux limiter's bounds; applied as limited fluxes it stays within them,
    with mass exact, and where nothing is near the bounds it is the plain relaxation."""
    from napari_chflow.model import gradient_faces

    phi = torch.zeros(1, 16, 16, 16, dtype=torch.float64)
    phi[:, 4:12] = 1.0
    phi[:, :, 4:12, 4:12] = 1.0 - phi[:, :, 4:12, 4:12]
    plain, limited = CRNN(relax_dt=0.06), CRNN(relax_dt=0.06, flux_limit=0.05)
    overshoot = plain.relax(phi)
    assert float(overshoot.max()) > 1.09 and float(overshoot.min()) < -0.09  # measured 1.096
    bounded = limited.relax(phi)
    assert float(bounded.max()) <= 1.05 + 1e-12 and float(bounded.min()) >= -0.05 - 1e-12
    assert float(bounded.sum()) == pytest.approx(float(phi.sum()), abs=1e-9)
    smooth = 0.5 + 0.2 * torch.cos(2 * np.pi * torch.arange(16.0).double() / 16)[:, None, None]
    smooth = smooth.expand(1, 16, 16, 16)
    torch.testing.assert_close(limited.relax(smooth), plain.relax(smooth))
    # the fluxes reproduce any zero-mean change exactly
    change = torch.from_numpy(field((2, 6, 8, 10), seed=3)).double()
    change = change - change.mean(dim=(-3, -2, -1), keepdim=True)
    update = sum(f - torch.roll(f, 1, d) for d, f in zip((-3, -2, -1), gradient_faces(change)))
    torch.testing.assert_close(update, change)


def test_relax_split_takes_the_relaxations_time_out_of_the_networks_step(tmp_path):
    """With ``relax_split`` the network advances ``tau - relax_dt`` and the relaxation
    ``relax_dt``: the step is the relaxation of phi plus ``1 - relax_dt / tau`` times the
    network's update (the same step as a network whose output layer is scaled by that share),
    with mass exact; the option survives a checkpoint, and a relaxation that would take the
    whole step (or none of it) is refused."""
    torch.manual_seed(0)
    split = CRNN(relax_dt=0.1, relax_split=True, lattice_average=4, flux_limit=0.05).double()
    assert split.info.network_share == pytest.approx(0.8)
    scaled = CRNN(relax_dt=0.1, lattice_average=4, flux_limit=0.05).double()
    state = split.state_dict()
    last = sorted(k for k in state if k.startswith("to_flux"))[-1]
    scaled.load_state_dict({k: v * 0.8 if k == last else v for k, v in state.items()})
    phi = torch.from_numpy(field((2, 16, 16, 16), seed=5)).double()
    with torch.no_grad():
        a, b = split.step(phi)[0], scaled.step(phi)[0]
        plain = CRNN(relax_dt=0.1, lattice_average=4, flux_limit=0.05).double()
        plain.load_state_dict(state)
        c = plain.step(phi)[0]
    torch.testing.assert_close(a, b)
    assert float((a - c).abs().max()) > 1e-4  # the share matters
    torch.testing.assert_close(a.sum(dim=(1, 2, 3)), phi.sum(dim=(1, 2, 3)))
    save_checkpoint(tmp_path / "s.pt", split, recipe={}, data={})
    assert load_checkpoint(tmp_path / "s.pt").info.relax_split is True
    for kwargs in ({"relax_dt": 0.0}, {"relax_dt": 0.5}, {"relax_dt": 0.1, "relax_split": 1}):
        with pytest.raises(ValueError, match="relax_split"):
            CRNN(**{"relax_split": True, **kwargs})


def test_early_steps_give_the_start_of_a_run_the_whole_network_step(tmp_path):
    """With ``early_steps = n`` the first n steps of a run are the unsplit step with the early
    relaxation, the later ones the split step with ``relax_dt``, the hidden state carried
    through (its step count survives truncated backpropagation); a plain list of hidden
    tensors counts as past the early steps; mass stays exact; the options survive a
    checkpoint, and bad values are refused."""
    opts = dict(flux_limit=0.05, relax_limit=0.1)
    staged = make_model(relax_dt=0.12, relax_split=True, early_steps=3, early_relax_dt=0.06,
                        **opts).double()
    early = CRNN(relax_dt=0.06, **opts).double()
    late = CRNN(relax_dt=0.12, relax_split=True, **opts).double()
    for m in (early, late):
        m.load_state_dict(staged.state_dict())
    phi0 = torch.from_numpy(0.5 + 0.1 * (field((2, 16, 16, 16), seed=7) - 0.5)).double()
    with torch.no_grad():
        got, want, only_late = [phi0], [phi0], [phi0]
        h = hw = hl = None
        for k in range(5):
            phi, h = staged.step(got[-1], h)
            got.append(phi)
            phi, hw = (early if k < 3 else late).step(want[-1], hw)
            want.append(phi)
            phi, hl = late.step(only_late[-1], hl)
            only_late.append(phi)
        assert h.steps == 5
        torch.testing.assert_close(torch.stack(got), torch.stack(want), rtol=0, atol=0)
        assert float((got[1] - only_late[1]).abs().max()) > 1e-4  # the early step differs
        torch.testing.assert_close(got[-1].sum(dim=(1, 2, 3)), phi0.sum(dim=(1, 2, 3)))
        # forward with truncated backpropagation keeps counting: same frames as the loop
        seq = staged(phi0[:, None], n_steps=5, detach_every=2)
        torch.testing.assert_close(seq, torch.stack(got[1:], 1), rtol=0, atol=0)
        # a plain list of hidden tensors has no count: the later step
        fresh = staged.init_hidden(phi0)
        a = staged.step(phi0, list(fresh))[0]
        torch.testing.assert_close(a, late.step(phi0, list(fresh))[0], rtol=0, atol=0)
    save_checkpoint(tmp_path / "e.pt", staged, recipe={}, data={})
    loaded = load_checkpoint(tmp_path / "e.pt").double()
    assert (loaded.info.early_steps, loaded.info.early_relax_dt) == (3, 0.06)
    assert loaded.info.stage(2) == (0.06, 1.0)
    assert loaded.info.stage(3) == (0.12, pytest.approx(0.76))
    frames = rollout(loaded.float(), upsample(phi0[0].numpy().astype(np.float32), 2), 5)
    np.testing.assert_allclose(frames[-1], got[-1][0].numpy(), atol=1e-5)
    for kwargs, problem in (({"early_steps": -1}, "early_steps = -1"),
                            ({"early_steps": 2.5}, "early_steps = 2.5"),
                            ({"early_steps": 2, "early_relax_dt": -0.1}, "early_relax_dt = -0.1"),
                            ({"early_relax_dt": 0.06}, "early_steps = 0")):
        with pytest.raises(ValueError, match=problem):
            CRNN(**kwargs)


def test_relax_limit_sets_the_relaxations_own_bounds_and_survives_a_checkpoint(tmp_path):
    """``relax_limit`` bounds the relaxation apart from the network's flux limit: the ringing
    relaxation of sharp interfaces is cut at its margin (wider than the flux limit's), mass
    exact; without it the relaxation keeps the flux limit's bounds."""
    phi = torch.zeros(1, 16, 16, 16, dtype=torch.float64)
    phi[:, 4:12] = 1.0
    phi[:, :, 4:12, 4:12] = 1.0 - phi[:, :, 4:12, 4:12]
    save_checkpoint(tmp_path / "r.pt", CRNN(relax_dt=0.06, flux_limit=0.05, relax_limit=0.08),
                    recipe={}, data={})
    model = load_checkpoint(tmp_path / "r.pt")
    assert (model.info.flux_limit, model.info.relax_limit) == (0.05, 0.08)
    assert model.info.relax_bounds == (-0.08, 1.08)
    relaxed = model.relax(phi)
    assert 1.05 < float(relaxed.max()) <= 1.08 + 1e-12  # past the flux limit, within its own
    assert -0.08 - 1e-12 <= float(relaxed.min()) < -0.05
    assert float(relaxed.sum()) == pytest.approx(float(phi.sum()), abs=1e-9)
    assert CRNN(relax_dt=0.06, flux_limit=0.05).info.relax_bounds == (-0.05, 1.05)
    assert CRNN(relax_dt=0.06).info.relax_bounds is None
    for bad in (-0.1, 2.0, "0.1"):
        with pytest.raises(ValueError, match="relax_limit"):
            CRNN(relax_limit=bad)


def test_lattice_average_keeps_a_slab_at_rest_where_the_plain_crnn_pins_it(tmp_path):
    from napari_chflow.metrics import interface_displacement
    from napari_chflow.seeds import slab

    # the shipped weights alone: no guard (its coarse relaxation pins interfaces too), no average,
    # nearest sampling (the slab's interfaces on nodes of the model grid)
    plain, averaged = load_pretrained(), load_pretrained()
    plain.info = dataclasses.replace(plain.info, guard_iters=0, lattice_average=1, relax_dt=0.0,
                                     relax_split=False, early_steps=0, early_relax_dt=0.0,
                                     coarse="nearest")
    averaged.info = dataclasses.replace(plain.info, lattice_average=4)
    save_checkpoint(tmp_path / "avg.pt", averaged, recipe={}, data={})
    model = load_checkpoint(tmp_path / "avg.pt")
    assert model.info.lattice_average == 4
    phi0 = slab((32, 32, 32), width=16, axis=0)  # interfaces on nodes of the model grid
    target = downsample(phi0, 2)
    drift = {}
    for name, m in (("plain", plain), ("averaged", model)):
        frames = rollout(m, phi0, 200)
        drift[name] = 2 * interface_displacement(frames[-1], target)  # full-grid units
        np.testing.assert_allclose(frames.astype(np.float64).sum(axis=(1, 2, 3)),
                                   float(target.astype(np.float64).sum()), rtol=1e-6)
    # the plain CRNN moves the slab by about half a model cell (1 grid unit) to where its lattice
    # prefers interfaces; averaged over images it stays
    assert drift["plain"] > 0.8 and drift["averaged"] < 0.4
    with pytest.raises(ValueError, match="lattice_average"):
        CRNN(lattice_average=3)
