"""segnotes.unet against segmentation_models.pytorch, timm and torchvision."""

from __future__ import annotations

import pytest
import segmentation_models_pytorch as smp
import timm
import torch
import torchvision

from segnotes.encoders import get_encoder
from segnotes.unet import (
    MOBILENET_V2_SKIPS,
    DecoderBlock,
    Unet,
    UnetDecoder,
    UnetPlusPlus,
    UnetPlusPlusDecoder,
    convert_smp_state_dict,
    fuse_for_inference,
    skip_points,
)
from segnotes.upsample import MODES


def n_params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


@pytest.fixture(scope="module")
def x() -> torch.Tensor:
    return torch.randn(2, 3, 64, 96, generator=torch.Generator().manual_seed(0))


# --- the encoder ---------------------------------------------------------------------------


def test_skip_points_found_by_trace_are_the_hard_coded_ones_and_smps():
    found = skip_points(torchvision.models.mobilenet_v2().features)
    assert found == list(MOBILENET_V2_SKIPS) == [1, 3, 6, 13, 18]
    assert smp.encoders.get_encoder("mobilenet_v2", weights=None)._out_indexes == found


def test_mobilenet_v2_encoder_matches_smp_channels_strides_and_values(x):
    ours, theirs = get_encoder("mobilenet_v2").eval(), smp.encoders.get_encoder("mobilenet_v2", weights=None).eval()
    assert ours.out_channels == theirs.out_channels == [3, 16, 24, 32, 96, 1280]
    ours.backbone.features.load_state_dict(theirs.features.state_dict())  # same torchvision layout
    with torch.no_grad():
        a, b = ours(x), theirs(x)
    assert [f.shape for f in a] == [f.shape for f in b]
    assert [x.shape[-1] // f.shape[-1] for f in a] == ours.strides == [1, 2, 4, 8, 16, 32]
    for fa, fb in zip(a, b):
        assert torch.equal(fa, fb)


def test_timm_features_only_stops_at_320_channels_before_the_1280_head(x):
    """timm's mobilenetv2_100 has the same weights in the same order; its features_only pyramid
    ends at the last inverted residual, SMP's at the 1x1 head conv (conv_head + bn2 in timm)."""
    assert get_encoder("mobilenetv2_100").out_channels == [3, 16, 24, 32, 96, 320]
    tv = torchvision.models.mobilenet_v2().eval()
    full = timm.create_model("mobilenetv2_100").eval()
    keys_tv = [k for k in tv.state_dict() if not k.startswith("classifier")]
    keys_timm = [k for k in full.state_dict() if not k.startswith("classifier")]
    assert len(keys_tv) == len(keys_timm)
    full.load_state_dict({kt: tv.state_dict()[kv] for kt, kv in zip(keys_timm, keys_tv)}, strict=False)
    ours = get_encoder("mobilenet_v2").eval()
    ours.backbone.features.load_state_dict(tv.features.state_dict())
    feats_only = get_encoder("mobilenetv2_100").eval()
    feats_only.backbone.model.load_state_dict(full.state_dict(), strict=False)
    with torch.no_grad():
        a, b = ours(x), feats_only(x)
        head = full.bn2(full.conv_head(b[-1]))  # timm's head turns the 320-channel map into SMP's bottleneck
    for fa, fb in zip(a[:-1], b[:-1]):
        torch.testing.assert_close(fa, fb)
    assert b[-1].shape[1] == 320 and a[-1].shape[1] == 1280
    torch.testing.assert_close(a[-1], head)


# --- the models against SMP ----------------------------------------------------------------


@pytest.mark.parametrize(("ours", "theirs"), [(Unet, smp.Unet), (UnetPlusPlus, smp.UnetPlusPlus)])
def test_parameter_counts_match_smp_with_a_3x3_head_and_differ_by_8_c_k_with_1x1(ours, theirs):
    classes = 5
    ref = n_params(theirs("mobilenet_v2", encoder_weights=None, classes=classes))
    assert n_params(ours("mobilenet_v2", classes=classes, head_kernel_size=3)) == ref
    # the 1x1 head drops 8 of the 9 taps: 16 channels * 5 classes * 8 weights
    assert ref - n_params(ours("mobilenet_v2", classes=classes)) == 16 * classes * 8 == 640


@pytest.mark.parametrize(("ours", "theirs"), [(Unet, smp.Unet), (UnetPlusPlus, smp.UnetPlusPlus)])
def test_same_weights_give_smps_outputs(ours, theirs, x):
    ref = theirs("mobilenet_v2", encoder_weights=None, classes=3).eval()
    model = ours("mobilenet_v2", classes=3, head_kernel_size=3).eval()
    model.load_state_dict(convert_smp_state_dict(ref.state_dict()), strict=True)
    with torch.no_grad():
        assert torch.equal(model(x), ref(x))
        torch.testing.assert_close(fuse_for_inference(model)(x), ref(x), atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize(("ours", "theirs"), [(Unet, smp.Unet), (UnetPlusPlus, smp.UnetPlusPlus)])
def test_transformer_style_encoder_matches_smp_tu_encoder(ours, theirs):
    """convnext_atto: out_channels [3, 0, 40, 80, 160, 320]; UNet++ builds no node at the placeholder."""
    ref = theirs("tu-convnext_atto", encoder_weights=None, classes=2, decoder_channels=(64, 32, 16, 8, 8)).eval()
    model = ours("convnext_atto", classes=2, head_kernel_size=3, decoder_channels=(64, 32, 16, 8, 8)).eval()
    assert model.encoder.out_channels == ref.encoder.out_channels == [3, 0, 40, 80, 160, 320]
    assert n_params(model) == n_params(ref)
    model.load_state_dict(convert_smp_state_dict(ref.state_dict()), strict=True)
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(model(x), ref(x), atol=1e-4, rtol=1e-4)


def test_convert_smp_state_dict_is_idempotent_and_rejects_unknown_keys():
    sd = Unet(classes=2).state_dict()
    assert convert_smp_state_dict(sd).keys() == sd.keys()
    with pytest.raises(ValueError, match="no rule maps"):
        convert_smp_state_dict({"encoder.layer1.weight": torch.zeros(1)})


# --- decoders: any encoder, any mode, odd sizes ---------------------------------------------


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("decoder", [UnetDecoder, UnetPlusPlusDecoder])
def test_every_mode_decodes_odd_sized_pyramids(mode, decoder):
    """Sizes of a stride-2 conv pyramid over a 37x45 input: ceil halving gives odd skips."""
    channels = [3, 0, 8, 8, 16, 16]  # with a transformer-style placeholder
    sizes = [(37, 45), (19, 23), (10, 12), (5, 6), (3, 3), (2, 2)]
    features = [torch.randn(1, c, h, w) for c, (h, w) in zip(channels, sizes)]
    out = decoder(channels, (16, 8, 8, 4, 4), interpolation=mode)(features)
    assert out.shape == (1, 4, 37, 45)


@pytest.mark.parametrize("mode", MODES)
def test_unet_every_mode_and_the_no_skip_ablation(mode):
    x, small = torch.randn(1, 3, 64, 32), (32, 16, 16, 8, 8)
    model = Unet(classes=4, decoder_channels=small, decoder_interpolation=mode)
    assert model(x).shape == (1, 4, 64, 32)
    ablation = Unet(classes=4, decoder_channels=small, decoder_interpolation=mode, use_skips=False)
    assert ablation(x).shape == (1, 4, 64, 32)
    skip_weights = 3 * 3 * (96 * 32 + 32 * 16 + 24 * 16 + 16 * 8)  # conv1 input channels the skips add
    assert n_params(model) - n_params(ablation) == skip_weights


@pytest.mark.parametrize("name", ["resnet18", "convnext_atto"])
def test_any_get_encoder_name_works(name):
    x = torch.randn(1, 3, 64, 64)
    assert Unet(name, classes=2, decoder_channels=(32, 16, 16, 8, 8))(x).shape == (1, 2, 64, 64)
    assert UnetPlusPlus(name, classes=2, decoder_channels=(32, 16, 16, 8, 8))(x).shape == (1, 2, 64, 64)


def test_shallower_encoder_depth():
    model = Unet(encoder_depth=3, decoder_channels=(32, 16, 8), classes=2)
    assert model.encoder.out_channels == [3, 16, 24, 32]
    assert model(torch.randn(1, 3, 24, 40)).shape == (1, 2, 24, 40)


def test_decoder_block_without_skip_doubles_and_ignores_an_empty_skip():
    block = DecoderBlock(8, 0, 4)
    x = torch.randn(1, 8, 5, 7)
    assert block(x).shape == (1, 4, 10, 14)
    assert block(x, torch.zeros(1, 0, 9, 13)).shape == (1, 4, 9, 13)


# --- errors -----------------------------------------------------------------------------------


def test_bad_inputs_raise_value_errors_that_say_how_to_fix_them():
    model = Unet(classes=2)
    with pytest.raises(ValueError, match="pad it to 64x64"):
        model(torch.randn(1, 3, 50, 64))
    with pytest.raises(ValueError, match="input channels"):
        model(torch.randn(1, 1, 64, 64))
    with pytest.raises(ValueError, match="one entry per encoder stage"):
        Unet(decoder_channels=(64, 32))
    with pytest.raises(ValueError, match="choose one of"):
        Unet(decoder_interpolation="linear")
    with pytest.raises(ValueError, match="head_kernel_size"):
        Unet(head_kernel_size=5)
    with pytest.raises(ValueError, match="encoder_weights"):
        Unet(encoder_weights="imagenet21k")
    with pytest.raises(ValueError, match="unknown encoder"):
        Unet("mobilenet_v3")
