"""Chapter 1: segnotes' SMP-convention adapter against segmentation_models.pytorch."""

from __future__ import annotations

import pytest
import segmentation_models_pytorch as smp
import torch
from segmentation_models_pytorch.decoders.deeplabv3.decoder import DeepLabV3PlusDecoder
from segmentation_models_pytorch.decoders.unet.decoder import UnetDecoder as SmpUnetDecoder
from segmentation_models_pytorch.decoders.unetplusplus.decoder import UnetPlusPlusDecoder as SmpUnetPlusPlusDecoder
from torch import nn

from segnotes.encoders import (
    CNN_STRIDES,
    TRANSFORMER_STRIDES,
    Encoder,
    FusedEncoder,
    as_encoder,
    check_features,
    encoder_style,
    get_encoder,
)
from segnotes.mit import mit
from segnotes.model import pad_to_multiple
from segnotes.unet import MobileNetV2Backbone

NAMES = ["convnext_atto", "mobilenetv2_100", "resnet18", "pvt_v2_b0", "dla34"]  # dla34: out_indices 1..5
# A tiny timm Swin (timm options pass through get_encoder): 64 px, 4x4 windows, one block per stage.
TINY_SWIN = dict(img_size=64, embed_dim=16, depths=(1, 1, 1, 1), num_heads=(1, 1, 1, 1), window_size=4)


class Toy(nn.Module):
    """A tiny transformer-style backbone: two maps at strides 4 and 8."""

    feature_channels, feature_strides = [8, 16], [4, 8]

    def __init__(self, channels: tuple[int, int] = (8, 16)):
        super().__init__()
        self.stem = nn.Conv2d(3, channels[0], 4, stride=4)
        self.down = nn.Conv2d(channels[0], channels[1], 2, stride=2)

    def forward(self, x):
        a = self.stem(x)  # (B, 8, H/4, W/4)
        return [a, self.down(a)]  # + (B, 16, H/8, W/8)


@pytest.fixture(scope="module", autouse=True)
def _threads(one_thread):
    yield


@pytest.fixture(scope="module")
def convnext():
    """Built once per module: convnext_atto has ConvNeXt-Tiny's layout at 1/7 of its parameters."""
    return get_encoder("convnext_atto").eval()


@pytest.mark.parametrize("name", NAMES)
def test_out_channels_and_feature_shapes_match_smp(name):
    ours = get_encoder(name).eval()
    theirs = smp.encoders.get_encoder("tu-" + name, weights=None).eval()
    assert ours.out_channels == theirs.out_channels
    for size in [(64, 64), (96, 160)]:
        x = torch.randn(1, 3, *size)
        with torch.no_grad():
            shapes_ours = [tuple(f.shape) for f in ours(x)]
            shapes_theirs = [tuple(f.shape) for f in theirs(x)]
        assert shapes_ours == shapes_theirs
        assert [size[0] // s[-2] for s in shapes_ours] == ours.strides


def test_convnext_large_matches_smp_on_meta_device():
    with torch.device("meta"):
        ours = get_encoder("convnext_large")
        theirs = smp.encoders.get_encoder("tu-convnext_large", weights=None)
    assert ours.out_channels == theirs.out_channels == [3, 0, 192, 384, 768, 1536]


def test_tagged_timm_names_work_without_download():
    with torch.device("meta"):  # no weights are allocated, nothing is downloaded (pretrained=False)
        tagged = get_encoder("resnet18.a1_in1k")
        assert tagged.out_channels == smp.encoders.get_encoder("tu-resnet18", weights=None).out_channels
        assert as_encoder("convnext_tiny.fb_in1k", depth=3).out_channels == [3, 0, 96, 192]


def test_same_weights_same_features_as_smp():
    ours = get_encoder("resnet18").eval()
    theirs = smp.encoders.get_encoder("tu-resnet18", weights=None).eval()
    ours.backbone.model.load_state_dict(theirs.model.state_dict())
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        for a, b in zip(ours(x), theirs(x), strict=True):
            torch.testing.assert_close(a, b)


def test_styles_and_placeholder(convnext):
    assert convnext.style == "transformer" and convnext.strides == [1, 2, 4, 8, 16, 32]
    feats = convnext(torch.randn(2, 3, 64, 64))
    assert feats[1].shape == (2, 0, 32, 32)
    assert get_encoder("resnet18").style == "cnn"
    assert encoder_style(CNN_STRIDES) == "cnn" and encoder_style(TRANSFORMER_STRIDES[:2]) == "transformer"
    assert encoder_style([2, 4, 8, 16, 16]) == "cnn" and encoder_style([4, 8, 8, 8]) == "transformer"  # dilated


@pytest.mark.parametrize("depth", [2, 3, 4])
@pytest.mark.parametrize("name", ["resnet18", "convnext_atto"])
def test_depth_truncates_like_smp(name, depth):
    ours = get_encoder(name, depth=depth)
    theirs = smp.encoders.get_encoder("tu-" + name, weights=None, depth=depth)
    assert ours.out_channels == theirs.out_channels
    assert [f.shape[1] for f in ours(torch.randn(1, 3, 64, 64))] == ours.out_channels


def test_in_channels():
    assert as_encoder(MobileNetV2Backbone(in_channels=1), in_channels=1).in_channels == 1
    assert get_encoder("convnext_atto", in_channels=1, depth=3).out_channels == [1, 0, 40, 80]
    enc = get_encoder("resnet18", in_channels=1).eval()
    assert enc.out_channels[0] == 1 and enc(torch.randn(1, 1, 32, 32))[-1].shape == (1, 512, 1, 1)


@pytest.mark.parametrize(
    "build, message",
    [
        (lambda: get_encoder("convnxt_tiny"), "unknown timm model 'convnxt_tiny'; did you mean convnext_tiny"),
        (
            lambda: get_encoder("mit_b0"),
            r"passed as objects: Encoder\(MobileNetV2Backbone\(\)\), Encoder\(mit\('b0'\)\)",
        ),
        (lambda: get_encoder("resnet18", depth=6), r"depth must be in 1\.\.5, got 6"),
        (
            lambda: get_encoder("convnext_atto", depth=1),
            r"transformer-style backbone, which declares 4; choose depth in 2\.\.5",
        ),
        (lambda: encoder_style([1, 2, 4, 8, 16, 32]), r"unsupported feature strides \(1, 2, 4, 8, 16, 32\)"),
        (lambda: encoder_style([2, 4, 4, 8]), r"unsupported feature strides \(2, 4, 4, 8\)"),
        (lambda: get_encoder("resnet18", output_stride=4), r"output_stride must be one of \(8, 16, 32\), got 4"),
        (lambda: get_encoder("resnet18", drop_rate_typo=0.1), "timm's resnet18 does not accept the options"),
        (lambda: Encoder(Toy(), depth=4), r"needs 3 feature maps .* which declares 2; choose depth in 2\.\.3"),
        (lambda: Encoder(Toy(), in_channels=0), "in_channels must be a positive integer"),
        (lambda: Encoder(nn.Linear(2, 2)), "cannot adapt Linear: pass an nn.Module that declares feature_channels"),
    ],
)
def test_bad_arguments_raise_clear_errors(build, message):
    with pytest.raises(ValueError, match=message):
        build()


def test_as_encoder_accepts_a_name_a_backbone_or_an_encoder():
    assert as_encoder("resnet18", depth=3).out_channels == [3, 64, 64, 128]
    wrapped = as_encoder(Toy(), depth=3)
    assert isinstance(wrapped, Encoder) and wrapped.out_channels == [3, 0, 8, 16]
    ready = Encoder(Toy(), in_channels=3, depth=3)
    assert as_encoder(ready) is ready and as_encoder(ready, in_channels=3, depth=3) is ready
    fused = FusedEncoder(ready, Encoder(Toy(), depth=3))
    assert as_encoder(fused, depth=3) is fused


@pytest.mark.parametrize(
    "encoder, kwargs, message",
    [
        (42, {}, "cannot use int as an encoder: pass a timm model name, an Encoder, or a backbone"),
        (nn.Conv2d(3, 8, 3), {}, "cannot adapt Conv2d"),
        (Encoder(Toy(), depth=3), {"in_channels": 1}, "the encoder takes 3 input channels; pass in_channels=3"),
        (Encoder(Toy(), depth=3), {"depth": 2}, "the encoder was built with depth 3; pass that depth, not 2"),
        (Toy(), {"pretrained": True}, "pretrained=True only applies to timm names"),
        (MobileNetV2Backbone(in_channels=1), {}, r"takes 1 input channels but in_channels=3 .*pass in_channels=1"),
        (mit("b0", in_channels=4), {"in_channels": 3}, "MixTransformer takes 4 input channels"),
    ],
)
def test_as_encoder_rejects_what_it_cannot_use(encoder, kwargs, message):
    with pytest.raises(ValueError, match=message):
        as_encoder(encoder, **kwargs)


@pytest.mark.parametrize(
    "x, message",
    [
        (torch.randn(3, 64, 64), r"got shape \(3, 64, 64\); add a batch dimension with x\[None\]"),
        (torch.zeros(1, 3, 64, 64, dtype=torch.uint8), r"dtype torch.uint8; convert images with x.float\(\) / 255"),
        (torch.randn(1, 4, 64, 64), "expected 3 input channels, got 4"),
        (torch.randn(1, 3, 70, 64), r"70x64 is not a multiple of the encoder's output stride \(32\); pad it to 96x64"),
    ],
)
def test_bad_inputs_raise_clear_errors(x, message):
    with pytest.raises(ValueError, match=message):
        get_encoder("resnet18")(x)


def test_backbone_that_breaks_its_declaration_raises():
    class Liar(Toy):
        feature_channels = [8, 32]  # the second map really has 16 channels

    with pytest.raises(
        ValueError, match=r"returned maps with channels \[8, 16\] but declares feature_channels \[8, 32\]"
    ):
        Encoder(Liar(), depth=3)(torch.randn(1, 3, 32, 32))


def test_pad_to_multiple_round_trip():
    x = torch.randn(1, 3, 70, 45)
    padded, (h, w) = pad_to_multiple(x, 32)
    assert padded.shape[-2:] == (96, 64) and (h, w) == (70, 45)
    torch.testing.assert_close(padded[..., :h, :w], x)
    assert get_encoder("resnet18")(padded)[-1].shape[-2:] == (3, 2)


def test_fused_encoder_handles_placeholder(convnext):
    cnn = get_encoder("mobilenetv2_100")
    fused = FusedEncoder(cnn, convnext)
    assert fused.out_channels == [3, 16, 24, 32, 96, 320] and fused.output_stride == 32
    assert [type(p).__name__ for p in fused.proj] == ["Conv2d"] * 5
    assert fused.proj[0].in_channels == 16  # the stride-2 stage comes from the CNN alone
    feats = fused(torch.randn(1, 3, 64, 64))
    assert [f.shape[1] for f in feats] == fused.out_channels
    assert [f.shape[-1] for f in feats] == [64, 32, 16, 8, 4, 2]
    both_transformer = FusedEncoder(convnext, get_encoder("pvt_v2_b0"))
    assert both_transformer.out_channels == [3, 0, 40, 80, 160, 320]
    assert isinstance(both_transformer.proj[0], nn.Identity)
    assert both_transformer(torch.randn(1, 3, 64, 64))[1].shape == (1, 0, 32, 32)


@pytest.mark.parametrize(
    "out_channels, message",
    [
        ([3, 8, 96, 192, 384, 768], "must be 0 exactly where both encoders have 0"),
        ([3, 0, 0, 192, 384, 768], "must be 0 exactly where both encoders have 0"),
        ([3, 0, 96, 192, 384], "must have 6 entries starting with 3"),
    ],
)
def test_fused_encoder_rejects_bad_out_channels(convnext, out_channels, message):
    with pytest.raises(ValueError, match=message):
        FusedEncoder(convnext, convnext, out_channels=out_channels)


def test_fused_encoder_checks_depth_and_number_of_maps():
    a, b = Encoder(Toy(), depth=3), Encoder(Toy(), depth=3)
    with pytest.raises(ValueError, match="same depth"):
        FusedEncoder(a, Encoder(Toy(), depth=2))

    class DropsLastMap(nn.Module):
        def __init__(self, encoder):
            super().__init__()
            self.encoder = encoder

        def forward(self, x):
            return self.encoder(x)[:-1]

    fused = FusedEncoder(a, b)
    fused.b = DropsLastMap(b)
    with pytest.raises(ValueError, match="expected 4 feature maps from each encoder, got 4 and 3"):
        fused(torch.randn(1, 3, 32, 32))


@pytest.mark.parametrize("name", ["convnext_atto", "mobilenetv2_100"])
@pytest.mark.parametrize("decoder_class", [SmpUnetDecoder, SmpUnetPlusPlusDecoder])
def test_smp_decoders_read_our_out_channels(name, decoder_class):
    enc = get_encoder(name).eval()
    dec = decoder_class(enc.out_channels, decoder_channels=(32, 16, 16, 8, 8)).eval()
    with torch.no_grad():
        assert dec(enc(torch.randn(1, 3, 64, 96))).shape == (1, 8, 64, 96)


def test_without_placeholder_deeplabv3plus_takes_the_stride_8_map_and_fails():
    """Dropping the placeholder shifts every stage by one index: features[2], DeepLabV3+'s
    stride-4 skip, is then at stride 8, and the fusion with the 4x-upsampled stride-16 map fails."""
    encoder = get_encoder("convnext_atto", depth=4).eval()  # deepest map at stride 16, as DeepLabV3+ wants
    with torch.no_grad():
        feats = encoder(torch.randn(1, 3, 64, 64))
    real = [f for f in feats if f.shape[1]]
    assert 64 // feats[2].shape[-1] == 4 and 64 // real[2].shape[-1] == 8
    kwargs = {"out_channels": 32, "atrous_rates": (12, 24, 36), "output_stride": 16, "aspp_separable": True}
    with_placeholder = DeepLabV3PlusDecoder(encoder.out_channels, encoder_depth=4, aspp_dropout=0.0, **kwargs)
    with torch.no_grad():
        assert with_placeholder.eval()(feats).shape == (1, 32, 16, 16)
    without = DeepLabV3PlusDecoder([c for c in encoder.out_channels if c], encoder_depth=4, aspp_dropout=0.0, **kwargs)
    with pytest.raises(RuntimeError, match="Sizes of tensors must match"), torch.no_grad():
        without.eval()(real)


def test_encoder_is_adapter_over_declared_pyramid():
    enc = Encoder(Toy(), depth=3)
    assert enc.out_channels == [3, 0, 8, 16]
    assert [tuple(f.shape[1:]) for f in enc(torch.randn(1, 3, 16, 16))] == [
        (3, 16, 16),
        (0, 8, 8),
        (8, 4, 4),
        (16, 2, 2),
    ]


# --- dilation, timm options, the declared strides ------------------------------------------------


@pytest.mark.parametrize("output_stride", [8, 16])
@pytest.mark.parametrize("name", ["resnet18", "convnext_atto"])
def test_output_stride_dilates_like_smp(name, output_stride):
    """SMP's tu- encoders pass output_stride to timm too: same maps, and the strides are the real ones."""
    ours = get_encoder(name, output_stride=output_stride).eval()
    theirs = smp.encoders.get_encoder("tu-" + name, weights=None, output_stride=output_stride).eval()
    assert ours.out_channels == theirs.out_channels
    assert ours.strides == [min(2**i, output_stride) for i in range(6)] and ours.output_stride == output_stride
    ours.backbone.model.load_state_dict(theirs.model.state_dict())
    x = torch.randn(1, 3, 64, 96)
    with torch.no_grad():
        for a, b, s in zip(ours(x), theirs(x), ours.strides, strict=True):
            assert a.shape[-2:] == (64 // s, 96 // s)
            torch.testing.assert_close(a, b)


@pytest.mark.parametrize("name", ["pvt_v2_b0", "swin_tiny_patch4_window7_224", "vit_tiny_patch16_224"])
def test_transformers_cannot_dilate(name):
    message = f"{name} cannot dilate to output_stride=16: segnotes dilates only timm CNNs"
    with pytest.raises(ValueError, match=message), torch.device("meta"):
        get_encoder(name, output_stride=16)


def test_book_backbones_cannot_dilate_but_keep_their_own_stride():
    with pytest.raises(ValueError, match="MixTransformer has its deepest map at stride 32.*Pass output_stride=32"):
        as_encoder(mit("b0"), output_stride=16)
    assert as_encoder(mit("b0"), output_stride=32).output_stride == 32
    assert as_encoder(mit("b0"), depth=4, output_stride=16).strides == [1, 2, 4, 8, 16]  # no dilation needed
    dilated = get_encoder("resnet18", output_stride=16)
    assert as_encoder(dilated, output_stride=16) is dilated
    with pytest.raises(ValueError, match="deepest map at stride 16"):
        as_encoder(dilated, output_stride=8)
    with pytest.raises(ValueError, match=r"timm options \['img_size'\] only apply to timm names"):
        as_encoder(Toy(), depth=3, img_size=64)


def test_timm_options_pass_through_a_swin_at_another_size():
    encoder = get_encoder("swin_tiny_patch4_window7_224", **TINY_SWIN).eval()
    assert encoder.out_channels == [3, 0, 16, 32, 64, 128] and encoder.style == "transformer"
    with torch.no_grad():
        maps = encoder(torch.randn(1, 3, 64, 64))
    assert [m.shape[-1] for m in maps] == [64 // s for s in encoder.strides]


def test_out_indices_come_from_timm_not_from_0():
    """dla34's feature_info has a stride-1 level 0; timm's default out_indices are 1..5 (SMP's tu-dla34)."""
    with torch.device("meta"):
        encoder = get_encoder("dla34", depth=3)
    assert encoder.backbone.out_indices == [1, 2, 3] and encoder.strides == [1, 2, 4, 8]


def test_check_features_reads_channels_and_strides():
    maps = [torch.zeros(1, 3, 37, 45), torch.zeros(1, 8, 19, 23), torch.zeros(1, 16, 9, 11)]  # ceil, then floor
    check_features(maps, [3, 8, 16], [1, 2, 4], "decoder")
    check_features(maps[1:], [8, 16], [2, 4], "decoder")  # without the image: sizes must agree with each other
    with pytest.raises(ValueError, match=r"decoder expects maps at strides \[1, 2, 8\], but map 2 \(height 9\)"):
        check_features(maps, [3, 8, 16], [1, 2, 8], "decoder")
    with pytest.raises(ValueError, match=r"built for 3 maps with channels \[3, 8, 8\], got 3 maps"):
        check_features(maps, [3, 8, 8], [1, 2, 4], "decoder")


def test_backbone_that_returns_a_map_at_another_stride_raises():
    class WrongStride(Toy):
        def forward(self, x):
            a, b = super().forward(x)
            return [a, b[..., ::2, ::2]]  # declared at stride 8, returned at stride 16

    with pytest.raises(ValueError, match=r"WrongStride expects maps at strides \[1, 2, 4, 8\], but map 3"):
        Encoder(WrongStride(), depth=3)(torch.randn(1, 3, 64, 64))
