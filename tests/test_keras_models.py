"""Keras 3 (torch backend) models of the chest X-ray study: parameter counts, weights, batch norm."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

from lus_common import keras_models as km


def test_torch_side_never_imports_keras():
    code = ("import sys; import lus_common.models, lus_common.training, lus_common.hc18_study, lus_common.metrics, "
            "lus_common.phantoms, lus_common.runner, lus_common.cli, lus_common.shenzhen, lus_common.keras_models; "
            "print('keras' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"


def test_keras_runs_on_torch():
    assert km.keras().backend.backend() == "torch"


@pytest.mark.parametrize("name, builder, expected, bn", [
    ("unet", km.build_unet, 1_931_233, 14),  # "about 1.93M"
    ("vgg16_unet", km.build_vgg16_unet, 33_981_633, 0),  # "about 34.0M"
    ("resnet50_unet", km.build_resnet50_unet, 40_997_537, 53),  # "about 41.0M"
])
def test_parameter_counts_match_the_authors(name, builder, expected, bn):
    model = builder(128)
    assert model.count_params() == expected
    assert round(model.count_params() / 1e6, 2 if name == "unet" else 1) == {"unet": 1.93, "vgg16_unet": 34.0,
                                                                              "resnet50_unet": 41.0}[name]
    assert len(km.batch_norm_layers(model)) == bn
    assert model.output_shape == (None, 128, 128, 1)


def test_missing_weights_are_reported_not_hidden(empty_data_dir, monkeypatch, tmp_path):
    monkeypatch.setenv("KERAS_HOME", str(tmp_path / "keras_home"))
    monkeypatch.setattr(km, "hub_reachable", lambda host: False)
    model, info = km.create_keras_model("vgg16_unet", 32, "imagenet")
    assert info.used == "none/random" and "vgg16_weights_tf_dim_ordering_tf_kernels_notop.h5" in info.reason
    _, info = km.create_keras_model("unet", 32, "imagenet")
    assert info.used == "none (from scratch)"
    with pytest.raises(KeyError, match="Known"):
        km.create_keras_model("vgg19_unet")


def test_local_weight_file_is_found_first_and_a_bad_one_is_reported(empty_data_dir, monkeypatch, tmp_path):
    monkeypatch.setenv("KERAS_HOME", str(tmp_path / "keras_home"))
    monkeypatch.setattr(km, "hub_reachable", lambda host: True)  # the local file must win over a download
    folder = empty_data_dir / "weights"
    folder.mkdir()
    bad = folder / km.WEIGHT_FILES["resnet50_unet"]
    bad.write_bytes(b"not an HDF5 file")
    source, info = km.resolve_keras_weights("resnet50_unet", "imagenet")
    assert source == str(bad) and info.used.startswith("imagenet (local file")
    model, info = km.create_keras_model("resnet50_unet", 32, "imagenet")
    assert info.used == "none/random" and info.reason.startswith("loading failed")
    assert model.count_params() == 40_997_537
    with pytest.raises(ValueError, match="Unknown weights"):
        km.resolve_keras_weights("vgg16_unet", "ssl")


def test_bn_recompute_makes_inference_match_training_mode():
    km.keras().utils.set_random_seed(0)
    model = km.build_unet(32)
    x = np.random.default_rng(0).random((8, 32, 32, 3)).astype(np.float32)
    infer, train = km.predict_probabilities(model, x), km.predict_probabilities(model, x, training=True)
    assert np.abs(infer - train).mean() > 0.01  # fresh moving statistics (0, 1) do not describe the data
    np.testing.assert_allclose(km.predict_probabilities(model, x), infer)  # training-mode calls changed nothing
    assert km.recompute_bn_statistics(model, x, batch_size=8) == 14
    np.testing.assert_allclose(km.predict_probabilities(model, x), train, atol=1e-4)
    assert km.set_bn_momentum(model, 0.9) == 14 and km.batch_norm_layers(model)[0].momentum == 0.9
    vgg = km.build_vgg16_unet(32)
    assert km.recompute_bn_statistics(vgg, x) == 0
    np.testing.assert_allclose(km.predict_probabilities(vgg, x), km.predict_probabilities(vgg, x, training=True))


def test_imagenet_file_in_keras_format_is_loaded(empty_data_dir, monkeypatch):
    """A weights file in keras.applications' legacy HDF5 format (as downloaded) really loads."""
    import h5py
    from keras.src.legacy.saving.legacy_h5_format import save_weights_to_hdf5_group

    monkeypatch.setattr(km, "hub_reachable", lambda host: False)
    vgg = km.keras().applications.VGG16(include_top=False, weights=None, input_shape=(32, 32, 3))
    for layer in vgg.layers:
        if layer.weights:
            layer.set_weights([np.full_like(w, 0.01) for w in layer.get_weights()])
    folder = empty_data_dir / "weights"
    folder.mkdir()
    with h5py.File(folder / km.WEIGHT_FILES["vgg16_unet"], "w") as f:
        save_weights_to_hdf5_group(f, vgg)
    model, info = km.create_keras_model("vgg16_unet", 32, "imagenet")
    assert info.used.startswith("imagenet (local file")
    np.testing.assert_allclose(model.get_layer("block3_conv2").get_weights()[0], 0.01)
