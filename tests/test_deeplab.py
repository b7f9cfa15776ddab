"""DeepLabV3+ against segmentation_models.pytorch's DeepLabV3Plus, and with transformer encoders."""

from __future__ import annotations

import inspect
import re

import pytest
import segmentation_models_pytorch as smp
import torch

import segnotes.deeplab
from segnotes.deeplab import DEEPLAB_PRESETS, DeepLabV3Plus, DeepLabV3PlusConfig, deeplabv3plus, from_smp
from segnotes.dpt import ViTPyramid
from segnotes.encoders import get_encoder
from segnotes.mit import mit
from segnotes.model import SegmentationModel
from segnotes.vit import vit

pytestmark = pytest.mark.usefixtures("one_thread")


def _randomize_bn(model: torch.nn.Module) -> None:
    """Non-trivial BatchNorm statistics and affine weights, so that a swapped BatchNorm shows."""
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.normal_(0, 0.1), m.running_var.uniform_(0.5, 2.0)
                m.weight.normal_(1, 0.2), m.bias.normal_(0, 0.2)


@pytest.mark.parametrize("output_stride", [16, 8])
def test_same_weights_give_smps_logits(output_stride):
    torch.manual_seed(0)
    theirs = smp.DeepLabV3Plus(
        "tu-resnet18", encoder_weights=None, classes=3, encoder_output_stride=output_stride
    ).eval()
    _randomize_bn(theirs)
    ours = DeepLabV3Plus("resnet18", num_classes=3, encoder_output_stride=output_stride).eval()
    assert isinstance(ours, SegmentationModel) and ours.output_stride == 1
    assert ours.encoder.out_channels == theirs.encoder.out_channels == [3, 64, 64, 128, 256, 512]
    assert ours.encoder.strides == [min(2**i, output_stride) for i in range(6)]
    # the skip is SMP's features[2], the stride-4 map, reduced to 48 channels
    assert ours.decoder.skip_index == 2 and ours.decoder.skip[0].out_channels == 48
    assert ours.load_state_dict(from_smp(theirs.state_dict()), strict=True)
    x = torch.randn(2, 3, 64, 96)
    with torch.no_grad():
        expected = theirs(x)
        got = ours(x)
    assert got.shape == expected.shape == (2, 3, 64, 96)
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)


def test_plain_aspp_and_other_rates_convert_too():
    kwargs = dict(decoder_channels=32, decoder_atrous_rates=(1, 2, 3), decoder_aspp_separable=False)
    torch.manual_seed(0)
    theirs = smp.DeepLabV3Plus("tu-resnet18", encoder_weights=None, classes=2, **kwargs).eval()
    _randomize_bn(theirs)
    ours = DeepLabV3Plus("resnet18", num_classes=2, **kwargs).eval()
    ours.load_state_dict(from_smp(theirs.state_dict()), strict=True)
    x = torch.randn(1, 3, 32, 64)
    with torch.no_grad():
        torch.testing.assert_close(ours(x), theirs(x), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("preset", sorted(DEEPLAB_PRESETS))
def test_preset_parameter_counts_match_their_comments(preset, count_params):
    with torch.device("meta"):
        model = deeplabv3plus(preset, "resnet18", num_classes=2)
        if preset == "smp":
            assert count_params(model) == count_params(
                smp.DeepLabV3Plus("tu-resnet18", encoder_weights=None, classes=2)
            )
    comment = re.search(
        rf'"{preset}": DeepLabV3PlusConfig\(.*#\s*([\d,]+) parameters', inspect.getsource(segnotes.deeplab)
    )
    assert comment is not None and int(comment.group(1).replace(",", "")) == count_params(model)
    assert DEEPLAB_PRESETS["smp"] == DeepLabV3PlusConfig()


def test_from_smp_is_idempotent_and_names_what_it_cannot_map():
    ours = deeplabv3plus("book", "resnet18", num_classes=2).state_dict()
    assert from_smp(ours).keys() == ours.keys()
    with torch.device("meta"):
        native = smp.DeepLabV3Plus("resnet18", encoder_weights=None, classes=2).state_dict()  # SMP's own ResNet
    with pytest.raises(ValueError, match="no row of SMP_KEYS maps key 'encoder.conv1.weight'.*'tu-'"):
        from_smp(native)


# --- SMP issues #967 and #1260: DeepLab with a transformer encoder ------------------------------


def test_a_transformer_encoder_cannot_dilate():
    with pytest.raises(ValueError, match="MixTransformer has its deepest map at stride 32.*output_stride=32"):
        DeepLabV3Plus(mit("b0"), encoder_output_stride=16)
    for name in ("vit_tiny_patch16_224", "pvt_v2_b0"):
        with pytest.raises(ValueError, match=f"{name} cannot dilate to output_stride=16"), torch.device("meta"):
            DeepLabV3Plus(name)


@pytest.mark.parametrize("encoder", ["mit", "vit_pyramid", "pvt_v2_b0"])
def test_deeplabv3plus_at_output_stride_32_runs_on_transformers(encoder):
    """ASPP on the stride-32 map, upsampled 8x to the stride-4 skip: the part of DeepLab a transformer allows."""
    if encoder == "mit":
        encoder = mit("b0", depths=(1, 1, 1, 1))
    elif encoder == "vit_pyramid":
        encoder = ViTPyramid(vit("book", num_classes=0))
    model = deeplabv3plus("book", encoder, num_classes=2, encoder_output_stride=32).eval()
    assert model.encoder.strides == [1, 2, 4, 8, 16, 32] and model.encoder.out_channels[1] == 0
    with torch.no_grad():
        assert model(torch.randn(1, 3, 64, 64)).shape == (1, 2, 64, 64)


# --- errors ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        (dict(num_classes=0), "num_classes must be a positive integer"),
        (dict(encoder_depth=2), r"encoder_depth must be one of \(3, 4, 5\)"),
        (dict(encoder_output_stride=4), r"output_stride must be one of \(8, 16, 32\)"),
        (dict(decoder_atrous_rates=(12, 0, 36)), "every atrous rate must be a positive integer"),
        (dict(decoder_channels=0), "decoder_channels must be a positive integer"),
        (dict(encoder_weights="imagenet21k"), "encoder_weights must be one of"),
    ],
)
def test_bad_options_raise_value_errors(kwargs, message):
    with pytest.raises(ValueError, match=message), torch.device("meta"):
        DeepLabV3Plus("resnet18", **kwargs)
    with pytest.raises(ValueError, match="preset must be one of"):
        deeplabv3plus("tiny", "resnet18")


def test_bad_inputs_and_maps_raise_value_errors():
    model = deeplabv3plus("book", get_encoder("resnet18", output_stride=16), num_classes=2)
    with pytest.raises(ValueError, match=r"not a multiple of the encoder's output stride \(16\); pad it to 64x48"):
        model(torch.randn(1, 3, 63, 40))
    features = model.encoder(torch.randn(1, 3, 32, 32))
    with pytest.raises(ValueError, match=r"DeepLabV3PlusDecoder expects maps at strides \[1, 2, 4, 8, 16, 16\]"):
        model.decoder([*features[:-1], features[-1][..., :1, :1]])  # the deepest map at stride 32
