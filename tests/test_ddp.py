"""Distributed data parallel: 2 CPU processes (gloo, torchrun) equal single-process training."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from napari_chflow.model import CRNN, load_checkpoint
from napari_chflow.training import TrainConfig, train


@pytest.fixture(scope="module")
def tiny_dataset(tiny_dataset_factory) -> Path:
    """6 sequences: 4 train, 2 val (see ``tiny_dataset_factory``)."""
    return tiny_dataset_factory(6, 2)


def test_two_process_ddp_equals_single_process(tiny_dataset, tmp_path):
    """Global batch 3 over 4 sequences: (2, 1) samples on ranks (0, 1), then (1, idle); random
    augmentation on. Weights, losses and the single writer must match a 1-process run. (Adam
    divides by sqrt(v): round-off of near-zero gradients moves weights by up to ~lr/100, hence a
    small lr for a 1e-5 tolerance; an unweighted per-rank mean is off by ~5e-3.)"""
    config = TrainConfig(epochs=2, lr=1e-3, batch_size=3, curriculum_epochs=1, seed=4,
                         num_threads=1)
    ddp, single = tmp_path / "ddp", tmp_path / "single"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           "-m", "napari_chflow.training", str(tiny_dataset), "-o", str(ddp), "--epochs", "2",
           "--lr", "1e-3", "--batch-size", "3", "--curriculum-epochs", "1", "--seed", "4",
           "--threads", "1", "--quiet"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.count(str(ddp / "best.pt")) == 1  # printed by rank 0 only

    train(tiny_dataset, single, config, progress=False)
    a, b = load_checkpoint(ddp / "last.pt"), load_checkpoint(single / "last.pt")
    assert [m.info.recipe["hardware"]["world_size"] for m in (a, b)] == [2, 1]
    torch.manual_seed(config.seed)
    init = CRNN(config.model).state_dict()  # the weights train() starts from
    moved = 0.0
    for (name, pa), pb in zip(a.state_dict().items(), b.state_dict().values()):
        torch.testing.assert_close(pa, pb, rtol=0, atol=1e-5, msg=name)
        moved = max(moved, float((pb - init[name]).abs().max()))
    assert moved > 1e-3  # training really changed the weights: the 1e-5 agreement is not trivial
    hist = [[json.loads(line) for line in (d / "metrics.jsonl").read_text().splitlines()]
            for d in (ddp, single)]
    assert [h["epoch"] for h in hist[0]] == [0, 1]  # rank 0 alone wrote the log
    for key in ("train_loss", "val_loss", "val_loss_full"):
        assert [h[key] for h in hist[0]] == pytest.approx([h[key] for h in hist[1]], rel=1e-4)
    assert not list(ddp.glob(".*tmp*"))  # no leftover temporary files from other ranks
