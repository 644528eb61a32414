"""Training: symmetry augmentation, curriculum, best checkpoint, loss decrease, exact resume."""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from napari_chflow import physics
from napari_chflow.dataset import load_dataset
from napari_chflow.model import downsample, load_checkpoint
from napari_chflow.seeds import slab
from napari_chflow.training import (
    SYMMETRIES,
    TrainConfig,
    TrainingError,
    allowed_symmetries,
    augment,
    best_epoch_number,
    curriculum_length,
    learning_rate,
    main,
    LossWeights,
    rest_losses,
    rest_states,
    slab_shift,
    load_sequences,
    loss_terms,
    sample_losses,
    select_best_epoch,
    split_windows,
    train,
    window_starts,
)

# ----------------------------------------------------------------------------- symmetries


def test_symmetries_form_the_96_element_group():
    """96 distinct transforms, identity first, closed under composition, 48 with phi -> 1-phi."""
    rng = np.random.default_rng(0)
    phi = rng.random((3, 3, 3))
    images = [augment(phi, k) for k in range(96)]
    keys = {im.round(12).tobytes(): k for k, im in enumerate(images)}
    assert len(SYMMETRIES) == 96 and len(keys) == 96
    np.testing.assert_array_equal(images[0], phi)
    assert sum(s.invert for s in SYMMETRIES) == 48
    for i in range(0, 96, 7):
        for j in range(96):
            assert augment(images[i], j).round(12).tobytes() in keys  # closure


def test_augment_numpy_and_torch_agree_on_sequences():
    seq = np.random.default_rng(1).random((2, 5, 4, 4, 4)).astype(np.float32)
    for k in range(96):
        np.testing.assert_array_equal(augment(torch.from_numpy(seq), k).numpy(), augment(seq, k))
        # one transform for all frames: frame-wise application equals whole-sequence application
        np.testing.assert_array_equal(augment(seq[0, 3], k), augment(seq, k)[0, 3])


def test_every_symmetry_commutes_with_the_cahn_hilliard_flow():
    """Evolving the transformed IC equals transforming the evolution, for all 96 transforms."""
    rng = np.random.default_rng(2)
    phi0 = 0.45 + 0.15 * rng.standard_normal((12, 12, 12))  # no symmetry, off-critical mean
    run = lambda p: physics.simulate(p, 2, solver="spectral", dtype=torch.float64)  # noqa: E731
    ref = run(phi0)
    assert np.abs(ref[-1] - ref[0]).max() > 0.1  # the flow really changes phi
    for k in range(96):
        np.testing.assert_allclose(run(augment(phi0, k)), augment(ref, k), atol=2e-6,
                                   err_msg=f"symmetry {k}")
    # control: every non-identity transform really moves the data, so the equality is not trivial
    assert min(np.abs(augment(ref, k) - ref).max() for k in range(1, 96)) > 0.1


def test_non_cubic_grids_only_use_shape_preserving_symmetries():
    assert len(allowed_symmetries((8, 8, 8))) == 96
    assert len(allowed_symmetries((5, 4, 8, 8))) == 2 * 2 * 8  # swap Y<->X or not, 8 flips, invert
    assert len(allowed_symmetries((4, 6, 8))) == 16
    seq = np.zeros((3, 4, 6, 8), np.float32)
    assert all(augment(seq, k).shape == seq.shape for k in allowed_symmetries(seq.shape))


# ----------------------------------------------------------------------------- schedule


def test_curriculum_grows_from_last_frame_to_whole_sequence():
    # 6 frames: generate 1 frame at epoch 0, ..., all 5 from the IC from epoch curriculum_epochs on
    assert [curriculum_length(e, 6, 4) for e in range(7)] == [1, 2, 3, 4, 5, 5, 5]
    assert [curriculum_length(e, 6, 0) for e in range(3)] == [5, 5, 5]
    ramp = [curriculum_length(e, 50, 25) for e in range(30)]  # the paper: 50 frames, 25 epochs
    assert ramp[0] == 1 and ramp[25:] == [49] * 5 and all(np.diff(ramp) >= 0)
    assert [curriculum_length(e, 6, 10) for e in range(11)] == [1, 1, 1, 2, 2, 3, 3, 3, 4, 4, 5]


def test_best_epoch_is_latest_until_full_length_then_lowest_full_validation_loss():
    def rec(epoch, n_gen, val_full):
        return {"epoch": epoch, "curriculum_length": n_gen, "full_length": 4,
                "val_loss_full": val_full}

    history = [rec(0, 1, 0.1), rec(1, 2, 0.5)]
    assert select_best_epoch(history) == 1  # curriculum not finished: the latest epoch
    history += [rec(2, 4, 0.3), rec(3, 4, 0.2), rec(4, 4, 0.25), rec(5, 4, 0.2)]
    assert select_best_epoch(history) == 3  # lowest full-length loss, first on ties


# ----------------------------------------------------------------------------- training runs

CONFIG = TrainConfig(epochs=3, lr=1e-2, batch_size=2, curriculum_epochs=1, seed=3, num_threads=1)


@pytest.fixture(scope="module")
def tiny_dataset(tiny_dataset_factory) -> Path:
    """4 sequences: 3 train, 1 val (see ``tiny_dataset_factory``)."""
    return tiny_dataset_factory(4, 1)


@pytest.fixture(scope="module")
def reference_run(tiny_dataset, tmp_path_factory) -> tuple[Path, list[dict]]:
    """Uninterrupted 3-epoch run of CONFIG; returns (out_dir, callback events)."""
    out = tmp_path_factory.mktemp("reference")
    events: list[dict] = []
    best = train(tiny_dataset, out, CONFIG, progress=False, callback=events.append)
    assert best == out / "best.pt"
    return out, events


def _history(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def _assert_same_run(a: Path, b: Path) -> None:
    """Bitwise-equal weights and optimizer state in last.pt, identical loss history."""
    ma, mb = load_checkpoint(a / "last.pt"), load_checkpoint(b / "last.pt")
    for (name, pa), pb in zip(ma.state_dict().items(), mb.state_dict().values()):
        assert torch.equal(pa, pb), name
    oa, ob = (m.extra["train_state"]["optimizer"]["state"] for m in (ma, mb))
    assert oa.keys() == ob.keys()
    assert all(torch.equal(oa[k][s], ob[k][s]) for k in oa for s in ("exp_avg", "exp_avg_sq"))
    drop = lambda h: {k: v for k, v in h.items() if k != "seconds"}  # noqa: E731 - timing varies
    assert [drop(h) for h in _history(a)] == [drop(h) for h in _history(b)]


def test_training_beats_persistence_and_writes_its_outputs(tiny_dataset, tmp_path):
    config = dataclasses.replace(CONFIG, batch_size=1, curriculum_epochs=0, seed=0)
    best = train(tiny_dataset, tmp_path, config, progress=False)
    history = _history(tmp_path)
    assert [h["epoch"] for h in history] == [0, 1, 2]
    assert history[-1]["val_loss_full"] < history[0]["val_loss_full"]
    # the trained model beats persistence (predicting that phi stays at its initial condition)
    val = load_sequences(load_dataset(tiny_dataset).val, downscale=2)
    persistence = float(((val[:, 1:] - val[:, :1]) ** 2).mean())
    model = load_checkpoint(best)
    with torch.no_grad():
        trained = float(sample_losses(model, val, val.shape[1] - 1).mean())
    assert trained < 0.8 * persistence
    assert trained == pytest.approx(min(h["val_loss_full"] for h in history), rel=1e-5)
    # the checkpoint knows how it was made
    recipe = model.info.recipe
    assert recipe["train_config"]["lr"] == 1e-2 and recipe["hardware"]["world_size"] == 1
    assert model.info.downscale == 2 and model.info.tau == 0.5 and model.info.data["n_train"] == 3
    assert (tmp_path / "loss.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_curriculum_and_best_checkpoint_in_a_run(tiny_dataset, reference_run):
    out, events = reference_run
    history = _history(out)
    lengths = [curriculum_length(e, 5, 1) for e in range(3)]
    assert [h["curriculum_length"] for h in history] == lengths == [1, 4, 4]
    batches = [e for e in events if e["event"] == "batch"]  # 3 sequences in batches of 2
    assert [e["curriculum_length"] for e in batches] == [1, 1, 4, 4, 4, 4]
    epochs = [e for e in events if e["event"] == "epoch"]
    assert [e["val_loss"] for e in epochs] == [h["val_loss"] for h in history]
    # best.pt holds the weights of the full-length epoch with the lowest full-sequence val loss
    model = load_checkpoint(out / "best.pt")
    recipe = model.info.recipe
    full = [h for h in history if h["curriculum_length"] == 4]
    expected = min(full, key=lambda h: h["val_loss_full"])["epoch"]
    assert recipe["best_epoch"] == select_best_epoch(history) == expected
    assert recipe["epochs_done"] == recipe["best_epoch"] + 1
    # shown counting from 1, as the progress bar and the loss curve count epochs
    assert best_epoch_number(recipe) == expected + 1 and best_epoch_number({}) == "?"
    val = load_sequences(load_dataset(tiny_dataset).val, downscale=2)
    with torch.no_grad():
        loss = float(sample_losses(model, val, 4).mean())
    assert loss == pytest.approx(recipe["best_val_loss_full"], rel=1e-5)


def test_stop_mid_epoch_then_resume_equals_uninterrupted(tiny_dataset, reference_run, tmp_path):
    seen = []
    stop = lambda: len(seen) >= 3  # noqa: E731 - 2 batches of epoch 0, then 1 of epoch 1
    train(tiny_dataset, tmp_path, CONFIG, progress=False,
          callback=lambda e: seen.append(e) if e["event"] == "batch" else None, should_stop=stop)
    assert [h["epoch"] for h in _history(tmp_path)] == [0]  # the partial epoch 1 was dropped
    assert load_checkpoint(tmp_path / "last.pt").extra["train_state"]["epoch"] == 0
    with pytest.raises(TrainingError, match="resume=True"):
        train(tiny_dataset, tmp_path, CONFIG, progress=False)
    with pytest.raises(TrainingError, match="seed"):
        train(tiny_dataset, tmp_path, dataclasses.replace(CONFIG, seed=7), resume=True,
              progress=False)
    train(tiny_dataset, tmp_path, None, resume=True, progress=False)  # None: the stored config
    _assert_same_run(reference_run[0], tmp_path)


def test_staged_run_keeps_the_schedule_and_resumes_to_the_end(tiny_dataset, reference_run,
                                                               tmp_path):
    """``stop_after`` ends the run early with the lr of the full schedule; resuming from the
    command line (no --stop-after) completes it as if it had never stopped."""
    config = dataclasses.replace(CONFIG, lr_schedule="cosine", stop_after=2)
    full = tmp_path / "full"
    train(tiny_dataset, full, dataclasses.replace(config, stop_after=None), progress=False)
    staged = tmp_path / "staged"
    train(tiny_dataset, staged, config, progress=False)
    history = _history(staged)
    assert [h["epoch"] for h in history] == [0, 1]
    assert [h["lr"] for h in history] == [learning_rate(config, e) for e in (0, 1)]
    assert history[1]["lr"] > learning_rate(dataclasses.replace(config, epochs=2), 1)
    with pytest.raises(TrainingError, match="stop-after"):
        train(tiny_dataset, tmp_path / "bad", dataclasses.replace(config, stop_after=4),
              progress=False)
    assert main([str(tiny_dataset), "-o", str(staged), "--resume", "--quiet"]) == 0
    assert [h["epoch"] for h in _history(staged)] == [0, 1, 2]
    _assert_same_run(full, staged)


def test_sigkill_then_resume_equals_uninterrupted(tiny_dataset, reference_run, tmp_path):
    """A real ``kill -9`` right after the first checkpoint, then ``resume=True``."""
    cmd = [sys.executable, "-m", "napari_chflow.training", str(tiny_dataset), "-o", str(tmp_path),
           "--epochs", "100", "--lr", str(CONFIG.lr), "--batch-size", str(CONFIG.batch_size),
           "--curriculum-epochs", str(CONFIG.curriculum_epochs), "--seed", str(CONFIG.seed),
           "--threads", "1", "--quiet"]
    proc = subprocess.Popen(cmd, env={**os.environ, "OMP_NUM_THREADS": "1"}, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 60
    while not (tmp_path / "last.pt").exists():
        assert proc.poll() is None, proc.stderr.read().decode()
        assert time.monotonic() < deadline
        time.sleep(0.005)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    done = load_checkpoint(tmp_path / "last.pt").extra["train_state"]["epoch"]
    assert done < 2  # killed early enough for the resume to have work left
    train(tiny_dataset, tmp_path, CONFIG, resume=True, progress=False)
    _assert_same_run(reference_run[0], tmp_path)


def test_cosine_schedule_decays_from_lr_to_a_twentieth():
    config = TrainConfig(epochs=11, lr=2e-3, lr_schedule="cosine")
    rates = [learning_rate(config, e) for e in range(11)]
    assert rates[0] == pytest.approx(2e-3) and rates[-1] == pytest.approx(1e-4)
    assert rates[5] == pytest.approx((2e-3 + 1e-4) / 2)
    assert all(a > b for a, b in zip(rates, rates[1:]))
    assert learning_rate(dataclasses.replace(config, lr_schedule="constant"), 7) == 2e-3


def test_init_starts_from_the_parent_weights_and_records_it(tiny_dataset, reference_run,
                                                             tmp_path):
    parent = reference_run[0] / "best.pt"
    # a learning rate of ~0 leaves the weights where --init put them
    config = dataclasses.replace(CONFIG, epochs=1, lr=1e-30, init=str(parent))
    child = load_checkpoint(train(tiny_dataset, tmp_path / "child", config, progress=False))
    for (name, a), b in zip(load_checkpoint(parent).state_dict().items(),
                            child.state_dict().values()):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-12, msg=name)
    lineage = child.info.recipe["init_from"]
    assert lineage["path"] == str(parent)
    assert lineage["recipe"]["epochs_done"] == load_checkpoint(parent).info.recipe["epochs_done"]
    # without --init the same run starts from random weights: far from the parent
    fresh = load_checkpoint(train(tiny_dataset, tmp_path / "fresh",
                                  dataclasses.replace(config, init=None), progress=False))
    diff = max(float((a - b).abs().max()) for a, b in
               zip(fresh.state_dict().values(), child.state_dict().values()))
    assert diff > 1e-3


def test_init_from_another_architecture_is_refused(tiny_dataset, reference_run, tmp_path):
    config = dataclasses.replace(CONFIG, epochs=1, downscale=1,
                                 init=str(reference_run[0] / "best.pt"))
    with pytest.raises(TrainingError, match="downscale 2 differs from this run's 1.*--init"):
        train(tiny_dataset, tmp_path, config, progress=False)
    assert not (tmp_path / "last.pt").exists()
    with pytest.raises(TrainingError, match="lr_schedule='linear'"):
        train(tiny_dataset, tmp_path, dataclasses.replace(CONFIG, lr_schedule="linear"),
              progress=False)
    with pytest.raises(TrainingError, match="input_noise=-0.1.*--input-noise"):
        train(tiny_dataset, tmp_path, dataclasses.replace(CONFIG, input_noise=-0.1),
              progress=False)


# ----------------------------------------------------------------------------- long-horizon terms


@pytest.fixture(scope="module")
def coarse_run() -> torch.Tensor:
    """``(1, 9, 16, 16, 16)``: a 32^3 spectral run from t = 20 (interfaces formed), every tau,
    on the x1/2 grid (block mean)."""
    from napari_chflow.model import downsample
    from napari_chflow.seeds import perlin

    seq = physics.simulate(perlin((32, 32, 32), seed=11), 48, solver="spectral")[40:]
    return torch.from_numpy(downsample(seq, 2, "mean"))[None]


def test_loss_terms_vanish_on_the_truth_and_see_broadening_and_stalling(coarse_run):
    truth = loss_terms(coarse_run[:, 1:], coarse_run)
    for name, value in truth.items():
        assert float(value) == pytest.approx(0, abs=1e-12), name
    # interfaces broadened toward 1/2 (bulk energy up, gradient energy down): the split sees it
    broad = 0.5 + 0.85 * (coarse_run[:, 1:] - 0.5)
    terms = loss_terms(broad, coarse_run)
    assert float(terms["split"]) > 1e-3 and float(terms["energy"]) > 1e-3
    # a prediction frozen at the input: MSE is small, but F stops falling (descent term > 0)
    frozen = coarse_run[:, :1].expand_as(coarse_run[:, 1:])
    stalled = loss_terms(frozen, coarse_run)
    assert float(stalled["descent"]) > 0 and float(stalled["mse"]) < 0.01
    # overshoots beyond [0, 1] at the interfaces: only the bounds term sees them strongly
    over = coarse_run[:, 1:] + 0.3 * (coarse_run[:, 1:] > 0.9)
    assert float(loss_terms(over, coarse_run)["bounds"]) > 1e-3
    assert float(loss_terms(coarse_run[:, 1:].clamp(0.02, 0.98), coarse_run)["bounds"]) == 0
    # the weighted sum is what training minimises
    model = CRNN_for_losses()
    w = LossWeights(energy=2.0, split=3.0, descent=5.0, bounds=7.0)
    with torch.no_grad():
        total = sample_losses(model, coarse_run, 4, weights=w)
        pred = model(coarse_run[:, :5], 4)
    parts = loss_terms(pred, coarse_run)
    expected = (parts["mse"] + 2 * parts["energy"] + 3 * parts["split"] + 5 * parts["descent"]
                + 7 * parts["bounds"])
    torch.testing.assert_close(total, expected)


def CRNN_for_losses():
    from napari_chflow.model import CRNN

    torch.manual_seed(0)
    return CRNN().eval()


def test_window_sampler_covers_long_sequences_uniformly_and_reproducibly():
    config = TrainConfig(window=10, seed=4)
    starts = np.concatenate([window_starts(config, e, 50, 100) for e in range(40)])
    assert starts.min() >= 0 and starts.max() <= 90
    assert starts.min() < 5 and starts.max() > 85  # late windows are drawn as often as early
    assert abs(np.mean(starts >= 45) - 0.5) < 0.05
    assert np.array_equal(window_starts(config, 3, 50, 100), window_starts(config, 3, 50, 100))
    assert not np.array_equal(window_starts(config, 3, 50, 100), window_starts(config, 4, 50, 100))
    assert not window_starts(TrainConfig(), 0, 5, 100).any()  # no window: whole sequences
    seqs = torch.arange(2 * 25).reshape(2, 25, 1, 1, 1).float()
    win = split_windows(seqs, 10)
    assert win.shape == (4, 10, 1, 1, 1) and torch.equal(win[3], seqs[1, 10:20])


def test_truncated_backprop_cuts_the_gradient_to_earlier_steps():
    model = CRNN_for_losses()
    phi0 = torch.rand(1, 1, 8, 8, 8, requires_grad=True)
    full = torch.autograd.grad(model(phi0, 4)[0, -1].sum(), phi0)[0]
    cut = torch.autograd.grad(model(phi0, 4, detach_every=2)[0, -1].sum(), phi0,
                              allow_unused=True)[0]
    assert float(full.abs().sum()) > 0
    assert cut is None or float(cut.abs().sum()) == 0
    with torch.no_grad():  # same forward values
        torch.testing.assert_close(model(phi0, 4), model(phi0, 4, detach_every=2))


def test_training_with_windows_energy_terms_and_guard(tiny_dataset, tmp_path):
    config = dataclasses.replace(CONFIG, epochs=2, curriculum_epochs=0, window=3, bptt=2,
                                 energy_weight=0.1, split_weight=0.1, descent_weight=1.0,
                                 bounds_weight=1.0, rest_weight=1.0, rest_steps=2,
                                 coarse="mean", guard_iters=5, lattice_average=4, relax_dt=0.05,
                                 relax_limit=0.1, relax_split=True)
    model = load_checkpoint(train(tiny_dataset, tmp_path, config, progress=False))
    info = model.info
    assert (info.coarse, info.guard_iters, info.lattice_average, info.relax_dt,
            info.relax_limit, info.relax_split) == ("mean", 5, 4, 0.05, 0.1, True)
    history = _history(tmp_path)
    assert all(h["full_length"] == 2 for h in history)  # windows of 3 frames
    assert np.isfinite([h["val_loss_full"] for h in history]).all()
    for bad, match in [({"window": 1}, "window=1"), ({"bptt": -1}, "bptt=-1"),
                       ({"energy_weight": -1.0}, "--energy-weight"), ({"coarse": "max"}, "coarse"),
                       ({"guard_iters": -2}, "--energy-guard"),
                       ({"rest_steps": 0}, "--rest-steps"), ({"rest_weight": -1.0}, "--rest-weight"),
                       ({"lattice_average": 2}, "--lattice-average"),
                       ({"relax_dt": -0.5}, "--relax-dt"),
                       ({"relax_limit": 1.5}, "--relax-limit"),
                       ({"relax_split": True, "relax_dt": 0.0}, "--relax-split"),
                       ({"relax_split": True, "relax_dt": 0.5}, "shorter than the step")]:
        with pytest.raises(TrainingError, match=match):
            train(tiny_dataset, tmp_path / "bad", dataclasses.replace(config, **bad),
                  progress=False)


def _crossings(profile: np.ndarray) -> np.ndarray:
    """Positions (cells) where a periodic 1D profile crosses 1/2, linearly interpolated."""
    a, b = profile, np.roll(profile, -1)
    i = np.nonzero((a - 0.5) * (b - 0.5) < 0)[0]
    return i + (0.5 - a[i]) / (b[i] - a[i])


def test_rest_states_are_slabs_with_interfaces_anywhere_between_the_nodes():
    states = rest_states(np.random.default_rng(5), 40, 32)
    assert states.shape == (40, 16, 16, 16) and states.dtype == np.float32
    assert np.array_equal(states, rest_states(np.random.default_rng(5), 40, 32))
    fractions, axes = [], set()
    for phi in states:
        axis = [a for a in range(3) if np.ptp(phi, axis=a).max() > 0.5]
        assert len(axis) == 1  # flat: phi varies along one axis only
        axes.add(axis[0])
        profile = phi.mean(axis=tuple(a for a in range(3) if a != axis[0]))
        cuts = _crossings(profile)
        assert len(cuts) == 2 and 0.2 <= profile.mean() <= 0.8  # two interfaces, width 1/4-3/4
        fractions += list(cuts % 1)
    assert axes == {0, 1, 2}
    # sub-cell positions spread over the cell, not pinned to nodes or midpoints
    assert np.histogram(fractions, bins=4, range=(0, 1))[0].min() >= 8


def test_rest_loss_counts_drift_of_the_slabs_not_changes_of_their_profile():
    phi = torch.from_numpy(rest_states(np.random.default_rng(2), 3, 32))

    class Shift(torch.nn.Module):  # moves every interface by `cells` per step (along all axes)
        def __init__(self, cells: int):
            super().__init__()
            self.cells = cells

        def forward(self, phi_in, n_steps):
            return torch.stack([torch.roll(phi_in[:, 0], ((k + 1) * self.cells,) * 3, (1, 2, 3))
                                for k in range(n_steps)], 1)

    class Sharpen(torch.nn.Module):  # narrower interfaces, bulk beyond the wells: no motion
        def forward(self, phi_in, n_steps):
            return (0.5 + 1.3 * (phi_in[:, :1] - 0.5)).expand(-1, n_steps, -1, -1, -1)

    assert float(rest_losses(Shift(0), phi, 4).max()) < 1e-10  # zero up to FFT rounding
    # k cells after step k: the mean of k^2 over 4 steps is 7.5
    torch.testing.assert_close(rest_losses(Shift(1), phi, 4), torch.full((3,), 7.5))
    assert float(rest_losses(Sharpen(), phi, 4).max()) < 1e-8
    # a sub-cell translation of a slab (a new one, centre moved by 0.3 grid units) is measured
    a, b = (downsample(slab((32,) * 3, 12.0, 1, c), 2) for c in (15.0, 15.3))
    shift = slab_shift(torch.from_numpy(b)[None, None], torch.from_numpy(a)[None])
    assert 0.12 < float(shift) <= 0.15  # 0.3 grid units = 0.15 cells (aliased: 0.13)
    model = CRNN_for_losses()
    loss = rest_losses(model, phi, 3).sum()
    grads = torch.autograd.grad(loss, list(model.parameters()), allow_unused=True)
    assert float(loss) > 0 and any(g is not None and float(g.abs().sum()) > 0 for g in grads)


def test_a_bad_recipe_is_refused_before_the_dataset_is_read(tmp_path):
    # the dataset folder does not exist: the recipe's own problem is named first, at once
    for bad, match in [({"epochs": 3, "stop_after": 9}, "--stop-after"),
                       ({"window": 1}, "--window"), ({"coarse": "max"}, "--coarse"),
                       ({"rest_steps": 0}, "--rest-steps")]:
        with pytest.raises(TrainingError, match=match):
            train(tmp_path / "no_such_dataset", tmp_path / "out", TrainConfig(**bad),
                  progress=False)
    assert not (tmp_path / "out").exists()


def test_stride_trains_a_model_that_steps_over_several_frames(tiny_dataset, reference_run,
                                                             tmp_path):
    from napari_chflow.validation.heldout import training_spec

    data = load_dataset(tiny_dataset)
    every = load_sequences(data.val, downscale=2)
    strided = load_sequences(data.val, downscale=2, stride=2)
    assert torch.equal(strided, every[:, ::2]) and strided.shape[1] == 3  # frames 0, 2, 4
    # fine-tuned from the 1-frame model: same weights to start, one step = 2 frames = 2 tau
    config = dataclasses.replace(CONFIG, epochs=1, curriculum_epochs=0, stride=2,
                                 init=str(reference_run[0] / "best.pt"))
    model = load_checkpoint(train(tiny_dataset, tmp_path, config, progress=False))
    assert model.info.tau == 2 * data.config.tau
    spec = training_spec(model)
    assert (spec.frames, spec.tau) == (3, model.info.tau)  # 2 steps of 2 tau = the 4 tau it saw
    with torch.no_grad():  # its validation loss is on the strided sequences
        loss = float(sample_losses(model, strided, strided.shape[1] - 1).mean())
    assert loss == pytest.approx(_history(tmp_path)[-1]["val_loss_full"], rel=1e-5)
    with pytest.raises(TrainingError, match="--stride"):
        train(tiny_dataset, tmp_path / "bad", dataclasses.replace(config, stride=9),
              progress=False)
