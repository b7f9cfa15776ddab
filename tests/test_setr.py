"""Chapter 6: the SETR models (Naive, PUP, MLA) follow the model contract and the paper's decoders."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from segnotes.model import SegmentationHead, SegmentationModel
from segnotes.setr import MlaDecoder, NaiveDecoder, PupDecoder, SetrMla, SetrNaive, SetrPup
from segnotes.vit import ViTBackbone, vit

pytestmark = pytest.mark.usefixtures("one_thread")

MODELS = (SetrNaive, SetrPup, SetrMla)


def tiny_vit(patch_size: int = 8, **overrides) -> nn.Module:
    torch.manual_seed(0)
    return vit("book", **{"embed_dim": 48, "num_classes": 0, "patch_size": patch_size, **overrides})


@pytest.mark.parametrize("model_class", MODELS)
@pytest.mark.parametrize("patch_size", [2, 4, 8, 16])
def test_every_model_returns_input_sized_logits(model_class, patch_size):
    model = model_class(tiny_vit(patch_size), num_classes=5).eval()
    assert isinstance(model, SegmentationModel)
    assert isinstance(model.encoder, ViTBackbone) and isinstance(model.head, SegmentationHead)
    for size in [(64, 64), (48, 80), (16, 32)]:
        assert model(torch.randn(2, 3, *size)).shape == (2, 5, *size)


@pytest.mark.parametrize("model_class", MODELS)
def test_non_multiple_input_size_says_how_to_pad(model_class):
    model = model_class(tiny_vit(), num_classes=5).eval()
    with pytest.raises(ValueError, match=r"pad it to 64x64.*pad_to_multiple\(x, 8\)"):
        model(torch.randn(1, 3, 60, 64))


@pytest.mark.parametrize("model_class", MODELS)
def test_bad_inputs(model_class):
    model = model_class(tiny_vit(), num_classes=5).eval()
    with pytest.raises(ValueError, match="x.float"):
        model(torch.zeros(1, 3, 32, 32, dtype=torch.uint8))
    with pytest.raises(ValueError, match="in_channels=1"):
        model(torch.zeros(1, 1, 32, 32))
    for bad in (0, -1):
        with pytest.raises(ValueError, match="num_classes"):
            model_class(tiny_vit(), num_classes=bad)
    with pytest.raises(ValueError, match="'ignore', 'add', 'cat'"):
        model_class(tiny_vit(), num_classes=2, readout="mean")


@pytest.mark.parametrize("model_class", MODELS)
@pytest.mark.parametrize("readout", ["ignore", "add", "cat"])
def test_every_readout_with_registers(model_class, readout):
    model = model_class(tiny_vit(reg_tokens=2), num_classes=3, readout=readout).eval()
    assert model(torch.randn(1, 3, 32, 32)).shape == (1, 3, 32, 32)


@pytest.mark.parametrize("model_class", MODELS)
def test_vit_without_prefix_tokens(model_class):
    model = model_class(tiny_vit(class_token=False, global_pool="avg"), num_classes=3).eval()
    assert model(torch.randn(1, 3, 64, 32)).shape == (1, 3, 64, 32)


@pytest.mark.parametrize("model_class", [SetrPup, SetrMla])
def test_patch_size_must_be_a_power_of_two(model_class):
    with pytest.raises(ValueError, match="power of 2"):
        model_class(tiny_vit(12), num_classes=3)


def test_naive_is_the_papers_two_layer_decoder():
    """1x1 conv + BN + ReLU + 1x1 conv, then bilinear upsampling by p: no layer looks at a neighbour."""
    model = SetrNaive(tiny_vit(), num_classes=4, channels=16).eval()
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d) and m is not model.encoder.vit.patch_embed.proj]
    assert [c.kernel_size for c in convs] == [(1, 1), (1, 1)]
    assert [type(m).__name__ for m in model.decoder.block] == ["Conv2d", "BatchNorm2d", "ReLU"]
    assert model.encoder.indices == [3] and model.encoder.norm
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        tokens = model.decoder(model.encoder(x))
        logits = model.head[0](tokens)  # (1, 4, 4, 4): one vector per patch
        expected = nn.functional.interpolate(logits, scale_factor=8, mode="bilinear", align_corners=False)
        torch.testing.assert_close(model(x), expected)


def test_pup_has_one_stage_per_doubling():
    decoder = PupDecoder(48, patch_size=16, channels=8)
    assert sum(isinstance(m, nn.Upsample) for m in decoder.modules()) == 4
    assert decoder([torch.randn(1, 48, 2, 3)]).shape == (1, 8, 32, 48)


def test_mla_streams_are_upsampled_before_concatenation():
    """The paper: each stream 4x upsampled, concatenated, then the rest (p / 4) after the classifier."""
    model = SetrMla(tiny_vit(16, depth=8), num_classes=3, channels=16).eval()
    assert model.encoder.indices == [1, 3, 5, 7]
    x = torch.randn(1, 3, 64, 32)
    with torch.no_grad():
        features = model.encoder(x)
        assert [f.shape for f in features] == [(1, 48, 4, 2)] * 4
        fused = model.decoder(features)
    assert fused.shape == (1, 4 * 8, 16, 8)  # 4 streams of 16 / 2 channels at stride 16 / 4
    assert model.head[1].scale_factor == 4


def test_mla_aggregates_top_down():
    """Zeroing the deepest map's projection changes every stream; zeroing the shallowest changes only its own."""
    decoder = MlaDecoder(8, num_levels=4, channels=8, upsampling=2).eval()
    features = [torch.randn(1, 8, 4, 4) for _ in range(4)]
    with torch.no_grad():
        base = decoder(features).chunk(4, dim=1)
        shallow = decoder([torch.zeros_like(features[0]), *features[1:]]).chunk(4, dim=1)
        deep = decoder([*features[:3], torch.zeros_like(features[3])]).chunk(4, dim=1)
    assert [torch.equal(a, b) for a, b in zip(base, shallow)] == [False, True, True, True]
    assert not any(torch.equal(a, b) for a, b in zip(base, deep))


def test_decoders_check_what_they_receive():
    with pytest.raises(ValueError, match="4 block map"):
        MlaDecoder(8)([torch.randn(1, 8, 2, 2)] * 2)
    with pytest.raises(ValueError, match="channels"):
        NaiveDecoder(8, channels=0)
