"""Initialisation: every model starts as the library it is checked against (segnotes.init).

The parity tests load the library's weights, so they cannot see how a model starts. Here
both are built from scratch and compared parameter by parameter, through the same key
tables the parity tests use: a constant tensor (a zero bias, a norm's weight of one) must
be the same constant, a random one must have the library's spread. PyTorch's defaults
fail both: a uniform bias, and convolutions sqrt(6) narrower than Kaiming's for ReLU.
"""

from __future__ import annotations

import pytest
import segmentation_models_pytorch as smp
import torch
from transformers import SegformerForSemanticSegmentation

from segnotes.deeplab import DeepLabV3Plus
from segnotes.deeplab import from_smp as deeplab_from_smp
from segnotes.encoders import get_encoder
from segnotes.init import init_decoder, init_head, init_normal
from segnotes.mit import mit
from segnotes.segformer import SEGFORMER_PRESETS, from_transformers, segformer
from segnotes.unet import MobileNetV2Backbone, Unet, UnetPlusPlus, convert_smp_state_dict

pytestmark = pytest.mark.usefixtures("one_thread")


def assert_starts_alike(ours: dict[str, torch.Tensor], theirs: dict[str, torch.Tensor], prefixes: tuple[str, ...]):
    """Every float tensor under ``prefixes``: the same constant, or a spread within 20% of theirs."""
    keys = [k for k in theirs if k.startswith(prefixes) and theirs[k].is_floating_point()]
    assert keys, f"no keys under {prefixes}"
    for key in keys:
        a, b = ours[key], theirs[key]
        if b.numel() == 1 or torch.all(b == b.flatten()[0]):
            assert torch.all(a == b.flatten()[0]), f"{key}: expected the constant {b.flatten()[0].item()}"
        elif b.numel() >= 64:  # enough samples for a spread within 20%
            ratio = (a.std() / b.std()).item()
            assert 0.8 < ratio < 1.25, f"{key}: std {a.std().item():.4g} vs the library's {b.std().item():.4g}"


@pytest.mark.parametrize(("ours", "theirs"), [(Unet, smp.Unet), (UnetPlusPlus, smp.UnetPlusPlus)])
def test_unet_decoder_and_head_start_as_smps(ours, theirs):
    torch.manual_seed(0)
    ref = convert_smp_state_dict(theirs("mobilenet_v2", encoder_weights=None, classes=3).state_dict())
    model = ours(MobileNetV2Backbone(), num_classes=3)
    assert_starts_alike(model.state_dict(), ref, ("decoder.", "head."))


def test_deeplab_decoder_and_head_start_as_smps():
    torch.manual_seed(0)
    ref = deeplab_from_smp(smp.DeepLabV3Plus("tu-resnet18", encoder_weights=None, classes=3).state_dict())
    model = DeepLabV3Plus("resnet18", num_classes=3)
    assert_starts_alike(model.state_dict(), ref, ("decoder.", "head."))


def test_segformer_starts_as_transformers(hf_segformer_config):
    """Encoder, decoder and classifier: N(0, 0.02^2) weights, zero biases, identity norms."""
    config = SEGFORMER_PRESETS["b0"]
    torch.manual_seed(0)
    hf = SegformerForSemanticSegmentation(
        hf_segformer_config(config.encoder, decoder_hidden_size=config.decoder_dim, num_labels=3)
    )
    ref = from_transformers(hf.state_dict())
    model = segformer("b0", num_classes=3)
    assert_starts_alike(model.state_dict(), ref, ("encoder.", "decoder.", "head."))


def test_a_standalone_mit_starts_as_transformers():
    encoder = mit("b0")
    weights = [m.weight for m in encoder.modules() if isinstance(m, (torch.nn.Linear, torch.nn.Conv2d))]
    assert all(abs(w.std().item() - 0.02) < 0.005 for w in weights if w.numel() >= 256)


def test_segformer_on_another_encoder_keeps_that_encoders_init():
    """Only the MiT is re-drawn: a timm encoder's weights are what timm made (pretrained ones are kept)."""
    torch.manual_seed(0)
    a = segformer("b0", num_classes=2, encoder="convnext_atto").encoder.state_dict()
    torch.manual_seed(0)
    b = get_encoder("convnext_atto").state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_schemes_differ_from_pytorchs_defaults():
    """What the schemes change: zero biases, and a 3x3 ReLU conv sqrt(6) wider than PyTorch's default."""
    torch.manual_seed(0)
    default = torch.nn.Conv2d(64, 64, 3)
    conv = torch.nn.Conv2d(64, 64, 3)
    init_decoder(conv)
    assert default.bias.abs().sum() > 0 and torch.all(conv.bias == 0)
    assert abs((conv.weight.std() / default.weight.std()).item() - 6**0.5) < 0.1
    head = torch.nn.Conv2d(64, 2, 1)
    init_head(head)
    assert torch.all(head.bias == 0)
    fc = torch.nn.Linear(512, 512)
    init_normal(fc, std=0.02)
    assert round(fc.weight.std().item(), 3) == 0.02 and torch.all(fc.bias == 0)
