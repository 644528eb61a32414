"""benchmarks/model_card.py: the card records no path of the machine that made it."""

from __future__ import annotations

import importlib.util
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def _card_module():
    spec = importlib.util.spec_from_file_location("model_card", REPO / "benchmarks" / "model_card.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_lineage_and_recipe_record_portable_paths(tmp_path):
    card = _card_module()
    local = tmp_path / "stage1.pt"
    local.write_bytes(b"weights")
    inside = REPO / "resources" / "default.pt"
    recipe = {"train_config": {"lr": 1e-3, "init": str(local)},
              "init_from": {"path": str(local), "recipe": {"epochs_done": 3,
                            "init_from": {"path": "/elsewhere/machine/stage0.pt",
                                          "sha256": "ab" * 32, "recipe": {
                                              "init_from": {"path": str(inside), "recipe": {}}}}}}}
    text = "\n".join(card._lineage(recipe)) + str(card._train_config(recipe))
    assert str(tmp_path) not in text and "/elsewhere" not in text and str(REPO) not in text
    from napari_chflow.io import file_sha256

    sha = file_sha256(local)[:16]
    assert f"`stage1.pt (sha256 {sha})`" in text  # a file here: name and its sha256
    assert f"'init': 'stage1.pt (sha256 {sha})'" in text
    assert "`stage0.pt (sha256 abababababababab)`" in text  # elsewhere: the recorded sha256
    assert "`resources/default.pt`" in text  # inside the project: relative to it
