"""Chapter 5: SegFormer against transformers, segmentation_models.pytorch and the original checkpoint layout."""

from __future__ import annotations

import inspect
import re
from dataclasses import replace

import pytest
import segmentation_models_pytorch as smp
import torch
from safetensors.torch import load_file
from transformers import SegformerConfig, SegformerForSemanticSegmentation

import segnotes.segformer
from segnotes.model import SegmentationModel
from segnotes.segformer import (
    SEGFORMER_PRESETS,
    AllMLPDecoder,
    SegFormer,
    conversion_table,
    from_original,
    from_smp,
    from_transformers,
    segformer,
    to_transformers,
)

pytestmark = pytest.mark.usefixtures("one_thread")
PAPER_PARAMS = {"b0": 3.8, "b1": 13.7, "b2": 27.5, "b3": 47.3, "b4": 64.1, "b5": 84.7}


@pytest.fixture
def hf_config(hf_segformer_config):
    """``hf_config(config)``: transformers' ``SegformerConfig`` for a segnotes :class:`SegFormerConfig`."""
    return lambda c: hf_segformer_config(c.encoder, decoder_hidden_size=c.decoder_dim, num_labels=c.num_classes)


def _random_hf(hf_config: SegformerConfig) -> SegformerForSemanticSegmentation:
    """A randomly initialised transformers model with non-trivial BatchNorm statistics, in eval mode."""
    torch.manual_seed(0)
    model = SegformerForSemanticSegmentation(hf_config).eval()
    _randomize_bn(model.decode_head.batch_norm)
    return model


def _randomize_bn(bn: torch.nn.BatchNorm2d) -> None:
    with torch.no_grad():
        bn.running_mean.normal_(0, 0.1), bn.running_var.uniform_(0.5, 2.0)
        bn.weight.normal_(1, 0.2), bn.bias.normal_(0, 0.2)


@pytest.mark.parametrize("preset", ["b0", "b1"])
def test_logits_match_transformers(preset, hf_config):
    config = SEGFORMER_PRESETS[preset]
    theirs = _random_hf(hf_config(config))
    ours = segformer(preset, num_classes=config.num_classes).eval()
    ours.load_state_dict(from_transformers(theirs.state_dict()), strict=True)
    assert isinstance(ours, SegmentationModel)
    for size in [(64, 64), (75, 53)]:  # the second is not a multiple of 32
        x = torch.randn(2, 3, *size)
        with torch.no_grad():
            expected = theirs(pixel_values=x).logits
            for fold in (True, False):
                ours.decoder.fold = fold
                got = ours(x)
                assert got.shape == expected.shape == (2, config.num_classes, -(-size[0] // 4), -(-size[1] // 4))
                assert (got - expected).abs().max() <= 1e-4


@pytest.mark.parametrize("preset", sorted(SEGFORMER_PRESETS))
def test_param_counts_keys_and_preset_comments(preset, hf_config, count_params):
    config = SEGFORMER_PRESETS[preset]
    with torch.device("meta"):
        theirs = SegformerForSemanticSegmentation(hf_config(config))
        ours = segformer(preset, num_classes=config.num_classes)
    assert count_params(ours) == count_params(theirs)
    assert round(count_params(ours) / 1e6, 1) == PAPER_PARAMS[preset]
    comment = re.search(rf'"{preset}": SegFormerConfig\(.*#\s*([\d.]+)M params', inspect.getsource(segnotes.segformer))
    assert comment is not None and float(comment.group(1)) == PAPER_PARAMS[preset]
    converted = from_transformers(theirs.state_dict())  # key coverage both ways, with shapes
    assert {k: v.shape for k, v in converted.items()} == {k: v.shape for k, v in ours.state_dict().items()}
    back = to_transformers(ours.state_dict())
    assert {k: v.shape for k, v in back.items()} == {k: v.shape for k, v in theirs.state_dict().items()}


def test_round_trip_loads_strictly_into_transformers(hf_config):
    config = replace(SEGFORMER_PRESETS["b0"], num_classes=7)
    ours = SegFormer(config).eval()
    theirs = SegformerForSemanticSegmentation(hf_config(config)).eval()
    result = theirs.load_state_dict(to_transformers(ours.state_dict()), strict=True)
    assert not result.missing_keys and not result.unexpected_keys
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        assert (ours(x) - theirs(pixel_values=x).logits).abs().max() <= 1e-4
    again = from_transformers(to_transformers(ours.state_dict()))
    assert all(torch.equal(again[k], v) for k, v in ours.state_dict().items())
    assert from_transformers(ours.state_dict()).keys() == ours.state_dict().keys()  # already native: unchanged


def test_save_pretrained_directory_and_v4_names(tmp_path, hf_config):
    config = replace(SEGFORMER_PRESETS["b0"], num_classes=4)
    theirs = _random_hf(hf_config(config))
    theirs.save_pretrained(tmp_path)
    file_keys = set(load_file(tmp_path / "model.safetensors"))
    assert set(to_transformers(segformer("b0", num_classes=4).state_dict(), names="v4")) == file_keys
    ours = SegFormer.from_pretrained(tmp_path)
    assert not ours.training and ours.config.num_classes == 4
    x = torch.randn(1, 3, 70, 90)
    with torch.no_grad():
        assert (ours(x) - theirs(pixel_values=x).logits).abs().max() <= 1e-4
    assert SegFormer.from_pretrained(str(tmp_path), norm_eps=1e-6).encoder.stages[0].norm.eps == 1e-6
    with pytest.raises(ValueError, match="not a checkpoint directory"):
        SegFormer.from_pretrained(tmp_path / "missing")


def _smp_model(num_classes: int = 5) -> smp.Segformer:
    torch.manual_seed(0)
    model = smp.Segformer("mit_b0", encoder_weights=None, classes=num_classes).eval()
    _randomize_bn(model.decoder.fuse_stage[1])
    return model


def test_smp_weights_give_smps_logits():
    theirs = _smp_model()
    ours = segformer("b0", num_classes=5, norm_eps=1e-6).eval()  # SMP's blocks use LayerNorm eps 1e-6
    assert not ours.load_state_dict(from_smp(theirs.state_dict()), strict=True).missing_keys
    x = torch.randn(2, 3, 64, 96)
    with torch.no_grad():
        quarter = theirs.segmentation_head[0](theirs.decoder(theirs.encoder(x)))  # before SMP's x4 upsampling
        assert (ours(x) - quarter).abs().max() <= 1e-4
        assert (ours(x) - quarter).abs().max() <= 1e-4  # the cached fold gives the same


# The original NVlabs/mmseg names of SMP's decoder and head, written out here (not read from the module's table).
_SMP_TO_ORIGINAL = {
    "decoder.mlp_stage.0.linear": "decode_head.linear_c4.proj",
    "decoder.mlp_stage.1.linear": "decode_head.linear_c3.proj",
    "decoder.mlp_stage.2.linear": "decode_head.linear_c2.proj",
    "decoder.mlp_stage.3.linear": "decode_head.linear_c1.proj",
    "decoder.fuse_stage.0": "decode_head.linear_fuse.conv",
    "decoder.fuse_stage.1": "decode_head.linear_fuse.bn",
    "segmentation_head.0": "decode_head.linear_pred",
}


def _original_state_dict(smp_state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The layout of an original SegFormer checkpoint's ``state_dict``, built from SMP's (same encoder layout)."""
    out = {}
    for key, tensor in smp_state.items():
        module, suffix = key.rsplit(".", 1)
        name = "backbone." + key.removeprefix("encoder.") if key.startswith("encoder.") else None
        out[name or f"{_SMP_TO_ORIGINAL[module]}.{suffix}"] = tensor
    out["decode_head.conv_seg.weight"] = torch.zeros(5, 256, 1, 1)  # built by mmseg's base class, never used
    out["decode_head.conv_seg.bias"] = torch.zeros(5)
    return out


def test_original_checkpoint_layout():
    smp_state = _smp_model().state_dict()
    original = _original_state_dict(smp_state)
    assert any(k.startswith("backbone.block1.0.attn.kv.") for k in original)
    converted = from_original(original)
    ours = segformer("b0", num_classes=5, norm_eps=1e-6)
    assert not ours.load_state_dict(converted, strict=True).missing_keys
    expected = from_smp(smp_state)
    assert converted.keys() == expected.keys() and all(torch.equal(converted[k], expected[k]) for k in expected)
    with pytest.raises(ValueError, match="checkpoint\\['state_dict'\\]"):
        from_original({"state_dict": original, "meta": {}})
    renamed = {k.replace("linear_pred", "linear_prediction"): v for k, v in original.items()}
    with pytest.raises(ValueError, match="no row of DECODER_KEYS maps key 'decode_head.linear_prediction.weight'"):
        from_original(renamed)


def test_conversion_tables_cover_every_decoder_and_head_key():
    keys = {k.rsplit(".", 1)[0] for k in segformer("b0", num_classes=3).state_dict() if not k.startswith("encoder.")}
    for layout in ("original", "smp"):
        assert {ours for ours, _ in conversion_table(layout)} == keys
    assert ("head.classifier", "decode_head.classifier") in conversion_table("transformers")
    with pytest.raises(ValueError, match="layout must be one of"):
        conversion_table("mmseg")


def _decoder_and_features(seed: int = 0):
    torch.manual_seed(seed)
    decoder = AllMLPDecoder([8, 16, 24, 32], dim=12, dropout=0.0)
    _randomize_bn(decoder.norm)
    features = [torch.randn(2, c, 20 // s + 1, 28 // s + 1) for c, s in zip([8, 16, 24, 32], [1, 2, 4, 8])]
    return decoder, features


def test_fold_is_exact_in_training_mode_too():
    decoder, features = _decoder_and_features()
    decoder, features = decoder.double(), [f.double() for f in features]  # float64: compare the math, not rounding
    folded = decoder.train()(features)
    decoder.fold = False
    literal = decoder(features)
    torch.testing.assert_close(folded, literal, atol=1e-10, rtol=1e-10)
    grad_folded = torch.autograd.grad(folded.square().sum(), decoder.fuse.weight)[0]
    grad_literal = torch.autograd.grad(literal.square().sum(), decoder.fuse.weight)[0]
    torch.testing.assert_close(grad_folded, grad_literal, atol=1e-10, rtol=1e-10)


def test_folded_weights_are_computed_once_in_eval_mode_and_refreshed_when_weights_change():
    decoder, features = _decoder_and_features()
    decoder.eval()

    def literal():
        decoder.fold = False
        out = decoder(features)
        decoder.fold = True
        return out

    with torch.no_grad():
        cached = decoder.folded()[0][0]
        torch.testing.assert_close(decoder(features), literal(), atol=1e-5, rtol=1e-5)
        assert decoder.folded()[0][0] is cached  # not recomputed
        decoder.fuse.weight.mul_(2)  # an in-place edit
        assert decoder.folded()[0][0] is not cached
        torch.testing.assert_close(decoder(features), literal(), atol=1e-5, rtol=1e-5)
        decoder.load_state_dict(_decoder_and_features(seed=1)[0].state_dict())  # new weights, copied in place
        torch.testing.assert_close(decoder(features), literal(), atol=1e-5, rtol=1e-5)
    with torch.enable_grad():  # eval mode with gradients (e.g. fine-tuning with frozen BatchNorm): no cache
        assert decoder.folded()[0][0].requires_grad

    # training still updates the weights the fold reads, and eval mode sees the update
    optimizer = torch.optim.SGD(decoder.parameters(), lr=0.1)
    decoder.train()
    decoder(features).square().mean().backward()
    before = decoder.fuse.weight.detach().clone()
    optimizer.step()
    assert not torch.equal(before, decoder.fuse.weight)
    decoder.eval()
    with torch.no_grad():
        torch.testing.assert_close(decoder(features), literal(), atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(decoder.folded()[1], decoder.folded_weights()[1])


def test_decoder_checks_the_maps_it_gets():
    decoder, features = _decoder_and_features()
    with pytest.raises(ValueError, match=r"built for 4 maps with channels \[8, 16, 24, 32\], got 3 maps"):
        decoder(features[:3])
    with pytest.raises(ValueError, match=r"got 4 maps with channels \[8, 16, 24, 24\]"):
        decoder([*features[:3], features[2]])


@pytest.mark.parametrize("size", [(64, 64), (33, 47), (99, 31)])
def test_any_size_quarter_logits_and_upsampling_head(size):
    model = segformer("b0", num_classes=3).eval()
    x = torch.randn(1, 3, *size)
    quarter = (-(-size[0] // 4), -(-size[1] // 4))
    with torch.no_grad():
        assert model(x).shape == (1, 3, *quarter)
        up = segformer("b0", num_classes=3, upsampling=4).eval()
        up.load_state_dict(model.state_dict(), strict=True)  # same keys: upsampling has no weights
        assert up(x).shape == (1, 3, 4 * quarter[0], 4 * quarter[1])


def test_bad_inputs_raise_value_errors():
    model = segformer("b0", num_classes=3)
    with pytest.raises(ValueError, match="expected 3 input channels"):
        model(torch.randn(1, 1, 64, 64))
    with pytest.raises(ValueError, match="batch dimension"):
        model(torch.randn(3, 64, 64))
    with pytest.raises(ValueError, match="floating-point"):
        model(torch.zeros(1, 3, 64, 64, dtype=torch.uint8))
    with pytest.raises(ValueError, match="preset must be one of"):
        segformer("b9", num_classes=3)
    with pytest.raises(ValueError, match="unknown SegFormer overrides \\['decoder_width'\\]"):
        segformer("b0", num_classes=3, decoder_width=64)
    with pytest.raises(ValueError, match="num_classes must be a positive integer"):
        segformer("b0", num_classes=0)
    with pytest.raises(ValueError, match="no row of TRANSFORMERS_KEYS maps key 'segformer.encoder.unknown.weight'"):
        from_transformers({"segformer.encoder.unknown.weight": torch.zeros(1)})
    with pytest.raises(ValueError, match="names must be one of"):
        to_transformers(model.state_dict(), names="v3")


def test_fold_cache_is_never_stale_after_an_in_place_ema_update():
    """The EMA idiom edits weights through .data (no autograd version bump): the cache must notice."""
    decoder, features = _decoder_and_features()
    decoder.eval()
    ema = _decoder_and_features(seed=1)[0]
    with torch.no_grad():
        decoder(features)  # fills the cache
        for p, q in zip(decoder.parameters(), ema.parameters()):
            p.data.mul_(0.9).add_(q.data, alpha=0.1)
        folded = decoder(features)
        decoder.fold = False
        literal = decoder(features)
    torch.testing.assert_close(folded, literal, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("encoder", ["convnext_atto", "mobilenetv2", "swin"])
def test_the_decoder_runs_on_any_pyramid_encoder(encoder):
    from segnotes.encoders import get_encoder
    from segnotes.unet import MobileNetV2Backbone

    if encoder == "mobilenetv2":
        encoder = MobileNetV2Backbone()
    elif encoder == "swin":  # a tiny timm Swin at 64 px: timm's options pass through get_encoder
        tiny = dict(img_size=64, embed_dim=16, depths=(1, 1, 1, 1), num_heads=(1, 1, 1, 1), window_size=4)
        encoder = get_encoder("swin_tiny_patch4_window7_224", **tiny)
    model = segformer("b0", num_classes=3, encoder=encoder).eval()
    strides = model.encoder.strides
    assert model.decoder.in_channels == [c for c, s in zip(model.encoder.out_channels, strides) if s >= 4]
    assert model.output_stride == 4
    with torch.no_grad():
        assert model(torch.randn(2, 3, 64, 64)).shape == (2, 3, 16, 16)


def test_the_mit_stays_in_the_slot_as_it_is_and_output_stride_follows_upsampling():
    model = segformer("b0", num_classes=3)
    assert all(k.startswith(("encoder.stages.", "decoder.", "head.")) for k in model.state_dict())
    assert model.output_stride == 4 and segformer("b0", num_classes=3, upsampling=4).output_stride == 1
    with pytest.raises(ValueError, match=r"upsampling must be one of \(1, 2, 4\)"):
        segformer("b0", num_classes=3, upsampling=3)
    with pytest.raises(ValueError, match="encoder_weights applies to a timm encoder name"):
        segformer("b0", num_classes=3, encoder_weights="imagenet")


def test_decoder_checks_strides_too():
    decoder, features = _decoder_and_features()
    with pytest.raises(ValueError, match=r"AllMLPDecoder expects maps at strides \[4, 8, 16, 32\], but map 3"):
        decoder([*features[:3], features[3][..., :1, :1]])


def test_decoder_stages_fuse_a_subset_at_quarter_resolution():
    """Chapter 5's ablation: the stride-32 map alone, still decoded at 1/4 resolution; bad indices refused."""
    model = segformer("b0", num_classes=2, decoder_stages=(3,)).eval()
    assert model.decoder.in_channels == [256] and model.output_stride == 4
    with torch.no_grad():
        assert model(torch.randn(1, 3, 64, 64)).shape == (1, 2, 16, 16)
        # fused and literal paths agree for a subset too
        features = model.encoder(torch.randn(1, 3, 64, 64))
        folded = model.decoder(features)
        model.decoder.fold = False
        torch.testing.assert_close(model.decoder(features), folded, atol=1e-5, rtol=1e-5)
    for bad in [(), (4,), (1, 1)]:
        with pytest.raises(ValueError, match="stages must be distinct indices"):
            segformer("b0", num_classes=2, decoder_stages=bad)
