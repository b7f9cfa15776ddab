"""Chapter 6: the ViT factory, tokens <-> maps, readouts, the backbone and attention, checked against timm and SMP."""

from __future__ import annotations

import pytest
import torch
from einops import rearrange
from torch import nn

from segnotes.vit import (
    VIT_PRESETS,
    Readout,
    ViTBackbone,
    ViTConfig,
    attention_distance,
    attention_weights,
    evenly_spaced_indices,
    map_to_tokens,
    tokens_to_map,
    vit,
)

pytestmark = pytest.mark.usefixtures("one_thread")


def tiny_vit(patch_size: int = 8, **overrides) -> nn.Module:
    torch.manual_seed(0)
    return vit("book", **{"embed_dim": 48, "num_classes": 0, "patch_size": patch_size, **overrides}).eval()


# --------------------------------------------------------------------------- presets and the factory


@pytest.mark.parametrize("preset", VIT_PRESETS)
def test_preset_parameter_counts_match_the_comments(preset):
    counts = {"book": 272_424, "tiny": 5_717_416, "small": 22_050_664}  # the comments in VIT_PRESETS
    with torch.device("meta"):
        model = vit(preset)
    assert isinstance(VIT_PRESETS[preset], ViTConfig)
    assert sum(p.numel() for p in model.parameters()) == counts[preset]


@pytest.mark.parametrize(("preset", "name"), [("tiny", "vit_tiny_patch16_224"), ("small", "vit_small_patch16_224")])
def test_presets_equal_timm_models(preset, name):
    import timm

    with torch.device("meta"):
        ours, theirs = vit(preset), timm.create_model(name)
    assert {k: v.shape for k, v in ours.state_dict().items()} == {k: v.shape for k, v in theirs.state_dict().items()}


def test_overrides_reach_the_config_and_timm():
    model = vit("book", depth=6, patch_size=8, reg_tokens=2, num_classes=3, in_channels=1)
    assert len(model.blocks) == 6 and model.patch_embed.patch_size == (8, 8)
    assert model.num_prefix_tokens == 3 and model.patch_embed.proj.in_channels == 1
    assert model(torch.randn(1, 1, 32, 48)).shape == (1, 3)


def test_factory_errors():
    with pytest.raises(ValueError, match="'book', 'tiny', 'small'"):
        vit("huge")
    with pytest.raises(ValueError, match="multiple of num_heads"):
        vit("book", embed_dim=50, num_heads=4)
    with pytest.raises(ValueError, match="in_channels"):
        vit("book", in_channels=0)


def test_classifier_returns_logits_for_any_patch_multiple():
    model = tiny_vit(num_classes=5)
    for size in [(64, 64), (48, 96)]:
        assert model(torch.randn(2, 3, *size)).shape == (2, 5)


# --------------------------------------------------------------------------- indices and tokens


@pytest.mark.parametrize("depth", [4, 6, 12, 24])
def test_evenly_spaced_indices_match_smp(depth):
    from segmentation_models_pytorch.encoders.timm_vit import sample_block_indices_uniformly

    assert evenly_spaced_indices(depth) == sample_block_indices_uniformly(4, depth)
    assert evenly_spaced_indices(depth)[-1] == depth - 1


def test_evenly_spaced_indices_defaults_and_errors():
    assert evenly_spaced_indices(24) == [5, 11, 17, 23]  # SETR-MLA's layers 6, 12, 18, 24 of ViT-L
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


# --------------------------------------------------------------------------- readout


def test_readout_ignore_drops_prefix_tokens():
    tokens = torch.randn(2, 1 + 4 + 6, 8)  # CLS, 4 registers, 6 patches
    assert torch.equal(Readout(8, 5, "ignore")(tokens), tokens[:, 5:])


def test_readout_add_shifts_every_patch_by_the_prefix_mean():
    tokens = torch.randn(2, 3 + 6, 8)
    out = Readout(8, 3, "add")(tokens)
    shift = out - tokens[:, 3:]
    torch.testing.assert_close(shift, tokens[:, :3].mean(1, keepdim=True).expand_as(shift))


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


@pytest.mark.parametrize(("mode", "params"), [("ignore", 0), ("add", 0), ("cat", 2 * 8 * 8 + 8)])
def test_readout_parameter_counts(mode, params):
    assert sum(p.numel() for p in Readout(8, 1, mode).parameters()) == params


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


# --------------------------------------------------------------------------- the backbone


def test_backbone_maps_equal_timm_intermediates():
    model = tiny_vit()
    x = torch.randn(2, 3, 64, 48)
    backbone = ViTBackbone(model, [1, -1])
    ours = backbone(x)
    theirs = model.forward_intermediates(x, indices=[1, 3], intermediates_only=True)  # NCHW, prefix dropped
    assert backbone.indices == [1, 3]
    assert [f.shape for f in ours] == [(2, 48, 8, 6)] * 2
    for a, b in zip(ours, theirs):
        torch.testing.assert_close(a, b)


def test_backbone_readout_add_shifts_by_the_cls_token():
    model = tiny_vit()
    x = torch.randn(1, 3, 64, 64)
    ignore, add = ViTBackbone(model, readout="ignore")(x)[0], ViTBackbone(model, readout="add")(x)[0]
    prefix = model.forward_intermediates(x, indices=[3], intermediates_only=True, return_prefix_tokens=True)[0][1]
    torch.testing.assert_close(add - ignore, prefix[:, 0, :, None, None].expand_as(ignore))


def test_backbone_without_prefix_tokens_and_with_registers():
    plain = tiny_vit(class_token=False, global_pool="avg")
    assert plain.num_prefix_tokens == 0
    assert ViTBackbone(plain)(torch.randn(1, 3, 32, 16))[0].shape == (1, 48, 4, 2)
    registers = tiny_vit(reg_tokens=2)
    assert ViTBackbone(registers, readout="cat")(torch.randn(1, 3, 32, 16))[0].shape == (1, 48, 4, 2)


def test_backbone_errors():
    with pytest.raises(ValueError, match="-4..3"):
        ViTBackbone(tiny_vit(), [1, 4])
    with pytest.raises(ValueError, match="pad it to 64x64"):
        ViTBackbone(tiny_vit())(torch.randn(1, 3, 60, 64))


# --------------------------------------------------------------------------- attention


def test_attention_weights_reproduce_the_blocks_output():
    model = tiny_vit()
    x = torch.randn(2, 3, 64, 48)
    attn = model.blocks[-1].attn
    seen = {}
    handle = attn.register_forward_hook(lambda m, i, o: seen.update(inp=i[0], out=o))
    model.forward_features(x)
    handle.remove()
    (weights,) = attention_weights(model, x, blocks=[-1])
    T = 1 + 8 * 6
    assert weights.shape == (2, 2, T, T)
    torch.testing.assert_close(weights.sum(-1), torch.ones(2, 2, T))
    v = rearrange(attn.qkv(seen["inp"]), "b t (three h d) -> three b h t d", three=3, h=2)[2]
    out = attn.proj(rearrange(weights @ v, "b h t d -> b t (h d)"))
    torch.testing.assert_close(out, seen["out"])


def test_attention_weights_equal_timm_unfused_path():
    model = tiny_vit()
    x = torch.randn(1, 3, 32, 32)
    attn = model.blocks[1].attn
    attn.fused_attn = False  # timm's explicit path materialises the weights before attn_drop
    seen = []
    handle = attn.attn_drop.register_forward_hook(lambda m, i, o: seen.append(o))
    with torch.no_grad():
        model.forward_features(x)
    handle.remove()
    torch.testing.assert_close(attention_weights(model, x, blocks=[1])[0], seen[0])
    assert len(attention_weights(model, x)) == 4


def test_attention_weights_reject_bad_input():
    with pytest.raises(ValueError, match="x.float"):
        attention_weights(tiny_vit(), torch.zeros(1, 3, 32, 32, dtype=torch.uint8))


def test_attention_distance_of_uniform_attention():
    model = tiny_vit()
    for block in model.blocks:  # q = k = 0: every query attends uniformly
        nn.init.zeros_(block.attn.qkv.weight)
        nn.init.zeros_(block.attn.qkv.bias)
    distance = attention_distance(model, torch.randn(1, 3, 32, 32))  # a 4x4 grid of 8x8 patches
    centres = 8 * torch.cartesian_prod(torch.arange(4.0), torch.arange(4.0))
    uniform = torch.cdist(centres, centres).mean()
    assert distance.shape == (4, 2)
    torch.testing.assert_close(distance, uniform.expand(4, 2))


def test_attention_distance_leaves_out_queries_that_attend_only_the_prefix(monkeypatch):
    """A query whose attention all went to the CLS token has no patch distance: left out, not nan."""
    import segnotes.vit as vit_module

    model = vit_module.vit("book", num_classes=0)
    x = torch.randn(1, 3, 8, 8)  # 2 x 2 patches of 4 px, plus the CLS token
    weights = torch.zeros(1, 1, 5, 5)
    weights[0, 0, :, 0] = 1.0  # every query on the CLS token...
    weights[0, 0, 1, 0], weights[0, 0, 1, 2] = 0.0, 1.0  # ...but patch 0, which looks at its right neighbour
    monkeypatch.setattr(vit_module, "attention_weights", lambda *args: [weights])
    assert vit_module.attention_distance(model, x).tolist() == [[4.0]]
