"""Chapter 5: SegFormer against transformers' SegformerForSemanticSegmentation (parity, conversion, checkpoints)."""

from __future__ import annotations

import inspect
import re

import pytest
import torch
from safetensors.torch import load_file
from transformers import SegformerConfig, SegformerForSemanticSegmentation

import segnotes.segformer
from segnotes.segformer import (
    SEGFORMER_CONFIGS,
    AllMLPDecoder,
    SegFormer,
    SegFormerConfig,
    from_transformers,
    segformer_b0,
    to_transformers,
)

PRESETS = sorted(SEGFORMER_CONFIGS)


pytestmark = pytest.mark.usefixtures("one_thread")
PAPER_PARAMS = {"segformer_b0": 3.8, "segformer_b1": 13.7, "segformer_b2": 27.5, "segformer_b3": 47.3, "segformer_b4": 64.1, "segformer_b5": 84.7}


def _hf_config(config: SegFormerConfig) -> SegformerConfig:
    e = config.encoder
    return SegformerConfig(hidden_sizes=list(e.embed_dims), depths=list(e.depths), num_attention_heads=list(e.num_heads),
                           sr_ratios=list(e.sr_ratios), decoder_hidden_size=config.decoder_dim, num_labels=config.num_classes)


def _random_hf(config: SegFormerConfig) -> SegformerForSemanticSegmentation:
    """A randomly initialised transformers model with non-trivial BatchNorm statistics, in eval mode."""
    torch.manual_seed(0)
    model = SegformerForSemanticSegmentation(_hf_config(config)).eval()
    bn = model.decode_head.batch_norm
    with torch.no_grad():
        bn.running_mean.normal_(0, 0.1), bn.running_var.uniform_(0.5, 2.0), bn.weight.normal_(1, 0.2), bn.bias.normal_(0, 0.2)
    return model


def _params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize("name", ["segformer_b0", "segformer_b1"])
def test_logits_match_transformers(name):
    config = SEGFORMER_CONFIGS[name]
    theirs = _random_hf(config)
    ours = getattr(segnotes.segformer, name)(config.num_classes).eval()
    ours.load_state_dict(from_transformers(theirs.state_dict()), strict=True)
    for size in [(64, 64), (75, 53)]:  # the second is not a multiple of 32
        x = torch.randn(2, 3, *size)
        with torch.no_grad():
            expected = theirs(pixel_values=x).logits
            for fold in (True, False):
                ours.decoder.fold = fold
                got = ours(x)
                assert got.shape == expected.shape == (2, config.num_classes, -(-size[0] // 4), -(-size[1] // 4))
                assert (got - expected).abs().max() <= 1e-4


@pytest.mark.parametrize("name", PRESETS)
def test_param_counts_keys_and_preset_comments(name):
    config = SEGFORMER_CONFIGS[name]
    with torch.device("meta"):
        theirs = SegformerForSemanticSegmentation(_hf_config(config))
        ours = getattr(segnotes.segformer, name)(config.num_classes)
    assert _params(ours) == _params(theirs)
    assert round(_params(ours) / 1e6, 1) == PAPER_PARAMS[name]
    comment = re.search(rf'"{name}": SegFormerConfig\(.*#\s*([\d.]+)M params', inspect.getsource(segnotes.segformer))
    assert comment is not None and float(comment.group(1)) == PAPER_PARAMS[name]
    # key coverage both ways, with shapes
    converted = from_transformers(theirs.state_dict())
    assert {k: v.shape for k, v in converted.items()} == {k: v.shape for k, v in ours.state_dict().items()}
    back = to_transformers(ours.state_dict())
    assert {k: v.shape for k, v in back.items()} == {k: v.shape for k, v in theirs.state_dict().items()}


def test_round_trip_loads_strictly_into_transformers():
    config = replace_classes(SEGFORMER_CONFIGS["segformer_b0"], 7)
    ours = SegFormer(config).eval()
    theirs = SegformerForSemanticSegmentation(_hf_config(config)).eval()
    result = theirs.load_state_dict(to_transformers(ours.state_dict()), strict=True)
    assert not result.missing_keys and not result.unexpected_keys
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        assert (ours(x) - theirs(pixel_values=x).logits).abs().max() <= 1e-4
    again = from_transformers(to_transformers(ours.state_dict()))
    assert all(torch.equal(again[k], v) for k, v in ours.state_dict().items())
    assert from_transformers(ours.state_dict()).keys() == ours.state_dict().keys()  # already native: unchanged


def replace_classes(config: SegFormerConfig, num_classes: int) -> SegFormerConfig:
    from dataclasses import replace

    return replace(config, num_classes=num_classes)


def test_save_pretrained_directory_and_v4_names(tmp_path):
    config = replace_classes(SEGFORMER_CONFIGS["segformer_b0"], 4)
    theirs = _random_hf(config)
    theirs.save_pretrained(tmp_path)
    file_keys = set(load_file(tmp_path / "model.safetensors"))
    assert set(to_transformers(segformer_b0(4).state_dict(), names="v4")) == file_keys  # what 4.x and the hub use
    ours = SegFormer.from_pretrained(tmp_path)
    assert not ours.training and ours.config.num_classes == 4
    x = torch.randn(1, 3, 70, 90)
    with torch.no_grad():
        assert (ours(x) - theirs(pixel_values=x).logits).abs().max() <= 1e-4
    assert SegFormer.from_pretrained(str(tmp_path), norm_eps=1e-6).encoder.stages[0].norm.eps == 1e-6


def test_fold_is_exact_in_training_mode_too():
    torch.manual_seed(0)
    decoder = AllMLPDecoder([8, 16, 24, 32], dim=12, num_classes=3, dropout=0.0).train()
    features = [torch.randn(2, c, 20 // s + 1, 28 // s + 1) for c, s in zip([8, 16, 24, 32], [1, 2, 4, 8])]
    folded = decoder(features)
    decoder.fold = False
    literal = decoder(features)
    torch.testing.assert_close(folded, literal, atol=1e-5, rtol=1e-5)
    grads = torch.autograd.grad(folded.square().sum(), decoder.fuse.weight)[0], torch.autograd.grad(literal.square().sum(), decoder.fuse.weight)[0]
    torch.testing.assert_close(*grads, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("size", [(64, 64), (33, 47), (99, 31)])
def test_any_size_and_full_resolution(size):
    model = segformer_b0(num_classes=3).eval()
    x = torch.randn(1, 3, *size)
    with torch.no_grad():
        assert model(x).shape == (1, 3, -(-size[0] // 4), -(-size[1] // 4))
        assert model(x, full_resolution=True).shape == (1, 3, *size)


def test_bad_inputs_raise_value_errors():
    model = segformer_b0(num_classes=3)
    with pytest.raises(ValueError, match=r"\(B, 3, H, W\)"):
        model(torch.randn(1, 1, 64, 64))
    with pytest.raises(ValueError, match="batch dimension"):
        model(torch.randn(3, 64, 64))
    with pytest.raises(ValueError, match="no entry in the conversion table"):
        from_transformers({"segformer.encoder.unknown.weight": torch.zeros(1)})
    with pytest.raises(ValueError, match="'v5' or 'v4'"):
        to_transformers(model.state_dict(), names="v3")
