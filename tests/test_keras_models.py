"""Keras 3 (torch backend) models of the chest X-ray study: parameter counts, weights, batch
norm."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

from lus_common.models import keras_unets as km


def test_torch_side_never_imports_keras():
    code = (
        "import sys; import lus_common.models.torch_smp, lus_common.training.torch_loop, "
        "lus_common.studies.s4_hc18_strategies, lus_common.evaluation.metrics, "
        "lus_common.phantoms, lus_common.app.runner, lus_common.app.cli, lus_common.data.shenzhen, "
        "lus_common.models.keras_unets; "
        "print('keras' in sys.modules)"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout
    assert out.strip() == "False"


def test_keras_runs_on_torch():
    assert km.keras().backend.backend() == "torch"


# The authors' model.summary() totals (Kim, MainQuest/Quest02/Quest02.ipynb), BN layers and input
# channels.
@pytest.mark.parametrize(
    "name, expected, bn, channels",
    [
        ("unet", 1_930_657, 14, 1),
        ("vgg16_unet", 33_997_505, 10, 3),
        ("resnet50_unet", 40_985_857, 61, 3),  # ResNet50's 53 + 8 in the decoder
    ],
)
def test_parameter_counts_match_the_authors_notebook(name, expected, bn, channels):
    model, _ = km.create_keras_model(name, 128, None)
    assert model.count_params() == expected
    assert len(km.batch_norm_layers(model)) == bn
    assert model.input_shape == (None, 128, 128, channels) and model.output_shape == (
        None,
        128,
        128,
        1,
    )


def test_the_authors_layer_order():
    model, _ = km.create_keras_model("resnet50_unet", 64, None)
    names = [layer.name for layer in model.layers]
    block = names[names.index("dec1_conv1") : names.index("dec1_conv2") + 2]
    assert block == ["dec1_conv1", "dec1_norm1", "dec1_dropout", "dec1_conv2", "dec1_norm2"]
    assert names[-2:] == ["final_up", "mask"]  # a bare transposed conv before the head
    assert model.get_layer("final_up").activation.__name__ == "linear"
    assert (
        model.get_layer("dec1_conv1").activation.__name__ == "relu"
    )  # ReLU inside the conv, then BN


@pytest.mark.parametrize(
    "name, norm, expected",
    [
        ("unet", "group", 1_930_657 - 2_816),  # BN's 2,816 moving statistics gone, gamma/beta kept
        ("unet", "none", 1_930_657 - 2 * 2_816),
        ("vgg16_unet", "group", 33_997_505 - 7_936),
    ],
)
def test_same_architecture_controls(name, norm, expected):
    model, _ = km.create_keras_model(name, 64, None, norm=norm)
    assert model.count_params() == expected and not km.batch_norm_layers(model)
    x = np.random.default_rng(0).random((4, 64, 64, km.INPUT_CHANNELS[name])).astype(np.float32)
    # No moving statistics: training mode and inference mode are the same function.
    np.testing.assert_allclose(
        km.predict_probabilities(model, x),
        km.predict_probabilities(model, x, training=True),
        atol=1e-6,
    )
    with pytest.raises(ValueError, match="Unknown norm"):
        km.create_keras_model(name, 64, None, norm="layer")


def test_bn_momentum_changes_only_the_moving_statistics():
    """Two trainings that differ only in momentum take the same gradient steps (the chapter says
    so)."""
    k = km.keras()
    rng = np.random.default_rng(0)
    x = rng.random((8, 32, 32, 1)).astype(np.float32)
    y = (rng.random((8, 32, 32, 1)) > 0.5).astype(np.float32)
    out = {}
    for momentum in (0.99, 0.9):
        model, _ = km.create_keras_model("unet", 32, None, seed=3)
        km.set_bn_momentum(model, momentum)
        model.compile(optimizer=k.optimizers.Adam(1e-3), loss="binary_crossentropy")
        model.fit(x, y, batch_size=4, epochs=2, shuffle=True, verbose=0)
        bn = km.batch_norm_layers(model)[0]
        out[momentum] = (
            model.get_layer("enc1_conv1").get_weights()[0],
            k.ops.convert_to_numpy(bn.moving_mean),
        )
    np.testing.assert_allclose(out[0.99][0], out[0.9][0], rtol=1e-5, atol=1e-6)
    assert np.abs(out[0.99][1] - out[0.9][1]).max() > 1e-3


def test_missing_weights_are_reported_not_hidden(empty_data_dir, monkeypatch, tmp_path):
    monkeypatch.setenv("KERAS_HOME", str(tmp_path / "keras_home"))
    monkeypatch.setattr(km, "hub_reachable", lambda host: False)
    model, info = km.create_keras_model("vgg16_unet", 32, "imagenet")
    assert (
        info.used == "none/random"
        and "vgg16_weights_tf_dim_ordering_tf_kernels_notop.h5" in info.reason
    )
    assert km.keras_weights_key("vgg16_unet", "imagenet") == "none/random"
    _, info = km.create_keras_model("unet", 32, "imagenet")
    assert info.used == "none (from scratch)"
    with pytest.raises(KeyError, match="Known"):
        km.create_keras_model("vgg19_unet")


def test_local_weight_file_is_found_first_and_a_bad_one_is_reported(
    empty_data_dir, monkeypatch, tmp_path
):
    monkeypatch.setenv("KERAS_HOME", str(tmp_path / "keras_home"))
    monkeypatch.setattr(
        km, "hub_reachable", lambda host: True
    )  # the local file must win over a download
    folder = empty_data_dir / "weights"
    folder.mkdir()
    bad = folder / km.WEIGHT_FILES["resnet50_unet"]
    bad.write_bytes(b"not an HDF5 file")
    source, info = km.resolve_keras_weights("resnet50_unet", "imagenet")
    assert source == str(bad) and info.used.startswith("imagenet (local file")
    assert km.keras_weights_key("resnet50_unet", "imagenet").startswith("imagenet:sha256:")
    model, info = km.create_keras_model("resnet50_unet", 32, "imagenet")
    assert info.used == "none/random" and info.reason.startswith("loading failed")
    assert model.count_params() == 40_985_857
    with pytest.raises(ValueError, match="Unknown weights"):
        km.resolve_keras_weights("vgg16_unet", "ssl")


def test_bn_recompute_makes_inference_match_training_mode():
    km.keras().utils.set_random_seed(0)
    model = km.build_unet(32)
    x = np.random.default_rng(0).random((8, 32, 32, 1)).astype(np.float32)
    infer, train = (
        km.predict_probabilities(model, x),
        km.predict_probabilities(model, x, training=True),
    )
    assert (
        np.abs(infer - train).mean() > 0.01
    )  # fresh moving statistics (0, 1) do not describe the data
    np.testing.assert_allclose(
        km.predict_probabilities(model, x), infer
    )  # training-mode calls changed nothing
    assert km.recompute_bn_statistics(model, x, batch_size=8) == 14
    np.testing.assert_allclose(km.predict_probabilities(model, x), train, atol=1e-4)
    assert km.set_bn_momentum(model, 0.9) == 14 and km.batch_norm_layers(model)[0].momentum == 0.9
    control = km.build_unet(32, norm="group")
    assert km.recompute_bn_statistics(control, x) == 0


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


def test_keras_bench_times_the_model_beside_its_torch_twin(capsys):
    """``lus bench --keras x_unet``: the authors' X-UNet (31,031,745 parameters) and the torch
    plain U-Net, the same network, trained in one run; on a CPU in float32 (the bf16 policy is
    for CUDA). An unknown model is refused with the known ones."""
    import json

    from lus_common.app.bench import benchmark_keras
    from lus_common.app.cli import main
    from lus_common.models.torch_smp import count_parameters, create_model

    args = ["bench", "--keras", "x_unet", "--size", "32", "--batch", "2", "--steps", "1"]
    assert main([*args, "--device", "cpu"]) == 0
    line = json.loads(capsys.readouterr().out)
    assert line["keras_model"] == "x_unet" and line["torch_twin"] == "unet"
    assert line["keras_params"] == 31_031_745
    assert line["torch_params"] == count_parameters(create_model("unet")[0])
    assert line["amp"] is False and line["keras_policy"] == "float32"
    assert line["keras_images_per_s"] > 0 and line["torch_images_per_s"] > 0
    ratio = line["keras_images_per_s"] / line["torch_images_per_s"]
    assert line["keras_over_torch"] == pytest.approx(ratio, abs=0.002)
    with pytest.raises(KeyError, match="x_unet"):
        benchmark_keras("v_unet", 32, 2, steps=1, device="cpu")
