"""Chapter 6: the ViT segmentation heads, checked against timm (attention, intermediates) and SMP's DPT."""

from __future__ import annotations

import pytest
import torch
from einops import rearrange
from torch import nn

from segnotes.encoders import Encoder, get_encoder, list_encoders
from segnotes.unet import UnetDecoder
from segnotes.vit_seg import (
    VIT_PRESETS,
    LinearHead,
    MultiLevelHead,
    ProgressiveUpsamplingHead,
    Readout,
    ViTBackbone,
    ViTPyramid,
    attention_weights,
    build_segmenter,
    create_vit,
    evenly_spaced_indices,
    map_to_tokens,
    tokens_to_map,
)

KINDS = ("linear", "pup", "mla", "pyramid_unet")


def tiny_vit(patch_size: int = 8, **kwargs) -> nn.Module:
    torch.manual_seed(0)
    config = dict(embed_dim=48, depth=4, num_heads=2, num_classes=0, patch_size=patch_size)
    return create_vit("book", **{**config, **kwargs}).eval()


# --------------------------------------------------------------------------- the ViT and its tokens


@pytest.mark.parametrize("preset", VIT_PRESETS)
def test_preset_parameter_counts(preset):
    counts = {"book": 272_424, "tiny": 5_717_416, "small": 22_050_664}  # the comments in VIT_PRESETS
    with torch.device("meta"):
        vit = create_vit(preset)
    assert sum(p.numel() for p in vit.parameters()) == counts[preset]


def test_presets_equal_timm_models():
    import timm

    for preset, name in (("tiny", "vit_tiny_patch16_224"), ("small", "vit_small_patch16_224")):
        with torch.device("meta"):
            ours, theirs = create_vit(preset), timm.create_model(name)
        assert {k: v.shape for k, v in ours.state_dict().items()} == {k: v.shape for k, v in theirs.state_dict().items()}


def test_unknown_preset():
    with pytest.raises(ValueError, match="book"):
        create_vit("huge")


def test_classifier_returns_logits_for_any_patch_multiple():
    vit = tiny_vit(num_classes=5)
    for size in [(64, 64), (48, 96)]:
        assert vit(torch.randn(2, 3, *size)).shape == (2, 5)


@pytest.mark.parametrize("depth", [4, 6, 12, 24])
def test_evenly_spaced_indices_match_smp(depth):
    from segmentation_models_pytorch.encoders.timm_vit import sample_block_indices_uniformly

    assert evenly_spaced_indices(depth) == sample_block_indices_uniformly(4, depth)
    assert evenly_spaced_indices(depth)[-1] == depth - 1


def test_evenly_spaced_indices_defaults_and_errors():
    assert evenly_spaced_indices(12) == [2, 5, 8, 11]
    assert evenly_spaced_indices(6, 3) == [1, 3, 5]
    with pytest.raises(ValueError, match="1..3"):
        evenly_spaced_indices(3, 4)


def test_tokens_to_map_is_row_major_and_inverts():
    B, h, w, C = 2, 3, 5, 4
    tokens = torch.randn(B, h * w, C)
    fmap = tokens_to_map(tokens, (h, w))
    assert fmap.shape == (B, C, h, w)
    assert torch.equal(fmap[:, :, 1, 2], tokens[:, 1 * w + 2])  # token i sits at row i // w, column i % w
    assert torch.equal(map_to_tokens(fmap), tokens)
    with pytest.raises(ValueError, match="prefix"):
        tokens_to_map(torch.randn(B, h * w + 1, C), (h, w))
    with pytest.raises(ValueError, match="B, C, h, w"):
        map_to_tokens(tokens)


def test_backbone_maps_equal_timm_intermediates():
    vit = tiny_vit()
    x = torch.randn(2, 3, 64, 48)
    ours = ViTBackbone(vit, [1, 3])(x)
    theirs = vit.forward_intermediates(x, indices=[1, 3], intermediates_only=True)  # NCHW, prefix dropped
    assert [f.shape for f in ours] == [(2, 48, 8, 6)] * 2
    for a, b in zip(ours, theirs):
        torch.testing.assert_close(a, b)


# --------------------------------------------------------------------------- readout


def test_readout_ignore_drops_prefix_tokens():
    tokens = torch.randn(2, 1 + 4 + 6, 8)  # CLS, 4 registers, 6 patches
    assert torch.equal(Readout(8, 5, "ignore")(tokens), tokens[:, 5:])


def test_readout_add_shifts_every_patch_by_the_prefix_mean():
    tokens = torch.randn(2, 3 + 6, 8)
    out = Readout(8, 3, "add")(tokens)
    shift = out - tokens[:, 3:]
    torch.testing.assert_close(shift, tokens[:, :3].mean(1, keepdim=True).expand_as(shift))
    zero_prefix = tokens.clone()
    zero_prefix[:, :3] = 0
    assert torch.equal(Readout(8, 3, "add")(zero_prefix), Readout(8, 3, "ignore")(zero_prefix))


def test_readout_cat_uses_cls_only_through_its_weights():
    readout = Readout(8, 2, "cat")
    tokens = torch.randn(2, 2 + 6, 8)
    with torch.no_grad():
        readout.project[0].weight[:, 8:] = 0  # the CLS half of Linear(2C, C)
    expected = readout.project(torch.cat([tokens[:, 2:], torch.zeros(2, 6, 8)], dim=-1))
    torch.testing.assert_close(readout(tokens), expected)
    other_cls = tokens.clone()
    other_cls[:, 0] += 1
    torch.testing.assert_close(readout(other_cls), readout(tokens))


@pytest.mark.parametrize("mode", ["add", "cat"])
def test_readout_matches_smp(mode):
    from segmentation_models_pytorch.decoders.dpt.decoder import ReadoutAddBlock, ReadoutConcatBlock

    ours = Readout(8, 1, mode)
    theirs = ReadoutAddBlock() if mode == "add" else ReadoutConcatBlock(8, has_prefix_tokens=True)
    if mode == "cat":
        theirs.load_state_dict(ours.state_dict())
    tokens = torch.randn(2, 1 + 12, 8)
    fmap = tokens_to_map(tokens[:, 1:], (3, 4))
    torch.testing.assert_close(tokens_to_map(ours(tokens), (3, 4)), theirs(fmap, tokens[:, :1]))


def test_readout_errors():
    with pytest.raises(ValueError, match="'ignore', 'add', 'cat'"):
        Readout(8, 1, "mean")
    with pytest.raises(ValueError, match="readout='ignore'"):
        Readout(8, 0, "cat")


def test_readout_changes_outputs_only_as_designed():
    vit = tiny_vit()
    x = torch.randn(1, 3, 64, 64)
    ignore, add = ViTBackbone(vit, readout="ignore")(x)[0], ViTBackbone(vit, readout="add")(x)[0]
    prefix = vit.forward_intermediates(x, indices=[3], intermediates_only=True, return_prefix_tokens=True)[0][1]
    torch.testing.assert_close(add - ignore, prefix[:, 0, :, None, None].expand_as(ignore))


# --------------------------------------------------------------------------- attention weights


def test_attention_weights_reproduce_the_blocks_output():
    vit = tiny_vit()
    x = torch.randn(2, 3, 64, 48)
    attn = vit.blocks[-1].attn
    seen = {}
    handle = attn.register_forward_hook(lambda m, i, o: seen.update(inp=i[0], out=o))
    vit.forward_features(x)
    handle.remove()
    weights = attention_weights(vit, x)
    T = 1 + 8 * 6
    assert weights.shape == (2, 2, T, T)
    torch.testing.assert_close(weights.sum(-1), torch.ones(2, 2, T))
    v = rearrange(attn.qkv(seen["inp"]), "b t (three h d) -> three b h t d", three=3, h=2)[2]
    out = attn.proj(rearrange(weights @ v, "b h t d -> b t (h d)"))
    torch.testing.assert_close(out, seen["out"])


def test_attention_weights_equal_timm_unfused_path():
    vit = tiny_vit()
    x = torch.randn(1, 3, 32, 32)
    attn = vit.blocks[1].attn
    attn.fused_attn = False  # timm's explicit path materialises the weights before attn_drop
    seen = []
    handle = attn.attn_drop.register_forward_hook(lambda m, i, o: seen.append(o))
    with torch.no_grad():
        vit.forward_features(x)
    handle.remove()
    torch.testing.assert_close(attention_weights(vit, x, block=1), seen[0])


# --------------------------------------------------------------------------- heads and models


@pytest.mark.parametrize("kind", KINDS)
def test_every_head_returns_input_sized_logits(kind):
    model = build_segmenter(kind, tiny_vit(), num_classes=5).eval()
    sizes = [(64, 64), (64, 96), (128, 32)] if kind == "pyramid_unet" else [(64, 64), (40, 72), (8, 16)]
    for size in sizes:
        assert model(torch.randn(2, 3, *size)).shape == (2, 5, *size)


@pytest.mark.parametrize("kind", KINDS)
def test_non_multiple_input_size_is_a_clear_error(kind):
    model = build_segmenter(kind, tiny_vit(), num_classes=5).eval()
    with pytest.raises(ValueError, match="pad"):
        model(torch.randn(1, 3, 60, 64))


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("readout", ["ignore", "add", "cat"])
def test_heads_with_every_readout_and_registers(kind, readout):
    vit = tiny_vit(reg_tokens=2)
    model = build_segmenter(kind, vit, num_classes=3, readout=readout).eval()
    assert model(torch.randn(1, 3, 64, 64)).shape == (1, 3, 64, 64)


@pytest.mark.parametrize("kind", KINDS)
def test_vit_without_prefix_tokens(kind):
    vit = tiny_vit(class_token=False, global_pool="avg")
    assert vit.num_prefix_tokens == 0
    assert build_segmenter(kind, vit, num_classes=3).eval()(torch.randn(1, 3, 64, 32)).shape == (1, 3, 64, 32)


def test_head_modules_directly():
    features = [torch.randn(2, 48, 4, 6) for _ in range(4)]
    for head in (LinearHead(48, 5, 8), ProgressiveUpsamplingHead(48, 5, 8), MultiLevelHead(48, 5, 8)):
        assert head(features).shape == (2, 5, 32, 48)
    with pytest.raises(ValueError, match="power of 2"):
        ProgressiveUpsamplingHead(48, 5, 14)
    with pytest.raises(ValueError, match="4 block maps"):
        MultiLevelHead(48, 5, 8)(features[:2])


def test_unknown_kind():
    with pytest.raises(ValueError, match="pyramid_unet"):
        build_segmenter("fpn", tiny_vit(), 5)


def test_backbone_rejects_out_of_range_blocks():
    with pytest.raises(ValueError, match="-4..3"):
        ViTBackbone(tiny_vit(), [1, 4])


# --------------------------------------------------------------------------- the pyramid


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
    decoder = UnetDecoder(encoder.out_channels, (32, 16, 16, 8, 8)).eval()
    assert decoder(features).shape == (2, 8, 64, 96)


def test_pyramid_resamples_like_dpt_for_patch_16():
    pyramid = ViTPyramid(tiny_vit(16))
    kinds = [(type(r[1]).__name__, getattr(r[1], "stride", None)) for r in pyramid.reassemble]
    assert kinds == [("ConvTranspose2d", (4, 4)), ("ConvTranspose2d", (2, 2)), ("Identity", None), ("Conv2d", (2, 2))]
    assert pyramid.backbone.indices == [0, 1, 2, 3]


def test_pyramid_errors():
    with pytest.raises(ValueError, match="power of 2"):
        ViTPyramid(tiny_vit(14, img_size=56))
    with pytest.raises(ValueError, match="exactly 4"):
        ViTPyramid(tiny_vit(), indices=[1, 3])
    with pytest.raises(ValueError, match="pad"):
        ViTPyramid(tiny_vit())(torch.randn(1, 3, 40, 64))  # a patch multiple, but not of the stride 32


@pytest.mark.parametrize("readout", ["ignore", "cat"])
def test_pyramid_matches_smp_dpt_reassembly(readout):
    import segmentation_models_pytorch as smp

    torch.manual_seed(0)
    channels = (16, 24, 32, 32)
    dpt = smp.DPT(
        "tu-vit_tiny_patch16_224", encoder_weights=None, decoder_readout=readout, decoder_intermediate_channels=channels,
        decoder_fusion_channels=16, classes=2, dynamic_img_size=True, embed_dim=48, num_heads=2,  # 12 blocks
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


def test_vit_pyramid_is_a_registered_encoder():
    assert "vit_pyramid" in list_encoders()
    encoder = get_encoder("vit_pyramid", embed_dim=48, num_heads=2)
    assert encoder.out_channels == [3, 0, 12, 24, 48, 48]
    with pytest.raises(ValueError, match="model_name"):
        get_encoder("vit_pyramid", pretrained=True)


def test_vit_pyramid_from_a_timm_name():
    encoder = get_encoder("vit_pyramid", model_name="vit_tiny_patch16_224", readout="cat")
    assert encoder.out_channels == [3, 0, 48, 96, 192, 192]
    assert encoder.backbone.backbone.indices == [2, 5, 8, 11]
