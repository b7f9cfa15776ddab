"""Chapter 6: DPT's reassembly (ViTPyramid) follows the encoder convention and equals SMP's DPT after a weight copy."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from segnotes.dpt import ViTPyramid, resample
from segnotes.encoders import Encoder
from segnotes.vit import vit

pytestmark = pytest.mark.usefixtures("one_thread")


def tiny_vit(patch_size: int = 8, **overrides) -> nn.Module:
    torch.manual_seed(0)
    return vit("book", **{"embed_dim": 48, "num_classes": 0, "patch_size": patch_size, **overrides}).eval()


@pytest.mark.parametrize("patch_size", [4, 8, 16, 32])
def test_pyramid_follows_the_encoder_convention(patch_size):
    pyramid = ViTPyramid(tiny_vit(patch_size), channels=(8, 16, 32, 40))
    encoder = Encoder(pyramid)
    assert pyramid.feature_strides == [4, 8, 16, 32]
    assert encoder.style == "transformer"
    assert encoder.out_channels == [3, 0, 8, 16, 32, 40]
    x = torch.randn(2, 3, 64, 96)
    features = encoder(x)
    assert [f.shape[1] for f in features] == encoder.out_channels
    assert [64 // f.shape[-2] for f in features] == encoder.strides == [96 // f.shape[-1] for f in features]


def test_pyramid_runs_inside_smps_unet_decoder():
    from segmentation_models_pytorch.decoders.unet.decoder import UnetDecoder

    encoder = Encoder(ViTPyramid(tiny_vit(), channels=(8, 16, 32, 40)))
    decoder = UnetDecoder(encoder.out_channels, (32, 16, 16, 8, 8), n_blocks=5).eval()
    with torch.no_grad():
        assert decoder(encoder(torch.randn(2, 3, 64, 32))).shape == (2, 8, 64, 32)


def test_pyramid_runs_inside_the_books_unet():
    from segnotes.unet import Unet

    model = Unet(Encoder(ViTPyramid(tiny_vit())), num_classes=3, decoder_channels=(32, 16, 16, 8, 8)).eval()
    with torch.no_grad():
        assert model(torch.randn(1, 3, 64, 96)).shape == (1, 3, 64, 96)


def test_pyramid_resamples_like_dpt_for_patch_16():
    pyramid = ViTPyramid(tiny_vit(16))
    kinds = [(type(r[1]).__name__, getattr(r[1], "stride", None)) for r in pyramid.reassemble]
    assert kinds == [("ConvTranspose2d", (4, 4)), ("ConvTranspose2d", (2, 2)), ("Identity", None), ("Conv2d", (2, 2))]
    assert pyramid.backbone.indices == [0, 1, 2, 3]


def test_resample_factors():
    x = torch.randn(1, 4, 8, 8)
    assert resample(4, patch_size=4, stride=32)(x).shape == (1, 4, 1, 1)
    assert resample(4, patch_size=32, stride=4)(x).shape == (1, 4, 64, 64)


def test_pyramid_errors():
    with pytest.raises(ValueError, match="power of 2"):
        ViTPyramid(tiny_vit(14, img_size=56))
    with pytest.raises(ValueError, match="exactly 4"):
        ViTPyramid(tiny_vit(), indices=[1, 3])
    with pytest.raises(ValueError, match="one width per level"):
        ViTPyramid(tiny_vit(), channels=(8, 16))
    with pytest.raises(ValueError, match="pad it to 64x64"):
        ViTPyramid(tiny_vit())(torch.randn(1, 3, 40, 64))  # a patch multiple, but not of the stride 32
    with pytest.raises(ValueError, match="x.float"):
        Encoder(ViTPyramid(tiny_vit()))(torch.zeros(1, 3, 32, 32, dtype=torch.uint8))


@pytest.mark.parametrize("readout", ["ignore", "cat"])
def test_pyramid_matches_smp_dpt_reassembly(readout):
    import segmentation_models_pytorch as smp

    torch.manual_seed(0)
    channels = (16, 24, 32, 32)
    dpt = smp.DPT(
        "tu-vit_tiny_patch16_224",
        encoder_weights=None,
        decoder_readout=readout,
        decoder_intermediate_channels=channels,
        decoder_fusion_channels=16,
        classes=2,
        dynamic_img_size=True,
        embed_dim=48,
        num_heads=2,  # 12 blocks
    ).eval()
    ours = ViTPyramid(dpt.encoder.model, channels, readout=readout).eval()
    assert ours.backbone.indices == list(dpt.encoder._output_indices) == [2, 5, 8, 11]
    for i, block in enumerate(dpt.decoder.reassemble_blocks):
        ours.reassemble[i][0].load_state_dict(block.project_to_out_channel.state_dict())
        ours.reassemble[i][1].load_state_dict(block.upsample.state_dict())
        if readout == "cat":
            ours.backbone.readouts[i].load_state_dict(dpt.decoder.projection_blocks[i].state_dict())
    seen = []
    handles = [b.upsample.register_forward_hook(lambda m, i, o: seen.append(o)) for b in dpt.decoder.reassemble_blocks]
    x = torch.randn(1, 3, 64, 96)
    with torch.no_grad():
        dpt(x)
        features = ours(x)
    for h in handles:
        h.remove()
    assert [f.shape for f in features] == [f.shape for f in seen]
    assert [64 // f.shape[-2] for f in features] == [4, 8, 16, 32]
    for a, b in zip(features, seen):
        torch.testing.assert_close(a, b)
