"""Chapter 1: segnotes' SMP-convention adapter against segmentation_models.pytorch."""

from __future__ import annotations

import pytest
import segmentation_models_pytorch as smp
import torch

from segnotes.encoders import (
    CNN_STRIDES,
    TRANSFORMER_STRIDES,
    Encoder,
    FusedEncoder,
    encoder_style,
    get_encoder,
    pad_to_multiple,
)
from segnotes.unet import UnetDecoder

NAMES = ["convnext_tiny", "mobilenetv2_100", "resnet18", "pvt_v2_b0"]


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
        assert [size[0] // s.shape[-2] if s.shape[-2] else 0 for s in ours(x)] == ours.strides


def test_convnext_large_matches_smp_on_meta_device():
    with torch.device("meta"):
        ours = get_encoder("convnext_large")
        theirs = smp.encoders.get_encoder("tu-convnext_large", weights=None)
    assert ours.out_channels == theirs.out_channels == [3, 0, 192, 384, 768, 1536]


def test_same_weights_same_features_as_smp():
    ours = get_encoder("resnet18").eval()
    theirs = smp.encoders.get_encoder("tu-resnet18", weights=None).eval()
    ours.backbone.model.load_state_dict(theirs.model.state_dict())
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        for a, b in zip(ours(x), theirs(x)):
            torch.testing.assert_close(a, b)


def test_styles_and_placeholder():
    enc = get_encoder("convnext_tiny")
    assert enc.style == "transformer" and enc.strides == [1, 2, 4, 8, 16, 32]
    feats = enc(torch.randn(2, 3, 64, 64))
    assert feats[1].shape == (2, 0, 32, 32)
    assert get_encoder("resnet18").style == "cnn"
    assert encoder_style(CNN_STRIDES) == "cnn" and encoder_style(TRANSFORMER_STRIDES[:2]) == "transformer"


@pytest.mark.parametrize("depth", [2, 3, 4])
def test_depth_truncates_like_smp(depth):
    for name in ["resnet18", "convnext_tiny"]:
        ours = get_encoder(name, depth=depth)
        theirs = smp.encoders.get_encoder("tu-" + name, weights=None, depth=depth)
        assert ours.out_channels == theirs.out_channels
        assert len(ours(torch.randn(1, 3, 64, 64))) == depth + 1


def test_in_channels():
    enc = get_encoder("resnet18", in_channels=1).eval()
    assert enc.out_channels[0] == 1 and enc(torch.randn(1, 1, 32, 32))[-1].shape == (1, 512, 1, 1)


@pytest.mark.parametrize(
    "build, message",
    [
        (lambda: get_encoder("convnxt_tiny"), "did you mean convnext_tiny"),
        (lambda: get_encoder("resnet18", depth=6), "depth must be in 1..5"),
        (lambda: get_encoder("convnext_tiny", depth=1), "depth must be at least 2"),
        (lambda: encoder_style([1, 2, 4, 8, 16, 32]), "unsupported feature strides (1, 2, 4, 8, 16, 32)"),
    ],
)
def test_bad_arguments_raise_clear_errors(build, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        build()


@pytest.mark.parametrize(
    "x, message",
    [
        (torch.randn(3, 64, 64), r"expected a \(B, C, H, W\) batch"),
        (torch.randn(1, 4, 64, 64), "expected 3 input channels, got 4"),
        (torch.randn(1, 3, 70, 64), "70x64 is not divisible by the encoder's output stride 32; pad it to 96x64"),
    ],
)
def test_bad_inputs_raise_clear_errors(x, message):
    with pytest.raises(ValueError, match=message):
        get_encoder("resnet18")(x)


def test_pad_to_multiple_round_trip():
    x = torch.randn(1, 3, 70, 45)
    padded, (h, w) = pad_to_multiple(x, 32)
    assert padded.shape[-2:] == (96, 64) and (h, w) == (70, 45)
    torch.testing.assert_close(padded[..., :h, :w], x)
    get_encoder("resnet18")(padded)


def test_fused_encoder_handles_placeholder():
    cnn, vit_like = get_encoder("mobilenetv2_100"), get_encoder("convnext_tiny")
    fused = FusedEncoder(cnn, vit_like)
    assert fused.out_channels == [3, 16, 24, 32, 96, 320]
    feats = fused(torch.randn(1, 3, 64, 64))
    assert [f.shape[1] for f in feats] == fused.out_channels
    both_transformer = FusedEncoder(vit_like, get_encoder("pvt_v2_b0"))
    assert both_transformer.out_channels == [3, 0, 96, 192, 384, 768]
    assert both_transformer(torch.randn(1, 3, 64, 64))[1].shape == (1, 0, 32, 32)
    with pytest.raises(ValueError, match="must stay empty"):
        FusedEncoder(vit_like, get_encoder("pvt_v2_b0"), out_channels=[3, 8, 96, 192, 384, 768])
    with pytest.raises(ValueError, match="same depth"):
        FusedEncoder(cnn, get_encoder("convnext_tiny", depth=4))


@pytest.mark.parametrize("name", ["convnext_tiny", "mobilenetv2_100"])
def test_unet_decoder_reads_out_channels(name):
    enc = get_encoder(name)
    dec = UnetDecoder(enc.out_channels)
    assert dec(enc(torch.randn(2, 3, 64, 96))).shape == (2, 16, 64, 96)


def test_without_placeholder_index_no_longer_means_stride():
    """Dropping the placeholder shifts every stage by one index: features[2] (SMP's DeepLabV3+
    stride-4 skip) is stride 8, the default 5-block decoder no longer fits, and a 4-block
    decoder skips the stride-2 level with one 4x jump."""
    enc = get_encoder("convnext_tiny").eval()
    feats = [f for f in enc(torch.randn(1, 3, 64, 64)) if f.shape[1]]
    assert 64 // feats[2].shape[-1] == 8
    channels = [c for c in enc.out_channels if c]
    with pytest.raises(ValueError, match="decoder_channels"):
        UnetDecoder(channels)
    dec = UnetDecoder(channels, decoder_channels=(256, 128, 64, 32)).eval()
    sizes = []
    for block in dec.blocks:
        block.register_forward_hook(lambda m, i, o: sizes.append(o.shape[-1]))
    with torch.no_grad():
        dec(feats)
    assert sizes == [4, 8, 16, 64]


def test_encoder_is_adapter_over_declared_pyramid():
    class Toy(torch.nn.Module):
        feature_channels, feature_strides = [8, 16], [4, 8]

        def forward(self, x):
            return [torch.zeros(x.shape[0], 8, x.shape[2] // 4, x.shape[3] // 4), torch.zeros(x.shape[0], 16, x.shape[2] // 8, x.shape[3] // 8)]

    enc = Encoder(Toy(), depth=3)
    assert enc.out_channels == [3, 0, 8, 16]
    assert [tuple(f.shape[1:]) for f in enc(torch.randn(1, 3, 16, 16))] == [(3, 16, 16), (0, 8, 8), (8, 4, 4), (16, 2, 2)]
