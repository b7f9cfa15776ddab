"""segnotes.unet against segmentation_models.pytorch, timm and torchvision."""

from __future__ import annotations

import pytest
import segmentation_models_pytorch as smp
import timm
import torch
import torchvision

from segnotes.encoders import Encoder, get_encoder
from segnotes.model import SegmentationModel
from segnotes.unet import (
    MOBILENET_V2_SKIPS,
    UNET_PRESETS,
    DecoderBlock,
    MobileNetV2Backbone,
    Unet,
    UnetConfig,
    UnetDecoder,
    UnetPlusPlus,
    UnetPlusPlusDecoder,
    convert_smp_state_dict,
    skip_points,
    unet,
)
from segnotes.upsample import MODES

SMALL = (32, 16, 16, 8, 8)


@pytest.fixture(scope="module", autouse=True)
def _threads(one_thread):
    yield


@pytest.fixture(scope="module")
def x() -> torch.Tensor:
    return torch.randn(2, 3, 64, 96, generator=torch.Generator().manual_seed(0))


# --- the encoder ---------------------------------------------------------------------------


def test_skip_points_found_by_trace_are_the_hard_coded_ones_and_smps():
    found = skip_points(torchvision.models.mobilenet_v2().features)
    assert found == list(MOBILENET_V2_SKIPS) == [1, 3, 6, 13, 18]
    assert smp.encoders.get_encoder("mobilenet_v2", weights=None)._out_indexes == found


def test_mobilenet_v2_backbone_measured_strides_and_channels_equal_declared(x):
    backbone = MobileNetV2Backbone().eval()
    with torch.no_grad():
        maps = backbone(x)
    assert [m.shape[1] for m in maps] == backbone.feature_channels == [16, 24, 32, 96, 1280]
    assert [x.shape[-1] // m.shape[-1] for m in maps] == backbone.feature_strides == [2, 4, 8, 16, 32]
    assert MobileNetV2Backbone(in_channels=1).eval()(torch.randn(1, 1, 32, 32))[-1].shape == (1, 1280, 1, 1)


def test_mobilenet_v2_encoder_matches_smp_channels_strides_and_values(x):
    ours = Encoder(MobileNetV2Backbone()).eval()
    theirs = smp.encoders.get_encoder("mobilenet_v2", weights=None).eval()
    assert ours.out_channels == theirs.out_channels == [3, 16, 24, 32, 96, 1280]
    ours.backbone.features.load_state_dict(theirs.features.state_dict())  # same torchvision layout
    with torch.no_grad():
        a, b = ours(x), theirs(x)
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
    ours = Encoder(MobileNetV2Backbone()).eval()
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


def test_timm_expansion_taps_are_wider_at_the_same_strides():
    """feature_location="expansion" taps the expanded activation inside the last block at each stride."""
    model = timm.create_model("mobilenetv2_100", features_only=True, feature_location="expansion")
    assert model.feature_info.channels() == [32, 144, 192, 576, 960]
    assert model.feature_info.reduction() == [2, 4, 8, 16, 32]


# --- the models against SMP ----------------------------------------------------------------


@pytest.mark.parametrize(("ours", "theirs"), [(Unet, smp.Unet), (UnetPlusPlus, smp.UnetPlusPlus)])
def test_defaults_are_smps_parameter_for_parameter(ours, theirs, count_params):
    ref = count_params(theirs("mobilenet_v2", encoder_weights=None, classes=5))
    assert count_params(ours(MobileNetV2Backbone(), num_classes=5)) == ref
    # a 1x1 head drops 8 of the 9 taps: 16 channels * 5 classes * 8 weights
    assert ref - count_params(ours(MobileNetV2Backbone(), num_classes=5, head_kernel_size=1)) == 16 * 5 * 8


@pytest.mark.parametrize(("ours", "theirs"), [(Unet, smp.Unet), (UnetPlusPlus, smp.UnetPlusPlus)])
def test_same_weights_give_smps_outputs(ours, theirs, x):
    ref = theirs("mobilenet_v2", encoder_weights=None, classes=3).eval()
    model = ours(MobileNetV2Backbone(), num_classes=3).eval()
    assert isinstance(model, SegmentationModel)
    model.load_state_dict(convert_smp_state_dict(ref.state_dict()), strict=True)
    with torch.no_grad():
        assert torch.equal(model(x), ref(x))


@pytest.mark.parametrize(("ours", "theirs"), [(Unet, smp.Unet), (UnetPlusPlus, smp.UnetPlusPlus)])
def test_transformer_style_encoder_matches_smp_tu_encoder(ours, theirs, count_params):
    """convnext_atto: out_channels [3, 0, 40, 80, 160, 320]; UNet++ builds no node in the empty row."""
    ref = theirs("tu-convnext_atto", encoder_weights=None, classes=2, decoder_channels=(64, 32, 16, 8, 8)).eval()
    model = ours("convnext_atto", num_classes=2, decoder_channels=(64, 32, 16, 8, 8)).eval()
    assert model.encoder.out_channels == ref.encoder.out_channels == [3, 0, 40, 80, 160, 320]
    assert count_params(model) == count_params(ref)
    model.load_state_dict(convert_smp_state_dict(ref.state_dict()), strict=True)
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(model(x), ref(x), atol=1e-4, rtol=1e-4)


def test_convert_smp_state_dict_is_idempotent_and_rejects_unmapped_keys():
    sd = Unet(MobileNetV2Backbone(), num_classes=2).state_dict()
    assert convert_smp_state_dict(sd).keys() == sd.keys()
    with pytest.raises(ValueError, match="no row of SMP_KEYS maps key 'encoder.layer1.weight'"):
        convert_smp_state_dict({"encoder.layer1.weight": torch.zeros(1)})
    # decoder keys are checked too: SMP's center block and attention have no counterpart
    center = smp.Unet("mobilenet_v2", encoder_weights=None, classes=1).state_dict()
    center["decoder.center.0.0.weight"] = torch.zeros(1)
    with pytest.raises(ValueError, match="decoder.center"):
        convert_smp_state_dict(center)
    with pytest.raises(ValueError, match="attention1"):
        convert_smp_state_dict({"decoder.blocks.0.attention1.attention.1.weight": torch.zeros(1)})


# --- presets ---------------------------------------------------------------------------------


@pytest.mark.parametrize(("preset", "params"), [("smp", 6_629_090), ("book", 3_109_746)])
def test_preset_parameter_counts_match_their_comments(preset, params, count_params):
    assert count_params(unet(preset, MobileNetV2Backbone(), num_classes=2)) == params


def test_presets_and_overrides():
    assert UNET_PRESETS["smp"] == UnetConfig()
    model = unet("book", MobileNetV2Backbone(), num_classes=3, decoder_interpolation="bilinear")
    assert type(model) is Unet and model.decoder.out_channels == 8
    assert model.head[0].kernel_size == (1, 1)
    assert type(unet("book", MobileNetV2Backbone(), nested=True)) is UnetPlusPlus
    with pytest.raises(ValueError, match="preset must be one of"):
        unet("tiny", MobileNetV2Backbone())


# --- decoders: any encoder, any mode, odd sizes ---------------------------------------------


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("decoder", [UnetDecoder, UnetPlusPlusDecoder])
def test_every_mode_decodes_odd_sized_pyramids(mode, decoder):
    """Sizes of a stride-2 conv pyramid over a 37x45 input: ceil halving gives odd skips."""
    channels = [3, 0, 8, 8, 16, 16]  # with a transformer-style placeholder
    sizes = [(37, 45), (19, 23), (10, 12), (5, 6), (3, 3), (2, 2)]
    features = [torch.randn(1, c, h, w) for c, (h, w) in zip(channels, sizes)]
    assert decoder(channels, (16, 8, 8, 4, 4), interpolation=mode)(features).shape == (1, 4, 37, 45)


@pytest.mark.parametrize("model_class", [Unet, UnetPlusPlus])
def test_the_no_skip_ablation_removes_exactly_the_skip_weights(model_class, count_params):
    x = torch.randn(1, 3, 64, 32)
    model = model_class(MobileNetV2Backbone(), num_classes=4, decoder_channels=SMALL)
    ablation = model_class(MobileNetV2Backbone(), num_classes=4, decoder_channels=SMALL, use_skips=False)
    assert model(x).shape == ablation(x).shape == (1, 4, 64, 32)
    plain = Unet(MobileNetV2Backbone(), num_classes=4, decoder_channels=SMALL, use_skips=False)
    assert count_params(ablation) == count_params(plain)  # UNet++ without skips is the plain path
    if model_class is Unet:
        skip_weights = 3 * 3 * (96 * 32 + 32 * 16 + 24 * 16 + 16 * 8)  # conv1 input channels the skips add
        assert count_params(model) - count_params(ablation) == skip_weights


def test_the_skips_are_used_and_the_ablation_ignores_them():
    """Changing one skip map changes the output; without skips only the bottleneck matters."""
    channels = [3, 8, 8, 16]
    features = [torch.randn(1, c, 16 // 2**i, 16 // 2**i) for i, c in enumerate(channels)]
    changed = [f.clone() for f in features]
    changed[1] += 1
    for use_skips in (True, False):
        decoder = UnetDecoder(channels, (8, 8, 4), use_skips=use_skips).eval()
        with torch.no_grad():
            differs = not torch.equal(decoder(features), decoder(changed))
        assert differs == use_skips


@pytest.mark.parametrize("name", ["resnet18", "convnext_atto"])
def test_any_timm_encoder_works_and_out_channels_are_measured(name):
    x = torch.randn(1, 3, 64, 64)
    for model_class in (Unet, UnetPlusPlus):
        model = model_class(name, num_classes=2, decoder_channels=SMALL).eval()
        with torch.no_grad():
            maps = model.encoder(x)
            assert model(x).shape == (1, 2, 64, 64)
        assert [m.shape[1] for m in maps] == model.encoder.out_channels
        assert [64 // m.shape[-1] for m in maps] == model.encoder.strides


def test_shallower_encoder_depth():
    model = Unet(MobileNetV2Backbone(), encoder_depth=3, decoder_channels=(32, 16, 8), num_classes=2)
    assert model.encoder.out_channels == [3, 16, 24, 32]
    assert model(torch.randn(1, 3, 24, 40)).shape == (1, 2, 24, 40)


def test_decoder_block_takes_the_size_of_its_skip_and_a_0_channel_skip_adds_nothing(count_params):
    x = torch.randn(1, 8, 5, 7)
    assert DecoderBlock(8, 0, 4)(x, torch.zeros(1, 0, 9, 13)).shape == (1, 4, 9, 13)
    assert DecoderBlock(8, 6, 4)(x, torch.zeros(1, 6, 10, 14)).shape == (1, 4, 10, 14)
    assert count_params(DecoderBlock(8, 6, 4)) - count_params(DecoderBlock(8, 0, 4)) == 6 * 4 * 9


def test_unet_plus_plus_builds_no_node_in_an_empty_row():
    assert sorted(UnetPlusPlusDecoder([3, 0, 8, 16], (16, 8, 4)).blocks) == ["x_0_3", "x_1_2", "x_2_1"]
    assert sorted(UnetPlusPlusDecoder([3, 4, 8, 16], (16, 8, 4)).blocks) == [
        "x_0_3",
        "x_1_1",
        "x_1_2",
        "x_2_1",
    ]


# --- errors -----------------------------------------------------------------------------------


def test_bad_inputs_raise_value_errors_that_say_how_to_fix_them():
    model = Unet(MobileNetV2Backbone(), num_classes=2, decoder_channels=SMALL)
    with pytest.raises(ValueError, match="pad it to 64x64"):
        model(torch.randn(1, 3, 50, 64))
    with pytest.raises(ValueError, match="input channels"):
        model(torch.randn(1, 1, 64, 64))
    with pytest.raises(ValueError, match="x.float"):
        model(torch.zeros(1, 3, 64, 64, dtype=torch.uint8))


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        (dict(num_classes=0), "num_classes must be a positive integer"),
        (dict(num_classes=-2), "num_classes must be a positive integer"),
        (dict(in_channels=0), "in_channels must be a positive integer"),
        (dict(decoder_channels=(64, 32)), "one entry per encoder stage"),
        (dict(decoder_channels=(64, 32, 16, 0, 8)), "every decoder_channels entry must be a positive"),
        (dict(decoder_interpolation="linear"), "decoder_interpolation must be one of"),
        (dict(head_kernel_size=5), "kernel_size must be one of"),
        (dict(encoder_weights="imagenet21k"), "encoder_weights must be one of"),
        (dict(encoder_depth=6), "depth must be in 1..5"),
    ],
)
@pytest.mark.parametrize("model_class", [Unet, UnetPlusPlus])
def test_bad_options_raise_value_errors(model_class, kwargs, message):
    with pytest.raises(ValueError, match=message):
        model_class(MobileNetV2Backbone(), **kwargs)


def test_bad_encoders_and_unet_plus_plus_without_skips():
    with pytest.raises(ValueError, match="unknown timm model 'mobilenet_v3'"):
        Unet("mobilenet_v3")
    with pytest.raises(ValueError, match="pretrained=True only applies to timm names"):
        Unet(MobileNetV2Backbone(), encoder_weights="imagenet")
    assert UnetPlusPlus(MobileNetV2Backbone(), use_skips=False, decoder_channels=SMALL).decoder.out_channels == 8


def test_decoders_check_the_maps_they_get():
    channels = [3, 8, 8, 16]
    features = [torch.randn(1, c, 16 // 2**i, 16 // 2**i) for i, c in enumerate(channels)]
    for decoder_class in (UnetDecoder, UnetPlusPlusDecoder):
        decoder = decoder_class(channels, (8, 8, 4))
        with pytest.raises(ValueError, match=r"built for 4 maps with channels \[3, 8, 8, 16\], got 3 maps"):
            decoder(features[1:])
        with pytest.raises(ValueError, match=r"got 4 maps with channels \[3, 8, 4, 16\]"):
            decoder([features[0], features[1], features[2][:, :4], features[3]])


def test_a_timm_swin_runs_at_the_size_it_is_built_for_and_names_the_option_otherwise():
    tiny = dict(embed_dim=16, depths=(1, 1, 1, 1), num_heads=(1, 1, 1, 1), window_size=4)
    name = "swin_tiny_patch4_window7_224"
    with pytest.raises(
        ValueError, match=rf"built for 224x224 inputs, got 64x64: .*get_encoder\('{name}', img_size=\(64, 64\)\)"
    ):
        Unet(get_encoder(name, **tiny), decoder_channels=SMALL)(torch.randn(1, 3, 64, 64))
    model = Unet(get_encoder(name, img_size=64, **tiny), num_classes=2, decoder_channels=SMALL).eval()
    assert model.encoder.out_channels == [3, 0, 16, 32, 64, 128]
    with torch.no_grad():
        assert model(torch.randn(1, 3, 64, 64)).shape == (1, 2, 64, 64)


def test_a_dilated_encoder_is_refused_with_the_fix():
    with pytest.raises(
        ValueError, match=r"needs an encoder at strides \[1, 2, 4, 8, 16, 32\], got \[1, 2, 4, 8, 16, 16\]"
    ):
        Unet(get_encoder("resnet18", output_stride=16))
    assert Unet.output_stride == UnetPlusPlus.output_stride == 1
