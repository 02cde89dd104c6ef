import pytest
import torch
from safetensors.torch import save_file

from lus_common.models import torch_smp as models
from lus_common.models.torch_smp import create_model
from lus_common.models.weights import weights_key


def test_unknown_model_lists_known():
    with pytest.raises(KeyError, match="Known models"):
        create_model("unet_efficientnet")


def test_unknown_weights_name_is_refused(empty_data_dir):
    with pytest.raises(KeyError, match="Available"):
        create_model("unet_mobilenet_v2", encoder_weights="instagram")


def test_missing_weights_are_reported_not_hidden(empty_data_dir, monkeypatch):
    monkeypatch.setattr(models, "hub_reachable", lambda *a, **k: False)
    monkeypatch.setattr(models, "_hub_weights", lambda *a: (None, "no hub in this test"))
    _, info = create_model("unet_mobilenet_v2", encoder_weights="imagenet")
    assert info.used == "none/random"
    assert info.requested == "imagenet"
    assert "mobilenet_v2.imagenet.safetensors" in info.reason


def test_local_weight_file_is_used_first(empty_data_dir):
    torch.manual_seed(123)
    source, _ = create_model("unet_mobilenet_v2")
    (empty_data_dir / "weights").mkdir()
    state = {k: v.contiguous() for k, v in source.encoder.state_dict().items()}
    save_file(state, str(empty_data_dir / "weights" / "mobilenet_v2.imagenet.safetensors"))
    torch.manual_seed(999)
    model, info = create_model("unet_mobilenet_v2", encoder_weights="imagenet")
    assert info.used == "imagenet (local file mobilenet_v2.imagenet.safetensors)"
    w_src = source.encoder.features[0][0].weight
    assert torch.equal(model.encoder.features[0][0].weight, w_src)


def test_scratch_unet_refuses_pretrained_weights():
    with pytest.raises(ValueError, match="no pretrained encoder"):
        create_model("unet", encoder_weights="imagenet")


def test_run_keys_name_the_weights_really_loaded(empty_data_dir, monkeypatch):
    """A run made with random weights is never reused once real weights appear, nor the reverse."""
    from lus_common.studies import s4_hc18_strategies as hc18_study

    monkeypatch.setattr(models, "hub_reachable", lambda *a, **k: False)
    p = hc18_study.study_params("smoke")
    key = lambda s: hc18_study.run_params(p, s, 0, "abc")  # noqa: E731
    assert key("decoder")["weights"] == "none/random"
    (empty_data_dir / "weights").mkdir()
    path = empty_data_dir / "weights" / "mobilenet_v2.imagenet.safetensors"
    model, _ = create_model("unet_mobilenet_v2")
    state = {k: v.contiguous() for k, v in model.encoder.state_dict().items()}
    save_file(state, str(path))
    first = key("decoder")["weights"]
    assert first.startswith("imagenet:sha256:") and len(first) == len("imagenet:sha256:") + 12
    save_file({k: v + 1 for k, v in state.items()}, str(path))
    assert key("decoder")["weights"] not in (first, "none/random")  # other file, other key
    # Strategies that load nothing say so whatever is on disk; the key carries code and data.
    assert key("baseline")["weights"] == key("decoder_random")["weights"] == "none/random"
    assert (
        key("decoder")["code_version"] == hc18_study.CODE_VERSION
        and key("decoder")["data_fingerprint"] == "abc"
    )
    assert weights_key(None, path) == "none/random"


def test_a_run_whose_weights_failed_to_load_is_stored_as_random(
    empty_data_dir, isolated_results, monkeypatch
):
    """The key is made before loading; a failed download must not leave a random-weight run under
    the key of the weights it did not get."""
    from lus_common.store import results
    from lus_common.studies import s4_hc18_strategies as hc18_study
    from lus_common.training.freezing import get_strategy

    # The hub answers, so the key expects a download; then the download fails.
    monkeypatch.setattr(models, "hub_reachable", lambda *a, **k: True)
    monkeypatch.setattr(models, "_hub_weights", lambda *a: (None, "hub download failed: test"))
    p = hc18_study.study_params("smoke", strategies=["d4"])
    train, test = hc18_study.load_data(p)
    assert hc18_study.run_params(p, "d4", 0)["weights"] == "imagenet:hub-download"
    run = hc18_study.run_one(p, get_strategy("d4"), 0, train, test, torch.device("cpu"))
    assert run["metrics"]["weights_used"] == "none/random"
    assert run["config"]["params"]["weights"] == "none/random"
    assert not results.is_complete(
        results.run_dir(
            hc18_study.STUDY,
            hc18_study.run_params(p, "d4", 0, train.info["fingerprint"]),
            hc18_study.RUN_NAME_KEYS,
        )
    )
    # A stored run whose recorded weights contradict its key is not reused.
    assert results.reusable_run(run["folder"], "imagenet:sha256:0123456789ab") is None
    assert results.reusable_run(run["folder"], "none/random")["reused"]


def test_a_damaged_local_weight_file_is_a_clear_error(empty_data_dir):
    (empty_data_dir / "weights").mkdir()
    (empty_data_dir / "weights" / "mobilenet_v2.imagenet.safetensors").write_bytes(
        b"not a weight file"
    )
    with pytest.raises(
        ValueError, match="mobilenet_v2.imagenet.safetensors could not be loaded.*Replace it"
    ):
        create_model("unet_mobilenet_v2", encoder_weights="imagenet")


def test_smp_pretrained_settings_name_the_hub_files():
    from lus_common.models.weights import smp_pretrained_settings

    settings = smp_pretrained_settings("mobilenet_v2")
    assert "imagenet" in settings and settings["imagenet"]["repo_id"].startswith("smp-hub/")
    assert settings["imagenet"]["revision"]  # a pinned revision, as smp downloads it
