import pytest
import torch

from lus_common import hc18_study
from lus_common.models import count_parameters, create_model
from lus_common.strategies import STRATEGIES, apply_strategy, get_strategy, trainable_parameters

# The authors' figures and the digit they stop at (paper Fig. 1 / the issue's table). They are
# truncated, not rounded: D-0,1,2 has 4,365,568 and is given as 4.36M.
PAPER = {"d0": (3.76e6, 0.01e6), "d01": (4.24e6, 0.01e6), "d012": (4.36e6, 0.01e6),
         "d234": (0.164e6, 0.001e6), "decoder": (4.4e6, 0.1e6), "encoder": (2.22e6, 0.01e6),
         "baseline": (31e6, 1e6)}


@pytest.fixture(scope="module")
def models():
    out = {}
    for s in STRATEGIES.values():
        model, _ = create_model(s.model)
        out[s.name] = (apply_strategy(model, s), s)
    return out


@pytest.mark.parametrize("name", list(PAPER))
def test_trainable_parameters_match_paper(models, name):
    model, s = models[name]
    value, step = PAPER[name]
    assert trainable_parameters(model, s) // step == round(value / step)


def test_decoder_block4_is_exactly_6976(models):
    model, s = models["d4"]
    assert trainable_parameters(model, s) == 6976


def test_baseline_unet_parameter_count():
    model, info = create_model("unet")
    assert count_parameters(model) == 31_037_633
    assert info.used == "none (from scratch)"


def test_whole_decoder_cuts_trainable_parameters_by_85_8_percent(models):
    dec = trainable_parameters(*models["decoder"])
    base = trainable_parameters(*models["baseline"])
    assert round(100 * (1 - dec / base), 1) == 85.8


def test_frozen_parts_get_no_gradient(models):
    model, s = models["d234"]
    model.train()
    model(torch.randn(2, 3, 64, 64)).mean().backward()
    assert model.encoder.features[0][0].weight.grad is None
    assert model.decoder.blocks[0].conv1[0].weight.grad is None
    assert model.decoder.blocks[3].conv1[0].weight.grad is not None
    assert model.segmentation_head[0].weight.grad is not None  # the head trains in every strategy
    model.zero_grad(set_to_none=True)


def test_unknown_strategy_lists_known():
    with pytest.raises(KeyError, match="Known strategies.*baseline"):
        get_strategy("d9")
    with pytest.raises(KeyError):
        hc18_study.study_params("smoke", strategies=["decoder", "nope"])
