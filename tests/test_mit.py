"""Chapter 4: the Mix Transformer encoder against transformers' SegformerModel and SMP's mit_b* encoders."""

from __future__ import annotations

import inspect
import re

import pytest
import segmentation_models_pytorch as smp
import torch
from timm.layers import DropPath
from transformers import SegformerModel

import segnotes.mit
from segnotes.encoders import Encoder
from segnotes.mit import MIT_PRESETS, EfficientSelfAttention, MiTConfig, MixFFN, MixTransformer, from_original, mit

PRESETS = sorted(MIT_PRESETS)
TINY = MiTConfig(depths=(1, 1, 1, 1))

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.mark.parametrize("name", PRESETS)
def test_param_count_equals_transformers_and_the_preset_comment(name, count_params, hf_segformer_config):
    with torch.device("meta"):
        ours = mit(name)
        theirs = SegformerModel(hf_segformer_config(MIT_PRESETS[name]))
    assert count_params(ours) == count_params(theirs)
    comment = re.search(rf'"{name}": MiTConfig\(.*#\s*([\d.]+)M params', inspect.getsource(segnotes.mit))
    assert comment is not None, f"preset {name} has no '# x.xM params' comment"
    assert float(comment.group(1)) == round(count_params(ours) / 1e6, 1)


@pytest.mark.parametrize("name", PRESETS)
def test_presets_match_smp(name):
    theirs = smp.encoders.encoders[f"mit_{name}"]["params"]  # SMP cannot build its MiT on the meta device
    with torch.device("meta"):
        ours = Encoder(mit(name))
    assert ours.out_channels == theirs["out_channels"]
    config = MIT_PRESETS[name]
    assert list(config.embed_dims) == theirs["embed_dims"] and list(config.depths) == theirs["depths"]
    assert list(config.num_heads) == theirs["num_heads"] and list(config.sr_ratios) == theirs["sr_ratios"]
    assert list(config.mlp_ratios) == theirs["mlp_ratios"] and config.drop_path_rate == theirs["drop_path_rate"]


@pytest.mark.parametrize("size", [(64, 64), (37, 51), (29, 29)])
def test_measured_strides_and_channels_equal_the_declared_pyramid(size):
    model = MixTransformer(TINY).eval()
    with torch.no_grad():
        features = model(torch.randn(2, 3, *size))
    assert [f.shape[1] for f in features] == model.feature_channels == list(TINY.embed_dims)
    assert model.feature_strides == [4, 8, 16, 32]
    for f, s in zip(features, model.feature_strides):
        assert f.shape[-2:] == (-(-size[0] // s), -(-size[1] // s))  # ceil(H / s), ceil(W / s)


def test_encoder_matches_transformers_hidden_states(hf_segformer_config):
    from segnotes.segformer import from_transformers  # the transformers key table lives with SegFormer

    torch.manual_seed(0)
    theirs = SegformerModel(hf_segformer_config(TINY)).eval()
    ours = MixTransformer(TINY).eval()
    state = from_transformers({"segformer." + k: v for k, v in theirs.state_dict().items()})
    ours.load_state_dict({k.removeprefix("encoder."): v for k, v in state.items()}, strict=True)
    x = torch.randn(2, 3, 45, 70)
    with torch.no_grad():
        hidden = theirs(x, output_hidden_states=True).hidden_states
        for a, b in zip(ours(x), hidden, strict=True):
            torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)


def _smp_b0() -> torch.nn.Module:
    torch.manual_seed(0)
    return smp.encoders.get_encoder("mit_b0", weights=None).eval()


def test_smp_weights_convert_and_give_the_same_features():
    theirs = _smp_b0()
    ours = Encoder(mit("b0", norm_eps=1e-6)).eval()  # SMP keeps the original code's 1e-6
    ours.backbone.load_state_dict(from_original(theirs.state_dict()), strict=True)
    assert ours.out_channels == theirs.out_channels == [3, 0, 32, 64, 160, 256]
    x = torch.randn(2, 3, 64, 96)
    with torch.no_grad():
        for a, b in zip(ours(x), theirs(x), strict=True):
            assert a.shape == b.shape
            torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)


def test_from_original_converts_the_encoder_and_sends_whole_checkpoints_to_segformer():
    """mit.from_original: an encoder in the original layout; a whole SegFormer checkpoint is segformer's to convert."""
    encoder_state = _smp_b0().state_dict()  # SMP keeps the original code's names
    converted = from_original(encoder_state)
    mit("b0").load_state_dict(converted, strict=True)
    assert converted["stages.0.blocks.1.attn.sr_norm.weight"] is encoder_state["block1.1.attn.norm.weight"]
    assert converted["stages.3.blocks.0.mlp.dwconv.bias"] is encoder_state["block4.0.mlp.dwconv.dwconv.bias"]
    assert from_original(converted) == converted  # already segnotes' names: unchanged
    checkpoint = {"backbone." + k: v for k, v in encoder_state.items()}  # a whole NVlabs SegFormer's encoder keys
    with pytest.raises(ValueError, match=r"'backbone\.patch_embed1\.proj\.weight'.*segnotes\.segformer\.from_original"):
        from_original(checkpoint)
    with pytest.raises(ValueError, match="head.weight"):  # the ImageNet classifier of the original mit_b*.pth
        from_original({**encoder_state, "head.weight": torch.zeros(1000, 256)})


def test_efficient_attention_is_softmax_attention_over_reduced_keys():
    attn = EfficientSelfAttention(dim=16, num_heads=2, sr_ratio=2).eval()
    x, size = torch.randn(1, 8 * 6, 16), (8, 6)
    with torch.no_grad():
        kv = attn.kv(attn.reduce(x, size))
        assert kv.shape == (1, 4 * 3, 32)  # N / sr_ratio**2 keys and values
        q, k, v = attn.q(x).view(1, 48, 2, 8), kv[..., :16].view(1, 12, 2, 8), kv[..., 16:].view(1, 12, 2, 8)
        weights = torch.einsum("bnhd,bmhd->bhnm", q, k).mul(8**-0.5).softmax(-1)
        expected = attn.proj(torch.einsum("bhnm,bmhd->bnhd", weights, v).reshape(1, 48, 16))
        torch.testing.assert_close(attn(x, size), expected, atol=1e-5, rtol=1e-5)


def test_mixffn_tells_border_tokens_from_interior_ones():
    torch.manual_seed(0)
    ffn = MixFFN(8, 32).eval()
    with torch.no_grad():
        out = ffn(torch.ones(1, 6 * 7, 8), (6, 7))[0].reshape(6, 7, 8)
    interior = out[1:-1, 1:-1]
    torch.testing.assert_close(interior, interior[:1, :1].expand_as(interior))  # identical inputs, same neighbours
    assert len(torch.unique(out.reshape(-1, 8).round(decimals=4), dim=0)) == 9  # interior, 4 edges, 4 corners


def test_stochastic_depth_is_timm_droppath_rising_linearly_and_off_in_eval():
    model = mit("b0", drop_path_rate=0.1)
    blocks = [block for stage in model.stages for block in stage.blocks]
    assert isinstance(blocks[0].drop_path, torch.nn.Identity)  # rate 0 for the first block
    rates = [block.drop_path.drop_prob for block in blocks[1:]]
    assert all(isinstance(block.drop_path, DropPath) for block in blocks[1:])
    assert rates == pytest.approx([0.1 * i / 7 for i in range(1, 8)])
    x = torch.randn(4, 3, 32, 32)
    model.eval()
    with torch.no_grad():
        assert all(torch.equal(a, b) for a, b in zip(model(x), model(x)))


def test_norm_eps_reaches_block_and_stage_norms():
    model = mit("b0", norm_eps=1e-6)
    assert model.stages[0].blocks[0].norm1.eps == 1e-6 and model.stages[3].norm.eps == 1e-6
    assert model.stages[0].patch_embed.norm.eps == 1e-5  # PyTorch's default in the original too
    assert mit("b0").stages[0].blocks[0].norm1.eps == 1e-5  # transformers' numerics by default


def test_min_input_size_is_exact():
    model = mit("b0").eval()
    assert model.min_input_size == 29
    with torch.no_grad():
        model(torch.randn(1, 3, 29, 29))
    with pytest.raises(ValueError, match="29x29.*pad_to_multiple"):
        model(torch.randn(1, 3, 28, 64))


def test_bad_arguments_raise_value_errors():
    with pytest.raises(ValueError, match="'b0'"):
        mit("mit_b0")
    with pytest.raises(ValueError, match="no field.*depth"):
        mit("b0", depth=(1, 1, 1, 1))
    with pytest.raises(ValueError, match="one entry per stage"):
        MiTConfig(depths=(2, 2, 2))
    with pytest.raises(ValueError, match="positive integers"):
        MiTConfig(sr_ratios=(8, 4, 0, 1))
    with pytest.raises(ValueError, match="divisible"):
        MiTConfig(num_heads=(3, 2, 5, 8))
    with pytest.raises(ValueError, match="drop_path_rate"):
        MiTConfig(drop_path_rate=1.0)
    with pytest.raises(ValueError, match="x.float\\(\\) / 255"):
        mit("b0")(torch.zeros(1, 3, 64, 64, dtype=torch.uint8))
    with pytest.raises(ValueError, match="in_channels=4"):
        mit("b0")(torch.randn(1, 4, 64, 64))


def test_lists_become_tuples_and_in_channels_reaches_the_first_conv():
    config = MiTConfig(depths=[1, 1, 1, 1], in_channels=1)
    assert config.depths == (1, 1, 1, 1) and hash(config)
    assert MixTransformer(config).stages[0].patch_embed.proj.in_channels == 1


def test_every_parameter_gets_a_gradient():
    model = mit("b0", in_channels=1, depths=(1, 1, 1, 1))
    features = model(torch.randn(2, 1, 32, 32))
    sum(f.square().mean() for f in features).backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in model.parameters())
