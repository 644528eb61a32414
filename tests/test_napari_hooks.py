"""npe2 manifest, zarr reader/writer and sample data of the napari plugin (no Qt needed)."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("napari")
npe2 = pytest.importorskip("npe2")

from napari_chflow import _napari_hooks as hooks
from napari_chflow import io, seeds


@pytest.fixture
def store(tmp_path, perlin16):
    """A 3-frame sequence on a 16^3 grid whose frames differ (phi, 1 - phi, phi^2)."""
    frames = np.stack([perlin16, 1 - perlin16, perlin16**2]).astype(np.float32)
    attrs = {"tau": 0.25, "eps": 3.0, "solver": "explicit", "seed": {"kind": "perlin", "seed": 5}}
    path = io.write_sequence(tmp_path / "run.zarr", frames, attrs=attrs)
    return path, frames, attrs


@pytest.fixture
def settings(monkeypatch):
    """napari's settings for this test only (nothing is read from or saved to the user's)."""
    import napari.settings

    fresh = napari.settings.NapariSettings(config_path=None)
    monkeypatch.setattr(napari.settings, "_SETTINGS", fresh)
    return fresh


@pytest.fixture
def notes():
    """Messages of the napari notifications emitted during the test."""
    from napari.utils.notifications import notification_manager

    seen: list[str] = []

    def record(notification):
        seen.append(str(notification.message))

    notification_manager.notification_ready.connect(record)
    yield seen
    notification_manager.notification_ready.disconnect(record)


def test_manifest_is_valid_and_lists_widgets_reader_writer_samples():
    manifest = npe2.PluginManifest.from_distribution("napari-chflow")
    c = manifest.contributions
    assert manifest.name == "napari-chflow"
    # the first widget is what `napari -w napari-chflow` opens: the whole workflow
    widgets = ["Workflow (all four panels)", "Seed volume", "Evolve and compare", "Traces",
               "Train surrogate"]
    assert [w.display_name for w in c.widgets] == widgets
    assert manifest.on_activate == "napari_chflow._napari_hooks:activate"
    samples = ["Perlin 64^3", "Stanford bunny 64^3", "Two spheres"]
    assert [s.display_name for s in c.sample_data] == samples
    assert c.readers[0].accepts_directories and "*.zarr" in c.readers[0].filename_patterns
    assert ".zarr" in c.writers[0].filename_extensions
    for command in c.commands:  # every python_name resolves to a callable
        module, _, attr = command.python_name.partition(":")
        assert callable(getattr(__import__(module, fromlist=[attr]), attr)), command.id


def test_reader_gives_time_axis_scale_and_metadata(store):
    path, frames, attrs = store
    reader = hooks.get_reader(str(path))
    assert reader is not None
    [(data, kwargs, kind)] = reader(str(path))
    assert kind == "image"
    np.testing.assert_array_equal(np.asarray(data), frames)
    assert kwargs["scale"] == (0.25, 1.0, 1.0, 1.0)  # time axis in model units
    assert kwargs["axis_labels"] == ("t", "z", "y", "x")
    assert kwargs["metadata"]["chflow"]["seed"] == attrs["seed"]
    assert kwargs["name"] == "run"


def test_reader_declines_what_is_not_a_chflow_sequence(tmp_path, store):
    from napari_builtins.io import napari_get_reader

    path, _, _ = store
    plain = tmp_path / "plain.zarr"
    plain.mkdir()
    # another zarr folder: napari's built-in reader, exactly as napari would pick it
    assert hooks.get_reader(str(plain)) is napari_get_reader(str(plain))
    assert hooks.get_reader(str(plain)) is not hooks.read_sequence_layers
    folder = tmp_path / "folder"
    folder.mkdir()
    assert hooks.get_reader(str(folder)) is None
    assert hooks.get_reader(str(tmp_path / "missing.zarr")) is None
    assert hooks.get_reader([str(path), str(path)]) is None  # one store per call
    assert hooks.get_reader([str(path)]) is hooks.read_sequence_layers


def test_downscaled_store_opens_with_spatial_scale(tmp_path, perlin16):
    coarse = perlin16[::2, ::2, ::2][None]
    path = io.write_sequence(tmp_path / "crnn.zarr", coarse, attrs={"tau": 0.5, "downscale": 2})
    [(_, kwargs, _)] = hooks.read_sequence_layers(str(path))
    assert kwargs["scale"] == (0.5, 2.0, 2.0, 2.0)  # same physical size as the 16^3 solver grid
    assert kwargs["translate"] == (0.0, 0.0, 0.0, 0.0)  # nearest samples: voxel 0 is voxel 0


def test_a_block_mean_store_opens_centred_on_its_blocks(tmp_path, perlin16):
    """Block means stand for the centre of each 2^3 block: the layer sits half a grid unit in,
    so its isosurface overlays the solver's where they agree; a foreign mapping is refused."""
    coarse = perlin16.reshape(8, 2, 8, 2, 8, 2).mean(axis=(1, 3, 5))[None]
    attrs = {"tau": 0.5, "downscale": 2, "coarse": "mean"}
    path = io.write_sequence(tmp_path / "crnn.zarr", coarse, attrs=attrs)
    [(_, kwargs, _)] = hooks.read_sequence_layers(str(path))
    assert kwargs["translate"] == (0.0, 0.5, 0.5, 0.5)
    bad = io.write_sequence(tmp_path / "bad.zarr", coarse, attrs={**attrs, "coarse": "cubic"})
    with pytest.raises(io.SequenceFormatError, match="'coarse'"):
        hooks.read_sequence_layers(str(bad))


def test_writer_round_trip_keeps_frames_tau_and_metadata(tmp_path, store):
    path, frames, attrs = store
    [(data, kwargs, _)] = hooks.read_sequence_layers(str(path))
    out = tmp_path / "copy.zarr"
    assert hooks.write_sequence_layer(str(out), data, kwargs) == [str(out)]
    phi, back = io.read_sequence(out)
    np.testing.assert_array_equal(phi, frames)
    assert back["tau"] == 0.25 and back["seed"] == attrs["seed"] and back["solver"] == "explicit"
    # saving again over the same store replaces it
    hooks.write_sequence_layer(str(out), frames[:1], {"scale": (0.5, 1, 1, 1), "metadata": {}})
    assert io.read_sequence(out)[0].shape == (1, 16, 16, 16)


def test_writer_saves_a_3d_volume_as_one_frame(tmp_path, perlin16):
    out = tmp_path / "seed.zarr"
    meta = {"chflow": {"seed": {"kind": "x"}}}
    hooks.write_sequence_layer(str(out), perlin16, {"scale": (1, 1, 1), "metadata": meta})
    phi, attrs = io.read_sequence(out)
    np.testing.assert_array_equal(phi[0], perlin16)
    assert attrs["seed"] == {"kind": "x"}


def test_file_open_picks_the_plugin_without_a_dialog(tmp_path, store, settings):
    """napari's File > Open (no plugin named) asks the user to choose between this plugin and
    its builtins for a .zarr folder unless a reader is preferred; activating the plugin prefers
    it, other zarr stores still open as napari's builtins open them, and a user's own choice
    is kept."""
    import zarr
    from napari.components import ViewerModel
    from napari.errors import MultipleReaderError
    from napari.plugins import _initialize_plugins

    _initialize_plugins()
    path = store[0]
    viewer = ViewerModel()
    with pytest.raises(MultipleReaderError):  # what shows the "choose a reader" dialog
        viewer.open(str(path), plugin=None)
    hooks.activate()
    [layer] = viewer.open(str(path), plugin=None)
    assert tuple(layer.scale) == (0.25, 1, 1, 1)
    assert layer.metadata["chflow"]["solver"] == "explicit"
    plain = tmp_path / "plain.zarr"
    zarr.save(str(plain), np.arange(20, dtype=np.float32).reshape(4, 5))
    [other] = viewer.open(str(plain), plugin=None)
    [builtin] = viewer.open(str(plain), plugin="napari")
    np.testing.assert_array_equal(np.asarray(other.data), np.asarray(builtin.data))
    settings.plugins.extension2reader = {"*.zarr": "napari"}  # the user chose builtins
    assert not hooks.prefer_for_zarr()
    assert settings.plugins.extension2reader == {"*.zarr": "napari"}


def test_saved_run_reopens_as_it_was_shown(tmp_path, store):
    """Colormap, translate (side by side) and rendering are saved with the frames."""
    from napari.components import ViewerModel

    path, frames, _ = store
    viewer = ViewerModel()
    [layer] = viewer.open(str(path), plugin="napari-chflow")
    layer.colormap, layer.translate = "bop orange", (0, 0, 0, 20.8)
    layer.rendering, layer.iso_threshold = "iso", 0.4
    out = tmp_path / "shown.zarr"
    viewer.layers.save(str(out), selected=False, plugin="napari-chflow")
    viewer.layers.clear()
    [back] = viewer.open(str(out), plugin="napari-chflow")
    np.testing.assert_array_equal(np.asarray(back.data), frames)
    assert back.colormap.name == "bop orange" and tuple(back.translate) == (0, 0, 0, 20.8)
    assert back.rendering == "iso" and back.iso_threshold == pytest.approx(0.4)
    assert "display" not in back.metadata["chflow"]  # applied, not left as metadata


def test_writer_refuses_a_2d_layer_with_a_message(tmp_path, notes):
    from napari.components import ViewerModel

    viewer = ViewerModel()
    viewer.add_image(np.zeros((8, 8), np.float32), name="flat")
    with pytest.warns(UserWarning):  # napari's own note that nothing was written
        written = viewer.layers.save(str(tmp_path / "flat.zarr"), selected=False,
                                     plugin="napari-chflow")
    assert written == [] and not (tmp_path / "flat.zarr").exists()
    expected = ("Pick a 3D or (T, Z, Y, X) layer to save as a chflow .zarr: 'flat' is 2D; "
                "save it in another format")
    assert notes == [expected]


def test_viewer_model_opens_and_saves_through_the_plugin(tmp_path, store):
    from napari.components import ViewerModel
    from napari.plugins import _initialize_plugins

    _initialize_plugins()  # entry-point discovery, as napari does at start-up
    path, frames, _ = store
    viewer = ViewerModel()
    [layer] = viewer.open(str(path), plugin="napari-chflow")
    assert layer.data.shape == frames.shape and tuple(layer.scale) == (0.25, 1, 1, 1)
    out = tmp_path / "saved.zarr"
    viewer.layers.save(str(out), selected=False, plugin="napari-chflow")
    np.testing.assert_array_equal(io.read_sequence(out)[0], frames)
    [sample] = viewer.open_sample("napari-chflow", "two_spheres")
    np.testing.assert_array_equal(sample.data, seeds.two_spheres((64, 64, 64)))


def test_sample_perlin_and_two_spheres():
    [(phi, kwargs, kind)] = hooks.sample_perlin()
    assert kind == "image" and phi.shape == (64, 64, 64) and phi.dtype == np.float32
    assert abs(float(phi.mean()) - 0.5) < 1e-4 and phi.min() >= 0 and phi.max() <= 1
    assert kwargs["metadata"]["chflow"]["seed"]["kind"] == "perlin"
    assert kwargs["rendering"] == "iso" and kwargs["iso_threshold"] == 0.5
    [(two, kwargs, _)] = hooks.sample_two_spheres()
    np.testing.assert_array_equal(two, seeds.two_spheres((64, 64, 64)))
    assert kwargs["name"] == "Two spheres"


def test_sample_bunny_is_cached(tmp_path, monkeypatch, bunny_path):
    monkeypatch.setenv("CHFLOW_BUNNY_PATH", str(bunny_path))
    monkeypatch.setattr(hooks, "SAMPLE_SHAPE", (24, 24, 24))  # the 64^3 voxelisation takes seconds
    monkeypatch.setattr(hooks, "_cache_dir", lambda: tmp_path / "cache")
    [(phi, kwargs, _)] = hooks.sample_bunny()
    np.testing.assert_array_equal(phi, seeds.stanford_bunny((24, 24, 24), path=bunny_path))
    assert kwargs["metadata"]["chflow"]["seed"]["kind"] == "stanford_bunny"
    [cached] = (tmp_path / "cache").iterdir()
    calls = []
    monkeypatch.setattr(seeds, "stanford_bunny", lambda *a, **k: calls.append(1))
    np.testing.assert_array_equal(hooks.sample_bunny()[0][0], phi)
    assert not calls and cached.is_file()
