"""Chapter 4: the Mix Transformer encoder against transformers' SegformerModel and SMP's mit_b* encoders."""

from __future__ import annotations

import inspect
import re

import pytest
import segmentation_models_pytorch as smp
import torch
import torch.nn.functional as F
from transformers import SegformerConfig, SegformerModel

import segnotes.mit
from segnotes.encoders import get_encoder, list_encoders
from segnotes.mit import MIT_CONFIGS, EfficientSelfAttention, MiTConfig, MixFFN, MixTransformer, drop_path, mit

PRESETS = sorted(MIT_CONFIGS)


pytestmark = pytest.mark.usefixtures("one_thread")


def _hf_config(config: MiTConfig) -> SegformerConfig:
    return SegformerConfig(hidden_sizes=list(config.embed_dims), depths=list(config.depths),
                           num_attention_heads=list(config.num_heads), sr_ratios=list(config.sr_ratios))


def _params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize("name", PRESETS)
def test_param_count_equals_transformers_and_the_preset_comment(name):
    with torch.device("meta"):
        ours = mit(name)
        theirs = SegformerModel(_hf_config(MIT_CONFIGS[name]))
    assert _params(ours) == _params(theirs)
    comment = re.search(rf'"{name}": MiTConfig\(.*#\s*([\d.]+)M params', inspect.getsource(segnotes.mit))
    assert comment is not None, f"preset {name} has no '# x.xM params' comment"
    assert float(comment.group(1)) == round(_params(ours) / 1e6, 1)


@pytest.mark.parametrize("name", PRESETS)
def test_preset_and_out_channels_match_smp(name):
    assert name in list_encoders()
    with torch.device("meta"):
        ours = get_encoder(name)
    theirs = smp.encoders.encoders[name]["params"]  # SMP cannot build its MiT on the meta device
    assert ours.out_channels == theirs["out_channels"]
    config = MIT_CONFIGS[name]
    assert list(config.embed_dims) == theirs["embed_dims"] and list(config.depths) == theirs["depths"]
    assert list(config.num_heads) == theirs["num_heads"] and list(config.sr_ratios) == theirs["sr_ratios"]
    assert list(config.mlp_ratios) == theirs["mlp_ratios"] and config.drop_path_rate == theirs["drop_path_rate"]
    assert ours.backbone.feature_strides == [4, 8, 16, 32]


def test_b0_shapes_and_strides_match_smp():
    ours = get_encoder("mit_b0").eval()
    theirs = smp.encoders.get_encoder("mit_b0", weights=None).eval()
    assert ours.out_channels == theirs.out_channels == [3, 0, 32, 64, 160, 256]
    x = torch.randn(1, 3, 64, 96)
    with torch.no_grad():
        ours_shapes = [tuple(f.shape) for f in ours(x)]
        assert ours_shapes == [tuple(f.shape) for f in theirs(x)]
    assert [64 // s[-2] for s in ours_shapes] == ours.strides


@pytest.mark.parametrize("size", [(64, 64), (37, 51), (29, 29)])
def test_any_size_gives_ceil_strided_maps(size):
    model = MixTransformer(MiTConfig()).eval()
    with torch.no_grad():
        features = model(torch.randn(2, 3, *size))
    for f, c, s in zip(features, model.feature_channels, model.feature_strides):
        assert f.shape == (2, c, -(-size[0] // s), -(-size[1] // s))


def test_encoder_matches_transformers_hidden_states():
    config = MiTConfig(depths=(1, 1, 1, 1))
    theirs = SegformerModel(_hf_config(config)).eval()
    ours = MixTransformer(config).eval()
    from segnotes.segformer import from_transformers

    state = {k.removeprefix("encoder."): v for k, v in from_transformers({"segformer." + k: v for k, v in theirs.state_dict().items()}).items()}
    ours.load_state_dict(state, strict=True)
    x = torch.randn(2, 3, 45, 70)
    with torch.no_grad():
        hidden = theirs(x, output_hidden_states=True).hidden_states
        for a, b in zip(ours(x), hidden):
            torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)


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


def test_mixffn_keeps_token_shape():
    ffn = MixFFN(8, 32)
    assert ffn(torch.randn(3, 5 * 7, 8), (5, 7)).shape == (3, 35, 8)


def test_drop_path_is_identity_in_eval_and_drops_whole_samples_in_training():
    x = torch.ones(1000, 4, 3)
    assert drop_path(x, 0.5, training=False) is x
    y = drop_path(x, 0.5, training=True)
    per_sample = y.flatten(1)
    assert set(per_sample.unique().tolist()) <= {0.0, 2.0}
    assert (per_sample == per_sample[:, :1]).all()
    assert 0.4 < (per_sample[:, 0] == 0).float().mean() < 0.6


def test_norm_eps_reaches_block_and_stage_norms():
    model = mit("mit_b0", norm_eps=1e-6)
    assert model.stages[0].blocks[0].norm1.eps == 1e-6 and model.stages[3].norm.eps == 1e-6
    assert model.stages[0].patch_embed.norm.eps == 1e-5  # PyTorch's default in the original too
    assert mit("mit_b0").stages[0].blocks[0].norm1.eps == 1e-5  # transformers' numerics by default


def test_bad_arguments_raise_value_errors():
    with pytest.raises(ValueError, match="mit_b0"):
        mit("mit_b9")
    with pytest.raises(ValueError, match="one entry per stage"):
        MiTConfig(depths=(2, 2, 2))
    with pytest.raises(ValueError, match="divisible"):
        MiTConfig(num_heads=(3, 2, 5, 8))
    with pytest.raises(ValueError, match="from_pretrained"):
        get_encoder("mit_b0", pretrained=True)
    with pytest.raises(ValueError, match="29x29"):
        mit("mit_b0")(torch.randn(1, 3, 28, 64))
    with pytest.raises(ValueError, match="input channels"):
        get_encoder("mit_b0")(torch.randn(1, 4, 64, 64))


def test_in_channels_and_training_step():
    model = mit("mit_b0", in_channels=1, depths=(1, 1, 1, 1))
    features = model(torch.randn(2, 1, 32, 32))
    sum(f.mean() for f in features).backward()
    assert all(p.grad is not None for p in model.parameters())
    assert F.mse_loss(features[0], features[0]).item() == 0
